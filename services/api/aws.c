/* The AWS listener's shared parts: credentials and SigV4 verification,
 * AWS's errors, route matching with two ids, the call into a /v1 handler,
 * patch operations, list pages and the ApiKey shape (aws.h). */
#include "aws.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "apitext.h"
#include "digest.h"
#include "log.h"
#include "sigv4.h"
#include "timeutil.h"

#define AWS_SERVICE "apigateway"

const apiroute aws_routes[AWS_ROUTE_COUNT] = {
#define AWS_ROUTE_ROW(method, path, handler) \
    {method, path, method " " path, AUTH_NONE, APIROUTE_ON_WORKER, handler},
    AWS_ROUTES(AWS_ROUTE_ROW)
#undef AWS_ROUTE_ROW
};

/* ---- credentials --------------------------------------------------------- */

typedef struct {
    char access_key[SIGV4_ACCESS_KEY_MAX + 1];
    char secret[AWS_SECRET_MAX + 1];
} credential;

static credential credentials[AWS_CREDENTIALS_MAX];
static size_t credential_count;
static char signing_region[SIGV4_SCOPE_PART_MAX + 1];

static bool add_credential(const char *line, size_t len, size_t number, char *err,
                           size_t err_size)
{
    while (len > 0 && (line[0] == ' ' || line[0] == '\t'))
        line++, len--;
    while (len > 0 && (line[len - 1] == ' ' || line[len - 1] == '\t' || line[len - 1] == '\r'))
        len--;
    if (len == 0 || line[0] == '#')
        return true;
    const char *colon = memchr(line, ':', len);
    size_t id_len = colon ? (size_t)(colon - line) : 0, secret_len = colon ? len - id_len - 1 : 0;
    if (colon == NULL || id_len == 0 || id_len > SIGV4_ACCESS_KEY_MAX || secret_len < 8 ||
        secret_len > AWS_SECRET_MAX) {
        snprintf(err, err_size,
                 "TALLY_AWS_CREDENTIALS: entry %zu is not ACCESS_KEY_ID:SECRET (an id of 1..%d "
                 "characters, a secret of 8..%d)",
                 number, SIGV4_ACCESS_KEY_MAX, AWS_SECRET_MAX);
        return false;
    }
    for (size_t i = 0; i < id_len; i++) {
        char c = line[i];
        if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9'))) {
            snprintf(err, err_size, "TALLY_AWS_CREDENTIALS: entry %zu: an access key id is "
                     "letters and digits only", number);
            return false;
        }
    }
    for (size_t i = 0; i < credential_count; i++) {
        if (strlen(credentials[i].access_key) == id_len &&
            memcmp(credentials[i].access_key, line, id_len) == 0) {
            snprintf(err, err_size, "TALLY_AWS_CREDENTIALS: access key id %.*s is given twice",
                     (int)id_len, line);
            return false;
        }
    }
    if (credential_count == AWS_CREDENTIALS_MAX) {
        snprintf(err, err_size, "TALLY_AWS_CREDENTIALS: at most %d pairs", AWS_CREDENTIALS_MAX);
        return false;
    }
    credential *c = &credentials[credential_count++];
    memcpy(c->access_key, line, id_len);
    c->access_key[id_len] = '\0';
    memcpy(c->secret, colon + 1, secret_len);
    c->secret[secret_len] = '\0';
    return true;
}

bool aws_init(const char *text, const char *region, char *err, size_t err_size)
{
    aws_free();
    size_t number = 0;
    for (const char *p = text;;) {
        size_t len = strcspn(p, ",\n");
        if (!add_credential(p, len, ++number, err, err_size)) {
            aws_free();
            return false;
        }
        if (p[len] == '\0')
            break;
        p += len + 1;
    }
    if (credential_count == 0) {
        snprintf(err, err_size, "TALLY_AWS_CREDENTIALS holds no ACCESS_KEY_ID:SECRET pair");
        return false;
    }
    size_t region_len = strlen(region);
    if (region_len == 0 || region_len > SIGV4_SCOPE_PART_MAX || strchr(region, '/') != NULL) {
        snprintf(err, err_size, "TALLY_AWS_REGION must be 1..%d characters without '/'",
                 SIGV4_SCOPE_PART_MAX);
        aws_free();
        return false;
    }
    memcpy(signing_region, region, region_len + 1);
    return true;
}

void aws_free(void)
{
    volatile char *wipe = (volatile char *)credentials;
    for (size_t i = 0; i < sizeof credentials; i++)
        wipe[i] = 0;
    credential_count = 0;
}

