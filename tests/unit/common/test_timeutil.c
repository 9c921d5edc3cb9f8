/* Unit tests for common/timeutil: RFC 3339 and date parsing, the civil
 * calendar conversions, and formatting. Expected microsecond values were
 * computed independently (Python's datetime), not with the code under test. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "suites.h"
#include "timeutil.h"

/* 2026-11-23T12:00:00Z, a Monday. */
#define T_2026_11_23_NOON INT64_C(1795435200000000)
/* Marker left in an out-parameter to prove a failed parse did not touch it. */
#define UNTOUCHED INT64_C(424242)

/* Parses `text` from an exact-size heap copy, so ASan reports any read past
 * `len` (the parsers take a length, not a NUL-terminated string). */
static bool parse_exact(const char *text, size_t len, int64_t *out,
                        bool (*parser)(const char *, size_t, int64_t *))
{
    char *copy = malloc(len > 0 ? len : 1);
    ck_assert_ptr_nonnull(copy);
    memcpy(copy, text, len);
    bool ok = parser(copy, len, out);
    free(copy);
    return ok;
}

static bool parse_rfc(const char *text, int64_t *out)
{
    return parse_exact(text, strlen(text), out, time_parse_rfc3339);
}

static bool parse_date(const char *text, int64_t *out)
{
    return parse_exact(text, strlen(text), out, time_parse_date);
}

static void assert_rfc(const char *text, int64_t expected)
{
    int64_t got = UNTOUCHED;
    ck_assert_msg(parse_rfc(text, &got), "rejected valid \"%s\"", text);
    ck_assert_msg(got == expected, "\"%s\": expected %lld, got %lld", text, (long long)expected,
                  (long long)got);
}

static void assert_rfc_rejected(const char *text)
{
    int64_t got = UNTOUCHED;
    ck_assert_msg(!parse_rfc(text, &got), "accepted invalid \"%s\" as %lld", text,
                  (long long)got);
    ck_assert_msg(got == UNTOUCHED, "\"%s\": out changed on failure", text);
}

/* ---- RFC 3339 parsing ---- */

START_TEST(rfc3339_utc_designators)
{
    assert_rfc("2026-11-23T12:00:00Z", T_2026_11_23_NOON);
    assert_rfc("2026-11-23T12:00:00z", T_2026_11_23_NOON);
    assert_rfc("2026-11-23t12:00:00Z", T_2026_11_23_NOON);
    assert_rfc("2026-11-23t12:00:00z", T_2026_11_23_NOON);
    assert_rfc("2026-11-23T12:00:00.123Z", T_2026_11_23_NOON + 123000);
    assert_rfc("2026-11-23T12:00:00+00:00", T_2026_11_23_NOON);
    assert_rfc("2026-11-23T12:00:00-00:00", T_2026_11_23_NOON);
    assert_rfc("1970-01-01T00:00:00Z", 0);
    assert_rfc("1969-12-31T23:59:59.999999Z", -1);
    assert_rfc("1900-01-01T00:00:00Z", INT64_C(-2208988800000000));
    assert_rfc("0000-01-01T00:00:00Z", INT64_C(-62167219200000000));
    assert_rfc("0001-01-01T00:00:00Z", INT64_C(-62135596800000000));
    assert_rfc("9999-12-31T23:59:59.999999Z", INT64_C(253402300799999999));
}
END_TEST

