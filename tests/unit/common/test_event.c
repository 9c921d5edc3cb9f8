/* Unit tests for common/event: CloudEvents usage-event validation
 * (docs/CONTRACT.md §3) and its stable rejection codes. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "digest.h"
#include "event.h"
#include "suites.h"
#include "timeutil.h"
#include "utf8.h"

/* The clock every test judges event times against: 2026-11-23T12:00:00Z. */
#define NOW INT64_C(1795435200000000)

static const event_limits default_limits = {
    .now_usec = NOW,
    .lateness_usec = EVENT_LATENESS_DEFAULT_USEC,
    .max_bytes = EVENT_MAX_BYTES_DEFAULT,
};

/* The members of a valid event, in order; build_event() replaces or drops one. */
typedef struct {
    const char *name;
    const char *json; /* raw JSON value */
} member;

static const member base_members[] = {
    {"specversion", "\"1.0\""},
    {"id", "\"9b2f0c1e\""},
    {"source", "\"gw-eu-1\""},
    {"type", "\"api.request\""},
    {"subject", "\"key_123\""},
    {"time", "\"2026-11-23T12:00:00.123Z\""},
    {"data", "{\"method\":\"GET\",\"endpoint\":\"/items\",\"status\":200,\"units\":3,\"bytes\":512}"},
};
#define BASE_MEMBER_COUNT (sizeof base_members / sizeof base_members[0])

/* Writes the base event into buf with member `name` set to the raw JSON
 * `json`, or left out when json is NULL (name NULL: the base event). */
static void build_event(char *buf, size_t size, const char *name, const char *json)
{
    size_t used = 0;
    bool first = true;
    used += (size_t)snprintf(buf + used, size - used, "{");
    for (size_t i = 0; i < BASE_MEMBER_COUNT; i++) {
        const char *value = base_members[i].json;
        if (name != NULL && strcmp(base_members[i].name, name) == 0) {
            if (json == NULL)
                continue;
            value = json;
        }
        used += (size_t)snprintf(buf + used, size - used, "%s\"%s\":%s", first ? "" : ",",
                                 base_members[i].name, value);
        first = false;
        ck_assert_uint_lt(used, size);
    }
    used += (size_t)snprintf(buf + used, size - used, "}");
    ck_assert_uint_lt(used, size);
}

/* A JSON string literal of n copies of `unit` (e.g. "a" or "\xC3\xA9"),
 * optionally after a prefix. Returns a new heap string; the caller frees. */
static char *json_repeat(const char *prefix, const char *unit, size_t n)
{
    size_t size = strlen(prefix) + strlen(unit) * n + 3;
    char *s = malloc(size);
    ck_assert_ptr_nonnull(s);
    size_t used = (size_t)snprintf(s, size, "\"%s", prefix);
    for (size_t i = 0; i < n; i++) {
        memcpy(s + used, unit, strlen(unit));
        used += strlen(unit);
    }
    s[used++] = '"';
    s[used] = '\0';
    return s;
}

/* Parses `len` bytes from an exact-size heap copy (no NUL after it), so ASan
 * catches any read past the payload. */
static event_error parse_bytes(const char *payload, size_t len, const event_limits *limits,
                               usage_event *ev, char *msg, size_t msg_size)
{
    char *copy = malloc(len > 0 ? len : 1);
    ck_assert_ptr_nonnull(copy);
    memcpy(copy, payload, len);
    event_error err = event_parse(copy, len, limits, ev, msg, msg_size);
    free(copy);
    return err;
}

static event_error parse_text(const char *payload, usage_event *ev, char *msg, size_t msg_size)
{
    return parse_bytes(payload, strlen(payload), &default_limits, ev, msg, msg_size);
}

/* Asserts `payload` is rejected with `expected`, and that the message
 * contains `needle` (a field name) when needle is not NULL. */
static void assert_rejected(const char *payload, event_error expected, const char *needle)
{
    usage_event ev;
    char msg[256] = "";
    event_error got = parse_text(payload, &ev, msg, sizeof msg);
    ck_assert_msg(got == expected, "%s: expected %s, got %s (%s)", payload,
                  event_error_code(expected), event_error_code(got), msg);
    ck_assert_msg(msg[0] != '\0', "%s: no message", payload);
    ck_assert_msg(strchr(msg, '\n') == NULL, "message is not one line: %s", msg);
    if (needle != NULL)
        ck_assert_msg(strstr(msg, needle) != NULL, "%s: message \"%s\" does not name %s",
                      payload, msg, needle);
}

