/* Time in Tally is int64 microseconds since the Unix epoch, UTC. This module
 * converts between that and RFC 3339 / calendar dates without libc's
 * locale- and TZ-dependent functions, so results never depend on the host. */
#ifndef TALLY_TIMEUTIL_H
#define TALLY_TIMEUTIL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define USEC_PER_SEC  INT64_C(1000000)
#define USEC_PER_HOUR (INT64_C(3600) * USEC_PER_SEC)
#define USEC_PER_DAY  (INT64_C(86400) * USEC_PER_SEC)

/* "2026-11-23T12:00:00.123Z" plus NUL; years 0000..9999 only. */
#define TIME_RFC3339_LEN 32

typedef struct {
    int year, month, day;       /* month 1..12, day 1..31 */
    int hour, minute, second;
    int usec;
} civil_time;

int64_t time_now_usec(void);
/* Floor division and the start of the `unit`-long step containing t
 * (correct for negative t as well). */
int64_t time_floor_div(int64_t a, int64_t b);
int64_t time_truncate(int64_t t, int64_t unit);
/* Days since 1970-01-01 for a proleptic Gregorian date, and back. */
int64_t time_days_from_civil(int year, int month, int day);
void time_civil_from_days(int64_t days, int *year, int *month, int *day);
bool time_is_leap_year(int year);
int time_days_in_month(int year, int month);
/* Splits usec into a UTC calendar time, and back. */
void time_to_civil(int64_t usec, civil_time *out);
int64_t time_from_civil(const civil_time *ct);

/* Parses an RFC 3339 date-time ("2026-11-23T12:00:00.123Z",
 * "2026-11-23t12:00:00+01:00"): `len` bytes of `text`, no NUL needed.
 * Fractions beyond microseconds are truncated; a leap second (:60) is read as
 * the last microsecond of that minute. Returns false on anything malformed
 * or out of range; *out is set only on success. */
bool time_parse_rfc3339(const char *text, size_t len, int64_t *out);
/* Parses "YYYY-MM-DD" as midnight UTC. */
bool time_parse_date(const char *text, size_t len, int64_t *out);
/* Writes "YYYY-MM-DDTHH:MM:SS.mmmZ" (milliseconds, UTC) into buf, which must
 * hold TIME_RFC3339_LEN bytes. Returns buf. */
char *time_format_rfc3339(int64_t usec, char *buf, size_t size);

#endif
