/* Unit tests for services/collector/rollup: a batch's hourly groups and
 * period counters, rendered as the PostgreSQL array literals of the
 * collector's upsert. */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "buf.h"
#include "rollup.h"
#include "suites.h"

/* 2026-11-23 (a Monday) 12:30 UTC, and the next day at 00:10. */
#define MON_1230_USEC INT64_C(1795437000000000)
#define TUE_0010_USEC INT64_C(1795479000000000)

static long group_of(rollup *r, const char *key, const char *method, const char *endpoint,
                     int64_t time_usec)
{
    const char *dimensions[ROLLUP_TEXT_DIMENSION_COUNT] = {
        [ROLLUP_DIM_KEY] = key,
        [ROLLUP_DIM_PLAN] = "gold",
        [ROLLUP_DIM_METHOD] = method,
        [ROLLUP_DIM_ENDPOINT] = endpoint,
    };
    return rollup_group(r, dimensions, time_usec);
}

/* One event's measures, in ROLLUP_MEASURES order. */
static bool add_event(rollup *r, long group, int64_t units, int64_t bytes)
{
    int64_t measures[ROLLUP_MEASURE_COUNT] = {
        [ROLLUP_MEASURE_REQUESTS] = 1,
        [ROLLUP_MEASURE_UNITS] = units,
        [ROLLUP_MEASURE_BYTES] = bytes,
    };
    return rollup_add(r, group, measures);
}

typedef struct {
    buf hourly[ROLLUP_HOURLY_COLUMNS];
    buf counters[ROLLUP_COUNTER_COLUMNS];
} columns;

static void columns_init(columns *c)
{
    for (int i = 0; i < ROLLUP_HOURLY_COLUMNS; i++)
        buf_init(&c->hourly[i], 1 << 16);
    for (int i = 0; i < ROLLUP_COUNTER_COLUMNS; i++)
        buf_init(&c->counters[i], 1 << 16);
}

static void columns_free(columns *c)
{
    for (int i = 0; i < ROLLUP_HOURLY_COLUMNS; i++)
        buf_free(&c->hourly[i]);
    for (int i = 0; i < ROLLUP_COUNTER_COLUMNS; i++)
        buf_free(&c->counters[i]);
}

static void expect_columns(const buf *got, const char *const *expected, int count)
{
    for (int i = 0; i < count; i++)
        ck_assert_msg(got[i].data != NULL && strcmp(got[i].data, expected[i]) == 0,
                      "column %d: got %s, expected %s", i, got[i].data ? got[i].data : "(null)",
                      expected[i]);
}

START_TEST(same_dimensions_and_hour_share_a_group)
{
    rollup *r = rollup_new(16);
    ck_assert_ptr_nonnull(r);
    long a = group_of(r, "k1", "GET", "/v1/x", MON_1230_USEC);
    ck_assert_int_ge(a, 0);
    /* same hour, later minute: same group */
    ck_assert_int_eq(group_of(r, "k1", "GET", "/v1/x", MON_1230_USEC + INT64_C(1200000000)), a);
    /* another method, another hour, another key: a group each */
    long b = group_of(r, "k1", "POST", "/v1/x", MON_1230_USEC);
    long c = group_of(r, "k1", "GET", "/v1/x", TUE_0010_USEC);
    long d = group_of(r, "k2", "GET", "/v1/x", MON_1230_USEC);
    ck_assert(b >= 0 && c >= 0 && d >= 0);
    ck_assert(a != b && a != c && a != d && b != c && b != d && c != d);
    rollup_free(r);
}
END_TEST

/* More groups than the first allocation holds (1,024), up to the limit:
 * all are kept, the next new one is refused, the existing are still found. */
START_TEST(full_rollup_refuses_a_new_group)
{
    enum { MAX_GROUPS = 1100 };
    rollup *r = rollup_new(MAX_GROUPS);
    ck_assert_ptr_nonnull(r);
    char key[32];
    for (int i = 0; i < MAX_GROUPS; i++) {
        snprintf(key, sizeof key, "k%d", i);
        ck_assert_int_eq(group_of(r, key, "GET", "/a", MON_1230_USEC), i);
    }
    ck_assert_int_eq(group_of(r, "one-more", "GET", "/a", MON_1230_USEC), -1);
    ck_assert_int_eq(group_of(r, "k7", "GET", "/a", MON_1230_USEC), 7);
    rollup_free(r);
}
END_TEST

/* A limit under the first allocation is kept too. */
START_TEST(small_rollup_keeps_its_limit)
{
    rollup *r = rollup_new(2);
    ck_assert_ptr_nonnull(r);
    ck_assert_int_eq(group_of(r, "a", "GET", "/a", MON_1230_USEC), 0);
    ck_assert_int_eq(group_of(r, "b", "GET", "/a", MON_1230_USEC), 1);
    ck_assert_int_eq(group_of(r, "c", "GET", "/a", MON_1230_USEC), -1);
    rollup_free(r);
}
END_TEST

