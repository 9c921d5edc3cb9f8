/* The query-string check every route with arguments shares: api_check_query
 * (unknown, repeated, not UTF-8) plus a refusal of an argument written
 * without '=' ("?from&to=..."), which libmicrohttpd hands over as a NULL
 * value that api_query could not tell from an absent one; and the paging
 * arguments every list route shares. */
#ifndef TALLY_API_QUERY_H
#define TALLY_API_QUERY_H

#include <stdbool.h>

#include "api.h"

/* True when every query argument is in `allowed` (NULL-terminated), given
 * once, valid UTF-8 and written with '=' (an empty value "from=" is the
 * route's to judge); otherwise replies 400 and returns false. */
bool query_validate(api_request *req, const char *const *allowed);

/* A list's paging arguments, ?limit and ?position. */
typedef struct {
    int limit;
    char after[APIMODEL_ID_MAX + 1]; /* the id the page starts after; "" for the first page */
    char fetch[16];                  /* limit + 1 as text: the rows a list's query fetches */
} query_page;

/* query_validate with `allowed`, then reads ?limit and ?position into
 * `page`; false after replying 400. */
bool query_read_page(api_request *req, const char *const *allowed, query_page *page);

#endif
