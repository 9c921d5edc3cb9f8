/* The operator overview's routes (issue #14), admin only: GET
 * /v1/quotas/nearest (keys nearest to or past their quota), GET
 * /v1/usage/top (top keys by units today) and GET /v1/status (collectors,
 * dead letters, reporter, webhooks). Each is a few small queries; the
 * collectors' figures are the rows they write in their own commits
 * (collector_status, migration 008). */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api.h"
#include "period.h"
#include "query.h"
#include "timeutil.h"

/* Collector rows older than this are instances long gone. */
#define STATUS_RETAIN "7 days"
/* A collector's rate counts towards "events/s now" only when it committed
 * this recently; an idle or stopped one counts 0. */
#define RATE_FRESH "60 seconds"

/* ?limit (1..100, default 10); false after replying 400. */
static bool read_limit(api_request *req, char text[16])
{
    static const char *const allowed[] = {"limit", NULL};
    if (!query_validate(req, allowed))
        return false;
    int limit = 10;
    apimodel_error err;
    if (api_query(req, "limit") != NULL &&
        !apimodel_parse_limit(api_query(req, "limit"), &limit, &err)) {
        api_reply_error(req, 400, err.code, "%s", err.message);
        return false;
    }
    snprintf(text, 16, "%d", limit);
    return true;
}

/* Runs `sql` on a pooled connection (released after), or NULL after
 * replying. The caller PQclears. */
static PGresult *query_rows(api_request *req, const char *sql, int count,
                            const char *const *params, const char *what)
{
    PGconn *conn = dbpool_acquire(req);
    if (conn == NULL)
        return NULL;
    PGresult *res = api_exec(conn, sql, count, params);
    if (!api_ok(res)) {
        api_reply_db_error(req, conn, res, what);
        PQclear(res);
        res = NULL;
    }
    dbpool_release(conn);
    return res;
}

static json_t *nullable_time(const PGresult *res, int row, int col)
{
    return api_field(res, row, col) ? api_time_json(api_field_int(res, row, col)) : json_null();
}

void overview_top_usage(api_request *req)
{
    char limit[16], day[TIME_RFC3339_LEN];
    if (!read_limit(req, limit))
        return;
    int64_t now = time_now_usec();
    time_format_rfc3339(period_start(PERIOD_DAY, now), day, sizeof day);
    const char *params[] = {day, limit};
    PGresult *res = query_rows(
        req,
        "SELECT c.key_id, coalesce(k.name, ''), c.units, c.requests FROM usage_counters c "
        "LEFT JOIN api_keys k ON k.id = c.key_id WHERE c.period = 'DAY' "
        "AND c.period_start = $1::timestamptz ORDER BY c.units DESC, c.key_id LIMIT $2::int",
        2, params, "reading today's top keys");
    if (res == NULL)
        return;
    json_t *items = json_array();
    for (int r = 0; r < PQntuples(res); r++)
        json_array_append_new(items, json_pack("{s:s,s:s,s:I,s:I}", "keyId", api_field(res, r, 0),
                                               "name", api_field(res, r, 1), "units",
                                               (json_int_t)api_field_int(res, r, 2), "requests",
                                               (json_int_t)api_field_int(res, r, 3)));
    PQclear(res);
    api_reply_json(req, 200,
                   json_pack("{s:s,s:o,s:o}", "dayStart", day, "asOf", api_time_json(now), "items",
                             items));
}

