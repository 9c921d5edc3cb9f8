/* Usage series and remaining quota: GET /v1/keys/{id}/usage and /quota
 * (admin), GET /v1/me/usage and /quota (the key's own x-api-key). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api.h"
#include "dashboard.h"
#include "query.h"
#include "digest.h"
#include "keycache.h"
#include "keyhash.h"
#include "period.h"
#include "rollupcols.h"
#include "timeutil.h"

/* The measures of usage_hourly (rollupcols.h), summed: ", sum(requests),
 * sum(units), sum(bytes)" after the bucket (and the group) in the SELECT
 * list. Each answer item carries them under the columns' names, in this
 * order: the contract's member names are the columns' (single words); a
 * measure whose column is not a fit member name would need one of its own
 * in rollupcols.h. */
#define USAGE_SUM(id, column) ", sum(" column ")"
#define USAGE_SUMS ROLLUP_MEASURES(USAGE_SUM)
static const char *const measure_names[ROLLUP_MEASURE_COUNT] = {
#define USAGE_MEASURE_NAME(id, column) [ROLLUP_MEASURE_##id] = column,
    ROLLUP_MEASURES(USAGE_MEASURE_NAME)
#undef USAGE_MEASURE_NAME
};

/* The most items a grouped series may hold (buckets x endpoints). */
#define USAGE_ITEMS_MAX 20000

/* /v1/me: the key of the x-api-key from the cache, which holds every key
 * as of its last load (a second ago by default), so that an unknown key
 * costs no query. Only a key the cache does not know is looked up in the
 * database (it may have been created since, by another process), and
 * those look-ups are rate-limited (keycache_unknown_lookup_allowed): a
 * flood of random keys is answered 401 from memory. Returns true when it
 * replied or resolved; false when the database must be asked. */
static bool resolve_me_from_cache(api_request *req, const uint8_t stored[KEYHASH_LEN],
                                  bool *resolved)
{
    bool enabled = false;
    int64_t now = time_now_usec();
    *resolved = false;
    switch (keycache_find_key(stored, now, req->key_id, sizeof req->key_id, &enabled)) {
    case KEYCACHE_KEY_FOUND:
        if (enabled)
            *resolved = true;
        else
            api_reply_error(req, 403, "key_disabled", "the API key is disabled");
        return true;
    case KEYCACHE_KEY_UNKNOWN:
        if (keycache_unknown_lookup_allowed(now))
            return false;
        api_reply_error(req, 401, "unauthorized", "the API key is not valid");
        return true;
    case KEYCACHE_KEY_UNSURE:
        break;
    }
    if (keycache_unknown_lookup_allowed(now))
        return false;
    api_add_header(req, "Retry-After", "1");
    api_reply_error(req, 503, "not_ready", "the key cache is not loaded; retry shortly");
    return true;
}

/* Resolves the key the request is about into key_id from the database:
 * the path's id (admin routes; a dashboard link's key, `by_link`, is in
 * req->id too) or, for /v1/me, the row whose value_hash is `stored` (or
 * `legacy`, the value's SHA-256, in a row still in the old form: written
 * since the start's conversion). False after replying 401/403/404. */
