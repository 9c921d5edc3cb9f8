/* A batch's rollups, aggregated in memory before they reach PostgreSQL:
 * hourly groups (the text dimensions of rollupcols.h and the hour) and,
 * derived from them, the per-key period counters (DAY, WEEK, MONTH). Events
 * are registered in their group while the batch fills; only those the
 * database reports as new are then added, so duplicates never reach the
 * totals. */
#ifndef TALLY_COLLECTOR_ROLLUP_H
#define TALLY_COLLECTOR_ROLLUP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "buf.h"
#include "rollupcols.h"

typedef struct rollup rollup;

/* A new rollup holding at most `max_groups` hourly groups, or NULL. */
rollup *rollup_new(size_t max_groups);
void rollup_free(rollup *r);
void rollup_clear(rollup *r);
/* The index of the hourly group of an event with these dimension values
 * (ROLLUP_TEXT_DIMENSIONS order; borrowed, copied when the group is new) at
 * `time_usec`; created if new. -1 when the rollup is full. */
long rollup_group(rollup *r, const char *const dimensions[ROLLUP_TEXT_DIMENSION_COUNT],
                  int64_t time_usec);
/* Adds one new event's measures (ROLLUP_MEASURES order) to group `group`.
 * False, and nothing added, when a total would overflow int64 (the event
 * bounds make that impossible within one batch, but outside numbers are
 * never summed unchecked). */
bool rollup_add(rollup *r, long group, const int64_t measures[ROLLUP_MEASURE_COUNT])
    __attribute__((warn_unused_result));
/* Sets every group's totals back to zero (before a retried batch is
 * counted again); the groups themselves stay. */
void rollup_reset_counts(rollup *r);

/* Renders the counted groups, and the counters summed from them, as
 * PostgreSQL array literals, one per column of the upsert (rollupcols.h:
 * ROLLUP_HOURLY_COLUMNS, then ROLLUP_COUNTER_COLUMNS). The columns must be
 * initialised buffers; they are reset first. False when a buffer's limit is
 * hit or a period counter's sum would overflow. */
bool rollup_render(rollup *r, buf hourly[ROLLUP_HOURLY_COLUMNS],
                   buf counters[ROLLUP_COUNTER_COLUMNS]) __attribute__((warn_unused_result));

#endif
