/* The key routes: POST/GET /v1/keys, GET/PATCH/DELETE /v1/keys/{id} and
 * PUT/DELETE /v1/keys/{id}/plan. A key's secret value is returned once, by
 * POST, and stored only in its keyed-hash form (keyhash.h). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api.h"
#include "keyhash.h"
#include "query.h"
#include "db.h"
#include "digest.h"

enum {
    COL_ID,
    COL_NAME,
    COL_DESCRIPTION,
    COL_CUSTOMER,
    COL_STRIPE_CUSTOMER,
    COL_ENABLED,
    COL_PLAN,
    COL_CREATED,
    COL_UPDATED,
    COL_SUBSCRIPTION_ITEM,
    COL_THRESHOLDS,
};

#define GENERATED_VALUE_CHARS 40 /* base62: about 238 bits */

static json_t *nullable(const char *text)
{
    return text ? json_string(text) : json_null();
}

json_t *keys_row_json(const PGresult *res, int row)
{
    json_t *key = json_object();
    json_object_set_new(key, "id", json_string(api_field(res, row, COL_ID)));
    json_object_set_new(key, "name", json_string(api_field(res, row, COL_NAME)));
    json_object_set_new(key, "description", json_string(api_field(res, row, COL_DESCRIPTION)));
    json_object_set_new(key, "customerId", nullable(api_field(res, row, COL_CUSTOMER)));
    json_object_set_new(key, "stripeCustomerId",
                        nullable(api_field(res, row, COL_STRIPE_CUSTOMER)));
    json_object_set_new(key, "stripeSubscriptionItemId",
                        nullable(api_field(res, row, COL_SUBSCRIPTION_ITEM)));
    json_object_set_new(key, "enabled",
                        json_boolean(strcmp(api_field(res, row, COL_ENABLED), "t") == 0));
    json_object_set_new(key, "planId", nullable(api_field(res, row, COL_PLAN)));
    /* null: the plan's thresholds apply */
    apimodel_thresholds thresholds;
    json_t *own = apimodel_thresholds_parse_text(api_field(res, row, COL_THRESHOLDS), &thresholds)
                      ? apimodel_thresholds_json(&thresholds)
                      : NULL;
    json_object_set_new(key, "alertThresholds", own ? own : json_null());
    json_object_set_new(key, "createdAt", api_time_json(api_field_int(res, row, COL_CREATED)));
    json_object_set_new(key, "updatedAt", api_time_json(api_field_int(res, row, COL_UPDATED)));
    return key;
}

static void key_not_found(api_request *req)
{
    api_reply_error(req, 404, "not_found", "no key with id \"%s\"", req->id);
}

void keys_create(api_request *req)
{
    json_t *body = api_parse_body(req);
    if (body == NULL)
        return;
    apimodel_key key;
    apimodel_error err;
    apimodel_key_init(&key);
    bool valid = apimodel_key_apply(&key, body, true, &err);
    json_decref(body);
    if (!valid) {
        api_reply_error(req, 400, err.code, "%s", err.message);
        return;
    }
    char id[32];
    if (!random_base62("key_", 20, id, sizeof id) ||
        (!key.has_value &&
         !random_base62("", GENERATED_VALUE_CHARS, key.value, sizeof key.value))) {
        api_reply_error(req, 500, "internal", "no randomness available");
        return;
    }
    uint8_t digest[KEYHASH_LEN], legacy[DIGEST_SHA256_LEN];
    char digest_hex[2 * KEYHASH_LEN + 1], legacy_hex[2 * DIGEST_SHA256_LEN + 1];
    keyhash_of_value(key.value, strlen(key.value), digest);
    digest_to_hex(digest, sizeof digest, digest_hex);
    digest_sha256(key.value, strlen(key.value), legacy);
    digest_to_hex(legacy, sizeof legacy, legacy_hex);
    PGconn *conn = dbpool_acquire(req);
    if (conn == NULL)
        return;
    char thresholds[APIMODEL_THRESHOLDS_TEXT_MAX];
    apimodel_thresholds_text(&key.thresholds, thresholds, sizeof thresholds);
    const char *params[] = {id,
                            digest_hex,
                            key.name,
                            key.description,
                            key.has_customer_id ? key.customer_id : NULL,
                            key.has_stripe_customer_id ? key.stripe_customer_id : NULL,
                            key.enabled ? "true" : "false",
                            key.has_plan_id ? key.plan_id : NULL,
                            key.has_subscription_item ? key.subscription_item : NULL,
                            legacy_hex,
                            key.has_thresholds ? thresholds : NULL};
    /* A row still in the old form (not converted yet) may hold the same
     * value: the unique index cannot see it, so the statement does. */
    PGresult *res = api_exec(conn,
                             "INSERT INTO api_keys AS k (id, value_hash, value_hash_form, name, "
                             "description, customer_id, stripe_customer_id, enabled, plan_id, "
                             "stripe_subscription_item_id, alert_thresholds) "
                             "SELECT $1, decode($2, 'hex'), 'hmac-sha256', $3, $4, $5, $6, "
                             "$7::boolean, $8, $9, $11::integer[] WHERE NOT EXISTS (SELECT 1 FROM "
                             "api_keys WHERE value_hash = decode($10, 'hex') AND value_hash_form = "
                             "'sha256') RETURNING " KEY_COLUMNS,
                             11, params);
    if (api_ok(res) && PQntuples(res) == 0) {
        api_reply_error(req, 409, "value_in_use", "another key already has this value");
    } else if (api_ok(res) && PQntuples(res) == 1) {
        json_t *answer = keys_row_json(res, 0);
        json_object_set_new(answer, "value", json_string(key.value));
        api_add_header(req, "Location", "/v1/keys/%s", id);
        api_add_header(req, "Cache-Control", "no-store");
        api_reply_json(req, 201, answer);
    } else if (strcmp(db_sqlstate(res), "23505") == 0) { /* unique_violation: value_hash */
        api_reply_error(req, 409, "value_in_use", "another key already has this value");
    } else if (strcmp(db_sqlstate(res), "23503") == 0) { /* foreign_key_violation: plan_id */
        api_reply_error(req, 404, "plan_not_found", "no plan with id \"%s\"", key.plan_id);
    } else {
        api_reply_db_error(req, conn, res, "creating a key");
    }
    PQclear(res);
    dbpool_release(conn);
    /* The secret is not kept in memory longer than needed. */
    memset(key.value, 0, sizeof key.value);
    if (req->response.status == 201)
        keycache_refresh_now();
}

