/* tally-api: plans, keys, usage and quota over HTTP, and the gateway's
 * authorize endpoint (docs/CONTRACT.md §4). libmicrohttpd serves requests
 * on a pool of epoll threads, which only ever do in-memory work:
 * GET /v1/authorize and the quota routes are answered from an in-memory key
 * cache that a background thread reloads every second, and health, metrics
 * and the OpenAPI document need nothing else. Every route that may wait on
 * PostgreSQL (admin, usage, a quota the cache cannot answer, /readyz) is
 * handed to a few database workers (workers.c) while its connection is
 * suspended, so that a slow query never delays an authorize request queued
 * on the same libmicrohttpd thread. Each route's row in routes.h says where
 * it runs and who may call it. /metrics and /openapi.json are served
 * on an internal address by common/ops.c; hostile clients are bounded by a
 * per-address connection limit, short request timeouts and limits on the
 * request line and headers (on_request_line, refuse_at_headers). */
#include <errno.h>
#include <microhttpd.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "api.h"
#include "apitext.h"
#include "aws.h"
#include "buf.h"
#include "config.h"
#include "cors.h"
#include "dashboard.h"
#include "dashlink.h"
#include "keycache.h"
#include "keyhash.h"
#include "leases.h"
#include "log.h"
#include "ops.h"
#include "timeutil.h"

/* ---- settings ---------------------------------------------------------- */

static const char *database_url;
static const char *http_addr;
static const char *admin_token;
static const char *key_hmac_secret; /* keyhash.h */
static const char *log_level_text;
static const char *openapi_file;
static long long key_refresh_ms;
static long long thread_count;
static long long db_pool_size;
static long long db_worker_count;
static const char *metrics_addr;
static bool public_metrics;
static const char *tls_cert_file;
static const char *tls_key_file;
static long long per_ip_connections;
static long long request_timeout_s;
static long long idle_timeout_s;
static const char *aws_addr;
static const char *aws_credentials;
static const char *aws_region;
static const char *cors_origins; /* cors.h */
static const char *public_url;   /* dashboard.h */
static bool replicas_shared;        /* leases.h */
static long long quota_lease_max;
static long long replica_heartbeat_ms;
static long long replica_ttl_ms;

#define ADMIN_TOKEN_MIN 16
/* libmicrohttpd's connection limit; the workers' queue holds one job per
 * connection at most, so it is as long. */
#define CONNECTION_LIMIT 8192u
/* libmicrohttpd keeps a request's line, headers and their index in one
 * pool per connection; a request that outgrows it gets libmicrohttpd's
 * own HTML 414/431, or (query arguments, ~460 in 32 KiB) no answer at all.
 * The bounds below keep every request the contract's answer well inside
 * it: the URI and its argument count are judged before libmicrohttpd
 * indexes the arguments (on_request_line), the header block once read
 * (api_check_headers: 64 fields, 16 KiB). */
#define CONNECTION_MEMORY (64u * 1024u)
#define URI_BYTES_MAX 4096
#define QUERY_ARGUMENTS_MAX 32
/* PEM files (a certificate chain, a key) are small. */
#define TLS_FILE_MAX (1u << 20)

