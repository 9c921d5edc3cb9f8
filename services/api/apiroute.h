/* Route matching for tally-api (docs/CONTRACT.md §4.3): finds the row of a
 * route table (routes.h holds tally-api's) for a method and a path, or says
 * why none matches (404, or 405 with the methods the path allows). Pure, no
 * allocation, and it names no handler itself, so that the fuzz targets can
 * link it without the rest of the api; the api's unit tests drive it. */
#ifndef TALLY_APIROUTE_H
#define TALLY_APIROUTE_H

#include <stdbool.h>
#include <stddef.h>

/* Longest id accepted in a path: api_keys.id allows 128 characters. */
#define APIROUTE_ID_MAX 128
/* Room for a 405's Allow value: every method of one path ("GET, HEAD, POST,
 * PUT, PATCH, DELETE" is 34 bytes). The unit tests check that each path of
 * the table fits. */
#define APIROUTE_ALLOW_MAX 64

/* Who may call a route. Only AUTH_ADMIN is checked before the handler
 * runs; the handlers of the others authenticate as they need. */
typedef enum {
    AUTH_NONE,     /* the operations endpoints */
    AUTH_ADMIN,    /* Authorization: Bearer <TALLY_ADMIN_TOKEN> */
    AUTH_API_KEY,  /* x-api-key: the customer key's own secret */
    AUTH_GATEWAY,  /* x-api-key, a customer key judged by the authorize logic itself */
} apiroute_auth;

/* Where a route's handler runs. The HTTP threads serve authorize requests
 * too, so only what never waits on PostgreSQL may run there. */
typedef enum {
    APIROUTE_IN_MEMORY,    /* on the HTTP thread */
    APIROUTE_ON_WORKER,    /* on a database worker, the connection suspended */
    /* On the HTTP thread first; when the handler leaves the request
     * unanswered there (a cache that cannot answer), again on a worker. */
    APIROUTE_MEMORY_FIRST,
} apiroute_runs;

struct api_request; /* api.h */
typedef void (*apiroute_handler)(struct api_request *req);

typedef struct {
    const char *method; /* "GET", "POST", ...; a GET row serves HEAD too */
    const char *path;   /* "/v1/keys/{id}/usage": "{id}" is one id segment, at most one */
    const char *label;  /* "GET /v1/keys/{id}/usage": logs and metrics */
    apiroute_auth auth;
    apiroute_runs runs;
    apiroute_handler handle;
} apiroute;

typedef enum {
    APIROUTE_FOUND,
    APIROUTE_NOT_FOUND,          /* no route has this path (or the id is malformed) */
    APIROUTE_METHOD_NOT_ALLOWED, /* the path exists; `allow` lists its methods */
} apiroute_result;

typedef struct {
    const apiroute *route;        /* FOUND: the row (borrowed from the table) */
    char id[APIROUTE_ID_MAX + 1]; /* the {id} of the path, or "" */
    char allow[APIROUTE_ALLOW_MAX]; /* METHOD_NOT_ALLOWED: "GET, HEAD, POST" etc. */
} apiroute_match;

/* Matches `method` (HEAD counts as GET) and `path` (no query string; the
 * caller strips it) against the `count` rows of `routes`; the first row
 * whose path matches decides the path. Ids must be 1..APIROUTE_ID_MAX of
 * [A-Za-z0-9._:~-]; anything else in an id position is "not found". A
 * trailing slash or an empty segment is "not found". `out` is filled for
 * FOUND and METHOD_NOT_ALLOWED. */
apiroute_result apiroute_find(const apiroute *routes, size_t count, const char *method,
                              const char *path, apiroute_match *out);
/* The Allow value of `path` (a row's pattern, compared as text): GET and
 * HEAD first when the path has a GET row, then the other methods in table
 * order, each once, ", "-separated. False when it does not fit `size`. */
bool apiroute_allow(const apiroute *routes, size_t count, const char *path, char *out,
                    size_t size);
/* The route's label, or "unmatched" for NULL. */
const char *apiroute_label(const apiroute *route);
/* "none", "admin", "api-key", "gateway"; "memory", "worker", "memory-first". */
const char *apiroute_auth_name(apiroute_auth auth);
const char *apiroute_runs_name(apiroute_runs runs);
/* True when `text` (len bytes) is a well-formed id for paths. */
bool apiroute_valid_id(const char *text, size_t len);

#endif
