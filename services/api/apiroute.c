/* Route matching over a table of method + path pattern rows. */
#include "apiroute.h"

#include <string.h>

#define ID_SEGMENT "{id}"

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

/* Whether `pattern` starts with an {id} segment (it is at a segment's start). */
static bool at_id_segment(const char *pattern)
{
    size_t len = strlen(ID_SEGMENT);
    return strncmp(pattern, ID_SEGMENT, len) == 0 && (pattern[len] == '/' || pattern[len] == '\0');
}

/* Matches `path` against `pattern`; on success copies the path's {id} (or
 * "") into `id`. Literal text is compared byte by byte, so that a path
 * fails on its first differing byte: every request is tried against the
 * rows in turn, authorize's among them. */
static bool path_matches(const char *pattern, const char *path, char id[APIROUTE_ID_MAX + 1])
{
    id[0] = '\0';
    bool segment_start = false;
    while (*pattern != '\0') {
        if (segment_start && *pattern == '{' && at_id_segment(pattern)) {
            size_t have = strcspn(path, "/");
            if (!apiroute_valid_id(path, have))
                return false;
            memcpy(id, path, have);
            id[have] = '\0';
            pattern += strlen(ID_SEGMENT);
            path += have;
        } else if (*pattern++ != *path++) {
            return false; /* also when the path ends first: its NUL differs */
        }
        segment_start = pattern[-1] == '/';
    }
    return *path == '\0';
}

apiroute_result apiroute_find(const apiroute *routes, size_t count, const char *method,
                              const char *path, apiroute_match *out)
{
    if (strcmp(method, "HEAD") == 0)
        method = "GET";
    for (size_t i = 0; i < count; i++) {
        char id[APIROUTE_ID_MAX + 1];
        if (!path_matches(routes[i].path, path, id))
            continue;
        memcpy(out->id, id, sizeof id);
        out->route = NULL;
        out->allow[0] = '\0';
        /* Rows sharing this path are the same path: its methods are theirs. */
        for (size_t j = i; j < count; j++) {
            if (strcmp(routes[j].path, routes[i].path) == 0 &&
                strcmp(routes[j].method, method) == 0) {
                out->route = &routes[j];
                return APIROUTE_FOUND;
            }
        }
        apiroute_allow(routes, count, routes[i].path, out->allow, sizeof out->allow);
        return APIROUTE_METHOD_NOT_ALLOWED;
    }
    return APIROUTE_NOT_FOUND;
}

/* Appends ", " (unless first) and `method` to out (used bytes in *len);
 * false when it does not fit. */
static bool append_method(char *out, size_t size, size_t *len, const char *method)
{
    size_t separator = *len > 0 ? 2 : 0, add = strlen(method);
    if (*len + separator + add + 1 > size)
        return false;
    memcpy(out + *len, ", ", separator);
    memcpy(out + *len + separator, method, add + 1);
    *len += separator + add;
    return true;
}

/* Whether a row before `row` with `path` has `row`'s method already. */
static bool method_listed_before(const apiroute *routes, size_t row, const char *path)
{
    for (size_t i = 0; i < row; i++) {
        if (strcmp(routes[i].path, path) == 0 && strcmp(routes[i].method, routes[row].method) == 0)
            return true;
    }
    return false;
}

bool apiroute_allow(const apiroute *routes, size_t count, const char *path, char *out,
                    size_t size)
{
    size_t len = 0;
    bool has_get = false, fits = size > 0;
    if (fits)
        out[0] = '\0';
    for (size_t i = 0; i < count && !has_get; i++)
        has_get = strcmp(routes[i].path, path) == 0 && strcmp(routes[i].method, "GET") == 0;
    if (has_get)
        fits = fits && append_method(out, size, &len, "GET") &&
               append_method(out, size, &len, "HEAD");
    for (size_t i = 0; i < count && fits; i++) {
        if (strcmp(routes[i].path, path) != 0 || strcmp(routes[i].method, "GET") == 0 ||
            method_listed_before(routes, i, path))
            continue;
        fits = append_method(out, size, &len, routes[i].method);
    }
    return fits;
}

const char *apiroute_label(const apiroute *route)
{
    return route != NULL ? route->label : "unmatched";
}

const char *apiroute_auth_name(apiroute_auth auth)
{
    switch (auth) {
    case AUTH_NONE:
        return "none";
    case AUTH_ADMIN:
        return "admin";
    case AUTH_API_KEY:
        return "api-key";
    case AUTH_GATEWAY:
        return "gateway";
    }
    return "?";
}

const char *apiroute_runs_name(apiroute_runs runs)
{
    switch (runs) {
    case APIROUTE_IN_MEMORY:
        return "memory";
    case APIROUTE_ON_WORKER:
        return "worker";
    case APIROUTE_MEMORY_FIRST:
        return "memory-first";
    }
    return "?";
}