static const cfg_setting settings[] = {
    {"TALLY_DATABASE_URL", "database-url", CFG_STRING, &database_url, NULL, true, true, 0, 0,
     "libpq connection string of the Tally database"},
    {"TALLY_HTTP_ADDR", "http-addr", CFG_STRING, &http_addr, "127.0.0.1:8080", false, false, 0, 0,
     "listen address, host:port or [v6]:port"},
    {"TALLY_ADMIN_TOKEN", "admin-token", CFG_STRING, &admin_token, NULL, true, true, 0, 0,
     "bearer token for the admin routes (at least 16 characters; never logged)"},
    {"TALLY_KEY_HMAC_SECRET", "key-hmac-secret", CFG_STRING, &key_hmac_secret, NULL, true,
     true, 0, 0,
     "secret that key values are stored under (HMAC-SHA-256; 32 to 1024 bytes; the same "
     "for every api on one database; changing it makes every key unknown; never logged)"},
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
    {"TALLY_METRICS_ADDR", "metrics-addr", CFG_STRING, &metrics_addr, "127.0.0.1:9100", false,
     false, 0, 0,
     "internal address serving GET /metrics, /openapi.json and /healthz (empty: not served)"},
    {"TALLY_PUBLIC_METRICS", "public-metrics", CFG_BOOL, &public_metrics, "false", false, false,
     0, 0, "also serve /metrics and /openapi.json on TALLY_HTTP_ADDR (else 404 there)"},
    {"TALLY_TLS_CERT_FILE", "tls-cert-file", CFG_STRING, &tls_cert_file, "", false, false, 0, 0,
     "PEM certificate (chain) for HTTPS on TALLY_HTTP_ADDR; needs TALLY_TLS_KEY_FILE"},
    {"TALLY_TLS_KEY_FILE", "tls-key-file", CFG_STRING, &tls_key_file, "", false, false, 0, 0,
     "PEM private key of TALLY_TLS_CERT_FILE; both or neither"},
    /* A gateway in front (nginx auth_request) is one address for all its
     * clients: it needs as many connections as requests it has in flight. */
    {"TALLY_HTTP_PER_IP_LIMIT", "per-ip-connections", CFG_INT, &per_ip_connections, "1024",
     false, false, 0, CONNECTION_LIMIT,
     "connections one client address may hold at once (0: no limit)"},
    {"TALLY_HTTP_REQUEST_TIMEOUT_S", "request-timeout", CFG_INT, &request_timeout_s, "10", false,
     false, 1, 300,
     "seconds of silence allowed while a request's headers or body arrive, and before a new "
     "connection's first request"},
    {"TALLY_HTTP_IDLE_TIMEOUT_S", "idle-timeout", CFG_INT, &idle_timeout_s, "60", false, false, 1,
     3600, "seconds a kept-alive connection may wait for its next request"},
    /* The AWS API Gateway usage-plan API (aws.h) on its own address, so
     * that its paths and SigV4 never mix with /v1 and the admin token. */
    {"TALLY_AWS_ADDR", "aws-addr", CFG_STRING, &aws_addr, "", false, false, 0, 0,
     "address of the AWS API Gateway usage-plan API (aws CLI, boto3; SigV4); empty: off"},
    {"TALLY_AWS_CREDENTIALS", "aws-credentials", CFG_STRING, &aws_credentials, "", false, true,
     0, 0,
     "SigV4 credentials the AWS API accepts: ACCESS_KEY_ID:SECRET pairs, one a line or "
     "','-separated (several, to rotate one); also TALLY_AWS_CREDENTIALS_FILE; never logged"},
    {"TALLY_AWS_REGION", "aws-region", CFG_STRING, &aws_region, "us-east-1", false, false, 0, 0,
     "the region AWS API requests must be signed for (the clients' AWS_DEFAULT_REGION)"},
    {"TALLY_CORS_ORIGINS", "cors-origins", CFG_STRING, &cors_origins, "", false, false, 0, 0,
     "comma-separated origins (https://app.example.com) whose pages may call /v1/me/* from a "
     "browser; empty: none. Admin routes never answer cross-origin"},
    {"TALLY_PUBLIC_URL", "public-url", CFG_STRING, &public_url, "", false, false, 0, 0,
     "the api's address as customers reach it (https://tally.example.com), put in front of "
     "dashboard links; empty: links are paths (/dashboard/#link=...)"},
    /* Several replicas on one database (leases.h, README "Several api
     * replicas"): off, each replica enforces alone, as one always did. */
    {"TALLY_API_REPLICAS_SHARED", "replicas-shared", CFG_BOOL, &replicas_shared, "false", false,
     false, 0, 0,
     "replicas share each key's quota (leases from PostgreSQL) and rate (rate / live "
     "replicas): a stated bound across replicas"},
    {"TALLY_API_QUOTA_LEASE_MAX", "quota-lease-max", CFG_INT, &quota_lease_max, "1000", false,
     false, 1, 1000000,
     "largest quota slice a replica holds (a slice is quota/200, at least 10, at most this)"},
    {"TALLY_API_REPLICA_HEARTBEAT_MS", "replica-heartbeat-ms", CFG_INT, &replica_heartbeat_ms,
     "1000", false, false, 100, 60000, "how often a sharing replica writes its heartbeat"},
    {"TALLY_API_REPLICA_TTL_MS", "replica-ttl-ms", CFG_INT, &replica_ttl_ms, "5000", false,
     false, 300, 600000,
     "silence after which a replica is dead to its peers (its leases return); at least 3 "
     "heartbeats"},
};