static void assert_member_rejected(const char *name, const char *json, event_error expected,
                                   const char *needle)
{
    char buf[16384];
    build_event(buf, sizeof buf, name, json);
    assert_rejected(buf, expected, needle);
}

static void assert_member_accepted(const char *name, const char *json, usage_event *ev)
{
    char buf[16384];
    char msg[256] = "";
    build_event(buf, sizeof buf, name, json);
    event_error got = parse_text(buf, ev, msg, sizeof msg);
    ck_assert_msg(got == EVENT_OK, "%s: expected ok, got %s (%s)", buf, event_error_code(got),
                  msg);
}

/* ---- valid events ---- */

START_TEST(valid_event_fills_every_field)
{
    char buf[4096];
    build_event(buf, sizeof buf, NULL, NULL);
    usage_event ev;
    memset(&ev, 0x5a, sizeof ev);
    char msg[128] = "stale";
    ck_assert_int_eq(parse_text(buf, &ev, msg, sizeof msg), EVENT_OK);
    ck_assert_str_eq(msg, "");
    ck_assert_str_eq(ev.id, "9b2f0c1e");
    ck_assert_str_eq(ev.source, "gw-eu-1");
    ck_assert_str_eq(ev.type, "api.request");
    ck_assert_str_eq(ev.subject, "key_123");
    ck_assert_int_eq(ev.time_usec, NOW + 123000);
    ck_assert_str_eq(ev.method, "GET");
    ck_assert_str_eq(ev.endpoint, "/items");
    ck_assert_int_eq(ev.status, 200);
    ck_assert_int_eq(ev.units, 3);
    ck_assert_int_eq(ev.bytes, 512);
}
END_TEST

START_TEST(valid_event_defaults_without_data)
{
    /* Absent data, null data, empty data and null members all give defaults. */
    static const char *const variants[] = {
        NULL, "null", "{}", "{\"units\":null,\"bytes\":null,\"status\":null,\"method\":null,"
                            "\"endpoint\":null}",
    };
    for (size_t i = 0; i < sizeof variants / sizeof variants[0]; i++) {
        usage_event ev;
        memset(&ev, 0x5a, sizeof ev);
        assert_member_accepted("data", variants[i], &ev);
        ck_assert_int_eq(ev.units, 1);
        ck_assert_int_eq(ev.bytes, 0);
        ck_assert_int_eq(ev.status, -1);
        ck_assert_str_eq(ev.method, "");
        ck_assert_str_eq(ev.endpoint, "");
        ck_assert_str_eq(ev.id, "9b2f0c1e");
        ck_assert_int_eq(ev.time_usec, NOW + 123000);
    }
    /* Partial data: the members present, defaults for the rest. */
    usage_event ev;
    assert_member_accepted("data", "{\"units\":0}", &ev);
    ck_assert_int_eq(ev.units, 0);
    ck_assert_int_eq(ev.bytes, 0);
    ck_assert_int_eq(ev.status, -1);
    assert_member_accepted("data", "{\"status\":404}", &ev);
    ck_assert_int_eq(ev.units, 1);
    ck_assert_int_eq(ev.status, 404);
}
END_TEST

START_TEST(valid_event_method_uppercased)
{
    usage_event ev;
    assert_member_accepted("data", "{\"method\":\"get\"}", &ev);
    ck_assert_str_eq(ev.method, "GET");
    assert_member_accepted("data", "{\"method\":\"PaTcH\"}", &ev);
    ck_assert_str_eq(ev.method, "PATCH");
    assert_member_accepted("data", "{\"method\":\"OPTIONS\"}", &ev);
    ck_assert_str_eq(ev.method, "OPTIONS");
    assert_member_accepted("data", "{\"method\":\"abcdefghijklmnop\"}", &ev); /* 16 letters */
    ck_assert_str_eq(ev.method, "ABCDEFGHIJKLMNOP");
}
END_TEST