/* One key's quota standing from a row of the nearest-quota query. */
static json_t *standing_json(const PGresult *res, int r, int64_t now)
{
    period_kind kind = PERIOD_MONTH;
    period_parse(api_field(res, r, 4), &kind);
    int64_t limit = period_limit(api_field_int(res, r, 3), api_field_int(res, r, 5), kind,
                                 api_field_int(res, r, 6), now);
    int64_t used = api_field_int(res, r, 7);
    double percent = limit > 0 ? 100.0 * (double)used / (double)limit : (used > 0 ? 100.0 : 0);
    return json_pack("{s:s,s:s,s:s,s:s,s:I,s:I,s:I,s:I,s:f,s:o}", "keyId",
                     api_field(res, r, 0), "name", api_field(res, r, 1), "planId",
                     api_field(res, r, 2), "period", period_name(kind), "limit",
                     (json_int_t)limit, "used", (json_int_t)used, "remaining",
                     (json_int_t)(used < limit ? limit - used : 0), "overage",
                     (json_int_t)(used > limit ? used - limit : 0), "percent", percent,
                     "periodEnd", api_time_json(period_end(kind, now)));
}

void overview_nearest_quota(api_request *req)
{
    char limit[16];
    if (!read_limit(req, limit))
        return;
    int64_t now = time_now_usec();
    char starts[PERIOD_KIND_COUNT][TIME_RFC3339_LEN];
    for (int k = 0; k < PERIOD_KIND_COUNT; k++)
        time_format_rfc3339(period_start((period_kind)k, now), starts[k], sizeof starts[k]);
    const char *params[] = {starts[PERIOD_DAY], starts[PERIOD_WEEK], starts[PERIOD_MONTH], limit};
    /* Ordered by the plan's full limit; in a plan's first period the limit
     * in force (less its offset) is computed below, as the quota route does. */
    PGresult *res = query_rows(
        req,
        "SELECT k.id, k.name, p.id, p.quota_limit, p.quota_period, p.quota_offset, "
        "(extract(epoch from p.quota_set_at) * 1000000)::bigint, coalesce(c.units, 0) "
        "FROM api_keys k JOIN plans p ON p.id = k.plan_id AND p.quota_limit IS NOT NULL "
        "LEFT JOIN usage_counters c ON c.key_id = k.id AND c.period = p.quota_period "
        "AND c.period_start = CASE p.quota_period WHEN 'DAY' THEN $1::timestamptz "
        "WHEN 'WEEK' THEN $2::timestamptz ELSE $3::timestamptz END WHERE k.enabled "
        "ORDER BY coalesce(c.units, 0)::float8 / greatest(p.quota_limit, 1) DESC, k.id "
        "LIMIT $4::int",
        4, params, "reading the keys nearest their quota");
    if (res == NULL)
        return;
    json_t *items = json_array();
    for (int r = 0; r < PQntuples(res); r++)
        json_array_append_new(items, standing_json(res, r, now));
    PQclear(res);
    api_reply_json(req, 200, json_pack("{s:o,s:o}", "asOf", api_time_json(now), "items", items));
}

/* The collectors' rows, and their sums: events/s of those fresh, the
 * largest lag, the last commit and the dead letters by code. */
static json_t *collectors_json(const PGresult *res, json_t *summary)
{
    json_t *rows = json_array(), *dlq = json_object();
    double rate = 0;
    long long lag = 0;
    for (int r = 0; r < PQntuples(res); r++) {
        bool fresh = strcmp(api_field(res, r, 8), "t") == 0;
        json_t *codes = json_loads(api_field(res, r, 7), 0, NULL);
        const char *code;
        json_t *n;
        json_object_foreach(codes, code, n)
        {
            json_int_t sum = json_integer_value(json_object_get(dlq, code));
            json_int_t add = json_integer_value(n);
            if (add > 0 && sum <= INT64_MAX - add) /* saturates instead of wrapping */
                json_object_set_new(dlq, code, json_integer(sum + add));
        }
        double row_rate = strtod(api_field(res, r, 5), NULL);
        if (fresh)
            rate += row_rate;
        if (api_field(res, r, 6) && api_field_int(res, r, 6) > lag)
            lag = api_field_int(res, r, 6);
        json_array_append_new(
            rows, json_pack("{s:s,s:s,s:o,s:o,s:I,s:f,s:o,s:o,s:b}", "instance",
                            api_field(res, r, 0), "kafkaGroup", api_field(res, r, 1), "startedAt",
                            nullable_time(res, r, 2), "lastCommitAt", nullable_time(res, r, 3),
                            "eventsCounted", (json_int_t)api_field_int(res, r, 4),
                            "eventsPerSecond", row_rate, "lag",
                            api_field(res, r, 6) ? json_integer(api_field_int(res, r, 6))
                                                 : json_null(),
                            "dlqByCode", codes ? codes : json_object(), "fresh", fresh));
    }
    json_object_set_new(summary, "eventsPerSecond", json_real(rate));
    json_object_set_new(summary, "lag", json_integer(lag));
    json_object_set_new(summary, "lastCommitAt",
                        PQntuples(res) > 0 ? nullable_time(res, 0, 3) : json_null());
    json_object_set_new(summary, "dlqByCode", dlq);
    return rows;
}

