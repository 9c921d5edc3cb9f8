#include "rollup.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "db.h"
#include "digest.h"
#include "hashindex.h"
#include "period.h"
#include "timeutil.h"

/* Where each group's or counter's map key is: a run of `text`. */
typedef struct {
    uint64_t hash;
    size_t offset, len;
} map_key;

/* A map from a text key to an entry number: the keys in one buffer, the
 * entries found through a hash index. */
typedef struct {
    hashindex index;
    map_key *keys;
    size_t key_cap, max_keys;
    buf text;
} index_map;

typedef struct {
    size_t dimension_offsets[ROLLUP_TEXT_DIMENSION_COUNT]; /* into strings */
    int64_t hour_s, day_s, week_s, month_s;
    int64_t measures[ROLLUP_MEASURE_COUNT];
} group;

typedef struct {
    size_t key_offset;
    int period;
    int64_t start_s;
    int64_t measures[ROLLUP_MEASURE_COUNT];
} counter;

struct rollup {
    size_t max_groups;
    group *groups;
    size_t group_count, group_cap;
    buf strings; /* NUL-terminated group dimensions */
    index_map group_index;
    counter *counters;
    size_t counter_count, counter_cap;
    index_map counter_index;
};

/* Makes room for one more element in a growable array of `max` at most. */
static bool reserve(void **items, size_t *cap, size_t count, size_t size, size_t max)
{
    if (count < *cap)
        return true;
    if (count >= max)
        return false;
    size_t next = *cap * 2 > max ? max : *cap * 2;
    void *grown = realloc(*items, next * size);
    if (grown == NULL)
        return false;
    *items = grown;
    *cap = next;
    return true;
}

static bool map_init(index_map *m, size_t max_keys)
{
    m->max_keys = max_keys;
    m->key_cap = max_keys < 1024 ? max_keys : 1024;
    m->keys = malloc(m->key_cap * sizeof *m->keys);
    buf_init(&m->text, max_keys * 700);
    return m->keys != NULL && hashindex_init(&m->index, 512);
}

static void map_clear(index_map *m)
{
    hashindex_clear(&m->index);
    buf_reset(&m->text);
}

static void map_free(index_map *m)
{
    hashindex_free(&m->index);
    free(m->keys);
    buf_free(&m->text);
}

typedef struct {
    const char *text;
    size_t len;
} text_key;

static bool key_matches(const void *entries, uint32_t index, const void *key)
{
    const index_map *m = entries;
    const text_key *k = key;
    const map_key *e = &m->keys[index];
    return e->len == k->len && memcmp(m->text.data + e->offset, k->text, k->len) == 0;
}

static uint64_t key_hash(const void *entries, uint32_t index)
{
    return ((const index_map *)entries)->keys[index].hash;
}

/* Finds `key` (len bytes); if absent and `next_index` >= 0, adds it as entry
 * `next_index` (the count of entries so far). Returns the entry, or -1
 * (absent and not added, or no room). */
static long map_find_or_add(index_map *m, const char *key, size_t len, long next_index)
{
    uint64_t h = digest_fnv1a(key, len);
    text_key k = {key, len};
    long found = hashindex_find(&m->index, h, key_matches, m, &k);
    if (found >= 0 || next_index < 0)
        return found;
    if (!reserve((void **)&m->keys, &m->key_cap, (size_t)next_index, sizeof *m->keys,
                 m->max_keys) ||
        (hashindex_full(&m->index) && !hashindex_grow(&m->index, key_hash, m)))
        return -1;
    size_t offset = m->text.len;
    if (!buf_append(&m->text, key, len))
        return -1;
    m->keys[next_index] = (map_key){h, offset, len};
    if (!hashindex_add(&m->index, h, (uint32_t)next_index))
        return -1;
    return next_index;
}

rollup *rollup_new(size_t max_groups)
{
    rollup *r = calloc(1, sizeof *r);
    if (r == NULL)
        return NULL;
    r->max_groups = max_groups;
    /* Start small and grow; never past the limits (reserve enforces them
     * from the first element on). */
    r->group_cap = max_groups < 1024 ? max_groups : 1024;
    r->counter_cap = max_groups * 3 < 1024 ? max_groups * 3 : 1024;
    r->groups = malloc(r->group_cap * sizeof *r->groups);
    r->counters = malloc(r->counter_cap * sizeof *r->counters);
    buf_init(&r->strings, max_groups * 700);
    if (r->groups == NULL || r->counters == NULL || !map_init(&r->group_index, max_groups) ||
        !map_init(&r->counter_index, max_groups * 3)) {
        rollup_free(r);
        return NULL;
    }
    rollup_clear(r);
    return r;
}

