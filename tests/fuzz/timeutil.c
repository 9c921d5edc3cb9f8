/* Fuzz target: common/timeutil.c's RFC 3339 and date parsers (event times,
 * the usage query's from/to). The input bytes are the text; the parsers
 * must not read past `len` (ASan sees the exact-size buffer libFuzzer
 * hands over). Properties of an accepted time t:
 *   - it lies within the years the parser allows (0000..9999, give or take
 *     a day of UTC offset);
 *   - calendar conversion is lossless: time_from_civil(time_to_civil(t)) == t;
 *   - formatted (milliseconds, UTC) and parsed again it is t truncated to
 *     the millisecond, and that text formats to itself;
 * and of an accepted date: it is a UTC midnight whose formatted date is the
 * input, and "<date>T00:00:00Z" parses to the same instant. */
#include <stdbool.h>
#include <string.h>

#include "fuzz.h"
#include "timeutil.h"

#define YEAR0_USEC (INT64_C(-62167219200) * USEC_PER_SEC)     /* 0000-01-01T00:00:00Z */
#define YEAR10000_USEC (INT64_C(253402300800) * USEC_PER_SEC) /* 10000-01-01T00:00:00Z */
#define MAX_OFFSET_USEC (24 * USEC_PER_HOUR)

static void check_civil_round_trip(int64_t t)
{
    civil_time ct;
    time_to_civil(t, &ct);
    FUZZ_CHECK(ct.month >= 1 && ct.month <= 12);
    FUZZ_CHECK(ct.day >= 1 && ct.day <= time_days_in_month(ct.year, ct.month));
    FUZZ_CHECK(ct.hour >= 0 && ct.hour <= 23 && ct.minute >= 0 && ct.minute <= 59);
    FUZZ_CHECK(ct.second >= 0 && ct.second <= 59 && ct.usec >= 0 && ct.usec <= 999999);
    FUZZ_CHECK(time_from_civil(&ct) == t);
}

static void check_format_round_trip(int64_t t)
{
    if (t < YEAR0_USEC || t >= YEAR10000_USEC)
        return; /* an offset moved it out of the four-digit years: not formattable */
    char text[TIME_RFC3339_LEN], again[TIME_RFC3339_LEN];
    time_format_rfc3339(t, text, sizeof text);
    FUZZ_CHECK(strlen(text) == 24);
    int64_t reparsed = 0;
    FUZZ_CHECK(time_parse_rfc3339(text, strlen(text), &reparsed));
    FUZZ_CHECK(reparsed == time_truncate(t, 1000));
    time_format_rfc3339(reparsed, again, sizeof again);
    FUZZ_CHECK(strcmp(text, again) == 0);
}

static void check_rfc3339(const char *text, size_t len)
{
    int64_t t = 0;
    if (!time_parse_rfc3339(text, len, &t))
        return;
    FUZZ_CHECK(t >= YEAR0_USEC - MAX_OFFSET_USEC && t < YEAR10000_USEC + MAX_OFFSET_USEC);
    check_civil_round_trip(t);
    check_format_round_trip(t);
}

static void check_date(const char *text, size_t len)
{
    int64_t t = 0;
    if (!time_parse_date(text, len, &t))
        return;
    FUZZ_CHECK(len == 10);
    FUZZ_CHECK(time_truncate(t, USEC_PER_DAY) == t);
    char formatted[TIME_RFC3339_LEN];
    time_format_rfc3339(t, formatted, sizeof formatted);
    FUZZ_CHECK(memcmp(formatted, text, 10) == 0);
    char midnight[32];
    memcpy(midnight, text, 10);
    memcpy(midnight + 10, "T00:00:00Z", 10);
    int64_t at_midnight = 0;
    FUZZ_CHECK(time_parse_rfc3339(midnight, 20, &at_midnight));
    FUZZ_CHECK(at_midnight == t);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *text = (const char *)data;
    check_rfc3339(text, size);
    check_date(text, size);
    return 0;
}
