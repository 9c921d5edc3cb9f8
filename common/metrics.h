/* Prometheus metrics: a process-wide registry of counters, gauges and
 * histograms, updated lock-free from any thread and rendered in the text
 * exposition format. Register at start-up (before threads run); the
 * returned pointers live for the whole process. */
#ifndef TALLY_METRICS_H
#define TALLY_METRICS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "buf.h"

typedef struct metric metric;

/* `labels` is NULL or a label list without braces, e.g. `code="too_late"`
 * (borrowed; keep it static). Several metrics may share a name with
 * different labels; HELP and TYPE are printed once per name. NULL when the
 * registry is full. */
metric *metrics_counter(const char *name, const char *help, const char *labels);
metric *metrics_gauge(const char *name, const char *help, const char *labels);
/* `bounds` (borrowed, static) are the ascending upper bounds, at most 20. */
metric *metrics_histogram(const char *name, const char *help, const char *labels,
                          const double *bounds, size_t bound_count);

void metrics_add(metric *m, uint64_t n);           /* counters */
void metrics_set(metric *m, double value);         /* gauges */
void metrics_observe(metric *m, double value);     /* histograms */
double metrics_gauge_value(const metric *m);

/* Renders every metric into out; false when out's limit is hit. */
bool metrics_render(buf *out) __attribute__((warn_unused_result));

#endif
