/* The two answers of GET /v1/authorize (authorize.c): plain, the status
 * says the decision (204, 401, 403, 429, 503); and for nginx's
 * auth_request, which understands only 2xx, 401 and 403 (anything else
 * becomes a 500 for the client), every refusal is a 403 carrying the real
 * status and code in headers for nginx to map back (docs/CONTRACT.md §4.6,
 * deploy/gateway/README.md). */
#ifndef TALLY_API_AUTHORIZE_H
#define TALLY_API_AUTHORIZE_H

#include <stdbool.h>
#include <stddef.h>

/* The request header that asks for the gateway answer, and its one value. */
#define AUTHORIZE_GATEWAY_HEADER "X-Tally-Gateway"
#define AUTHORIZE_GATEWAY_NGINX "nginx"
/* Headers of a refusal in the gateway answer: the status and the error
 * code a plain answer would have carried. */
#define AUTHORIZE_STATUS_HEADER "X-Tally-Status"
#define AUTHORIZE_ERROR_HEADER "X-Tally-Error"
/* On an allowed gateway answer: the key's customer id, percent-encoded
 * (authorize_percent_encode); absent when the key has none or when it does
 * not fit in a header value (api.h, 159 bytes once encoded). */
#define AUTHORIZE_CUSTOMER_HEADER "X-Tally-Customer-Id"
/* The status every refusal has in the gateway answer. */
#define AUTHORIZE_GATEWAY_REFUSAL 403u

/* True when `value` (the X-Tally-Gateway header, borrowed; NULL when
 * absent) asks for the gateway answer: "nginx", in any case. Any other
 * value leaves the plain answer. */
bool authorize_gateway_requested(const char *value);
/* The status sent for a plain answer's `status`: itself in the plain
 * answer, AUTHORIZE_GATEWAY_REFUSAL in the gateway answer for every status
 * that is not a success. */
unsigned authorize_wire_status(unsigned status, bool gateway);
/* `in` with every byte outside RFC 3986's unreserved set (letters, digits,
 * "-._~") written as %XX, into out (NUL-terminated); false, with out
 * unspecified, when it does not fit in out_size. Safe in a header value
 * whatever the customer id holds (no CR, LF or non-ASCII bytes). */
bool authorize_percent_encode(const char *in, char *out, size_t out_size);

#endif
