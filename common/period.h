/* Quota periods: UTC calendar days, ISO weeks (Monday 00:00 UTC) and
 * calendar months, as in AWS API Gateway usage plans. Times are usec since
 * the epoch (see timeutil.h). Pure functions, no allocation. */
#ifndef TALLY_PERIOD_H
#define TALLY_PERIOD_H

#include <stdbool.h>
#include <stdint.h>

typedef enum { PERIOD_DAY = 0, PERIOD_WEEK, PERIOD_MONTH } period_kind;

#define PERIOD_KIND_COUNT 3

/* Parses "DAY", "WEEK" or "MONTH" (exact case, as on the wire). */
bool period_parse(const char *text, period_kind *out);
/* "DAY", "WEEK" or "MONTH". */
const char *period_name(period_kind kind);
/* Start of the period that contains t. */
int64_t period_start(period_kind kind, int64_t t);
/* Start of the period after the one that contains t (exclusive end). */
int64_t period_end(period_kind kind, int64_t t);
/* The limit in force for the period containing t: `limit` less `offset` in
 * the plan's first period (the one containing `first_period_at`), never
 * below zero; `limit` in every later period. */
int64_t period_limit(int64_t limit, int64_t offset, period_kind kind, int64_t first_period_at,
                     int64_t t);

#endif
