/* Unit tests for common/eventscan, the one-pass scanner in front of
 * jansson: on the inputs where a hand-written JSON reader could part from
 * jansson (repeated names, escapes, \u0000, surrogates, numbers, literals,
 * nesting), event_parse must give exactly event_parse_jansson's answer
 * (code, reason, fields) and the code docs/CONTRACT.md §3 names; and the
 * scanner must answer for plain events, since that is its whole point.
 * tests/fuzz/eventdiff.c checks the same on mutated inputs. */
#include <check.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "event.h"
#include "eventscan.h"
#include "suites.h"

#define NOW INT64_C(1795435200000000) /* 2026-11-23T12:00:00Z */

static const event_limits limits = {
    .now_usec = NOW,
    .lateness_usec = EVENT_LATENESS_DEFAULT_USEC,
    .max_bytes = EVENT_MAX_BYTES_DEFAULT,
};

#define HEAD                                                                                 \
    "{\"specversion\":\"1.0\",\"source\":\"gw\",\"type\":\"t\",\"subject\":\"k\","            \
    "\"time\":\"2026-11-23T11:59:00Z\","

typedef struct {
    const char *json;
    event_error code;
    bool scanned; /* the scanner answers (else it leaves the input to jansson) */
} scan_case;

static const scan_case cases[] = {
    /* plain events */
    {HEAD "\"id\":\"e1\",\"data\":{\"method\":\"get\",\"endpoint\":\"/a\",\"status\":200,"
          "\"units\":3,\"bytes\":512}}", EVENT_OK, true},
    {HEAD "\"id\":\"e1\"}", EVENT_OK, true},
    {" \t\r\n" HEAD "\"id\" : \"e1\" , \"data\" : { } } \n", EVENT_OK, true},
    {HEAD "\"id\":\"e1\",\"data\":null}", EVENT_OK, true},
    {HEAD "\"id\":\"e1\",\"x\":[1,[true,false,null],{\"id\":2},\"\",-0],\"\":{}}", EVENT_OK, true},
    {HEAD "\"id\":\"del\x7f\"}", EVENT_OK, true},
    /* repeated member names, at any depth; the same name in two objects is fine */
    {HEAD "\"id\":\"e1\",\"id\":\"e1\"}", EVENT_ERR_INVALID_JSON, false},
    {HEAD "\"id\":\"e1\",\"data\":{\"units\":1,\"units\":1}}", EVENT_ERR_INVALID_JSON, false},
    {HEAD "\"id\":\"e1\",\"x\":[{\"a\":1,\"a\":1}]}", EVENT_ERR_INVALID_JSON, false},
    {HEAD "\"id\":\"e1\",\"data\":{\"id\":\"e1\",\"data\":{}}}", EVENT_OK, true},
    /* a name written once plainly and once escaped is still repeated */
    {HEAD "\"id\":\"e1\",\"\\u0069d\":\"e2\"}", EVENT_ERR_INVALID_JSON, false},
    /* escapes: decoded by jansson */
    {HEAD "\"id\":\"a\\/b\\\"c\\\\d\\te\"}", EVENT_OK, false},
    {HEAD "\"id\":\"\\u00e9\\ud83d\\ude00\"}", EVENT_OK, false},
    {HEAD "\"id\":\"a\\u0000b\"}", EVENT_ERR_INVALID_JSON, false},
    {HEAD "\"id\":\"\\ud800\"}", EVENT_ERR_INVALID_JSON, false},
    {HEAD "\"id\":\"\\udc00\\ud800\"}", EVENT_ERR_INVALID_JSON, false},
    {HEAD "\"id\":\"\\x\"}", EVENT_ERR_INVALID_JSON, false},
    {HEAD "\"id\":\"raw\ttab\"}", EVENT_ERR_INVALID_JSON, false},
    {HEAD "\"id\":\"\xc3\xa9\"}", EVENT_OK, false},
    {HEAD "\"id\":\"\xed\xa0\x80\"}", EVENT_ERR_INVALID_UTF8, false}, /* encoded surrogate */
    /* numbers */
    {HEAD "\"id\":\"e1\",\"data\":{\"units\":0}}", EVENT_OK, true},
    {HEAD "\"id\":\"e1\",\"data\":{\"units\":-0}}", EVENT_OK, true},
    {HEAD "\"id\":\"e1\",\"data\":{\"units\":-1}}", EVENT_ERR_INVALID_FIELD, true},
    {HEAD "\"id\":\"e1\",\"data\":{\"units\":1000000001}}", EVENT_ERR_INVALID_FIELD, true},
    {HEAD "\"id\":\"e1\",\"data\":{\"bytes\":999999999999999999}}", EVENT_ERR_INVALID_FIELD, true},
    {HEAD "\"id\":\"e1\",\"data\":{\"bytes\":9223372036854775807}}", EVENT_ERR_INVALID_FIELD, false},
    {HEAD "\"id\":\"e1\",\"data\":{\"bytes\":9223372036854775808}}", EVENT_ERR_INVALID_JSON, false},
    {HEAD "\"id\":\"e1\",\"data\":{\"units\":1.0}}", EVENT_ERR_INVALID_FIELD, false},
    {HEAD "\"id\":\"e1\",\"data\":{\"units\":1e3}}", EVENT_ERR_INVALID_FIELD, false},
    {HEAD "\"id\":\"e1\",\"x\":1e999}", EVENT_ERR_INVALID_JSON, false},
    {HEAD "\"id\":\"e1\",\"data\":{\"units\":01}}", EVENT_ERR_INVALID_JSON, false},
    {HEAD "\"id\":\"e1\",\"data\":{\"units\":+1}}", EVENT_ERR_INVALID_JSON, false},
    {HEAD "\"id\":\"e1\",\"data\":{\"units\":-}}", EVENT_ERR_INVALID_JSON, false},
    {HEAD "\"id\":\"e1\",\"data\":{\"units\":.5}}", EVENT_ERR_INVALID_JSON, false},
    {HEAD "\"id\":\"e1\",\"data\":{\"units\":1x}}", EVENT_ERR_INVALID_JSON, false},
    {HEAD "\"id\":\"e1\",\"data\":{\"units\":\"1\"}}", EVENT_ERR_INVALID_FIELD, true},
    /* literals */
    {HEAD "\"id\":\"e1\",\"data\":{\"units\":true}}", EVENT_ERR_INVALID_FIELD, true},
    {HEAD "\"id\":\"e1\",\"data\":{\"units\":null}}", EVENT_OK, true},
    {HEAD "\"id\":\"e1\",\"x\":truex}", EVENT_ERR_INVALID_JSON, false},
    {HEAD "\"id\":\"e1\",\"x\":nul}", EVENT_ERR_INVALID_JSON, false},
    {HEAD "\"id\":\"e1\",\"x\":NULL}", EVENT_ERR_INVALID_JSON, false},
    /* structure */
    {HEAD "\"id\":\"e1\"} x", EVENT_ERR_INVALID_JSON, false},
    {HEAD "\"id\":\"e1\"}{}", EVENT_ERR_INVALID_JSON, false},
    {HEAD "\"id\":\"e1\",}", EVENT_ERR_INVALID_JSON, false},
    {HEAD "\"id\":\"e1\",\"x\":[1,]}", EVENT_ERR_INVALID_JSON, false},
    {HEAD "\"id\" \"e1\"}", EVENT_ERR_INVALID_JSON, false},
    {HEAD "\"id\":\"e1\"", EVENT_ERR_INVALID_JSON, false},
    {HEAD "\"id\":\"e1\"}\f", EVENT_ERR_INVALID_JSON, false},
    {"\xef\xbb\xbf{}", EVENT_ERR_INVALID_JSON, false},
    {"[{}]", EVENT_ERR_NOT_OBJECT, false},
    {"\"{}\"", EVENT_ERR_NOT_OBJECT, false},
    {"{}", EVENT_ERR_MISSING_FIELD, true},
    {"{\"specversion\":1.0}", EVENT_ERR_UNSUPPORTED_SPECVERSION, false},
    {"{\"specversion\":[]}", EVENT_ERR_UNSUPPORTED_SPECVERSION, true},
};

