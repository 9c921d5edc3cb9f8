/* AWS's usage plan operations (Create/Get/Update/DeleteUsagePlan,
 * GetUsagePlans) and the plan's keys (Create/Get/DeleteUsagePlanKey,
 * GetUsagePlanKeys), through the /v1 plan and key handlers (plans.c,
 * keys.c). A plan's apiStages keep their apiId and stage in
 * plans.aws_api_stages (migration 007); their per-method throttle maps are
 * the plan's methodThrottles, the one map authorize enforces. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "aws.h"

#define INVALID_PLAN "Invalid Usage Plan ID specified"
#define INVALID_KEY "Invalid API Key identifier specified"
#define API_STAGES_MAX 20
#define API_STAGE_PART_MAX 128
#define STAGES_COLUMN PLAN_COLUMN_COUNT /* aws_api_stages::text after PLAN_COLUMNS */

/* ---- shapes ------------------------------------------------------------------- */

/* AWS's UsagePlan from a /v1 plan (borrowed) and its stored stages
 * (borrowed [{apiId, stage}]): every stage shows the plan's method throttles. */
static json_t *usage_plan_json(const json_t *plan, const json_t *stages)
{
    json_t *out = json_object();
    static const char *const copied[] = {"id", "name", "description"};
    for (size_t i = 0; i < sizeof copied / sizeof copied[0]; i++)
        json_object_set(out, copied[i], json_object_get(plan, copied[i]));
    json_t *throttle = json_object_get(plan, "throttle");
    if (json_is_object(throttle))
        json_object_set_new(out, "throttle",
                            json_pack("{s:O,s:O}", "burstLimit",
                                      json_object_get(throttle, "burstLimit"), "rateLimit",
                                      json_object_get(throttle, "rateLimit")));
    json_t *quota = json_object_get(plan, "quota");
    if (json_is_object(quota))
        json_object_set_new(out, "quota",
                            json_pack("{s:O,s:O,s:O}", "limit", json_object_get(quota, "limit"),
                                      "offset", json_object_get(quota, "offset"), "period",
                                      json_object_get(quota, "period")));
    json_t *methods = json_object_get(plan, "methodThrottles");
    json_t *api_stages = json_array();
    size_t i;
    json_t *stage;
    json_array_foreach(stages, i, stage) {
        json_t *copy = json_deep_copy(stage);
        if (json_object_size(methods) > 0) {
            json_t *map = json_object();
            const char *path;
            json_t *t;
            json_object_foreach(methods, path, t) {
                json_object_set_new(map, path,
                                    json_pack("{s:O,s:O}", "burstLimit",
                                              json_object_get(t, "burstLimit"), "rateLimit",
                                              json_object_get(t, "rateLimit")));
            }
            json_object_set_new(copy, "throttle", map);
        }
        json_array_append_new(api_stages, copy);
    }
    json_object_set_new(out, "apiStages", api_stages);
    return out;
}

static json_t *plan_row_json(const PGresult *res, int row)
{
    json_t *plan = plans_row_json(res, row);
    json_t *stages = json_loads(api_field(res, row, STAGES_COLUMN), 0, NULL);
    json_t *out = usage_plan_json(plan, stages ? stages : json_array());
    json_decref(plan);
    json_decref(stages);
    return out;
}

/* 200 (or `status`) with the plan as stored, or 404 in AWS's words. */
static void reply_plan(api_request *req, PGconn *conn, const char *plan_id, unsigned status)
{
    const char *params[] = {plan_id};
    PGresult *res = api_exec(conn,
                             "SELECT " PLAN_COLUMNS ", aws_api_stages::text FROM plans "
                             "WHERE id = $1",
                             1, params);
    if (!api_ok(res))
        api_reply_db_error(req, conn, res, "reading a plan");
    else if (PQntuples(res) == 0)
        aws_reply_error(req, 404, "NotFoundException", INVALID_PLAN);
    else
        api_reply_json(req, status, plan_row_json(res, 0));
    PQclear(res);
}

