/* Unit tests for common/utf8: well-formed UTF-8 (RFC 3629) and cutting a
 * text on a character boundary. */
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "suites.h"
#include "utf8.h"

START_TEST(accepts_only_well_formed_sequences)
{
    static const struct {
        const char *bytes;
        size_t len;
        bool valid;
    } cases[] = {
        {"", 0, true},
        {"plain ascii", 11, true},
        {"a\0b", 3, true},                       /* NUL is valid UTF-8 */
        {"\x7F", 1, true},
        {"\xC2\x80", 2, true},                   /* U+0080 */
        {"\xC3\xA9", 2, true},                   /* e acute */
        {"\xDF\xBF", 2, true},                   /* U+07FF */
        {"\xE0\xA0\x80", 3, true},               /* U+0800 */
        {"\xE2\x82\xAC", 3, true},               /* euro sign */
        {"\xED\x9F\xBF", 3, true},               /* U+D7FF, just below surrogates */
        {"\xEE\x80\x80", 3, true},               /* U+E000, just above */
        {"\xEF\xBF\xBF", 3, true},               /* U+FFFF */
        {"\xF0\x90\x80\x80", 4, true},           /* U+10000 */
        {"\xF0\x9F\x98\x80", 4, true},           /* emoji */
        {"\xF4\x8F\xBF\xBF", 4, true},           /* U+10FFFF */
        /* overlong encodings */
        {"\xC0\x80", 2, false},
        {"\xC0\xAF", 2, false},
        {"\xC1\xBF", 2, false},
        {"\xE0\x80\x80", 3, false},
        {"\xE0\x80\xAF", 3, false},
        {"\xE0\x9F\xBF", 3, false},
        {"\xF0\x80\x80\x80", 4, false},
        {"\xF0\x80\x80\xAF", 4, false},
        {"\xF0\x8F\xBF\xBF", 4, false},
        /* surrogates */
        {"\xED\xA0\x80", 3, false},              /* U+D800 */
        {"\xED\xAD\xBF", 3, false},
        {"\xED\xB0\x80", 3, false},              /* U+DC00 */
        {"\xED\xBF\xBF", 3, false},              /* U+DFFF */
        {"\xED\xA0\xBD\xED\xB8\x80", 6, false},  /* CESU-8 surrogate pair */
        /* above U+10FFFF and bytes that never occur */
        {"\xF4\x90\x80\x80", 4, false},
        {"\xF5\x80\x80\x80", 4, false},
        {"\xF7\xBF\xBF\xBF", 4, false},
        {"\xF8\x88\x80\x80\x80", 5, false},
        {"\xFC\x84\x80\x80\x80\x80", 6, false},
        {"\xFE", 1, false},
        {"\xFF", 1, false},
        /* lone continuation bytes */
        {"\x80", 1, false},
        {"\xBF", 1, false},
        {"a\x80", 2, false},
        {"\xC3\xA9\xA9", 3, false},
        /* truncated sequences */
        {"\xC3", 1, false},
        {"\xE2\x82", 2, false},
        {"\xE2", 1, false},
        {"\xF0\x9F\x98", 3, false},
        {"\xF0\x9F", 2, false},
        {"abc\xC3", 4, false},
        /* bad continuation */
        {"\xC3\x41", 2, false},
        {"\xC3\xC3\xA9", 3, false},
        {"\xE2\x28\xA1", 3, false},
        {"\xE2\x82\x28", 3, false},
        {"\xF0\x28\x8C\xBC", 4, false},
        {"\xF0\x9F\x98\x28", 4, false},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char *copy = malloc(cases[i].len > 0 ? cases[i].len : 1);
        ck_assert_ptr_nonnull(copy);
        memcpy(copy, cases[i].bytes, cases[i].len);
        ck_assert_msg(utf8_valid(copy, cases[i].len) == cases[i].valid,
                      "case %zu: expected %s", i, cases[i].valid ? "valid" : "invalid");
        free(copy);
    }
    /* Only `len` bytes count: a sequence cut by the length is truncated. */
    ck_assert(utf8_valid("ab\xC3\xA9", 2));
    ck_assert(!utf8_valid("ab\xC3\xA9", 3));
    ck_assert(utf8_valid("ab\xC3\xA9", 4));
    ck_assert(!utf8_valid("\xF0\x9F\x98\x80", 3));
}
END_TEST

START_TEST(valid_prefix_cuts_on_character_boundary)
{
    /* a text cut in the middle of a character keeps only whole ones */
    ck_assert_uint_eq(utf8_valid_prefix("abc", 3), 3);
    ck_assert_uint_eq(utf8_valid_prefix("ab\xc3\xa9", 4), 4);
    ck_assert_uint_eq(utf8_valid_prefix("ab\xc3", 3), 2);
    ck_assert_uint_eq(utf8_valid_prefix("ab\xe2\x82", 4), 2);
    ck_assert_uint_eq(utf8_valid_prefix("\xf0\x9f\x98\x80x", 5), 5);
    ck_assert_uint_eq(utf8_valid_prefix("\xf0\x9f\x98", 3), 0);
    ck_assert_uint_eq(utf8_valid_prefix("a\xff" "b", 3), 1);
    ck_assert_uint_eq(utf8_valid_prefix("", 0), 0);
}
END_TEST

Suite *utf8_suite(void)
{
    Suite *s = suite_create("utf8");
    TCase *tc = tcase_create("utf8");
    tcase_add_test(tc, accepts_only_well_formed_sequences);
    tcase_add_test(tc, valid_prefix_cuts_on_character_boundary);
    suite_add_tcase(s, tc);
    return s;
}
