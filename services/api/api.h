/* What tally-api's handlers share: the request as routed, the response
 * being built, the database pool, the database workers and the
 * authentication helpers. A request is handled on one thread from start to
 * end: a libmicrohttpd thread when it needs only memory (authorize, a
 * cached quota, health and metrics), else a database worker while its
 * connection is suspended (main.c). */
#ifndef TALLY_API_H
#define TALLY_API_H

#include <jansson.h>
#include <libpq-fe.h>
#include <microhttpd.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "apimodel.h"
#include "apiroute.h"
#include "buf.h"
#include "routes.h"

#define API_MAX_BODY_BYTES (64u * 1024u)
#define API_MAX_HEADERS 16 /* a gateway refusal sets 7; room for CORS and X-Tally-Quota */

typedef struct {
    unsigned status;
    char *body;               /* owned (malloc), or NULL for an empty body */
    size_t body_len;
    const char *content_type; /* static */
    int header_count;
    struct {
        const char *name;     /* static */
        char value[160];
    } headers[API_MAX_HEADERS];
} api_response;

typedef struct api_request {
    struct MHD_Connection *conn;  /* borrowed */
    const char *method;           /* borrowed from libmicrohttpd */
    const apiroute *route;        /* its row of api_routes, or NULL when unmatched */
    bool on_worker;               /* the handler runs on a database worker */
    char id[APIROUTE_ID_MAX + 1]; /* the path's {id}, or "" */
    const char *body;             /* NUL-terminated; "" when there was none */
    size_t body_len;
    int64_t received_at;          /* usec (time_now_usec) when its headers arrived */
    char key_id[APIROUTE_ID_MAX + 1]; /* the key the request acted as or for, for the log */
    bool aws;                     /* on the AWS listener: errors in AWS's shape (aws.h) */
    api_response response;
} api_request;

/* ---- responses (http.c) ---- */

