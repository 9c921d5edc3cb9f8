/* The dashboards (issue #14): the customer page at /dashboard/, the
 * operator overview at /dashboard/admin, their embedded assets
 * (dashassets.h), dashboard links (POST /v1/keys/{id}/dashboard-links,
 * dashlink.h) and the link tokens the /v1/me routes accept. */
#ifndef TALLY_API_DASHBOARD_H
#define TALLY_API_DASHBOARD_H

#include <stdbool.h>

#include "api.h"

/* The public address put in front of link paths (TALLY_PUBLIC_URL,
 * borrowed for the process's life; "" for relative links). */
void dashboard_init(const char *public_url);
/* /v1/me: when the request carries Authorization: Bearer <link token>,
 * verifies it and sets req->id to the token's key (*by_token true); with
 * no such header leaves the request alone (*by_token false: x-api-key is
 * the credential). False after replying 401 for a token refused. */
bool dashboard_me_token(api_request *req, bool *by_token);
/* Headers every answer of a customer route gets: Cache-Control: no-store
 * (the answers and the requests carry credentials). */
void dashboard_decorate(api_request *req);

#endif
