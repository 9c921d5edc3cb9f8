/* Unit tests for services/ingest/ingestbody: the CloudEvents HTTP
 * binding's content types and the splitting of a batch into its events. */
#include <string.h>

#include "ingestbody.h"
#include "suites.h"

START_TEST(modes_of_content_types)
{
    ck_assert_int_eq(ingestbody_mode_of("application/cloudevents+json"), INGESTBODY_STRUCTURED);
    ck_assert_int_eq(ingestbody_mode_of("Application/CloudEvents+JSON; charset=utf-8"),
                     INGESTBODY_STRUCTURED);
    ck_assert_int_eq(ingestbody_mode_of("application/cloudevents-batch+json"), INGESTBODY_BATCH);
    ck_assert_int_eq(ingestbody_mode_of(" application/cloudevents-batch+json ;charset=UTF-8"),
                     INGESTBODY_BATCH);
    /* binary mode, other types, prefixes and suffixes are not ours */
    ck_assert_int_eq(ingestbody_mode_of("application/json"), INGESTBODY_UNSUPPORTED);
    ck_assert_int_eq(ingestbody_mode_of("application/cloudevents"), INGESTBODY_UNSUPPORTED);
    ck_assert_int_eq(ingestbody_mode_of("application/cloudevents+jsonx"), INGESTBODY_UNSUPPORTED);
    ck_assert_int_eq(ingestbody_mode_of("application/cloudevents+json x"), INGESTBODY_UNSUPPORTED);
    ck_assert_int_eq(ingestbody_mode_of(""), INGESTBODY_UNSUPPORTED);
    ck_assert_int_eq(ingestbody_mode_of(NULL), INGESTBODY_UNSUPPORTED);
}
END_TEST

/* Splits `body` into at most `max` spans; the result, and the spans' text
 * joined by '|' into `joined`. */
static ingestbody_result split(const char *body, size_t max, char *joined, size_t joined_size,
                               size_t *count)
{
    ingestbody_span spans[8];
    char err[160] = "";
    *count = 99;
    ingestbody_result r = ingestbody_split_batch(body, strlen(body), spans, max, count, err,
                                                 sizeof err);
    joined[0] = '\0';
    if (r != INGESTBODY_OK) {
        ck_assert_msg(err[0] != '\0', "a refusal says why");
        return r;
    }
    size_t used = 0;
    for (size_t i = 0; i < *count; i++) {
        ck_assert_uint_lt(used + spans[i].len + 2, joined_size);
        if (i > 0)
            joined[used++] = '|';
        memcpy(joined + used, body + spans[i].offset, spans[i].len);
        used += spans[i].len;
        joined[used] = '\0';
    }
    return r;
}

START_TEST(splits_elements_as_sent)
{
    char joined[256];
    size_t count;
    ck_assert_int_eq(split(" [ {\"a\":1} ,\n{\"b\":[1,2,{\"c\":\"]\"}]}\t] \n", 8, joined,
                           sizeof joined, &count),
                     INGESTBODY_OK);
    ck_assert_uint_eq(count, 2);
    ck_assert_str_eq(joined, "{\"a\":1}|{\"b\":[1,2,{\"c\":\"]\"}]}");
}
END_TEST

START_TEST(strings_and_escapes_do_not_split)
{
    char joined[256];
    size_t count;
    ck_assert_int_eq(split("[{\"s\":\"a,b]}\\\"],\"}, {\"t\":\"\\\\\"}]", 8, joined,
                           sizeof joined, &count),
                     INGESTBODY_OK);
    ck_assert_uint_eq(count, 2);
    ck_assert_str_eq(joined, "{\"s\":\"a,b]}\\\"],\"}|{\"t\":\"\\\\\"}");
}
END_TEST

