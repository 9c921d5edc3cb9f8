/* Cross-origin requests (issue #14). A path answers browsers from other
 * origins exactly when routes.h gives it an OPTIONS row (whose handler is
 * cors_preflight): the table says which paths are open, so dispatch and the
 * 405/Allow answers need no special case, and every path without such a row
 * (every admin route) never carries Access-Control-* headers. Origins come
 * from TALLY_CORS_ORIGINS, a comma-separated list of exact origins
 * ("https://app.example.com"); none by default. */
#ifndef TALLY_API_CORS_H
#define TALLY_API_CORS_H

#include <stdbool.h>
#include <stddef.h>

#include "api.h"

#define CORS_ORIGINS_MAX 32
#define CORS_ORIGIN_LEN_MAX 200

/* Parses the allow list (borrowed text, copied) and marks the routes whose
 * path has an OPTIONS row; false with err for a malformed origin (a path,
 * a wildcard, no scheme) or too many. Called once before serving. */
bool cors_init(const char *origins, char *err, size_t err_size);
/* Whether `origin` (exact bytes) is on the allow list. */
bool cors_origin_allowed(const char *origin);
/* Adds the CORS headers of an actual request on an open path: Vary:
 * Origin always, Access-Control-Allow-Origin (the origin itself) and the
 * exposed headers when its Origin is allowed. Nothing for other paths. */
void cors_decorate(api_request *req);

#endif
