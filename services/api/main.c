/* tally-api: plans, keys, usage and quota over HTTP, and the gateway's
 * authorize endpoint (CONTRACT.md section 4). libmicrohttpd serves requests
 * on a pool of epoll threads, which only ever do in-memory work:
 * GET /v1/authorize and the quota routes are answered from an in-memory key
 * cache that a background thread reloads every second, and health, metrics
 * and the OpenAPI document need nothing else. Every route that may wait on
 * PostgreSQL (admin, usage, a quota the cache cannot answer, /readyz) is
 * handed to a few database workers (workers.c) while its connection is
 * suspended, so that a slow query never delays an authorize request queued
 * on the same libmicrohttpd thread. */
#include <errno.h>
#include <jansson.h>
#include <microhttpd.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "api.h"
#include "apitext.h"
#include "buf.h"
#include "config.h"
#include "keycache.h"
#include "log.h"
#include "metrics.h"
#include "ops.h"
#include "timeutil.h"

/* ---- settings ---------------------------------------------------------- */

static const char *database_url;
static const char *http_addr;
static const char *admin_token;
static const char *log_level_text;
static const char *openapi_file;
static long long key_refresh_ms;
static long long thread_count;
static long long db_pool_size;
static long long db_worker_count;

#define ADMIN_TOKEN_MIN 16

static const cfg_setting settings[] = {
    {"TALLY_DATABASE_URL", "database-url", CFG_STRING, &database_url, NULL, true, true, 0, 0,
     "libpq connection string of the Tally database"},
    {"TALLY_HTTP_ADDR", "http-addr", CFG_STRING, &http_addr, "127.0.0.1:8080", false, false, 0, 0,
     "listen address, host:port or [v6]:port"},
    {"TALLY_ADMIN_TOKEN", "admin-token", CFG_STRING, &admin_token, NULL, true, true, 0, 0,
     "bearer token for the admin routes (at least 16 characters; never logged)"},
    {"TALLY_LOG_LEVEL", "log-level", CFG_STRING, &log_level_text, "info", false, false, 0, 0,
     "debug (one line per request), info, warn or error"},
    {"TALLY_KEY_REFRESH_MS", "key-refresh-ms", CFG_INT, &key_refresh_ms, "1000", false, false, 100,
     60000, "how often the authorize cache reloads keys, plans and quota counters"},
    {NULL, "threads", CFG_INT, &thread_count, "0", false, false, 0, 64,
     "HTTP event-loop threads (in-memory work only); 0: half the CPUs, at least 1 (on 2 cores "
     "one loop gave authorize a p99 within 1.5x nginx's, 4 did not: README, Benchmarks)"},
    {NULL, "db-pool-size", CFG_INT, &db_pool_size, "4", false, false, 1, 32,
     "PostgreSQL connections shared by the admin and usage routes"},
    /* More workers than connections: the extra ones wait (at most ~2 s) for
     * a busy pool and answer 503, rather than requests queueing unanswered. */
    {NULL, "db-workers", CFG_INT, &db_worker_count, "8", false, false, 1, WORKERS_MAX,
     "threads that run the routes which may wait on PostgreSQL (admin, usage, readyz)"},
    {NULL, "openapi-file", CFG_STRING, &openapi_file, "", false, false, 0, 0,
     "an OpenAPI document to serve at GET /openapi.json (e.g. docs/openapi.json)"},
};

/* ---- metrics ----------------------------------------------------------- */

#define STATUS_MAX 600
/* libmicrohttpd's connection limit; the workers' queue holds one job per
 * connection at most, so it is as long. */
#define CONNECTION_LIMIT 8192u
/* Requests by operation (OP__COUNT: unmatched) and status: rendered here,
 * not in the shared registry, because the pairs are many and sparse. */
static _Atomic uint64_t request_counts[OP__COUNT + 1][STATUS_MAX];
static metric *latency[OP__COUNT + 1];
static char latency_labels[OP__COUNT + 1][64];
static const double latency_bounds[] = {0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01,
                                        0.025,  0.05,    0.1,    0.25,  0.5,   1,     2.5};
static char *openapi_text;
static size_t openapi_len;

