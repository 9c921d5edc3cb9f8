/* The query-string check every route with arguments shares: api_check_query
 * (unknown, repeated, not UTF-8) plus a refusal of an argument written
 * without '=' ("?from&to=..."), which libmicrohttpd hands over as a NULL
 * value that api_query could not tell from an absent one. */
#ifndef TALLY_API_QUERY_H
#define TALLY_API_QUERY_H

#include <stdbool.h>

#include "api.h"

/* True when every query argument is in `allowed` (NULL-terminated), given
 * once, valid UTF-8 and written with '=' (an empty value "from=" is the
 * route's to judge); otherwise replies 400 and returns false. */
bool query_validate(api_request *req, const char *const *allowed);

#endif
