/* Unit tests for services/api/apitext: request-line unescaping, the gateway path
 * canonical form and UTF-8 repair of error messages. */
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

static const char *canonical(const char *in, char *buf, size_t size)
{
    ck_assert_msg(apitext_canonical_path(in, strlen(in), buf, size) > 0, "%s does not fit", in);
    return buf;
}

START_TEST(canonical_path_writes_one_resource_one_way)
{
    static const struct {
        const char *in, *out;
    } cases[] = {
        /* The spellings the review found escaping a /items throttle. */
        {"/items", "/items"},
        {"/ITEMS", "/items"},
        {"/items;x", "/items"},
        {"/items;jsessionid=1/", "/items"},
        {"/items%2F", "/items"},
        {"/items%20", "/items"},
        {"/items.", "/items"},
        {"http://host/items", "/items"},
        {"HTTPS://host:8443/items?x=1", "/items"},
        {"http://host", "/"},
        {"/items\\", "/items"},
        {"/items%5C", "/items"},
        /* Dot segments, escapes, empty segments. */
        {"/x", "/x"},
        {"/%78", "/x"},
        {"/%58", "/x"},
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
        {"/a\\..\\x", "/x"},
        {"/a/.. /x", "/x"},
        {"/a/..;p/x", "/x"},
        {"/x?y=1", "/x"},
        {"/x#frag", "/x"},
        {"/x/?y", "/x"},
        {"  /x  ", "/x"},
        {"/x\t", "/x"},
        {"/x. . ", "/x"},
        {"/", "/"},
        {"", "/"},
        {"//", "/"},
        {"/..", "/"},
        {"/.", "/"},
        {"x", "/x"},
        {"/a%2fb", "/a/b"},
        {"/%2Fx", "/x"},
        {"/a%c3%a9", "/a%C3%A9"},
        {"/a\xc3\xa9", "/a%C3%A9"},
        {"/%7e%7E%2d%5F", "/~~-_"},
        {"/a%", "/a%25"},
        {"/a%4", "/a%254"},
        {"/a%zz", "/a%25zz"},
        {"/a%2525", "/a%2525"},
        {"/a%00b", "/a%00b"},
        {"/a b", "/a%20b"},
        {"/a%3fb", "/a%3Fb"},
        {"/a%3Bb", "/a"},
        {"/items/..a/.b", "/items/..a/.b"},
        {"/items/...", "/items"},
        {"/v1/Items/ID-9", "/v1/items/id-9"},
        {"/a:b@c!$&'()*+,=", "/a:b@c!$&'()*+,="},
        {"/mailto:x/y", "/mailto:x/y"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char buf[64];
        ck_assert_msg(strcmp(canonical(cases[i].in, buf, sizeof buf), cases[i].out) == 0,
                      "%s: got %s, expected %s", cases[i].in, buf, cases[i].out);
    }
}
END_TEST

START_TEST(canonical_path_is_bounded)
{
    char buf[8];
    ck_assert_uint_eq(apitext_canonical_path("/abcdefghij", 11, buf, sizeof buf), 0);
    ck_assert_uint_eq(apitext_canonical_path("/abcdef", 7, buf, sizeof buf), 7);
    ck_assert_str_eq(buf, "/abcdef");
    ck_assert_uint_eq(apitext_canonical_path("/x", 2, buf, 1), 0);
    /* Only len bytes are read. */
    ck_assert_uint_eq(apitext_canonical_path("/x/yz", 2, buf, sizeof buf), 2);
    ck_assert_str_eq(buf, "/x");
    ck_assert_uint_eq(apitext_canonical_path("/x%2", 4, buf, sizeof buf), 6);
    ck_assert_str_eq(buf, "/x%252");
    /* APITEXT_CANONICAL_SIZE(len) always does, whatever the bytes. */
    unsigned seed = 12345;
    for (int round = 0; round < 20000; round++) {
        char in[24];
        size_t len = (size_t)(round % 24);
        for (size_t k = 0; k < len; k++) {
            seed = seed * 1103515245u + 12345u;
            static const char alphabet[] = "/\\.%2fF5c;?# aZ\x80\x00-";
            in[k] = alphabet[(seed >> 16) % (sizeof alphabet - 1)];
        }
        char out[APITEXT_CANONICAL_SIZE(24)];
        size_t n = apitext_canonical_path(in, len, out, APITEXT_CANONICAL_SIZE(len));
        ck_assert_msg(n > 0 && out[0] == '/' && strlen(out) == n, "round %d", round);
        /* Canonical is a fixed point: canonical(canonical(x)) == canonical(x). */
        char again[APITEXT_CANONICAL_SIZE(3 * 24 + 2)];
        ck_assert_uint_eq(apitext_canonical_path(out, n, again, sizeof again), n);
        ck_assert_str_eq(again, out);
    }
}
END_TEST

START_TEST(canonical_method_folds_case_and_head)
{
    char buf[16];
    ck_assert_uint_eq(apitext_canonical_method("get", 3, buf, sizeof buf), 3);
    ck_assert_str_eq(buf, "GET");
    ck_assert_uint_eq(apitext_canonical_method("HEAD", 4, buf, sizeof buf), 3);
    ck_assert_str_eq(buf, "GET");
    ck_assert_uint_eq(apitext_canonical_method(" head ", 6, buf, sizeof buf), 3);
    ck_assert_str_eq(buf, "GET");
    ck_assert_uint_eq(apitext_canonical_method("Post", 4, buf, sizeof buf), 4);
    ck_assert_str_eq(buf, "POST");
    ck_assert_uint_eq(apitext_canonical_method("*", 1, buf, sizeof buf), 1);
    ck_assert_str_eq(buf, "*");
    ck_assert_uint_eq(apitext_canonical_method("", 0, buf, sizeof buf), 0);
    ck_assert_uint_eq(apitext_canonical_method("  ", 2, buf, sizeof buf), 0);
    ck_assert_uint_eq(apitext_canonical_method("OPTIONS", 7, buf, 7), 0);
    ck_assert_uint_eq(apitext_canonical_method("OPTIONS", 7, buf, 8), 7);
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
    tcase_add_test(tc, canonical_path_writes_one_resource_one_way);
    tcase_add_test(tc, canonical_path_is_bounded);
    tcase_add_test(tc, canonical_method_folds_case_and_head);
    tcase_add_test(tc, utf8_sanitize_replaces_invalid_bytes);
    tcase_add_test(tc, utf8_prefix_never_cuts_a_character);
    suite_add_tcase(s, tc);
    return s;
}
