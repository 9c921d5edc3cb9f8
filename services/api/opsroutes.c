/* The operations endpoints (/healthz, /readyz, /metrics, /openapi.json)
 * and the request metrics that /metrics renders. */
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api.h"
#include "log.h"
#include "metrics.h"

#define STATUS_MAX 600
#define UNMATCHED API_ROUTE_COUNT

/* Requests by route (UNMATCHED: no route) and status: rendered here, not
 * in the shared registry, because the pairs are many and sparse. */
static _Atomic uint64_t request_counts[API_ROUTE_COUNT + 1][STATUS_MAX];
static metric *latency[API_ROUTE_COUNT + 1];
static char latency_labels[API_ROUTE_COUNT + 1][64];
static const double latency_bounds[] = {0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01,
                                        0.025,  0.05,    0.1,    0.25,  0.5,   1,     2.5};
static bool serve_publicly;
static const char *openapi;
static size_t openapi_size;

/* The route of row `row` of the table, or NULL for UNMATCHED. */
static const apiroute *route_of(size_t row)
{
    return row < API_ROUTE_COUNT ? &api_routes[row] : NULL;
}

void opsroutes_init(bool public_metrics, const char *openapi_text, size_t openapi_len)
{
    serve_publicly = public_metrics;
    openapi = openapi_text;
    openapi_size = openapi_len;
    for (size_t row = 0; row <= UNMATCHED; row++) {
        snprintf(latency_labels[row], sizeof latency_labels[row], "route=\"%s\"",
                 apiroute_label(route_of(row)));
        latency[row] = metrics_histogram("tally_api_request_duration_seconds",
                                         "time from request headers to the queued response",
                                         latency_labels[row], latency_bounds,
                                         sizeof latency_bounds / sizeof latency_bounds[0]);
    }
}

void opsroutes_observe(const apiroute *route, unsigned status, double seconds)
{
    size_t row = route != NULL ? (size_t)(route - api_routes) : UNMATCHED;
    if (status < STATUS_MAX)
        atomic_fetch_add_explicit(&request_counts[row][status], 1, memory_order_relaxed);
    metrics_observe(latency[row], seconds);
}

bool opsroutes_render_metrics(buf *out)
{
    if (!buf_append_str(out, "# HELP tally_api_requests_total requests answered, by route and "
                             "status\n# TYPE tally_api_requests_total counter\n"))
        return false;
    for (size_t row = 0; row <= UNMATCHED; row++) {
        for (int status = 0; status < STATUS_MAX; status++) {
            uint64_t n = atomic_load_explicit(&request_counts[row][status], memory_order_relaxed);
            if (n == 0)
                continue;
            if (!buf_appendf(out, "tally_api_requests_total{route=\"%s\",status=\"%d\"} %llu\n",
                             apiroute_label(route_of(row)), status, (unsigned long long)n))
                return false;
        }
    }
    return metrics_render(out);
}

/* False after answering 404 when /metrics and /openapi.json are served
 * only on the internal address. */
static bool served_here(api_request *req)
{
    if (serve_publicly)
        return true;
    api_reply_error(req, 404, "not_found",
                    "%s is served on the internal address (TALLY_METRICS_ADDR)",
                    req->route->path);
    return false;
}

void opsroutes_healthz(api_request *req)
{
    api_reply_json(req, 200, json_pack("{s:s}", "status", "ok"));
}

void opsroutes_readyz(api_request *req)
{
    char err[512];
    if (dbpool_ping(err, sizeof err)) {
        api_reply_json(req, 200, json_pack("{s:s}", "status", "ok"));
    } else {
        log_warn("readyz: %s", err);
        api_reply_json(req, 503, json_pack("{s:s,s:s}", "status", "unavailable", "detail",
                                           "the database is unreachable"));
    }
}

void opsroutes_metrics(api_request *req)
{
    if (!served_here(req))
        return;
    buf out;
    buf_init(&out, 4u << 20);
    if (!opsroutes_render_metrics(&out)) {
        buf_free(&out);
        api_reply_error(req, 500, "internal", "metrics too large");
        return;
    }
    req->response.status = 200;
    req->response.body = out.data ? out.data : strdup("");
    req->response.body_len = out.len;
    req->response.content_type = "text/plain; version=0.0.4";
}

void opsroutes_openapi(api_request *req)
{
    if (!served_here(req))
        return;
    if (openapi == NULL) {
        api_reply_error(req, 404, "not_found", "this server was started without --openapi-file");
        return;
    }
    req->response.body = malloc(openapi_size + 1);
    if (req->response.body == NULL) {
        api_reply_error(req, 500, "internal", "out of memory");
        return;
    }
    memcpy(req->response.body, openapi, openapi_size + 1);
    req->response.status = 200;
    req->response.body_len = openapi_size;
    req->response.content_type = "application/json";
}