static void register_metrics(void)
{
    for (int op = 0; op <= OP__COUNT; op++) {
        snprintf(latency_labels[op], sizeof latency_labels[op], "route=\"%s\"",
                 op < OP__COUNT ? apiroute_label((apiroute_op)op) : "unmatched");
        latency[op] = metrics_histogram("tally_api_request_duration_seconds",
                                        "time from request headers to the queued response",
                                        latency_labels[op], latency_bounds,
                                        sizeof latency_bounds / sizeof latency_bounds[0]);
    }
}

static bool render_metrics(buf *out)
{
    if (!buf_append_str(out, "# HELP tally_api_requests_total requests answered, by route and "
                             "status\n# TYPE tally_api_requests_total counter\n"))
        return false;
    for (int op = 0; op <= OP__COUNT; op++) {
        for (int status = 0; status < STATUS_MAX; status++) {
            uint64_t n = atomic_load_explicit(&request_counts[op][status], memory_order_relaxed);
            if (n == 0)
                continue;
            if (!buf_appendf(out, "tally_api_requests_total{route=\"%s\",status=\"%d\"} %llu\n",
                             op < OP__COUNT ? apiroute_label((apiroute_op)op) : "unmatched",
                             status, (unsigned long long)n))
                return false;
        }
    }
    return metrics_render(out);
}

/* ---- the request ------------------------------------------------------- */

typedef enum {
    PHASE_READING,  /* headers and body arriving */
    PHASE_QUEUED,   /* suspended, handed to a database worker */
    PHASE_ANSWERED, /* the worker replied and resumed the connection */
} request_phase;

typedef struct {
    int64_t started_at;
    request_phase phase;
    bool too_large;
    buf body;
    apiroute_result routed;
    apiroute_match match;
    api_request req;
} request_state;

static void handle_ops(api_request *req)
{
    switch (req->op) {
    case OP_HEALTHZ:
        api_reply_json(req, 200, json_pack("{s:s}", "status", "ok"));
        return;
    case OP_METRICS: {
        buf out;
        buf_init(&out, 4u << 20);
        if (!render_metrics(&out)) {
            buf_free(&out);
            api_reply_error(req, 500, "internal", "metrics too large");
            return;
        }
        req->response.status = 200;
        req->response.body = out.data ? out.data : strdup("");
        req->response.body_len = out.len;
        req->response.content_type = "text/plain; version=0.0.4";
        return;
    }
    case OP_OPENAPI:
        if (openapi_text == NULL) {
            api_reply_error(req, 404, "not_found", "this server was started without --openapi-file");
            return;
        }
        req->response.status = 200;
        req->response.body = malloc(openapi_len + 1);
        if (req->response.body == NULL) {
            api_reply_error(req, 500, "internal", "out of memory");
            return;
        }
        memcpy(req->response.body, openapi_text, openapi_len + 1);
        req->response.body_len = openapi_len;
        req->response.content_type = "application/json";
        return;
    default:
        return;
    }
}

static void readyz(api_request *req)
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

/* Answers what needs only memory, on libmicrohttpd's thread; true when it
 * replied, false when the request is for the database workers. The admin
 * token is checked here (a digest and a comparison), so an unauthenticated
 * request never takes a worker. */
static bool answer_in_memory(api_request *req)
{
    if (apiroute_auth_of(req->op) == AUTH_ADMIN && !auth_admin(req))
        return true;
    switch (req->op) {
    case OP_HEALTHZ:
    case OP_METRICS:
    case OP_OPENAPI:
        handle_ops(req);
        return true;
    case OP_AUTHORIZE:
        authorize_handle(req);
        return true;
    case OP_KEY_QUOTA:
    case OP_ME_QUOTA:
        return usage_quota_from_cache(req);
    default:
        return false;
    }
}