START_TEST(rfc3339_offsets)
{
    /* 12:00 at +05:30 is 06:30 UTC; 12:00 at -08:00 is 20:00 UTC. */
    assert_rfc("2026-11-23T12:00:00+05:30", INT64_C(1795415400000000));
    assert_rfc("2026-11-23T12:00:00-08:00", INT64_C(1795464000000000));
    assert_rfc("2026-11-23T12:00:00.5-08:00", INT64_C(1795464000500000));
    /* Offsets move the instant across a day and a year boundary. */
    assert_rfc("2026-01-01T02:00:00+05:00", INT64_C(1767214800000000)); /* 2025-12-31T21Z */
    assert_rfc("2026-12-31T20:00:00-04:00", INT64_C(1798761600000000)); /* 2027-01-01T00Z */
    assert_rfc("2026-11-23T12:00:00+23:59", T_2026_11_23_NOON - 23 * USEC_PER_HOUR - 59 * 60 * USEC_PER_SEC);
    assert_rfc("2026-11-23T12:00:00-23:59", T_2026_11_23_NOON + 23 * USEC_PER_HOUR + 59 * 60 * USEC_PER_SEC);
    assert_rfc("1970-01-01T00:00:00+01:00", -USEC_PER_HOUR);
}
END_TEST

START_TEST(rfc3339_fractions_truncate_to_usec)
{
    assert_rfc("2026-11-23T12:00:00.1Z", T_2026_11_23_NOON + 100000);
    assert_rfc("2026-11-23T12:00:00.12Z", T_2026_11_23_NOON + 120000);
    assert_rfc("2026-11-23T12:00:00.123Z", T_2026_11_23_NOON + 123000);
    assert_rfc("2026-11-23T12:00:00.1234Z", T_2026_11_23_NOON + 123400);
    assert_rfc("2026-11-23T12:00:00.12345Z", T_2026_11_23_NOON + 123450);
    assert_rfc("2026-11-23T12:00:00.123456Z", T_2026_11_23_NOON + 123456);
    assert_rfc("2026-11-23T12:00:00.1234567Z", T_2026_11_23_NOON + 123456);
    assert_rfc("2026-11-23T12:00:00.12345678Z", T_2026_11_23_NOON + 123456);
    assert_rfc("2026-11-23T12:00:00.123456789Z", T_2026_11_23_NOON + 123456);
    /* Truncated, never rounded up into the next second. */
    assert_rfc("2026-11-23T12:00:00.999999999Z", T_2026_11_23_NOON + 999999);
    assert_rfc("2026-11-23T12:00:00.0000009Z", T_2026_11_23_NOON);
    assert_rfc("2026-11-23T12:00:00.000001Z", T_2026_11_23_NOON + 1);
    assert_rfc("2026-11-23T12:00:00.0Z", T_2026_11_23_NOON);
    assert_rfc("2026-11-23T12:00:00.000000000Z", T_2026_11_23_NOON);
    assert_rfc("2026-11-23T12:00:00.999999+01:00", T_2026_11_23_NOON - USEC_PER_HOUR + 999999);
    /* Fractions of a pre-epoch instant still count forward within the second. */
    assert_rfc("1969-12-31T23:59:59.5Z", -500000);
}
END_TEST

START_TEST(rfc3339_leap_second)
{
    /* Read as the last microsecond of the minute, whatever the fraction. */
    assert_rfc("1998-12-31T23:59:60Z", INT64_C(915148799999999));
    assert_rfc("1998-12-31T23:59:60.000Z", INT64_C(915148799999999));
    assert_rfc("1998-12-31T23:59:60.5Z", INT64_C(915148799999999));
    assert_rfc("1998-12-31T23:59:60.999999999Z", INT64_C(915148799999999));
    assert_rfc("1999-01-01T00:59:60+01:00", INT64_C(915148799999999));
    assert_rfc("1998-12-31T15:59:60-08:00", INT64_C(915148799999999));
    assert_rfc_rejected("1998-12-31T23:59:61Z");
    assert_rfc_rejected("1998-12-31T23:59:99Z");
}
END_TEST