void keys_list(api_request *req)
{
    static const char *const allowed[] = {"limit", "position", "customerId", "planId", NULL};
    static const api_list list = {
        .sql = "SELECT " KEY_COLUMNS " FROM api_keys k "
               "WHERE ($1::text IS NULL OR k.id > $1) "
               "AND ($3::text IS NULL OR k.customer_id = $3) "
               "AND ($4::text IS NULL OR k.plan_id = $4) "
               "ORDER BY k.id LIMIT $2::int",
        .id_column = COL_ID,
        .row_json = keys_row_json,
        .what = "listing keys",
    };
    query_page page;
    if (!query_read_page(req, allowed, &page))
        return;
    const char *customer = api_query(req, "customerId");
    const char *plan = api_query(req, "planId");
    if ((customer && strlen(customer) > APIMODEL_CUSTOMER_ID_MAX) ||
        (plan && strlen(plan) > APIMODEL_ID_MAX)) {
        api_reply_error(req, 400, "invalid_parameter", "customerId or planId is too long");
        return;
    }
    if (plan && !apimodel_valid_id(plan)) {
        api_reply_error(req, 400, "invalid_parameter", "planId is not a valid id");
        return;
    }
    const char *params[] = {page.after[0] ? page.after : NULL, page.fetch, customer, plan};
    api_reply_list(req, &list, page.limit, 4, params);
}

void keys_get(api_request *req)
{
    api_reply_one(req, "SELECT " KEY_COLUMNS " FROM api_keys k WHERE k.id = $1", "key",
                  keys_row_json);
}

/* The model of a stored key (row 0 of KEY_COLUMNS), for a merge patch. */
static void key_from_row(const PGresult *res, apimodel_key *key)
{
    apimodel_key_init(key);
    snprintf(key->name, sizeof key->name, "%s", api_field(res, 0, COL_NAME));
    snprintf(key->description, sizeof key->description, "%s", api_field(res, 0, COL_DESCRIPTION));
    if (api_field(res, 0, COL_CUSTOMER)) {
        key->has_customer_id = true;
        snprintf(key->customer_id, sizeof key->customer_id, "%s", api_field(res, 0, COL_CUSTOMER));
    }
    if (api_field(res, 0, COL_STRIPE_CUSTOMER)) {
        key->has_stripe_customer_id = true;
        snprintf(key->stripe_customer_id, sizeof key->stripe_customer_id, "%s",
                 api_field(res, 0, COL_STRIPE_CUSTOMER));
    }
    if (api_field(res, 0, COL_SUBSCRIPTION_ITEM)) {
        key->has_subscription_item = true;
        snprintf(key->subscription_item, sizeof key->subscription_item, "%s",
                 api_field(res, 0, COL_SUBSCRIPTION_ITEM));
    }
    key->enabled = strcmp(api_field(res, 0, COL_ENABLED), "t") == 0;
    key->has_thresholds =
        apimodel_thresholds_parse_text(api_field(res, 0, COL_THRESHOLDS), &key->thresholds);
}

/* In the transaction that changed a key's thresholds or plan: raise the
 * thresholds its current usage has crossed and that were never raised
 * (migration 006, tally_raise_current_quota_alerts). False with the failed
 * result in *failed (owned by the caller). */
static bool raise_crossed_alerts(PGconn *conn, const char *key_id, PGresult **failed)
{
    const char *params[] = {key_id};
    PGresult *res =
        api_exec(conn, "SELECT tally_raise_current_quota_alerts(NULL, $1)", 1, params);
    if (api_ok(res)) {
        PQclear(res);
        return true;
    }
    *failed = res;
    return false;
}