/* The routes that may wait on PostgreSQL; runs on a database worker. */
static void answer_from_database(api_request *req)
{
    switch (req->op) {
    case OP_READYZ:
        readyz(req);
        return;
    case OP_CREATE_PLAN:
    case OP_LIST_PLANS:
    case OP_GET_PLAN:
    case OP_UPDATE_PLAN:
    case OP_DELETE_PLAN:
        plans_handle(req);
        return;
    case OP_CREATE_KEY:
    case OP_LIST_KEYS:
    case OP_GET_KEY:
    case OP_UPDATE_KEY:
    case OP_DELETE_KEY:
    case OP_ATTACH_PLAN:
    case OP_DETACH_PLAN:
        keys_handle(req);
        return;
    case OP_KEY_USAGE:
    case OP_KEY_QUOTA:
    case OP_ME_USAGE:
    case OP_ME_QUOTA:
        usage_handle(req);
        return;
    case OP_HEALTHZ:
    case OP_METRICS:
    case OP_OPENAPI:
    case OP_AUTHORIZE:
    case OP__COUNT:
        break;
    }
    api_reply_error(req, 404, "not_found", "no such route");
}

/* A database worker's job: the handler, then the connection is resumed and
 * libmicrohttpd calls on_request again, which sends the answer. The state
 * lives until on_completed, which cannot come while the connection is
 * suspended. Handlers read the request's headers and query from the
 * suspended connection: libmicrohttpd leaves it alone meanwhile. */
static void run_on_worker(void *arg)
{
    request_state *state = arg;
    answer_from_database(&state->req);
    state->phase = PHASE_ANSWERED;
    MHD_resume_connection(state->req.conn); /* its lock publishes the answer */
}

/* Suspends the connection and queues its request for a worker. Suspended
 * first: a worker may resume it before this returns. */
static void hand_to_worker(request_state *state)
{
    state->phase = PHASE_QUEUED;
    MHD_suspend_connection(state->req.conn);
    if (workers_submit(run_on_worker, state))
        return;
    /* Stopping (or, in theory, a full queue): answered now, sent once resumed. */
    api_add_header(&state->req, "Retry-After", "1");
    api_reply_error(&state->req, 503, "unavailable", "the server is shutting down or overloaded");
    state->phase = PHASE_ANSWERED;
    MHD_resume_connection(state->req.conn);
}

static enum MHD_Result send_response(request_state *state)
{
    api_request *req = &state->req;
    api_response *r = &req->response;
    if (r->status == 0)
        api_reply_error(req, 500, "internal", "the handler gave no answer");
    struct MHD_Response *response;
    if (r->body != NULL) {
        response = MHD_create_response_from_buffer(r->body_len, r->body, MHD_RESPMEM_MUST_FREE);
        if (response != NULL)
            r->body = NULL; /* libmicrohttpd frees it */
    } else {
        response = MHD_create_response_from_buffer(0, (void *)"", MHD_RESPMEM_PERSISTENT);
    }
    if (response == NULL)
        return MHD_NO;
    if (r->content_type)
        MHD_add_response_header(response, MHD_HTTP_HEADER_CONTENT_TYPE, r->content_type);
    for (int i = 0; i < r->header_count; i++)
        MHD_add_response_header(response, r->headers[i].name, r->headers[i].value);
    unsigned status = r->status;
    enum MHD_Result ret = MHD_queue_response(req->conn, status, response);
    MHD_destroy_response(response);

