/* Unit tests for common/period: quota period boundaries (UTC days, ISO weeks
 * starting Monday 00:00 UTC, calendar months) and the first-period offset. */
#include <stdint.h>
#include <string.h>

#include "period.h"
#include "suites.h"
#include "timeutil.h"

/* Midnight UTC of a date, via the calendar functions test_timeutil.c checks. */
static int64_t midnight(int year, int month, int day)
{
    return time_days_from_civil(year, month, day) * USEC_PER_DAY;
}

static void assert_period(period_kind kind, int64_t t, int64_t start, int64_t end)
{
    char tb[TIME_RFC3339_LEN], sb[TIME_RFC3339_LEN], eb[TIME_RFC3339_LEN];
    int64_t got_start = period_start(kind, t);
    int64_t got_end = period_end(kind, t);
    ck_assert_msg(got_start == start, "%s start of %s: expected %s, got %lld",
                  period_name(kind), time_format_rfc3339(t, tb, sizeof tb),
                  time_format_rfc3339(start, sb, sizeof sb), (long long)got_start);
    ck_assert_msg(got_end == end, "%s end of %s: expected %s, got %lld", period_name(kind),
                  time_format_rfc3339(t, tb, sizeof tb), time_format_rfc3339(end, eb, sizeof eb),
                  (long long)got_end);
}

/* ---- DAY ---- */

START_TEST(day_boundaries)
{
    int64_t d23 = midnight(2026, 11, 23);
    int64_t d24 = midnight(2026, 11, 24);
    ck_assert_int_eq(d23, INT64_C(1795392000000000));
    assert_period(PERIOD_DAY, d23, d23, d24);
    assert_period(PERIOD_DAY, d23 + 12 * USEC_PER_HOUR + 123456, d23, d24);
    assert_period(PERIOD_DAY, d24 - 1, d23, d24);
    assert_period(PERIOD_DAY, d23 - 1, d23 - USEC_PER_DAY, d23);
    assert_period(PERIOD_DAY, 0, 0, USEC_PER_DAY);
    assert_period(PERIOD_DAY, -1, -USEC_PER_DAY, 0);
    assert_period(PERIOD_DAY, -USEC_PER_DAY, -USEC_PER_DAY, 0);
    assert_period(PERIOD_DAY, -USEC_PER_DAY - 1, -2 * USEC_PER_DAY, -USEC_PER_DAY);
    /* Year end and a leap day. */
    assert_period(PERIOD_DAY, midnight(2027, 1, 1) - 1, midnight(2026, 12, 31),
                  midnight(2027, 1, 1));
    assert_period(PERIOD_DAY, midnight(2024, 2, 29) + 5, midnight(2024, 2, 29),
                  midnight(2024, 3, 1));
}
END_TEST

/* ---- WEEK ---- */

START_TEST(week_starts_monday_midnight_utc)
{
    int64_t mon = midnight(2026, 11, 23); /* a Monday */
    int64_t prev_mon = midnight(2026, 11, 16);
    int64_t next_mon = midnight(2026, 11, 30);
    ck_assert_int_eq(next_mon, INT64_C(1795996800000000));
    /* Monday 00:00 opens a new week... */
    assert_period(PERIOD_WEEK, mon, mon, next_mon);
    /* ...and Sunday 23:59:59.999999 still belongs to the previous one. */
    assert_period(PERIOD_WEEK, mon - 1, prev_mon, mon);
    assert_period(PERIOD_WEEK, midnight(2026, 11, 22) + 12 * USEC_PER_HOUR, prev_mon, mon);
    assert_period(PERIOD_WEEK, next_mon - 1, mon, next_mon);
    assert_period(PERIOD_WEEK, midnight(2026, 11, 26) + 7, mon, next_mon); /* Thursday */
}
END_TEST

