/* The plan routes: POST/GET /v1/plans, GET/PATCH/DELETE /v1/plans/{id}. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api.h"
#include "query.h"

enum {
    COL_ID,
    COL_NAME,
    COL_DESCRIPTION,
    COL_QUOTA_LIMIT,
    COL_QUOTA_PERIOD,
    COL_QUOTA_OFFSET,
    COL_RATE,
    COL_BURST,
    COL_METHOD_THROTTLES,
    COL_METER,
    COL_CREATED,
    COL_UPDATED,
    COL_SUBSCRIPTION_ITEM,
    COL_ENFORCEMENT,
    COL_CEILING,
    COL_THRESHOLDS,
};
_Static_assert(COL_THRESHOLDS + 1 == PLAN_COLUMN_COUNT, "PLAN_COLUMNS and its columns");

/* The alertThresholds of a row (stored as the api wrote them). */
static json_t *thresholds_json(const PGresult *res, int row)
{
    apimodel_thresholds t;
    if (!apimodel_thresholds_parse_text(api_field(res, row, COL_THRESHOLDS), &t))
        return json_null(); /* written by hand outside the api's rules */
    json_t *array = apimodel_thresholds_json(&t);
    return array ? array : json_null();
}

static json_t *row_json(const PGresult *res, int row)
{
    json_t *plan = json_object();
    json_object_set_new(plan, "id", json_string(api_field(res, row, COL_ID)));
    json_object_set_new(plan, "name", json_string(api_field(res, row, COL_NAME)));
    json_object_set_new(plan, "description", json_string(api_field(res, row, COL_DESCRIPTION)));
    if (api_field(res, row, COL_QUOTA_LIMIT) != NULL) {
        const char *ceiling = api_field(res, row, COL_CEILING);
        json_object_set_new(
            plan, "quota",
            json_pack("{s:I,s:s,s:I,s:s,s:o}", "limit",
                      (json_int_t)api_field_int(res, row, COL_QUOTA_LIMIT), "period",
                      api_field(res, row, COL_QUOTA_PERIOD), "offset",
                      (json_int_t)api_field_int(res, row, COL_QUOTA_OFFSET), "enforcement",
                      api_field(res, row, COL_ENFORCEMENT), "ceilingPercent",
                      ceiling ? json_integer(atoll(ceiling)) : json_null()));
    } else {
        json_object_set_new(plan, "quota", json_null());
    }
    if (api_field(res, row, COL_RATE) != NULL && api_field(res, row, COL_BURST) != NULL) {
        /* A row stored before -0.0 was refused holds it: echoed as 0. */
        double rate = strtod(api_field(res, row, COL_RATE), NULL);
        json_object_set_new(plan, "throttle",
                            json_pack("{s:f,s:I}", "rateLimit", rate == 0 ? 0.0 : rate,
                                      "burstLimit",
                                      (json_int_t)api_field_int(res, row, COL_BURST)));
    } else {
        json_object_set_new(plan, "throttle", json_null());
    }
    json_t *methods = json_loads(api_field(res, row, COL_METHOD_THROTTLES), 0, NULL);
    json_object_set_new(plan, "methodThrottles", methods ? methods : json_object());
    const char *meter = api_field(res, row, COL_METER);
    json_object_set_new(plan, "stripeMeterEventName", meter ? json_string(meter) : json_null());
    const char *item = api_field(res, row, COL_SUBSCRIPTION_ITEM);
    json_object_set_new(plan, "stripeSubscriptionItemId", item ? json_string(item) : json_null());
    json_object_set_new(plan, "alertThresholds", thresholds_json(res, row));
    json_object_set_new(plan, "createdAt", api_time_json(api_field_int(res, row, COL_CREATED)));
    json_object_set_new(plan, "updatedAt", api_time_json(api_field_int(res, row, COL_UPDATED)));
    return plan;
}