    int op = state->routed == APIROUTE_FOUND ? (int)req->op : OP__COUNT;
    double seconds = (double)(time_now_usec() - state->started_at) / 1e6;
    if (status < STATUS_MAX)
        atomic_fetch_add_explicit(&request_counts[op][status], 1, memory_order_relaxed);
    metrics_observe(latency[op], seconds);
    if (status >= 500) {
        log_error("request method=%s route=\"%s\" status=%u ms=%.3f", req->method,
                  op < OP__COUNT ? apiroute_label((apiroute_op)op) : "unmatched", status,
                  seconds * 1e3);
    } else if (log_enabled(LOG_DEBUG)) {
        log_debug("request method=%s route=\"%s\" status=%u ms=%.3f key=%s", req->method,
                  op < OP__COUNT ? apiroute_label((apiroute_op)op) : "unmatched", status,
                  seconds * 1e3, req->key_id[0] ? req->key_id : "-");
    }
    return ret;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url,
                                  const char *method, const char *version,
                                  const char *upload_data, size_t *upload_data_size,
                                  void **req_cls)
{
    (void)cls;
    (void)version;
    request_state *state = *req_cls;
    if (state == NULL) {
        state = calloc(1, sizeof *state);
        if (state == NULL)
            return MHD_NO;
        *req_cls = state;
        state->started_at = time_now_usec();
        state->req.received_at = state->started_at;
        buf_init(&state->body, API_MAX_BODY_BYTES);
        state->req.conn = conn;
        state->req.method = method;
        state->routed = apiroute_find(method, url, &state->match);
        state->req.op = state->routed == APIROUTE_FOUND ? state->match.op : OP__COUNT;
        memcpy(state->req.id, state->match.id, sizeof state->req.id);
        const char *length =
            MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
        if (length != NULL && strtoull(length, NULL, 10) > API_MAX_BODY_BYTES) {
            /* Refused before reading it; libmicrohttpd closes the connection. */
            api_reply_error(&state->req, 413, "body_too_large", "request bodies are limited to %u bytes",
                            API_MAX_BODY_BYTES);
            return send_response(state);
        }
        return MHD_YES;
    }
    if (*upload_data_size != 0) {
        if (!state->too_large && !buf_append(&state->body, upload_data, *upload_data_size))
            state->too_large = true;
        *upload_data_size = 0;
        return MHD_YES;
    }
    if (state->phase == PHASE_ANSWERED)
        return send_response(state); /* resumed by the worker that answered it */
    api_request *req = &state->req;
    req->body = state->body.data ? state->body.data : "";
    req->body_len = state->body.len;
    if (state->too_large) {
        api_reply_error(req, 413, "body_too_large", "request bodies are limited to %u bytes",
                        API_MAX_BODY_BYTES);
    } else if (state->routed == APIROUTE_NOT_FOUND) {
        api_reply_error(req, 404, "not_found", "no route for %.*s",
                        (int)apitext_utf8_prefix(url, 200), url);
    } else if (state->routed == APIROUTE_METHOD_NOT_ALLOWED) {
        api_add_header(req, "Allow", "%s", state->match.allow);
        api_reply_error(req, 405, "method_not_allowed", "%.*s is not allowed here; allowed: %s",
                        (int)apitext_utf8_prefix(method, 20), method, state->match.allow);
    } else if (!answer_in_memory(req)) {
        hand_to_worker(state);
        return MHD_YES;
    }
    return send_response(state);
}

/* libmicrohttpd's unescape step for the path and the query: %00 and %2F
 * stay literal, so that a path is routed as it was written (no NUL cutting
 * it short, no escaped '/' adding a segment) and no value holds a NUL. */
static size_t unescape(void *cls, struct MHD_Connection *conn, char *s)
{
    (void)cls;
    (void)conn;
    return apitext_unescape(s);
}

static void on_completed(void *cls, struct MHD_Connection *conn, void **req_cls,
                         enum MHD_RequestTerminationCode code)
{
    (void)cls;
    (void)conn;
    (void)code;
    request_state *state = *req_cls;
    if (state == NULL)
        return;
    buf_free(&state->body);
    free(state->req.response.body);
    free(state);
    *req_cls = NULL;
}

static bool load_openapi(char *err, size_t err_size)
{
    if (openapi_file == NULL || openapi_file[0] == '\0')
        return true;
    FILE *f = fopen(openapi_file, "rb");
    if (f == NULL) {
        snprintf(err, err_size, "--openapi-file %s: %s", openapi_file, strerror(errno));
        return false;
    }
    buf text;
    buf_init(&text, 4u << 20);
    char chunk[8192];
    size_t n;
    bool ok = true;
    while (ok && (n = fread(chunk, 1, sizeof chunk, f)) > 0)
        ok = buf_append(&text, chunk, n);
    fclose(f);
    if (!ok || text.data == NULL) {
        buf_free(&text);
        snprintf(err, err_size, "--openapi-file %s: empty or larger than 4 MiB", openapi_file);
        return false;
    }
    openapi_text = text.data;
    openapi_len = text.len;
    return true;
}

/* --threads, with 0 meaning half the online CPUs (at least one): the HTTP
 * threads only do in-memory work, and on a small machine the gateway, the
 * database workers and PostgreSQL want the other half. */
static long http_threads(void)
{
    if (thread_count > 0)
        return (long)thread_count;
    long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    return cpus >= 2 ? cpus / 2 : 1;
}