/* ---- CreateUsagePlan ---------------------------------------------------------- */

static bool short_string(const json_t *value)
{
    return json_is_string(value) && json_string_length(value) >= 1 &&
           json_string_length(value) <= API_STAGE_PART_MAX;
}

/* AWS's apiStages (borrowed) into the stored [{apiId, stage}] (*stages, new)
 * and the plan's methodThrottles (set on `tally`). Tally keeps one method
 * map per plan: stages that give maps must give the same. False after
 * replying 400. */
static bool read_api_stages(api_request *req, const json_t *api_stages, json_t *tally,
                            json_t **stages)
{
    *stages = json_array();
    if (api_stages == NULL)
        return true;
    const char *problem = NULL;
    json_t *methods = NULL;
    size_t i;
    json_t *stage;
    if (!json_is_array(api_stages) || json_array_size(api_stages) > API_STAGES_MAX)
        problem = "apiStages must be a list of at most 20 stages";
    json_array_foreach(problem ? NULL : api_stages, i, stage) {
        json_t *throttle = json_object_get(stage, "throttle");
        if (!json_is_object(stage) || !short_string(json_object_get(stage, "apiId")) ||
            !short_string(json_object_get(stage, "stage"))) {
            problem = "each of apiStages needs apiId and stage (1..128 characters)";
            break;
        }
        if (throttle != NULL && methods != NULL && !json_equal(throttle, methods)) {
            problem = "Tally keeps one per-method throttle map per usage plan: give the same "
                      "throttle map on every stage";
            break;
        }
        if (throttle != NULL)
            methods = throttle;
        json_array_append_new(*stages, json_pack("{s:O,s:O}", "apiId",
                                                 json_object_get(stage, "apiId"), "stage",
                                                 json_object_get(stage, "stage")));
    }
    if (problem != NULL) {
        aws_reply_error(req, 400, "BadRequestException", "%s", problem);
        json_decref(*stages);
        *stages = NULL;
        return false;
    }
    if (methods != NULL)
        json_object_set(tally, "methodThrottles", methods);
    return true;
}

/* The stages of a plan just created or changed; false after replying. */
static bool store_stages(api_request *req, PGconn *conn, const char *plan_id,
                         const json_t *stages)
{
    char *text = json_dumps(stages, JSON_COMPACT);
    const char *params[] = {plan_id, text ? text : "[]"};
    PGresult *res = api_exec(conn, "UPDATE plans SET aws_api_stages = $2::jsonb WHERE id = $1",
                             2, params);
    bool ok = api_ok(res);
    if (!ok)
        api_reply_db_error(req, conn, res, "storing a plan's apiStages");
    PQclear(res);
    free(text);
    return ok;
}

void aws_create_usage_plan(api_request *req)
{
    json_t *body = aws_parse_body(req);
    if (body == NULL)
        return;
    json_t *tally = json_object(), *stages = NULL;
    static const char *const shared[] = {"name", "description", "throttle", "quota"};
    for (size_t i = 0; i < sizeof shared / sizeof shared[0]; i++) {
        json_t *value = json_object_get(body, shared[i]);
        if (value != NULL)
            json_object_set(tally, shared[i], value);
    }
    json_t *plan = NULL;
    if (read_api_stages(req, json_object_get(body, "apiStages"), tally, &stages) &&
        aws_call(req, plans_create, NULL, tally, &plan) == 201) {
        const char *id = json_string_value(json_object_get(plan, "id"));
        PGconn *conn = dbpool_acquire(req);
        if (conn != NULL && id != NULL && store_stages(req, conn, id, stages))
            reply_plan(req, conn, id, 201);
        if (conn != NULL)
            dbpool_release(conn);
    }
    json_decref(plan);
    json_decref(stages);
    json_decref(tally);
    json_decref(body);
}

/* ---- GetUsagePlan(s), DeleteUsagePlan ------------------------------------------- */