/* Fills a model from a row, for a merge patch. */
static bool row_model(const PGresult *res, int row, apimodel_plan *plan)
{
    if (!apimodel_plan_init(plan))
        return false;
    snprintf(plan->name, sizeof plan->name, "%s", api_field(res, row, COL_NAME));
    snprintf(plan->description, sizeof plan->description, "%s",
             api_field(res, row, COL_DESCRIPTION));
    if (api_field(res, row, COL_QUOTA_LIMIT) != NULL) {
        plan->has_quota = true;
        plan->quota_limit = api_field_int(res, row, COL_QUOTA_LIMIT);
        plan->quota_offset = api_field_int(res, row, COL_QUOTA_OFFSET);
        if (!period_parse(api_field(res, row, COL_QUOTA_PERIOD), &plan->quota_period))
            plan->quota_period = PERIOD_MONTH;
    }
    plan->quota_soft = strcmp(api_field(res, row, COL_ENFORCEMENT), "soft") == 0;
    plan->has_ceiling = api_field(res, row, COL_CEILING) != NULL;
    plan->ceiling_percent = plan->has_ceiling ? api_field_int(res, row, COL_CEILING) : 0;
    if (!apimodel_thresholds_parse_text(api_field(res, row, COL_THRESHOLDS), &plan->thresholds))
        plan->thresholds = (apimodel_thresholds){0}; /* unreadable: a PATCH may set them */
    if (api_field(res, row, COL_RATE) != NULL && api_field(res, row, COL_BURST) != NULL) {
        plan->has_throttle = true;
        plan->throttle.rate_limit = strtod(api_field(res, row, COL_RATE), NULL);
        plan->throttle.burst_limit = api_field_int(res, row, COL_BURST);
    }
    json_t *methods = json_loads(api_field(res, row, COL_METHOD_THROTTLES), 0, NULL);
    if (methods != NULL) {
        json_decref(plan->method_throttles);
        plan->method_throttles = methods;
    }
    const char *meter = api_field(res, row, COL_METER);
    if (meter != NULL) {
        plan->has_meter = true;
        snprintf(plan->meter, sizeof plan->meter, "%s", meter);
    }
    const char *item = api_field(res, row, COL_SUBSCRIPTION_ITEM);
    if (item != NULL) {
        plan->has_subscription_item = true;
        snprintf(plan->subscription_item, sizeof plan->subscription_item, "%s", item);
    }
    return true;
}

/* The text parameters $2..$14 of a plan's columns (see INSERT/UPDATE). */
#define PLAN_PARAMS 13
typedef struct {
    char limit[24], offset[24], rate[40], burst[24], ceiling[24];
    char thresholds[APIMODEL_THRESHOLDS_TEXT_MAX];
    char *methods; /* owned */
    const char *values[PLAN_PARAMS];
} plan_params;

static bool plan_params_fill(const apimodel_plan *plan, plan_params *p)
{
    snprintf(p->limit, sizeof p->limit, "%lld", (long long)plan->quota_limit);
    snprintf(p->offset, sizeof p->offset, "%lld", plan->has_quota ? (long long)plan->quota_offset : 0LL);
    snprintf(p->rate, sizeof p->rate, "%.17g", plan->throttle.rate_limit);
    snprintf(p->burst, sizeof p->burst, "%lld", (long long)plan->throttle.burst_limit);
    p->methods = json_dumps(plan->method_throttles, JSON_COMPACT);
    if (p->methods == NULL)
        return false;
    p->values[0] = plan->name;
    p->values[1] = plan->description;
    p->values[2] = plan->has_quota ? p->limit : NULL;
    p->values[3] = plan->has_quota ? period_name(plan->quota_period) : NULL;
    p->values[4] = p->offset;
    p->values[5] = plan->has_throttle ? p->rate : NULL;
    p->values[6] = plan->has_throttle ? p->burst : NULL;
    p->values[7] = p->methods;
    p->values[8] = plan->has_meter ? plan->meter : NULL;
    p->values[9] = plan->has_subscription_item ? plan->subscription_item : NULL;
    snprintf(p->ceiling, sizeof p->ceiling, "%lld", (long long)plan->ceiling_percent);
    apimodel_thresholds_text(&plan->thresholds, p->thresholds, sizeof p->thresholds);
    p->values[10] = plan->quota_soft ? "soft" : "hard";
    p->values[11] = plan->has_ceiling ? p->ceiling : NULL;
    p->values[12] = p->thresholds;
    return true;
}

void plans_create(api_request *req)
{
    json_t *body = api_parse_body(req);
    if (body == NULL)
        return;
    apimodel_plan plan;
    apimodel_error err;
    if (!apimodel_plan_init(&plan)) {
        json_decref(body);
        api_reply_error(req, 500, "internal", "out of memory");
        return;
    }
    bool valid = apimodel_plan_apply(&plan, body, true, &err);
    json_decref(body);
    if (!valid) {
        apimodel_plan_free(&plan);
        api_reply_error(req, 400, err.code, "%s", err.message);
        return;
    }
    char id[32];
    plan_params p = {0};
    if (!random_base62("pln_", 20, id, sizeof id) || !plan_params_fill(&plan, &p)) {
        apimodel_plan_free(&plan);
        free(p.methods);
        api_reply_error(req, 500, "internal", "cannot generate an id");
        return;
    }
    PGconn *conn = dbpool_acquire(req);
    if (conn != NULL) {
        const char *params[PLAN_PARAMS + 1] = {id};
        memcpy(params + 1, p.values, sizeof p.values);
        PGresult *res = api_exec(conn,
                                 "INSERT INTO plans (id, name, description, quota_limit, "
                                 "quota_period, quota_offset, throttle_rate_limit, "
                                 "throttle_burst_limit, method_throttles, stripe_meter_event_name, "
                                 "stripe_subscription_item_id, quota_enforcement, "
                                 "quota_ceiling_percent, alert_thresholds) "
                                 "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9::jsonb, $10, $11, "
                                 "$12, $13, $14::integer[]) "
                                 "RETURNING " PLAN_COLUMNS,
                                 PLAN_PARAMS + 1, params);
        if (api_ok(res) && PQntuples(res) == 1) {
            api_add_header(req, "Location", "/v1/plans/%s", id);
            api_reply_json(req, 201, row_json(res, 0));
        } else {
            api_reply_db_error(req, conn, res, "creating a plan");
        }
        PQclear(res);
        dbpool_release(conn);
        keycache_refresh_now();
    }
    free(p.methods);
    apimodel_plan_free(&plan);
}