static const credential *find_credential(const char *access_key)
{
    for (size_t i = 0; i < credential_count; i++) {
        if (strcmp(credentials[i].access_key, access_key) == 0)
            return &credentials[i];
    }
    return NULL;
}

/* ---- errors -------------------------------------------------------------- */

const char *aws_error_type(unsigned status)
{
    switch (status) {
    case 400:
    case 413:
    case 414:
    case 431:
        return "BadRequestException";
    case 401:
        return "UnauthorizedException";
    case 403:
        return "AccessDeniedException";
    case 404:
    case 405:
        return "NotFoundException";
    case 409:
        return "ConflictException";
    case 429:
        return "TooManyRequestsException";
    default:
        return status >= 500 ? "ServiceUnavailableException" : "BadRequestException";
    }
}

void aws_reply_error(api_request *req, unsigned status, const char *type, const char *fmt, ...)
{
    char message[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(message, sizeof message, fmt, ap);
    va_end(ap);
    apitext_utf8_sanitize(message);
    /* One error type: this error may replace an earlier one (a /v1
     * handler's, said again in AWS's words). */
    api_response *r = &req->response;
    for (int i = 0; i < r->header_count; i++) {
        if (strcmp(r->headers[i].name, "x-amzn-ErrorType") == 0) {
            r->headers[i] = r->headers[--r->header_count];
            break;
        }
    }
    api_add_header(req, "x-amzn-ErrorType", "%s", type);
    api_reply_json(req, status, json_pack("{s:s}", "message", message));
}

/* ---- routes -------------------------------------------------------------- */

/* Matches one row's pattern; ids into id and key_id. */
static bool pattern_matches(const char *pattern, const char *path, char *id, char *key_id)
{
    id[0] = key_id[0] = '\0';
    while (*pattern != '\0') {
        const char *placeholder = NULL;
        char *into = NULL;
        if (strncmp(pattern, "{id}", 4) == 0)
            placeholder = "{id}", into = id;
        else if (strncmp(pattern, "{keyId}", 7) == 0)
            placeholder = "{keyId}", into = key_id;
        if (placeholder != NULL) {
            size_t have = strcspn(path, "/");
            if (!apiroute_valid_id(path, have))
                return false;
            memcpy(into, path, have);
            into[have] = '\0';
            pattern += strlen(placeholder);
            path += have;
        } else if (*pattern++ != *path++) {
            return false;
        }
    }
    return *path == '\0';
}

apiroute_result aws_route_find(const char *method, const char *path, apiroute_match *out,
                               char key_id[APIROUTE_ID_MAX + 1])
{
    if (strcmp(method, "HEAD") == 0)
        method = "GET";
    for (size_t i = 0; i < AWS_ROUTE_COUNT; i++) {
        if (!pattern_matches(aws_routes[i].path, path, out->id, key_id))
            continue;
        out->route = NULL;
        out->allow[0] = '\0';
        for (size_t j = i; j < AWS_ROUTE_COUNT; j++) {
            if (strcmp(aws_routes[j].path, aws_routes[i].path) == 0 &&
                strcmp(aws_routes[j].method, method) == 0) {
                out->route = &aws_routes[j];
                return APIROUTE_FOUND;
            }
        }
        apiroute_allow(aws_routes, AWS_ROUTE_COUNT, aws_routes[i].path, out->allow,
                       sizeof out->allow);
        return APIROUTE_METHOD_NOT_ALLOWED;
    }
    out->id[0] = key_id[0] = '\0';
    return APIROUTE_NOT_FOUND;
}

/* ---- SigV4 ----------------------------------------------------------------- */

typedef struct {
    const char *name; /* lower case */
    buf *out;
    bool found;
    bool full;
} header_collect;

static enum MHD_Result collect_header(void *cls, enum MHD_ValueKind kind, const char *key,
                                      const char *value)
{
    (void)kind;
    header_collect *c = cls;
    if (strcasecmp(key, c->name) != 0)
        return MHD_YES;
    if ((c->found && !buf_append(c->out, ",", 1)) || !buf_append_str(c->out, value ? value : ""))
        c->full = true;
    c->found = true;
    return MHD_YES;
}

static bool request_header(void *ctx, const char *name, buf *out)
{
    api_request *req = ctx;
    header_collect c = {.name = name, .out = out};
    MHD_get_connection_values(req->conn, MHD_HEADER_KIND, collect_header, &c);
    return c.found && !c.full;
}

static const char *header_value(api_request *req, const char *name)
{
    return MHD_lookup_connection_value(req->conn, MHD_HEADER_KIND, name);
}

static void refuse_signature(api_request *req, const char *type, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void refuse_signature(api_request *req, const char *type, const char *fmt, ...)
{
    char message[400];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(message, sizeof message, fmt, ap);
    va_end(ap);
    aws_reply_error(req, 403, type, "%s", message);
}

/* The clock check: X-Amz-Date parsed, within the skew, and the scope's
 * date its day. False after replying. */
static bool date_acceptable(api_request *req, const char *amz_date,
                            const sigv4_authorization *auth)
{
    int64_t signed_at, now = time_now_usec();
    if (!sigv4_parse_amz_date(amz_date, &signed_at)) {
        refuse_signature(req, "IncompleteSignatureException",
                         "X-Amz-Date must be in the ISO 8601 basic format YYYYMMDD'T'HHMMSS'Z'");
        return false;
    }
    char now_text[20], bound_text[20];
    civil_time ct;
    if (signed_at < now - AWS_CLOCK_SKEW_USEC || signed_at > now + AWS_CLOCK_SKEW_USEC) {
        bool late = signed_at < now;
        time_to_civil(now, &ct);
        snprintf(now_text, sizeof now_text, "%04d%02d%02dT%02d%02d%02dZ", ct.year, ct.month,
                 ct.day, ct.hour, ct.minute, ct.second);
        time_to_civil(late ? now - AWS_CLOCK_SKEW_USEC : now + AWS_CLOCK_SKEW_USEC, &ct);
        snprintf(bound_text, sizeof bound_text, "%04d%02d%02dT%02d%02d%02dZ", ct.year, ct.month,
                 ct.day, ct.hour, ct.minute, ct.second);
        if (late)
            refuse_signature(req, "InvalidSignatureException",
                             "Signature expired: %s is now earlier than %s (%s - 15 min.)",
                             amz_date, bound_text, now_text);
        else
            refuse_signature(req, "InvalidSignatureException",
                             "Signature not yet current: %s is still later than %s (%s + 15 "
                             "min.)",
                             amz_date, bound_text, now_text);
        return false;
    }
    if (strncmp(auth->date, amz_date, 8) != 0) {
        refuse_signature(req, "InvalidSignatureException",
                         "Date in Credential scope does not match YYYYMMDD from ISO-8601 version "
                         "of date from HTTP: '%s' != '%.8s', from '%s'.",
                         auth->date, amz_date, amz_date);
        return false;
    }
    return true;
}

/* The scope's region and service, and a known access key; false after replying. */
static bool scope_acceptable(api_request *req, const sigv4_authorization *auth,
                             const credential **found)
{
    if (strcmp(auth->service, AWS_SERVICE) != 0) {
        refuse_signature(req, "InvalidSignatureException",
                         "Credential should be scoped to correct service: '" AWS_SERVICE "'. ");
        return false;
    }
    if (strcmp(auth->region, signing_region) != 0) {
        refuse_signature(req, "InvalidSignatureException",
                         "Credential should be scoped to a valid region, not '%.63s'. ",
                         auth->region);
        return false;
    }
    *found = find_credential(auth->access_key);
    if (*found == NULL) {
        refuse_signature(req, "UnrecognizedClientException",
                         "The security token included in the request is invalid.");
        return false;
    }
    return true;
}

/* The body's SHA-256 in hex; a client's x-amz-content-sha256, when sent,
 * must be it (it is what the client signed). False after replying. */
static bool payload_hash(api_request *req, char hex[2 * DIGEST_SHA256_LEN + 1])
{
    uint8_t hash[DIGEST_SHA256_LEN];
    digest_sha256(req->body, req->body_len, hash);
    digest_to_hex(hash, sizeof hash, hex);
    const char *claimed = header_value(req, "x-amz-content-sha256");
    if (claimed != NULL && strcmp(claimed, hex) != 0) {
        refuse_signature(req, "InvalidSignatureException",
                         "The provided 'x-amz-content-sha256' header does not match what was "
                         "computed.");
        return false;
    }
    return true;
}

/* The signature the request should carry, under `key`; false after replying. */
static bool expected_signature(api_request *req, const char *target, const char *amz_date,
                               const sigv4_authorization *auth, const credential *key,
                               char out[SIGV4_SIGNATURE_HEX + 1])
{
    char hash_hex[2 * DIGEST_SHA256_LEN + 1], err[200];
    if (!payload_hash(req, hash_hex))
        return false;
    char path[4096 + 1];
    size_t path_len = strcspn(target, "?");
    if (path_len >= sizeof path)
        path_len = sizeof path - 1; /* the api refuses longer targets before this */
    memcpy(path, target, path_len);
    path[path_len] = '\0';
    const char *query = target[path_len] == '?' ? target + path_len + 1 : "";
    buf canonical, to_sign;
    buf_init(&canonical, 64 * 1024);
    buf_init(&to_sign, 1024);
    bool ok = sigv4_canonical_request(req->method, path, query, auth->signed_headers,
                                      request_header, req, hash_hex, &canonical, err,
                                      sizeof err) &&
              sigv4_string_to_sign(amz_date, auth, canonical.data, canonical.len, &to_sign);
    if (ok) {
        uint8_t signing_key[32];
        sigv4_signing_key(key->secret, auth->date, auth->region, auth->service, signing_key);
        sigv4_signature_hex(signing_key, to_sign.data, to_sign.len, out);
        memset(signing_key, 0, sizeof signing_key);
    } else {
        refuse_signature(req, "IncompleteSignatureException", "%s",
                         err[0] ? err : "the request is too large to sign");
    }
    buf_free(&canonical);
    buf_free(&to_sign);
    return ok;
}

bool aws_authenticate(api_request *req, const char *target)
{
    const char *authorization = header_value(req, MHD_HTTP_HEADER_AUTHORIZATION);
    if (authorization == NULL) {
        refuse_signature(req, "MissingAuthenticationTokenException",
                         "Missing Authentication Token");
        return false;
    }
    sigv4_authorization auth;
    char err[200];
    if (!sigv4_parse_authorization(authorization, &auth, err, sizeof err)) {
        refuse_signature(req, "IncompleteSignatureException", "%s", err);
        return false;
    }
    const char *amz_date = header_value(req, "x-amz-date");
    if (amz_date == NULL) {
        refuse_signature(req, "IncompleteSignatureException",
                         "Authorization header requires existence of a 'X-Amz-Date' header.");
        return false;
    }
    if (!sigv4_header_signed(auth.signed_headers, "x-amz-date")) {
        refuse_signature(req, "IncompleteSignatureException",
                         "'x-amz-date' must be among the signed headers.");
        return false;
    }
    const credential *key = NULL;
    char expected[SIGV4_SIGNATURE_HEX + 1];
    if (!date_acceptable(req, amz_date, &auth) || !scope_acceptable(req, &auth, &key) ||
        !expected_signature(req, target, amz_date, &auth, key, expected))
        return false;
    if (!sigv4_signature_equal(expected, auth.signature)) {
        refuse_signature(req, "InvalidSignatureException",
                         "The request signature we calculated does not match the signature you "
                         "provided. Check your AWS Secret Access Key and signing method. Consult "
                         "the service documentation for details.");
        return false;
    }
    return true;
}

/* ---- calling the /v1 handlers -------------------------------------------- */

unsigned aws_call(api_request *req, apiroute_handler handler, const char *id, json_t *body,
                  json_t **answer)
{
    *answer = NULL;
    char saved_id[sizeof req->id];
    memcpy(saved_id, req->id, sizeof saved_id);
    const char *saved_body = req->body;
    size_t saved_len = req->body_len;
    int saved_headers = req->response.header_count;
    char *text = body ? json_dumps(body, JSON_COMPACT) : NULL;
    if (body != NULL && text == NULL) {
        aws_reply_error(req, 500, "ServiceUnavailableException", "out of memory");
        return 500;
    }
    char wanted[sizeof req->id]; /* id may be req->id itself */
    snprintf(wanted, sizeof wanted, "%s", id ? id : "");
    memcpy(req->id, wanted, sizeof wanted);
    req->body = text ? text : "";
    req->body_len = text ? strlen(text) : 0;
    handler(req);
    memcpy(req->id, saved_id, sizeof saved_id);
    req->body = saved_body;
    req->body_len = saved_len;
    free(text);
    unsigned status = req->response.status;
    if (status < 200 || status >= 300)
        return status;
    if (req->response.body != NULL)
        *answer = json_loadb(req->response.body, req->response.body_len, 0, NULL);
    free(req->response.body);
    req->response.body = NULL;
    req->response.body_len = 0;
    req->response.status = 0;
    req->response.header_count = saved_headers;
    return status;
}

json_t *aws_parse_body(api_request *req)
{
    if (req->body_len == 0)
        return json_object();
    json_error_t jerr;
    json_t *body = json_loadb(req->body, req->body_len, JSON_REJECT_DUPLICATES, &jerr);
    if (body == NULL || !json_is_object(body)) {
        json_decref(body);
        aws_reply_error(req, 400, "BadRequestException",
                        "Invalid request body: not a JSON object (line %d, column %d)",
                        body ? 1 : jerr.line, body ? 1 : jerr.column);
        return NULL;
    }
    return body;
}

bool aws_read_patch(api_request *req, const json_t *body, aws_patch *ops, size_t *count)
{
    json_t *list = json_object_get(body, "patchOperations");
    *count = 0;
    if (list == NULL)
        return true;
    if (!json_is_array(list) || json_array_size(list) > AWS_PATCH_MAX) {
        aws_reply_error(req, 400, "BadRequestException",
                        "patchOperations must be a list of at most %d operations", AWS_PATCH_MAX);
        return false;
    }
    size_t i;
    json_t *op;
    json_array_foreach(list, i, op) {
        json_t *name = json_object_get(op, "op"), *path = json_object_get(op, "path"),
               *value = json_object_get(op, "value");
        if (!json_is_object(op) || !json_is_string(name) || !json_is_string(path) ||
            (value != NULL && !json_is_string(value))) {
            aws_reply_error(req, 400, "BadRequestException",
                            "patchOperations[%zu] needs string op and path, and a string value",
                            i);
            return false;
        }
        ops[*count] = (aws_patch){json_string_value(name), json_string_value(path),
                                  value ? json_string_value(value) : NULL};
        (*count)++;
    }
    return true;
}

json_t *aws_epoch_json(const json_t *object, const char *member)
{
    const char *text = json_string_value(json_object_get(object, member));
    int64_t usec = 0;
    if (text == NULL || !time_parse_rfc3339(text, strlen(text), &usec))
        usec = 0;
    return json_integer(time_floor_div(usec, USEC_PER_SEC));
}

bool aws_read_page(api_request *req, const char *const *allowed, aws_page *page)
{
    if (!api_check_query(req, allowed))
        return false;
    const char *limit = api_query(req, "limit"), *position = api_query(req, "position");
    page->limit = AWS_LIST_LIMIT_DEFAULT;
    page->after[0] = '\0';
    apimodel_error err;
    if (limit != NULL && limit[0] != '\0' && !apimodel_parse_limit(limit, &page->limit, &err)) {
        aws_reply_error(req, 400, "BadRequestException", "%s", err.message);
        return false;
    }
    if (position != NULL && position[0] != '\0' &&
        !apimodel_cursor_decode(position, page->after, sizeof page->after, &err)) {
        aws_reply_error(req, 400, "BadRequestException", "Invalid position: %s", err.message);
        return false;
    }
    snprintf(page->fetch, sizeof page->fetch, "%d", page->limit + 1);
    return true;
}

void aws_reply_page(api_request *req, const PGresult *res, const aws_page *page, int id_column,
                    json_t *(*row_json)(const PGresult *res, int row))
{
    int rows = PQntuples(res);
    int shown = rows > page->limit ? page->limit : rows;
    json_t *items = json_array();
    for (int i = 0; i < shown; i++)
        json_array_append_new(items, row_json(res, i));
    json_t *answer = json_pack("{s:o}", "item", items);
    if (rows > page->limit) {
        char cursor[APIMODEL_CURSOR_MAX + 1];
        apimodel_cursor_encode(api_field(res, shown - 1, id_column), cursor, sizeof cursor);
        json_object_set_new(answer, "position", json_string(cursor));
    }
    api_reply_json(req, 200, answer);
}

json_t *aws_api_key_json(const json_t *key)
{
    json_t *out = json_object();
    static const char *const copied[] = {"id", "name", "description", "customerId", "value"};
    for (size_t i = 0; i < sizeof copied / sizeof copied[0]; i++) {
        json_t *value = json_object_get(key, copied[i]);
        if (json_is_string(value))
            json_object_set(out, copied[i], value);
    }
    json_object_set_new(out, "enabled", json_boolean(json_is_true(json_object_get(key, "enabled"))));
    json_object_set_new(out, "createdDate", aws_epoch_json(key, "createdAt"));
    json_object_set_new(out, "lastUpdatedDate", aws_epoch_json(key, "updatedAt"));
    json_object_set_new(out, "stageKeys", json_array());
    return out;
}

json_t *aws_patch_merge(api_request *req, aws_patch_member *member)
{
    json_t *body = aws_parse_body(req);
    aws_patch ops[AWS_PATCH_MAX];
    size_t count = 0;
    json_t *merge = NULL;
    if (body != NULL && aws_read_patch(req, body, ops, &count)) {
        merge = json_object();
        for (size_t i = 0; merge != NULL && i < count; i++) {
            if (!member(req, &ops[i], merge)) {
                json_decref(merge);
                merge = NULL;
            }
        }
    }
    json_decref(body);
    return merge;
}
