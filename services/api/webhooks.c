/* The webhook endpoint routes (admin): POST/GET /v1/webhooks,
 * GET/PATCH/DELETE /v1/webhooks/{id}, POST /v1/webhooks/{id}/rotate-secret.
 * A signing secret is answered once, by the POST that creates it or the
 * rotation that replaces it; never by any other route, never logged. The
 * deliveries themselves (signing, retries, the delivery log) are the
 * sender's. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api.h"
#include "query.h"
#include "webhookmodel.h"

#define ENDPOINT_COLUMNS                                                                  \
    "id, url, description, event_types::text, enabled, "                                  \
    "(extract(epoch from created_at) * 1000000)::bigint, "                                \
    "(extract(epoch from updated_at) * 1000000)::bigint, "                                \
    "CASE WHEN previous_secret_expires_at > now() THEN "                                  \
    "(extract(epoch from previous_secret_expires_at) * 1000000)::bigint END"

enum {
    COL_ID,
    COL_URL,
    COL_DESCRIPTION,
    COL_EVENT_TYPES,
    COL_ENABLED,
    COL_CREATED,
    COL_UPDATED,
    COL_PREVIOUS_EXPIRES,
};

/* 32 base62 characters: about 190 bits. */
#define SECRET_CHARS 32
#define SECRET_SIZE (sizeof "whsec_" + SECRET_CHARS)

static json_t *row_json(const PGresult *res, int row)
{
    webhook_endpoint parsed;
    webhookmodel_init(&parsed);
    json_t *types = json_array();
    if (webhookmodel_event_types_parse(api_field(res, row, COL_EVENT_TYPES), &parsed)) {
        for (int i = 0; i < parsed.event_type_count; i++)
            json_array_append_new(types, json_string(parsed.event_types[i]));
    }
    const char *previous = api_field(res, row, COL_PREVIOUS_EXPIRES);
    json_t *endpoint = json_object();
    json_object_set_new(endpoint, "id", json_string(api_field(res, row, COL_ID)));
    json_object_set_new(endpoint, "url", json_string(api_field(res, row, COL_URL)));
    json_object_set_new(endpoint, "description",
                        json_string(api_field(res, row, COL_DESCRIPTION)));
    json_object_set_new(endpoint, "eventTypes", types);
    json_object_set_new(endpoint, "enabled",
                        json_boolean(strcmp(api_field(res, row, COL_ENABLED), "t") == 0));
    /* While a rotation's overlap lasts, the previous secret signs too. */
    json_object_set_new(endpoint, "previousSecretExpiresAt",
                        previous ? api_time_json(atoll(previous)) : json_null());
    json_object_set_new(endpoint, "createdAt",
                        api_time_json(api_field_int(res, row, COL_CREATED)));
    json_object_set_new(endpoint, "updatedAt",
                        api_time_json(api_field_int(res, row, COL_UPDATED)));
    return endpoint;
}

/* The answer that shows a secret: the endpoint (or what `extra` holds)
 * plus "secret"; never cached by anyone on the way. */
static void reply_with_secret(api_request *req, unsigned status, json_t *answer,
                              const char *secret)
{
    json_object_set_new(answer, "secret", json_string(secret));
    api_add_header(req, "Cache-Control", "no-store");
    api_reply_json(req, status, answer);
}

void webhooks_create(api_request *req)
{
    json_t *body = api_parse_body(req);
    if (body == NULL)
        return;
    webhook_endpoint endpoint;
    apimodel_error err;
    webhookmodel_init(&endpoint);
    bool valid = webhookmodel_apply(&endpoint, body, true, &err);
    json_decref(body);
    if (!valid) {
        api_reply_error(req, 400, err.code, "%s", err.message);
        return;
    }
    char id[32], secret[SECRET_SIZE], types[WEBHOOK_EVENT_TYPES_TEXT_MAX];
    if (!random_base62("whe_", 20, id, sizeof id) ||
        !random_base62("whsec_", SECRET_CHARS, secret, sizeof secret)) {
        api_reply_error(req, 500, "internal", "no randomness available");
        return;
    }
    webhookmodel_event_types_text(&endpoint, types, sizeof types);
    PGconn *conn = dbpool_acquire(req);
    if (conn != NULL) {
        const char *params[] = {id, endpoint.url, endpoint.description, types,
                                endpoint.enabled ? "true" : "false", secret};
        PGresult *res = api_exec(conn,
                                 "INSERT INTO webhook_endpoints (id, url, description, "
                                 "event_types, enabled, secret) "
                                 "VALUES ($1, $2, $3, $4::text[], $5::boolean, $6) "
                                 "RETURNING " ENDPOINT_COLUMNS,
                                 6, params);
        if (api_ok(res) && PQntuples(res) == 1) {
            api_add_header(req, "Location", "/v1/webhooks/%s", id);
            reply_with_secret(req, 201, row_json(res, 0), secret);
        } else {
            api_reply_db_error(req, conn, res, "creating a webhook endpoint");
        }
        PQclear(res);
        dbpool_release(conn);
    }
    memset(secret, 0, sizeof secret);
}