void plans_list(api_request *req)
{
    static const char *const allowed[] = {"limit", "position", NULL};
    static const api_list list = {
        .sql = "SELECT " PLAN_COLUMNS " FROM plans WHERE ($1::text IS NULL OR id > $1) "
               "ORDER BY id LIMIT $2::int",
        .id_column = COL_ID,
        .row_json = row_json,
        .what = "listing plans",
    };
    query_page page;
    if (!query_read_page(req, allowed, &page))
        return;
    const char *params[] = {page.after[0] ? page.after : NULL, page.fetch};
    api_reply_list(req, &list, page.limit, 2, params);
}

void plans_get(api_request *req)
{
    api_reply_one(req, "SELECT " PLAN_COLUMNS " FROM plans WHERE id = $1", "plan", row_json);
}

/* After a plan's write, in its transaction: a lowered limit (or changed
 * thresholds) may put keys' usage past thresholds never raised; raise them
 * now (migration 006, tally_raise_current_quota_alerts). On failure
 * *written becomes the failed result, which the caller answers. */
static void raise_crossed_alerts(PGconn *conn, PGresult **written)
{
    const char *params[] = {api_field(*written, 0, COL_ID)};
    PGresult *res =
        api_exec(conn, "SELECT tally_raise_current_quota_alerts($1, NULL)", 1, params);
    if (api_ok(res)) {
        PQclear(res);
        return;
    }
    PQclear(*written);
    *written = res;
}

/* api_update's write for plans: the merge of `body` into the stored plan. */
static bool write_plan(api_request *req, PGconn *conn, const PGresult *row, const json_t *body,
                       PGresult **written)
{
    apimodel_plan plan = {0};
    plan_params p = {0};
    apimodel_error err;
    bool merged = false;
    if (!row_model(row, 0, &plan))
        api_reply_error(req, 500, "internal", "out of memory");
    else if (!apimodel_plan_apply(&plan, body, false, &err))
        api_reply_error(req, 400, err.code, "%s", err.message);
    else if (!plan_params_fill(&plan, &p))
        api_reply_error(req, 500, "internal", "out of memory");
    else
        merged = true;
    if (merged) {
        const char *params[PLAN_PARAMS + 1] = {req->id};
        memcpy(params + 1, p.values, sizeof p.values);
        *written = api_exec(conn,
                            "UPDATE plans SET name = $2, description = $3, quota_limit = $4, "
                            "quota_period = $5, quota_offset = $6, throttle_rate_limit = $7, "
                            "throttle_burst_limit = $8, method_throttles = $9::jsonb, "
                            "stripe_meter_event_name = $10, stripe_subscription_item_id = $11, "
                            "quota_enforcement = $12, quota_ceiling_percent = $13, "
                            "alert_thresholds = $14::integer[], updated_at = now(), "
                            /* the offset's first period starts over when the quota changes */
                            "quota_set_at = CASE WHEN (quota_limit, quota_period, quota_offset) "
                            "IS DISTINCT FROM ($4::bigint, $5::text, $6::bigint) THEN now() "
                            "ELSE quota_set_at END WHERE id = $1 "
                            "RETURNING " PLAN_COLUMNS,
                            PLAN_PARAMS + 1, params);
        if (api_ok(*written) && PQntuples(*written) == 1)
            raise_crossed_alerts(conn, written);
    }
    apimodel_plan_free(&plan);
    free(p.methods);
    return merged;
}

void plans_update(api_request *req)
{
    static const api_update update = {
        .kind = "plan",
        .select_sql = "SELECT " PLAN_COLUMNS " FROM plans WHERE id = $1 FOR UPDATE",
        .write = write_plan,
        .row_json = row_json,
    };
    api_reply_update(req, &update);
    if (req->response.status == 200)
        keycache_refresh_now();
}

/* A plan that keys still name cannot go (api_keys.plan_id refers to it). */
static void plan_in_use(api_request *req)
{
    api_reply_error(req, 409, "plan_in_use",
                    "plan \"%s\" still has keys; detach them first (DELETE /v1/keys/{id}/plan)",
                    req->id);
}

void plans_delete(api_request *req)
{
    api_reply_delete(req, "DELETE FROM plans WHERE id = $1", "plan", plan_in_use);
    if (req->response.status == 204)
        keycache_refresh_now();
}

json_t *plans_row_json(const PGresult *res, int row)
{
    return row_json(res, row);
}
