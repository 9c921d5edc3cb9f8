#include "period.h"

#include <string.h>

#include "timeutil.h"

static const char *const period_names[PERIOD_KIND_COUNT] = {"DAY", "WEEK", "MONTH"};

bool period_parse(const char *text, period_kind *out)
{
    for (int i = 0; i < PERIOD_KIND_COUNT; i++) {
        if (strcmp(text, period_names[i]) == 0) {
            *out = (period_kind)i;
            return true;
        }
    }
    return false;
}

const char *period_name(period_kind kind)
{
    return (unsigned)kind < PERIOD_KIND_COUNT ? period_names[kind] : "?";
}

int64_t period_start(period_kind kind, int64_t t)
{
    int64_t days = time_floor_div(t, USEC_PER_DAY);
    switch (kind) {
    case PERIOD_DAY:
        return days * USEC_PER_DAY;
    case PERIOD_WEEK: {
        /* 1970-01-01 was a Thursday: Monday-based weekday is (days + 3) mod 7. */
        int64_t weekday = days + 3 - time_floor_div(days + 3, 7) * 7;
        return (days - weekday) * USEC_PER_DAY;
    }
    case PERIOD_MONTH: {
        int year, month, day;
        time_civil_from_days(days, &year, &month, &day);
        return time_days_from_civil(year, month, 1) * USEC_PER_DAY;
    }
    }
    return days * USEC_PER_DAY;
}

int64_t period_end(period_kind kind, int64_t t)
{
    int64_t start = period_start(kind, t);
    switch (kind) {
    case PERIOD_DAY:
        return start + USEC_PER_DAY;
    case PERIOD_WEEK:
        return start + 7 * USEC_PER_DAY;
    case PERIOD_MONTH: {
        int year, month, day;
        time_civil_from_days(time_floor_div(start, USEC_PER_DAY), &year, &month, &day);
        return start + (int64_t)time_days_in_month(year, month) * USEC_PER_DAY;
    }
    }
    return start + USEC_PER_DAY;
}

int64_t period_limit(int64_t limit, int64_t offset, period_kind kind, int64_t first_period_at,
                     int64_t t)
{
    if (period_start(kind, t) != period_start(kind, first_period_at))
        return limit;
    int64_t reduced = limit - offset;
    return reduced < 0 ? 0 : reduced;
}