void webhooks_list(api_request *req)
{
    static const char *const allowed[] = {"limit", "position", NULL};
    static const api_list list = {
        .sql = "SELECT " ENDPOINT_COLUMNS " FROM webhook_endpoints "
               "WHERE ($1::text IS NULL OR id > $1) ORDER BY id LIMIT $2::int",
        .id_column = COL_ID,
        .row_json = row_json,
        .what = "listing webhook endpoints",
    };
    query_page page;
    if (!query_read_page(req, allowed, &page))
        return;
    const char *params[] = {page.after[0] ? page.after : NULL, page.fetch};
    api_reply_list(req, &list, page.limit, 2, params);
}

void webhooks_get(api_request *req)
{
    api_reply_one(req, "SELECT " ENDPOINT_COLUMNS " FROM webhook_endpoints WHERE id = $1",
                  "webhook endpoint", row_json);
}

/* api_update's write: the merge of `body` into the stored endpoint. */
static bool write_endpoint(api_request *req, PGconn *conn, const PGresult *row,
                           const json_t *body, PGresult **written)
{
    webhook_endpoint endpoint;
    apimodel_error err;
    webhookmodel_init(&endpoint);
    snprintf(endpoint.url, sizeof endpoint.url, "%s", api_field(row, 0, COL_URL));
    snprintf(endpoint.description, sizeof endpoint.description, "%s",
             api_field(row, 0, COL_DESCRIPTION));
    endpoint.enabled = strcmp(api_field(row, 0, COL_ENABLED), "t") == 0;
    bool stored_types = webhookmodel_event_types_parse(api_field(row, 0, COL_EVENT_TYPES),
                                                       &endpoint);
    if (!webhookmodel_apply(&endpoint, body, false, &err)) {
        api_reply_error(req, 400, err.code, "%s", err.message);
        return false;
    }
    if (!stored_types && json_object_get(body, "eventTypes") == NULL) {
        api_reply_error(req, 400, "missing_field",
                        "the stored eventTypes are not readable; set eventTypes");
        return false;
    }
    char types[WEBHOOK_EVENT_TYPES_TEXT_MAX];
    webhookmodel_event_types_text(&endpoint, types, sizeof types);
    const char *params[] = {req->id, endpoint.url, endpoint.description, types,
                            endpoint.enabled ? "true" : "false"};
    *written = api_exec(conn,
                        "UPDATE webhook_endpoints SET url = $2, description = $3, "
                        "event_types = $4::text[], enabled = $5::boolean, updated_at = now() "
                        "WHERE id = $1 RETURNING " ENDPOINT_COLUMNS,
                        5, params);
    return true;
}

void webhooks_update(api_request *req)
{
    static const api_update update = {
        .kind = "webhook endpoint",
        .select_sql = "SELECT " ENDPOINT_COLUMNS " FROM webhook_endpoints WHERE id = $1 "
                      "FOR UPDATE",
        .write = write_endpoint,
        .row_json = row_json,
    };
    api_reply_update(req, &update);
}

/* Deleting an endpoint drops its pending deliveries and delivery log with
 * it (ON DELETE CASCADE); the alerts stay. */
void webhooks_delete(api_request *req)
{
    api_reply_delete(req, "DELETE FROM webhook_endpoints WHERE id = $1", "webhook endpoint",
                     NULL);
}

/* The rotate-secret body: none, {} or {"expiresInSeconds": n}. False after
 * replying 400. */
static bool read_rotation(api_request *req, int64_t *expires_in)
{
    apimodel_error err;
    if (req->body_len == 0)
        return webhookmodel_rotation_parse(NULL, expires_in, &err);
    json_t *body = api_parse_body(req);
    if (body == NULL)
        return false;
    bool ok = webhookmodel_rotation_parse(body, expires_in, &err);
    json_decref(body);
    if (!ok)
        api_reply_error(req, 400, err.code, "%s", err.message);
    return ok;
}

/* A new secret; the one it replaces keeps signing (beside it) for the
 * overlap, so receivers can switch without losing a delivery. A second
 * rotation within the overlap retires the first secret at once. */
void webhooks_rotate_secret(api_request *req)
{
    int64_t expires_in;
    if (!read_rotation(req, &expires_in))
        return;
    char secret[SECRET_SIZE], seconds[24];
    if (!random_base62("whsec_", SECRET_CHARS, secret, sizeof secret)) {
        api_reply_error(req, 500, "internal", "no randomness available");
        return;
    }
    snprintf(seconds, sizeof seconds, "%lld", (long long)expires_in);
    PGconn *conn = dbpool_acquire(req);
    if (conn != NULL) {
        const char *params[] = {req->id, secret, seconds};
        PGresult *res = api_exec(conn,
                                 "UPDATE webhook_endpoints SET previous_secret = secret, "
                                 "previous_secret_expires_at = now() + make_interval(secs => "
                                 "$3::bigint), secret = $2, updated_at = now() "
                                 "WHERE id = $1 RETURNING " ENDPOINT_COLUMNS,
                                 3, params);
        if (api_ok(res) && PQntuples(res) == 1)
            reply_with_secret(req, 200, row_json(res, 0), secret);
        else if (api_ok(res))
            api_reply_error(req, 404, "not_found", "no webhook endpoint with id \"%s\"", req->id);
        else
            api_reply_db_error(req, conn, res, "rotating a webhook secret");
        PQclear(res);
        dbpool_release(conn);
    }
    memset(secret, 0, sizeof secret);
}
