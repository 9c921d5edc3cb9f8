#include "timeutil.h"

#include <stdio.h>
#include <time.h>

int64_t time_now_usec(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * USEC_PER_SEC + ts.tv_nsec / 1000;
}

/* Howard Hinnant's days_from_civil algorithm (public domain description),
 * written out here: eras of 400 years make the arithmetic exact. */
int64_t time_days_from_civil(int year, int month, int day)
{
    int64_t y = (int64_t)year - (month <= 2);
    int64_t era = (y >= 0 ? y : y - 399) / 400;
    int64_t yoe = y - era * 400;
    int64_t mp = (month + 9) % 12;               /* March = 0 */
    int64_t doy = (153 * mp + 2) / 5 + day - 1;
    int64_t doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + doe - 719468;
}

void time_civil_from_days(int64_t days, int *year, int *month, int *day)
{
    int64_t z = days + 719468;
    int64_t era = (z >= 0 ? z : z - 146096) / 146097;
    int64_t doe = z - era * 146097;
    int64_t yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    int64_t y = yoe + era * 400;
    int64_t doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    int64_t mp = (5 * doy + 2) / 153;
    int64_t d = doy - (153 * mp + 2) / 5 + 1;
    int64_t m = mp < 10 ? mp + 3 : mp - 9;
    *year = (int)(y + (m <= 2));
    *month = (int)m;
    *day = (int)d;
}

bool time_is_leap_year(int year)
{
    return (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
}

int time_days_in_month(int year, int month)
{
    static const int days[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    if (month < 1 || month > 12)
        return 0;
    return month == 2 && time_is_leap_year(year) ? 29 : days[month - 1];
}

int64_t time_floor_div(int64_t a, int64_t b)
{
    int64_t q = a / b;
    return (a % b != 0 && (a < 0) != (b < 0)) ? q - 1 : q;
}

int64_t time_truncate(int64_t t, int64_t unit)
{
    return time_floor_div(t, unit) * unit;
}

void time_to_civil(int64_t usec, civil_time *out)
{
    int64_t days = time_floor_div(usec, USEC_PER_DAY);
    int64_t rest = usec - days * USEC_PER_DAY;
    time_civil_from_days(days, &out->year, &out->month, &out->day);
    out->hour = (int)(rest / USEC_PER_HOUR);
    rest %= USEC_PER_HOUR;
    out->minute = (int)(rest / (60 * USEC_PER_SEC));
    rest %= 60 * USEC_PER_SEC;
    out->second = (int)(rest / USEC_PER_SEC);
    out->usec = (int)(rest % USEC_PER_SEC);
}

int64_t time_from_civil(const civil_time *ct)
{
    return time_days_from_civil(ct->year, ct->month, ct->day) * USEC_PER_DAY +
           (int64_t)ct->hour * USEC_PER_HOUR + (int64_t)ct->minute * 60 * USEC_PER_SEC +
           (int64_t)ct->second * USEC_PER_SEC + ct->usec;
}

/* Reads exactly n decimal digits at text[*pos]. */
static bool read_digits(const char *text, size_t len, size_t *pos, int n, int *out)
{
    if (*pos + (size_t)n > len)
        return false;
    int value = 0;
    for (int i = 0; i < n; i++) {
        char c = text[*pos + (size_t)i];
        if (c < '0' || c > '9')
            return false;
        value = value * 10 + (c - '0');
    }
    *pos += (size_t)n;
    *out = value;
    return true;
}

static bool expect_char(const char *text, size_t len, size_t *pos, char a, char b)
{
    if (*pos >= len || (text[*pos] != a && text[*pos] != b))
        return false;
    (*pos)++;
    return true;
}

static bool parse_date_part(const char *text, size_t len, size_t *pos, civil_time *ct)
{
    if (!read_digits(text, len, pos, 4, &ct->year) || !expect_char(text, len, pos, '-', '-') ||
        !read_digits(text, len, pos, 2, &ct->month) || !expect_char(text, len, pos, '-', '-') ||
        !read_digits(text, len, pos, 2, &ct->day))
        return false;
    return ct->month >= 1 && ct->month <= 12 && ct->day >= 1 &&
           ct->day <= time_days_in_month(ct->year, ct->month);
}

bool time_parse_date(const char *text, size_t len, int64_t *out)
{
    civil_time ct = {0};
    size_t pos = 0;
    if (!parse_date_part(text, len, &pos, &ct) || pos != len)
        return false;
    *out = time_from_civil(&ct);
    return true;
}

bool time_parse_rfc3339(const char *text, size_t len, int64_t *out)
{
    civil_time ct = {0};
    size_t pos = 0;
    if (!parse_date_part(text, len, &pos, &ct) || !expect_char(text, len, &pos, 'T', 't') ||
        !read_digits(text, len, &pos, 2, &ct.hour) || !expect_char(text, len, &pos, ':', ':') ||
        !read_digits(text, len, &pos, 2, &ct.minute) || !expect_char(text, len, &pos, ':', ':') ||
        !read_digits(text, len, &pos, 2, &ct.second))
        return false;
    if (ct.hour > 23 || ct.minute > 59 || ct.second > 60)
        return false;
    if (pos < len && text[pos] == '.') {
        pos++;
        size_t digits = 0;
        int usec = 0;
        while (pos < len && text[pos] >= '0' && text[pos] <= '9') {
            if (digits < 6)
                usec = usec * 10 + (text[pos] - '0');
            digits++;
            pos++;
        }
        if (digits == 0 || digits > 9)
            return false;
        for (size_t i = digits; i < 6; i++)
            usec *= 10;
        ct.usec = usec;
    }
    int64_t offset_usec = 0;
    if (pos < len && (text[pos] == 'Z' || text[pos] == 'z')) {
        pos++;
    } else if (pos < len && (text[pos] == '+' || text[pos] == '-')) {
        int sign = text[pos] == '-' ? -1 : 1;
        int oh, om;
        pos++;
        if (!read_digits(text, len, &pos, 2, &oh) || !expect_char(text, len, &pos, ':', ':') ||
            !read_digits(text, len, &pos, 2, &om) || oh > 23 || om > 59)
            return false;
        offset_usec = sign * ((int64_t)oh * USEC_PER_HOUR + (int64_t)om * 60 * USEC_PER_SEC);
    } else {
        return false;
    }
    if (pos != len)
        return false;
    bool leap_second = ct.second == 60;
    if (leap_second) {
        ct.second = 59;
        ct.usec = 999999;
    }
    *out = time_from_civil(&ct) - offset_usec;
    return true;
}

char *time_format_rfc3339(int64_t usec, char *buf, size_t size)
{
    civil_time ct;
    time_to_civil(usec, &ct);
    snprintf(buf, size, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", ct.year, ct.month, ct.day,
             ct.hour, ct.minute, ct.second, ct.usec / 1000);
    return buf;
}
