/* An open-addressing index over entries the caller keeps in its own array
 * (numbered 0..n-1): the one probe loop behind every in-memory table that
 * maps a key to an entry (the collector's key plans, batch digests and
 * rollup groups; the api's key snapshot; the reporter's lanes).
 *
 * Slots hold entry index + 1 (0 is empty), probed linearly from the key's
 * hash over a power-of-two table kept at most half full. The entries, their
 * keys and hashes stay with the caller; the index only finds them, through a
 * callback that says whether an entry holds a key. */
#ifndef TALLY_HASHINDEX_H
#define TALLY_HASHINDEX_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct {
    uint32_t *slots;
    size_t slot_count; /* a power of two */
    size_t used;
} hashindex;

/* Whether entry `index` of `entries` holds `key`. */
typedef bool (*hashindex_match_fn)(const void *entries, uint32_t index, const void *key);
/* The hash of entry `index`'s key (to re-place entries when growing). */
typedef uint64_t (*hashindex_hash_fn)(const void *entries, uint32_t index);

/* An empty index with room for `max_entries` before it must grow (at least
 * 8). False when out of memory. */
bool hashindex_init(hashindex *ix, size_t max_entries) __attribute__((warn_unused_result));
void hashindex_free(hashindex *ix);
/* Forgets every entry; keeps the table. */
void hashindex_clear(hashindex *ix);
/* The entry that holds `key`, or -1. Inline: it is on every hot path (an
 * event's digest, an authorize's key), and the compiler can then inline the
 * caller's `match` too. */
static inline long hashindex_find(const hashindex *ix, uint64_t hash, hashindex_match_fn match,
                                  const void *entries, const void *key)
{
    if (ix->slot_count == 0)
        return -1;
    size_t mask = ix->slot_count - 1;
    for (size_t i = hash & mask;; i = (i + 1) & mask) {
        uint32_t slot = ix->slots[i];
        if (slot == 0)
            return -1;
        if (match(entries, slot - 1, key))
            return (long)(slot - 1);
    }
}
/* Records entry `index` under `hash`; the caller has made sure no entry holds
 * its key. False when the index is half full: grow it first (or it was
 * sized for a fixed number of entries and that number is exceeded). */
bool hashindex_add(hashindex *ix, uint64_t hash, uint32_t index)
    __attribute__((warn_unused_result));
/* True when one more entry would make the index more than half full. */
bool hashindex_full(const hashindex *ix);
/* Doubles the table, re-placing every entry by `hash_of`. */
bool hashindex_grow(hashindex *ix, hashindex_hash_fn hash_of, const void *entries)
    __attribute__((warn_unused_result));

#endif