/* Sets a JSON response; steals `body` (a reference jansson counts). */
void api_reply_json(api_request *req, unsigned status, json_t *body);
/* {"error":{"code","message"}}; code is static. */
void api_reply_error(api_request *req, unsigned status, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
void api_reply_empty(api_request *req, unsigned status);
/* Adds a response header; name static, value copied (truncated at 159 bytes). */
void api_add_header(api_request *req, const char *name, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* 503 after a database failure, logged with `what` and the server's message. */
void api_reply_db_error(api_request *req, PGconn *conn, const PGresult *res, const char *what);
/* Parses the body as one JSON object (duplicates refused); NULL after
 * replying 400. New reference. */
json_t *api_parse_body(api_request *req);

/* Whole routes over one table's rows (keys.c, plans.c). Their errors say
 * what failed in the kind's words ("key", "plan"): a missing row is 404 "no
 * <kind> with id ...", and the database errors log "reading a <kind>",
 * "updating a <kind>", "committing a <kind> update" or "deleting a <kind>". */

/* GET of one row by id: runs `sql` ($1 = req->id) on a pooled connection
 * and replies 200 with row_json of its first row, or 404. */
void api_reply_one(api_request *req, const char *sql, const char *kind,
                   json_t *(*row_json)(const PGresult *res, int row));
/* DELETE of one row by id: runs `sql` ($1 = req->id) on a pooled connection
 * and replies 204, or 404 when no row went. A foreign-key violation (rows
 * still refer to it) is `in_use`'s to answer when given, else a database
 * error like any other. */
void api_reply_delete(api_request *req, const char *sql, const char *kind,
                      void (*in_use)(api_request *req));

/* A list route (GET /v1/keys, /v1/plans), declared once in its file. */
typedef struct {
    /* $1: the id the page starts after (NULL for the first page); $2: the
     * rows to fetch (the page's limit + 1, to know whether another follows);
     * any further parameters are the route's own filters. */
    const char *sql;
    int id_column; /* each row's id, for the next page's position */
    json_t *(*row_json)(const PGresult *res, int row);
    const char *what; /* for the database error: "listing keys" */
} api_list;
/* Runs list->sql with `params` on a pooled connection and replies 200 with
 * one page: {"items": [row_json of the first `limit` rows], "position":
 * <cursor after the last shown id>}, the position left out on the last
 * page; or the database error. */
void api_reply_list(api_request *req, const api_list *list, int limit, int count,
                    const char *const *params);

/* A PATCH route (a JSON merge patch of one row), declared once in its file. */
typedef struct {
    const char *kind;       /* "key", for the errors' words */
    const char *select_sql; /* the row by $1 = req->id, locked (FOR UPDATE) */
    /* Merges `body` into the stored `row` (borrowed) and writes it back:
     * true with *written the result of an UPDATE ... RETURNING the row
     * (owned by the caller, checked there), or false after replying. */
    bool (*write)(api_request *req, PGconn *conn, const PGresult *row, const json_t *body,
                  PGresult **written);
    json_t *(*row_json)(const PGresult *res, int row);
} api_update;
/* Reads the body, then in one transaction locks the row, writes the merge
 * and commits; replies 200 with the row as written, or the error. */
void api_reply_update(api_request *req, const api_update *update);
/* The query argument `name` (borrowed), or NULL. */
const char *api_query(api_request *req, const char *name);
/* Refuses (400) any query argument not in the NULL-terminated `allowed`
 * (at most 16 names), given twice, or not valid UTF-8 (name or value). */
bool api_check_query(api_request *req, const char *const *allowed);
/* Refuses the header block as a whole: 431 past 64 fields or 16 KiB, 400
 * for a value with a NUL byte (or folded), Content-Length twice, or
 * Content-Length with Transfer-Encoding. False after replying. */
bool api_check_headers(api_request *req);
/* RFC 3339 text of usec, as a new jansson string. */
json_t *api_time_json(int64_t usec);

/* ---- database pool (dbpool.c) ---- */

/* PQexecParams with text parameters and results (NULL entries are SQL NULL).
 * The caller PQclears the result. */
PGresult *api_exec(PGconn *conn, const char *sql, int count, const char *const *params);
/* True when res is a success (command or rows). */
bool api_ok(const PGresult *res);
/* Field helpers: NULL for SQL NULL; integers parsed as long long. */
const char *api_field(const PGresult *res, int row, int col);
long long api_field_int(const PGresult *res, int row, int col);

bool dbpool_init(const char *url, int size, char *err, size_t err_size);
void dbpool_destroy(void);
/* A connection for this request, or NULL when none can be had (after
 * replying 503): none came free within DBPOOL_WAIT_MS of the request's
 * arrival (time queued for a worker counts), or the database is
 * unreachable. Give it back with dbpool_release. */
PGconn *dbpool_acquire(api_request *req);
void dbpool_release(PGconn *conn);
/* SELECT 1 on a pooled connection; for /readyz. */
bool dbpool_ping(char *err, size_t err_size);

/* ---- database workers (workers.c) ---- */

#define WORKERS_MAX 64
typedef void (*workers_fn)(void *arg);
/* Starts `threads` workers sharing a queue of at most `queue_max` jobs;
 * false with err when that fails. */
bool workers_start(int threads, size_t queue_max, char *err, size_t err_size);
/* Queues fn(arg) to run on a worker; false when the queue is full or the
 * workers are stopping (fn will not run: the caller answers itself). `arg`
 * is borrowed and must live until fn has run. */
bool workers_submit(workers_fn fn, void *arg);
/* Stops taking jobs, runs every job already queued, then joins the threads. */
void workers_stop(void);

/* ---- authentication (auth.c) ---- */

void auth_init(const char *admin_token);
/* True when Authorization is "Bearer <admin token>" (constant time);
 * otherwise replies 401 and returns false. */
bool auth_admin(api_request *req);
/* The stored form of the x-api-key header (keyhash.h: HMAC-SHA-256 under
 * the server secret of its SHA-256) into hash, as the key cache and
 * api_keys.value_hash hold it; false (and 401 replied) when the header is
 * missing, empty or too long. */
bool auth_api_key_hash(api_request *req, uint8_t hash[32]);

/* ---- handlers ---- */

/* Every route's handler is declared by its row in routes.h. */

/* ---- the operations endpoints and request metrics (opsroutes.c) ---- */

/* What the /metrics and /openapi.json handlers serve: `public_metrics`
 * says whether they answer on TALLY_HTTP_ADDR at all (else 404, they are
 * on the internal address); the OpenAPI text (NULL: none) is borrowed for
 * the process's life. Called once before the server starts. */
void opsroutes_init(bool public_metrics, const char *openapi_text, size_t openapi_len);
/* Counts one answered request: its route (NULL: unmatched), status and
 * time from its headers to the queued answer. */
void opsroutes_observe(const apiroute *route, unsigned status, double seconds);
/* The Prometheus text of every metric (requests by route and status, then
 * the shared registry) into out; false when it does not fit. */
bool opsroutes_render_metrics(buf *out);

/* A key's JSON from a row of KEY_COLUMNS (keys.c), for reuse. */
#define KEY_COLUMNS                                                                   \
    "k.id, k.name, k.description, k.customer_id, k.stripe_customer_id, k.enabled, "   \
    "k.plan_id, (extract(epoch from k.created_at) * 1000000)::bigint, "               \
    "(extract(epoch from k.updated_at) * 1000000)::bigint, k.stripe_subscription_item_id, " \
    "k.alert_thresholds::text"
json_t *keys_row_json(const PGresult *res, int row);

/* A plan's JSON from a row of PLAN_COLUMNS (plans.c), for reuse (aws*.c). */
#define PLAN_COLUMNS                                                                        \
    "id, name, description, quota_limit, quota_period, quota_offset, throttle_rate_limit, " \
    "throttle_burst_limit, method_throttles::text, stripe_meter_event_name, "               \
    "(extract(epoch from created_at) * 1000000)::bigint, "                                  \
    "(extract(epoch from updated_at) * 1000000)::bigint, stripe_subscription_item_id, "     \
    "quota_enforcement, quota_ceiling_percent, alert_thresholds::text"
#define PLAN_COLUMN_COUNT 16
json_t *plans_row_json(const PGresult *res, int row);
/* For /v1/me routes on a worker (usage.c): resolves the x-api-key (or a
 * dashboard link) into req->key_id, from the key cache or else the
 * database (a connection taken and given back here). False after replying 401, 403 or 503. */
bool usage_me_resolve(api_request *req);

/* Random ids and secrets from getrandom (random.c). `prefix` + `length`
 * base62 characters into out; false when the system cannot give randomness. */
bool random_base62(const char *prefix, size_t length, char *out, size_t out_size);

/* Asks the authorize cache to reload now and waits (up to ~2 s) until it
 * has, so that an admin change is seen by the next request (keycache.c). */
void keycache_refresh_now(void);

#endif
