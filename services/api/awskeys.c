/* AWS's API key operations: CreateApiKey (and ImportApiKeys, the same
 * POST with ?mode=import), GetApiKey, GetApiKeys, UpdateApiKey and
 * DeleteApiKey, each through the /v1 key handlers (keys.c). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "apitext.h"
#include "aws.h"

#define INVALID_KEY "Invalid API Key identifier specified"
#define IMPORT_ROWS_MAX 1000
#define IMPORT_FIELD_MAX 1100 /* a description (1,024) and room */
#define IMPORT_WARNINGS_MAX 100

/* After a /v1 call failed: a missing key in AWS's words, else its error as it is. */
static void key_call_failed(api_request *req, unsigned status)
{
    if (status == 404)
        aws_reply_error(req, 404, "NotFoundException", INVALID_KEY);
}

/* Copies the members AWS and Tally share from an AWS body into a /v1 one. */
static void copy_key_members(const json_t *from, json_t *to)
{
    static const char *const shared[] = {"name", "description", "enabled", "value", "customerId"};
    for (size_t i = 0; i < sizeof shared / sizeof shared[0]; i++) {
        json_t *value = json_object_get(from, shared[i]);
        if (value != NULL)
            json_object_set(to, shared[i], value);
    }
}

static void import_api_keys(api_request *req);

void aws_create_api_key(api_request *req)
{
    static const char *const allowed[] = {"mode", "format", "failonwarnings", NULL};
    if (!api_check_query(req, allowed))
        return;
    if (api_query(req, "mode") != NULL) {
        import_api_keys(req);
        return;
    }
    json_t *body = aws_parse_body(req);
    if (body == NULL)
        return;
    json_t *tally = json_object();
    copy_key_members(body, tally);
    /* AWS creates a key disabled unless told otherwise. */
    if (json_object_get(tally, "enabled") == NULL)
        json_object_set_new(tally, "enabled", json_false());
    json_decref(body);
    json_t *key = NULL;
    unsigned status = aws_call(req, keys_create, NULL, tally, &key);
    json_decref(tally);
    if (status == 201)
        api_reply_json(req, 201, aws_api_key_json(key));
    json_decref(key);
}

void aws_get_api_key(api_request *req)
{
    static const char *const allowed[] = {"includeValue", NULL};
    if (!api_check_query(req, allowed))
        return;
    json_t *key = NULL;
    unsigned status = aws_call(req, keys_get, req->id, NULL, &key);
    if (status == 200)
        api_reply_json(req, 200, aws_api_key_json(key));
    else
        key_call_failed(req, status);
    json_decref(key);
}

static json_t *key_row_json(const PGresult *res, int row)
{
    json_t *key = keys_row_json(res, row);
    json_t *out = aws_api_key_json(key);
    json_decref(key);
    return out;
}

void aws_get_api_keys(api_request *req)
{
    static const char *const allowed[] = {"position", "limit", "name", "customerId",
                                          "includeValues", NULL};
    aws_page page;
    if (!aws_read_page(req, allowed, &page))
        return;
    const char *name = api_query(req, "name"), *customer = api_query(req, "customerId");
    if ((name && strlen(name) > APIMODEL_NAME_MAX) ||
        (customer && strlen(customer) > APIMODEL_CUSTOMER_ID_MAX)) {
        aws_reply_error(req, 400, "BadRequestException", "name or customerId is too long");
        return;
    }
    PGconn *conn = dbpool_acquire(req);
    if (conn == NULL)
        return;
    const char *params[] = {page.after[0] ? page.after : NULL, page.fetch,
                            name && name[0] ? name : NULL, customer && customer[0] ? customer : NULL};
    /* AWS's name query is a prefix of the name. */
    PGresult *res = api_exec(conn,
                             "SELECT " KEY_COLUMNS " FROM api_keys k "
                             "WHERE ($1::text IS NULL OR k.id > $1) "
                             "AND ($3::text IS NULL OR starts_with(k.name, $3)) "
                             "AND ($4::text IS NULL OR k.customer_id = $4) "
                             "ORDER BY k.id LIMIT $2::int",
                             4, params);
    if (api_ok(res))
        aws_reply_page(req, res, &page, 0, key_row_json);
    else
        api_reply_db_error(req, conn, res, "listing keys");
    PQclear(res);
    dbpool_release(conn);
}

