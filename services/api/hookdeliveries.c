/* The webhook delivery log and resend (admin): GET /v1/webhooks/{id}/deliveries
 * and POST /v1/webhooks/{id}/resend, over the outbox tally-reporter works
 * (migrations/006_overage_alerts.sql; README "Webhooks"). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api.h"
#include "query.h"

/* The longest event id taken (quota_alerts' are "evt_" + 32 hex digits). */
#define EVENT_ID_MAX 64
/* The attempts shown with each delivery, newest first. */
#define ATTEMPTS_SHOWN "20"

#define USEC(column) "(extract(epoch from " column ") * 1000000)::bigint"

enum {
    COL_ALERT_ID, COL_EVENT_ID, COL_TYPE, COL_KEY_ID, COL_THRESHOLD, COL_STATUS, COL_ATTEMPTS,
    COL_NEXT_ATTEMPT, COL_LAST_ATTEMPT, COL_LAST_STATUS, COL_LAST_ERROR, COL_DELIVERED,
    COL_CREATED, COL_ATTEMPT_LOG
};

/* A timestamp column (usec text) as RFC 3339, or null. */
static json_t *time_or_null(const PGresult *res, int row, int col)
{
    const char *v = api_field(res, row, col);
    return v ? api_time_json(strtoll(v, NULL, 10)) : json_null();
}

static json_t *text_or_null(const PGresult *res, int row, int col)
{
    const char *v = api_field(res, row, col);
    return v ? json_string(v) : json_null();
}

static json_t *delivery_json(const PGresult *res, int row)
{
    const char *last_status = api_field(res, row, COL_LAST_STATUS);
    json_t *attempts = json_loads(api_field(res, row, COL_ATTEMPT_LOG), 0, NULL);
    json_t *item = json_pack("{s:s,s:s,s:s,s:I,s:s,s:I}", "eventId",
                             api_field(res, row, COL_EVENT_ID), "type",
                             api_field(res, row, COL_TYPE), "keyId",
                             api_field(res, row, COL_KEY_ID), "threshold",
                             (json_int_t)api_field_int(res, row, COL_THRESHOLD), "status",
                             api_field(res, row, COL_STATUS), "attempts",
                             (json_int_t)api_field_int(res, row, COL_ATTEMPTS));
    json_object_set_new(item, "nextAttemptAt",
                        strcmp(api_field(res, row, COL_STATUS), "pending") == 0
                            ? time_or_null(res, row, COL_NEXT_ATTEMPT)
                            : json_null());
    json_object_set_new(item, "lastAttemptAt", time_or_null(res, row, COL_LAST_ATTEMPT));
    json_object_set_new(item, "lastHttpStatus",
                        last_status ? json_integer(strtoll(last_status, NULL, 10)) : json_null());
    json_object_set_new(item, "lastError", text_or_null(res, row, COL_LAST_ERROR));
    json_object_set_new(item, "deliveredAt", time_or_null(res, row, COL_DELIVERED));
    json_object_set_new(item, "createdAt", time_or_null(res, row, COL_CREATED));
    json_object_set_new(item, "attemptLog", attempts ? attempts : json_array());
    return item;
}

/* True after a 404 when the endpoint does not exist; false otherwise (or
 * after another error answer, which *answered says). */
static bool endpoint_missing(api_request *req, bool *answered)
{
    *answered = false;
    PGconn *conn = dbpool_acquire(req);
    if (conn == NULL) {
        *answered = true;
        return false;
    }
    const char *params[] = {req->id};
    PGresult *res = api_exec(conn, "SELECT 1 FROM webhook_endpoints WHERE id = $1", 1, params);
    bool missing = false;
    if (!api_ok(res)) {
        api_reply_db_error(req, conn, res, "reading a webhook endpoint");
        *answered = true;
    } else if (PQntuples(res) == 0) {
        api_reply_error(req, 404, "not_found", "no webhook endpoint with id \"%s\"", req->id);
        missing = true;
        *answered = true;
    }
    PQclear(res);
    dbpool_release(conn);
    return missing;
}

