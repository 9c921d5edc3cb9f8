/* Several api replicas enforcing one quota and one rate per key (issue
 * #15; migration 009, README "Several api replicas"). Off by default; with
 * TALLY_API_REPLICAS_SHARED on:
 *
 * - quota: a replica allows a request of a key with a quota only by
 *   spending one unit of a lease it holds in memory. A background thread
 *   leases slices from PostgreSQL (tally_lease_grant, which never grants
 *   past the limit less what is counted, reported spent or held by live
 *   replicas) and tops a lease up when it falls to half a slice, so the
 *   decision does not wait on the database while the traffic is steady.
 *   Bound: allowed <= limit + the units dead replicas spent after their
 *   last report, at most one slice each (leases_slice).
 * - membership: the same thread writes this replica's heartbeat to
 *   api_replicas; a replica silent for the TTL is dead to its peers, its
 *   unspent leases return, and it stops spending on its own once its last
 *   heartbeat is a TTL old (so a live but cut-off replica never spends what
 *   its peers were given back).
 * - rate: each replica enforces rate / N and ceil(burst / N) with N the
 *   live replicas (leases_rate_share).
 *
 * One instance per process. */
#ifndef TALLY_API_LEASES_H
#define TALLY_API_LEASES_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "period.h"

typedef struct {
    long long lease_max;    /* the largest slice (TALLY_API_QUOTA_LEASE_MAX) */
    long long heartbeat_ms; /* TALLY_API_REPLICA_HEARTBEAT_MS */
    long long ttl_ms;       /* TALLY_API_REPLICA_TTL_MS: dead after this silence */
} leases_settings;

/* The smallest slice, and the share of a quota one slice is (1/200). */
#define LEASES_SLICE_MIN 10
#define LEASES_SLICE_DIVISOR 200

/* ---- pure arithmetic (unit-tested) ---- */

/* The slice a replica holds at most for a quota of `limit`: limit / 200,
 * at least LEASES_SLICE_MIN, at most `lease_max` (and at least 1). */
int64_t leases_slice(int64_t limit, int64_t lease_max);
/* Units to ask for when `holding` of a `slice` are left: 0 while more
 * than half a slice is held, else what tops it up to a slice. */
int64_t leases_refill_want(int64_t holding, int64_t slice);
/* What the heartbeat knows of one lease when it decides on a top-up. */
typedef struct {
    int64_t holding, limit, lease_max;
    bool recent;          /* a request used it since the last heartbeat, or waits now */
    bool release_pending; /* a give-back not yet written to the table */
    bool period_over;
    bool empty_lately;    /* the pool answered nothing moments ago */
} leases_topup_state;
/* Units the heartbeat asks for: leases_refill_want's, or 0 when the lease
 * is idle, its period over, the pool empty lately, or a release pending
 * (written after a grant, it would set granted = spent and wipe it out). */
int64_t leases_topup_want(const leases_topup_state *s);
/* One replica's share of a plan's rate and burst among `replicas` live
 * ones (below 1 counts as 1): rate / N and ceil(burst / N), so the shares
 * add up to the rate and to at most burst + N - 1. */
void leases_rate_share(double rate, int64_t burst, int64_t replicas, double *rate_share,
                       int64_t *burst_share);

/* ---- the process's leases ---- */

/* Registers this replica (a heartbeat) on its own connection to `url`
 * (borrowed for the process's life) and starts the lease thread; false
 * with err when the database refuses. Not called: leases_enabled() is
 * false and the rest below is never used. */
bool leases_start(const char *url, const leases_settings *settings, char *err,
                  size_t err_size);
/* Reports what was spent, gives every lease back, marks this replica
 * dead at once (a rolling deploy returns its quota without waiting for
 * the TTL) and stops the thread. Fine when not started. */
void leases_stop(void);
/* True once leases_start succeeded. */
bool leases_enabled(void);
/* Spends one unit of the key's lease for the period starting at
 * `period_start` (of kind `period`) whose limit is `limit`. Waits at most
 * LEASES_WAIT_MS for a refill when the lease is empty and the pool was
 * not found empty lately. False: no unit (quota used up across replicas,
 * or this replica cut off from PostgreSQL for its TTL). */
#define LEASES_WAIT_MS 100
bool leases_take(const char *key_id, period_kind period, int64_t period_start, int64_t limit,
                 int64_t now);
/* Gives back the unit just taken (the request was refused for another
 * reason, a throttle). */
void leases_give_back(const char *key_id, int64_t period_start);
/* The live replicas as of the last heartbeat (at least 1). */
int64_t leases_live_replicas(void);

#endif