static char *openapi_text;
static size_t openapi_len;

/* ---- the request ------------------------------------------------------- */

typedef enum {
    PHASE_READING,  /* headers and body arriving */
    PHASE_QUEUED,   /* suspended, handed to a database worker */
    PHASE_ANSWERED, /* the worker replied and resumed the connection */
} request_phase;

typedef enum {
    URI_FINE,
    URI_TOO_LONG,
    URI_TOO_MANY_ARGUMENTS,
    URI_CUT_SHORT, /* a NUL byte inside */
} uri_verdict;

/* A listener's routes: the /v1 table, or the AWS one (every request
 * SigV4-verified, errors in AWS's shape). The daemons' closure. */
typedef struct {
    bool aws;
} listener;
static const listener v1_listener = {false}, aws_listener = {true};

typedef struct {
    int64_t started_at;
    const listener *on;
    char *target;       /* AWS listener: the request target as sent (SigV4 signs it) */
    bool started;       /* on_request has seen its headers */
    uri_verdict uri;    /* judged by on_request_line */
    request_phase phase;
    bool too_large;
    buf body;
    apiroute_result routed;
    apiroute_match match;
    api_request req;
} request_state;

/* Answers what needs only memory, on libmicrohttpd's thread; true when it
 * replied, false when the request is for the database workers. The admin
 * token is checked here (a digest and a comparison), so an unauthenticated
 * request never takes a worker. */
static bool answer_in_memory(api_request *req)
{
    const apiroute *route = req->route;
    if (route->auth == AUTH_ADMIN && !auth_admin(req))
        return true;
    switch (route->runs) {
    case APIROUTE_IN_MEMORY:
        route->handle(req);
        return true;
    case APIROUTE_MEMORY_FIRST:
        route->handle(req);
        return req->response.status != 0; /* unanswered: the worker runs it again */
    case APIROUTE_ON_WORKER:
        break;
    }
    return false;
}

/* A database worker's job: the handler, then the connection is resumed and
 * libmicrohttpd calls on_request again, which sends the answer. The state
 * lives until on_completed, which cannot come while the connection is
 * suspended. Handlers read the request's headers and query from the
 * suspended connection: libmicrohttpd leaves it alone meanwhile. */
static void run_on_worker(void *arg)
{
    request_state *state = arg;
    state->req.on_worker = true;
    state->req.route->handle(&state->req);
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
    cors_decorate(req);
    dashboard_decorate(req);
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

    double seconds = (double)(time_now_usec() - state->started_at) / 1e6;
    if (!state->on->aws) /* the request metrics are by /v1 route (opsroutes.c) */
        opsroutes_observe(req->route, status, seconds);
    if (status >= 500) {
        log_error("request method=%s route=\"%s\" status=%u ms=%.3f", req->method,
                  apiroute_label(req->route), status, seconds * 1e3);
    } else if (log_enabled(LOG_DEBUG)) {
        log_debug("request method=%s route=\"%s\" status=%u ms=%.3f key=%s", req->method,
                  apiroute_label(req->route), status, seconds * 1e3,
                  req->key_id[0] ? req->key_id : "-");
    }
    return ret;
}

/* The refusals due before a request's body is read: a URI or header block
 * past its bounds, smuggling-prone framing, a body announced too large.
 * True after replying. */
