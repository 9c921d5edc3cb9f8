#include "metrics.h"

#include <stdatomic.h>
#include <stdio.h>
#include <string.h>

#define METRICS_MAX 160
#define BUCKETS_MAX 20

typedef enum { KIND_COUNTER, KIND_GAUGE, KIND_HISTOGRAM } metric_kind;

struct metric {
    const char *name;
    const char *help;
    const char *labels;
    metric_kind kind;
    _Atomic uint64_t count;            /* counter value, or histogram count */
    _Atomic double value;              /* gauge value, or histogram sum */
    const double *bounds;
    size_t bound_count;
    _Atomic uint64_t buckets[BUCKETS_MAX];
};

static metric registry[METRICS_MAX];
static size_t registry_len;

static metric *add(const char *name, const char *help, const char *labels, metric_kind kind)
{
    if (registry_len >= METRICS_MAX)
        return NULL;
    metric *m = &registry[registry_len++];
    m->name = name;
    m->help = help;
    m->labels = labels;
    m->kind = kind;
    return m;
}

metric *metrics_counter(const char *name, const char *help, const char *labels)
{
    return add(name, help, labels, KIND_COUNTER);
}

metric *metrics_gauge(const char *name, const char *help, const char *labels)
{
    return add(name, help, labels, KIND_GAUGE);
}

metric *metrics_histogram(const char *name, const char *help, const char *labels,
                          const double *bounds, size_t bound_count)
{
    if (bound_count > BUCKETS_MAX)
        return NULL;
    metric *m = add(name, help, labels, KIND_HISTOGRAM);
    if (m) {
        m->bounds = bounds;
        m->bound_count = bound_count;
    }
    return m;
}

void metrics_add(metric *m, uint64_t n)
{
    if (m)
        atomic_fetch_add_explicit(&m->count, n, memory_order_relaxed);
}

void metrics_set(metric *m, double value)
{
    if (m)
        atomic_store_explicit(&m->value, value, memory_order_relaxed);
}

static void add_double(_Atomic double *target, double delta)
{
    double old = atomic_load_explicit(target, memory_order_relaxed);
    while (!atomic_compare_exchange_weak_explicit(target, &old, old + delta, memory_order_relaxed,
                                                  memory_order_relaxed)) {
    }
}

void metrics_observe(metric *m, double value)
{
    if (m == NULL)
        return;
    for (size_t i = 0; i < m->bound_count; i++) {
        if (value <= m->bounds[i]) {
            atomic_fetch_add_explicit(&m->buckets[i], 1, memory_order_relaxed);
            break;
        }
    }
    add_double(&m->value, value);
    atomic_fetch_add_explicit(&m->count, 1, memory_order_relaxed);
}

double metrics_gauge_value(const metric *m)
{
    return m ? atomic_load_explicit(&m->value, memory_order_relaxed) : 0;
}

static bool render_labels(buf *out, const char *labels, const char *extra)
{
    bool has = labels && labels[0];
    if (!has && !extra)
        return true;
    return buf_appendf(out, "{%s%s%s}", has ? labels : "", has && extra ? "," : "",
                       extra ? extra : "");
}

static bool render_one(buf *out, const metric *m)
{
    uint64_t count = atomic_load_explicit(&m->count, memory_order_relaxed);
    double value = atomic_load_explicit(&m->value, memory_order_relaxed);
    switch (m->kind) {
    case KIND_COUNTER:
        return buf_append_str(out, m->name) && render_labels(out, m->labels, NULL) &&
               buf_appendf(out, " %llu\n", (unsigned long long)count);
    case KIND_GAUGE:
        return buf_append_str(out, m->name) && render_labels(out, m->labels, NULL) &&
               buf_appendf(out, " %.17g\n", value);
    case KIND_HISTOGRAM: {
        uint64_t cumulative = 0;
        char le[48];
        for (size_t i = 0; i < m->bound_count; i++) {
            cumulative += atomic_load_explicit(&m->buckets[i], memory_order_relaxed);
            snprintf(le, sizeof le, "le=\"%g\"", m->bounds[i]);
            if (!buf_appendf(out, "%s_bucket", m->name) || !render_labels(out, m->labels, le) ||
                !buf_appendf(out, " %llu\n", (unsigned long long)cumulative))
                return false;
        }
        return buf_appendf(out, "%s_bucket", m->name) &&
               render_labels(out, m->labels, "le=\"+Inf\"") &&
               buf_appendf(out, " %llu\n%s_sum", (unsigned long long)count, m->name) &&
               render_labels(out, m->labels, NULL) &&
               buf_appendf(out, " %.17g\n%s_count", value, m->name) &&
               render_labels(out, m->labels, NULL) &&
               buf_appendf(out, " %llu\n", (unsigned long long)count);
    }
    }
    return false;
}

bool metrics_render(buf *out)
{
    static const char *const kind_names[] = {"counter", "gauge", "histogram"};
    for (size_t i = 0; i < registry_len; i++) {
        const metric *m = &registry[i];
        bool first = true;
        for (size_t j = 0; j < i; j++) {
            if (strcmp(registry[j].name, m->name) == 0) {
                first = false;
                break;
            }
        }
        if (!first)
            continue;
        if (!buf_appendf(out, "# HELP %s %s\n# TYPE %s %s\n", m->name, m->help, m->name,
                         kind_names[m->kind]))
            return false;
        for (size_t j = i; j < registry_len; j++) {
            if (strcmp(registry[j].name, m->name) == 0 && !render_one(out, &registry[j]))
                return false;
        }
    }
    return true;
}
