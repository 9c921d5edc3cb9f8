#include "summary.h"

#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "event.h"
#include "timeutil.h"

bool summary_init(summary *s, size_t key_count)
{
    memset(s, 0, sizeof *s);
    s->key_count = key_count;
    s->per_key = calloc(key_count, sizeof *s->per_key);
    s->hour_capacity = 1024;
    s->hours = calloc(s->hour_capacity, sizeof *s->hours);
    if (s->per_key == NULL || s->hours == NULL) {
        summary_free(s);
        return false;
    }
    return true;
}

void summary_free(summary *s)
{
    free(s->per_key);
    free(s->hours);
    memset(s, 0, sizeof *s);
}

static size_t hour_slot(size_t key, int64_t hour_ms, size_t capacity)
{
    uint64_t h = (uint64_t)key * UINT64_C(0x9E3779B97F4A7C15) ^ (uint64_t)(hour_ms / 3600000);
    h ^= h >> 29;
    h *= UINT64_C(0xBF58476D1CE4E5B9);
    h ^= h >> 32;
    return (size_t)h & (capacity - 1);
}

/* Doubles the hour table; false (table unchanged) when out of memory. */
static bool grow_hours(summary *s)
{
    size_t capacity = s->hour_capacity * 2;
    summary_hour_row *rows = calloc(capacity, sizeof *rows);
    if (rows == NULL)
        return false;
    for (size_t i = 0; i < s->hour_capacity; i++) {
        if (!s->hours[i].used)
            continue;
        size_t slot = hour_slot(s->hours[i].key, s->hours[i].hour_ms, capacity);
        while (rows[slot].used)
            slot = (slot + 1) & (capacity - 1);
        rows[slot] = s->hours[i];
    }
    free(s->hours);
    s->hours = rows;
    s->hour_capacity = capacity;
    return true;
}

static void add_totals(summary_totals *t, const synth_event *ev)
{
    t->requests++;
    t->units += (uint64_t)ev->units;
    t->bytes += (uint64_t)ev->bytes;
}

void summary_add_unique(summary *s, const synth_event *ev, int64_t time_ms)
{
    s->unique++;
    if (ev->late)
        s->late++;
    add_totals(&s->per_key[ev->key], ev);

    int64_t hour_ms = time_ms - ((time_ms % 3600000) + 3600000) % 3600000;
    size_t slot = hour_slot(ev->key, hour_ms, s->hour_capacity);
    while (s->hours[slot].used) {
        if (s->hours[slot].key == ev->key && s->hours[slot].hour_ms == hour_ms) {
            add_totals(&s->hours[slot].totals, ev);
            return;
        }
        slot = (slot + 1) & (s->hour_capacity - 1);
    }
    /* A new row: keep the load factor under 1/2. */
    if (s->hour_rows >= SUMMARY_MAX_HOUR_ROWS ||
        ((s->hour_rows + 1) * 2 > s->hour_capacity && !grow_hours(s))) {
        s->hours_dropped++;
        return;
    }
    slot = hour_slot(ev->key, hour_ms, s->hour_capacity);
    while (s->hours[slot].used)
        slot = (slot + 1) & (s->hour_capacity - 1);
    s->hours[slot].used = true;
    s->hours[slot].key = ev->key;
    s->hours[slot].hour_ms = hour_ms;
    memset(&s->hours[slot].totals, 0, sizeof s->hours[slot].totals);
    add_totals(&s->hours[slot].totals, ev);
    s->hour_rows++;
}

/* New reference: {"requests":..,"units":..,"bytes":..}. */
static json_t *totals_json(const summary_totals *t)
{
    return json_pack("{s:I,s:I,s:I}", "requests", (json_int_t)t->requests, "units",
                     (json_int_t)t->units, "bytes", (json_int_t)t->bytes);
}

bool summary_write(const summary *s, const synth_generator *gen, const char *path,
                   int64_t base_time_ms, char *err, size_t err_size)
{
    bool ok = false;
    char stamp[TIME_RFC3339_LEN];
    json_t *root = json_object();
    json_t *keys = json_object();
    json_t *hours = json_object();
    if (root == NULL || keys == NULL || hours == NULL)
        goto out_of_memory;

    for (size_t i = 0; i < s->key_count; i++) {
        if (s->per_key[i].requests == 0)
            continue;
        if (json_object_set_new(keys, gen->keys[i].id, totals_json(&s->per_key[i])) != 0)
            goto out_of_memory;
    }
    for (size_t i = 0; i < s->hour_capacity; i++) {
        const summary_hour_row *row = &s->hours[i];
        if (!row->used)
            continue;
        char name[EVENT_MAX_SUBJECT_LEN + 2 + TIME_RFC3339_LEN];
        snprintf(name, sizeof name, "%s|%s", gen->keys[row->key].id,
                 time_format_rfc3339(row->hour_ms * 1000, stamp, sizeof stamp));
        if (json_object_set_new(hours, name, totals_json(&row->totals)) != 0)
            goto out_of_memory;
    }

    json_t *base_time = base_time_ms < 0
                            ? json_null()
                            : json_string(time_format_rfc3339(base_time_ms * 1000, stamp, sizeof stamp));
    if (json_object_set_new(root, "seed", json_integer((json_int_t)gen->seed)) != 0 ||
        json_object_set_new(root, "baseTime", base_time) != 0 ||
        json_object_set_new(root, "sent", json_integer((json_int_t)s->sent)) != 0 ||
        json_object_set_new(root, "unique", json_integer((json_int_t)s->unique)) != 0 ||
        json_object_set_new(root, "duplicates", json_integer((json_int_t)s->duplicates)) != 0 ||
        json_object_set_new(root, "late", json_integer((json_int_t)s->late)) != 0 ||
        json_object_set_new(root, "failed", json_integer((json_int_t)s->failed)) != 0 ||
        json_object_set(root, "keys", keys) != 0 || json_object_set(root, "hours", hours) != 0)
        goto out_of_memory;
    if (s->hours_dropped > 0 &&
        json_object_set_new(root, "hoursDropped", json_integer((json_int_t)s->hours_dropped)) != 0)
        goto out_of_memory;

    /* Write a sibling file, then rename, so a reader never sees half a summary. */
    char tmp[4096];
    if ((size_t)snprintf(tmp, sizeof tmp, "%s.tmp", path) >= sizeof tmp) {
        snprintf(err, err_size, "summary path too long");
        goto done;
    }
    FILE *f = fopen(tmp, "w");
    if (f == NULL) {
        snprintf(err, err_size, "cannot create %s: %s", tmp, strerror(errno));
        goto done;
    }
    int dumped = json_dumpf(root, f, JSON_COMPACT | JSON_SORT_KEYS);
    bool written = dumped == 0 && fputc('\n', f) != EOF;
    if (fclose(f) != 0 || !written) {
        snprintf(err, err_size, "cannot write %s: %s", tmp, strerror(errno));
        remove(tmp);
        goto done;
    }
    if (rename(tmp, path) != 0) {
        snprintf(err, err_size, "cannot rename %s to %s: %s", tmp, path, strerror(errno));
        remove(tmp);
        goto done;
    }
    ok = true;
    goto done;

out_of_memory:
    snprintf(err, err_size, "out of memory building the summary");
done:
    json_decref(root);
    json_decref(keys);
    json_decref(hours);
    return ok;
}
