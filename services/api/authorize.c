/* GET /v1/authorize, for nginx auth_request and other gateways: 204 allowed,
 * 401 missing or unknown key, 403 disabled or planless key, 429 throttled or
 * over quota (with Retry-After; a soft quota allows past its limit with
 * X-Tally-Quota: overage, and refuses from its ceiling). Every answer for a
 * known key carries the X-RateLimit-* headers and X-Tally-Key-Id
 * (docs/CONTRACT.md §4.6).
 * With X-Tally-Gateway: nginx every refusal is instead a 403 naming the real
 * status and code in X-Tally-Status and X-Tally-Error (authorize.h).
 * Answered from the key cache alone, with no allocation on the allowed path. */
#include <string.h>
#include <strings.h>

#include "api.h"
#include "authorize.h"
#include "keycache.h"
#include "timeutil.h"

bool authorize_gateway_requested(const char *value)
{
    return value != NULL && strcasecmp(value, AUTHORIZE_GATEWAY_NGINX) == 0;
}

unsigned authorize_wire_status(unsigned status, bool gateway)
{
    if (!gateway || (status >= 200 && status < 300))
        return status;
    return AUTHORIZE_GATEWAY_REFUSAL;
}

bool authorize_percent_encode(const char *in, char *out, size_t out_size)
{
    static const char hex[] = "0123456789ABCDEF";
    size_t n = 0;
    for (const unsigned char *c = (const unsigned char *)in; *c != '\0'; c++) {
        bool unreserved = (*c >= 'A' && *c <= 'Z') || (*c >= 'a' && *c <= 'z') ||
                          (*c >= '0' && *c <= '9') || strchr("-._~", *c) != NULL;
        size_t need = unreserved ? 1 : 3;
        if (n + need >= out_size)
            return false;
        if (unreserved) {
            out[n++] = (char)*c;
        } else {
            out[n++] = '%';
            out[n++] = hex[*c >> 4];
            out[n++] = hex[*c & 15];
        }
    }
    if (n >= out_size)
        return false;
    out[n] = '\0';
    return true;
}

/* The customer header of an allowed gateway answer (authorize.h). */
static void add_customer(api_request *req, const char *customer_id)
{
    char encoded[sizeof req->response.headers[0].value];
    if (customer_id[0] != '\0' && authorize_percent_encode(customer_id, encoded, sizeof encoded))
        api_add_header(req, AUTHORIZE_CUSTOMER_HEADER, "%s", encoded);
}

/* Turns the plain refusal already in req->response into the gateway's:
 * the real status and `code` (static) go in headers (a 403 too, so that
 * nginx reads every refusal the same way), the status becomes 403. The
 * body stays (nginx drops a subrequest's body). */
static void answer_for_gateway(api_request *req, const char *code)
{
    unsigned status = req->response.status;
    api_add_header(req, AUTHORIZE_STATUS_HEADER, "%u", status);
    api_add_header(req, AUTHORIZE_ERROR_HEADER, "%s", code);
    req->response.status = authorize_wire_status(status, true);
}

/* The plain answer of `decision`; returns its error code (static), or
 * NULL when it allowed. */
static const char *answer(api_request *req, const authz_decision *decision)
{
    if (decision->key_id[0] != '\0') {
        memcpy(req->key_id, decision->key_id, sizeof req->key_id);
        api_add_header(req, "X-RateLimit-Limit", "%lld", (long long)decision->limit);
        api_add_header(req, "X-RateLimit-Remaining", "%lld", (long long)decision->remaining);
        api_add_header(req, "X-RateLimit-Reset", "%lld", (long long)decision->reset_seconds);
        api_add_header(req, "X-Tally-Key-Id", "%s", decision->key_id);
    }
    switch (decision->outcome) {
    case AUTHZ_ALLOWED:
        if (decision->overage) /* a soft quota, past its limit: billed as overage */
            api_add_header(req, "X-Tally-Quota", "overage");
        api_reply_empty(req, 204);
        return NULL;
    case AUTHZ_UNKNOWN_KEY:
        api_reply_error(req, 401, "unauthorized", "the API key is not valid");
        return "unauthorized";
    case AUTHZ_DISABLED:
        api_reply_error(req, 403, "key_disabled", "the API key is disabled");
        return "key_disabled";
    case AUTHZ_NO_PLAN:
        api_reply_error(req, 403, "no_plan", "the API key is attached to no plan");
        return "no_plan";
    case AUTHZ_THROTTLED:
        api_add_header(req, "Retry-After", "%lld", (long long)decision->retry_after_seconds);
        api_reply_error(req, 429, "throttled", "too many requests; slow down");
        return "throttled";
    case AUTHZ_OVER_QUOTA:
        api_add_header(req, "Retry-After", "%lld", (long long)decision->retry_after_seconds);
        api_reply_error(req, 429, "quota_exceeded", "the plan's quota for this period is used up");
        return "quota_exceeded";
    case AUTHZ_NOT_READY:
    case AUTHZ__COUNT:
        break;
    }
    api_add_header(req, "Retry-After", "1");
    api_reply_error(req, 503, "not_ready", "the key cache is not loaded yet");
    return "not_ready";
}

void authorize_handle(api_request *req)
{
    bool gateway = authorize_gateway_requested(
        MHD_lookup_connection_value(req->conn, MHD_HEADER_KIND, AUTHORIZE_GATEWAY_HEADER));
    uint8_t hash[32];
    if (!auth_api_key_hash(req, hash)) {
        if (gateway)
            answer_for_gateway(req, "unauthorized");
        return;
    }
    const char *method =
        MHD_lookup_connection_value(req->conn, MHD_HEADER_KIND, "X-Original-Method");
    const char *uri = MHD_lookup_connection_value(req->conn, MHD_HEADER_KIND, "X-Original-URI");
    authz_decision decision;
    keycache_authorize(hash, method, uri, time_now_usec(), &decision);
    const char *code = answer(req, &decision);
    if (gateway && code != NULL)
        answer_for_gateway(req, code);
    else if (gateway)
        add_customer(req, decision.customer_id);
}