START_TEST(week_spanning_year_end)
{
    int64_t start = midnight(2026, 12, 28);
    int64_t end = midnight(2027, 1, 4);
    ck_assert_int_eq(start, INT64_C(1798416000000000));
    ck_assert_int_eq(end, INT64_C(1799020800000000));
    assert_period(PERIOD_WEEK, start, start, end);
    assert_period(PERIOD_WEEK, midnight(2026, 12, 31) + 23 * USEC_PER_HOUR, start, end);
    assert_period(PERIOD_WEEK, midnight(2027, 1, 1), start, end);
    assert_period(PERIOD_WEEK, end - 1, start, end);
    assert_period(PERIOD_WEEK, end, end, end + 7 * USEC_PER_DAY);
    assert_period(PERIOD_WEEK, start - 1, start - 7 * USEC_PER_DAY, start);
}
END_TEST

START_TEST(week_around_epoch)
{
    /* 1970-01-01 was a Thursday: its week runs Monday 1969-12-29 .. 1970-01-05. */
    int64_t start = INT64_C(-259200000000);
    int64_t end = INT64_C(345600000000);
    ck_assert_int_eq(midnight(1969, 12, 29), start);
    assert_period(PERIOD_WEEK, 0, start, end);
    assert_period(PERIOD_WEEK, -1, start, end);
    assert_period(PERIOD_WEEK, start, start, end);
    assert_period(PERIOD_WEEK, start - 1, start - 7 * USEC_PER_DAY, start);
    assert_period(PERIOD_WEEK, end - 1, start, end);
    assert_period(PERIOD_WEEK, end, end, end + 7 * USEC_PER_DAY);
}
END_TEST

START_TEST(week_every_day_over_decades)
{
    /* 1899-12-25 is a Monday; weeks tile the line exactly. One assertion at
     * the end: Check records each assertion, too slow inside the loop. */
    int64_t monday = midnight(1899, 12, 25);
    int64_t bad = INT64_MIN;
    for (int64_t day = time_days_from_civil(1900, 1, 1); day < time_days_from_civil(2101, 1, 1);
         day++) {
        int64_t t = day * USEC_PER_DAY;
        if ((t - monday) % (7 * USEC_PER_DAY) == 0)
            monday = t;
        if (period_start(PERIOD_WEEK, t) != monday ||
            period_start(PERIOD_WEEK, t + USEC_PER_DAY - 1) != monday ||
            period_end(PERIOD_WEEK, t) != monday + 7 * USEC_PER_DAY) {
            bad = t;
            break;
        }
    }
    char tb[TIME_RFC3339_LEN];
    ck_assert_msg(bad == INT64_MIN, "wrong week for %s", time_format_rfc3339(bad, tb, sizeof tb));
}
END_TEST

/* ---- MONTH ---- */

START_TEST(month_lengths)
{
    /* 31, 30, 28 and 29-day months. */
    assert_period(PERIOD_MONTH, midnight(2026, 1, 15), midnight(2026, 1, 1), midnight(2026, 2, 1));
    assert_period(PERIOD_MONTH, midnight(2026, 4, 30) + USEC_PER_DAY - 1, midnight(2026, 4, 1),
                  midnight(2026, 5, 1));
    ck_assert_int_eq(period_end(PERIOD_MONTH, midnight(2026, 4, 1)) - midnight(2026, 4, 1),
                     30 * USEC_PER_DAY);
    ck_assert_int_eq(period_end(PERIOD_MONTH, midnight(2026, 1, 1)) - midnight(2026, 1, 1),
                     31 * USEC_PER_DAY);
    ck_assert_int_eq(midnight(2026, 2, 1), INT64_C(1769904000000000));
    ck_assert_int_eq(midnight(2026, 3, 1), INT64_C(1772323200000000));
    assert_period(PERIOD_MONTH, midnight(2026, 2, 28) + 1, INT64_C(1769904000000000),
                  INT64_C(1772323200000000));
    ck_assert_int_eq(period_end(PERIOD_MONTH, midnight(2026, 2, 1)) - midnight(2026, 2, 1),
                     28 * USEC_PER_DAY);
}
END_TEST