/* One patch operation of UpdateApiKey into the /v1 merge patch; false
 * after replying 400. */
static bool key_patch_member(api_request *req, const aws_patch *op, json_t *merge)
{
    bool replace = strcmp(op->op, "replace") == 0;
    static const char *const text_paths[][2] = {
        {"/name", "name"}, {"/description", "description"}, {"/customerId", "customerId"}};
    for (size_t i = 0; replace && i < sizeof text_paths / sizeof text_paths[0]; i++) {
        if (strcmp(op->path, text_paths[i][0]) == 0) {
            json_object_set_new(merge, text_paths[i][1], json_string(op->value ? op->value : ""));
            return true;
        }
    }
    if (replace && strcmp(op->path, "/enabled") == 0) {
        if (op->value == NULL ||
            (strcasecmp(op->value, "true") != 0 && strcasecmp(op->value, "false") != 0)) {
            aws_reply_error(req, 400, "BadRequestException",
                            "Invalid value for /enabled: expected true or false");
            return false;
        }
        json_object_set_new(merge, "enabled", json_boolean(strcasecmp(op->value, "true") == 0));
        return true;
    }
    aws_reply_error(req, 400, "BadRequestException",
                    "Invalid patch path '%.100s' for op '%.20s': an API key takes replace on "
                    "/name, /description, /customerId and /enabled",
                    op->path, op->op);
    return false;
}

void aws_update_api_key(api_request *req)
{
    json_t *merge = aws_patch_merge(req, key_patch_member);
    if (merge == NULL)
        return; /* replied */
    json_t *key = NULL;
    /* No operation: the key as it is (a merge patch cannot be empty). */
    unsigned status = json_object_size(merge) == 0
                          ? aws_call(req, keys_get, req->id, NULL, &key)
                          : aws_call(req, keys_update, req->id, merge, &key);
    if (status == 200)
        api_reply_json(req, 200, aws_api_key_json(key));
    else
        key_call_failed(req, status);
    json_decref(key);
    json_decref(merge);
}

void aws_delete_api_key(api_request *req)
{
    json_t *answer = NULL;
    unsigned status = aws_call(req, keys_delete, req->id, NULL, &answer);
    json_decref(answer);
    if (status == 204)
        api_reply_empty(req, 202);
    else
        key_call_failed(req, status);
}

/* ---- ImportApiKeys ----------------------------------------------------------- */

/* AWS's CSV columns, matched without regard to case. */
typedef enum { CSV_NAME, CSV_KEY, CSV_DESCRIPTION, CSV_ENABLED, CSV_PLANS, CSV_CUSTOMER, CSV_COLUMNS } csv_column;
static const char *const csv_names[CSV_COLUMNS] = {"name", "key", "description", "enabled",
                                                   "usageplanids", "customerid"};

typedef struct {
    const char *at, *end; /* what is left of the body */
    int line;
} csv_reader;

/* Reads one RFC 4180 record into fields (each NUL-terminated, at most
 * IMPORT_FIELD_MAX bytes); *count fields. False at the end of the text or
 * for a malformed record (*malformed set). */