static bool resolve_key(api_request *req, PGconn *conn, bool me, bool by_link,
                        const uint8_t stored[KEYHASH_LEN], const uint8_t legacy[KEYHASH_LEN])
{
    char stored_hex[2 * KEYHASH_LEN + 1], legacy_hex[2 * KEYHASH_LEN + 1];
    PGresult *res;
    if (me) {
        digest_to_hex(stored, KEYHASH_LEN, stored_hex);
        digest_to_hex(legacy, KEYHASH_LEN, legacy_hex);
        const char *params[] = {stored_hex, legacy_hex};
        res = api_exec(conn,
                       "SELECT id, enabled FROM api_keys WHERE (value_hash = decode($1, 'hex') "
                       "AND value_hash_form = 'hmac-sha256') OR (value_hash = decode($2, 'hex') "
                       "AND value_hash_form = 'sha256') "
                       "ORDER BY value_hash_form = 'hmac-sha256' DESC, id LIMIT 1",
                       2, params);
    } else {
        const char *params[] = {req->id};
        res = api_exec(conn, "SELECT id, enabled FROM api_keys WHERE id = $1", 1, params);
    }
    bool ok = false;
    if (!api_ok(res)) {
        api_reply_db_error(req, conn, res, "looking up a key");
    } else if (PQntuples(res) == 0) {
        if (me)
            api_reply_error(req, 401, "unauthorized", "the API key is not valid");
        else if (by_link)
            api_reply_error(req, 401, "unauthorized", "the dashboard link's key no longer exists");
        else
            api_reply_error(req, 404, "not_found", "no key with id \"%s\"", req->id);
    } else if ((me || by_link) && strcmp(PQgetvalue(res, 0, 1), "t") != 0) {
        snprintf(req->key_id, sizeof req->key_id, "%s", PQgetvalue(res, 0, 0));
        api_reply_error(req, 403, "key_disabled", "the API key is disabled");
    } else {
        snprintf(req->key_id, sizeof req->key_id, "%s", PQgetvalue(res, 0, 0));
        ok = true;
    }
    PQclear(res);
    return ok;
}

/* The quota answer from its facts (a keycache_quota_facts, from the cache
 * or from the database): the same shape whichever answered. */
static void quota_reply(api_request *req, const keycache_quota_facts *f, int64_t now)
{
    if (!f->has_plan) {
        api_reply_error(req, 409, "no_plan", "key \"%s\" is attached to no plan", req->key_id);
        return;
    }
    json_t *answer = json_pack("{s:s,s:s}", "keyId", req->key_id, "planId", f->plan_id);
    if (f->has_quota) {
        int64_t limit = keycache_adjusted_limit(
            period_limit(f->quota_limit, f->quota_offset, f->quota_period, f->quota_set_at, now),
            f->quota_adjustment);
        int64_t used = f->used;
        json_object_set_new(answer, "period", json_string(period_name(f->quota_period)));
        json_object_set_new(answer, "limit", json_integer(limit));
        json_object_set_new(answer, "used", json_integer(used));
        json_object_set_new(answer, "remaining", json_integer(used < limit ? limit - used : 0));
        json_object_set_new(answer, "overage", json_integer(used > limit ? used - limit : 0));
        json_object_set_new(answer, "periodStart", api_time_json(period_start(f->quota_period, now)));
        json_object_set_new(answer, "periodEnd", api_time_json(period_end(f->quota_period, now)));
    } else { /* a plan without a quota: nothing to count against */
        const char *nulls[] = {"period", "limit", "used", "remaining", "overage",
                               "periodStart", "periodEnd"};
        for (size_t i = 0; i < sizeof nulls / sizeof nulls[0]; i++)
            json_object_set_new(answer, nulls[i], json_null());
    }
    json_object_set_new(answer, "asOf", api_time_json(f->as_of));
    api_reply_json(req, 200, answer);
}