START_TEST(month_leap_februaries)
{
    /* 2024: leap. */
    assert_period(PERIOD_MONTH, INT64_C(1709164800000000), INT64_C(1706745600000000),
                  INT64_C(1709251200000000)); /* 2024-02-29 -> [02-01, 03-01) */
    assert_period(PERIOD_MONTH, INT64_C(1709251200000000) - 1, INT64_C(1706745600000000),
                  INT64_C(1709251200000000));
    assert_period(PERIOD_MONTH, INT64_C(1709251200000000), INT64_C(1709251200000000),
                  midnight(2024, 4, 1));
    /* 2100: not leap, February ends after the 28th. */
    int64_t feb2100 = midnight(2100, 2, 1);
    ck_assert_int_eq(INT64_C(4107542400000000) - feb2100, 28 * USEC_PER_DAY);
    assert_period(PERIOD_MONTH, INT64_C(4107456000000000), feb2100, INT64_C(4107542400000000));
    assert_period(PERIOD_MONTH, INT64_C(4107542400000000) - 1, feb2100,
                  INT64_C(4107542400000000));
    assert_period(PERIOD_MONTH, INT64_C(4107542400000000), INT64_C(4107542400000000),
                  midnight(2100, 4, 1));
    /* 2000: leap (divisible by 400). */
    assert_period(PERIOD_MONTH, INT64_C(951782400000000), midnight(2000, 2, 1),
                  INT64_C(951868800000000));
    ck_assert_int_eq(INT64_C(951868800000000) - midnight(2000, 2, 1), 29 * USEC_PER_DAY);
}
END_TEST

START_TEST(month_december_rolls_into_january)
{
    int64_t dec = INT64_C(1796083200000000); /* 2026-12-01 */
    int64_t jan = INT64_C(1798761600000000); /* 2027-01-01 */
    assert_period(PERIOD_MONTH, dec, dec, jan);
    assert_period(PERIOD_MONTH, jan - 1, dec, jan);
    assert_period(PERIOD_MONTH, jan, jan, midnight(2027, 2, 1));
    assert_period(PERIOD_MONTH, dec - 1, midnight(2026, 11, 1), dec);
    /* Before the epoch. */
    assert_period(PERIOD_MONTH, -1, midnight(1969, 12, 1), 0);
    assert_period(PERIOD_MONTH, 0, 0, midnight(1970, 2, 1));
}
END_TEST

START_TEST(month_every_month_1900_to_2200)
{
    int bad_year = 0, bad_month = 0;
    for (int year = 1900; year <= 2200 && bad_year == 0; year++) {
        for (int month = 1; month <= 12; month++) {
            int64_t start = midnight(year, month, 1);
            int64_t end = month == 12 ? midnight(year + 1, 1, 1) : midnight(year, month + 1, 1);
            int64_t inside[] = {start, end - 1, start + 14 * USEC_PER_DAY + 1};
            bool ok = end - start == time_days_in_month(year, month) * USEC_PER_DAY;
            for (size_t i = 0; i < 3; i++)
                ok = ok && period_start(PERIOD_MONTH, inside[i]) == start &&
                     period_end(PERIOD_MONTH, inside[i]) == end;
            if (!ok) {
                bad_year = year;
                bad_month = month;
                break;
            }
        }
    }
    ck_assert_msg(bad_year == 0, "wrong month period for %d-%02d", bad_year, bad_month);
}
END_TEST

/* ---- period_limit ---- */

START_TEST(limit_offset_applies_in_first_period_only)
{
    int64_t first = midnight(2026, 11, 10) + 15 * USEC_PER_HOUR;
    /* MONTH: November is the first period. */
    ck_assert_int_eq(period_limit(1000, 300, PERIOD_MONTH, first, first), 700);
    ck_assert_int_eq(period_limit(1000, 300, PERIOD_MONTH, first, midnight(2026, 11, 1)), 700);
    ck_assert_int_eq(period_limit(1000, 300, PERIOD_MONTH, first, midnight(2026, 12, 1) - 1), 700);
    ck_assert_int_eq(period_limit(1000, 300, PERIOD_MONTH, first, midnight(2026, 12, 1)), 1000);
    ck_assert_int_eq(period_limit(1000, 300, PERIOD_MONTH, first, midnight(2027, 11, 15)), 1000);
    ck_assert_int_eq(period_limit(1000, 300, PERIOD_MONTH, first, midnight(2026, 11, 1) - 1), 1000);
    /* WEEK: 2026-11-10 is a Tuesday; its week is 11-09 .. 11-16. */
    ck_assert_int_eq(period_limit(50, 20, PERIOD_WEEK, first, midnight(2026, 11, 9)), 30);
    ck_assert_int_eq(period_limit(50, 20, PERIOD_WEEK, first, midnight(2026, 11, 16) - 1), 30);
    ck_assert_int_eq(period_limit(50, 20, PERIOD_WEEK, first, midnight(2026, 11, 16)), 50);
    ck_assert_int_eq(period_limit(50, 20, PERIOD_WEEK, first, midnight(2026, 11, 9) - 1), 50);
    /* DAY */
    ck_assert_int_eq(period_limit(10, 4, PERIOD_DAY, first, midnight(2026, 11, 10)), 6);
    ck_assert_int_eq(period_limit(10, 4, PERIOD_DAY, first, midnight(2026, 11, 11) - 1), 6);
    ck_assert_int_eq(period_limit(10, 4, PERIOD_DAY, first, midnight(2026, 11, 11)), 10);
}
END_TEST