static bool csv_record(csv_reader *r, char fields[][IMPORT_FIELD_MAX + 1], size_t max,
                       size_t *count, bool *malformed)
{
    *count = 0;
    *malformed = false;
    if (r->at >= r->end)
        return false;
    r->line++;
    for (;;) {
        size_t len = 0;
        bool quoted = r->at < r->end && *r->at == '"';
        char *field = *count < max ? fields[*count] : NULL;
        if (quoted)
            r->at++;
        while (r->at < r->end) {
            char c = *r->at;
            if (quoted && c == '"') {
                if (r->at + 1 < r->end && r->at[1] == '"') {
                    r->at++;
                } else {
                    r->at++;
                    quoted = false;
                    continue;
                }
            } else if (!quoted && (c == ',' || c == '\n' || c == '\r')) {
                break;
            }
            if (field != NULL && len < IMPORT_FIELD_MAX)
                field[len++] = c;
            else
                *malformed = true;
            r->at++;
        }
        if (quoted)
            *malformed = true; /* an unterminated quote */
        if (field != NULL)
            field[len] = '\0';
        (*count)++;
        if (r->at < r->end && *r->at == ',') {
            r->at++;
            continue;
        }
        if (r->at < r->end && *r->at == '\r')
            r->at++;
        if (r->at < r->end && *r->at == '\n')
            r->at++;
        return true;
    }
}

typedef struct {
    json_t *ids;      /* created key ids */
    json_t *warnings; /* texts */
} import_result;

static void warn(import_result *result, int line, const char *what)
{
    if (json_array_size(result->warnings) < IMPORT_WARNINGS_MAX) {
        char text[360];
        snprintf(text, sizeof text, "line %d: %.300s", line, what);
        apitext_utf8_sanitize(text); /* a cut may split a character */
        json_array_append_new(result->warnings, json_string(text));
    }
}

/* The /v1 body of one CSV record, or NULL with a warning. */
static json_t *import_body(char fields[][IMPORT_FIELD_MAX + 1], size_t count,
                           const int columns[CSV_COLUMNS], int line, import_result *result)
{
    const char *value[CSV_COLUMNS];
    for (int c = 0; c < CSV_COLUMNS; c++)
        value[c] = columns[c] >= 0 && (size_t)columns[c] < count ? fields[columns[c]] : "";
    if (value[CSV_KEY][0] == '\0') {
        warn(result, line, "no key value");
        return NULL;
    }
    if (strchr(value[CSV_PLANS], ',') != NULL || strchr(value[CSV_PLANS], ';') != NULL) {
        warn(result, line, "a Tally key belongs to one usage plan at most");
        return NULL;
    }
    const char *enabled = value[CSV_ENABLED];
    if (enabled[0] != '\0' && strcasecmp(enabled, "true") != 0 && strcasecmp(enabled, "false") != 0) {
        warn(result, line, "Enabled must be true or false");
        return NULL;
    }
    json_t *body = json_pack("{s:s,s:s,s:s,s:b}", "name", value[CSV_NAME], "value", value[CSV_KEY],
                             "description", value[CSV_DESCRIPTION], "enabled",
                             strcasecmp(enabled, "true") == 0);
    if (body != NULL && value[CSV_PLANS][0] != '\0')
        json_object_set_new(body, "planId", json_string(value[CSV_PLANS]));
    if (body != NULL && value[CSV_CUSTOMER][0] != '\0')
        json_object_set_new(body, "customerId", json_string(value[CSV_CUSTOMER]));
    if (body == NULL) {
        warn(result, line, "a field is not valid UTF-8");
        return NULL;
    }
    /* The key model's own checks now, so that failonwarnings refuses the
     * file before any key of it is created. */
    apimodel_key key;
    apimodel_error err;
    apimodel_key_init(&key);
    if (!apimodel_key_apply(&key, body, true, &err)) {
        warn(result, line, err.message);
        json_decref(body);
        body = NULL;
    }
    memset(key.value, 0, sizeof key.value);
    return body;
}

/* The header line: which field holds which column; false when it has no Key column. */
static bool read_header(csv_reader *reader, char fields[][IMPORT_FIELD_MAX + 1],
                        int columns[CSV_COLUMNS])
{
    size_t count;
    bool malformed;
    for (int c = 0; c < CSV_COLUMNS; c++)
        columns[c] = -1;
    if (!csv_record(reader, fields, 16, &count, &malformed) || malformed)
        return false;
    for (size_t f = 0; f < count && f < 16; f++) {
        for (int c = 0; c < CSV_COLUMNS; c++) {
            if (strcasecmp(fields[f], csv_names[c]) == 0)
                columns[c] = (int)f;
        }
    }
    return columns[CSV_KEY] >= 0;
}

