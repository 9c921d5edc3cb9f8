/* GET /v1/authorize, for nginx auth_request and other gateways: 204 allowed,
 * 401 missing or unknown key, 403 disabled or planless key, 429 throttled or
 * over quota (with Retry-After; a soft quota allows past its limit with
 * X-Tally-Quota: overage, and refuses from its ceiling). Every answer for a
 * known key carries the X-RateLimit-* headers and X-Tally-Key-Id
 * (docs/CONTRACT.md §4.6).
 * Answered from the key cache alone. */
#include <string.h>

#include "api.h"
#include "keycache.h"
#include "timeutil.h"

void authorize_handle(api_request *req)
{
    uint8_t hash[32];
    if (!auth_api_key_hash(req, hash))
        return;
    const char *method =
        MHD_lookup_connection_value(req->conn, MHD_HEADER_KIND, "X-Original-Method");
    const char *uri = MHD_lookup_connection_value(req->conn, MHD_HEADER_KIND, "X-Original-URI");
    authz_decision decision;
    keycache_authorize(hash, method, uri, time_now_usec(), &decision);
    if (decision.key_id[0] != '\0') {
        memcpy(req->key_id, decision.key_id, sizeof req->key_id);
        api_add_header(req, "X-RateLimit-Limit", "%lld", (long long)decision.limit);
        api_add_header(req, "X-RateLimit-Remaining", "%lld", (long long)decision.remaining);
        api_add_header(req, "X-RateLimit-Reset", "%lld", (long long)decision.reset_seconds);
        api_add_header(req, "X-Tally-Key-Id", "%s", decision.key_id);
    }
    switch (decision.outcome) {
    case AUTHZ_ALLOWED:
        if (decision.overage) /* a soft quota, past its limit: billed as overage */
            api_add_header(req, "X-Tally-Quota", "overage");
        api_reply_empty(req, 204);
        return;
    case AUTHZ_UNKNOWN_KEY:
        api_reply_error(req, 401, "unauthorized", "the API key is not valid");
        return;
    case AUTHZ_DISABLED:
        api_reply_error(req, 403, "key_disabled", "the API key is disabled");
        return;
    case AUTHZ_NO_PLAN:
        api_reply_error(req, 403, "no_plan", "the API key is attached to no plan");
        return;
    case AUTHZ_THROTTLED:
        api_add_header(req, "Retry-After", "%lld", (long long)decision.retry_after_seconds);
        api_reply_error(req, 429, "throttled", "too many requests; slow down");
        return;
    case AUTHZ_OVER_QUOTA:
        api_add_header(req, "Retry-After", "%lld", (long long)decision.retry_after_seconds);
        api_reply_error(req, 429, "quota_exceeded", "the plan's quota for this period is used up");
        return;
    case AUTHZ_NOT_READY:
    case AUTHZ__COUNT:
        break;
    }
    api_add_header(req, "Retry-After", "1");
    api_reply_error(req, 503, "not_ready", "the key cache is not loaded yet");
}
