/* Unit tests for services/api/apiroute: tally-api's routing table. */
#include <string.h>

#include "apiroute.h"
#include "suites.h"

static apiroute_result find(const char *method, const char *path, apiroute_match *m)
{
    memset(m, 0, sizeof *m);
    return apiroute_find(method, path, m);
}

START_TEST(every_contract_route_matches)
{
    static const struct {
        const char *method, *path;
        apiroute_op op;
        const char *id;
    } cases[] = {
        {"GET", "/healthz", OP_HEALTHZ, ""},
        {"HEAD", "/readyz", OP_READYZ, ""},
        {"GET", "/metrics", OP_METRICS, ""},
        {"POST", "/v1/plans", OP_CREATE_PLAN, ""},
        {"GET", "/v1/plans", OP_LIST_PLANS, ""},
        {"GET", "/v1/plans/pln_1", OP_GET_PLAN, "pln_1"},
        {"PATCH", "/v1/plans/pln_1", OP_UPDATE_PLAN, "pln_1"},
        {"DELETE", "/v1/plans/pln_1", OP_DELETE_PLAN, "pln_1"},
        {"POST", "/v1/keys", OP_CREATE_KEY, ""},
        {"GET", "/v1/keys", OP_LIST_KEYS, ""},
        {"GET", "/v1/keys/key_pro_acme", OP_GET_KEY, "key_pro_acme"},
        {"PATCH", "/v1/keys/k", OP_UPDATE_KEY, "k"},
        {"DELETE", "/v1/keys/k", OP_DELETE_KEY, "k"},
        {"PUT", "/v1/keys/k/plan", OP_ATTACH_PLAN, "k"},
        {"DELETE", "/v1/keys/k/plan", OP_DETACH_PLAN, "k"},
        {"GET", "/v1/keys/k.1:2~3-4/usage", OP_KEY_USAGE, "k.1:2~3-4"},
        {"GET", "/v1/keys/k/quota", OP_KEY_QUOTA, "k"},
        {"GET", "/v1/me/usage", OP_ME_USAGE, ""},
        {"GET", "/v1/me/quota", OP_ME_QUOTA, ""},
        {"GET", "/v1/authorize", OP_AUTHORIZE, ""},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        apiroute_match m;
        ck_assert_msg(find(cases[i].method, cases[i].path, &m) == APIROUTE_FOUND, "%s %s",
                      cases[i].method, cases[i].path);
        ck_assert_int_eq(m.op, cases[i].op);
        ck_assert_str_eq(m.id, cases[i].id);
    }
}
END_TEST

START_TEST(unknown_paths_are_not_found)
{
    static const char *const paths[] = {
        "", "/", "/v1", "/v1/", "/v1/plans/", "/v1/plans//", "/v1/plans/a/b", "/v1/keys/k/plan/x",
        "/v1/keys//usage", "/V1/plans", "/v1/plans?x", "/v1/me", "/v1/me/", "/v1/keys/a b",
        "/v1/keys/a%2Fb", "/v1/keys/a\"b", "/healthz/", "//healthz", "/v1/me/usage/key_1",
        "/v1/plans/\xc3\xa9",
    };
    for (size_t i = 0; i < sizeof paths / sizeof paths[0]; i++) {
        apiroute_match m;
        ck_assert_msg(find("GET", paths[i], &m) == APIROUTE_NOT_FOUND, "%s", paths[i]);
    }
}
END_TEST

START_TEST(ids_are_bounded)
{
    char path[300] = "/v1/keys/";
    memset(path + 9, 'a', 128);
    path[9 + 128] = '\0';
    apiroute_match m;
    ck_assert_int_eq(find("GET", path, &m), APIROUTE_FOUND);
    ck_assert_uint_eq(strlen(m.id), 128);
    path[9 + 128] = 'a';
    path[9 + 129] = '\0';
    ck_assert_int_eq(find("GET", path, &m), APIROUTE_NOT_FOUND);
}
END_TEST

START_TEST(wrong_methods_are_not_allowed)
{
    apiroute_match m;
    ck_assert_int_eq(find("PUT", "/v1/plans", &m), APIROUTE_METHOD_NOT_ALLOWED);
    ck_assert_str_eq(m.allow, "GET, HEAD, POST");
    ck_assert_int_eq(find("GET", "/v1/keys/k/plan", &m), APIROUTE_METHOD_NOT_ALLOWED);
    ck_assert_str_eq(m.allow, "PUT, DELETE");
    ck_assert_int_eq(find("POST", "/v1/authorize", &m), APIROUTE_METHOD_NOT_ALLOWED);
    ck_assert_int_eq(find("get", "/healthz", &m), APIROUTE_METHOD_NOT_ALLOWED);
    ck_assert_int_eq(find("BREW", "/v1/me/quota", &m), APIROUTE_METHOD_NOT_ALLOWED);
}
END_TEST

START_TEST(auth_and_labels)
{
    ck_assert_int_eq(apiroute_auth_of(OP_HEALTHZ), AUTH_NONE);
    ck_assert_int_eq(apiroute_auth_of(OP_CREATE_KEY), AUTH_ADMIN);
    ck_assert_int_eq(apiroute_auth_of(OP_KEY_USAGE), AUTH_ADMIN);
    ck_assert_int_eq(apiroute_auth_of(OP_ME_USAGE), AUTH_API_KEY);
    ck_assert_int_eq(apiroute_auth_of(OP_AUTHORIZE), AUTH_GATEWAY);
    /* Every operation but the operations endpoints needs some credential. */
    for (int op = OP_CREATE_PLAN; op < OP__COUNT; op++)
        ck_assert_int_ne(apiroute_auth_of((apiroute_op)op), AUTH_NONE);
    ck_assert_str_eq(apiroute_label(OP_KEY_QUOTA), "GET /v1/keys/{id}/quota");
    ck_assert_str_eq(apiroute_label(OP__COUNT), "unmatched");
}
END_TEST

Suite *api_route_suite(void)
{
    Suite *s = suite_create("api_route");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, every_contract_route_matches);
    tcase_add_test(tc, unknown_paths_are_not_found);
    tcase_add_test(tc, ids_are_bounded);
    tcase_add_test(tc, wrong_methods_are_not_allowed);
    tcase_add_test(tc, auth_and_labels);
    suite_add_tcase(s, tc);
    return s;
}