void hookdeliveries_list(api_request *req)
{
    static const char *const allowed[] = {"limit", "position", "status", NULL};
    /* Newest first: the position is the last alert id shown. */
    static const api_list list = {
        .sql = "SELECT d.alert_id, a.event_id, a.type, a.key_id, a.threshold, d.status, "
               "       d.attempts, " USEC("d.next_attempt_at") ", " USEC("d.last_attempt_at") ", "
               "       d.last_http_status, d.last_error, " USEC("d.delivered_at") ", "
               USEC("d.created_at") ", "
               "       (SELECT coalesce(json_agg(json_build_object("
               "            'attemptedAt', to_char(t.attempted_at AT TIME ZONE 'UTC', "
               "                                   'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"'), "
               "            'httpStatus', t.http_status, 'error', t.error, "
               "            'durationMs', t.duration_ms) ORDER BY t.id DESC), '[]')::text "
               "          FROM (SELECT * FROM webhook_attempts t "
               "                 WHERE t.alert_id = d.alert_id AND t.endpoint_id = d.endpoint_id "
               "                 ORDER BY t.id DESC LIMIT " ATTEMPTS_SHOWN ") t) "
               "  FROM webhook_deliveries d JOIN quota_alerts a ON a.id = d.alert_id "
               " WHERE d.endpoint_id = $3 "
               "   AND ($1::bigint IS NULL OR d.alert_id < $1::bigint) "
               "   AND ($4::text IS NULL OR d.status = $4) "
               " ORDER BY d.alert_id DESC LIMIT $2::int",
        .id_column = COL_ALERT_ID,
        .row_json = delivery_json,
        .what = "listing webhook deliveries",
    };
    query_page page;
    if (!query_read_page(req, allowed, &page))
        return;
    if (page.after[0] && strspn(page.after, "0123456789") != strlen(page.after)) {
        api_reply_error(req, 400, "invalid_parameter", "position is not one this route gave");
        return;
    }
    const char *status = api_query(req, "status");
    if (status && strcmp(status, "pending") != 0 && strcmp(status, "delivered") != 0 &&
        strcmp(status, "parked") != 0) {
        api_reply_error(req, 400, "invalid_parameter",
                        "status must be pending, delivered or parked");
        return;
    }
    bool answered;
    if (endpoint_missing(req, &answered) || answered)
        return;
    const char *params[] = {page.after[0] ? page.after : NULL, page.fetch, req->id, status};
    api_reply_list(req, &list, page.limit, 4, params);
}

/* The body's eventId into out; false after replying 400. */
static bool read_event_id(api_request *req, char out[EVENT_ID_MAX + 1])
{
    json_t *body = api_parse_body(req);
    if (body == NULL)
        return false;
    json_t *value = json_object_get(body, "eventId");
    const char *text = json_is_string(value) ? json_string_value(value) : "";
    size_t len = strlen(text);
    bool ok = json_object_size(body) == 1 && len >= 1 && len <= EVENT_ID_MAX &&
              strspn(text, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-") ==
                  len;
    if (ok)
        memcpy(out, text, len + 1);
    json_decref(body);
    if (!ok)
        api_reply_error(req, 400, "invalid_body",
                        "the body must be {\"eventId\": \"evt_...\"} and nothing else");
    return ok;
}

/* Queues the event for the endpoint again, as a new delivery with a whole
 * retry window: pending, attempts 0, due now. An event raised before the
 * endpoint existed (or wanted its type) gets a delivery too. The event id
 * stays the same: receivers deduplicate on it. */
void hookdeliveries_resend(api_request *req)
{
    char event_id[EVENT_ID_MAX + 1];
    if (!read_event_id(req, event_id))
        return;
    PGconn *conn = dbpool_acquire(req);
    if (conn == NULL)
        return;
    const char *params[] = {req->id, event_id};
    PGresult *res = api_exec(
        conn,
        "INSERT INTO webhook_deliveries AS d (alert_id, endpoint_id) "
        "SELECT a.id, e.id FROM quota_alerts a, webhook_endpoints e "
        " WHERE e.id = $1 AND a.event_id = $2 "
        "ON CONFLICT (alert_id, endpoint_id) DO UPDATE "
        "   SET status = 'pending', attempts = 0, next_attempt_at = now() "
        "RETURNING " USEC("d.next_attempt_at"),
        2, params);
    if (!api_ok(res)) {
        api_reply_db_error(req, conn, res, "queueing a webhook resend");
    } else if (PQntuples(res) == 0) {
        api_reply_error(req, 404, "not_found",
                        "no webhook endpoint \"%s\" or no event \"%s\"", req->id, event_id);
    } else {
        json_t *answer = json_pack("{s:s,s:s,s:s,s:i}", "endpointId", req->id, "eventId",
                                   event_id, "status", "pending", "attempts", 0);
        json_object_set_new(answer, "nextAttemptAt", time_or_null(res, 0, 0));
        api_reply_json(req, 202, answer);
    }
    PQclear(res);
    dbpool_release(conn);
}
