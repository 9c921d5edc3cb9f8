/* What tally-loadgen sent, counted so a test can compare it with what the
 * collector stored: totals per key and per (key, UTC hour), each unique event
 * counted once, whatever its re-sends. */
#ifndef TALLY_LOADGEN_SUMMARY_H
#define TALLY_LOADGEN_SUMMARY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "synth.h"

/* Per-hour rows kept at most; past this, further hours are counted in
 * hours_dropped instead, so a run of any length has bounded memory. */
#define SUMMARY_MAX_HOUR_ROWS (1u << 21)

typedef struct {
    uint64_t requests, units, bytes;
} summary_totals;

typedef struct {
    size_t key;          /* index into the generator's keys */
    int64_t hour_ms;     /* start of the UTC hour */
    summary_totals totals;
    bool used;
} summary_hour_row;

typedef struct {
    uint64_t sent;        /* messages handed to the producer */
    uint64_t unique;      /* first sends */
    uint64_t duplicates;  /* re-sends (duplicates and replays) */
    uint64_t late;        /* unique events 1..72 h in the past */
    uint64_t failed;      /* delivery failures, plus any not delivered at exit */

    size_t key_count;
    summary_totals *per_key;
    summary_hour_row *hours; /* open addressing, capacity a power of two */
    size_t hour_capacity, hour_rows;
    uint64_t hours_dropped;
} summary;

/* Zeroes *s and allocates the per-key table. False when out of memory. */
bool summary_init(summary *s, size_t key_count);
void summary_free(summary *s);
/* Counts one unique event (borrowed) whose time is time_ms. */
void summary_add_unique(summary *s, const synth_event *ev, int64_t time_ms);
/* Writes the JSON summary to path. base_time_ms < 0 means none (null).
 * On failure returns false with a reason in err. */
bool summary_write(const summary *s, const synth_generator *gen, const char *path,
                   int64_t base_time_ms, char *err, size_t err_size);

#endif