START_TEST(rfc3339_calendar_validation)
{
    assert_rfc("2024-02-29T00:00:00Z", INT64_C(1709164800000000));
    assert_rfc("2000-02-29T00:00:00Z", INT64_C(951782400000000));
    assert_rfc("2026-01-31T00:00:00Z", INT64_C(1769817600000000));
    assert_rfc("2026-04-30T00:00:00Z", INT64_C(1777507200000000));
    assert_rfc_rejected("2026-13-01T00:00:00Z");
    assert_rfc_rejected("2026-00-01T00:00:00Z");
    assert_rfc_rejected("2026-01-32T00:00:00Z");
    assert_rfc_rejected("2026-01-00T00:00:00Z");
    assert_rfc_rejected("2026-04-31T00:00:00Z");
    assert_rfc_rejected("2026-02-29T00:00:00Z"); /* 2026 is not a leap year */
    assert_rfc_rejected("2100-02-29T00:00:00Z"); /* divisible by 100, not by 400 */
    assert_rfc_rejected("2024-02-30T00:00:00Z"); /* even a leap February has 29 days */
    assert_rfc_rejected("2026-11-23T24:00:00Z");
    assert_rfc_rejected("2026-11-23T12:60:00Z");
    assert_rfc_rejected("2026-11-23T99:00:00Z");
}
END_TEST

