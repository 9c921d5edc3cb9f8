/* Unit tests for services/api/leases: the slice a replica holds (which
 * makes the stated bound B), when it is topped up, and each replica's
 * share of a rate and burst. */
#include <stdint.h>

#include "leases.h"
#include "suites.h"

START_TEST(slice_is_a_200th_of_the_quota_within_its_bounds)
{
    ck_assert_int_eq(leases_slice(10000, 1000), 50);
    ck_assert_int_eq(leases_slice(1000000, 1000), 1000); /* capped by the setting */
    ck_assert_int_eq(leases_slice(1000000, 5000), 5000);
    ck_assert_int_eq(leases_slice(100, 1000), LEASES_SLICE_MIN); /* small quotas */
    ck_assert_int_eq(leases_slice(0, 1000), LEASES_SLICE_MIN);
    ck_assert_int_eq(leases_slice(10000, 1), 1); /* the setting wins over the minimum */
    ck_assert_int_eq(leases_slice(INT64_MAX, 1000000), 1000000);
    ck_assert_int_eq(leases_slice(-5, 1000), LEASES_SLICE_MIN);
}
END_TEST

START_TEST(slice_bounds_the_overshoot_at_half_a_percent_or_ten)
{
    /* B per dead replica is one slice: at most max(10, quota / 200). */
    for (int64_t limit = 1; limit <= 2000000; limit = limit * 3 + 1) {
        int64_t slice = leases_slice(limit, 1000000);
        int64_t bound = limit / 200 > 10 ? limit / 200 : 10;
        ck_assert_int_le(slice, bound);
        ck_assert_int_ge(slice, 1);
    }
}
END_TEST

START_TEST(refill_tops_up_at_half_a_slice)
{
    ck_assert_int_eq(leases_refill_want(50, 50), 0);
    ck_assert_int_eq(leases_refill_want(26, 50), 0);
    ck_assert_int_eq(leases_refill_want(25, 50), 25);
    ck_assert_int_eq(leases_refill_want(0, 50), 50);
    ck_assert_int_eq(leases_refill_want(-3, 50), 50); /* never more than a slice */
    ck_assert_int_eq(leases_refill_want(1, 1), 0);
    ck_assert_int_eq(leases_refill_want(0, 1), 1);
    /* Held + asked never passes a slice: B stays one slice per replica. */
    for (int64_t held = 0; held <= 60; held++)
        ck_assert_int_le(held + leases_refill_want(held, 50), held > 50 ? held : 50);
}
END_TEST

START_TEST(a_pending_release_gets_no_top_up)
{
    /* a lease at 100 of a 1,000-unit slice (quota 200,000), used lately */
    leases_topup_state s = {.holding = 100, .limit = 200000, .lease_max = 1000,
                            .recent = true};
    ck_assert_int_eq(leases_topup_want(&s), 900);
    s.release_pending = true;
    ck_assert_int_eq(leases_topup_want(&s), 0);
    s.release_pending = false;
    s.period_over = true;
    ck_assert_int_eq(leases_topup_want(&s), 0);
    s.period_over = false;
    s.empty_lately = true;
    ck_assert_int_eq(leases_topup_want(&s), 0);
    s.empty_lately = false;
    s.recent = false;
    ck_assert_int_eq(leases_topup_want(&s), 0);
    s.recent = true;
    s.holding = 600; /* more than half a slice held */
    ck_assert_int_eq(leases_topup_want(&s), 0);
}
END_TEST

START_TEST(rate_shares_add_up_to_the_plan)
{
    double rate;
    int64_t burst;
    leases_rate_share(100, 100, 3, &rate, &burst);
    ck_assert_double_eq_tol(rate * 3, 100, 1e-9);
    ck_assert_int_eq(burst, 34); /* 3 x 34 = 102 <= 100 + 3 - 1 */
    leases_rate_share(100, 100, 1, &rate, &burst);
    ck_assert_double_eq_tol(rate, 100, 1e-9);
    ck_assert_int_eq(burst, 100);
    leases_rate_share(100, 100, 0, &rate, &burst); /* no heartbeat yet: alone */
    ck_assert_int_eq(burst, 100);
    leases_rate_share(10, 1, 4, &rate, &burst); /* every replica keeps one token */
    ck_assert_int_eq(burst, 1);
    ck_assert_double_eq_tol(rate, 2.5, 1e-9);
    leases_rate_share(10, 0, 4, &rate, &burst);
    ck_assert_int_eq(burst, 0);
    for (int64_t n = 1; n <= 16; n++) {
        leases_rate_share(7, 100, n, &rate, &burst);
        ck_assert_int_ge(burst * n, 100);
        ck_assert_int_le(burst * n, 100 + n - 1);
    }
}
END_TEST

Suite *api_leases_suite(void)
{
    Suite *s = suite_create("api_leases");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, slice_is_a_200th_of_the_quota_within_its_bounds);
    tcase_add_test(tc, slice_bounds_the_overshoot_at_half_a_percent_or_ten);
    tcase_add_test(tc, refill_tops_up_at_half_a_slice);
    tcase_add_test(tc, rate_shares_add_up_to_the_plan);
    tcase_add_test(tc, a_pending_release_gets_no_top_up);
    suite_add_tcase(s, tc);
    return s;
}