void rollup_free(rollup *r)
{
    if (r == NULL)
        return;
    free(r->groups);
    free(r->counters);
    buf_free(&r->strings);
    map_free(&r->group_index);
    map_free(&r->counter_index);
    free(r);
}

void rollup_clear(rollup *r)
{
    r->group_count = 0;
    r->counter_count = 0;
    buf_reset(&r->strings);
    map_clear(&r->group_index);
    map_clear(&r->counter_index);
}

static bool store_string(buf *strings, const char *text, size_t *offset)
{
    *offset = strings->len;
    return buf_append(strings, text, strlen(text) + 1);
}

/* The group's map key: the dimensions joined by \x1f, then the hour's 8 raw
 * bytes. Its length, or 0 when it does not fit. */
static size_t group_key(char *key, size_t key_size,
                        const char *const dimensions[ROLLUP_TEXT_DIMENSION_COUNT], int64_t hour_s)
{
    size_t n = 0;
    for (int i = 0; i < ROLLUP_TEXT_DIMENSION_COUNT; i++) {
        size_t len = strlen(dimensions[i]);
        if (n + len + 1 + sizeof hour_s > key_size)
            return 0;
        memcpy(key + n, dimensions[i], len);
        n += len;
        key[n++] = '\x1f';
    }
    memcpy(key + n, &hour_s, sizeof hour_s);
    return n + sizeof hour_s;
}

long rollup_group(rollup *r, const char *const dimensions[ROLLUP_TEXT_DIMENSION_COUNT],
                  int64_t time_usec)
{
    int64_t hour_s = time_truncate(time_usec, USEC_PER_HOUR) / USEC_PER_SEC;
    char key[1024];
    size_t n = group_key(key, sizeof key, dimensions, hour_s);
    if (n == 0)
        return -1;
    long found = map_find_or_add(&r->group_index, key, n, -1);
    if (found >= 0)
        return found;
    if (!reserve((void **)&r->groups, &r->group_cap, r->group_count, sizeof *r->groups,
                 r->max_groups))
        return -1;
    group *g = &r->groups[r->group_count];
    size_t saved = r->strings.len;
    for (int i = 0; i < ROLLUP_TEXT_DIMENSION_COUNT; i++) {
        if (!store_string(&r->strings, dimensions[i], &g->dimension_offsets[i])) {
            r->strings.len = saved;
            return -1;
        }
    }
    if (map_find_or_add(&r->group_index, key, n, (long)r->group_count) < 0) {
        r->strings.len = saved;
        return -1;
    }
    /* Period starts come from the unit-tested period module; SQL never
     * re-derives them. */
    g->hour_s = hour_s;
    g->day_s = period_start(PERIOD_DAY, time_usec) / USEC_PER_SEC;
    g->week_s = period_start(PERIOD_WEEK, time_usec) / USEC_PER_SEC;
    g->month_s = period_start(PERIOD_MONTH, time_usec) / USEC_PER_SEC;
    memset(g->measures, 0, sizeof g->measures);
    return (long)r->group_count++;
}

/* totals[i] += values[i] for every measure, or nothing when one overflows. */
static bool add_measures(int64_t totals[ROLLUP_MEASURE_COUNT],
                         const int64_t values[ROLLUP_MEASURE_COUNT])
{
    int64_t sums[ROLLUP_MEASURE_COUNT];
    for (int i = 0; i < ROLLUP_MEASURE_COUNT; i++) {
        if (__builtin_add_overflow(totals[i], values[i], &sums[i]))
            return false;
    }
    memcpy(totals, sums, sizeof sums);
    return true;
}

bool rollup_add(rollup *r, long index, const int64_t measures[ROLLUP_MEASURE_COUNT])
{
    return add_measures(r->groups[index].measures, measures);
}

void rollup_reset_counts(rollup *r)
{
    for (size_t i = 0; i < r->group_count; i++)
        memset(r->groups[i].measures, 0, sizeof r->groups[i].measures);
}

