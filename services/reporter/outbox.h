/* The reporter's outbox in PostgreSQL (migrations/003_stripe_reports.sql):
 * planning new reports from the collector's rollups, loading the pending
 * ones, recording outcomes, and the operator's views (reconcile, parked,
 * requeue). Every statement is parameterized; errors go to err. */
#ifndef TALLY_REPORTER_OUTBOX_H
#define TALLY_REPORTER_OUTBOX_H

#include <libpq-fe.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "stripe.h"

typedef enum { REPORT_PENDING, REPORT_ACCEPTED, REPORT_PARKED } report_status;

/* The longest error text kept with a report (Stripe's message included). */
#define REPORT_ERROR_MAX 512

/* One report in memory. customer, target and identifier point into the same
 * allocation; last_error is its own (NULL when there is none), since most
 * reports never get one: up to 20,000 reports are held at once. Free with
 * report_free(). */
typedef struct report {
    int64_t id;
    stripe_mode mode;
    const char *customer;
    const char *target;      /* meter event name, or subscription item id */
    const char *identifier;
    int64_t hour;            /* unix seconds: the timestamp sent (the bucket's start, or 34
                              * days before planning for older usage) */
    int64_t quantity;
    int generation;          /* idempotency key generation */
    int attempts;            /* calls made so far, every run included */
    int64_t first_sent_usec; /* first taken for sending (written at load, before any call) */
    int64_t last_sent_usec;
    int64_t ready_usec;      /* not before this time */
    int replayed_failures;   /* saved failures replayed to the current key */
    int failures;            /* retryable failures in a row (backoff), this process */
    int run_failures;        /* failed calls in this process (--once gives up), never reset */
    report_status status;
    int last_http_status;    /* 0: no answer */
    char *last_error;        /* NULL: none; at most REPORT_ERROR_MAX bytes with the NUL */
    bool dirty;              /* changed since the last flush */
    bool in_flight;
    bool given_up;           /* --once: left pending for a later run */
    struct report *lane_next;
} report;

/* Frees a report (stolen) with its error text; NULL is fine. */
void report_free(report *r);

/* Takes the reporter's session-level advisory lock (one active reporter per
 * database); *held says whether it was free. */
bool outbox_try_lock(PGconn *db, bool *held, char *err, size_t err_size);

/* The database's clock minus `margin_s`, as text for outbox_plan's `since`. */
bool outbox_clock(PGconn *db, double margin_s, char *out, size_t size, char *err,
                  size_t err_size);

/* Inserts a report for every (key, plan, hour) whose counted units exceed
 * what its reports already cover: the key has a Stripe customer, the target
 * exists for `mode`, the hour is within `lookback_days` and settled (its
 * hour ended, or its last change is, `settle_s` ago). `since` (NULL: all)
 * limits the look to buckets changed since then. `namespace` ("" for none)
 * goes into the identifiers: deployments sharing a Stripe account need
 * different ones. */
bool outbox_plan(PGconn *db, stripe_mode mode, const char *since, double settle_s,
                 int lookback_days, const char *namespace, long long *reports,
                 long long *units, char *err, size_t err_size);

/* Loads up to `limit` pending reports with id > after_id, in id order,
 * through `take` (which owns each report it is given: report_free() it), stamping
 * first_sent_at on those never taken before. */
bool outbox_load(PGconn *db, int64_t after_id, int limit,
                 void (*take)(void *ctx, report *r), void *ctx, int *loaded, char *err,
                 size_t err_size);

/* Writes the current state of `count` reports (attempts, status, error,
 * next attempt, key generation). Only reports still pending in the database
 * change: an operator's decision meanwhile wins. */
bool outbox_flush(PGconn *db, report *const *reports, size_t count, char *err, size_t err_size);

typedef struct {
    long long pending, parked;
    double oldest_pending_s; /* age of the oldest pending report; 0 when none */
} outbox_stats;
bool outbox_stats_read(PGconn *db, outbox_stats *out, char *err, size_t err_size);

/* `tally-reporter reconcile`: prints per customer and target the counted,
 * accepted, pending and parked units for hours in [from, to) (RFC 3339 or
 * NULL for open ends), as a table or JSON. *differences counts the rows
 * where counted != accepted + pending. */
bool outbox_reconcile(PGconn *db, stripe_mode mode, const char *from, const char *to, bool json,
                      FILE *out, long long *differences, char *err, size_t err_size);

/* `tally-reporter parked`: lists parked reports with Stripe's message. */
bool outbox_list_parked(PGconn *db, int limit, bool json, FILE *out, long long *count, char *err,
                        size_t err_size);

/* `tally-reporter requeue`: parked reports (one id, or all, optionally of
 * one customer) go back to pending under a new idempotency key generation,
 * each in its own mode, with the customer and target its key and plan have
 * now. Reports whose key lost its customer or target stay parked. */
bool outbox_requeue(PGconn *db, long long id, const char *customer, long long *count, char *err,
                    size_t err_size);

/* `tally-reporter resolve`: a parked report an operator found counted in
 * Stripe becomes accepted without a call. *count is 1, or 0 when the
 * report is not parked. */
bool outbox_resolve(PGconn *db, long long id, long long *count, char *err, size_t err_size);

#endif
