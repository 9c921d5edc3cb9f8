/* Unit tests for common/apitext: request-line unescaping, the gateway path
 * normalizer and UTF-8 repair of error messages. */
#include <stdio.h>
#include <string.h>

#include "apitext.h"
#include "suites.h"

static const char *unescape(const char *in, char *buf, size_t size)
{
    snprintf(buf, size, "%s", in);
    size_t len = apitext_unescape(buf);
    ck_assert_uint_eq(len, strlen(buf));
    return buf;
}

START_TEST(unescape_keeps_nul_and_slash_escaped)
{
    static const struct {
        const char *in, *out;
    } cases[] = {
        {"/v1/keys/k%00/plan", "/v1/keys/k%00/plan"},
        {"/v1/keys/k%2Fplan", "/v1/keys/k%2Fplan"},
        {"/v1/keys/k%2fplan", "/v1/keys/k%2fplan"},
        {"/a%20b", "/a b"},
        {"%78%41", "xA"},
        {"%252F", "%2F"},
        {"%", "%"},
        {"%4", "%4"},
        {"%zz%4g", "%zz%4g"},
        {"%C3%A9", "\xc3\xa9"},
        {"%FF", "\xff"},
        {"", ""},
        {"a%00%00b", "a%00%00b"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char buf[64];
        ck_assert_str_eq(unescape(cases[i].in, buf, sizeof buf), cases[i].out);
    }
}
END_TEST

static const char *normalize(const char *in, char *buf, size_t size)
{
    ck_assert_msg(apitext_normalize_path(in, strlen(in), buf, size), "%s does not fit", in);
    return buf;
}

START_TEST(normalize_writes_one_path_one_way)
{
    static const struct {
        const char *in, *out;
    } cases[] = {
        {"/x", "/x"},
        {"/%78", "/x"},
        {"/x/", "/x"},
        {"//x", "/x"},
        {"/./x", "/x"},
        {"/x/.", "/x"},
        {"/a/../x", "/x"},
        {"/../../x", "/x"},
        {"/a/b/../../../x/", "/x"},
        {"/%2e/x", "/x"},
        {"/%2E%2E/x", "/x"},
        {"/a/%2e%2e/x", "/x"},
        {"/x?y=1", "/x"},
        {"/x#frag", "/x"},
        {"/x/?y", "/x"},
        {"/", "/"},
        {"", "/"},
        {"//", "/"},
        {"/..", "/"},
        {"/.", "/"},
        {"x", "/x"},
        {"/a%2fb", "/a%2Fb"},
        {"/a%2Fb", "/a%2Fb"},
        {"/a%c3%a9", "/a%C3%A9"},
        {"/%7e%7E%2d%5F", "/~~-_"},
        {"/a%", "/a%"},
        {"/a%4", "/a%4"},
        {"/a%zz", "/a%zz"},
        {"/items/..a/.b", "/items/..a/.b"},
        {"/items/...", "/items/..."},
        {"/Items", "/Items"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char buf[64];
        ck_assert_str_eq(normalize(cases[i].in, buf, sizeof buf), cases[i].out);
    }
}
END_TEST

START_TEST(normalize_is_bounded)
{
    char buf[8];
    ck_assert(!apitext_normalize_path("/abcdefghij", 11, buf, sizeof buf));
    ck_assert(apitext_normalize_path("/abcdef", 7, buf, sizeof buf));
    ck_assert_str_eq(buf, "/abcdef");
    /* len + 2 bytes always do. */
    const char *in = "abc";
    char small[5];
    ck_assert(apitext_normalize_path(in, 3, small, sizeof small));
    ck_assert_str_eq(small, "/abc");
    /* Only len bytes are read. */
    ck_assert(apitext_normalize_path("/x/yz", 2, buf, sizeof buf));
    ck_assert_str_eq(buf, "/x");
    ck_assert(apitext_normalize_path("/x%2", 4, buf, sizeof buf));
    ck_assert_str_eq(buf, "/x%2");
}
END_TEST

START_TEST(utf8_sanitize_replaces_invalid_bytes)
{
    static const struct {
        const char *in, *out;
    } cases[] = {
        {"plain", "plain"},
        {"caf\xc3\xa9", "caf\xc3\xa9"},
        {"\xff", "?"},
        {"a\xc3", "a?"},              /* cut short at the end */
        {"a\xe2\x82\"", "a??\""},     /* cut short before a quote */
        {"\xc0\xaf", "??"},           /* overlong */
        {"\xed\xa0\x80", "???"},      /* surrogate */
        {"\xf4\x90\x80\x80", "????"}, /* above U+10FFFF */
        {"\xf0\x9f\x98\x80!", "\xf0\x9f\x98\x80!"},
        {"\x80x", "?x"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char buf[32];
        snprintf(buf, sizeof buf, "%s", cases[i].in);
        apitext_utf8_sanitize(buf);
        ck_assert_str_eq(buf, cases[i].out);
    }
}
END_TEST

START_TEST(utf8_prefix_never_cuts_a_character)
{
    ck_assert_uint_eq(apitext_utf8_prefix("abc", 10), 3);
    ck_assert_uint_eq(apitext_utf8_prefix("abcdef", 3), 3);
    ck_assert_uint_eq(apitext_utf8_prefix("ab\xc3\xa9", 3), 2);
    ck_assert_uint_eq(apitext_utf8_prefix("ab\xc3\xa9", 4), 4);
    ck_assert_uint_eq(apitext_utf8_prefix("a\xf0\x9f\x98\x80", 2), 1);
    ck_assert_uint_eq(apitext_utf8_prefix("a\xf0\x9f\x98\x80", 4), 1);
    ck_assert_uint_eq(apitext_utf8_prefix("a\xf0\x9f\x98\x80", 5), 5);
    ck_assert_uint_eq(apitext_utf8_prefix("\xc3\xa9", 1), 0);
    ck_assert_uint_eq(apitext_utf8_prefix("x\x80\x80", 2), 2); /* invalid anyway */
}
END_TEST

Suite *api_text_suite(void)
{
    Suite *s = suite_create("api_text");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, unescape_keeps_nul_and_slash_escaped);
    tcase_add_test(tc, normalize_writes_one_path_one_way);
    tcase_add_test(tc, normalize_is_bounded);
    tcase_add_test(tc, utf8_sanitize_replaces_invalid_bytes);
    tcase_add_test(tc, utf8_prefix_never_cuts_a_character);
    suite_add_tcase(s, tc);
    return s;
}