/* The quota from the database: one query by primary keys. */
static void quota(api_request *req, PGconn *conn)
{
    int64_t now = time_now_usec();
    char starts[PERIOD_KIND_COUNT][TIME_RFC3339_LEN];
    for (int k = 0; k < PERIOD_KIND_COUNT; k++)
        time_format_rfc3339(period_start((period_kind)k, now), starts[k], sizeof starts[k]);
    const char *params[] = {req->key_id, starts[PERIOD_DAY], starts[PERIOD_WEEK],
                            starts[PERIOD_MONTH]};
    PGresult *res = api_exec(
        conn,
        "SELECT k.plan_id, p.quota_limit, p.quota_period, p.quota_offset, "
        "(extract(epoch from p.quota_set_at) * 1000000)::bigint, coalesce(c.units, 0), "
        "(extract(epoch from c.updated_at) * 1000000)::bigint, coalesce(a.adjustment, 0) "
        "FROM api_keys k LEFT JOIN plans p ON p.id = k.plan_id "
        "LEFT JOIN usage_counters c ON c.key_id = k.id AND c.period = p.quota_period "
        "AND c.period_start = CASE p.quota_period WHEN 'DAY' THEN $2::timestamptz "
        "WHEN 'WEEK' THEN $3::timestamptz ELSE $4::timestamptz END "
        "LEFT JOIN quota_adjustments a ON a.key_id = k.id AND a.period = p.quota_period "
        "AND a.period_start = CASE p.quota_period WHEN 'DAY' THEN $2::timestamptz "
        "WHEN 'WEEK' THEN $3::timestamptz ELSE $4::timestamptz END WHERE k.id = $1",
        4, params);
    /* asOf says how fresh `used` is: when the collector last wrote the
     * counter, or (no counter yet: nothing counted) the time of this read. */
    int64_t read_at = time_now_usec();
    if (!api_ok(res)) {
        api_reply_db_error(req, conn, res, "reading a quota");
    } else if (PQntuples(res) == 0) {
        api_reply_error(req, 404, "not_found", "no key with id \"%s\"", req->key_id);
    } else {
        keycache_quota_facts f = {0};
        f.has_plan = api_field(res, 0, 0) != NULL;
        if (f.has_plan)
            snprintf(f.plan_id, sizeof f.plan_id, "%s", api_field(res, 0, 0));
        f.has_quota = f.has_plan && api_field(res, 0, 1) != NULL &&
                      period_parse(api_field(res, 0, 2), &f.quota_period);
        if (f.has_quota) {
            f.quota_limit = api_field_int(res, 0, 1);
            f.quota_offset = api_field_int(res, 0, 3);
            f.quota_set_at = api_field_int(res, 0, 4);
            f.used = api_field_int(res, 0, 5);
            f.quota_adjustment = api_field_int(res, 0, 7);
        }
        f.as_of = api_field(res, 0, 6) != NULL ? api_field_int(res, 0, 6) : read_at;
        quota_reply(req, &f, now);
    }
    PQclear(res);
}

typedef struct {
    const char *method, *endpoint; /* borrowed from the result */
} group;

static int compare_groups(const void *a, const void *b)
{
    const group *x = a, *y = b;
    int c = strcmp(x->method, y->method);
    return c ? c : strcmp(x->endpoint, y->endpoint);
}

static json_t *item(int64_t start, int64_t end, const PGresult *res, int row, const group *g)
{
    json_t *out = json_object();
    json_object_set_new(out, "start", api_time_json(start));
    json_object_set_new(out, "end", api_time_json(end));
    int first = g ? 3 : 1; /* the measures follow the bucket (and the group's columns) */
    for (int m = 0; m < ROLLUP_MEASURE_COUNT; m++)
        json_object_set_new(out, measure_names[m],
                            json_integer(row >= 0 ? api_field_int(res, row, first + m) : 0));
    if (g) {
        json_object_set_new(out, "method", json_string(g->method));
        json_object_set_new(out, "endpoint", json_string(g->endpoint));
    }
    return out;
}

