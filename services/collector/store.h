/* The collector's PostgreSQL side: one connection (each writer has its
 * own), the key lookups, and the transaction that deduplicates a batch and
 * adds only its new events to the rollups. */
#ifndef TALLY_COLLECTOR_STORE_H
#define TALLY_COLLECTOR_STORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <libpq-fe.h>
#include <poll.h>

#include "buf.h"
#include "keyplans.h"
#include "rollup.h"

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
bool store_load_keys(store *st, keyplans *cache, char *err, size_t err_size);
/* Looks up `count` key ids (borrowed) and adds those found to `cache`. */
bool store_lookup_keys(store *st, const char *const *ids, size_t count, keyplans *cache,
                       char *err, size_t err_size);
/* Creates the coming weeks' event_ids partitions and drops expired ones, in
 * a transaction of its own that waits at most 2 s for its locks. Call it
 * only while no other connection of this process has a transaction open
 * on event_ids: it would wait for one that waits for this process. */
bool store_maintain_partitions(store *st, int *created, int *dropped, char *err, size_t err_size);

/* Writing a batch is one transaction in two pipelined exchanges, so the
 * collector can parse the next batch meanwhile:
 *   A. store_send_inserts: BEGIN, then record each event's 128-bit digest in
 *      its event week; the result (store_poll's *kept) lists the digests
 *      never seen before, binary, 16 bytes each;
 *   B. store_send_rollups: add the new events' totals (aggregated by the
 *      caller) to the hourly rollups and period counters, raise the quota
 *      alert thresholds the counters crossed (in the same statement),
 *      announce the changed keys (NOTIFY on ROLLUP_COUNTERS_CHANNEL), then
 *      COMMIT.
 * Between a send and a store_poll that is not STORE_PENDING, no other store
 * call may be made. On STORE_FAILED the connection is dropped, which rolls
 * the transaction back: nothing of the batch is written. */
bool store_send_inserts(store *st, const uint8_t *digests, const int32_t *week_days,
                        size_t count, char *err, size_t err_size)
    __attribute__((warn_unused_result));
/* `hourly` and `counters` hold array literals (see rollup.h); with
 * `nothing_new` only COMMIT is sent. */
bool store_send_rollups(store *st, const buf *hourly, const buf *counters, bool nothing_new,
                        char *err, size_t err_size) __attribute__((warn_unused_result));

typedef enum { STORE_PENDING, STORE_DONE, STORE_FAILED } store_progress;

/* What kind of failure the last failed call met. */
typedef enum {
    STORE_ERROR_TRANSIENT, /* connection, locks, server state: the same write may succeed later */
    STORE_ERROR_DATA,      /* the data was refused (SQLSTATE class 22 or 23): it never will */
    STORE_ERROR_OVERFLOW,  /* a stored total would leave bigint's range (22003) */
} store_error_kind;
store_error_kind store_last_error(const store *st);

/* The collector's status row (status.h, `values` borrowed until sent) goes
 * with the next store_send_rollups, before its COMMIT. */
void store_stage_status(store *st, const char *const *values);
/* Writes the status row on its own (autocommit), between writes. */
bool store_write_status(store *st, const char *const *values, char *err, size_t err_size)
    __attribute__((warn_unused_result));

/* The rollup statement takes one array per column, hourly then counters. */
#define STORE_ROLLUP_PARAMS (ROLLUP_HOURLY_COLUMNS + ROLLUP_COUNTER_COLUMNS)

/* The connection's descriptor and the events to wait for while an
 * exchange is in flight; false when not connected. */
bool store_pollfd(const store *st, struct pollfd *pfd);

/* Advances the exchange in flight without waiting (wait on store_pollfd's
 * descriptor). On STORE_DONE after store_send_inserts, *kept is the
 * INSERT's result (owned by the caller: PQclear it); otherwise *kept is
 * NULL. */
store_progress store_poll(store *st, PGresult **kept, char *err, size_t err_size);

/* The same transaction in synchronous steps, for writing one part of a batch
 * on its own while poison events are isolated: store_begin, then
 * store_insert_digests (its result, owned by the caller, lists the new
 * digests as above), then store_add_rollups when any are new, then
 * store_commit. After a failed step call store_rollback. */
bool store_begin(store *st, char *err, size_t err_size) __attribute__((warn_unused_result));
PGresult *store_insert_digests(store *st, const uint8_t *digests, const int32_t *week_days,
                               size_t count, char *err, size_t err_size);
bool store_add_rollups(store *st, const buf *hourly, const buf *counters, char *err,
                       size_t err_size) __attribute__((warn_unused_result));
bool store_commit(store *st, char *err, size_t err_size) __attribute__((warn_unused_result));
void store_rollback(store *st);

#endif
