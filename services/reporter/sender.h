/* The sending half of the reporter: reports queued in lanes (one lane per
 * Stripe customer and target, at most one call in flight per lane), sent
 * with libcurl's multi interface under a concurrency bound and a request
 * rate ceiling. What each call carries and what each answer means are
 * stripe.c's: this module only moves the bytes and schedules. Single-
 * threaded: the reporter's main loop calls sender_run() between database
 * work. */
#ifndef TALLY_REPORTER_SENDER_H
#define TALLY_REPORTER_SENDER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "outbox.h"

typedef struct {
    const char *api_base;    /* "https://api.stripe.com", no trailing slash */
    const char *api_key;     /* sent only in the Authorization header */
    const char *api_version; /* Stripe-Version header; "": the account's default for meter
                              * events, 2025-02-24.acacia for usage records */
    long timeout_ms;
    int concurrency;
    double rate_limit;       /* calls per second, the ceiling */
    int give_up_after;       /* failed calls after which a report is left for later (--once); 0: never */
} sender_config;

typedef struct {
    long long sent, accepted, duplicates, retried, rate_limited, parked, new_keys, given_up;
    long long units_accepted;
} sender_totals;

typedef struct sender sender;

sender *sender_new(const sender_config *config, char *err, size_t err_size);
void sender_free(sender *s);

/* Queues a loaded report (the sender owns it from now on). */
void sender_add(sender *s, report *r);

/* Starts what may start now, waits up to `max_wait_ms` for answers and
 * handles them. */
void sender_run(sender *s, int max_wait_ms);

/* Reports whose state changed since the last call (borrowed until
 * sender_flushed). */
report *const *sender_dirty(sender *s, size_t *count);
/* The dirty reports were written: reports that are done are freed. */
void sender_flushed(sender *s);

/* Reports held in memory (queued, in flight, or done but not yet written). */
size_t sender_in_memory(const sender *s);
size_t sender_in_flight(const sender *s);
/* Queued reports that may be started no later than `within_usec` from now
 * (what --once still waits for). */
bool sender_idle(const sender *s);
/* Stops starting calls (shutdown or lost lock); in-flight calls finish. */
void sender_hold(sender *s, bool hold);
/* Forgets every queued report that is not in flight and already written
 * (after the lock was lost: another reporter owns them now). */
void sender_drop_queued(sender *s);
/* True once Stripe refused our API key (401/403). */
bool sender_auth_failed(const sender *s);

const sender_totals *sender_get_totals(const sender *s);

#endif