static void usage(api_request *req, PGconn *conn, const apimodel_usage_query *q)
{
    char from[TIME_RFC3339_LEN], to[TIME_RFC3339_LEN];
    time_format_rfc3339(q->from, from, sizeof from);
    time_format_rfc3339(q->to, to, sizeof to);
    /* Each grouped row is one item of the answer, so more rows than
     * USAGE_ITEMS_MAX is refused anyway: the database stops at one more
     * than that, and a key with millions of rows never sends them here. */
    char row_limit[24];
    snprintf(row_limit, sizeof row_limit, "%d", USAGE_ITEMS_MAX + 1);
    const char *params[] = {req->key_id, from, to, apimodel_granularity_name(q->granularity),
                            row_limit};
    PGresult *res = api_exec(
        conn,
        q->group_by_endpoint
            ? "SELECT extract(epoch from date_trunc($4, hour))::bigint, method, endpoint"
              USAGE_SUMS " FROM usage_hourly WHERE key_id = $1 "
              "AND hour >= $2::timestamptz AND hour < $3::timestamptz GROUP BY 1, 2, 3 "
              "ORDER BY 1, method COLLATE \"C\", endpoint COLLATE \"C\" LIMIT $5::int"
            : "SELECT extract(epoch from date_trunc($4, hour))::bigint" USAGE_SUMS
              " FROM usage_hourly WHERE key_id = $1 "
              "AND hour >= $2::timestamptz AND hour < $3::timestamptz GROUP BY 1 ORDER BY 1",
        q->group_by_endpoint ? 5 : 4, params);
    if (!api_ok(res)) {
        api_reply_db_error(req, conn, res, "reading usage");
        PQclear(res);
        return;
    }
    int rows = PQntuples(res);
    if (q->group_by_endpoint && rows > USAGE_ITEMS_MAX) {
        api_reply_error(req, 400, "too_many_points",
                        "more than %d (bucket, method, endpoint) rows: narrow from/to or use a "
                        "coarser granularity",
                        USAGE_ITEMS_MAX);
        PQclear(res);
        return;
    }
    group *groups = NULL;
    size_t group_count = 0;
    if (q->group_by_endpoint && rows > 0) {
        groups = malloc((size_t)rows * sizeof *groups);
        if (groups == NULL) {
            api_reply_error(req, 500, "internal", "out of memory");
            PQclear(res);
            return;
        }
        for (int r = 0; r < rows; r++)
            groups[r] = (group){PQgetvalue(res, r, 1), PQgetvalue(res, r, 2)};
        qsort(groups, (size_t)rows, sizeof *groups, compare_groups);
        for (int r = 0; r < rows; r++) {
            if (group_count == 0 || compare_groups(&groups[group_count - 1], &groups[r]) != 0)
                groups[group_count++] = groups[r];
        }
        if ((int64_t)group_count * q->points > USAGE_ITEMS_MAX) {
            api_reply_error(req, 400, "too_many_points",
                            "%zu endpoints x %lld buckets is more than %d items: narrow from/to "
                            "or use a coarser granularity",
                            group_count, (long long)q->points, USAGE_ITEMS_MAX);
            free(groups);
            PQclear(res);
            return;
        }
    }
    json_t *items = json_array();
    int row = 0;
    for (int64_t start = q->from; start < q->to;) {
        int64_t end = apimodel_bucket_next(q->granularity, start);
        /* Rows of a bucket before `start` cannot exist: the query is bounded by from. */
        if (!q->group_by_endpoint) {
            bool here = row < rows && api_field_int(res, row, 0) * USEC_PER_SEC == start;
            json_array_append_new(items, item(start, end, res, here ? row : -1, NULL));
            if (here)
                row++;
        } else {
            for (size_t g = 0; g < group_count; g++) {
                bool here = row < rows && api_field_int(res, row, 0) * USEC_PER_SEC == start &&
                            strcmp(PQgetvalue(res, row, 1), groups[g].method) == 0 &&
                            strcmp(PQgetvalue(res, row, 2), groups[g].endpoint) == 0;
                json_array_append_new(items, item(start, end, res, here ? row : -1, &groups[g]));
                if (here)
                    row++;
            }
        }
        start = end;
    }
    json_t *answer = json_pack("{s:s,s:s,s:s,s:s,s:o}", "keyId", req->key_id, "from", from, "to",
                               to, "granularity", apimodel_granularity_name(q->granularity),
                               "items", items);
    if (q->group_by_endpoint)
        json_object_set_new(answer, "groupBy", json_string("endpoint"));
    api_reply_json(req, 200, answer);
    free(groups);
    PQclear(res);
}

static const char *const no_args[] = {NULL};

/* GET /v1/keys/{id}/quota (me false) and GET /v1/me/quota (one path for
 * both) from the key cache, in memory. Leaves the request unanswered when
 * the cache cannot answer for this key: the database must. */