static bool refuse_at_headers(request_state *state)
{
    api_request *req = &state->req;
    if (state->uri == URI_TOO_LONG) {
        api_reply_error(req, 414, "uri_too_long", "request URIs are limited to %d bytes",
                        URI_BYTES_MAX);
        return true;
    }
    if (state->uri == URI_TOO_MANY_ARGUMENTS) {
        api_reply_error(req, 400, "too_many_parameters",
                        "requests are limited to %d query parameters", QUERY_ARGUMENTS_MAX);
        return true;
    }
    if (state->uri == URI_CUT_SHORT) {
        api_reply_error(req, 400, "invalid_uri", "the request line holds a NUL byte");
        return true;
    }
    if (!api_check_headers(req))
        return true;
    const char *length =
        MHD_lookup_connection_value(req->conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
    if (length != NULL && strtoull(length, NULL, 10) > API_MAX_BODY_BYTES) {
        api_reply_error(req, 413, "body_too_large", "request bodies are limited to %u bytes",
                        API_MAX_BODY_BYTES);
        return true;
    }
    return false;
}

/* on_request's first call, with the headers: routes the request. A refusal
 * is sent before the body is read; libmicrohttpd then closes the
 * connection. */
static enum MHD_Result start_request(request_state *state, struct MHD_Connection *conn,
                                     const char *url, const char *method)
{
    state->started = true;
    state->started_at = time_now_usec();
    state->req.received_at = state->started_at;
    buf_init(&state->body, API_MAX_BODY_BYTES);
    state->req.conn = conn;
    state->req.method = method;
    state->req.aws = state->on->aws;
    state->routed = state->on->aws
                        ? aws_route_find(method, url, &state->match, state->req.key_id)
                        : apiroute_find(api_routes, API_ROUTE_COUNT, method, url, &state->match);
    state->req.route = state->routed == APIROUTE_FOUND ? state->match.route : NULL;
    memcpy(state->req.id, state->match.id, sizeof state->req.id);
    if (refuse_at_headers(state))
        return send_response(state);
    return MHD_YES;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url,
                                  const char *method, const char *version,
                                  const char *upload_data, size_t *upload_data_size,
                                  void **req_cls)
{
    (void)version;
    request_state *state = *req_cls; /* usually made by on_request_line */
    if (state == NULL) {
        state = calloc(1, sizeof *state);
        if (state == NULL)
            return MHD_NO;
        state->on = cls;
        *req_cls = state;
    }
    if (!state->started)
        return start_request(state, conn, url, method);
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
    } else if (state->on->aws && !aws_authenticate(req, state->target ? state->target : "")) {
        /* Refused: nothing unsigned or badly signed is answered, not even
         * whether a path exists (AWS answers unknown paths so too). */
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

/* libmicrohttpd has one timeout for a connection's silence, whatever it is
 * waiting for. A kept-alive connection waiting for its next request gets
 * the idle timeout (set in on_completed); from its request line until the
 * answer it gets the short request timeout, the daemon's default, which a
 * new connection starts with too. So a client that trickles or stops
 * mid-request loses its connection within seconds, and one between
 * requests keeps it for a minute. */
/* libmicrohttpd 0.9.75 splits the request line in place: the URI it
 * gives is followed, past the NUL that replaced the space, by the protocol
 * version. A NUL byte inside the URI would cut it short there, and the
 * bytes after it would be lost (like in header values: api_check_headers).
 * The check is tied to this layout, so to this libmicrohttpd version. */
static bool uri_cut_short(const char *uri, size_t len)
{
#if MHD_VERSION >= 0x00097500 && MHD_VERSION < 0x00097600
    /* No URI at all is given as "" (a literal, nothing after it): routed
     * as an unknown path. */
    return len > 0 && strncmp(uri + len + 1, "HTTP/", 5) != 0;
#else
    (void)uri;
    (void)len;
    return false;
#endif
}

static void *on_request_line(void *cls, const char *uri, struct MHD_Connection *conn)
{
    MHD_set_connection_option(conn, MHD_CONNECTION_OPTION_TIMEOUT, (unsigned)request_timeout_s);
    if (uri == NULL)
        uri = "";
    uri_verdict verdict = URI_FINE;
    char *query = strchr(uri, '?'); /* in libmicrohttpd's (writable) read buffer */
    size_t len = strlen(uri);
    if (len > URI_BYTES_MAX) {
        verdict = URI_TOO_LONG;
    } else if (uri_cut_short(uri, len)) {
        verdict = URI_CUT_SHORT;
    } else if (query != NULL) {
        size_t arguments = 1;
        for (const char *c = query + 1; *c != '\0' && arguments <= QUERY_ARGUMENTS_MAX; c++)
            arguments += *c == '&';
        if (arguments > QUERY_ARGUMENTS_MAX)
            verdict = URI_TOO_MANY_ARGUMENTS;
    }
    /* libmicrohttpd indexes the query's arguments after this returns, in
     * the connection's pool: a refused query is emptied first, so that its
     * arguments cannot exhaust the pool before the refusal is sent. */
    if (verdict != URI_FINE && query != NULL)
        query[1] = '\0';
    request_state *state = calloc(1, sizeof *state);
    if (state == NULL)
        return NULL; /* on_request tries again, and says no if it fails */
    state->uri = verdict;
    state->on = cls;
    /* Before libmicrohttpd decodes it in place: SigV4 signs it as sent. */
    if (state->on->aws && verdict == URI_FINE)
        state->target = strdup(uri);
    return state; /* on_request's *req_cls, freed by on_completed */
}

static void on_completed(void *cls, struct MHD_Connection *conn, void **req_cls,
                         enum MHD_RequestTerminationCode code)
{
    (void)cls;
    if (code == MHD_REQUEST_TERMINATED_COMPLETED_OK) /* answered: waiting for the next one */
        MHD_set_connection_option(conn, MHD_CONNECTION_OPTION_TIMEOUT, (unsigned)idle_timeout_s);
    request_state *state = *req_cls;
    if (state == NULL)
        return;
    buf_free(&state->body);
    free(state->target);
    free(state->req.response.body);
    free(state);
    *req_cls = NULL;
}

/* Reads the file at `path` into a new NUL-terminated buffer (*out, the
 * caller frees it) of at most `max` bytes; false with err (naming
 * `setting`) when it cannot be read, is empty or is larger. */
static bool read_small_file(const char *setting, const char *path, size_t max, char **out,
                            size_t *out_len, char *err, size_t err_size)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL) {
        snprintf(err, err_size, "%s %s: %s", setting, path, strerror(errno));
        return false;
    }
    buf text;
    buf_init(&text, max);
    char chunk[8192];
    size_t n;
    bool ok = true;
    while (ok && (n = fread(chunk, 1, sizeof chunk, f)) > 0)
        ok = buf_append(&text, chunk, n);
    bool read_error = ferror(f) != 0;
    fclose(f);
    if (!ok || read_error || text.data == NULL) {
        buf_free(&text);
        snprintf(err, err_size, "%s %s: %s", setting, path,
                 read_error ? "cannot be read" : ok ? "is empty" : "is too large");
        return false;
    }
    *out = text.data;
    *out_len = text.len;
    return true;
}

