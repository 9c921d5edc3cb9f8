/* Unit tests for common/tokenbucket: the throttle of the api's authorize
 * endpoint and of the reporter's calls to Stripe. */
#include <stdint.h>

#include "suites.h"
#include "timeutil.h"
#include "tokenbucket.h"

#define T0 INT64_C(1795392000000000)

START_TEST(starts_full_and_empties_at_burst)
{
    tokenbucket b;
    tokenbucket_init(&b, 5, T0);
    ck_assert_int_eq(tokenbucket_available(&b, 1.0, 5, T0), 5);
    for (int i = 0; i < 5; i++)
        ck_assert(tokenbucket_take(&b, 1.0, 5, T0));
    ck_assert(!tokenbucket_take(&b, 1.0, 5, T0));
    ck_assert_int_eq(tokenbucket_available(&b, 1.0, 5, T0), 0);
}
END_TEST

START_TEST(refills_at_rate)
{
    tokenbucket b;
    tokenbucket_init(&b, 2, T0);
    ck_assert(tokenbucket_take(&b, 10.0, 2, T0));
    ck_assert(tokenbucket_take(&b, 10.0, 2, T0));
    ck_assert(!tokenbucket_take(&b, 10.0, 2, T0));
    /* 10/s: one token every 100 ms. */
    ck_assert_int_eq(tokenbucket_wait_usec(&b, 10.0, 2, T0), 100000);
    ck_assert(!tokenbucket_take(&b, 10.0, 2, T0 + 99000));
    ck_assert(tokenbucket_take(&b, 10.0, 2, T0 + 100000));
    ck_assert(!tokenbucket_take(&b, 10.0, 2, T0 + 100000));
    /* Never more than the burst, however long it waits. */
    ck_assert_int_eq(tokenbucket_available(&b, 10.0, 2, T0 + 3600 * USEC_PER_SEC), 2);
    ck_assert_int_eq(tokenbucket_full_usec(&b, 10.0, 2, T0 + 100000), 200000);
}
END_TEST

START_TEST(sustained_rate_is_exact)
{
    tokenbucket b;
    tokenbucket_init(&b, 1, T0);
    int allowed = 0;
    /* Offered 1000/s for 10 s against 50/s, burst 1: 500 pass, plus the first. */
    for (int i = 0; i < 10000; i++)
        allowed += tokenbucket_take(&b, 50.0, 1, T0 + (int64_t)i * 1000);
    ck_assert_int_ge(allowed, 499);
    ck_assert_int_le(allowed, 501);
}
END_TEST

START_TEST(zero_rate_and_zero_burst)
{
    tokenbucket b;
    tokenbucket_init(&b, 0, T0);
    ck_assert(!tokenbucket_take(&b, 100.0, 0, T0 + USEC_PER_SEC));
    ck_assert_int_eq(tokenbucket_wait_usec(&b, 100.0, 0, T0), INT64_MAX);
    tokenbucket_init(&b, 3, T0);
    for (int i = 0; i < 3; i++)
        ck_assert(tokenbucket_take(&b, 0.0, 3, T0 + i * USEC_PER_SEC));
    ck_assert(!tokenbucket_take(&b, 0.0, 3, T0 + 100 * USEC_PER_SEC));
    ck_assert_int_eq(tokenbucket_wait_usec(&b, 0.0, 3, T0), INT64_MAX);
}
END_TEST

START_TEST(clock_going_back_adds_nothing)
{
    tokenbucket b;
    tokenbucket_init(&b, 1, T0);
    ck_assert(tokenbucket_take(&b, 1.0, 1, T0));
    ck_assert(!tokenbucket_take(&b, 1.0, 1, T0 - 10 * USEC_PER_SEC));
    ck_assert(!tokenbucket_take(&b, 1.0, 1, T0 + 500000));
    ck_assert(tokenbucket_take(&b, 1.0, 1, T0 + USEC_PER_SEC));
}
END_TEST

START_TEST(lower_burst_caps_tokens)
{
    tokenbucket b;
    tokenbucket_init(&b, 100, T0);
    ck_assert_int_eq(tokenbucket_available(&b, 1.0, 3, T0), 3);
    for (int i = 0; i < 3; i++)
        ck_assert(tokenbucket_take(&b, 1.0, 3, T0));
    ck_assert(!tokenbucket_take(&b, 1.0, 3, T0));
}
END_TEST

/* A rate of 1e-300 with a huge burst: the waits are far beyond int64. They
 * were cast from double unchecked (undefined behaviour; on x86 INT64_MIN,
 * a negative wait); now clamped to INT64_MAX ("never"). */
START_TEST(huge_waits_are_clamped_not_overflowed)
{
    tokenbucket b;
    tokenbucket_init(&b, 2147483647, T0);
    ck_assert(tokenbucket_take(&b, 1e-300, 2147483647, T0));
    ck_assert_int_eq(tokenbucket_full_usec(&b, 1e-300, 2147483647, T0), INT64_MAX);
    ck_assert_int_eq(tokenbucket_available(&b, 1e-300, 2147483647, T0), 2147483646);
    tokenbucket_init(&b, 1, T0);
    ck_assert(tokenbucket_take(&b, 1e-300, 1, T0));
    ck_assert_int_eq(tokenbucket_wait_usec(&b, 1e-300, 1, T0), INT64_MAX);
    ck_assert_int_eq(tokenbucket_full_usec(&b, 1e-300, 1, T0), INT64_MAX);
    /* Just below 2^63 microseconds still fits. */
    ck_assert_int_gt(tokenbucket_wait_usec(&b, 1.1e-13, 1, T0), INT64_C(9000000000000000000));
    /* A burst of INT64_MAX: the bucket's double is 2^63, not representable. */
    tokenbucket_init(&b, INT64_MAX, T0);
    ck_assert_int_eq(tokenbucket_available(&b, 1.0, INT64_MAX, T0), INT64_MAX);
}
END_TEST

Suite *tokenbucket_suite(void)
{
    Suite *s = suite_create("tokenbucket");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, starts_full_and_empties_at_burst);
    tcase_add_test(tc, refills_at_rate);
    tcase_add_test(tc, sustained_rate_is_exact);
    tcase_add_test(tc, zero_rate_and_zero_burst);
    tcase_add_test(tc, clock_going_back_adds_nothing);
    tcase_add_test(tc, lower_burst_caps_tokens);
    tcase_add_test(tc, huge_waits_are_clamped_not_overflowed);
    suite_add_tcase(s, tc);
    return s;
}