static void quota_from_cache(api_request *req, bool me)
{
    /* The cache holds every key (by id and by the hash of its secret), its
     * plan and its current counter as of the last reload (a second at
     * most): no database round trip. The admin route checks its query
     * first (the caller is trusted); /v1/me authenticates first, so that a
     * stranger learns nothing from a query's validation. */
    uint8_t hash[32];
    bool by_link = false; /* a dashboard link: the key is req->id, a customer asks */
    if (me && !dashboard_me_token(req, &by_link))
        return; /* replied 401 */
    bool by_hash = me && !by_link;
    if (!by_hash)
        snprintf(req->key_id, sizeof req->key_id, "%s", req->id); /* for the log line */
    if (by_hash ? !auth_api_key_hash(req, hash) : !me && !api_check_query(req, no_args))
        return; /* replied 401 / 400 */
    keycache_quota_facts facts;
    int64_t now = time_now_usec();
    if (!keycache_quota(by_hash ? NULL : req->id, by_hash ? hash : NULL, now, &facts))
        return; /* a key the cache does not know (yet): the database answers */
    snprintf(req->key_id, sizeof req->key_id, "%s", facts.key_id);
    if (me && !facts.enabled)
        api_reply_error(req, 403, "key_disabled", "the API key is disabled");
    else if (!me || api_check_query(req, no_args))
        quota_reply(req, &facts, now);
}

/* Usage (is_usage) or quota from the database, by the path's id or (me)
 * the x-api-key; on a database worker. */
static void answer_from_database(api_request *req, bool is_usage, bool me)
{
    uint8_t stored[KEYHASH_LEN], legacy[KEYHASH_LEN];
    bool resolved = false, by_link = false;
    /* /v1/me with a dashboard link: the key is the link's, by id. */
    if (me && !dashboard_me_token(req, &by_link))
        return; /* replied 401 */
    if (by_link)
        me = false;
    /* /v1/me: the cache first, before a connection is even taken. */
    if (me && (!keyhash_from_request(req, stored, legacy) ||
               resolve_me_from_cache(req, stored, &resolved)) && !resolved)
        return; /* replied */
    PGconn *conn = dbpool_acquire(req);
    if (conn == NULL)
        return;
    /* The key first: a stranger learns nothing from a query's validation.
     * The admin quota query finds (or misses) the key itself: one round trip. */
    bool admin_quota = !is_usage && !me && !by_link;
    if (admin_quota)
        snprintf(req->key_id, sizeof req->key_id, "%s", req->id);
    if (admin_quota || resolved || resolve_key(req, conn, me, by_link, stored, legacy)) {
        static const char *const usage_args[] = {"from", "to", "granularity", "groupBy", NULL};
        if (!query_validate(req, is_usage ? usage_args : no_args)) {
            /* replied 400 */
        } else if (is_usage) {
            apimodel_usage_query q;
            apimodel_error err;
            if (apimodel_usage_query_parse(api_query(req, "from"), api_query(req, "to"),
                                           api_query(req, "granularity"),
                                           api_query(req, "groupBy"), time_now_usec(), &q, &err))
                usage(req, conn, &q);
            else
                api_reply_error(req, 400, err.code, "%s", err.message);
        } else {
            quota(req, conn);
        }
    }
    dbpool_release(conn);
}

void usage_key_usage(api_request *req)
{
    answer_from_database(req, true, false);
}

void usage_me_usage(api_request *req)
{
    answer_from_database(req, true, true);
}

/* The quota routes run on the HTTP thread first (routes.h): the cache
 * answers most; what it cannot, a worker answers from the database. */
void usage_key_quota(api_request *req)
{
    if (req->on_worker)
        answer_from_database(req, false, false);
    else
        quota_from_cache(req, false);
}

void usage_me_quota(api_request *req)
{
    if (req->on_worker)
        answer_from_database(req, false, true);
    else
        quota_from_cache(req, true);
}

bool usage_me_resolve(api_request *req)
{
    uint8_t stored[KEYHASH_LEN] = {0}, legacy[KEYHASH_LEN] = {0};
    bool resolved = false, by_link = false;
    /* A dashboard link names its key (req->id), checked in the database;
     * else the x-api-key, the cache first. */
    if (!dashboard_me_token(req, &by_link))
        return false; /* replied 401 */
    if (!by_link && (!keyhash_from_request(req, stored, legacy) ||
                     resolve_me_from_cache(req, stored, &resolved)) && !resolved)
        return false; /* replied */
    if (resolved)
        return true;
    PGconn *conn = dbpool_acquire(req);
    if (conn == NULL)
        return false;
    resolved = resolve_key(req, conn, !by_link, by_link, stored, legacy);
    dbpool_release(conn);
    return resolved;
}
