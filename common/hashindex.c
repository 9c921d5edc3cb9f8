#include "hashindex.h"

#include <stdlib.h>
#include <string.h>

bool hashindex_init(hashindex *ix, size_t max_entries)
{
    size_t count = 16;
    while (count < max_entries * 2)
        count *= 2;
    ix->slots = calloc(count, sizeof *ix->slots);
    ix->slot_count = ix->slots ? count : 0;
    ix->used = 0;
    return ix->slots != NULL;
}

void hashindex_free(hashindex *ix)
{
    free(ix->slots);
    ix->slots = NULL;
    ix->slot_count = 0;
    ix->used = 0;
}

void hashindex_clear(hashindex *ix)
{
    if (ix->used > 0)
        memset(ix->slots, 0, ix->slot_count * sizeof *ix->slots);
    ix->used = 0;
}

bool hashindex_full(const hashindex *ix)
{
    return (ix->used + 1) * 2 > ix->slot_count;
}

/* Puts `index` in the first empty slot from `hash`: the table is never full,
 * so the loop ends. */
static void place(uint32_t *slots, size_t slot_count, uint64_t hash, uint32_t index)
{
    size_t mask = slot_count - 1;
    size_t i = hash & mask;
    while (slots[i] != 0)
        i = (i + 1) & mask;
    slots[i] = index + 1;
}

bool hashindex_add(hashindex *ix, uint64_t hash, uint32_t index)
{
    if (hashindex_full(ix) || index == UINT32_MAX)
        return false;
    place(ix->slots, ix->slot_count, hash, index);
    ix->used++;
    return true;
}

bool hashindex_grow(hashindex *ix, hashindex_hash_fn hash_of, const void *entries)
{
    size_t count = ix->slot_count * 2;
    uint32_t *grown = calloc(count, sizeof *grown);
    if (grown == NULL)
        return false;
    for (size_t i = 0; i < ix->slot_count; i++) {
        if (ix->slots[i] != 0)
            place(grown, count, hash_of(entries, ix->slots[i] - 1), ix->slots[i] - 1);
    }
    free(ix->slots);
    ix->slots = grown;
    ix->slot_count = count;
    return true;
}
