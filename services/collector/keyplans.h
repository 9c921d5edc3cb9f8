/* The collector's map of known API key ids to their plan id, so that each
 * event is checked against a key without a database round trip. Reloaded
 * whole every few seconds, and asked of the database on a miss before an
 * event is rejected as unknown_key. Not thread-safe: the consumer thread
 * owns it. (Not the api's key cache, which knows far more of each key.) */
#ifndef TALLY_COLLECTOR_KEYPLANS_H
#define TALLY_COLLECTOR_KEYPLANS_H

#include <stdbool.h>
#include <stddef.h>

typedef struct keyplans keyplans;

/* A new, empty map (owned by the caller), or NULL when out of memory. */
keyplans *keyplans_new(void);
void keyplans_free(keyplans *map);
/* The plan id of a known key ("" when it has no plan), borrowed until the
 * next put or free; NULL when the key is not in the map. */
const char *keyplans_lookup(const keyplans *map, const char *key_id);
/* Inserts or replaces a key's plan (both copied). False when out of memory. */
bool keyplans_put(keyplans *map, const char *key_id, const char *plan_id)
    __attribute__((warn_unused_result));
size_t keyplans_size(const keyplans *map);

#endif
