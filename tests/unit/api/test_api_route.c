/* Unit tests for services/api/apiroute (matching) over tally-api's route
 * table (services/api/routes.h). */
#include <stdio.h>
#include <string.h>

#include "apiroute.h"
#include "routes.h"
#include "suites.h"

static apiroute_result find(const char *method, const char *path, apiroute_match *m)
{
    memset(m, 0, sizeof *m);
    return apiroute_find(api_routes, API_ROUTE_COUNT, method, path, m);
}

START_TEST(every_contract_route_matches)
{
    static const struct {
        const char *method, *path;
        const char *label; /* the row it finds */
        const char *id;
    } cases[] = {
        {"GET", "/healthz", "GET /healthz", ""},
        {"HEAD", "/readyz", "GET /readyz", ""},
        {"GET", "/metrics", "GET /metrics", ""},
        {"POST", "/v1/plans", "POST /v1/plans", ""},
        {"GET", "/v1/plans", "GET /v1/plans", ""},
        {"GET", "/v1/plans/pln_1", "GET /v1/plans/{id}", "pln_1"},
        {"PATCH", "/v1/plans/pln_1", "PATCH /v1/plans/{id}", "pln_1"},
        {"DELETE", "/v1/plans/pln_1", "DELETE /v1/plans/{id}", "pln_1"},
        {"POST", "/v1/keys", "POST /v1/keys", ""},
        {"GET", "/v1/keys", "GET /v1/keys", ""},
        {"GET", "/v1/keys/key_pro_acme", "GET /v1/keys/{id}", "key_pro_acme"},
        {"PATCH", "/v1/keys/k", "PATCH /v1/keys/{id}", "k"},
        {"DELETE", "/v1/keys/k", "DELETE /v1/keys/{id}", "k"},
        {"PUT", "/v1/keys/k/plan", "PUT /v1/keys/{id}/plan", "k"},
        {"DELETE", "/v1/keys/k/plan", "DELETE /v1/keys/{id}/plan", "k"},
        {"GET", "/v1/keys/k.1:2~3-4/usage", "GET /v1/keys/{id}/usage", "k.1:2~3-4"},
        {"GET", "/v1/keys/k/quota", "GET /v1/keys/{id}/quota", "k"},
        {"GET", "/v1/me/usage", "GET /v1/me/usage", ""},
        {"GET", "/v1/me/quota", "GET /v1/me/quota", ""},
        {"GET", "/v1/authorize", "GET /v1/authorize", ""},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        apiroute_match m;
        ck_assert_msg(find(cases[i].method, cases[i].path, &m) == APIROUTE_FOUND, "%s %s",
                      cases[i].method, cases[i].path);
        ck_assert_str_eq(m.route->label, cases[i].label);
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
        "/v1/plans/\xc3\xa9", "/v1/plansx", "/v1/plan", "/v1/keys/k/planx", "/v1/keys/k/quot",
        "/healthzz", "/v1/authorize/", "/v1/authorizex", "/v1/keys/{id}", "/v1/keys/k/",
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

/* The Allow value of every path, as the hand-typed strings before the
 * table had them (each 405 answer keeps its bytes). */
START_TEST(allow_of_every_path)
{
    static const struct {
        const char *path, *allow;
    } cases[] = {
        {"/healthz", "GET, HEAD"},
        {"/readyz", "GET, HEAD"},
        {"/metrics", "GET, HEAD"},
        {"/openapi.json", "GET, HEAD"},
        {"/v1/plans", "GET, HEAD, POST"},
        {"/v1/plans/p", "GET, HEAD, PATCH, DELETE"},
        {"/v1/keys", "GET, HEAD, POST"},
        {"/v1/keys/k", "GET, HEAD, PATCH, DELETE"},
        {"/v1/keys/k/plan", "PUT, DELETE"},
        {"/v1/keys/k/usage", "GET, HEAD"},
        {"/v1/keys/k/quota", "GET, HEAD"},
        {"/v1/me/usage", "GET, HEAD, OPTIONS"},
        {"/v1/me/quota", "GET, HEAD, OPTIONS"},
        {"/v1/authorize", "GET, HEAD"},
        {"/v1/keys/k/dashboard-links", "POST"},
        {"/v1/status", "GET, HEAD"},
        {"/v1/usage/top", "GET, HEAD"},
        {"/v1/quotas/nearest", "GET, HEAD"},
        {"/dashboard", "GET, HEAD"},
        {"/dashboard/admin", "GET, HEAD"},
        {"/dashboard/assets/app.js", "GET, HEAD"},
        {"/dashboard/vendor/uPlot.min.css", "GET, HEAD"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        apiroute_match m;
        ck_assert_msg(find("TRACE", cases[i].path, &m) == APIROUTE_METHOD_NOT_ALLOWED, "%s",
                      cases[i].path);
        ck_assert_str_eq(m.allow, cases[i].allow);
    }
}
END_TEST

/* CORS is opened by OPTIONS rows (cors.h): only on paths no admin row
 * shares, each handled by the preflight, and the /v1/me routes have one. */
START_TEST(cross_origin_only_where_customers_are)
{
    size_t options_rows = 0;
    for (size_t i = 0; i < API_ROUTE_COUNT; i++) {
        const apiroute *r = &api_routes[i];
        if (strcmp(r->method, "OPTIONS") != 0)
            continue;
        options_rows++;
        ck_assert_msg(r->handle == cors_preflight, "%s is not the preflight", r->label);
        for (size_t j = 0; j < API_ROUTE_COUNT; j++)
            ck_assert_msg(strcmp(api_routes[j].path, r->path) != 0 ||
                              api_routes[j].auth != AUTH_ADMIN,
                          "%s opens admin route %s", r->label, api_routes[j].label);
    }
    for (size_t i = 0; i < API_ROUTE_COUNT; i++) {
        if (strncmp(api_routes[i].path, "/v1/me/", 7) != 0)
            continue;
        apiroute_match m;
        ck_assert_msg(find("OPTIONS", api_routes[i].path, &m) == APIROUTE_FOUND,
                      "%s has no preflight", api_routes[i].label);
    }
    ck_assert_uint_ge(options_rows, 2);
}
END_TEST

static void no_handler(struct api_request *req)
{
    (void)req;
}

/* The Allow rule on a table of its own: GET and HEAD first, the rest in
 * table order, each method once; a value that does not fit is refused. */
START_TEST(allow_follows_the_rows)
{
    static const apiroute table[] = {
        {"POST", "/a", "POST /a", AUTH_ADMIN, APIROUTE_ON_WORKER, no_handler},
        {"DELETE", "/a", "DELETE /a", AUTH_ADMIN, APIROUTE_ON_WORKER, no_handler},
        {"GET", "/a", "GET /a", AUTH_ADMIN, APIROUTE_ON_WORKER, no_handler},
        {"POST", "/a", "POST /a", AUTH_ADMIN, APIROUTE_ON_WORKER, no_handler},
        {"PUT", "/b/{id}", "PUT /b/{id}", AUTH_ADMIN, APIROUTE_ON_WORKER, no_handler},
    };
    size_t count = sizeof table / sizeof table[0];
    char allow[APIROUTE_ALLOW_MAX];
    ck_assert(apiroute_allow(table, count, "/a", allow, sizeof allow));
    ck_assert_str_eq(allow, "GET, HEAD, POST, DELETE");
    ck_assert(apiroute_allow(table, count, "/b/{id}", allow, sizeof allow));
    ck_assert_str_eq(allow, "PUT");
    ck_assert(!apiroute_allow(table, count, "/a", allow, strlen("GET, HEAD, POST, DELETE")));
    apiroute_match m;
    ck_assert_int_eq(apiroute_find(table, count, "HEAD", "/a", &m), APIROUTE_FOUND);
    ck_assert_ptr_eq(m.route, &table[2]);
    ck_assert_int_eq(apiroute_find(table, count, "GET", "/b/x-1", &m),
                     APIROUTE_METHOD_NOT_ALLOWED);
    ck_assert_str_eq(m.allow, "PUT");
    ck_assert_str_eq(m.id, "x-1");
}
END_TEST

/* What every row must be for dispatch, 405 and the metrics to work. */
START_TEST(every_row_is_well_formed)
{
    /* OPTIONS: the CORS preflight rows (cors.h). */
    static const char *const methods[] = {"GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"};
    for (size_t i = 0; i < API_ROUTE_COUNT; i++) {
        const apiroute *r = &api_routes[i];
        bool known = false;
        for (size_t k = 0; k < sizeof methods / sizeof methods[0]; k++)
            known = known || strcmp(r->method, methods[k]) == 0;
        ck_assert_msg(known, "%s: HEAD is served by GET; others are not HTTP's", r->label);
        ck_assert_msg(r->path[0] == '/' && r->path[strlen(r->path) - 1] != '/' &&
                          strstr(r->path, "//") == NULL,
                      "%s: a path is /segment[/segment...]", r->label);
        const char *id = strstr(r->path, "{id}");
        ck_assert_msg(id == NULL || strstr(id + 1, "{id}") == NULL, "%s: one {id} at most",
                      r->label);
        char label[80];
        snprintf(label, sizeof label, "%s %s", r->method, r->path);
        ck_assert_str_eq(r->label, label);
        /* main.c's latency label is route="<label>" in 64 bytes. */
        ck_assert_uint_lt(strlen(r->label) + strlen("route=\"\""), 64);
        ck_assert_ptr_nonnull(r->handle);
        for (size_t j = 0; j < i; j++)
            ck_assert_msg(strcmp(api_routes[j].label, r->label) != 0, "%s twice", r->label);
        char allow[APIROUTE_ALLOW_MAX];
        ck_assert_msg(apiroute_allow(api_routes, API_ROUTE_COUNT, r->path, allow, sizeof allow),
                      "%s: Allow does not fit", r->label);
        ck_assert_ptr_nonnull(strstr(allow, r->method));
    }
}
END_TEST

static const apiroute *route_labelled(const char *label)
{
    for (size_t i = 0; i < API_ROUTE_COUNT; i++) {
        if (strcmp(api_routes[i].label, label) == 0)
            return &api_routes[i];
    }
    ck_abort_msg("no route %s", label);
    return NULL;
}

START_TEST(auth_where_and_labels)
{
    ck_assert_int_eq(route_labelled("GET /healthz")->auth, AUTH_NONE);
    ck_assert_int_eq(route_labelled("POST /v1/keys")->auth, AUTH_ADMIN);
    ck_assert_int_eq(route_labelled("GET /v1/keys/{id}/usage")->auth, AUTH_ADMIN);
    ck_assert_int_eq(route_labelled("GET /v1/me/usage")->auth, AUTH_API_KEY);
    ck_assert_int_eq(route_labelled("GET /v1/authorize")->auth, AUTH_GATEWAY);
    /* Every route but the operations endpoints, the dashboards' files and
     * the preflights (browsers send them without credentials) needs some
     * credential. */
    for (size_t i = 0; i < API_ROUTE_COUNT; i++) {
        const apiroute *r = &api_routes[i];
        bool ops = strncmp(r->path, "/v1/", 4) != 0 || strcmp(r->method, "OPTIONS") == 0;
        ck_assert_msg((r->auth == AUTH_NONE) == ops, "%s", r->label);
    }
    /* Authorize and the quotas the cache holds never wait on PostgreSQL on
     * the HTTP thread; the admin routes and /readyz always may. */
    ck_assert_int_eq(route_labelled("GET /v1/authorize")->runs, APIROUTE_IN_MEMORY);
    ck_assert_int_eq(route_labelled("GET /healthz")->runs, APIROUTE_IN_MEMORY);
    ck_assert_int_eq(route_labelled("GET /readyz")->runs, APIROUTE_ON_WORKER);
    ck_assert_int_eq(route_labelled("GET /v1/keys/{id}/quota")->runs, APIROUTE_MEMORY_FIRST);
    ck_assert_int_eq(route_labelled("GET /v1/me/quota")->runs, APIROUTE_MEMORY_FIRST);
    ck_assert_int_eq(route_labelled("POST /v1/plans")->runs, APIROUTE_ON_WORKER);
    ck_assert_str_eq(apiroute_label(route_labelled("GET /v1/keys/{id}/quota")),
                     "GET /v1/keys/{id}/quota");
    ck_assert_str_eq(apiroute_label(NULL), "unmatched");
    ck_assert_str_eq(apiroute_auth_name(AUTH_API_KEY), "api-key");
    ck_assert_str_eq(apiroute_runs_name(APIROUTE_MEMORY_FIRST), "memory-first");
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
    tcase_add_test(tc, allow_of_every_path);
    tcase_add_test(tc, allow_follows_the_rows);
    tcase_add_test(tc, cross_origin_only_where_customers_are);
    tcase_add_test(tc, every_row_is_well_formed);
    tcase_add_test(tc, auth_where_and_labels);
    suite_add_tcase(s, tc);
    return s;
}
