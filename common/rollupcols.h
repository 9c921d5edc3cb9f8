/* The rollups' columns, named once (migrations/001_init.sql creates them).
 *
 * usage_hourly rows are keyed by the text dimensions below plus the hour;
 * usage_counters rows by the key, the period kind and the period's start;
 * both sum the measures. The collector derives its upsert statement, the
 * statement's parameter count and its in-memory aggregation from these
 * lists. Adding a dimension is a row here, a
 * migration that adds the column (and puts it in the primary key), and the
 * collector's line that says where an event's value for it comes from. */
#ifndef TALLY_ROLLUPCOLS_H
#define TALLY_ROLLUPCOLS_H

/* X(ID, "column"): text dimensions of usage_hourly, '' when an event has
 * none. KEY must stay first: the period counters are per key. */
#define ROLLUP_TEXT_DIMENSIONS(X) \
    X(KEY, "key_id")              \
    X(PLAN, "plan_id")            \
    X(METHOD, "method")           \
    X(ENDPOINT, "endpoint")

/* X(ID, "column"): bigint sums in both tables. */
#define ROLLUP_MEASURES(X)   \
    X(REQUESTS, "requests")  \
    X(UNITS, "units")        \
    X(BYTES, "bytes")

enum {
#define ROLLUP_DIMENSION_ENUM(id, column) ROLLUP_DIM_##id,
    ROLLUP_TEXT_DIMENSIONS(ROLLUP_DIMENSION_ENUM)
#undef ROLLUP_DIMENSION_ENUM
    ROLLUP_TEXT_DIMENSION_COUNT
};

enum {
#define ROLLUP_MEASURE_ENUM(id, column) ROLLUP_MEASURE_##id,
    ROLLUP_MEASURES(ROLLUP_MEASURE_ENUM)
#undef ROLLUP_MEASURE_ENUM
    ROLLUP_MEASURE_COUNT
};

/* Array parameters of the collector's upsert: usage_hourly's text
 * dimensions, hour and measures; then usage_counters' key, period, start
 * and measures. */
#define ROLLUP_HOURLY_COLUMNS  (ROLLUP_TEXT_DIMENSION_COUNT + 1 + ROLLUP_MEASURE_COUNT)
#define ROLLUP_COUNTER_COLUMNS (3 + ROLLUP_MEASURE_COUNT)

/* The NOTIFY channel on which the collector's commit names the keys whose
 * usage_counters rows it changed (comma-separated ids, or "*" for "too
 * many: every key"), and on which tally-api listens to refresh them at
 * once (services/api/keynotify.c). */
#define ROLLUP_COUNTERS_CHANNEL "tally_counters"

#endif