void overview_status(api_request *req)
{
    if (!query_validate(req, (const char *const[]){NULL}))
        return;
    PGconn *conn = dbpool_acquire(req);
    if (conn == NULL)
        return;
    int64_t now = time_now_usec();
    PGresult *collectors = api_exec(
        conn,
        "SELECT instance, kafka_group, (extract(epoch from started_at) * 1000000)::bigint, "
        "(extract(epoch from last_commit_at) * 1000000)::bigint, events_counted, "
        "events_per_second, lag_messages, dlq_by_code::text, "
        "last_commit_at > now() - interval '" RATE_FRESH "' FROM collector_status "
        "WHERE last_commit_at > now() - interval '" STATUS_RETAIN "' "
        "ORDER BY last_commit_at DESC LIMIT 50",
        0, NULL);
    PGresult *reporter = api_ok(collectors)
        ? api_exec(conn,
                   "SELECT count(*) FILTER (WHERE status = 'pending'), "
                   "count(*) FILTER (WHERE status = 'parked'), "
                   "(extract(epoch from max(done_at) FILTER (WHERE status = 'accepted')) "
                   "* 1000000)::bigint FROM stripe_reports",
                   0, NULL)
        : NULL;
    PGresult *webhooks = api_ok(reporter)
        ? api_exec(conn,
                   "SELECT count(*) FILTER (WHERE status = 'pending' AND attempts > 0), "
                   "count(*) FILTER (WHERE status = 'parked'), "
                   "(extract(epoch from max(last_attempt_at) FILTER (WHERE status <> "
                   "'delivered')) * 1000000)::bigint FROM webhook_deliveries",
                   0, NULL)
        : NULL;
    const PGresult *failed = !api_ok(collectors) ? collectors : !api_ok(reporter) ? reporter
                                                               : !api_ok(webhooks) ? webhooks
                                                                                   : NULL;
    if (failed != NULL) {
        api_reply_db_error(req, conn, failed, "reading the pipeline's status");
    } else {
        json_t *answer = json_pack("{s:o}", "asOf", api_time_json(now));
        json_object_set_new(answer, "collectors", collectors_json(collectors, answer));
        json_object_set_new(
            answer, "reporter",
            json_pack("{s:I,s:I,s:o}", "pending", (json_int_t)api_field_int(reporter, 0, 0),
                      "parked", (json_int_t)api_field_int(reporter, 0, 1), "lastSuccessAt",
                      nullable_time(reporter, 0, 2)));
        json_object_set_new(
            answer, "webhooks",
            json_pack("{s:I,s:I,s:o}", "failing", (json_int_t)api_field_int(webhooks, 0, 0),
                      "parked", (json_int_t)api_field_int(webhooks, 0, 1), "lastFailureAt",
                      nullable_time(webhooks, 0, 2)));
        api_reply_json(req, 200, answer);
    }
    PQclear(collectors);
    PQclear(reporter);
    PQclear(webhooks);
    dbpool_release(conn);
}
