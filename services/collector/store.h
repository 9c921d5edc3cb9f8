/* The collector's PostgreSQL side: one connection, the key lookups, and the
 * transaction that deduplicates a batch and adds only its new events to the
 * rollups. */
#ifndef TALLY_COLLECTOR_STORE_H
#define TALLY_COLLECTOR_STORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "buf.h"
#include "keycache.h"

typedef struct store store;

/* A new store for `url` (borrowed for the store's life). Does not connect;
 * store_ensure_connected does, and again after the connection is lost. */
store *store_new(const char *url, int lateness_days);
void store_free(store *st);
/* Connects if needed (creating the session's staging tables and statements).
 * True when connected. */
bool store_ensure_connected(store *st, char *err, size_t err_size);
bool store_is_connected(const store *st);
/* Drops the connection (after an error left it in an unknown state). */
void store_disconnect(store *st);

/* Replaces `cache`'s contents with every key in the database. */
bool store_load_keys(store *st, keycache *cache, char *err, size_t err_size);
/* Looks up `count` key ids (borrowed) and adds those found to `cache`. */
bool store_lookup_keys(store *st, const char *const *ids, size_t count, keycache *cache,
                       char *err, size_t err_size);
/* Creates the coming weeks' event_ids partitions and drops expired ones. */
bool store_maintain_partitions(store *st, int *created, int *dropped, char *err, size_t err_size);

/* Appends one staged row in COPY text format. The columns are those of
 * store.c's staging table; strings are escaped here. */
bool store_stage_row(buf *rows, uint64_t seq, const char *source, const char *id,
                     const char *key_id, const char *plan_id, const char *method,
                     const char *endpoint, int64_t units, int64_t bytes, int64_t time_usec)
    __attribute__((warn_unused_result));
/* In one transaction: stages `rows` (from store_stage_row), records their
 * (source, id) pairs, and adds the ones never seen before to the hourly
 * rollups and period counters. *counted is how many were new; the rest were
 * duplicates. On failure nothing is written. */
bool store_commit_batch(store *st, const buf *rows, uint64_t *counted, char *err, size_t err_size)
    __attribute__((warn_unused_result));

#endif