START_TEST(limit_never_negative)
{
    int64_t first = midnight(2026, 11, 10);
    ck_assert_int_eq(period_limit(100, 100, PERIOD_DAY, first, first), 0);
    ck_assert_int_eq(period_limit(100, 101, PERIOD_DAY, first, first), 0);
    ck_assert_int_eq(period_limit(100, INT64_C(1000000000000), PERIOD_MONTH, first, first), 0);
    ck_assert_int_eq(period_limit(0, 5, PERIOD_WEEK, first, first), 0);
    ck_assert_int_eq(period_limit(100, 0, PERIOD_DAY, first, first), 100);
    /* A large offset does not leak into later periods. */
    ck_assert_int_eq(period_limit(100, 101, PERIOD_DAY, first, first + USEC_PER_DAY), 100);
}
END_TEST

/* ---- names ---- */

START_TEST(parse_and_name)
{
    period_kind kind = PERIOD_MONTH;
    ck_assert(period_parse("DAY", &kind));
    ck_assert_int_eq(kind, PERIOD_DAY);
    ck_assert(period_parse("WEEK", &kind));
    ck_assert_int_eq(kind, PERIOD_WEEK);
    ck_assert(period_parse("MONTH", &kind));
    ck_assert_int_eq(kind, PERIOD_MONTH);

    static const char *const bad[] = {"", "day", "Day", "week", "month", "MONTHS", "WEEK ",
                                      " DAY", "D", "YEAR", "?"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        kind = PERIOD_WEEK;
        ck_assert_msg(!period_parse(bad[i], &kind), "accepted \"%s\"", bad[i]);
        ck_assert_int_eq(kind, PERIOD_WEEK);
    }

    ck_assert_str_eq(period_name(PERIOD_DAY), "DAY");
    ck_assert_str_eq(period_name(PERIOD_WEEK), "WEEK");
    ck_assert_str_eq(period_name(PERIOD_MONTH), "MONTH");
    ck_assert_str_eq(period_name((period_kind)PERIOD_KIND_COUNT), "?");
    ck_assert_str_eq(period_name((period_kind)77), "?");
    for (int i = 0; i < PERIOD_KIND_COUNT; i++) {
        ck_assert(period_parse(period_name((period_kind)i), &kind));
        ck_assert_int_eq(kind, i);
    }
}
END_TEST

Suite *period_suite(void)
{
    Suite *s = suite_create("period");
    TCase *bounds = tcase_create("boundaries");
    tcase_add_test(bounds, day_boundaries);
    tcase_add_test(bounds, week_starts_monday_midnight_utc);
    tcase_add_test(bounds, week_spanning_year_end);
    tcase_add_test(bounds, week_around_epoch);
    tcase_add_test(bounds, week_every_day_over_decades);
    tcase_add_test(bounds, month_lengths);
    tcase_add_test(bounds, month_leap_februaries);
    tcase_add_test(bounds, month_december_rolls_into_january);
    tcase_add_test(bounds, month_every_month_1900_to_2200);
    suite_add_tcase(s, bounds);

    TCase *limit = tcase_create("limit");
    tcase_add_test(limit, limit_offset_applies_in_first_period_only);
    tcase_add_test(limit, limit_never_negative);
    tcase_add_test(limit, parse_and_name);
    suite_add_tcase(s, limit);
    return s;
}
