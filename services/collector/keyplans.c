#include "keycache.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "digest.h"

/* Open addressing with linear probing; the table is kept at most half full. */
typedef struct {
    char *key_id;  /* owned; NULL marks an empty slot */
    char *plan_id; /* owned */
    uint64_t hash;
} slot;

struct keycache {
    slot *slots;
    size_t capacity; /* a power of two */
    size_t count;
};

keycache *keycache_new(void)
{
    keycache *cache = calloc(1, sizeof *cache);
    if (cache == NULL)
        return NULL;
    cache->capacity = 1024;
    cache->slots = calloc(cache->capacity, sizeof *cache->slots);
    if (cache->slots == NULL) {
        free(cache);
        return NULL;
    }
    return cache;
}

void keycache_free(keycache *cache)
{
    if (cache == NULL)
        return;
    for (size_t i = 0; i < cache->capacity; i++) {
        free(cache->slots[i].key_id);
        free(cache->slots[i].plan_id);
    }
    free(cache->slots);
    free(cache);
}

static slot *find(const keycache *cache, const char *key_id, uint64_t hash)
{
    size_t mask = cache->capacity - 1;
    for (size_t i = hash & mask;; i = (i + 1) & mask) {
        slot *s = &cache->slots[i];
        if (s->key_id == NULL || (s->hash == hash && strcmp(s->key_id, key_id) == 0))
            return s;
    }
}

const char *keycache_lookup(const keycache *cache, const char *key_id)
{
    const slot *s = find(cache, key_id, digest_fnv1a(key_id, strlen(key_id)));
    return s->key_id ? s->plan_id : NULL;
}

static bool grow(keycache *cache)
{
    size_t old_capacity = cache->capacity;
    slot *old = cache->slots;
    slot *grown = calloc(old_capacity * 2, sizeof *grown);
    if (grown == NULL)
        return false;
    cache->slots = grown;
    cache->capacity = old_capacity * 2;
    for (size_t i = 0; i < old_capacity; i++) {
        if (old[i].key_id)
            *find(cache, old[i].key_id, old[i].hash) = old[i];
    }
    free(old);
    return true;
}

bool keycache_put(keycache *cache, const char *key_id, const char *plan_id)
{
    if ((cache->count + 1) * 2 > cache->capacity && !grow(cache))
        return false;
    uint64_t hash = digest_fnv1a(key_id, strlen(key_id));
    slot *s = find(cache, key_id, hash);
    char *plan_copy = strdup(plan_id);
    if (plan_copy == NULL)
        return false;
    if (s->key_id) {
        free(s->plan_id);
        s->plan_id = plan_copy;
        return true;
    }
    s->key_id = strdup(key_id);
    if (s->key_id == NULL) {
        free(plan_copy);
        return false;
    }
    s->plan_id = plan_copy;
    s->hash = hash;
    cache->count++;
    return true;
}

size_t keycache_size(const keycache *cache)
{
    return cache->count;
}
