#include "rollup.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "db.h"
#include "digest.h"
#include "period.h"
#include "timeutil.h"

/* A map from a text key (the group's fields joined by \x1f) to an index,
 * open addressing over a power-of-two table kept at most half full. */
typedef struct {
    uint64_t hash;
    size_t offset; /* of the key in text; SIZE_MAX marks an empty slot */
    size_t len;
    long index;
} slot;

typedef struct {
    slot *slots;
    size_t slot_count;
    buf text;
} index_map;

typedef struct {
    size_t key_offset, plan_offset, method_offset, endpoint_offset; /* into strings */
    int64_t hour_s, day_s, week_s, month_s;
    int64_t requests, units, bytes;
} group;

typedef struct {
    size_t key_offset;
    int period;
    int64_t start_s;
    int64_t requests, units, bytes;
} counter;

struct rollup {
    size_t max_groups;
    group *groups;
    size_t group_count, group_cap;
    buf strings; /* NUL-terminated group fields */
    index_map group_index;
    counter *counters;
    size_t counter_count, counter_cap;
    index_map counter_index;
};

static bool map_init(index_map *m, size_t max_entries)
{
    m->slot_count = 1024; /* grows as needed, up to twice max_entries */
    m->slots = malloc(m->slot_count * sizeof *m->slots);
    buf_init(&m->text, max_entries * 700);
    return m->slots != NULL;
}

static void map_clear(index_map *m)
{
    for (size_t i = 0; i < m->slot_count; i++)
        m->slots[i].offset = SIZE_MAX;
    buf_reset(&m->text);
}

static void map_free(index_map *m)
{
    free(m->slots);
    buf_free(&m->text);
}

static slot *map_probe(slot *slots, size_t slot_count, const char *text, uint64_t h,
                       const char *key, size_t len)
{
    size_t mask = slot_count - 1;
    for (size_t i = h & mask;; i = (i + 1) & mask) {
        slot *s = &slots[i];
        if (s->offset == SIZE_MAX ||
            (s->hash == h && s->len == len && key && memcmp(text + s->offset, key, len) == 0))
            return s;
    }
}

/* Doubles the table, keeping it at most half full. */
static bool map_grow(index_map *m)
{
    size_t count = m->slot_count * 2;
    slot *grown = malloc(count * sizeof *grown);
    if (grown == NULL)
        return false;
    for (size_t i = 0; i < count; i++)
        grown[i].offset = SIZE_MAX;
    for (size_t i = 0; i < m->slot_count; i++) {
        if (m->slots[i].offset != SIZE_MAX)
            *map_probe(grown, count, NULL, m->slots[i].hash, NULL, 0) = m->slots[i];
    }
    free(m->slots);
    m->slots = grown;
    m->slot_count = count;
    return true;
}

/* Finds `key` (len bytes); if absent and `next_index` >= 0, inserts it with
 * that index (the count of entries so far). Returns the index, or -1 (absent
 * and not inserted, or no room). */
static long map_find_or_add(index_map *m, const char *key, size_t len, long next_index)
{
    uint64_t h = digest_fnv1a(key, len);
    slot *s = map_probe(m->slots, m->slot_count, m->text.data, h, key, len);
    if (s->offset != SIZE_MAX)
        return s->index;
    if (next_index < 0)
        return -1;
    if ((size_t)(next_index + 1) * 2 > m->slot_count) {
        if (!map_grow(m))
            return -1;
        s = map_probe(m->slots, m->slot_count, m->text.data, h, key, len);
    }
    size_t offset = m->text.len;
    if (!buf_append(&m->text, key, len))
        return -1;
    *s = (slot){h, offset, len, next_index};
    return next_index;
}

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

rollup *rollup_new(size_t max_groups)
{
    rollup *r = calloc(1, sizeof *r);
    if (r == NULL)
        return NULL;
    r->max_groups = max_groups;
    r->group_cap = 1024;
    r->counter_cap = 1024;
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
    if (r->group_index.slots)
        map_clear(&r->group_index);
    if (r->counter_index.slots)
        map_clear(&r->counter_index);
}

static bool store_string(buf *strings, const char *text, size_t *offset)
{
    *offset = strings->len;
    return buf_append(strings, text, strlen(text) + 1);
}