/* Parses every record into bodies (validation only, nothing created). */
static size_t import_parse(api_request *req, json_t **bodies, int *lines, import_result *result)
{
    /* 16 fields of 1 KiB: on the heap, not a worker's stack. */
    char (*row)[IMPORT_FIELD_MAX + 1] = malloc(16 * sizeof *row);
    csv_reader reader = {req->body, req->body + req->body_len, 0};
    int columns[CSV_COLUMNS];
    size_t made = 0;
    if (row == NULL || !read_header(&reader, row, columns)) {
        warn(result, 1, "the header line must name a Key column (Name,Key,Description,Enabled,"
                        "UsagePlanIds)");
        free(row);
        return 0;
    }
    size_t count;
    bool malformed;
    while (csv_record(&reader, row, 16, &count, &malformed)) {
        if (count == 1 && row[0][0] == '\0')
            continue; /* a blank line */
        if (made == IMPORT_ROWS_MAX) {
            warn(result, reader.line, "at most 1000 keys per import");
            break;
        }
        if (malformed) {
            warn(result, reader.line, "malformed CSV (an unclosed quote or a field too long)");
            continue;
        }
        json_t *body = import_body(row, count, columns, reader.line, result);
        if (body != NULL) {
            lines[made] = reader.line;
            bodies[made++] = body;
        }
    }
    free(row);
    return made;
}

static void import_api_keys(api_request *req)
{
    const char *mode = api_query(req, "mode"), *format = api_query(req, "format");
    const char *fail = api_query(req, "failonwarnings");
    if (strcmp(mode, "import") != 0 || format == NULL || strcmp(format, "csv") != 0) {
        aws_reply_error(req, 400, "BadRequestException",
                        "ImportApiKeys takes mode=import and format=csv");
        return;
    }
    bool fail_on_warnings = fail != NULL && strcasecmp(fail, "true") == 0;
    json_t **bodies = calloc(IMPORT_ROWS_MAX, sizeof *bodies);
    int *lines = calloc(IMPORT_ROWS_MAX, sizeof *lines);
    import_result result = {json_array(), json_array()};
    size_t made = bodies && lines ? import_parse(req, bodies, lines, &result) : 0;
    if (bodies == NULL || lines == NULL) {
        aws_reply_error(req, 500, "ServiceUnavailableException", "out of memory");
    } else if (fail_on_warnings && json_array_size(result.warnings) > 0) {
        json_t *first = json_array_get(result.warnings, 0);
        aws_reply_error(req, 400, "BadRequestException", "Import failed (failonwarnings): %s",
                        json_string_value(first));
    } else {
        for (size_t i = 0; i < made; i++) {
            json_t *key = NULL;
            unsigned status = aws_call(req, keys_create, NULL, bodies[i], &key);
            if (status == 201) {
                json_array_append(result.ids, json_object_get(key, "id"));
            } else {
                json_t *error = req->response.body
                                    ? json_loadb(req->response.body, req->response.body_len, 0, NULL)
                                    : NULL;
                const char *message = json_string_value(json_object_get(error, "message"));
                warn(&result, lines[i], message ? message : "the key could not be created");
                json_decref(error);
                req->response.status = 0; /* the row's error becomes a warning */
                req->response.header_count = 0;
            }
            json_decref(key);
        }
        api_reply_json(req, 201, json_pack("{s:O,s:O}", "ids", result.ids, "warnings",
                                            result.warnings));
    }
    for (size_t i = 0; bodies && i < made; i++)
        json_decref(bodies[i]);
    free(bodies);
    free(lines);
    json_decref(result.ids);
    json_decref(result.warnings);
}
