#include "keyplans.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "digest.h"
#include "hashindex.h"

typedef struct {
    char *key_id;  /* owned */
    char *plan_id; /* owned */
    uint64_t hash;
} entry;

struct keyplans {
    entry *entries;
    size_t count, cap;
    hashindex index;
};

keyplans *keyplans_new(void)
{
    keyplans *map = calloc(1, sizeof *map);
    if (map == NULL)
        return NULL;
    map->cap = 512;
    map->entries = malloc(map->cap * sizeof *map->entries);
    if (map->entries == NULL || !hashindex_init(&map->index, map->cap)) {
        free(map->entries);
        free(map);
        return NULL;
    }
    return map;
}

void keyplans_free(keyplans *map)
{
    if (map == NULL)
        return;
    for (size_t i = 0; i < map->count; i++) {
        free(map->entries[i].key_id);
        free(map->entries[i].plan_id);
    }
    free(map->entries);
    hashindex_free(&map->index);
    free(map);
}

static bool holds_key(const void *entries, uint32_t index, const void *key_id)
{
    return strcmp(((const entry *)entries)[index].key_id, key_id) == 0;
}

static uint64_t entry_hash(const void *entries, uint32_t index)
{
    return ((const entry *)entries)[index].hash;
}

static long find(const keyplans *map, const char *key_id, uint64_t hash)
{
    return hashindex_find(&map->index, hash, holds_key, map->entries, key_id);
}

const char *keyplans_lookup(const keyplans *map, const char *key_id)
{
    long i = find(map, key_id, digest_fnv1a(key_id, strlen(key_id)));
    return i >= 0 ? map->entries[i].plan_id : NULL;
}

/* Room for one more entry, in the array and in the index. */
static bool reserve(keyplans *map)
{
    if (map->count == map->cap) {
        entry *grown = realloc(map->entries, map->cap * 2 * sizeof *grown);
        if (grown == NULL)
            return false;
        map->entries = grown;
        map->cap *= 2;
    }
    return !hashindex_full(&map->index) || hashindex_grow(&map->index, entry_hash, map->entries);
}

bool keyplans_put(keyplans *map, const char *key_id, const char *plan_id)
{
    uint64_t hash = digest_fnv1a(key_id, strlen(key_id));
    char *plan_copy = strdup(plan_id);
    if (plan_copy == NULL)
        return false;
    long found = find(map, key_id, hash);
    if (found >= 0) {
        free(map->entries[found].plan_id);
        map->entries[found].plan_id = plan_copy;
        return true;
    }
    char *key_copy = strdup(key_id);
    if (key_copy == NULL || !reserve(map)) {
        free(key_copy);
        free(plan_copy);
        return false;
    }
    map->entries[map->count] = (entry){key_copy, plan_copy, hash};
    if (!hashindex_add(&map->index, hash, (uint32_t)map->count))
        return false; /* cannot happen: reserve made room */
    map->count++;
    return true;
}

size_t keyplans_size(const keyplans *map)
{
    return map->count;
}