START_TEST(empty_batch_is_no_events)
{
    char joined[64];
    size_t count;
    ck_assert_int_eq(split("[]", 8, joined, sizeof joined, &count), INGESTBODY_OK);
    ck_assert_uint_eq(count, 0);
    ck_assert_int_eq(split(" [ \n ] ", 8, joined, sizeof joined, &count), INGESTBODY_OK);
    ck_assert_uint_eq(count, 0);
}
END_TEST

/* A broken element is still one span: event_parse refuses it alone. */
START_TEST(broken_elements_are_spans)
{
    char joined[64];
    size_t count;
    ck_assert_int_eq(split("[{\"a\":}, 17, {}}, \"x\"]", 8, joined, sizeof joined, &count),
                     INGESTBODY_OK);
    ck_assert_uint_eq(count, 4);
    ck_assert_str_eq(joined, "{\"a\":}|17|{}}|\"x\"");
}
END_TEST

START_TEST(structure_errors)
{
    char joined[64];
    size_t count;
    ck_assert_int_eq(split("", 8, joined, sizeof joined, &count), INGESTBODY_NOT_ARRAY);
    ck_assert_int_eq(split("{\"a\":1}", 8, joined, sizeof joined, &count),
                     INGESTBODY_NOT_ARRAY);
    ck_assert_int_eq(split("[", 8, joined, sizeof joined, &count), INGESTBODY_MALFORMED);
    ck_assert_int_eq(split("[{\"a\":1}", 8, joined, sizeof joined, &count),
                     INGESTBODY_MALFORMED);
    ck_assert_int_eq(split("[{\"a\":\"]}", 8, joined, sizeof joined, &count),
                     INGESTBODY_MALFORMED); /* the string never ends */
    ck_assert_int_eq(split("[1,,2]", 8, joined, sizeof joined, &count), INGESTBODY_MALFORMED);
    ck_assert_int_eq(split("[1,]", 8, joined, sizeof joined, &count), INGESTBODY_MALFORMED);
    ck_assert_int_eq(split("[,1]", 8, joined, sizeof joined, &count), INGESTBODY_MALFORMED);
    ck_assert_int_eq(split("[1] x", 8, joined, sizeof joined, &count), INGESTBODY_MALFORMED);
    ck_assert_int_eq(split("[][]", 8, joined, sizeof joined, &count), INGESTBODY_MALFORMED);
}
END_TEST

START_TEST(count_limit)
{
    char joined[64];
    size_t count;
    ck_assert_int_eq(split("[1,2,3]", 3, joined, sizeof joined, &count), INGESTBODY_OK);
    ck_assert_uint_eq(count, 3);
    ck_assert_int_eq(split("[1,2,3,4]", 3, joined, sizeof joined, &count), INGESTBODY_TOO_MANY);
}
END_TEST

/* The body need not be NUL-terminated: nothing past len is read. */
START_TEST(reads_only_len_bytes)
{
    const char body[] = "[1]]]]";
    ingestbody_span spans[4];
    size_t count = 0;
    char err[160];
    ck_assert_int_eq(ingestbody_split_batch(body, 3, spans, 4, &count, err, sizeof err),
                     INGESTBODY_OK);
    ck_assert_uint_eq(count, 1);
    ck_assert_int_eq(ingestbody_split_batch(body, 2, spans, 4, &count, err, sizeof err),
                     INGESTBODY_MALFORMED);
}
END_TEST

Suite *ingestbody_suite(void)
{
    Suite *s = suite_create("ingestbody");
    TCase *t = tcase_create("core");
    tcase_add_test(t, modes_of_content_types);
    tcase_add_test(t, splits_elements_as_sent);
    tcase_add_test(t, strings_and_escapes_do_not_split);
    tcase_add_test(t, empty_batch_is_no_events);
    tcase_add_test(t, broken_elements_are_spans);
    tcase_add_test(t, structure_errors);
    tcase_add_test(t, count_limit);
    tcase_add_test(t, reads_only_len_bytes);
    suite_add_tcase(s, t);
    return s;
}
