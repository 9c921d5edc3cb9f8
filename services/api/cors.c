/* CORS: the allow list, preflights and the headers of actual requests. */
#include "cors.h"

#include <stdio.h>
#include <string.h>

static char origins[CORS_ORIGINS_MAX][CORS_ORIGIN_LEN_MAX + 1];
static size_t origin_count;
/* Per row of api_routes: whether its path has an OPTIONS row. */
static bool open_route[API_ROUTE_COUNT];

/* The request headers a page on an allowed origin may send, and the
 * response headers its scripts may read. */
#define ALLOWED_HEADERS "authorization, x-api-key"
#define EXPOSED_HEADERS \
    "Retry-After, X-RateLimit-Limit, X-RateLimit-Remaining, X-RateLimit-Reset"
#define PREFLIGHT_MAX_AGE_S 600

/* "scheme://host[:port]" with no path, query, user or wildcard. */
static bool origin_well_formed(const char *text, size_t len)
{
    size_t scheme = strncmp(text, "https://", 8) == 0 ? 8
                    : strncmp(text, "http://", 7) == 0 ? 7
                                                       : 0;
    if (scheme == 0 || len <= scheme || len > CORS_ORIGIN_LEN_MAX)
        return false;
    for (size_t i = scheme; i < len; i++) {
        char c = text[i];
        bool ok = (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '.' ||
                  c == ':' || c == '[' || c == ']';
        if (!ok) /* upper case too: browsers send origins lower-cased */
            return false;
    }
    return true;
}

bool cors_init(const char *text, char *err, size_t err_size)
{
    origin_count = 0;
    for (const char *p = text != NULL ? text : ""; *p != '\0';) {
        size_t len = strcspn(p, ",");
        while (len > 0 && (*p == ' ')) {
            p++;
            len--;
        }
        size_t trimmed = len;
        while (trimmed > 0 && p[trimmed - 1] == ' ')
            trimmed--;
        if (trimmed > 0) {
            if (origin_count == CORS_ORIGINS_MAX) {
                snprintf(err, err_size, "TALLY_CORS_ORIGINS: more than %d origins",
                         CORS_ORIGINS_MAX);
                return false;
            }
            if (!origin_well_formed(p, trimmed)) {
                snprintf(err, err_size,
                         "TALLY_CORS_ORIGINS: \"%.*s\" is not an origin like https://app.example.com "
                         "(lower case, no path, no wildcard)",
                         (int)(trimmed > 80 ? 80 : trimmed), p);
                return false;
            }
            memcpy(origins[origin_count], p, trimmed);
            origins[origin_count++][trimmed] = '\0';
        }
        p += len;
        if (*p == ',')
            p++;
    }
    for (size_t i = 0; i < API_ROUTE_COUNT; i++) {
        open_route[i] = false;
        for (size_t j = 0; j < API_ROUTE_COUNT; j++)
            open_route[i] = open_route[i] ||
                            (strcmp(api_routes[j].method, "OPTIONS") == 0 &&
                             strcmp(api_routes[j].path, api_routes[i].path) == 0);
    }
    return true;
}

bool cors_origin_allowed(const char *origin)
{
    for (size_t i = 0; origin != NULL && i < origin_count; i++) {
        if (strcmp(origins[i], origin) == 0)
            return true;
    }
    return false;
}

static const char *request_origin(api_request *req)
{
    return MHD_lookup_connection_value(req->conn, MHD_HEADER_KIND, "Origin");
}

void cors_decorate(api_request *req)
{
    /* The AWS listener's routes are another table (aws.h), never open. */
    if (req->aws || req->route == NULL || !open_route[req->route - api_routes] ||
        strcmp(req->route->method, "OPTIONS") == 0) /* the preflight sets its own */
        return;
    api_add_header(req, "Vary", "Origin");
    const char *origin = request_origin(req);
    if (!cors_origin_allowed(origin))
        return;
    api_add_header(req, "Access-Control-Allow-Origin", "%s", origin);
    api_add_header(req, "Access-Control-Expose-Headers", "%s", EXPOSED_HEADERS);
}

/* Whether `method` is one the preflight's path serves (its Allow list). */
static bool method_listed(const char *allow, const char *method)
{
    size_t len = strlen(method);
    for (const char *p = allow; *p != '\0';) {
        size_t item = strcspn(p, ",");
        if (item == len && strncmp(p, method, len) == 0)
            return true;
        p += item;
        while (*p == ',' || *p == ' ')
            p++;
    }
    return false;
}

/* OPTIONS on an open path: a preflight when it has Origin and
 * Access-Control-Request-Method, else a plain OPTIONS (204 with Allow). */
void cors_preflight(api_request *req)
{
    char allow[APIROUTE_ALLOW_MAX];
    apiroute_allow(api_routes, API_ROUTE_COUNT, req->route->path, allow, sizeof allow);
    const char *origin = request_origin(req);
    const char *asked = MHD_lookup_connection_value(req->conn, MHD_HEADER_KIND,
                                                    "Access-Control-Request-Method");
    api_add_header(req, "Vary", "Origin");
    if (origin == NULL || asked == NULL) {
        api_add_header(req, "Allow", "%s", allow);
        api_reply_empty(req, 204);
        return;
    }
    if (!cors_origin_allowed(origin)) {
        api_reply_error(req, 403, "origin_not_allowed",
                        "this origin may not call the API from a browser (TALLY_CORS_ORIGINS)");
        return;
    }
    if (!method_listed(allow, asked)) {
        api_reply_error(req, 405, "method_not_allowed", "%.20s is not allowed here; allowed: %s",
                        asked, allow);
        return;
    }
    api_add_header(req, "Access-Control-Allow-Origin", "%s", origin);
    api_add_header(req, "Access-Control-Allow-Methods", "%s", allow);
    api_add_header(req, "Access-Control-Allow-Headers", "%s", ALLOWED_HEADERS);
    api_add_header(req, "Access-Control-Max-Age", "%d", PREFLIGHT_MAX_AGE_S);
    api_reply_empty(req, 204);
}