/* event_parse and event_parse_jansson on an exact-size heap copy of
 * `len` bytes (ASan sees any read past it); asserts they agree. */
static event_error parse_both(const char *json, size_t len, bool *scanned)
{
    char *copy = malloc(len > 0 ? len : 1);
    ck_assert_ptr_nonnull(copy);
    memcpy(copy, json, len);
    usage_event fast, reference;
    char fast_msg[200], reference_msg[200];
    event_error fast_err = event_parse(copy, len, &limits, &fast, fast_msg, sizeof fast_msg);
    event_error reference_err =
        event_parse_jansson(copy, len, &limits, &reference, reference_msg, sizeof reference_msg);
    event_fields fields;
    *scanned = eventscan_fields(copy, len, &fields);
    free(copy);
    ck_assert_msg(fast_err == reference_err, "%s: %s, jansson alone %s", json,
                  event_error_code(fast_err), event_error_code(reference_err));
    ck_assert_msg(strcmp(fast_msg, reference_msg) == 0, "%s: \"%s\", jansson alone \"%s\"", json,
                  fast_msg, reference_msg);
    ck_assert_msg(fast_err != EVENT_OK || usage_event_equal(&fast, &reference), "%s: fields differ",
                  json);
    return fast_err;
}

START_TEST(scanner_agrees_with_jansson_on_edge_cases)
{
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        bool scanned;
        event_error got = parse_both(cases[i].json, strlen(cases[i].json), &scanned);
        ck_assert_msg(got == cases[i].code, "%s: expected %s, got %s", cases[i].json,
                      event_error_code(cases[i].code), event_error_code(got));
        ck_assert_msg(scanned == cases[i].scanned, "%s: the scanner %s", cases[i].json,
                      scanned ? "answered" : "gave up");
    }
}
END_TEST

