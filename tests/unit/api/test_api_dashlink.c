/* Dashboard-link tokens (dashlink.h) and the CORS allow list (cors.h). */
#include <stdio.h>
#include <string.h>

#include "cors.h"
#include "dashlink.h"
#include "digest.h"
#include "suites.h"

#define SECRET "unit-test-secret-unit-test-secret-0123"

static void init(void)
{
    dashlink_init(SECRET, strlen(SECRET));
}

START_TEST(a_signed_link_verifies_until_it_expires)
{
    init();
    char token[DASHLINK_TOKEN_MAX], key[APIROUTE_ID_MAX + 1];
    int64_t expires = 0;
    ck_assert(dashlink_sign("key_a.b:c", 2000000000, token, sizeof token));
    ck_assert_str_eq(token + strlen(token) - strlen(".key_a.b:c"), ".key_a.b:c");
    ck_assert_int_eq(dashlink_verify(token, strlen(token), 1999999999, key, &expires),
                     DASHLINK_VALID);
    ck_assert_str_eq(key, "key_a.b:c"); /* dots in an id: the id comes last */
    ck_assert_int_eq(expires, 2000000000);
    ck_assert_int_eq(dashlink_verify(token, strlen(token), 2000000000, key, &expires),
                     DASHLINK_EXPIRED);
}
END_TEST

/* The format README documents, computed here by hand from digest.h. */
START_TEST(the_documented_format)
{
    init();
    uint8_t link_key[DIGEST_SHA256_LEN], mac[DIGEST_SHA256_LEN];
    const char *label = "tally dashboard-link signing key v1";
    digest_hmac_sha256(SECRET, strlen(SECRET), label, strlen(label), link_key);
    const char *message = "tally-dashboard-link-v1\n1700000000\nkey_x";
    digest_hmac_sha256(link_key, sizeof link_key, message, strlen(message), mac);
    char hex[2 * DIGEST_SHA256_LEN + 1], expected[DASHLINK_TOKEN_MAX], token[DASHLINK_TOKEN_MAX];
    digest_to_hex(mac, sizeof mac, hex);
    snprintf(expected, sizeof expected, "tdl1.1700000000.%s.key_x", hex);
    ck_assert(dashlink_sign("key_x", 1700000000, token, sizeof token));
    ck_assert_str_eq(token, expected);
}
END_TEST

START_TEST(tampered_links_are_refused)
{
    init();
    char token[DASHLINK_TOKEN_MAX], copy[DASHLINK_TOKEN_MAX + 8], key[APIROUTE_ID_MAX + 1];
    int64_t expires;
    ck_assert(dashlink_sign("key_a", 2000000000, token, sizeof token));
    size_t len = strlen(token);
    /* every single byte changed (but the id's last, which may stay valid) */
    for (size_t i = 0; i < len; i++) {
        memcpy(copy, token, len + 1);
        copy[i] = copy[i] == '1' ? '2' : '1';
        ck_assert_msg(dashlink_verify(copy, len, 0, key, &expires) != DASHLINK_VALID,
                      "byte %zu", i);
    }
    /* another key's id under this signature */
    snprintf(copy, sizeof copy, "%.*skey_b", (int)(len - 5), token);
    ck_assert_int_eq(dashlink_verify(copy, strlen(copy), 0, key, &expires),
                     DASHLINK_BAD_SIGNATURE);
    /* a later expiry under this signature */
    snprintf(copy, sizeof copy, "tdl1.2000000001%s", token + strlen("tdl1.2000000000"));
    ck_assert_int_eq(dashlink_verify(copy, strlen(copy), 0, key, &expires),
                     DASHLINK_BAD_SIGNATURE);
    /* signed under another secret */
    dashlink_init("another-secret-another-secret-0123", 34);
    ck_assert_int_eq(dashlink_verify(token, len, 0, key, &expires), DASHLINK_BAD_SIGNATURE);
}
END_TEST

START_TEST(malformed_tokens_are_refused)
{
    init();
    char key[APIROUTE_ID_MAX + 1], long_token[DASHLINK_TOKEN_MAX + 10];
    int64_t expires;
    const char *bad[] = {"", "tdl1.", "tdl2.1.aa.key", "tdl1.12.short.key",
                         "tdl1.-5.0000000000000000000000000000000000000000000000000000000000000000.k",
                         "tdl1.012.0000000000000000000000000000000000000000000000000000000000000000.k",
                         "tdl1.12.0000000000000000000000000000000000000000000000000000000000000000.",
                         "tdl1.12.0000000000000000000000000000000000000000000000000000000000000000.a/b",
                         "tdl1.99999999999999999999.0000000000000000000000000000000000000000000000000000000000000000.k"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        ck_assert_msg(dashlink_verify(bad[i], strlen(bad[i]), 0, key, &expires) ==
                          DASHLINK_MALFORMED,
                      "%s", bad[i]);
    memset(long_token, 'a', sizeof long_token);
    memcpy(long_token, "tdl1.", 5);
    ck_assert_int_eq(dashlink_verify(long_token, sizeof long_token, 0, key, &expires),
                     DASHLINK_MALFORMED);
    char small[16];
    ck_assert(!dashlink_sign("key_a", 1, small, sizeof small));
    ck_assert(!dashlink_sign("bad/id", 1, long_token, sizeof long_token));
}
END_TEST

START_TEST(cors_allow_list)
{
    char err[256];
    ck_assert(cors_init("", err, sizeof err));
    ck_assert(!cors_origin_allowed("https://a.example"));
    ck_assert(cors_init(" https://a.example , http://127.0.0.1:8080,", err, sizeof err));
    ck_assert(cors_origin_allowed("https://a.example"));
    ck_assert(cors_origin_allowed("http://127.0.0.1:8080"));
    ck_assert(!cors_origin_allowed("https://a.example.evil"));
    ck_assert(!cors_origin_allowed("http://a.example"));
    ck_assert(!cors_origin_allowed(NULL));
    ck_assert(!cors_origin_allowed("null"));
    const char *bad[] = {"*", "https://a.example/", "a.example", "https://A.example",
                         "https://a.example/path", "ftp://a.example"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        ck_assert_msg(!cors_init(bad[i], err, sizeof err), "%s", bad[i]);
    char many[40 * 24] = "";
    for (int i = 0; i <= CORS_ORIGINS_MAX; i++)
        snprintf(many + strlen(many), sizeof many - strlen(many), "https://h%d.example,", i);
    ck_assert(!cors_init(many, err, sizeof err));
    ck_assert(cors_init("", err, sizeof err));
}
END_TEST

Suite *api_dashlink_suite(void)
{
    Suite *s = suite_create("api_dashlink");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, a_signed_link_verifies_until_it_expires);
    tcase_add_test(tc, the_documented_format);
    tcase_add_test(tc, tampered_links_are_refused);
    tcase_add_test(tc, malformed_tokens_are_refused);
    tcase_add_test(tc, cors_allow_list);
    suite_add_tcase(s, tc);
    return s;
}