START_TEST(valid_event_unicode)
{
    usage_event ev;
    /* Raw UTF-8 and \u escapes both arrive as UTF-8 bytes. */
    assert_member_accepted("data", "{\"endpoint\":\"/caf\xC3\xA9/\xE6\x97\xA5\xE6\x9C\xAC/\xF0\x9F\x98\x80\"}",
                           &ev);
    ck_assert_str_eq(ev.endpoint, "/caf\xC3\xA9/\xE6\x97\xA5\xE6\x9C\xAC/\xF0\x9F\x98\x80");
    assert_member_accepted("data", "{\"endpoint\":\"/caf\\u00e9/\\ud83d\\ude00\"}", &ev);
    ck_assert_str_eq(ev.endpoint, "/caf\xC3\xA9/\xF0\x9F\x98\x80");
    assert_member_accepted("subject", "\"cl\xC3\xA9-\xE2\x82\xAC\"", &ev);
    ck_assert_str_eq(ev.subject, "cl\xC3\xA9-\xE2\x82\xAC");
}
END_TEST

START_TEST(valid_event_extra_attributes_and_whitespace)
{
    usage_event ev;
    char msg[128];
    const char *payload =
        " \n{ \"specversion\" : \"1.0\" ,\t\"id\":\"a\",\"source\":\"s\",\"type\":\"t\","
        "\"subject\":\"k\",\"time\":\"2026-11-23t13:00:00+01:00\","
        "\"datacontenttype\":\"application/json\",\"traceparent\":\"00-abc\",\"x\":[1,{\"y\":null}]"
        "}\r\n";
    ck_assert_int_eq(parse_text(payload, &ev, msg, sizeof msg), EVENT_OK);
    ck_assert_int_eq(ev.time_usec, NOW);
    ck_assert_int_eq(ev.units, 1);
    ck_assert_str_eq(ev.id, "a");
}
END_TEST

START_TEST(valid_event_length_limits_inclusive)
{
    usage_event ev;
    char *s = json_repeat("", "i", EVENT_MAX_ID_LEN);
    assert_member_accepted("id", s, &ev);
    ck_assert_uint_eq(strlen(ev.id), EVENT_MAX_ID_LEN);
    free(s);
    s = json_repeat("", "s", EVENT_MAX_ID_LEN);
    assert_member_accepted("source", s, &ev);
    ck_assert_uint_eq(strlen(ev.source), EVENT_MAX_ID_LEN);
    free(s);
    s = json_repeat("", "t", EVENT_MAX_ID_LEN);
    assert_member_accepted("type", s, &ev);
    ck_assert_uint_eq(strlen(ev.type), EVENT_MAX_ID_LEN);
    free(s);
    s = json_repeat("", "k", EVENT_MAX_SUBJECT_LEN);
    assert_member_accepted("subject", s, &ev);
    ck_assert_uint_eq(strlen(ev.subject), EVENT_MAX_SUBJECT_LEN);
    free(s);

    char data[600];
    s = json_repeat("/", "e", EVENT_MAX_ENDPOINT_LEN - 1);
    snprintf(data, sizeof data, "{\"endpoint\":%s}", s);
    assert_member_accepted("data", data, &ev);
    ck_assert_uint_eq(strlen(ev.endpoint), EVENT_MAX_ENDPOINT_LEN);
    free(s);
    /* 128 two-byte characters: 256 bytes. */
    s = json_repeat("", "\xC3\xA9", EVENT_MAX_ENDPOINT_LEN / 2);
    snprintf(data, sizeof data, "{\"endpoint\":%s}", s);
    assert_member_accepted("data", data, &ev);
    ck_assert_uint_eq(strlen(ev.endpoint), EVENT_MAX_ENDPOINT_LEN);
    free(s);
}
END_TEST

START_TEST(valid_event_numeric_limits_inclusive)
{
    usage_event ev;
    assert_member_accepted("data", "{\"units\":0,\"bytes\":0,\"status\":100}", &ev);
    ck_assert_int_eq(ev.units, 0);
    ck_assert_int_eq(ev.bytes, 0);
    ck_assert_int_eq(ev.status, 100);
    assert_member_accepted("data",
                           "{\"units\":1000000000,\"bytes\":1000000000000,\"status\":599}",
                           &ev);
    ck_assert_int_eq(ev.units, EVENT_MAX_UNITS);
    ck_assert_int_eq(ev.bytes, EVENT_MAX_BYTES_FIELD);
    ck_assert_int_eq(ev.status, 599);
}
END_TEST

/* ---- rejections before JSON ---- */

START_TEST(rejects_empty)
{
    usage_event ev;
    char msg[128] = "";
    ck_assert_int_eq(event_parse(NULL, 0, &default_limits, &ev, msg, sizeof msg), EVENT_ERR_EMPTY);
    ck_assert_ptr_nonnull(strstr(msg, "empty"));
    ck_assert_int_eq(event_parse("{}", 0, &default_limits, &ev, msg, sizeof msg), EVENT_ERR_EMPTY);
    ck_assert_int_eq(event_parse(NULL, 12, &default_limits, &ev, msg, sizeof msg),
                     EVENT_ERR_EMPTY);
}
END_TEST

