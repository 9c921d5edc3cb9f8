/* tally-api's routes, in one table (docs/CONTRACT.md §4.3): dispatch, the
 * 405 answers and their Allow header (apiroute.h), the metrics labels,
 * `tally-api --list-routes` and, through it, the api suite's check against
 * docs/openapi.json all follow from it.
 *
 * Adding a route is one row here and its handler,
 *     void handler(api_request *req)
 * defined in any file of services/api that includes api.h: the row declares
 * the handler. A handler answers through api_reply_* (api.h); the {id} of
 * the path is req->id. AUTH_ADMIN routes are authenticated before their
 * handler runs. An APIROUTE_MEMORY_FIRST handler runs first on the HTTP
 * thread (req->on_worker false), where it either answers or leaves the
 * request unanswered to be run again on a worker.
 *
 * Rows of one path list its methods; the order of rows is the metrics'
 * order. An OPTIONS row (handler cors_preflight) opens its path to the
 * origins of TALLY_CORS_ORIGINS (cors.h); paths without one never answer
 * cross-origin. X(method, path, auth, runs, handler). */
#ifndef TALLY_API_ROUTES_H
#define TALLY_API_ROUTES_H

#include "apiroute.h"

/* clang-format off */
#define API_ROUTES(X)                                                                         \
    X("GET",    "/healthz",             AUTH_NONE,    APIROUTE_IN_MEMORY,    opsroutes_healthz) \
    X("GET",    "/readyz",              AUTH_NONE,    APIROUTE_ON_WORKER,    opsroutes_readyz)  \
    X("GET",    "/metrics",             AUTH_NONE,    APIROUTE_IN_MEMORY,    opsroutes_metrics) \
    X("GET",    "/openapi.json",        AUTH_NONE,    APIROUTE_IN_MEMORY,    opsroutes_openapi) \
    X("POST",   "/v1/plans",            AUTH_ADMIN,   APIROUTE_ON_WORKER,    plans_create)      \
    X("GET",    "/v1/plans",            AUTH_ADMIN,   APIROUTE_ON_WORKER,    plans_list)        \
    X("GET",    "/v1/plans/{id}",       AUTH_ADMIN,   APIROUTE_ON_WORKER,    plans_get)         \
    X("PATCH",  "/v1/plans/{id}",       AUTH_ADMIN,   APIROUTE_ON_WORKER,    plans_update)      \
    X("DELETE", "/v1/plans/{id}",       AUTH_ADMIN,   APIROUTE_ON_WORKER,    plans_delete)      \
    X("POST",   "/v1/keys",             AUTH_ADMIN,   APIROUTE_ON_WORKER,    keys_create)       \
    X("GET",    "/v1/keys",             AUTH_ADMIN,   APIROUTE_ON_WORKER,    keys_list)         \
    X("GET",    "/v1/keys/{id}",        AUTH_ADMIN,   APIROUTE_ON_WORKER,    keys_get)          \
    X("PATCH",  "/v1/keys/{id}",        AUTH_ADMIN,   APIROUTE_ON_WORKER,    keys_update)       \
    X("DELETE", "/v1/keys/{id}",        AUTH_ADMIN,   APIROUTE_ON_WORKER,    keys_delete)       \
    X("PUT",    "/v1/keys/{id}/plan",   AUTH_ADMIN,   APIROUTE_ON_WORKER,    keys_attach_plan)  \
    X("DELETE", "/v1/keys/{id}/plan",   AUTH_ADMIN,   APIROUTE_ON_WORKER,    keys_detach_plan)  \
    X("GET",    "/v1/keys/{id}/usage",  AUTH_ADMIN,   APIROUTE_ON_WORKER,    usage_key_usage)   \
    X("GET",    "/v1/keys/{id}/quota",  AUTH_ADMIN,   APIROUTE_MEMORY_FIRST, usage_key_quota)   \
    X("POST",   "/v1/keys/{id}/dashboard-links", AUTH_ADMIN, APIROUTE_ON_WORKER, dashboard_links_create) \
    X("GET",    "/v1/me/usage",         AUTH_API_KEY, APIROUTE_ON_WORKER,    usage_me_usage)    \
    X("OPTIONS", "/v1/me/usage",        AUTH_NONE,    APIROUTE_IN_MEMORY,    cors_preflight)    \
    X("GET",    "/v1/me/quota",         AUTH_API_KEY, APIROUTE_MEMORY_FIRST, usage_me_quota)    \
    X("OPTIONS", "/v1/me/quota",        AUTH_NONE,    APIROUTE_IN_MEMORY,    cors_preflight)    \
    X("GET",    "/v1/quotas/nearest",   AUTH_ADMIN,   APIROUTE_ON_WORKER,    overview_nearest_quota) \
    X("GET",    "/v1/usage/top",        AUTH_ADMIN,   APIROUTE_ON_WORKER,    overview_top_usage) \
    X("GET",    "/v1/status",           AUTH_ADMIN,   APIROUTE_ON_WORKER,    overview_status)   \
    X("GET",    "/dashboard",           AUTH_NONE,    APIROUTE_IN_MEMORY,    dashboard_customer_page) \
    X("GET",    "/dashboard/admin",     AUTH_NONE,    APIROUTE_IN_MEMORY,    dashboard_admin_page) \
    X("GET",    "/dashboard/assets/{id}", AUTH_NONE,  APIROUTE_IN_MEMORY,    dashboard_asset)   \
    X("GET",    "/dashboard/vendor/{id}", AUTH_NONE,  APIROUTE_IN_MEMORY,    dashboard_vendor)  \
    X("GET",    "/v1/authorize",        AUTH_GATEWAY, APIROUTE_IN_MEMORY,    authorize_handle)  \
    X("GET",    "/v1/alerts",           AUTH_ADMIN,   APIROUTE_ON_WORKER,    alerts_list)       \
    X("GET",    "/v1/me/alerts",        AUTH_API_KEY, APIROUTE_ON_WORKER,    alerts_me)         \
    X("OPTIONS", "/v1/me/alerts",       AUTH_NONE,    APIROUTE_IN_MEMORY,    cors_preflight)    \
    X("POST",   "/v1/webhooks",         AUTH_ADMIN,   APIROUTE_ON_WORKER,    webhooks_create)   \
    X("GET",    "/v1/webhooks",         AUTH_ADMIN,   APIROUTE_ON_WORKER,    webhooks_list)     \
    X("GET",    "/v1/webhooks/{id}",    AUTH_ADMIN,   APIROUTE_ON_WORKER,    webhooks_get)      \
    X("PATCH",  "/v1/webhooks/{id}",    AUTH_ADMIN,   APIROUTE_ON_WORKER,    webhooks_update)   \
    X("DELETE", "/v1/webhooks/{id}",    AUTH_ADMIN,   APIROUTE_ON_WORKER,    webhooks_delete)   \
    X("POST",   "/v1/webhooks/{id}/rotate-secret", AUTH_ADMIN, APIROUTE_ON_WORKER, webhooks_rotate_secret) \
    X("GET",    "/v1/webhooks/{id}/deliveries", AUTH_ADMIN, APIROUTE_ON_WORKER, hookdeliveries_list) \
    X("POST",   "/v1/webhooks/{id}/resend", AUTH_ADMIN,   APIROUTE_ON_WORKER,  hookdeliveries_resend)
/* clang-format on */

#define API_ROUTE_DECLARE(method, path, auth, runs, handler) \
    void handler(struct api_request *req);
API_ROUTES(API_ROUTE_DECLARE)
#undef API_ROUTE_DECLARE

enum {
#define API_ROUTE_ONE(method, path, auth, runs, handler) +1
    API_ROUTE_COUNT = 0 API_ROUTES(API_ROUTE_ONE)
#undef API_ROUTE_ONE
};

/* The table, in the order above (routes.c). */
extern const apiroute api_routes[API_ROUTE_COUNT];

#endif