int main(int argc, char **argv)
{
    char err[600];
    log_level level;
    int started = cfg_start(
        "tally-api", "tally-api [--flag value ...]",
        "Serves Tally's HTTP API: plans and keys (admin bearer token), usage and remaining "
        "quota\n(by key id, or /v1/me with the key's own x-api-key), and GET /v1/authorize for "
        "gateways\n(nginx auth_request). Also /healthz, /readyz and /metrics. SIGTERM stops it "
        "cleanly.",
        settings, sizeof settings / sizeof settings[0], argc, argv, &log_level_text, &level);
    if (started >= 0)
        return started;
    if (strlen(admin_token) < ADMIN_TOKEN_MIN) {
        fprintf(stderr, "tally-api: TALLY_ADMIN_TOKEN (--admin-token) must be at least %d "
                        "characters\n", ADMIN_TOKEN_MIN);
        return 2;
    }
    struct sockaddr_storage addr;
    socklen_t addr_len;
    if (!ops_parse_listen_addr(http_addr, &addr, &addr_len, err, sizeof err)) {
        fprintf(stderr, "tally-api: TALLY_HTTP_ADDR (--http-addr): %s\n", err);
        return 2;
    }
    if (!load_openapi(err, sizeof err)) {
        fprintf(stderr, "tally-api: %s\n", err);
        return 2;
    }
    log_init("api", level);
    auth_init(admin_token);
    register_metrics();

    /* Signals are taken by sigwait in this thread only: block them before
     * any thread starts, so every thread inherits the mask. */
    sigset_t stop_signals;
    sigemptyset(&stop_signals);
    sigaddset(&stop_signals, SIGTERM);
    sigaddset(&stop_signals, SIGINT);
    pthread_sigmask(SIG_BLOCK, &stop_signals, NULL);
    signal(SIGPIPE, SIG_IGN);

    int status = 1;
    struct MHD_Daemon *daemon = NULL;
    keycache *cache = NULL;
    bool workers_started = false;
    if (!dbpool_init(database_url, (int)db_pool_size, err, sizeof err)) {
        log_error("%s", err);
        goto done;
    }
    cache = keycache_start(database_url, key_refresh_ms, err, sizeof err);
    if (cache == NULL) {
        log_error("%s", err);
        goto done;
    }
    if (!workers_start((int)db_worker_count, CONNECTION_LIMIT, err, sizeof err)) {
        log_error("%s", err);
        goto done;
    }
    workers_started = true;
    /* Suspend/resume: the database routes run on the workers (see the top). */
    unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_EPOLL | MHD_ALLOW_SUSPEND_RESUME;
    if (addr.ss_family == AF_INET6)
        flags |= MHD_USE_IPv6;
    daemon = MHD_start_daemon(
        flags, 0, NULL, NULL, on_request, NULL, MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&addr,
        MHD_OPTION_THREAD_POOL_SIZE, (unsigned)http_threads(),
        /* Header bytes per connection; larger headers get 431. */
        MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)32768,
        MHD_OPTION_CONNECTION_LIMIT, CONNECTION_LIMIT, MHD_OPTION_CONNECTION_TIMEOUT, 60u,
        MHD_OPTION_LISTEN_BACKLOG_SIZE, 1024u, MHD_OPTION_NOTIFY_COMPLETED, on_completed, NULL,
        MHD_OPTION_UNESCAPE_CALLBACK, unescape, NULL, MHD_OPTION_END);
    if (daemon == NULL) {
        log_error("cannot listen on %s (address in use?)", http_addr);
        goto done;
    }
    log_info("listening on %s (%lld threads, %lld database workers, %lld database connections)",
             http_addr, (long long)http_threads(), db_worker_count, db_pool_size);

    int sig = 0;
    while (sigwait(&stop_signals, &sig) != 0) {
    }
    log_info("signal %d: stopping", sig);
    status = 0;
done:
    /* The workers finish their jobs and resume every suspended connection
     * first: libmicrohttpd must not be stopped with one still suspended.
     * A request arriving meanwhile is answered 503 (hand_to_worker). */
    if (workers_started)
        workers_stop();
    if (daemon)
        MHD_stop_daemon(daemon);
    keycache_stop(cache);
    dbpool_destroy();
    free(openapi_text);
    if (status == 0)
        log_info("stopped");
    return status;
}
