/* Query arguments: the shared check plus the refusal of "?name" without
 * '=', and the paging arguments of the list routes (query.h). */
#include "query.h"

#include <stdio.h>

#include "apitext.h"

typedef struct {
    char bare[64]; /* the first argument given without '=', cut at a character */
    bool found;
} bare_search;

static enum MHD_Result find_bare(void *cls, enum MHD_ValueKind kind, const char *key,
                                 const char *value)
{
    (void)kind;
    bare_search *search = cls;
    if (value != NULL)
        return MHD_YES;
    search->found = true;
    snprintf(search->bare, sizeof search->bare, "%.*s", (int)apitext_utf8_prefix(key, 60), key);
    return MHD_NO;
}

bool query_validate(api_request *req, const char *const *allowed)
{
    if (!api_check_query(req, allowed))
        return false;
    bare_search search = {.found = false};
    MHD_get_connection_values(req->conn, MHD_GET_ARGUMENT_KIND, find_bare, &search);
    if (!search.found)
        return true;
    /* "?from" is not "from absent": refused, so that a client's mistake is
     * not silently answered as if it had asked for the default. */
    api_reply_error(req, 400, "invalid_parameter",
                    "query parameter \"%s\" has no value: write %s=<value>", search.bare,
                    search.bare);
    return false;
}

bool query_read_page(api_request *req, const char *const *allowed, query_page *page)
{
    if (!query_validate(req, allowed))
        return false;
    apimodel_error err;
    const char *position = api_query(req, "position");
    page->after[0] = '\0';
    if (!apimodel_parse_limit(api_query(req, "limit"), &page->limit, &err) ||
        (position != NULL && position[0] != '\0' &&
         !apimodel_cursor_decode(position, page->after, sizeof page->after, &err))) {
        api_reply_error(req, 400, err.code, "%s", err.message);
        return false;
    }
    snprintf(page->fetch, sizeof page->fetch, "%d", page->limit + 1);
    return true;
}
