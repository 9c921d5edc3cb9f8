/* AWS's GetUsage and UpdateUsage. GetUsage answers, per key and per day
 * from startDate to endDate, [used, remaining]: the quota units counted
 * that day (usage_hourly) and the quota left at the end of that day within
 * its period, as AWS computes it: the period's limit (the plan's, less its
 * offset in the first period, plus the key's adjustment for that period)
 * less what was used from the period's start to that day's end. UpdateUsage
 * ("replace /remaining") writes the key's adjustment for the current period
 * (quota_adjustments, migration 007) so that what remains now is the value
 * given; authorize and Tally's own quota answers apply it (keycache.c,
 * usage.c). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "aws.h"
#include "keycache.h"
#include "period.h"
#include "timeutil.h"

#define INVALID_PLAN "Invalid Usage Plan ID specified"
#define INVALID_KEY "Invalid API Key identifier specified"
#define USAGE_KEYS_MAX 1000
#define USAGE_PAIRS_MAX 100000 /* keys x days in one answer */

/* The plan's quota as GetUsage needs it. */
typedef struct {
    bool has_quota;
    int64_t limit, offset, set_at;
    period_kind period; /* DAY when the plan has no quota */
} plan_quota;

/* Reads the plan req->id's quota; false after replying (404 or the error). */
static bool read_plan_quota(api_request *req, PGconn *conn, plan_quota *out)
{
    const char *params[] = {req->id};
    PGresult *res = api_exec(conn,
                             "SELECT quota_limit, quota_period, quota_offset, "
                             "(extract(epoch from quota_set_at) * 1000000)::bigint "
                             "FROM plans WHERE id = $1",
                             1, params);
    bool ok = false;
    if (!api_ok(res)) {
        api_reply_db_error(req, conn, res, "reading a plan");
    } else if (PQntuples(res) == 0) {
        aws_reply_error(req, 404, "NotFoundException", INVALID_PLAN);
    } else {
        memset(out, 0, sizeof *out);
        out->period = PERIOD_DAY;
        out->has_quota = api_field(res, 0, 0) != NULL &&
                         period_parse(api_field(res, 0, 1), &out->period);
        out->limit = api_field_int(res, 0, 0);
        out->offset = api_field_int(res, 0, 2);
        out->set_at = api_field_int(res, 0, 3);
        ok = true;
    }
    PQclear(res);
    return ok;
}

/* The key ids of the request, as a PostgreSQL array literal (ids are
 * [A-Za-z0-9._:~-]: nothing to quote), sorted byte-wise: the one key of
 * `key_id` when it is in the plan, else every key of the plan. NULL after
 * replying. */
static PGresult *plan_keys(api_request *req, PGconn *conn, const char *key_id)
{
    char limit[16];
    snprintf(limit, sizeof limit, "%d", USAGE_KEYS_MAX + 1);
    const char *params[] = {req->id, key_id, limit};
    PGresult *res = api_exec(conn,
                             "SELECT id FROM api_keys WHERE plan_id = $1 "
                             "AND ($2::text IS NULL OR id = $2) "
                             "ORDER BY id COLLATE \"C\" LIMIT $3::int",
                             3, params);
    if (!api_ok(res))
        api_reply_db_error(req, conn, res, "listing a plan's keys");
    else if (key_id != NULL && PQntuples(res) == 0)
        aws_reply_error(req, 404, "NotFoundException", INVALID_KEY);
    else if (PQntuples(res) > USAGE_KEYS_MAX)
        aws_reply_error(req, 400, "BadRequestException",
                        "the usage plan has more than %d keys: ask for one keyId at a time",
                        USAGE_KEYS_MAX);
    else
        return res;
    PQclear(res);
    return NULL;
}

static char *array_literal(const PGresult *keys)
{
    buf text;
    buf_init(&text, (size_t)(APIROUTE_ID_MAX + 1) * USAGE_KEYS_MAX + 8);
    bool ok = buf_append(&text, "{", 1);
    for (int i = 0; ok && i < PQntuples(keys); i++)
        ok = (i == 0 || buf_append(&text, ",", 1)) && buf_append_str(&text, PQgetvalue(keys, i, 0));
    ok = ok && buf_append(&text, "}", 2);
    if (!ok)
        buf_free(&text);
    return ok ? text.data : NULL;
}