START_TEST(rfc3339_syntax_rejections)
{
    static const char *const bad[] = {
        "",
        "2026-11-23T12:00:00",          /* no zone */
        "2026-11-23T12:00:00.123",      /* no zone after a fraction */
        "2026-11-23",                   /* date only */
        "2026-11-23T12:00Z",            /* no seconds */
        "2026-11-23T12:00:00.Z",        /* dot without digits */
        "2026-11-23T12:00:00.1234567890Z", /* ten fraction digits */
        "2026-11-23T12:00:00Z ",        /* trailing space */
        "2026-11-23T12:00:00Zx",        /* trailing garbage */
        "2026-11-23T12:00:00ZZ",
        "2026-11-23T12:00:00+05:30x",
        " 2026-11-23T12:00:00Z",        /* leading space */
        "2026-11-23 12:00:00Z",         /* space separator */
        "2026-11-23X12:00:00Z",
        "2026-11-23T12:00:00+05",       /* offset without minutes */
        "2026-11-23T12:00:00+0530",     /* offset without colon */
        "2026-11-23T12:00:00+5:30",
        "2026-11-23T12:00:00+24:00",
        "2026-11-23T12:00:00+05:60",
        "2026-11-23T12:00:00 +05:30",
        "2026-11-23T12:00:00UTC",
        "2026-11-23T12:00:00GMT",
        "2026-11-23T12:00:00,5Z",       /* comma decimal sign */
        "26-11-23T12:00:00Z",
        "2026-1-23T12:00:00Z",
        "2026-11-3T12:00:00Z",
        "2026-11-23T1:00:00Z",
        "2026/11/23T12:00:00Z",
        "2026-11-23T12.00.00Z",
        "+2026-11-23T12:00:00Z",
        "-2026-11-23T12:00:00Z",
        "20261123T120000Z",
        "2026-11-23T12:00:00.-1Z",
        "2026-11-23T12:00:00.+1Z",
        "abcd-ef-ghTij:kl:mnZ",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        assert_rfc_rejected(bad[i]);
}
END_TEST

START_TEST(rfc3339_every_prefix_is_rejected)
{
    /* Each strict prefix ends early; each is parsed from an exact-size buffer
     * so a read past the end is an ASan error. */
    static const char *const full[] = {
        "2026-11-23T12:00:00.123456789+05:30",
        "2026-11-23T12:00:00.5Z",
        "1998-12-31T23:59:60-08:00",
    };
    for (size_t f = 0; f < sizeof full / sizeof full[0]; f++) {
        size_t n = strlen(full[f]);
        for (size_t len = 0; len < n; len++) {
            int64_t got = UNTOUCHED;
            ck_assert_msg(!parse_exact(full[f], len, &got, time_parse_rfc3339),
                          "accepted the %zu-byte prefix of \"%s\"", len, full[f]);
            ck_assert_int_eq(got, UNTOUCHED);
        }
        int64_t got = UNTOUCHED;
        ck_assert(parse_exact(full[f], n, &got, time_parse_rfc3339));
    }
}
END_TEST

START_TEST(rfc3339_honours_length_not_nul)
{
    const char *text = "2026-11-23T12:00:00Zgarbage";
    int64_t got = UNTOUCHED;
    ck_assert(parse_exact(text, 20, &got, time_parse_rfc3339));
    ck_assert_int_eq(got, T_2026_11_23_NOON);
    got = UNTOUCHED;
    ck_assert(!parse_exact(text, 19, &got, time_parse_rfc3339));
    ck_assert(!parse_exact(text, 21, &got, time_parse_rfc3339));
    ck_assert_int_eq(got, UNTOUCHED);
    /* An embedded NUL is a byte like any other: garbage. */
    const char with_nul[] = "2026-11-23T12:00:00Z\0";
    ck_assert(!parse_exact(with_nul, sizeof with_nul - 1, &got, time_parse_rfc3339));
    ck_assert_int_eq(got, UNTOUCHED);
}
END_TEST

/* ---- YYYY-MM-DD ---- */

START_TEST(date_parsing)
{
    int64_t got = UNTOUCHED;
    ck_assert(parse_date("2026-11-23", &got));
    ck_assert_int_eq(got, INT64_C(1795392000000000));
    ck_assert(parse_date("1970-01-01", &got));
    ck_assert_int_eq(got, 0);
    ck_assert(parse_date("1969-12-31", &got));
    ck_assert_int_eq(got, -USEC_PER_DAY);
    ck_assert(parse_date("2024-02-29", &got));
    ck_assert_int_eq(got, INT64_C(1709164800000000));
    ck_assert(parse_date("2000-02-29", &got));
    ck_assert_int_eq(got, INT64_C(951782400000000));
    ck_assert(parse_date("2027-01-01", &got));
    ck_assert_int_eq(got, INT64_C(1798761600000000));

    static const char *const bad[] = {
        "", "2026-11-2", "2026-11-233", "2026-11-23T", "2026-11-23T00:00:00Z", "2026-11-23 ",
        " 2026-11-23", "20261123", "2026/11/23", "2026-13-01", "2026-00-10", "2026-11-31",
        "2026-02-29", "2100-02-29", "2024-02-30", "2026-11-00", "26-11-23", "2026-1-23",
        "abcd-ef-gh",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        got = UNTOUCHED;
        ck_assert_msg(!parse_date(bad[i], &got), "accepted invalid date \"%s\"", bad[i]);
        ck_assert_int_eq(got, UNTOUCHED);
    }
    /* Every strict prefix, from an exact-size buffer. */
    for (size_t len = 0; len < 10; len++)
        ck_assert(!parse_exact("2026-11-23", len, &got, time_parse_date));
    ck_assert(parse_exact("2026-11-23xyz", 10, &got, time_parse_date));
    ck_assert_int_eq(got, INT64_C(1795392000000000));
}
END_TEST

/* ---- calendar arithmetic ---- */

START_TEST(days_from_civil_known_values)
{
    ck_assert_int_eq(time_days_from_civil(1970, 1, 1), 0);
    ck_assert_int_eq(time_days_from_civil(1970, 1, 2), 1);
    ck_assert_int_eq(time_days_from_civil(1969, 12, 31), -1);
    ck_assert_int_eq(time_days_from_civil(1900, 1, 1), -25567);
    ck_assert_int_eq(time_days_from_civil(2000, 2, 29), 11016);
    ck_assert_int_eq(time_days_from_civil(2000, 3, 1), 11017);
    ck_assert_int_eq(time_days_from_civil(2100, 1, 1), 47482);
    ck_assert_int_eq(time_days_from_civil(1600, 2, 29), -135081);
    ck_assert_int_eq(time_days_from_civil(1, 1, 1), -719162);
    ck_assert_int_eq(time_days_from_civil(0, 3, 1), -719468);
    ck_assert_int_eq(time_days_from_civil(9999, 12, 31), 2932896);

    int y, m, d;
    time_civil_from_days(-1, &y, &m, &d);
    ck_assert(y == 1969 && m == 12 && d == 31);
    time_civil_from_days(11016, &y, &m, &d);
    ck_assert(y == 2000 && m == 2 && d == 29);
    time_civil_from_days(-719468, &y, &m, &d);
    ck_assert(y == 0 && m == 3 && d == 1);
    time_civil_from_days(-719469, &y, &m, &d);
    ck_assert(y == 0 && m == 2 && d == 29);
    time_civil_from_days(2932896, &y, &m, &d);
    ck_assert(y == 9999 && m == 12 && d == 31);
}
END_TEST

START_TEST(civil_round_trip_wide_range)
{
    /* Walk day by day from year -768 to year 4707: each day must be the
     * calendar successor of the one before, and convert back to itself.
     * Check records every assertion (a pipe write), so the loop only notes
     * the first failure and asserts once. */
    int py, pm, pd;
    time_civil_from_days(-1000001, &py, &pm, &pd);
    int64_t bad_day = 0;
    bool failed = false;
    int y = 0, m = 0, d = 0;
    for (int64_t days = -1000000; days <= 1000000 && !failed; days++) {
        time_civil_from_days(days, &y, &m, &d);
        bool next_day = y == py && m == pm && d == pd + 1;
        bool next_month = y == py && m == pm + 1 && d == 1 && pd == time_days_in_month(py, pm);
        bool next_year = y == py + 1 && m == 1 && d == 1 && pm == 12 && pd == 31;
        if (!(next_day || next_month || next_year) || time_days_from_civil(y, m, d) != days) {
            failed = true;
            bad_day = days;
            break;
        }
        py = y;
        pm = m;
        pd = d;
    }
    ck_assert_msg(!failed, "day %lld is %d-%02d-%02d after %d-%02d-%02d (back: %lld)",
                  (long long)bad_day, y, m, d, py, pm, pd,
                  (long long)time_days_from_civil(y, m, d));
    /* The walk ended where it should. */
    ck_assert(y == 4707 && m == 11 && d == 29);
}
END_TEST

START_TEST(leap_years_and_month_lengths)
{
    ck_assert(time_is_leap_year(2024));
    ck_assert(time_is_leap_year(2000));
    ck_assert(time_is_leap_year(1600));
    ck_assert(time_is_leap_year(0));
    ck_assert(!time_is_leap_year(2100));
    ck_assert(!time_is_leap_year(1900));
    ck_assert(!time_is_leap_year(2026));
    ck_assert(!time_is_leap_year(2023));

    static const int lengths[12] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    for (int m = 1; m <= 12; m++)
        ck_assert_int_eq(time_days_in_month(2026, m), lengths[m - 1]);
    ck_assert_int_eq(time_days_in_month(2024, 2), 29);
    ck_assert_int_eq(time_days_in_month(2000, 2), 29);
    ck_assert_int_eq(time_days_in_month(2100, 2), 28);
    ck_assert_int_eq(time_days_in_month(1900, 2), 28);
    ck_assert_int_eq(time_days_in_month(2026, 0), 0);
    ck_assert_int_eq(time_days_in_month(2026, 13), 0);
    ck_assert_int_eq(time_days_in_month(2026, -1), 0);
}
END_TEST

START_TEST(floor_div_and_truncate)
{
    ck_assert_int_eq(time_floor_div(7, 2), 3);
    ck_assert_int_eq(time_floor_div(-7, 2), -4);
    ck_assert_int_eq(time_floor_div(7, -2), -4);
    ck_assert_int_eq(time_floor_div(-7, -2), 3);
    ck_assert_int_eq(time_floor_div(-8, 2), -4);
    ck_assert_int_eq(time_floor_div(0, 5), 0);
    ck_assert_int_eq(time_floor_div(-1, USEC_PER_DAY), -1);
    ck_assert_int_eq(time_floor_div(-USEC_PER_DAY, USEC_PER_DAY), -1);
    ck_assert_int_eq(time_floor_div(-USEC_PER_DAY - 1, USEC_PER_DAY), -2);
    ck_assert_int_eq(time_floor_div(USEC_PER_DAY - 1, USEC_PER_DAY), 0);

    ck_assert_int_eq(time_truncate(T_2026_11_23_NOON + 123456, USEC_PER_SEC), T_2026_11_23_NOON);
    ck_assert_int_eq(time_truncate(T_2026_11_23_NOON + 123456, 1000), T_2026_11_23_NOON + 123000);
    ck_assert_int_eq(time_truncate(T_2026_11_23_NOON + 59 * 60 * USEC_PER_SEC, USEC_PER_HOUR),
                     T_2026_11_23_NOON);
    ck_assert_int_eq(time_truncate(T_2026_11_23_NOON, USEC_PER_DAY), INT64_C(1795392000000000));
    ck_assert_int_eq(time_truncate(-1, USEC_PER_SEC), -USEC_PER_SEC);
    ck_assert_int_eq(time_truncate(-1, USEC_PER_DAY), -USEC_PER_DAY);
    ck_assert_int_eq(time_truncate(-USEC_PER_DAY, USEC_PER_DAY), -USEC_PER_DAY);
    ck_assert_int_eq(time_truncate(0, USEC_PER_HOUR), 0);
    ck_assert_int_eq(time_truncate(-1500, 1000), -2000);
}
END_TEST

START_TEST(civil_time_split_and_join)
{
    civil_time ct;
    time_to_civil(-1, &ct);
    ck_assert(ct.year == 1969 && ct.month == 12 && ct.day == 31);
    ck_assert(ct.hour == 23 && ct.minute == 59 && ct.second == 59 && ct.usec == 999999);

    time_to_civil(T_2026_11_23_NOON + 123456, &ct);
    ck_assert(ct.year == 2026 && ct.month == 11 && ct.day == 23);
    ck_assert(ct.hour == 12 && ct.minute == 0 && ct.second == 0 && ct.usec == 123456);

    time_to_civil(INT64_C(-2208988800000000) - USEC_PER_DAY + 1, &ct); /* 1899-12-31 */
    ck_assert(ct.year == 1899 && ct.month == 12 && ct.day == 31);
    ck_assert(ct.hour == 0 && ct.minute == 0 && ct.second == 0 && ct.usec == 1);

    static const int64_t samples[] = {
        0, 1, -1, USEC_PER_DAY - 1, -USEC_PER_DAY, T_2026_11_23_NOON + 987654,
        INT64_C(951782400000000), INT64_C(-62135596800000000), INT64_C(253402300799999999),
        INT64_C(4107456000000000) + 13 * USEC_PER_HOUR + 7,
    };
    for (size_t i = 0; i < sizeof samples / sizeof samples[0]; i++) {
        time_to_civil(samples[i], &ct);
        ck_assert(ct.hour >= 0 && ct.hour < 24 && ct.minute >= 0 && ct.minute < 60);
        ck_assert(ct.second >= 0 && ct.second < 60 && ct.usec >= 0 && ct.usec < 1000000);
        ck_assert_int_eq(time_from_civil(&ct), samples[i]);
    }
}
END_TEST

/* ---- formatting ---- */

START_TEST(format_rfc3339)
{
    char buf[TIME_RFC3339_LEN];
    ck_assert_ptr_eq(time_format_rfc3339(T_2026_11_23_NOON + 123456, buf, sizeof buf), buf);
    ck_assert_str_eq(buf, "2026-11-23T12:00:00.123Z"); /* truncated to ms */
    ck_assert_str_eq(time_format_rfc3339(T_2026_11_23_NOON + 999999, buf, sizeof buf),
                     "2026-11-23T12:00:00.999Z");
    ck_assert_str_eq(time_format_rfc3339(T_2026_11_23_NOON + 999, buf, sizeof buf),
                     "2026-11-23T12:00:00.000Z");
    ck_assert_str_eq(time_format_rfc3339(0, buf, sizeof buf), "1970-01-01T00:00:00.000Z");
    ck_assert_str_eq(time_format_rfc3339(-1, buf, sizeof buf), "1969-12-31T23:59:59.999Z");
    ck_assert_str_eq(time_format_rfc3339(INT64_C(951782400000000), buf, sizeof buf),
                     "2000-02-29T00:00:00.000Z");
    ck_assert_str_eq(time_format_rfc3339(INT64_C(253402300799999999), buf, sizeof buf),
                     "9999-12-31T23:59:59.999Z");
    ck_assert_str_eq(time_format_rfc3339(INT64_C(-62135596800000000), buf, sizeof buf),
                     "0001-01-01T00:00:00.000Z");
    ck_assert_uint_eq(strlen(buf), 24);

    /* A short buffer is truncated and still terminated. */
    char small[11];
    time_format_rfc3339(T_2026_11_23_NOON, small, sizeof small);
    ck_assert_str_eq(small, "2026-11-23");
}
END_TEST

START_TEST(format_then_parse_round_trip)
{
    static const int64_t samples[] = {
        0, -1, T_2026_11_23_NOON + 123456, INT64_C(951782400000000) - 1,
        INT64_C(1798761600000000), INT64_C(-2208988800000000) + 1500,
    };
    for (size_t i = 0; i < sizeof samples / sizeof samples[0]; i++) {
        char buf[TIME_RFC3339_LEN];
        int64_t back = UNTOUCHED;
        time_format_rfc3339(samples[i], buf, sizeof buf);
        ck_assert_msg(parse_rfc(buf, &back), "could not parse own output \"%s\"", buf);
        /* Formatting keeps milliseconds: the result is samples[i] floored to 1 ms. */
        int64_t ms = samples[i] / 1000 - (samples[i] % 1000 < 0 ? 1 : 0);
        ck_assert_int_eq(back, ms * 1000);
    }
}
END_TEST

START_TEST(now_is_plausible)
{
    int64_t now = time_now_usec();
    ck_assert(now > INT64_C(1577836800000000));  /* after 2020-01-01 */
    ck_assert(now < INT64_C(7258118400000000));  /* before 2200-01-01 */
    ck_assert(time_now_usec() >= now - USEC_PER_SEC);
}
END_TEST

Suite *timeutil_suite(void)
{
    Suite *s = suite_create("timeutil");
    TCase *rfc = tcase_create("rfc3339");
    tcase_add_test(rfc, rfc3339_utc_designators);
    tcase_add_test(rfc, rfc3339_offsets);
    tcase_add_test(rfc, rfc3339_fractions_truncate_to_usec);
    tcase_add_test(rfc, rfc3339_leap_second);
    tcase_add_test(rfc, rfc3339_calendar_validation);
    tcase_add_test(rfc, rfc3339_syntax_rejections);
    tcase_add_test(rfc, rfc3339_every_prefix_is_rejected);
    tcase_add_test(rfc, rfc3339_honours_length_not_nul);
    tcase_add_test(rfc, date_parsing);
    suite_add_tcase(s, rfc);

    TCase *calendar = tcase_create("calendar");
    tcase_add_test(calendar, days_from_civil_known_values);
    tcase_add_test(calendar, civil_round_trip_wide_range);
    tcase_add_test(calendar, leap_years_and_month_lengths);
    tcase_add_test(calendar, floor_div_and_truncate);
    tcase_add_test(calendar, civil_time_split_and_join);
    suite_add_tcase(s, calendar);

    TCase *format = tcase_create("format");
    tcase_add_test(format, format_rfc3339);
    tcase_add_test(format, format_then_parse_round_trip);
    tcase_add_test(format, now_is_plausible);
    suite_add_tcase(s, format);
    return s;
}
