#include "event.h"

#include <jansson.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "eventscan.h"
#include "timeutil.h"
#include "utf8.h"

static const char *const error_codes[EVENT_ERR__COUNT] = {
    [EVENT_OK] = "ok",
    [EVENT_ERR_EMPTY] = "empty",
    [EVENT_ERR_TOO_LARGE] = "too_large",
    [EVENT_ERR_INVALID_UTF8] = "invalid_utf8",
    [EVENT_ERR_INVALID_JSON] = "invalid_json",
    [EVENT_ERR_NOT_OBJECT] = "not_object",
    [EVENT_ERR_MISSING_FIELD] = "missing_field",
    [EVENT_ERR_INVALID_FIELD] = "invalid_field",
    [EVENT_ERR_UNSUPPORTED_SPECVERSION] = "unsupported_specversion",
    [EVENT_ERR_INVALID_TIME] = "invalid_time",
    [EVENT_ERR_TOO_LATE] = "too_late",
    [EVENT_ERR_IN_FUTURE] = "in_future",
    [EVENT_ERR_UNKNOWN_KEY] = "unknown_key",
    [EVENT_ERR_COUNTER_OVERFLOW] = "counter_overflow",
    [EVENT_ERR_DATABASE_REJECTED] = "database_rejected",
};

/* jansson allocates every node of the tree with malloc and frees it again
 * right after; for events, which are parsed and dropped at a high rate,
 * that was most of the parse time. While jansson parses an event (one the
 * scanner of eventscan.c left to it), nodes come from a per-thread bump
 * arena instead, reset for each event; "free" of an arena block does
 * nothing. Outside that, and once an event outgrows the arena, plain malloc
 * and free serve as usual. */
#define ARENA_BYTES (256u * 1024u)
static _Thread_local _Alignas(16) unsigned char arena[ARENA_BYTES];
static _Thread_local size_t arena_used;
static _Thread_local int arena_active;
static pthread_once_t arena_once = PTHREAD_ONCE_INIT;

static void *arena_malloc(size_t size)
{
    size_t rounded = (size + 15) & ~(size_t)15;
    if (arena_active && rounded <= ARENA_BYTES - arena_used) {
        void *p = arena + arena_used;
        arena_used += rounded;
        return p;
    }
    return malloc(size);
}

static void arena_free(void *p)
{
    uintptr_t address = (uintptr_t)p;
    if (address >= (uintptr_t)arena && address < (uintptr_t)arena + ARENA_BYTES)
        return;
    free(p);
}

static void arena_install(void)
{
    json_set_alloc_funcs(arena_malloc, arena_free);
}

const char *event_error_code(event_error err)
{
    return (unsigned)err < EVENT_ERR__COUNT ? error_codes[err] : "unknown";
}

__attribute__((format(printf, 4, 5))) static event_error fail(char *msg, size_t msg_size,
                                                              event_error err, const char *fmt,
                                                              ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, msg_size, fmt, ap);
    va_end(ap);
    return err;
}

/* Copies a string attribute of 1..max_len bytes into dst; an absent one is
 * "" unless required. */
static event_error take_string(const event_field *v, const char *name, bool required, char *dst,
                               size_t max_len, char *msg, size_t msg_size)
{
    if (v->kind == FIELD_ABSENT) {
        dst[0] = '\0';
        if (required)
            return fail(msg, msg_size, EVENT_ERR_MISSING_FIELD, "required attribute '%s' is missing",
                        name);
        return EVENT_OK;
    }
    if (v->kind != FIELD_STRING)
        return fail(msg, msg_size, EVENT_ERR_INVALID_FIELD, "attribute '%s' must be a string", name);
    size_t n = v->len;
    if (n == 0)
        return fail(msg, msg_size, EVENT_ERR_INVALID_FIELD, "attribute '%s' must not be empty", name);
    if (n > max_len) {
        snprintf(msg, msg_size, "attribute '%s' is longer than %zu bytes", name, max_len);
        return EVENT_ERR_INVALID_FIELD;
    }
    memcpy(dst, v->text, n);
    dst[n] = '\0';
    return EVENT_OK;
}