static bool add_counter(rollup *r, const group *g, int period, int64_t start_s)
{
    size_t key_offset = g->dimension_offsets[ROLLUP_DIM_KEY];
    char key[300];
    int n = snprintf(key, sizeof key, "%s\x1f%d\x1f%lld", r->strings.data + key_offset, period,
                     (long long)start_s);
    if (n < 0 || (size_t)n >= sizeof key)
        return false;
    if (!reserve((void **)&r->counters, &r->counter_cap, r->counter_count, sizeof *r->counters,
                 r->max_groups * 3))
        return false;
    long index = map_find_or_add(&r->counter_index, key, (size_t)n, (long)r->counter_count);
    if (index < 0)
        return false;
    if ((size_t)index == r->counter_count)
        r->counters[r->counter_count++] = (counter){key_offset, period, start_s, {0}};
    return add_measures(r->counters[index].measures, g->measures);
}

static bool element_text(buf *column, bool first, const char *text)
{
    return buf_append(column, first ? "{" : ",", 1) && db_append_array_element(column, text);
}

/* A number element, "{" or "," then its decimal digits: written by hand,
 * since through snprintf rendering took 5% of the collector's instructions
 * (callgrind, bench/run.py --collector-callgrind). */
static bool element_number(buf *column, bool first, int64_t value)
{
    char text[24]; /* a sign, 19 digits and the separator */
    size_t at = sizeof text;
    uint64_t magnitude = value < 0 ? 0 - (uint64_t)value : (uint64_t)value;
    do {
        text[--at] = (char)('0' + magnitude % 10);
        magnitude /= 10;
    } while (magnitude > 0);
    if (value < 0)
        text[--at] = '-';
    text[--at] = first ? '{' : ',';
    return buf_append(column, text + at, sizeof text - at);
}

static bool close_columns(buf *columns, int count, bool any)
{
    for (int i = 0; i < count; i++) {
        if (!buf_append_str(&columns[i], any ? "}" : "{}"))
            return false;
    }
    return true;
}

static bool element_measures(buf *columns, bool first, const int64_t measures[])
{
    for (int i = 0; i < ROLLUP_MEASURE_COUNT; i++) {
        if (!element_number(&columns[i], first, measures[i]))
            return false;
    }
    return true;
}

/* One hourly group's elements: text dimensions, hour, measures. */
static bool render_group(const rollup *r, const group *g, buf *hourly, bool first)
{
    for (int i = 0; i < ROLLUP_TEXT_DIMENSION_COUNT; i++) {
        if (!element_text(&hourly[i], first, r->strings.data + g->dimension_offsets[i]))
            return false;
    }
    return element_number(&hourly[ROLLUP_TEXT_DIMENSION_COUNT], first, g->hour_s) &&
           element_measures(&hourly[ROLLUP_TEXT_DIMENSION_COUNT + 1], first, g->measures);
}

static bool render_counter(const rollup *r, const counter *c, buf *counters, bool first)
{
    return element_text(&counters[0], first, r->strings.data + c->key_offset) &&
           element_text(&counters[1], first, period_name((period_kind)c->period)) &&
           element_number(&counters[2], first, c->start_s) &&
           element_measures(&counters[3], first, c->measures);
}

bool rollup_render(rollup *r, buf hourly[ROLLUP_HOURLY_COLUMNS],
                   buf counters[ROLLUP_COUNTER_COLUMNS])
{
    for (int i = 0; i < ROLLUP_HOURLY_COLUMNS; i++)
        buf_reset(&hourly[i]);
    for (int i = 0; i < ROLLUP_COUNTER_COLUMNS; i++)
        buf_reset(&counters[i]);
    map_clear(&r->counter_index);
    r->counter_count = 0;
    bool first = true;
    for (size_t i = 0; i < r->group_count; i++) {
        const group *g = &r->groups[i];
        if (g->measures[ROLLUP_MEASURE_REQUESTS] == 0)
            continue; /* only duplicates fell in this group */
        if (!render_group(r, g, hourly, first) || !add_counter(r, g, PERIOD_DAY, g->day_s) ||
            !add_counter(r, g, PERIOD_WEEK, g->week_s) ||
            !add_counter(r, g, PERIOD_MONTH, g->month_s))
            return false;
        first = false;
    }
    if (!close_columns(hourly, ROLLUP_HOURLY_COLUMNS, !first))
        return false;
    first = true;
    for (size_t i = 0; i < r->counter_count; i++) {
        if (!render_counter(r, &r->counters[i], counters, first))
            return false;
        first = false;
    }
    return close_columns(counters, ROLLUP_COUNTER_COLUMNS, !first);
}