/* A row walker over results sorted by key (COLLATE "C") then time. */
typedef struct {
    const PGresult *res;
    int row;
} walker;

/* The value (column `value`) of the row for key/at, advancing past it; 0
 * when there is none. Rows of earlier keys or times are skipped. */
static int64_t walk_value(walker *w, const char *key, int64_t at, int value)
{
    int rows = PQntuples(w->res);
    while (w->row < rows) {
        int order = strcmp(PQgetvalue(w->res, w->row, 0), key);
        if (order > 0)
            return 0;
        int64_t row_at = api_field_int(w->res, w->row, 1) * USEC_PER_SEC;
        if (order == 0 && row_at == at)
            return api_field_int(w->res, w->row++, value);
        if (order == 0 && row_at > at)
            return 0;
        w->row++;
    }
    return 0;
}

static int64_t add_saturating(int64_t a, int64_t b)
{
    int64_t sum;
    if (__builtin_add_overflow(a, b, &sum))
        return b > 0 ? INT64_MAX : INT64_MIN;
    return sum;
}

/* The limit of the period starting at period_at for a key with adjustment `adjustment`. */
static int64_t period_allowance(const plan_quota *quota, int64_t period_at, int64_t adjustment)
{
    int64_t limit = period_limit(quota->limit, quota->offset, quota->period, quota->set_at,
                                 period_at);
    int64_t total = add_saturating(limit, adjustment);
    return total > 0 ? total : 0;
}

/* One key's [used, remaining] pairs from `from` (a day) to `to` (a day,
 * inclusive); the walkers start at its rows. */
static json_t *key_pairs(const char *key, const plan_quota *quota, int64_t from, int64_t to,
                         walker *used, walker *adjustments)
{
    json_t *pairs = json_array();
    int64_t day = period_start(quota->period, from), period_at = -1, cumulative = 0;
    int64_t allowance = 0;
    for (; day <= to; day += USEC_PER_DAY) {
        int64_t this_period = period_start(quota->period, day);
        if (this_period != period_at) {
            period_at = this_period;
            cumulative = 0;
            allowance = quota->has_quota
                            ? period_allowance(quota, period_at,
                                               walk_value(adjustments, key, period_at, 2))
                            : 0;
        }
        int64_t units = walk_value(used, key, day, 2);
        cumulative = add_saturating(cumulative, units);
        if (day < from)
            continue;
        int64_t remaining = allowance > cumulative ? allowance - cumulative : 0;
        json_array_append_new(pairs, json_pack("[I,I]", (json_int_t)units, (json_int_t)remaining));
    }
    return pairs;
}

/* The Usage answer for `keys` (a result of key ids) from day `from` to day
 * `to`; 200 with it, or the database error. */
static void reply_usage(api_request *req, PGconn *conn, const plan_quota *quota,
                        const PGresult *keys, int64_t from, int64_t to)
{
    char *ids = array_literal(keys);
    char first[TIME_RFC3339_LEN], end[TIME_RFC3339_LEN], from_text[11], to_text[11];
    time_format_rfc3339(period_start(quota->period, from), first, sizeof first);
    time_format_rfc3339(to + USEC_PER_DAY, end, sizeof end);
    const char *params[] = {ids, first, end, period_name(quota->period)};
    PGresult *used = ids ? api_exec(conn,
                                    "SELECT key_id, extract(epoch from date_trunc('day', hour))"
                                    "::bigint, sum(units) FROM usage_hourly "
                                    "WHERE key_id = ANY($1::text[]) AND hour >= $2::timestamptz "
                                    "AND hour < $3::timestamptz GROUP BY 1, 2 "
                                    "ORDER BY key_id COLLATE \"C\", 2",
                                    3, params)
                         : NULL;
    PGresult *adjustments =
        api_ok(used) ? api_exec(conn,
                                "SELECT key_id, extract(epoch from period_start)::bigint, "
                                "adjustment FROM quota_adjustments WHERE key_id = ANY($1::text[]) "
                                "AND period = $4 AND period_start >= $2::timestamptz "
                                "AND period_start < $3::timestamptz "
                                "ORDER BY key_id COLLATE \"C\", 2",
                                4, params)
                     : NULL;
    if (ids == NULL) {
        aws_reply_error(req, 500, "ServiceUnavailableException", "out of memory");
    } else if (!api_ok(used) || !api_ok(adjustments)) {
        api_reply_db_error(req, conn, api_ok(used) ? adjustments : used, "reading usage");
    } else {
        json_t *values = json_object();
        walker used_rows = {used, 0}, adjustment_rows = {adjustments, 0};
        for (int k = 0; k < PQntuples(keys); k++) {
            const char *key = PQgetvalue(keys, k, 0);
            json_object_set_new(values, key,
                                key_pairs(key, quota, from, to, &used_rows, &adjustment_rows));
        }
        snprintf(from_text, sizeof from_text, "%.10s", time_format_rfc3339(from, first, sizeof first));
        snprintf(to_text, sizeof to_text, "%.10s", time_format_rfc3339(to, end, sizeof end));
        api_reply_json(req, 200, json_pack("{s:s,s:s,s:s,s:o}", "usagePlanId", req->id,
                                           "startDate", from_text, "endDate", to_text, "values",
                                           values));
    }
    PQclear(used);
    PQclear(adjustments);
    free(ids);
}