static bool load_openapi(char *err, size_t err_size)
{
    if (openapi_file == NULL || openapi_file[0] == '\0')
        return true;
    return read_small_file("--openapi-file", openapi_file, 4u << 20, &openapi_text, &openapi_len,
                           err, err_size);
}

/* ---- HTTPS --------------------------------------------------------------- */

static char *tls_cert_pem;
static char *tls_key_pem;

static enum MHD_Result refuse_everything(void *cls, struct MHD_Connection *conn, const char *url,
                                         const char *method, const char *version,
                                         const char *upload_data, size_t *upload_data_size,
                                         void **req_cls)
{
    (void)cls;
    (void)conn;
    (void)url;
    (void)method;
    (void)version;
    (void)upload_data;
    (void)upload_data_size;
    (void)req_cls;
    return MHD_NO;
}

/* GnuTLS parses the certificate and key (and checks that they match) when
 * a TLS daemon starts: a daemon without a socket tries them, so that a bad
 * file is named at start rather than reported as a failure to listen. */
static bool tls_pair_usable(void)
{
    struct MHD_Daemon *trial = MHD_start_daemon(
        MHD_USE_TLS | MHD_USE_NO_LISTEN_SOCKET, 0, NULL, NULL, refuse_everything, NULL,
        MHD_OPTION_HTTPS_MEM_KEY, tls_key_pem, MHD_OPTION_HTTPS_MEM_CERT, tls_cert_pem,
        MHD_OPTION_END);
    if (trial == NULL)
        return false;
    MHD_stop_daemon(trial);
    return true;
}