START_TEST(rejects_too_large)
{
    char buf[4096];
    build_event(buf, sizeof buf, NULL, NULL);
    size_t len = strlen(buf);
    usage_event ev;
    char msg[256];
    event_limits limits = default_limits;
    limits.max_bytes = len;
    ck_assert_int_eq(parse_bytes(buf, len, &limits, &ev, msg, sizeof msg), EVENT_OK);
    limits.max_bytes = len - 1;
    ck_assert_int_eq(parse_bytes(buf, len, &limits, &ev, msg, sizeof msg), EVENT_ERR_TOO_LARGE);
    /* The size is checked first: even garbage is too_large, not invalid. */
    limits.max_bytes = 4;
    ck_assert_int_eq(parse_bytes("\xFF\xFF\xFF\xFF\xFF", 5, &limits, &ev, msg, sizeof msg),
                     EVENT_ERR_TOO_LARGE);
    ck_assert_ptr_nonnull(strstr(msg, "5 bytes"));
    ck_assert_ptr_nonnull(strstr(msg, "4"));

    /* Default limit: a valid event padded with whitespace to 65536 bytes is
     * accepted, one byte more is not. */
    size_t big = EVENT_MAX_BYTES_DEFAULT + 1;
    char *padded = malloc(big);
    ck_assert_ptr_nonnull(padded);
    memset(padded, ' ', big);
    memcpy(padded, buf, len);
    ck_assert_int_eq(parse_bytes(padded, big - 1, &default_limits, &ev, msg, sizeof msg),
                     EVENT_OK);
    ck_assert_int_eq(parse_bytes(padded, big, &default_limits, &ev, msg, sizeof msg),
                     EVENT_ERR_TOO_LARGE);
    ck_assert_ptr_nonnull(strstr(msg, "65537"));
    free(padded);
}
END_TEST

