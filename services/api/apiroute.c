#include "apiroute.h"

#include <string.h>

/* Path shapes; "{id}" stands for one id segment. */
typedef enum {
    PATH_HEALTHZ,
    PATH_READYZ,
    PATH_METRICS,
    PATH_OPENAPI,
    PATH_PLANS,
    PATH_PLAN,
    PATH_KEYS,
    PATH_KEY,
    PATH_KEY_PLAN,
    PATH_KEY_USAGE,
    PATH_KEY_QUOTA,
    PATH_ME_USAGE,
    PATH_ME_QUOTA,
    PATH_AUTHORIZE,
    PATH__COUNT
} path_shape;

static const struct {
    const char *segments[4]; /* NULL-terminated when shorter */
    const char *allow;
} shapes[PATH__COUNT] = {
    [PATH_HEALTHZ] = {{"healthz", NULL}, "GET, HEAD"},
    [PATH_READYZ] = {{"readyz", NULL}, "GET, HEAD"},
    [PATH_METRICS] = {{"metrics", NULL}, "GET, HEAD"},
    [PATH_OPENAPI] = {{"openapi.json", NULL}, "GET, HEAD"},
    [PATH_PLANS] = {{"v1", "plans", NULL}, "GET, HEAD, POST"},
    [PATH_PLAN] = {{"v1", "plans", "{id}", NULL}, "GET, HEAD, PATCH, DELETE"},
    [PATH_KEYS] = {{"v1", "keys", NULL}, "GET, HEAD, POST"},
    [PATH_KEY] = {{"v1", "keys", "{id}", NULL}, "GET, HEAD, PATCH, DELETE"},
    [PATH_KEY_PLAN] = {{"v1", "keys", "{id}", "plan"}, "PUT, DELETE"},
    [PATH_KEY_USAGE] = {{"v1", "keys", "{id}", "usage"}, "GET, HEAD"},
    [PATH_KEY_QUOTA] = {{"v1", "keys", "{id}", "quota"}, "GET, HEAD"},
    [PATH_ME_USAGE] = {{"v1", "me", "usage", NULL}, "GET, HEAD"},
    [PATH_ME_QUOTA] = {{"v1", "me", "quota", NULL}, "GET, HEAD"},
    [PATH_AUTHORIZE] = {{"v1", "authorize", NULL}, "GET, HEAD"},
};

static const struct {
    path_shape shape;
    const char *method;
    apiroute_op op;
    const char *label;
    apiroute_auth auth;
} operations[OP__COUNT] = {
    {PATH_HEALTHZ, "GET", OP_HEALTHZ, "GET /healthz", AUTH_NONE},
    {PATH_READYZ, "GET", OP_READYZ, "GET /readyz", AUTH_NONE},
    {PATH_METRICS, "GET", OP_METRICS, "GET /metrics", AUTH_NONE},
    {PATH_OPENAPI, "GET", OP_OPENAPI, "GET /openapi.json", AUTH_NONE},
    {PATH_PLANS, "POST", OP_CREATE_PLAN, "POST /v1/plans", AUTH_ADMIN},
    {PATH_PLANS, "GET", OP_LIST_PLANS, "GET /v1/plans", AUTH_ADMIN},
    {PATH_PLAN, "GET", OP_GET_PLAN, "GET /v1/plans/{id}", AUTH_ADMIN},
    {PATH_PLAN, "PATCH", OP_UPDATE_PLAN, "PATCH /v1/plans/{id}", AUTH_ADMIN},
    {PATH_PLAN, "DELETE", OP_DELETE_PLAN, "DELETE /v1/plans/{id}", AUTH_ADMIN},
    {PATH_KEYS, "POST", OP_CREATE_KEY, "POST /v1/keys", AUTH_ADMIN},
    {PATH_KEYS, "GET", OP_LIST_KEYS, "GET /v1/keys", AUTH_ADMIN},
    {PATH_KEY, "GET", OP_GET_KEY, "GET /v1/keys/{id}", AUTH_ADMIN},
    {PATH_KEY, "PATCH", OP_UPDATE_KEY, "PATCH /v1/keys/{id}", AUTH_ADMIN},
    {PATH_KEY, "DELETE", OP_DELETE_KEY, "DELETE /v1/keys/{id}", AUTH_ADMIN},
    {PATH_KEY_PLAN, "PUT", OP_ATTACH_PLAN, "PUT /v1/keys/{id}/plan", AUTH_ADMIN},
    {PATH_KEY_PLAN, "DELETE", OP_DETACH_PLAN, "DELETE /v1/keys/{id}/plan", AUTH_ADMIN},
    {PATH_KEY_USAGE, "GET", OP_KEY_USAGE, "GET /v1/keys/{id}/usage", AUTH_ADMIN},
    {PATH_KEY_QUOTA, "GET", OP_KEY_QUOTA, "GET /v1/keys/{id}/quota", AUTH_ADMIN},
    {PATH_ME_USAGE, "GET", OP_ME_USAGE, "GET /v1/me/usage", AUTH_API_KEY},
    {PATH_ME_QUOTA, "GET", OP_ME_QUOTA, "GET /v1/me/quota", AUTH_API_KEY},
    {PATH_AUTHORIZE, "GET", OP_AUTHORIZE, "GET /v1/authorize", AUTH_GATEWAY},
};

bool apiroute_valid_id(const char *text, size_t len)
{
    if (len == 0 || len > APIROUTE_ID_MAX)
        return false;
    for (size_t i = 0; i < len; i++) {
        char c = text[i];
        bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                  c == '_' || c == '-' || c == '.' || c == ':' || c == '~';
        if (!ok)
            return false;
    }
    return true;
}

/* Matches `path` against one shape; on success copies the id into `id`. */
static bool shape_matches(path_shape shape, const char *path, char *id)
{
    const char *p = path;
    id[0] = '\0';
    for (int s = 0; s < 4 && shapes[shape].segments[s] != NULL; s++) {
        if (*p != '/')
            return false;
        p++;
        const char *end = strchr(p, '/');
        size_t len = end ? (size_t)(end - p) : strlen(p);
        const char *want = shapes[shape].segments[s];
        if (strcmp(want, "{id}") == 0) {
            if (!apiroute_valid_id(p, len))
                return false;
            memcpy(id, p, len);
            id[len] = '\0';
        } else if (strlen(want) != len || memcmp(want, p, len) != 0) {
            return false;
        }
        p += len;
    }
    return *p == '\0';
}

apiroute_result apiroute_find(const char *method, const char *path, apiroute_match *out)
{
    if (strcmp(method, "HEAD") == 0)
        method = "GET";
    for (int shape = 0; shape < PATH__COUNT; shape++) {
        char id[APIROUTE_ID_MAX + 1];
        if (!shape_matches((path_shape)shape, path, id))
            continue;
        memcpy(out->id, id, sizeof id);
        out->allow = shapes[shape].allow;
        for (int i = 0; i < OP__COUNT; i++) {
            if (operations[i].shape == (path_shape)shape &&
                strcmp(operations[i].method, method) == 0) {
                out->op = operations[i].op;
                return APIROUTE_FOUND;
            }
        }
        return APIROUTE_METHOD_NOT_ALLOWED;
    }
    return APIROUTE_NOT_FOUND;
}

const char *apiroute_label(apiroute_op op)
{
    return (unsigned)op < OP__COUNT ? operations[op].label : "unmatched";
}

apiroute_auth apiroute_auth_of(apiroute_op op)
{
    return (unsigned)op < OP__COUNT ? operations[op].auth : AUTH_ADMIN;
}