void aws_get_usage_plan(api_request *req)
{
    PGconn *conn = dbpool_acquire(req);
    if (conn == NULL)
        return;
    reply_plan(req, conn, req->id, 200);
    dbpool_release(conn);
}

void aws_get_usage_plans(api_request *req)
{
    static const char *const allowed[] = {"position", "limit", "keyId", NULL};
    aws_page page;
    if (!aws_read_page(req, allowed, &page))
        return;
    const char *key_id = api_query(req, "keyId");
    if (key_id != NULL && key_id[0] != '\0' && !apimodel_valid_id(key_id)) {
        aws_reply_error(req, 400, "BadRequestException", INVALID_KEY);
        return;
    }
    PGconn *conn = dbpool_acquire(req);
    if (conn == NULL)
        return;
    const char *params[] = {page.after[0] ? page.after : NULL, page.fetch,
                            key_id && key_id[0] ? key_id : NULL};
    PGresult *res = api_exec(conn,
                             "SELECT " PLAN_COLUMNS ", aws_api_stages::text FROM plans "
                             "WHERE ($1::text IS NULL OR id > $1) AND ($3::text IS NULL OR id = "
                             "(SELECT plan_id FROM api_keys WHERE id = $3)) "
                             "ORDER BY id LIMIT $2::int",
                             3, params);
    if (api_ok(res))
        aws_reply_page(req, res, &page, 0, plan_row_json);
    else
        api_reply_db_error(req, conn, res, "listing plans");
    PQclear(res);
    dbpool_release(conn);
}

void aws_delete_usage_plan(api_request *req)
{
    json_t *answer = NULL;
    unsigned status = aws_call(req, plans_delete, req->id, NULL, &answer);
    json_decref(answer);
    if (status == 204)
        api_reply_empty(req, 202);
    else if (status == 404)
        aws_reply_error(req, 404, "NotFoundException", INVALID_PLAN);
}

/* ---- UpdateUsagePlan ------------------------------------------------------------ */

/* A patch value as a whole number 0..APIMODEL_QUOTA_MAX, or a non-negative
 * finite decimal; false when it is not one. */
static bool patch_integer(const char *text, json_int_t *out)
{
    if (text == NULL || text[0] < '0' || text[0] > '9')
        return false;
    char *end;
    errno = 0;
    long long value = strtoll(text, &end, 10);
    if (errno != 0 || *end != '\0' || value > APIMODEL_QUOTA_MAX)
        return false;
    *out = value;
    return true;
}

static bool patch_number(const char *text, double *out)
{
    if (text == NULL || text[0] == '\0' || text[0] == '-' || text[0] == '+')
        return false;
    char *end;
    errno = 0;
    double value = strtod(text, &end);
    if (errno != 0 || *end != '\0' || !isfinite(value))
        return false;
    *out = value;
    return true;
}

/* Sets merge[object][member] (the object made when missing). */
static void set_nested(json_t *merge, const char *object, const char *member, json_t *value)
{
    json_t *inner = json_object_get(merge, object);
    if (!json_is_object(inner)) {
        inner = json_object();
        json_object_set_new(merge, object, inner);
    }
    json_object_set_new(inner, member, value);
}

