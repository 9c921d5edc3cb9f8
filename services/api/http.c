/* Building responses and reading requests for the handlers, and the
 * routes that read, list, change or delete one table's rows (api.h). */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "api.h"
#include "apitext.h"
#include "aws.h"
#include "db.h"
#include "log.h"
#include "timeutil.h"
#include "utf8.h"

static void set_body(api_request *req, unsigned status, char *body, size_t len, const char *type)
{
    free(req->response.body);
    req->response.status = status;
    req->response.body = body;
    req->response.body_len = len;
    req->response.content_type = type;
}

void api_reply_json(api_request *req, unsigned status, json_t *body)
{
    char *text = body ? json_dumps(body, JSON_COMPACT) : NULL;
    json_decref(body);
    if (text == NULL) {
        /* json_pack gives NULL for a value jansson refuses as well as when
         * memory runs out; say which step failed, and log it. */
        log_error("%s: %s", apiroute_label(req->route),
                  body ? "cannot serialize the response" : "cannot build the response");
        static const char failed[] = "{\"error\":{\"code\":\"internal\",\"message\":"
                                     "\"the server could not build the response\"}}";
        char *copy = strdup(failed);
        set_body(req, 500, copy, copy ? strlen(copy) : 0, "application/json");
        return;
    }
    set_body(req, status, text, strlen(text), "application/json");
}

