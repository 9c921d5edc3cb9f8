/* Unit tests for services/api/authorize: when the gateway answer is asked
 * for, and which status goes on the wire in each answer. */
#include "authorize.h"
#include "suites.h"

START_TEST(gateway_answer_only_for_nginx)
{
    ck_assert(authorize_gateway_requested("nginx"));
    ck_assert(authorize_gateway_requested("NGINX"));
    ck_assert(!authorize_gateway_requested(NULL));
    ck_assert(!authorize_gateway_requested(""));
    ck_assert(!authorize_gateway_requested("nginx "));
    ck_assert(!authorize_gateway_requested("envoy"));
}
END_TEST

START_TEST(plain_answer_keeps_every_status)
{
    static const unsigned statuses[] = {204, 401, 403, 429, 503};
    for (size_t i = 0; i < sizeof statuses / sizeof statuses[0]; i++)
        ck_assert_uint_eq(authorize_wire_status(statuses[i], false), statuses[i]);
}
END_TEST

START_TEST(gateway_answer_refuses_with_403_only)
{
    /* nginx's auth_request passes 2xx, 401 and 403 and turns anything else
     * into a 500: every refusal must be one status it understands. */
    ck_assert_uint_eq(authorize_wire_status(204, true), 204);
    ck_assert_uint_eq(authorize_wire_status(200, true), 200);
    static const unsigned refusals[] = {401, 403, 429, 503, 400, 431};
    for (size_t i = 0; i < sizeof refusals / sizeof refusals[0]; i++)
        ck_assert_uint_eq(authorize_wire_status(refusals[i], true), 403);
}
END_TEST

START_TEST(customer_id_is_percent_encoded)
{
    char out[32];
    ck_assert(authorize_percent_encode("cus_AZaz09-._~", out, sizeof out));
    ck_assert_str_eq(out, "cus_AZaz09-._~");
    ck_assert(authorize_percent_encode("a b\r\n\xc3\xa9%", out, sizeof out));
    ck_assert_str_eq(out, "a%20b%0D%0A%C3%A9%25");
    ck_assert(authorize_percent_encode("", out, sizeof out));
    ck_assert_str_eq(out, "");
    /* Exactly full (9 bytes + NUL) fits; one more byte does not. */
    char small[10];
    ck_assert(authorize_percent_encode("abcdef%", small, sizeof small));
    ck_assert_str_eq(small, "abcdef%25");
    ck_assert(!authorize_percent_encode("abcdefg%", small, sizeof small));
    ck_assert(!authorize_percent_encode("abcdefghij", small, sizeof small));
}
END_TEST

Suite *api_authorize_suite(void)
{
    Suite *s = suite_create("api_authorize");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, gateway_answer_only_for_nginx);
    tcase_add_test(tc, plain_answer_keeps_every_status);
    tcase_add_test(tc, gateway_answer_refuses_with_403_only);
    tcase_add_test(tc, customer_id_is_percent_encoded);
    suite_add_tcase(s, tc);
    return s;
}
