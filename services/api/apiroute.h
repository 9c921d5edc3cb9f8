/* The routes of tally-api (docs/CONTRACT.md §4.3): maps a method and a path
 * to one operation, or says why none matches (404 or 405 with the methods
 * the path allows). Pure, no allocation; the api's unit tests drive it. */
#ifndef TALLY_APIROUTE_H
#define TALLY_APIROUTE_H

#include <stdbool.h>
#include <stddef.h>

/* Longest id accepted in a path: api_keys.id allows 128 characters. */
#define APIROUTE_ID_MAX 128

typedef enum {
    OP_HEALTHZ = 0,
    OP_READYZ,
    OP_METRICS,
    OP_OPENAPI,
    OP_CREATE_PLAN,
    OP_LIST_PLANS,
    OP_GET_PLAN,
    OP_UPDATE_PLAN,
    OP_DELETE_PLAN,
    OP_CREATE_KEY,
    OP_LIST_KEYS,
    OP_GET_KEY,
    OP_UPDATE_KEY,
    OP_DELETE_KEY,
    OP_ATTACH_PLAN,
    OP_DETACH_PLAN,
    OP_KEY_USAGE,
    OP_KEY_QUOTA,
    OP_ME_USAGE,
    OP_ME_QUOTA,
    OP_AUTHORIZE,
    OP__COUNT
} apiroute_op;

/* Who may call an operation. */
typedef enum {
    AUTH_NONE,     /* operations endpoints */
    AUTH_ADMIN,    /* Authorization: Bearer <TALLY_ADMIN_TOKEN> */
    AUTH_API_KEY,  /* x-api-key: the key's own secret */
    AUTH_GATEWAY,  /* x-api-key, decided by the authorize logic itself */
} apiroute_auth;

typedef enum {
    APIROUTE_FOUND,
    APIROUTE_NOT_FOUND,          /* no route has this path (or the id is malformed) */
    APIROUTE_METHOD_NOT_ALLOWED, /* the path exists; `allow` lists its methods */
} apiroute_result;

typedef struct {
    apiroute_op op;
    char id[APIROUTE_ID_MAX + 1]; /* the {id} of the path, or "" */
    const char *allow;            /* static: "GET, POST" etc., for 405's Allow header */
} apiroute_match;

/* Matches `method` (HEAD counts as GET) and `path` (no query string; the
 * caller strips it). Ids must be 1..APIROUTE_ID_MAX of [A-Za-z0-9._:~-];
 * anything else in an id position is "not found". A trailing slash or an
 * empty segment is "not found". `out` is filled for FOUND and
 * METHOD_NOT_ALLOWED. */
apiroute_result apiroute_find(const char *method, const char *path, apiroute_match *out);
/* "POST /v1/plans", "GET /v1/keys/{id}/usage" ...: the metrics label. */
const char *apiroute_label(apiroute_op op);
apiroute_auth apiroute_auth_of(apiroute_op op);
/* True when `text` (len bytes) is a well-formed id for paths. */
bool apiroute_valid_id(const char *text, size_t len);

#endif