/* startDate and endDate (YYYY-MM-DD, required, start <= end); false after replying. */
static bool read_dates(api_request *req, int64_t *from, int64_t *to)
{
    const char *start = api_query(req, "startDate"), *end = api_query(req, "endDate");
    if (start == NULL || end == NULL || !time_parse_date(start, strlen(start), from) ||
        !time_parse_date(end, strlen(end), to)) {
        aws_reply_error(req, 400, "BadRequestException",
                        "startDate and endDate are required, as YYYY-MM-DD");
        return false;
    }
    if (*from > *to) {
        aws_reply_error(req, 400, "BadRequestException", "startDate must not be after endDate");
        return false;
    }
    if ((*to - *from) / USEC_PER_DAY + 1 > APIMODEL_USAGE_POINTS_MAX) {
        aws_reply_error(req, 400, "BadRequestException", "at most %d days per request",
                        APIMODEL_USAGE_POINTS_MAX);
        return false;
    }
    return true;
}

void aws_get_usage(api_request *req)
{
    static const char *const allowed[] = {"keyId", "startDate", "endDate", "position", "limit",
                                          NULL};
    int64_t from, to;
    if (!api_check_query(req, allowed) || !read_dates(req, &from, &to))
        return;
    const char *key_id = api_query(req, "keyId");
    if (key_id != NULL && (key_id[0] == '\0' || !apimodel_valid_id(key_id))) {
        aws_reply_error(req, 404, "NotFoundException", INVALID_KEY);
        return;
    }
    PGconn *conn = dbpool_acquire(req);
    if (conn == NULL)
        return;
    plan_quota quota;
    PGresult *keys = NULL;
    if (read_plan_quota(req, conn, &quota) && (keys = plan_keys(req, conn, key_id)) != NULL) {
        int64_t days = (to - from) / USEC_PER_DAY + 1;
        if (days * PQntuples(keys) > USAGE_PAIRS_MAX)
            aws_reply_error(req, 400, "BadRequestException",
                            "%d keys x %lld days is more than %d pairs: narrow the dates or "
                            "give a keyId",
                            PQntuples(keys), (long long)days, USAGE_PAIRS_MAX);
        else
            reply_usage(req, conn, &quota, keys, from, to);
    }
    PQclear(keys);
    dbpool_release(conn);
}

/* ---- UpdateUsage ------------------------------------------------------------------ */

/* The one operation UpdateUsage takes: replace /remaining with a whole
 * number; false after replying 400. */
static bool read_remaining(api_request *req, int64_t *remaining)
{
    json_t *body = aws_parse_body(req);
    aws_patch ops[AWS_PATCH_MAX];
    size_t count = 0;
    bool ok = body != NULL && aws_read_patch(req, body, ops, &count);
    if (ok && (count != 1 || strcmp(ops[0].op, "replace") != 0 ||
               strcmp(ops[0].path, "/remaining") != 0)) {
        aws_reply_error(req, 400, "BadRequestException",
                        "UpdateUsage takes one operation: replace /remaining");
        ok = false;
    }
    if (ok) {
        char *end = NULL;
        const char *value = ops[0].value;
        long long parsed = value && value[0] >= '0' && value[0] <= '9' ? strtoll(value, &end, 10) : -1;
        ok = parsed >= 0 && end != NULL && *end == '\0' && parsed <= APIMODEL_QUOTA_MAX;
        if (!ok)
            aws_reply_error(req, 400, "BadRequestException",
                            "Invalid value for /remaining: a whole number 0..%lld",
                            (long long)APIMODEL_QUOTA_MAX);
        *remaining = parsed;
    }
    json_decref(body);
    return ok;
}