void api_reply_error(api_request *req, unsigned status, const char *code, const char *fmt, ...)
{
    char message[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(message, sizeof message, fmt, ap);
    va_end(ap);
    /* The message may quote the client's bytes (a path, a name), cut short
     * by a precision or by the buffer: jansson takes only valid UTF-8. */
    apitext_utf8_sanitize(message);
    if (req->aws) { /* the AWS listener's wire format (aws.h) */
        aws_reply_error(req, status, aws_error_type(status), "%s", message);
        return;
    }
    json_t *body = json_pack("{s:{s:s,s:s}}", "error", "code", code, "message", message);
    api_reply_json(req, status, body);
}

void api_reply_empty(api_request *req, unsigned status)
{
    set_body(req, status, NULL, 0, NULL);
}

void api_add_header(api_request *req, const char *name, const char *fmt, ...)
{
    api_response *r = &req->response;
    if (r->header_count >= API_MAX_HEADERS)
        return;
    r->headers[r->header_count].name = name;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(r->headers[r->header_count].value, sizeof r->headers[0].value, fmt, ap);
    va_end(ap);
    r->header_count++;
}

void api_reply_db_error(api_request *req, PGconn *conn, const PGresult *res, const char *what)
{
    char err[512];
    db_error(conn, res, what, err, sizeof err);
    log_error("%s: %s", apiroute_label(req->route), err);
    if (db_connection_lost(conn))
        api_reply_error(req, 503, "database_unavailable",
                        "the database could not answer; try again shortly");
    else if (strcmp(db_sqlstate(res), "57014") == 0) /* query_canceled: statement_timeout */
        api_reply_error(req, 503, "database_busy",
                        "the database did not answer in time; try again shortly");
    else
        api_reply_error(req, 500, "internal", "the request failed on the server's side");
}

json_t *api_parse_body(api_request *req)
{
    json_error_t jerr;
    if (req->body_len == 0) {
        api_reply_error(req, 400, "invalid_body", "a JSON object body is required");
        return NULL;
    }
    json_t *body = json_loadb(req->body, req->body_len, JSON_REJECT_DUPLICATES, &jerr);
    if (body == NULL) {
        /* jerr.text may quote the body's bytes: only the place is told. */
        api_reply_error(req, 400, "invalid_json",
                        "the body is not valid JSON (line %d, column %d)", jerr.line,
                        jerr.column);
        return NULL;
    }
    if (!json_is_object(body)) {
        json_decref(body);
        api_reply_error(req, 400, "invalid_body", "the body must be a JSON object");
        return NULL;
    }
    return body;
}

const char *api_query(api_request *req, const char *name)
{
    return MHD_lookup_connection_value(req->conn, MHD_GET_ARGUMENT_KIND, name);
}

#define QUERY_ALLOWED_MAX 16

typedef struct {
    const char *const *allowed;
    int seen[QUERY_ALLOWED_MAX];
    const char *code; /* NULL while every argument is fine */
    char message[160];
} query_check;

static enum MHD_Result check_one(void *cls, enum MHD_ValueKind kind, const char *key,
                                 const char *value)
{
    (void)kind;
    query_check *check = cls;
    size_t key_len = strlen(key);
    if (!utf8_valid(key, key_len)) {
        check->code = "invalid_parameter";
        snprintf(check->message, sizeof check->message,
                 "a query parameter name is not valid UTF-8");
        return MHD_NO;
    }
    int index = -1;
    for (int i = 0; check->allowed[i] != NULL && i < QUERY_ALLOWED_MAX; i++) {
        if (strcmp(check->allowed[i], key) == 0) {
            index = i;
            break;
        }
    }
    size_t shown = apitext_utf8_prefix(key, 60);
    if (index < 0) {
        check->code = "unknown_parameter";
        snprintf(check->message, sizeof check->message, "unknown query parameter \"%.*s\"",
                 (int)shown, key);
        return MHD_NO;
    }
    if (++check->seen[index] > 1) {
        check->code = "invalid_parameter";
        snprintf(check->message, sizeof check->message,
                 "query parameter \"%s\" is given more than once", check->allowed[index]);
        return MHD_NO;
    }
    if (value != NULL && !utf8_valid(value, strlen(value))) {
        check->code = "invalid_parameter";
        snprintf(check->message, sizeof check->message,
                 "query parameter \"%s\" is not valid UTF-8", check->allowed[index]);
        return MHD_NO;
    }
    return MHD_YES;
}

bool api_check_query(api_request *req, const char *const *allowed)
{
    query_check check;
    memset(&check, 0, sizeof check);
    check.allowed = allowed;
    MHD_get_connection_values(req->conn, MHD_GET_ARGUMENT_KIND, check_one, &check);
    if (check.code == NULL)
        return true;
    api_reply_error(req, 400, check.code, "%s", check.message);
    return false;
}

json_t *api_time_json(int64_t usec)
{
    char text[TIME_RFC3339_LEN];
    return json_string(time_format_rfc3339(usec, text, sizeof text));
}

/* One page of a list's rows, fetched limit + 1 (api_reply_list). */
static void reply_page(api_request *req, const PGresult *res, int limit, int id_column,
                       json_t *(*row_json)(const PGresult *res, int row))
{
    int rows = PQntuples(res);
    int shown = rows > limit ? limit : rows;
    json_t *items = json_array();
    for (int i = 0; i < shown; i++)
        json_array_append_new(items, row_json(res, i));
    json_t *page = json_pack("{s:o}", "items", items);
    if (rows > limit) {
        char cursor[APIMODEL_CURSOR_MAX + 1];
        apimodel_cursor_encode(api_field(res, shown - 1, id_column), cursor, sizeof cursor);
        json_object_set_new(page, "position", json_string(cursor));
    }
    api_reply_json(req, 200, page);
}

void api_reply_list(api_request *req, const api_list *list, int limit, int count,
                    const char *const *params)
{
    PGconn *conn = dbpool_acquire(req);
    if (conn == NULL)
        return;
    PGresult *res = api_exec(conn, list->sql, count, params);
    if (!api_ok(res))
        api_reply_db_error(req, conn, res, list->what);
    else
        reply_page(req, res, limit, list->id_column, list->row_json);
    PQclear(res);
    dbpool_release(conn);
}

/* A database error's `what` in a kind's words (api.h): "<doing> a <kind><after>". */
#define WHAT_MAX 64
static const char *what_of(char what[WHAT_MAX], const char *doing, const char *kind,
                           const char *after)
{
    snprintf(what, WHAT_MAX, "%s a %s%s", doing, kind, after);
    return what;
}

static void reply_not_found(api_request *req, const char *kind)
{
    api_reply_error(req, 404, "not_found", "no %s with id \"%s\"", kind, req->id);
}

/* Runs `sql` with $1 = req->id and returns its first row's result (owned by
 * the caller), or NULL after replying: the database error ("reading a
 * <kind>"), or 404 when there is no row. */
static PGresult *fetch_one(api_request *req, PGconn *conn, const char *sql, const char *kind)
{
    const char *params[] = {req->id};
    PGresult *res = api_exec(conn, sql, 1, params);
    char what[WHAT_MAX];
    if (!api_ok(res))
        api_reply_db_error(req, conn, res, what_of(what, "reading", kind, ""));
    else if (PQntuples(res) == 0)
        reply_not_found(req, kind);
    else
        return res;
    PQclear(res);
    return NULL;
}

void api_reply_one(api_request *req, const char *sql, const char *kind,
                   json_t *(*row_json)(const PGresult *res, int row))
{
    PGconn *conn = dbpool_acquire(req);
    if (conn == NULL)
        return;
    PGresult *res = fetch_one(req, conn, sql, kind);
    if (res != NULL)
        api_reply_json(req, 200, row_json(res, 0));
    PQclear(res);
    dbpool_release(conn);
}

void api_reply_delete(api_request *req, const char *sql, const char *kind,
                      void (*in_use)(api_request *req))
{
    PGconn *conn = dbpool_acquire(req);
    if (conn == NULL)
        return;
    const char *params[] = {req->id};
    PGresult *res = api_exec(conn, sql, 1, params);
    char what[WHAT_MAX];
    if (api_ok(res) && strcmp(PQcmdTuples(res), "0") == 0)
        reply_not_found(req, kind);
    else if (api_ok(res))
        api_reply_empty(req, 204);
    else if (in_use != NULL && strcmp(db_sqlstate(res), "23503") == 0) /* foreign_key_violation */
        in_use(req);
    else
        api_reply_db_error(req, conn, res, what_of(what, "deleting", kind, ""));
    PQclear(res);
    dbpool_release(conn);
}

/* BEGIN on conn; false after replying the database error. */
static bool begin(api_request *req, PGconn *conn)
{
    PGresult *res = PQexec(conn, "BEGIN");
    bool ok = api_ok(res);
    if (!ok)
        api_reply_db_error(req, conn, res, "starting a transaction");
    PQclear(res);
    return ok;
}

/* COMMIT on conn, then 200 with row_json(res, 0) (res borrowed), or the
 * database error (`what`) when the commit fails. */
static void commit_reply(api_request *req, PGconn *conn, const PGresult *res, const char *what,
                         json_t *(*row_json)(const PGresult *res, int row))
{
    PGresult *commit = PQexec(conn, "COMMIT");
    if (!api_ok(commit))
        api_reply_db_error(req, conn, commit, what);
    else
        api_reply_json(req, 200, row_json(res, 0));
    PQclear(commit);
}

/* The transaction of api_reply_update on conn; what is not committed is
 * rolled back when the connection goes back to the pool. */
static void update_in_transaction(api_request *req, PGconn *conn, const api_update *update,
                                  const json_t *body)
{
    if (!begin(req, conn))
        return;
    PGresult *row = fetch_one(req, conn, update->select_sql, update->kind);
    if (row == NULL)
        return;
    PGresult *written = NULL;
    bool merged = update->write(req, conn, row, body, &written);
    PQclear(row);
    if (!merged)
        return;
    char what[WHAT_MAX];
    if (!api_ok(written) || PQntuples(written) != 1)
        api_reply_db_error(req, conn, written, what_of(what, "updating", update->kind, ""));
    else
        commit_reply(req, conn, written, what_of(what, "committing", update->kind, " update"),
                     update->row_json);
    PQclear(written);
}

void api_reply_update(api_request *req, const api_update *update)
{
    json_t *body = api_parse_body(req);
    if (body == NULL)
        return;
    PGconn *conn = dbpool_acquire(req);
    if (conn != NULL) {
        update_in_transaction(req, conn, update, body);
        dbpool_release(conn); /* rolls back what was not committed */
    }
    json_decref(body);
}

/* ---- the request's headers as a whole ---------------------------------- */

/* Bounds on the header block, under libmicrohttpd's per-connection memory
 * (main.c): past them the client gets the contract's 431 from here, not
 * libmicrohttpd's own HTML answer when its memory runs out. */
#define HEADERS_COUNT_MAX 64
#define HEADERS_BYTES_MAX (16u * 1024u)

typedef struct {
    size_t count;
    size_t bytes;
    int content_lengths;
    int transfer_encodings;
    bool only_chunked; /* every Transfer-Encoding is exactly "chunked" */
    bool hidden_bytes;
    bool bare_line_feeds;       /* an earlier header line ended with "\n" alone */
    const char *previous_value; /* the last header's value, for hidden_bytes */
    size_t previous_len;
    unsigned status; /* 0 while every header is fine */
    const char *code;
    const char *message;
} header_check;

/* libmicrohttpd 0.9.75 parses the header block in place in its read
 * buffer and stores each value cut at its first NUL, so "Bearer <token>\0x"
 * would reach auth.c as "Bearer <token>". What follows a value in that
 * buffer shows whether bytes were cut: the line's end ("\r\n" or "\n",
 * each byte overwritten by a NUL), then the next line, whose start is the
 * next header's name. The last header is followed by the blank line (one
 * or two more NULs); there the line ends seen so far tell which: with bare
 * line feeds only the first NUL is the blank line's for sure. A folded
 * (obs-fold) value is moved elsewhere by libmicrohttpd and so refused too,
 * as RFC 9112 5.2 allows. Other libmicrohttpd versions parse differently:
 * the check is tied to this one. */
static bool value_has_hidden_bytes(header_check *check, const char *next_line)
{
#if MHD_VERSION >= 0x00097500 && MHD_VERSION < 0x00097600
    const char *end = check->previous_value + check->previous_len; /* the line end, or a NUL */
    if (next_line == end + 1) {
        check->bare_line_feeds = true;
        return false;
    }
    if (next_line != NULL)
        return !(next_line == end + 2 && end[1] == '\0');
    return !(end[1] == '\0' && (check->bare_line_feeds || end[2] == '\0'));
#else
    (void)check;
    (void)next_line;
    return false;
#endif
}

static enum MHD_Result check_header(void *cls, enum MHD_ValueKind kind, const char *key,
                                    size_t key_size, const char *value, size_t value_size)
{
    (void)kind;
    header_check *check = cls;
    if (check->previous_value != NULL && value_has_hidden_bytes(check, key))
        check->hidden_bytes = true;
    check->previous_value = value;
    check->previous_len = value_size;
    check->count++;
    check->bytes += key_size + value_size + 4; /* ": " and CRLF */
    if (strcasecmp(key, MHD_HTTP_HEADER_CONTENT_LENGTH) == 0)
        check->content_lengths++;
    else if (strcasecmp(key, MHD_HTTP_HEADER_TRANSFER_ENCODING) == 0)
        check->only_chunked =
            ++check->transfer_encodings == 1 && strcasecmp(value, "chunked") == 0;
    return MHD_YES;
}

static void judge_headers(header_check *check)
{
    if (check->count > HEADERS_COUNT_MAX || check->bytes > HEADERS_BYTES_MAX) {
        check->status = 431;
        check->code = "headers_too_large";
        check->message = "request headers are limited to 64 fields and 16384 bytes";
    } else if (check->hidden_bytes) {
        check->status = 400;
        check->code = "invalid_header";
        check->message = "a header value holds a NUL byte or is folded over lines";
    } else if (check->content_lengths > 1) {
        check->status = 400;
        check->code = "invalid_header";
        check->message = "Content-Length is given more than once";
    } else if (check->content_lengths == 1 && check->transfer_encodings > 0) {
        check->status = 400;
        check->code = "invalid_header";
        check->message = "Content-Length and Transfer-Encoding are both given";
    } else if (check->transfer_encodings > 0 && !check->only_chunked) {
        /* libmicrohttpd would read any other coding up to the connection's
         * end, where a proxy in front may see a body of another length. */
        check->status = 400;
        check->code = "invalid_header";
        check->message = "Transfer-Encoding must be given once, as \"chunked\"";
    }
}

bool api_check_headers(api_request *req)
{
    header_check check;
    memset(&check, 0, sizeof check);
    MHD_get_connection_values_n(req->conn, MHD_HEADER_KIND, check_header, &check);
    if (check.previous_value != NULL && value_has_hidden_bytes(&check, NULL))
        check.hidden_bytes = true;
    judge_headers(&check);
    if (check.status == 0)
        return true;
    api_reply_error(req, check.status, check.code, "%s", check.message);
    return false;
}