/* api_update's write for keys: the merge of `body` into the stored key. */
static bool write_key(api_request *req, PGconn *conn, const PGresult *row, const json_t *body,
                      PGresult **written)
{
    apimodel_key key;
    apimodel_error err;
    key_from_row(row, &key);
    if (!apimodel_key_apply(&key, body, false, &err)) {
        api_reply_error(req, 400, err.code, "%s", err.message);
        return false;
    }
    char thresholds[APIMODEL_THRESHOLDS_TEXT_MAX];
    apimodel_thresholds_text(&key.thresholds, thresholds, sizeof thresholds);
    const char *params[] = {req->id,
                            key.name,
                            key.description,
                            key.has_customer_id ? key.customer_id : NULL,
                            key.has_stripe_customer_id ? key.stripe_customer_id : NULL,
                            key.enabled ? "true" : "false",
                            key.has_subscription_item ? key.subscription_item : NULL,
                            key.has_thresholds ? thresholds : NULL};
    *written = api_exec(conn,
                        "UPDATE api_keys AS k SET name = $2, description = $3, customer_id = $4, "
                        "stripe_customer_id = $5, enabled = $6::boolean, "
                        "stripe_subscription_item_id = $7, alert_thresholds = $8::integer[], "
                        "updated_at = now() WHERE k.id = $1 RETURNING " KEY_COLUMNS,
                        8, params);
    PGresult *failed = NULL;
    if (api_ok(*written) && PQntuples(*written) == 1 &&
        !raise_crossed_alerts(conn, req->id, &failed)) {
        PQclear(*written);
        *written = failed; /* answered as the update's failure */
    }
    return true;
}

void keys_update(api_request *req)
{
    static const api_update update = {
        .kind = "key",
        .select_sql = "SELECT " KEY_COLUMNS " FROM api_keys k WHERE k.id = $1 FOR UPDATE",
        .write = write_key,
        .row_json = keys_row_json,
    };
    api_reply_update(req, &update);
    if (req->response.status == 200)
        keycache_refresh_now();
}

void keys_delete(api_request *req)
{
    api_reply_delete(req, "DELETE FROM api_keys WHERE id = $1", "key", NULL);
    if (req->response.status == 204)
        keycache_refresh_now();
}

/* PUT (attach, body {"planId"}) and DELETE (detach) /v1/keys/{id}/plan. */
static void set_plan(api_request *req, bool attach)
{
    char plan_id[APIMODEL_ID_MAX + 1] = "";
    if (attach) {
        json_t *body = api_parse_body(req);
        if (body == NULL)
            return;
        json_t *value = json_object_get(body, "planId");
        bool ok = json_object_size(body) == 1 && json_is_string(value) &&
                  json_string_length(value) <= APIMODEL_ID_MAX &&
                  apimodel_valid_id(json_string_value(value));
        if (ok)
            snprintf(plan_id, sizeof plan_id, "%s", json_string_value(value));
        json_decref(body);
        if (!ok) {
            api_reply_error(req, 400, "invalid_body",
                            "the body must be {\"planId\": \"<plan id>\"} and nothing else");
            return;
        }
    }
    PGconn *conn = dbpool_acquire(req);
    if (conn == NULL)
        return;
    const char *params[] = {req->id, attach ? plan_id : NULL};
    /* A key moved to a smaller plan may be past thresholds at once: they
     * are raised in the move's transaction. */
    PGresult *begun = api_exec(conn, "BEGIN", 0, NULL);
    PGresult *res = api_ok(begun) ? api_exec(conn,
                                             "UPDATE api_keys AS k SET plan_id = $2, "
                                             "updated_at = now() WHERE k.id = $1 RETURNING "
                                             KEY_COLUMNS,
                                             2, params)
                                  : begun;
    if (res != begun)
        PQclear(begun);
    PGresult *failed = NULL;
    if (api_ok(res) && PQntuples(res) == 1 && attach &&
        !raise_crossed_alerts(conn, req->id, &failed)) {
        PQclear(res);
        res = failed;
    }
    if (api_ok(res) && PQntuples(res) == 1) {
        PGresult *committed = api_exec(conn, "COMMIT", 0, NULL);
        if (api_ok(committed))
            api_reply_json(req, 200, keys_row_json(res, 0));
        else
            api_reply_db_error(req, conn, committed, "committing a plan change");
        PQclear(committed);
    }
    else if (api_ok(res))
        key_not_found(req);
    else if (strcmp(db_sqlstate(res), "23503") == 0)
        api_reply_error(req, 404, "plan_not_found", "no plan with id \"%s\"", plan_id);
    else
        api_reply_db_error(req, conn, res, attach ? "attaching a plan" : "detaching a plan");
    PQclear(res);
    dbpool_release(conn);
    if (req->response.status == 200)
        keycache_refresh_now();
}

void keys_attach_plan(api_request *req)
{
    set_plan(req, true);
}

void keys_detach_plan(api_request *req)
{
    set_plan(req, false);
}