/* Writes the adjustment that leaves `remaining` for the key now; false after replying. */
static bool write_adjustment(api_request *req, PGconn *conn, const plan_quota *quota,
                             int64_t remaining, int64_t now)
{
    char start[TIME_RFC3339_LEN];
    int64_t period_at = period_start(quota->period, now);
    time_format_rfc3339(period_at, start, sizeof start);
    const char *params[] = {req->key_id, period_name(quota->period), start};
    /* One transaction: the adjustment, and the alerts a lowered limit has
     * crossed (as a plan change raises them); what is not committed is
     * rolled back when the connection goes back to the pool. */
    PGresult *res = api_exec(conn, "BEGIN", 0, NULL);
    if (!api_ok(res)) {
        api_reply_db_error(req, conn, res, "starting a transaction");
        PQclear(res);
        return false;
    }
    PQclear(res);
    res = api_exec(conn,
                   "SELECT coalesce((SELECT units FROM usage_counters WHERE key_id = $1 "
                   "AND period = $2 AND period_start = $3::timestamptz), 0)",
                   3, params);
    if (!api_ok(res)) {
        api_reply_db_error(req, conn, res, "reading a quota counter");
        PQclear(res);
        return false;
    }
    int64_t used = api_field_int(res, 0, 0);
    PQclear(res);
    /* remaining = limit + adjustment - used, so adjustment = remaining - limit + used. */
    int64_t limit = period_limit(quota->limit, quota->offset, quota->period, quota->set_at, now);
    int64_t adjustment;
    if (__builtin_sub_overflow(remaining, limit, &adjustment) ||
        __builtin_add_overflow(adjustment, used, &adjustment) ||
        adjustment < -APIMODEL_QUOTA_MAX || adjustment > APIMODEL_QUOTA_MAX) {
        aws_reply_error(req, 400, "BadRequestException", "remaining is out of range for this key");
        return false;
    }
    char adjustment_text[24];
    snprintf(adjustment_text, sizeof adjustment_text, "%lld", (long long)adjustment);
    const char *write_params[] = {req->key_id, period_name(quota->period), start, adjustment_text};
    res = api_exec(conn,
                   "INSERT INTO quota_adjustments (key_id, period, period_start, adjustment) "
                   "VALUES ($1, $2, $3::timestamptz, $4::bigint) "
                   "ON CONFLICT (key_id, period, period_start) DO UPDATE "
                   "SET adjustment = EXCLUDED.adjustment, updated_at = now()",
                   4, write_params);
    const char *what = "writing a quota adjustment";
    if (api_ok(res)) {
        PQclear(res);
        what = "raising the alerts of a lowered limit";
        res = api_exec(conn, "SELECT tally_raise_current_quota_alerts(NULL, $1)", 1, params);
    }
    if (api_ok(res)) {
        PQclear(res);
        what = "committing a quota adjustment";
        res = api_exec(conn, "COMMIT", 0, NULL);
    }
    bool ok = api_ok(res);
    if (!ok)
        api_reply_db_error(req, conn, res, what);
    PQclear(res);
    return ok;
}

void aws_update_usage(api_request *req)
{
    int64_t remaining;
    if (!read_remaining(req, &remaining))
        return;
    PGconn *conn = dbpool_acquire(req);
    if (conn == NULL)
        return;
    plan_quota quota;
    PGresult *keys = NULL;
    int64_t now = time_now_usec();
    bool written = false;
    if (read_plan_quota(req, conn, &quota) && (keys = plan_keys(req, conn, req->key_id)) != NULL) {
        if (!quota.has_quota)
            aws_reply_error(req, 400, "BadRequestException",
                            "Usage plan %s has no quota to update", req->id);
        else
            written = write_adjustment(req, conn, &quota, remaining, now);
    }
    if (written) {
        /* Authorize applies it from the next load: now, not in a second. */
        keycache_refresh_now();
        int64_t today = period_start(PERIOD_DAY, now);
        reply_usage(req, conn, &quota, keys, today, today);
    }
    PQclear(keys);
    dbpool_release(conn);
}