long rollup_group(rollup *r, const char *key_id, const char *plan_id, const char *method,
                  const char *endpoint, int64_t time_usec)
{
    int64_t hour_s = time_truncate(time_usec, USEC_PER_HOUR) / USEC_PER_SEC;
    /* The map key: the fields joined by \x1f, then the hour's 8 raw bytes. */
    char key[1024];
    size_t n = 0;
    const char *fields[4] = {key_id, plan_id, method, endpoint};
    for (int i = 0; i < 4; i++) {
        size_t len = strlen(fields[i]);
        if (n + len + 1 + sizeof hour_s > sizeof key)
            return -1;
        memcpy(key + n, fields[i], len);
        n += len;
        key[n++] = '\x1f';
    }
    memcpy(key + n, &hour_s, sizeof hour_s);
    n += sizeof hour_s;
    long found = map_find_or_add(&r->group_index, key, (size_t)n, -1);
    if (found >= 0)
        return found;
    if (!reserve((void **)&r->groups, &r->group_cap, r->group_count, sizeof *r->groups,
                 r->max_groups))
        return -1;
    group *g = &r->groups[r->group_count];
    size_t saved = r->strings.len;
    if (!store_string(&r->strings, key_id, &g->key_offset) ||
        !store_string(&r->strings, plan_id, &g->plan_offset) ||
        !store_string(&r->strings, method, &g->method_offset) ||
        !store_string(&r->strings, endpoint, &g->endpoint_offset) ||
        map_find_or_add(&r->group_index, key, (size_t)n, (long)r->group_count) < 0) {
        r->strings.len = saved;
        return -1;
    }
    /* Period starts come from the unit-tested period module; SQL never
     * re-derives them. */
    g->hour_s = hour_s;
    g->day_s = period_start(PERIOD_DAY, time_usec) / USEC_PER_SEC;
    g->week_s = period_start(PERIOD_WEEK, time_usec) / USEC_PER_SEC;
    g->month_s = period_start(PERIOD_MONTH, time_usec) / USEC_PER_SEC;
    g->requests = g->units = g->bytes = 0;
    return (long)r->group_count++;
}

/* *total += value, unless that overflows. */
static bool add_checked(int64_t *total, int64_t value)
{
    return !__builtin_add_overflow(*total, value, total);
}

bool rollup_add(rollup *r, long index, int64_t units, int64_t bytes)
{
    group *g = &r->groups[index];
    int64_t requests = g->requests, units_sum = g->units, bytes_sum = g->bytes;
    if (!add_checked(&requests, 1) || !add_checked(&units_sum, units) ||
        !add_checked(&bytes_sum, bytes))
        return false;
    g->requests = requests;
    g->units = units_sum;
    g->bytes = bytes_sum;
    return true;
}

void rollup_reset_counts(rollup *r)
{
    for (size_t i = 0; i < r->group_count; i++)
        r->groups[i].requests = r->groups[i].units = r->groups[i].bytes = 0;
}

static bool add_counter(rollup *r, const group *g, int period, int64_t start_s)
{
    const char *key_id = r->strings.data + g->key_offset;
    char key[300];
    int n = snprintf(key, sizeof key, "%s\x1f%d\x1f%lld", key_id, period, (long long)start_s);
    if (n < 0 || (size_t)n >= sizeof key)
        return false;
    if (!reserve((void **)&r->counters, &r->counter_cap, r->counter_count, sizeof *r->counters,
                 r->max_groups * 3))
        return false;
    long index = map_find_or_add(&r->counter_index, key, (size_t)n, (long)r->counter_count);
    if (index < 0)
        return false;
    if ((size_t)index == r->counter_count) {
        r->counters[r->counter_count++] =
            (counter){g->key_offset, period, start_s, 0, 0, 0};
    }
    counter *c = &r->counters[index];
    return add_checked(&c->requests, g->requests) && add_checked(&c->units, g->units) &&
           add_checked(&c->bytes, g->bytes);
}

static bool element_text(buf *column, bool first, const char *text)
{
    return buf_append(column, first ? "{" : ",", 1) && db_append_array_element(column, text);
}

static bool element_number(buf *column, bool first, int64_t value)
{
    return buf_appendf(column, first ? "{%lld" : ",%lld", (long long)value);
}

static bool close_columns(buf *columns, int count, bool any)
{
    for (int i = 0; i < count; i++) {
        if (!buf_append_str(&columns[i], any ? "}" : "{}"))
            return false;
    }
    return true;
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
        if (g->requests == 0)
            continue; /* only duplicates fell in this group */
        if (!element_text(&hourly[0], first, r->strings.data + g->key_offset) ||
            !element_number(&hourly[1], first, g->hour_s) ||
            !element_text(&hourly[2], first, r->strings.data + g->plan_offset) ||
            !element_text(&hourly[3], first, r->strings.data + g->method_offset) ||
            !element_text(&hourly[4], first, r->strings.data + g->endpoint_offset) ||
            !element_number(&hourly[5], first, g->requests) ||
            !element_number(&hourly[6], first, g->units) ||
            !element_number(&hourly[7], first, g->bytes) ||
            !add_counter(r, g, PERIOD_DAY, g->day_s) ||
            !add_counter(r, g, PERIOD_WEEK, g->week_s) ||
            !add_counter(r, g, PERIOD_MONTH, g->month_s))
            return false;
        first = false;
    }
    if (!close_columns(hourly, ROLLUP_HOURLY_COLUMNS, !first))
        return false;
    first = true;
    for (size_t i = 0; i < r->counter_count; i++) {
        const counter *c = &r->counters[i];
        if (!element_text(&counters[0], first, r->strings.data + c->key_offset) ||
            !element_text(&counters[1], first, period_name((period_kind)c->period)) ||
            !element_number(&counters[2], first, c->start_s) ||
            !element_number(&counters[3], first, c->requests) ||
            !element_number(&counters[4], first, c->units) ||
            !element_number(&counters[5], first, c->bytes))
            return false;
        first = false;
    }
    return close_columns(counters, ROLLUP_COUNTER_COLUMNS, !first);
}