/* Reads an optional integer member of data within [min, max]. */
static event_error take_integer(const event_field *v, const char *name, int64_t min, int64_t max,
                                int64_t fallback, int64_t *dst, char *msg, size_t msg_size)
{
    if (v->kind == FIELD_ABSENT) {
        *dst = fallback;
        return EVENT_OK;
    }
    if (v->kind != FIELD_INTEGER)
        return fail(msg, msg_size, EVENT_ERR_INVALID_FIELD, "data.%s must be an integer", name);
    int64_t n = v->integer;
    if (n < min || n > max) {
        snprintf(msg, msg_size, "data.%s must be between %lld and %lld", name, (long long)min,
                 (long long)max);
        return EVENT_ERR_INVALID_FIELD;
    }
    *dst = n;
    return EVENT_OK;
}

static event_error parse_data(const event_fields *f, usage_event *out, char *msg,
                              size_t msg_size)
{
    out->units = 1;
    out->bytes = 0;
    out->status = -1;
    out->method[0] = '\0';
    out->endpoint[0] = '\0';
    const event_field *data = &f->top[TOP_DATA];
    if (data->kind == FIELD_ABSENT)
        return EVENT_OK;
    if (data->kind != FIELD_OBJECT)
        return fail(msg, msg_size, EVENT_ERR_INVALID_FIELD, "attribute '%s' must be an object",
                    "data");
    const event_field *d = f->data;
    event_error err;
    int64_t status;
    if ((err = take_integer(&d[DATA_UNITS], "units", 0, EVENT_MAX_UNITS, 1, &out->units, msg,
                            msg_size)) ||
        (err = take_integer(&d[DATA_BYTES], "bytes", 0, EVENT_MAX_BYTES_FIELD, 0, &out->bytes, msg,
                            msg_size)) ||
        (err = take_integer(&d[DATA_STATUS], "status", 100, 599, -1, &status, msg, msg_size)) ||
        (err = take_string(&d[DATA_METHOD], "method", false, out->method, EVENT_MAX_METHOD_LEN, msg,
                           msg_size)) ||
        (err = take_string(&d[DATA_ENDPOINT], "endpoint", false, out->endpoint,
                           EVENT_MAX_ENDPOINT_LEN, msg, msg_size)))
        return err;
    out->status = (int)status;
    for (const char *p = out->method; *p; p++) {
        if (!((*p >= 'A' && *p <= 'Z') || (*p >= 'a' && *p <= 'z')))
            return fail(msg, msg_size, EVENT_ERR_INVALID_FIELD,
                        "data.%s must be letters only (an HTTP method)", "method");
    }
    for (char *p = out->method; *p; p++) {
        if (*p >= 'a' && *p <= 'z')
            *p = (char)(*p - 'a' + 'A');
    }
    return EVENT_OK;
}

/* The attribute checks of docs/CONTRACT.md §3.2, in its order, on the
 * members of an object, whichever parser found them. */
