/* The collector's map of known API key ids to their plan id, so that each
 * event is checked against a key without a database round trip. Reloaded
 * whole every few seconds, and asked of the database on a miss before an
 * event is rejected as unknown_key. Not thread-safe: the consumer thread
 * owns it. */
#ifndef TALLY_COLLECTOR_KEYCACHE_H
#define TALLY_COLLECTOR_KEYCACHE_H

#include <stdbool.h>
#include <stddef.h>

typedef struct keycache keycache;

/* A new, empty cache (owned by the caller), or NULL when out of memory. */
keycache *keycache_new(void);
void keycache_free(keycache *cache);
/* The plan id of a known key ("" when it has no plan), borrowed until the
 * next put or free; NULL when the key is not in the cache. */
const char *keycache_lookup(const keycache *cache, const char *key_id);
/* Inserts or replaces a key's plan (both copied). False when out of memory. */
bool keycache_put(keycache *cache, const char *key_id, const char *plan_id)
    __attribute__((warn_unused_result));
size_t keycache_size(const keycache *cache);

#endif