/* One UpdateUsagePlan operation into the /v1 merge patch; false after replying 400. */
static bool plan_patch_member(api_request *req, const aws_patch *op, json_t *merge)
{
    bool set = strcmp(op->op, "replace") == 0 || strcmp(op->op, "add") == 0;
    bool remove = strcmp(op->op, "remove") == 0;
    json_int_t whole;
    double number;
    const char *bad_value = NULL;
    if (set && (strcmp(op->path, "/name") == 0 || strcmp(op->path, "/description") == 0)) {
        json_object_set_new(merge, op->path + 1, json_string(op->value ? op->value : ""));
    } else if (set && strcmp(op->path, "/throttle/rateLimit") == 0) {
        if (patch_number(op->value, &number))
            set_nested(merge, "throttle", "rateLimit", json_real(number));
        else
            bad_value = "a non-negative number";
    } else if (set && (strcmp(op->path, "/throttle/burstLimit") == 0 ||
                       strcmp(op->path, "/quota/limit") == 0 ||
                       strcmp(op->path, "/quota/offset") == 0)) {
        const char *slash = strchr(op->path + 1, '/');
        char object[16];
        snprintf(object, sizeof object, "%.*s", (int)(slash - op->path - 1), op->path + 1);
        if (patch_integer(op->value, &whole))
            set_nested(merge, object, slash + 1, json_integer(whole));
        else
            bad_value = "a whole number";
    } else if (set && strcmp(op->path, "/quota/period") == 0) {
        set_nested(merge, "quota", "period", json_string(op->value ? op->value : ""));
    } else if (remove && (strcmp(op->path, "/throttle") == 0 || strcmp(op->path, "/quota") == 0)) {
        json_object_set_new(merge, op->path + 1, json_null());
    } else {
        aws_reply_error(req, 400, "BadRequestException",
                        "Invalid patch path '%.100s' for op '%.20s': a usage plan takes replace "
                        "on /name, /description, /throttle/rateLimit, /throttle/burstLimit, "
                        "/quota/limit, /quota/offset, /quota/period, and remove on /throttle "
                        "and /quota",
                        op->path, op->op);
        return false;
    }
    if (bad_value != NULL) {
        aws_reply_error(req, 400, "BadRequestException", "Invalid value for %s: expected %s",
                        op->path, bad_value);
        return false;
    }
    return true;
}

void aws_update_usage_plan(api_request *req)
{
    json_t *merge = aws_patch_merge(req, plan_patch_member);
    if (merge == NULL)
        return; /* replied */
    json_t *plan = NULL;
    unsigned status = 200;
    if (json_object_size(merge) > 0)
        status = aws_call(req, plans_update, req->id, merge, &plan);
    if (status == 200) {
        PGconn *conn = dbpool_acquire(req);
        if (conn != NULL) {
            reply_plan(req, conn, req->id, 200);
            dbpool_release(conn);
        }
    } else if (status == 404) {
        aws_reply_error(req, 404, "NotFoundException", INVALID_PLAN);
    }
    json_decref(plan);
    json_decref(merge);
}

/* ---- the plan's keys ---------------------------------------------------------- */

static json_t *plan_key_json(const json_t *key)
{
    return json_pack("{s:O,s:s,s:O}", "id", json_object_get(key, "id"), "type", "API_KEY",
                     "name", json_object_get(key, "name"));
}

static json_t *plan_key_row_json(const PGresult *res, int row)
{
    json_t *key = keys_row_json(res, row);
    json_t *out = plan_key_json(key);
    json_decref(key);
    return out;
}

/* Whether the plan req->id exists; false after replying (404 or a database error). */
static bool plan_exists(api_request *req, PGconn *conn)
{
    const char *params[] = {req->id};
    PGresult *res = api_exec(conn, "SELECT 1 FROM plans WHERE id = $1", 1, params);
    bool found = api_ok(res) && PQntuples(res) == 1;
    if (!api_ok(res))
        api_reply_db_error(req, conn, res, "reading a plan");
    else if (!found)
        aws_reply_error(req, 404, "NotFoundException", INVALID_PLAN);
    PQclear(res);
    return found;
}

/* The /v1 key `key_id` when it is in the plan req->id (new reference), or
 * NULL after replying 404 (either missing) or the error. */
static json_t *key_in_plan(api_request *req, const char *key_id)
{
    json_t *key = NULL;
    unsigned status = aws_call(req, keys_get, key_id, NULL, &key);
    if (status == 404)
        aws_reply_error(req, 404, "NotFoundException", INVALID_KEY);
    if (status != 200)
        return NULL;
    const char *plan = json_string_value(json_object_get(key, "planId"));
    if (plan == NULL || strcmp(plan, req->id) != 0) {
        json_decref(key);
        aws_reply_error(req, 404, "NotFoundException", INVALID_KEY);
        return NULL;
    }
    return key;
}