START_TEST(render_gives_hourly_rows_and_period_counters)
{
    rollup *r = rollup_new(16);
    ck_assert_ptr_nonnull(r);
    long monday = group_of(r, "k1", "GET", "/v1/a\"b\\c", MON_1230_USEC);
    long tuesday = group_of(r, "k1", "GET", "/v1/a\"b\\c", TUE_0010_USEC);
    long duplicates_only = group_of(r, "k9", "GET", "/v1/x", MON_1230_USEC);
    ck_assert(monday >= 0 && tuesday >= 0 && duplicates_only >= 0);
    ck_assert(add_event(r, monday, 5, 100));
    ck_assert(add_event(r, monday, 5, 100));
    ck_assert(add_event(r, tuesday, 1, 7));

    columns c;
    columns_init(&c);
    ck_assert(rollup_render(r, c.hourly, c.counters));
    /* key, plan, method, endpoint (quoted, " and \ escaped), hour, then
     * requests, units, bytes; the group that only duplicates fell in is
     * left out. */
    static const char *const hourly[ROLLUP_HOURLY_COLUMNS] = {
        "{\"k1\",\"k1\"}",
        "{\"gold\",\"gold\"}",
        "{\"GET\",\"GET\"}",
        "{\"/v1/a\\\"b\\\\c\",\"/v1/a\\\"b\\\\c\"}",
        "{1795435200,1795478400}",
        "{2,1}",
        "{10,1}",
        "{200,7}",
    };
    expect_columns(c.hourly, hourly, ROLLUP_HOURLY_COLUMNS);
    /* key, period, start, then the measures: Monday's day, the week and
     * the month (both days count there), then Tuesday's day. */
    static const char *const counters[ROLLUP_COUNTER_COLUMNS] = {
        "{\"k1\",\"k1\",\"k1\",\"k1\"}",
        "{\"DAY\",\"WEEK\",\"MONTH\",\"DAY\"}",
        "{1795392000,1795392000,1793491200,1795478400}",
        "{2,3,3,1}",
        "{10,11,11,1}",
        "{200,207,207,7}",
    };
    expect_columns(c.counters, counters, ROLLUP_COUNTER_COLUMNS);

    /* a retried batch is counted again from zero */
    rollup_reset_counts(r);
    ck_assert(add_event(r, tuesday, 2, 3));
    ck_assert(rollup_render(r, c.hourly, c.counters));
    ck_assert_str_eq(c.hourly[ROLLUP_TEXT_DIMENSION_COUNT + 1 + ROLLUP_MEASURE_UNITS].data, "{2}");
    ck_assert_str_eq(c.counters[1].data, "{\"DAY\",\"WEEK\",\"MONTH\"}");
    columns_free(&c);
    rollup_free(r);
}
END_TEST

START_TEST(empty_rollup_renders_empty_arrays)
{
    rollup *r = rollup_new(4);
    ck_assert_ptr_nonnull(r);
    columns c;
    columns_init(&c);
    ck_assert(rollup_render(r, c.hourly, c.counters));
    for (int i = 0; i < ROLLUP_HOURLY_COLUMNS; i++)
        ck_assert_str_eq(c.hourly[i].data, "{}");
    for (int i = 0; i < ROLLUP_COUNTER_COLUMNS; i++)
        ck_assert_str_eq(c.counters[i].data, "{}");
    columns_free(&c);
    rollup_free(r);
}
END_TEST

/* Outside numbers are never summed unchecked: an add that would overflow a
 * total is refused whole, and the totals stay as they were. */
START_TEST(add_refuses_int64_overflow)
{
    rollup *r = rollup_new(4);
    ck_assert_ptr_nonnull(r);
    long g = group_of(r, "k1", "GET", "/a", MON_1230_USEC);
    ck_assert_int_ge(g, 0);
    ck_assert(add_event(r, g, INT64_MAX, 1));
    ck_assert(!add_event(r, g, 1, 1));
    columns c;
    columns_init(&c);
    ck_assert(rollup_render(r, c.hourly, c.counters));
    const buf *measures = &c.hourly[ROLLUP_TEXT_DIMENSION_COUNT + 1];
    ck_assert_str_eq(measures[ROLLUP_MEASURE_REQUESTS].data, "{1}");
    ck_assert_str_eq(measures[ROLLUP_MEASURE_UNITS].data, "{9223372036854775807}");
    ck_assert_str_eq(measures[ROLLUP_MEASURE_BYTES].data, "{1}");
    columns_free(&c);
    rollup_free(r);
}
END_TEST

Suite *rollup_suite(void)
{
    Suite *s = suite_create("collector_rollup");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, same_dimensions_and_hour_share_a_group);
    tcase_add_test(tc, full_rollup_refuses_a_new_group);
    tcase_add_test(tc, small_rollup_keeps_its_limit);
    tcase_add_test(tc, render_gives_hourly_rows_and_period_counters);
    tcase_add_test(tc, empty_rollup_renders_empty_arrays);
    tcase_add_test(tc, add_refuses_int64_overflow);
    suite_add_tcase(s, tc);
    return s;
}