static event_error check_fields(const event_fields *f, const event_limits *limits,
                                usage_event *out, char *msg, size_t msg_size)
{
    const event_field *top = f->top;
    char specversion[16];
    event_error err;
    if ((err = take_string(&top[TOP_SPECVERSION], "specversion", true, specversion,
                           sizeof specversion - 1, msg, msg_size))) {
        if (err == EVENT_ERR_INVALID_FIELD)
            return fail(msg, msg_size, EVENT_ERR_UNSUPPORTED_SPECVERSION,
                        "specversion must be the string \"1.0\"%s", "");
        return err;
    }
    if (strcmp(specversion, "1.0") != 0)
        return fail(msg, msg_size, EVENT_ERR_UNSUPPORTED_SPECVERSION,
                    "specversion must be \"1.0\"%s", "");
    char time_text[64];
    if ((err = take_string(&top[TOP_ID], "id", true, out->id, EVENT_MAX_ID_LEN, msg, msg_size)) ||
        (err = take_string(&top[TOP_SOURCE], "source", true, out->source, EVENT_MAX_ID_LEN, msg,
                           msg_size)) ||
        (err = take_string(&top[TOP_TYPE], "type", true, out->type, EVENT_MAX_ID_LEN, msg,
                           msg_size)) ||
        (err = take_string(&top[TOP_SUBJECT], "subject", true, out->subject,
                           EVENT_MAX_SUBJECT_LEN, msg, msg_size)))
        return err;
    const event_field *time_value = &top[TOP_TIME];
    if (time_value->kind == FIELD_ABSENT)
        return fail(msg, msg_size, EVENT_ERR_MISSING_FIELD, "required attribute '%s' is missing",
                    "time");
    if (time_value->kind != FIELD_STRING || time_value->len >= sizeof time_text)
        return fail(msg, msg_size, EVENT_ERR_INVALID_TIME,
                    "attribute '%s' must be an RFC 3339 date-time string", "time");
    size_t time_len = time_value->len;
    memcpy(time_text, time_value->text, time_len);
    if (!time_parse_rfc3339(time_text, time_len, &out->time_usec))
        return fail(msg, msg_size, EVENT_ERR_INVALID_TIME,
                    "attribute '%s' is not an RFC 3339 date-time (e.g. 2026-11-23T12:00:00Z)",
                    "time");
    if (out->time_usec < limits->now_usec - limits->lateness_usec) {
        snprintf(msg, msg_size, "time is older than the lateness horizon of %lld days",
                 (long long)(limits->lateness_usec / USEC_PER_DAY));
        return EVENT_ERR_TOO_LATE;
    }
    if (out->time_usec > limits->now_usec + EVENT_FUTURE_TOLERANCE_USEC)
        return fail(msg, msg_size, EVENT_ERR_IN_FUTURE, "time is more than 5 minutes in the %s",
                    "future");
    return parse_data(f, out, msg, msg_size);
}

/* What jansson's tree holds for one member, as the scanner would say it:
 * strings stay borrowed from the tree. */
static void describe(json_t *value, event_field *field)
{
    memset(field, 0, sizeof *field);
    if (value == NULL || json_is_null(value)) {
        field->kind = FIELD_ABSENT;
    } else if (json_is_string(value)) {
        field->kind = FIELD_STRING;
        field->text = json_string_value(value);
        field->len = json_string_length(value);
    } else if (json_is_integer(value)) {
        field->kind = FIELD_INTEGER;
        field->integer = (int64_t)json_integer_value(value);
    } else if (json_is_object(value)) {
        field->kind = FIELD_OBJECT;
    } else {
        field->kind = FIELD_OTHER;
    }
}

/* The members check_fields reads, from an object's tree (borrowed). */
static void fields_of_tree(json_t *root, event_fields *f)
{
    for (int i = 0; i < TOP__COUNT; i++)
        describe(json_object_get(root, eventscan_top_names[i]), &f->top[i]);
    json_t *data = json_object_get(root, eventscan_top_names[TOP_DATA]);
    for (int i = 0; i < DATA__COUNT; i++)
        describe(json_is_object(data) ? json_object_get(data, eventscan_data_names[i]) : NULL,
                 &f->data[i]);
}

/* jansson's error text quotes the token it stopped at, which may be a raw
 * control character (ESC, say) or, cut by jansson or by msg_size, half a
 * UTF-8 character. The reason becomes the DLQ's tally-error-message header,
 * read by people and tools: such bytes become '?'. */