START_TEST(scanner_reads_a_plain_event_as_jansson_does)
{
    static const char json[] = HEAD "\"id\":\"e1\",\"data\":{\"method\":\"get\",\"endpoint\":"
                                    "\"/items/{id}\",\"status\":599,\"units\":1000000000,"
                                    "\"bytes\":1000000000000}}";
    event_fields f;
    ck_assert(eventscan_fields(json, strlen(json), &f));
    ck_assert_int_eq(f.top[TOP_DATA].kind, FIELD_OBJECT);
    ck_assert_int_eq(f.data[DATA_BYTES].kind, FIELD_INTEGER);
    ck_assert_int_eq(f.data[DATA_BYTES].integer, INT64_C(1000000000000));
    ck_assert_int_eq(f.data[DATA_METHOD].kind, FIELD_STRING);
    ck_assert_uint_eq(f.data[DATA_METHOD].len, 3);
    bool scanned;
    ck_assert_int_eq(parse_both(json, strlen(json), &scanned), EVENT_OK);
    ck_assert(scanned);
}
END_TEST

/* An embedded NUL byte is not JSON, wherever it stands. */
START_TEST(raw_nul_bytes_are_left_to_jansson)
{
    static const char inside[] = HEAD "\"id\":\"e\0\"}";
    static const char after[] = HEAD "\"id\":\"e\"}\0";
    bool scanned;
    ck_assert_int_eq(parse_both(inside, sizeof inside - 1, &scanned), EVENT_ERR_INVALID_JSON);
    ck_assert(!scanned);
    ck_assert_int_eq(parse_both(after, sizeof after - 1, &scanned), EVENT_ERR_INVALID_JSON);
    ck_assert(!scanned);
}
END_TEST

/* Past its bounds (nesting, members per object) the scanner gives up and
 * jansson, which allows more, answers. */
static void nested(char *out, size_t size, int depth)
{
    size_t used = (size_t)snprintf(out, size, HEAD "\"id\":\"e1\",\"x\":");
    for (int i = 0; i < depth; i++)
        out[used++] = '[';
    for (int i = 0; i < depth; i++)
        out[used++] = ']';
    out[used++] = '}';
    out[used] = '\0';
    ck_assert_uint_lt(used, size);
}

START_TEST(scanner_bounds_leave_the_rest_to_jansson)
{
    char json[4096];
    bool scanned;
    nested(json, sizeof json, 10);
    ck_assert_int_eq(parse_both(json, strlen(json), &scanned), EVENT_OK);
    ck_assert(scanned);
    nested(json, sizeof json, 40);
    ck_assert_int_eq(parse_both(json, strlen(json), &scanned), EVENT_OK);
    ck_assert(!scanned);
    size_t used = (size_t)snprintf(json, sizeof json, HEAD "\"id\":\"e1\"");
    for (int i = 0; i < 40; i++)
        used += (size_t)snprintf(json + used, sizeof json - used, ",\"m%d\":%d", i, i);
    snprintf(json + used, sizeof json - used, "}");
    ck_assert_int_eq(parse_both(json, strlen(json), &scanned), EVENT_OK);
    ck_assert(!scanned);
}
END_TEST

Suite *eventscan_suite(void)
{
    Suite *s = suite_create("eventscan");
    TCase *tc = tcase_create("agrees with jansson");
    tcase_add_test(tc, scanner_agrees_with_jansson_on_edge_cases);
    tcase_add_test(tc, scanner_reads_a_plain_event_as_jansson_does);
    tcase_add_test(tc, raw_nul_bytes_are_left_to_jansson);
    tcase_add_test(tc, scanner_bounds_leave_the_rest_to_jansson);
    suite_add_tcase(s, tc);
    return s;
}