/* Loads TALLY_TLS_CERT_FILE and TALLY_TLS_KEY_FILE: both or neither. True
 * with nothing loaded when neither is set. */
static bool load_tls(char *err, size_t err_size)
{
    bool have_cert = tls_cert_file[0] != '\0', have_key = tls_key_file[0] != '\0';
    if (!have_cert && !have_key)
        return true;
    if (!have_cert || !have_key) {
        static const char cert[] = "TALLY_TLS_CERT_FILE (--tls-cert-file)";
        static const char key[] = "TALLY_TLS_KEY_FILE (--tls-key-file)";
        snprintf(err, err_size, "%s is set but %s is not: HTTPS needs both",
                 have_cert ? cert : key, have_cert ? key : cert);
        return false;
    }
    if (MHD_is_feature_supported(MHD_FEATURE_TLS) != MHD_YES) {
        snprintf(err, err_size, "TALLY_TLS_CERT_FILE: this libmicrohttpd was built without TLS");
        return false;
    }
    size_t len;
    if (!read_small_file("TALLY_TLS_CERT_FILE", tls_cert_file, TLS_FILE_MAX, &tls_cert_pem, &len,
                         err, err_size) ||
        !read_small_file("TALLY_TLS_KEY_FILE", tls_key_file, TLS_FILE_MAX, &tls_key_pem, &len, err,
                         err_size))
        return false;
    if (strstr(tls_cert_pem, "-----BEGIN CERTIFICATE-----") == NULL) {
        snprintf(err, err_size, "TALLY_TLS_CERT_FILE %s: no PEM certificate in it", tls_cert_file);
        return false;
    }
    if (strstr(tls_key_pem, "PRIVATE KEY-----") == NULL) {
        snprintf(err, err_size, "TALLY_TLS_KEY_FILE %s: no PEM private key in it", tls_key_file);
        return false;
    }
    if (!tls_pair_usable()) {
        snprintf(err, err_size, "TALLY_TLS_CERT_FILE %s and TALLY_TLS_KEY_FILE %s: not a valid "
                 "certificate and its private key", tls_cert_file, tls_key_file);
        return false;
    }
    return true;
}

static void free_tls(void)
{
    if (tls_key_pem != NULL) {
        /* The key's bytes, wiped before they go back to the allocator. */
        volatile char *key = tls_key_pem;
        for (size_t i = 0; key[i] != '\0'; i++)
            key[i] = '\0';
    }
    free(tls_key_pem);
    free(tls_cert_pem);
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

/* The public HTTP(S) daemon. Suspend/resume: the database routes run on
 * the workers (see the top). */
static struct MHD_Daemon *start_http(const struct sockaddr_storage *addr, const listener *on)
{
    unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_EPOLL | MHD_ALLOW_SUSPEND_RESUME;
    if (addr->ss_family == AF_INET6)
        flags |= MHD_USE_IPv6;
    struct MHD_OptionItem tls_options[] = {
        {MHD_OPTION_HTTPS_MEM_KEY, 0, tls_key_pem},
        {MHD_OPTION_HTTPS_MEM_CERT, 0, tls_cert_pem},
        {MHD_OPTION_END, 0, NULL},
    };
    if (tls_cert_pem != NULL)
        flags |= MHD_USE_TLS;
    else
        tls_options[0].option = MHD_OPTION_END; /* no TLS options without MHD_USE_TLS */
    return MHD_start_daemon(
        flags, 0, NULL, NULL, on_request, (void *)on,
        MHD_OPTION_SOCK_ADDR, (const struct sockaddr *)addr,
        MHD_OPTION_THREAD_POOL_SIZE, (unsigned)http_threads(),
        MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)CONNECTION_MEMORY,
        MHD_OPTION_CONNECTION_LIMIT, CONNECTION_LIMIT,
        /* One client address cannot take every connection (0: no limit). */
        MHD_OPTION_PER_IP_CONNECTION_LIMIT, (unsigned)per_ip_connections,
        /* The request timeout; kept-alive connections get the idle one. */
        MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)request_timeout_s,
        MHD_OPTION_LISTEN_BACKLOG_SIZE, 1024u, MHD_OPTION_NOTIFY_COMPLETED, on_completed, NULL,
        MHD_OPTION_URI_LOG_CALLBACK, on_request_line, (void *)on,
        MHD_OPTION_UNESCAPE_CALLBACK, unescape, NULL, MHD_OPTION_ARRAY, tls_options,
        MHD_OPTION_END);
}

