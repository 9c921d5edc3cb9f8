/* The quota alert routes: GET /v1/alerts (admin, any key or one) and
 * GET /v1/me/alerts (the key's own, by its x-api-key). Alerts are raised
 * by the collector (and by plan or key changes) into quota_alerts, one per
 * (key, period, threshold); these routes only read them, oldest first. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api.h"
#include "query.h"
#include "timeutil.h"

#define ALERT_COLUMNS                                                                     \
    "id::text, event_id, type, key_id, customer_id, plan_id, period, "                    \
    "(extract(epoch from period_start) * 1000000)::bigint, "                              \
    "(extract(epoch from period_end) * 1000000)::bigint, threshold, quota_limit, used, "  \
    "enforcement, (extract(epoch from created_at) * 1000000)::bigint"

enum {
    COL_SEQUENCE, /* the paging position only: the public id is the event id */
    COL_EVENT_ID,
    COL_TYPE,
    COL_KEY,
    COL_CUSTOMER,
    COL_PLAN,
    COL_PERIOD,
    COL_PERIOD_START,
    COL_PERIOD_END,
    COL_THRESHOLD,
    COL_LIMIT,
    COL_USED,
    COL_ENFORCEMENT,
    COL_CREATED,
};

/* Oldest first, by the order alerts were numbered; `since` and `keyId`
 * narrow it. $1 the position (a sequence number), $2 the rows to fetch. */
#define ALERT_LIST_SQL                                                                    \
    "SELECT " ALERT_COLUMNS " FROM quota_alerts WHERE ($1::bigint IS NULL OR id > $1::bigint) " \
    "AND ($3::text IS NULL OR key_id = $3) "                                              \
    "AND ($4::timestamptz IS NULL OR created_at >= $4::timestamptz) ORDER BY id LIMIT $2::int"

static json_t *row_json(const PGresult *res, int row)
{
    const char *customer = api_field(res, row, COL_CUSTOMER);
    json_t *alert = json_object();
    json_object_set_new(alert, "id", json_string(api_field(res, row, COL_EVENT_ID)));
    json_object_set_new(alert, "type", json_string(api_field(res, row, COL_TYPE)));
    json_object_set_new(alert, "keyId", json_string(api_field(res, row, COL_KEY)));
    json_object_set_new(alert, "customerId", customer ? json_string(customer) : json_null());
    json_object_set_new(alert, "planId", json_string(api_field(res, row, COL_PLAN)));
    json_object_set_new(alert, "period", json_string(api_field(res, row, COL_PERIOD)));
    json_object_set_new(alert, "periodStart",
                        api_time_json(api_field_int(res, row, COL_PERIOD_START)));
    json_object_set_new(alert, "periodEnd", api_time_json(api_field_int(res, row, COL_PERIOD_END)));
    json_object_set_new(alert, "threshold", json_integer(api_field_int(res, row, COL_THRESHOLD)));
    json_object_set_new(alert, "limit", json_integer(api_field_int(res, row, COL_LIMIT)));
    json_object_set_new(alert, "used", json_integer(api_field_int(res, row, COL_USED)));
    json_object_set_new(alert, "enforcement", json_string(api_field(res, row, COL_ENFORCEMENT)));
    json_object_set_new(alert, "createdAt", api_time_json(api_field_int(res, row, COL_CREATED)));
    return alert;
}

/* The paging position is a sequence number (what api_reply_list wrote from
 * the first column): anything else is refused before it reaches SQL. */
static bool position_valid(const char *after)
{
    size_t len = strlen(after);
    return len <= 18 && strspn(after, "0123456789") == len;
}

/* ?since (RFC 3339) into `out` as PostgreSQL reads it; "" when absent.
 * False after replying 400. */
static bool read_since(api_request *req, char *out, size_t size)
{
    const char *since = api_query(req, "since");
    out[0] = '\0';
    if (since == NULL)
        return true;
    int64_t at;
    if (!time_parse_rfc3339(since, strlen(since), &at)) {
        api_reply_error(req, 400, "invalid_parameter",
                        "since must be an RFC 3339 time, e.g. 2026-11-28T12:00:00Z");
        return false;
    }
    time_format_rfc3339(at, out, size);
    return true;
}

/* One page of alerts for `key_id` (NULL: every key), the query already
 * validated by the caller. */
static void reply_page(api_request *req, const query_page *page, const char *key_id)
{
    static const api_list list = {
        .sql = ALERT_LIST_SQL,
        .id_column = COL_SEQUENCE,
        .row_json = row_json,
        .what = "listing alerts",
    };
    char since[TIME_RFC3339_LEN];
    if (!read_since(req, since, sizeof since))
        return;
    if (page->after[0] && !position_valid(page->after)) {
        api_reply_error(req, 400, "invalid_parameter", "position is not a position of this list");
        return;
    }
    const char *params[] = {page->after[0] ? page->after : NULL, page->fetch, key_id,
                            since[0] ? since : NULL};
    api_reply_list(req, &list, page->limit, 4, params);
}

void alerts_list(api_request *req)
{
    static const char *const allowed[] = {"limit", "position", "keyId", "since", NULL};
    query_page page;
    if (!query_read_page(req, allowed, &page))
        return;
    const char *key_id = api_query(req, "keyId");
    if (key_id && (strlen(key_id) > APIMODEL_ID_MAX || !apimodel_valid_id(key_id))) {
        api_reply_error(req, 400, "invalid_parameter", "keyId is not a valid key id");
        return;
    }
    reply_page(req, &page, key_id);
}

void alerts_me(api_request *req)
{
    /* The key is known first: a stranger learns nothing from the query's
     * validation. */
    if (!usage_me_resolve(req))
        return; /* replied 401 / 403 / 503 */
    static const char *const allowed[] = {"limit", "position", "since", NULL};
    query_page page;
    if (query_read_page(req, allowed, &page))
        reply_page(req, &page, req->key_id);
}