static void make_header_safe(char *msg)
{
    size_t len = strlen(msg);
    for (size_t at = 0; at < len;) {
        size_t n = utf8_sequence(msg + at, len - at);
        if (n == 0 || (n == 1 && ((unsigned char)msg[at] < 0x20 || msg[at] == 0x7f))) {
            msg[at] = '?';
            n = 1;
        }
        at += n;
    }
}

static event_error check_size(const char *payload, size_t len, const event_limits *limits,
                              char *msg, size_t msg_size)
{
    if (payload == NULL || len == 0)
        return fail(msg, msg_size, EVENT_ERR_EMPTY, "message value is %s", "empty");
    if (len > limits->max_bytes) {
        snprintf(msg, msg_size, "message value is %zu bytes, above the limit of %zu", len,
                 limits->max_bytes);
        return EVENT_ERR_TOO_LARGE;
    }
    return EVENT_OK;
}

static event_error finish(event_error err, char *msg, size_t msg_size)
{
    if (err == EVENT_OK && msg_size > 0)
        msg[0] = '\0';
    return err;
}

/* Parses with jansson: its tree, its acceptance and its error text. */
static event_error parse_with_jansson(const char *payload, size_t len,
                                      const event_limits *limits, usage_event *out, char *msg,
                                      size_t msg_size)
{
    pthread_once(&arena_once, arena_install);
    arena_used = 0;
    arena_active = 1;
    json_error_t jerr;
    json_t *root = json_loadb(payload, len, JSON_REJECT_DUPLICATES | JSON_DECODE_ANY, &jerr);
    if (root == NULL) {
        arena_active = 0;
        /* jansson accepts only valid UTF-8, so the (costlier) check is needed
         * only to say why a value was refused. */
        if (!utf8_valid(payload, len))
            return fail(msg, msg_size, EVENT_ERR_INVALID_UTF8, "message value is not valid %s",
                        "UTF-8");
        snprintf(msg, msg_size, "invalid JSON at line %d column %d: %s", jerr.line, jerr.column,
                 jerr.text);
        if (msg_size > 0)
            make_header_safe(msg);
        return EVENT_ERR_INVALID_JSON;
    }
    event_error err;
    if (!json_is_object(root)) {
        err = fail(msg, msg_size, EVENT_ERR_NOT_OBJECT, "event must be a JSON %s", "object");
    } else {
        event_fields fields;
        fields_of_tree(root, &fields);
        err = check_fields(&fields, limits, out, msg, msg_size);
    }
    json_decref(root);
    arena_active = 0;
    return err;
}

event_error event_parse(const char *payload, size_t len, const event_limits *limits,
                        usage_event *out, char *msg, size_t msg_size)
{
    event_error err = check_size(payload, len, limits, msg, msg_size);
    if (err != EVENT_OK)
        return err;
    /* Most events are plain: scanned in one pass, no tree built. The
     * scanner gives up on anything it is not sure jansson accepts. */
    event_fields fields;
    if (eventscan_fields(payload, len, &fields))
        err = check_fields(&fields, limits, out, msg, msg_size);
    else
        err = parse_with_jansson(payload, len, limits, out, msg, msg_size);
    return finish(err, msg, msg_size);
}

event_error event_parse_jansson(const char *payload, size_t len, const event_limits *limits,
                                usage_event *out, char *msg, size_t msg_size)
{
    event_error err = check_size(payload, len, limits, msg, msg_size);
    if (err != EVENT_OK)
        return err;
    return finish(parse_with_jansson(payload, len, limits, out, msg, msg_size), msg, msg_size);
}

bool usage_event_equal(const usage_event *a, const usage_event *b)
{
    return strcmp(a->id, b->id) == 0 && strcmp(a->source, b->source) == 0 &&
           strcmp(a->type, b->type) == 0 && strcmp(a->subject, b->subject) == 0 &&
           strcmp(a->method, b->method) == 0 && strcmp(a->endpoint, b->endpoint) == 0 &&
           a->time_usec == b->time_usec && a->status == b->status && a->units == b->units &&
           a->bytes == b->bytes;
}