void aws_create_usage_plan_key(api_request *req)
{
    json_t *body = aws_parse_body(req);
    if (body == NULL)
        return;
    const char *key_id = json_string_value(json_object_get(body, "keyId"));
    const char *type = json_string_value(json_object_get(body, "keyType"));
    json_t *key = NULL, *attached = NULL;
    PGconn *conn = NULL;
    if (key_id == NULL || !apimodel_valid_id(key_id) || type == NULL ||
        strcmp(type, "API_KEY") != 0) {
        aws_reply_error(req, 400, "BadRequestException",
                        "keyId (an API key id) and keyType API_KEY are required");
    } else if ((conn = dbpool_acquire(req)) == NULL || !plan_exists(req, conn)) {
        /* replied */
    } else {
        dbpool_release(conn); /* the /v1 handlers take their own */
        conn = NULL;
        unsigned status = aws_call(req, keys_get, key_id, NULL, &key);
        const char *plan = status == 200 ? json_string_value(json_object_get(key, "planId")) : NULL;
        if (status == 404)
            aws_reply_error(req, 404, "NotFoundException", INVALID_KEY);
        else if (status == 200 && plan != NULL)
            /* A Tally key belongs to one plan: another must be left first. */
            aws_reply_error(req, 409, "ConflictException",
                            "Usage Plan %s cannot be added because API Key %s already belongs "
                            "to usage plan %s",
                            req->id, key_id, plan);
        else if (status == 200) {
            json_t *attach = json_pack("{s:s}", "planId", req->id);
            if (aws_call(req, keys_attach_plan, key_id, attach, &attached) == 200)
                api_reply_json(req, 201, plan_key_json(attached));
            json_decref(attach);
        }
    }
    if (conn != NULL)
        dbpool_release(conn);
    json_decref(key);
    json_decref(attached);
    json_decref(body);
}

void aws_get_usage_plan_key(api_request *req)
{
    json_t *key = key_in_plan(req, req->key_id);
    if (key != NULL)
        api_reply_json(req, 200, plan_key_json(key));
    json_decref(key);
}

void aws_delete_usage_plan_key(api_request *req)
{
    json_t *key = key_in_plan(req, req->key_id), *detached = NULL;
    if (key != NULL && aws_call(req, keys_detach_plan, req->key_id, NULL, &detached) == 200)
        api_reply_empty(req, 202);
    json_decref(key);
    json_decref(detached);
}

void aws_get_usage_plan_keys(api_request *req)
{
    static const char *const allowed[] = {"position", "limit", "name", NULL};
    aws_page page;
    if (!aws_read_page(req, allowed, &page))
        return;
    const char *name = api_query(req, "name");
    if (name != NULL && strlen(name) > APIMODEL_NAME_MAX) {
        aws_reply_error(req, 400, "BadRequestException", "name is too long");
        return;
    }
    PGconn *conn = dbpool_acquire(req);
    if (conn == NULL)
        return;
    if (plan_exists(req, conn)) {
        const char *params[] = {page.after[0] ? page.after : NULL, page.fetch, req->id,
                                name && name[0] ? name : NULL};
        PGresult *res = api_exec(conn,
                                 "SELECT " KEY_COLUMNS " FROM api_keys k WHERE k.plan_id = $3 "
                                 "AND ($1::text IS NULL OR k.id > $1) "
                                 "AND ($4::text IS NULL OR starts_with(k.name, $4)) "
                                 "ORDER BY k.id LIMIT $2::int",
                                 4, params);
        if (api_ok(res))
            aws_reply_page(req, res, &page, 0, plan_key_row_json);
        else
            api_reply_db_error(req, conn, res, "listing a plan's keys");
        PQclear(res);
    }
    dbpool_release(conn);
}
