/* Unit tests for services/collector/status: the values of the collector's
 * collector_status row (migration 008). */
#include <stdio.h>
#include <string.h>

#include "collector.h"
#include "status.h"
#include "suites.h"

START_TEST(values_count_what_the_batch_will_commit)
{
    collector c;
    memset(&c, 0, sizeof c);
    c.m.lag = metrics_gauge("test_status_lag", "lag", NULL);
    metrics_set(c.m.lag, 17);
    status_init("group-a");
    reject rejects[3];
    memset(rejects, 0, sizeof rejects);
    rejects[0].code = EVENT_ERR_INVALID_JSON;
    rejects[1].code = EVENT_ERR_TOO_LATE;
    rejects[2].code = EVENT_ERR_INVALID_JSON;
    batch b;
    memset(&b, 0, sizeof b);
    b.rejects = rejects;
    b.reject_count = 3;

    const char *const *v = status_values(&c, &b, 40);
    ck_assert_ptr_nonnull(strchr(v[0], ':')); /* host:pid */
    ck_assert_str_eq(v[1], "group-a");
    ck_assert_str_eq(v[3], "40");
    ck_assert_str_eq(v[5], "17");
    char expected[128];
    snprintf(expected, sizeof expected, "{\"%s\":2,\"%s\":1}",
             event_error_code(EVENT_ERR_INVALID_JSON), event_error_code(EVENT_ERR_TOO_LATE));
    ck_assert_str_eq(v[6], expected);

    /* Values are a preview: only a commit adds to the totals. */
    v = status_values(&c, &b, 40);
    ck_assert_str_eq(v[3], "40");
    status_committed(&b, 40);
    b.reject_count = 0;
    v = status_values(&c, &b, 2);
    ck_assert_str_eq(v[3], "42");
    ck_assert_str_eq(v[6], expected);
}
END_TEST

Suite *status_suite(void)
{
    Suite *s = suite_create("status");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, values_count_what_the_batch_will_commit);
    suite_add_tcase(s, tc);
    return s;
}