START_TEST(rejects_invalid_utf8)
{
    static const char *const bad[] = {
        "{\"id\":\"\xC0\x80\"}",                /* overlong NUL */
        "{\"id\":\"\xE0\x80\xAF\"}",            /* overlong slash */
        "{\"id\":\"\xED\xA0\x80\"}",            /* surrogate */
        "{\"id\":\"\xF4\x90\x80\x80\"}",        /* above U+10FFFF */
        "{\"id\":\"\xF5\x80\x80\x80\"}",
        "{\"id\":\"\xFF\"}",
        "{\"\xC3\":1}",                         /* truncated inside a key */
        "{\"id\":\"x\"}\xE2\x82",               /* truncated at the end */
        "\x80{}",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        assert_rejected(bad[i], EVENT_ERR_INVALID_UTF8, "UTF-8");
    /* Inside an otherwise valid event. */
    assert_member_rejected("data", "{\"endpoint\":\"/a\xED\xBF\xBF\"}", EVENT_ERR_INVALID_UTF8,
                           NULL);
}
END_TEST

/* ---- JSON shape ---- */

START_TEST(rejects_invalid_json)
{
    static const char *const bad[] = {
        "{", "}", "not json", "{\"a\":}", "{'a':1}", "{\"a\":1,}", "{\"a\" 1}", "{} {}",
        "{\"a\":1}garbage", "{\"a\":tru}", "{\"a\":\"\\u0000\"}", "{\"a\":\"\\ud800\"}",
        "{\"a\":\"\\x41\"}", "{\"a\":01}", "{\"a\":NaN}", "{\"a\":\"line\nbreak\"}", " ",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        assert_rejected(bad[i], EVENT_ERR_INVALID_JSON, "JSON");
    /* A NUL byte inside the payload is valid UTF-8 but not JSON. */
    usage_event ev;
    char msg[128];
    ck_assert_int_eq(parse_bytes("{}\0", 3, &default_limits, &ev, msg, sizeof msg),
                     EVENT_ERR_INVALID_JSON);
}
END_TEST

START_TEST(rejects_duplicate_members_as_invalid_json)
{
    char buf[4096];
    build_event(buf, sizeof buf, NULL, NULL);
    /* Same id twice at the top level (dedup is keyed on it: ambiguity is fatal). */
    char dup[4200];
    snprintf(dup, sizeof dup, "{\"id\":\"other\",%s", buf + 1);
    assert_rejected(dup, EVENT_ERR_INVALID_JSON, NULL);
    snprintf(dup, sizeof dup, "{\"specversion\":\"1.0\",%s", buf + 1);
    assert_rejected(dup, EVENT_ERR_INVALID_JSON, NULL);
    /* Inside data. */
    assert_member_rejected("data", "{\"units\":1,\"units\":1000}", EVENT_ERR_INVALID_JSON, NULL);
}
END_TEST

START_TEST(rejects_array_as_not_object)
{
    assert_rejected("[]", EVENT_ERR_NOT_OBJECT, "object");
    assert_rejected("[{\"specversion\":\"1.0\"}]", EVENT_ERR_NOT_OBJECT, "object");
    assert_rejected("  [ 1, 2 ]\n", EVENT_ERR_NOT_OBJECT, "object");
}
END_TEST

START_TEST(rejects_scalar_as_not_object)
{
    /* Valid JSON texts (RFC 8259 allows any value at the top), so event.h's
     * "JSON, but not an object" applies, not invalid_json. */
    assert_rejected("\"a string\"", EVENT_ERR_NOT_OBJECT, "object");
    assert_rejected("42", EVENT_ERR_NOT_OBJECT, "object");
    assert_rejected("-1.5e3", EVENT_ERR_NOT_OBJECT, "object");
    assert_rejected("null", EVENT_ERR_NOT_OBJECT, "object");
    assert_rejected("true", EVENT_ERR_NOT_OBJECT, "object");
}
END_TEST

/* ---- attributes ---- */

START_TEST(rejects_missing_required_attribute)
{
    static const char *const required[] = {"specversion", "id", "source", "type", "subject",
                                           "time"};
    for (size_t i = 0; i < sizeof required / sizeof required[0]; i++) {
        char needle[32];
        snprintf(needle, sizeof needle, "'%s'", required[i]);
        assert_member_rejected(required[i], NULL, EVENT_ERR_MISSING_FIELD, needle);
        /* null counts as absent */
        assert_member_rejected(required[i], "null", EVENT_ERR_MISSING_FIELD, needle);
    }
    assert_rejected("{}", EVENT_ERR_MISSING_FIELD, "specversion");
}
END_TEST

START_TEST(rejects_wrong_attribute_types)
{
    static const struct {
        const char *name, *json, *needle;
    } cases[] = {
        {"id", "42", "'id'"},
        {"id", "true", "'id'"},
        {"id", "{}", "'id'"},
        {"id", "[\"a\"]", "'id'"},
        {"id", "\"\"", "'id'"},
        {"source", "1", "'source'"},
        {"source", "\"\"", "'source'"},
        {"type", "1", "'type'"},
        {"type", "\"\"", "'type'"},
        {"subject", "7", "'subject'"},
        {"subject", "\"\"", "'subject'"},
        {"data", "[]", "'data'"},
        {"data", "[{\"units\":1}]", "'data'"},
        {"data", "\"units=1\"", "'data'"},
        {"data", "5", "'data'"},
        {"data", "true", "'data'"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        assert_member_rejected(cases[i].name, cases[i].json, EVENT_ERR_INVALID_FIELD,
                               cases[i].needle);
}
END_TEST

START_TEST(rejects_overlong_attributes)
{
    static const struct {
        const char *name;
        size_t max;
    } cases[] = {
        {"id", EVENT_MAX_ID_LEN},
        {"source", EVENT_MAX_ID_LEN},
        {"type", EVENT_MAX_ID_LEN},
        {"subject", EVENT_MAX_SUBJECT_LEN},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char needle[32];
        snprintf(needle, sizeof needle, "'%s'", cases[i].name);
        char *s = json_repeat("", "x", cases[i].max + 1);
        assert_member_rejected(cases[i].name, s, EVENT_ERR_INVALID_FIELD, needle);
        free(s);
        s = json_repeat("", "x", 5000);
        assert_member_rejected(cases[i].name, s, EVENT_ERR_INVALID_FIELD, needle);
        free(s);
    }
    /* Lengths are in bytes: 129 two-byte characters are 258 bytes. */
    char data[600];
    char *s = json_repeat("", "\xC3\xA9", EVENT_MAX_ENDPOINT_LEN / 2 + 1);
    snprintf(data, sizeof data, "{\"endpoint\":%s}", s);
    assert_member_rejected("data", data, EVENT_ERR_INVALID_FIELD, "endpoint");
    free(s);
    s = json_repeat("/", "e", EVENT_MAX_ENDPOINT_LEN);
    snprintf(data, sizeof data, "{\"endpoint\":%s}", s);
    assert_member_rejected("data", data, EVENT_ERR_INVALID_FIELD, "endpoint");
    free(s);
    s = json_repeat("", "G", EVENT_MAX_METHOD_LEN + 1);
    snprintf(data, sizeof data, "{\"method\":%s}", s);
    assert_member_rejected("data", data, EVENT_ERR_INVALID_FIELD, "method");
    free(s);
}
END_TEST

START_TEST(rejects_invalid_data_members)
{
    static const struct {
        const char *data, *needle;
    } cases[] = {
        {"{\"units\":\"5\"}", "units"},
        {"{\"units\":1.5}", "units"},
        {"{\"units\":-1}", "units"},
        {"{\"units\":1000000001}", "units"},
        {"{\"units\":true}", "units"},
        {"{\"units\":[1]}", "units"},
        {"{\"bytes\":-1}", "bytes"},
        {"{\"bytes\":1000000000001}", "bytes"},
        {"{\"bytes\":\"512\"}", "bytes"},
        {"{\"bytes\":0.5}", "bytes"},
        {"{\"status\":99}", "status"},
        {"{\"status\":600}", "status"},
        {"{\"status\":0}", "status"},
        {"{\"status\":-1}", "status"},
        {"{\"status\":\"200\"}", "status"},
        {"{\"status\":200.5}", "status"},
        {"{\"method\":\"G3T\"}", "method"},
        {"{\"method\":\"GET \"}", "method"},
        {"{\"method\":\"GET/POST\"}", "method"},
        {"{\"method\":\"\xC3\xA9\"}", "method"},
        {"{\"method\":\"\"}", "method"},
        {"{\"method\":42}", "method"},
        {"{\"endpoint\":42}", "endpoint"},
        {"{\"endpoint\":\"\"}", "endpoint"},
        {"{\"endpoint\":[\"/a\"]}", "endpoint"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        assert_member_rejected("data", cases[i].data, EVENT_ERR_INVALID_FIELD, cases[i].needle);
}
END_TEST

START_TEST(rejects_unsupported_specversion)
{
    static const char *const bad[] = {
        "\"0.3\"", "1.0", "1", "\"1\"", "\"1.00\"", "\"1.0 \"", "\" 1.0\"", "\"\"", "\"2.0\"",
        "\"1.0.0.0.0.0.0.0.0.0.0\"", "true", "{}", "[\"1.0\"]",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        assert_member_rejected("specversion", bad[i], EVENT_ERR_UNSUPPORTED_SPECVERSION,
                               "specversion");
    /* A long string must not overflow the copy. */
    char *s = json_repeat("1.0", "0", 3000);
    assert_member_rejected("specversion", s, EVENT_ERR_UNSUPPORTED_SPECVERSION, "specversion");
    free(s);
}
END_TEST

START_TEST(rejects_invalid_time)
{
    static const char *const bad[] = {
        "12345", "true", "{}", "[\"2026-11-23T12:00:00Z\"]", "\"\"", "\"2026-11-23 12:00:00Z\"",
        "\"2026-11-23T12:00:00\"", "\"2026-11-23\"", "\"2026-02-30T00:00:00Z\"",
        "\"2026-11-23T24:00:00Z\"", "\"2026-11-23T12:00:00.1234567890Z\"",
        "\"Mon, 23 Nov 2026 12:00:00 GMT\"", "\"1795435200\"",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        assert_member_rejected("time", bad[i], EVENT_ERR_INVALID_TIME, "time");
    char *s = json_repeat("2026-11-23T12:00:00.", "1", 60);
    assert_member_rejected("time", s, EVENT_ERR_INVALID_TIME, "time");
    free(s);
    s = json_repeat("2026-11-23T12:00:00Z", " ", 5000);
    assert_member_rejected("time", s, EVENT_ERR_INVALID_TIME, "time");
    free(s);
}
END_TEST

/* ---- the time window ---- */

START_TEST(time_window_boundaries)
{
    usage_event ev;
    /* now - 35 days = 2026-10-19T12:00:00Z is the oldest accepted instant. */
    assert_member_accepted("time", "\"2026-10-19T12:00:00Z\"", &ev);
    ck_assert_int_eq(ev.time_usec, NOW - EVENT_LATENESS_DEFAULT_USEC);
    assert_member_rejected("time", "\"2026-10-19T11:59:59.999999Z\"", EVENT_ERR_TOO_LATE,
                           "35 days");
    assert_member_rejected("time", "\"2026-10-19T13:59:59.999999+02:00\"", EVENT_ERR_TOO_LATE,
                           "time");
    assert_member_rejected("time", "\"0001-01-01T00:00:00Z\"", EVENT_ERR_TOO_LATE, "time");
    /* now + 5 minutes = 2026-11-23T12:05:00Z is the newest accepted instant. */
    assert_member_accepted("time", "\"2026-11-23T12:05:00Z\"", &ev);
    ck_assert_int_eq(ev.time_usec, NOW + EVENT_FUTURE_TOLERANCE_USEC);
    assert_member_accepted("time", "\"2026-11-23T13:05:00+01:00\"", &ev);
    assert_member_accepted("time", "\"2026-11-23T12:05:00.000000999Z\"", &ev); /* truncated */
    assert_member_rejected("time", "\"2026-11-23T12:05:00.000001Z\"", EVENT_ERR_IN_FUTURE,
                           "future");
    assert_member_rejected("time", "\"2026-11-23T13:05:00.000001+01:00\"", EVENT_ERR_IN_FUTURE,
                           "time");
    assert_member_rejected("time", "\"9999-12-31T23:59:59Z\"", EVENT_ERR_IN_FUTURE, "time");
    /* Exactly now, and a leap second inside the window. */
    assert_member_accepted("time", "\"2026-11-23T12:00:00Z\"", &ev);
    ck_assert_int_eq(ev.time_usec, NOW);
    assert_member_accepted("time", "\"2026-11-23T11:59:60Z\"", &ev);
    ck_assert_int_eq(ev.time_usec, NOW - 1);
}
END_TEST

START_TEST(time_window_custom_lateness)
{
    char buf[4096];
    usage_event ev;
    char msg[256];
    event_limits limits = default_limits;
    limits.lateness_usec = 2 * USEC_PER_DAY;
    build_event(buf, sizeof buf, "time", "\"2026-11-21T12:00:00Z\"");
    ck_assert_int_eq(parse_bytes(buf, strlen(buf), &limits, &ev, msg, sizeof msg), EVENT_OK);
    build_event(buf, sizeof buf, "time", "\"2026-11-21T11:59:59.999999Z\"");
    ck_assert_int_eq(parse_bytes(buf, strlen(buf), &limits, &ev, msg, sizeof msg),
                     EVENT_ERR_TOO_LATE);
    ck_assert_ptr_nonnull(strstr(msg, "2 days"));
    /* The window follows now_usec, not the wall clock. */
    limits.now_usec = INT64_C(951782400000000); /* 2000-02-29 */
    build_event(buf, sizeof buf, "time", "\"2000-02-28T23:00:00Z\"");
    ck_assert_int_eq(parse_bytes(buf, strlen(buf), &limits, &ev, msg, sizeof msg), EVENT_OK);
    build_event(buf, sizeof buf, NULL, NULL);
    ck_assert_int_eq(parse_bytes(buf, strlen(buf), &limits, &ev, msg, sizeof msg),
                     EVENT_ERR_IN_FUTURE);
}
END_TEST

/* ---- messages and codes ---- */

START_TEST(message_buffer_is_bounded)
{
    char buf[4096];
    usage_event ev;
    char small[8];
    memset(small, 'x', sizeof small);
    build_event(buf, sizeof buf, "subject", NULL);
    ck_assert_int_eq(parse_text(buf, &ev, small, sizeof small), EVENT_ERR_MISSING_FIELD);
    ck_assert_uint_eq(strlen(small), sizeof small - 1);
    /* No message buffer at all. */
    ck_assert_int_eq(parse_text(buf, &ev, NULL, 0), EVENT_ERR_MISSING_FIELD);
    build_event(buf, sizeof buf, NULL, NULL);
    ck_assert_int_eq(parse_text(buf, &ev, NULL, 0), EVENT_OK);
    ck_assert_int_eq(parse_text("{", &ev, NULL, 0), EVENT_ERR_INVALID_JSON);
}
END_TEST

START_TEST(message_does_not_echo_long_values)
{
    /* A huge invalid value must not be copied whole into the message. */
    char *s = json_repeat("", "Z", 3000);
    char buf[4096];
    build_event(buf, sizeof buf, "id", s);
    usage_event ev;
    char msg[4096];
    ck_assert_int_eq(parse_text(buf, &ev, msg, sizeof msg), EVENT_ERR_INVALID_FIELD);
    ck_assert_uint_lt(strlen(msg), 200);
    free(s);
}
END_TEST

/* jansson quotes the token it stopped at; the reason is a DLQ header, so no
 * control byte or broken UTF-8 may reach it (found by the event fuzz target). */
START_TEST(invalid_json_reason_is_header_safe)
{
    static const char *const payloads[] = {"null\x1f", "{\"a\":\x01}", "[\xc3\xa9\x02"};
    for (size_t i = 0; i < sizeof payloads / sizeof payloads[0]; i++) {
        usage_event ev;
        char msg[256] = "";
        event_error got = parse_text(payloads[i], &ev, msg, sizeof msg);
        ck_assert_int_eq(got, EVENT_ERR_INVALID_JSON);
        for (const unsigned char *p = (const unsigned char *)msg; *p; p++)
            ck_assert_msg(*p >= 0x20 && *p != 0x7f, "control byte 0x%02x in \"%s\"", *p, msg);
        ck_assert_msg(utf8_valid(msg, strlen(msg)), "reason is not UTF-8: %s", msg);
    }
}
END_TEST

START_TEST(error_codes)
{
    static const char *const expected[EVENT_ERR__COUNT] = {
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
    for (int i = 0; i < EVENT_ERR__COUNT; i++) {
        ck_assert_ptr_nonnull(expected[i]);
        ck_assert_str_eq(event_error_code((event_error)i), expected[i]);
    }
    ck_assert_str_eq(event_error_code(EVENT_ERR__COUNT), "unknown");
    ck_assert_str_eq(event_error_code((event_error)1000), "unknown");
}
END_TEST

START_TEST(fnv1a_known_values)
{
    /* the published FNV-1a 64 test vectors */
    ck_assert_uint_eq(digest_fnv1a("", 0), 0xcbf29ce484222325ULL);
    ck_assert_uint_eq(digest_fnv1a("a", 1), 0xaf63dc4c8601ec8cULL);
    ck_assert_uint_eq(digest_fnv1a("foobar", 6), 0x85944171f73967e8ULL);
}
END_TEST

Suite *event_suite(void)
{
    Suite *s = suite_create("event");
    TCase *valid = tcase_create("valid");
    tcase_add_test(valid, fnv1a_known_values);
    tcase_add_test(valid, valid_event_fills_every_field);
    tcase_add_test(valid, valid_event_defaults_without_data);
    tcase_add_test(valid, valid_event_method_uppercased);
    tcase_add_test(valid, valid_event_unicode);
    tcase_add_test(valid, valid_event_extra_attributes_and_whitespace);
    tcase_add_test(valid, valid_event_length_limits_inclusive);
    tcase_add_test(valid, valid_event_numeric_limits_inclusive);
    suite_add_tcase(s, valid);

    TCase *envelope = tcase_create("envelope");
    tcase_add_test(envelope, rejects_empty);
    tcase_add_test(envelope, rejects_too_large);
    tcase_add_test(envelope, rejects_invalid_utf8);
    tcase_add_test(envelope, rejects_invalid_json);
    tcase_add_test(envelope, invalid_json_reason_is_header_safe);
    tcase_add_test(envelope, rejects_duplicate_members_as_invalid_json);
    tcase_add_test(envelope, rejects_array_as_not_object);
    tcase_add_test(envelope, rejects_scalar_as_not_object);
    suite_add_tcase(s, envelope);

    TCase *fields = tcase_create("fields");
    tcase_add_test(fields, rejects_missing_required_attribute);
    tcase_add_test(fields, rejects_wrong_attribute_types);
    tcase_add_test(fields, rejects_overlong_attributes);
    tcase_add_test(fields, rejects_invalid_data_members);
    tcase_add_test(fields, rejects_unsupported_specversion);
    tcase_add_test(fields, rejects_invalid_time);
    tcase_add_test(fields, time_window_boundaries);
    tcase_add_test(fields, time_window_custom_lateness);
    tcase_add_test(fields, message_buffer_is_bounded);
    tcase_add_test(fields, message_does_not_echo_long_values);
    tcase_add_test(fields, error_codes);
    suite_add_tcase(s, fields);
    return s;
}