/* `tally-api --list-routes`: the route table, one route a line: method,
 * path, auth kind and where it runs, tab-separated (HEAD is served with
 * each GET). The api suite checks docs/openapi.json against it. */
static int list_routes(void)
{
    for (size_t i = 0; i < API_ROUTE_COUNT; i++) {
        const apiroute *route = &api_routes[i];
        printf("%s\t%s\t%s\t%s\n", route->method, route->path, apiroute_auth_name(route->auth),
               apiroute_runs_name(route->runs));
    }
    return fflush(stdout) == 0 ? 0 : 1;
}

int main(int argc, char **argv)
{
    char err[600];
    log_level level;
    if (argc == 2 && strcmp(argv[1], "--list-routes") == 0)
        return list_routes();
    int started = cfg_start(
        "tally-api", "tally-api [--flag value ...]",
        "Serves Tally's HTTP API: plans and keys (admin bearer token), usage and remaining "
        "quota\n(by key id, or /v1/me with the key's own x-api-key), and GET /v1/authorize for "
        "gateways\n(nginx auth_request), over HTTP or HTTPS. Also /healthz and /readyz; /metrics and "
        "/openapi.json\nare served on the internal TALLY_METRICS_ADDR. SIGTERM stops it "
        "cleanly.\n"
        "tally-api --list-routes prints its routes (method, path, auth, where it runs).",
        settings, sizeof settings / sizeof settings[0], argc, argv, &log_level_text, &level);
    if (started >= 0)
        return started;
    if (strlen(admin_token) < ADMIN_TOKEN_MIN) {
        fprintf(stderr, "tally-api: TALLY_ADMIN_TOKEN (--admin-token) must be at least %d "
                        "characters\n", ADMIN_TOKEN_MIN);
        return 2;
    }
    if (replica_ttl_ms < 3 * replica_heartbeat_ms) {
        fprintf(stderr, "tally-api: TALLY_API_REPLICA_TTL_MS must be at least 3 x "
                        "TALLY_API_REPLICA_HEARTBEAT_MS\n");
        return 2;
    }
    if (!keyhash_init(key_hmac_secret, err, sizeof err) ||
        !cors_init(cors_origins, err, sizeof err)) {
        fprintf(stderr, "tally-api: %s\n", err);
        return 2;
    }
    if (strlen(public_url) > 200 || (public_url[0] != '\0' &&
                                     strncmp(public_url, "https://", 8) != 0 &&
                                     strncmp(public_url, "http://", 7) != 0)) {
        fprintf(stderr, "tally-api: TALLY_PUBLIC_URL (--public-url) must be an http(s) URL of "
                        "at most 200 bytes\n");
        return 2;
    }
    dashlink_init(key_hmac_secret, strlen(key_hmac_secret));
    dashboard_init(public_url);
    struct sockaddr_storage addr;
    socklen_t addr_len;
    if (!ops_parse_listen_addr(http_addr, &addr, &addr_len, err, sizeof err)) {
        fprintf(stderr, "tally-api: TALLY_HTTP_ADDR (--http-addr): %s\n", err);
        return 2;
    }
    struct sockaddr_storage ops_addr;
    socklen_t ops_addr_len;
    if (metrics_addr[0] != '\0' &&
        !ops_parse_listen_addr(metrics_addr, &ops_addr, &ops_addr_len, err, sizeof err)) {
        fprintf(stderr, "tally-api: TALLY_METRICS_ADDR (--metrics-addr): %s\n", err);
        return 2;
    }
    struct sockaddr_storage aws_sockaddr;
    socklen_t aws_sockaddr_len;
    if (aws_addr[0] != '\0' &&
        (!ops_parse_listen_addr(aws_addr, &aws_sockaddr, &aws_sockaddr_len, err, sizeof err) ||
         !aws_init(aws_credentials, aws_region, err, sizeof err))) {
        fprintf(stderr, "tally-api: TALLY_AWS_ADDR (--aws-addr): %s\n", err);
        return 2;
    }
    if (!load_openapi(err, sizeof err) || !load_tls(err, sizeof err)) {
        fprintf(stderr, "tally-api: %s\n", err);
        free(openapi_text);
        free_tls();
        return 2;
    }
    log_init("api", level);
    auth_init(admin_token);
    opsroutes_init(public_metrics, openapi_text, openapi_len);

    /* Signals are taken by sigwait in this thread only: block them before
     * any thread starts, so every thread inherits the mask. */
    sigset_t stop_signals;
    sigemptyset(&stop_signals);
    sigaddset(&stop_signals, SIGTERM);
    sigaddset(&stop_signals, SIGINT);
    pthread_sigmask(SIG_BLOCK, &stop_signals, NULL);
    signal(SIGPIPE, SIG_IGN);

    int status = 1;
    struct MHD_Daemon *daemon = NULL, *aws_daemon = NULL;
    keycache *cache = NULL;
    ops_server *ops = NULL;
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
    if (replicas_shared) {
        leases_settings shared = {.lease_max = quota_lease_max,
                                  .heartbeat_ms = replica_heartbeat_ms,
                                  .ttl_ms = replica_ttl_ms};
        if (!leases_start(database_url, &shared, err, sizeof err)) {
            log_error("TALLY_API_REPLICAS_SHARED: %s", err);
            goto done;
        }
    }
    if (!workers_start((int)db_worker_count, CONNECTION_LIMIT, err, sizeof err)) {
        log_error("%s", err);
        goto done;
    }
    workers_started = true;
    if (metrics_addr[0] != '\0') {
        ops_routes routes = {.metrics = opsroutes_render_metrics,
                             .document_path = openapi_text ? "/openapi.json" : NULL,
                             .document = openapi_text,
                             .document_len = openapi_len};
        ops = ops_start_routes(metrics_addr, &routes, err, sizeof err);
        if (ops == NULL) {
            log_error("TALLY_METRICS_ADDR (--metrics-addr): %s", err);
            goto done;
        }
    }
    daemon = start_http(&addr, &v1_listener);
    if (daemon == NULL) {
        log_error("cannot listen on %s (address in use?)", http_addr);
        goto done;
    }
    if (aws_addr[0] != '\0') {
        aws_daemon = start_http(&aws_sockaddr, &aws_listener);
        if (aws_daemon == NULL) {
            log_error("TALLY_AWS_ADDR: cannot listen on %s (address in use?)", aws_addr);
            goto done;
        }
        log_info("AWS usage-plan API on %s (SigV4, region %s)", aws_addr, aws_region);
    }
    log_info("listening on %s (%s; %lld threads, %lld database workers, %lld database "
             "connections; metrics on %s)",
             http_addr, tls_cert_pem ? "https" : "http", (long long)http_threads(),
             db_worker_count, db_pool_size, metrics_addr[0] ? metrics_addr : "no address");

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
    if (aws_daemon)
        MHD_stop_daemon(aws_daemon);
    aws_free();
    ops_stop(ops);
    leases_stop();
    keycache_stop(cache);
    dbpool_destroy();
    free(openapi_text);
    free_tls();
    if (status == 0)
        log_info("stopped");
    return status;
}
