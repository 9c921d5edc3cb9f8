/* The webhook outbox in PostgreSQL (migrations/006_overage_alerts.sql):
 * claiming the deliveries that are due, within a per-endpoint bound,
 * recording each attempt's outcome (webhook_attempts and the delivery's
 * state in one statement), and the counts the metrics show. Every
 * statement is parameterized; errors go to err. */
#ifndef TALLY_REPORTER_HOOKBOX_H
#define TALLY_REPORTER_HOOKBOX_H

#include <libpq-fe.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "hookwire.h"

#define HOOKBOX_ID_MAX 128
#define HOOKBOX_URL_MAX 2048
/* The longest error text recorded with an attempt. */
#define HOOKBOX_ERROR_MAX 512

/* One claimed delivery: the endpoint's url and secrets as they are now, and
 * the alert's fields for the body. `strings` owns every text the alert
 * points to. Free with hookbox_delivery_free(). */
typedef struct hookbox_delivery {
    int64_t alert_id;
    char endpoint_id[HOOKBOX_ID_MAX + 1];
    int attempts;              /* attempts recorded before this one */
    char *url, *secret;
    char *previous_secret;     /* NULL when none or expired */
    hookwire_alert alert;
    char *strings;
} hookbox_delivery;

void hookbox_delivery_free(hookbox_delivery *d);

/* The delivery loop's session advisory lock (one active webhook sender per
 * database; not the Stripe reporter's lock); *held says whether it was free. */
bool hookbox_try_lock(PGconn *db, bool *held, char *err, size_t err_size);

/* Claims up to `limit` deliveries that are due (pending, next attempt come,
 * endpoint enabled), at most `per_endpoint` per endpoint counting the
 * `busy_count` endpoint ids of attempts still in flight (one entry per
 * attempt), oldest first. A claim moves next_attempt_at `lease_ms` ahead: a
 * crash before the outcome is recorded sends it again then, with the same
 * event id. Each is handed to `take`, which owns it. */
bool hookbox_claim(PGconn *db, const char *const *busy, size_t busy_count, int per_endpoint,
                   int limit, int64_t lease_ms, void (*take)(void *ctx, hookbox_delivery *d),
                   void *ctx, int *claimed, char *err, size_t err_size);

typedef enum { HOOKBOX_PENDING, HOOKBOX_DELIVERED, HOOKBOX_PARKED } hookbox_status;

/* One attempt's outcome, to record. */
typedef struct {
    int64_t alert_id;
    const char *endpoint_id;
    int64_t attempted_usec;   /* unix microseconds when it started */
    long http_status;         /* 0: no answer */
    const char *error;        /* NULL: none */
    int duration_ms;
    hookbox_status status;    /* what the delivery becomes */
    int64_t next_delay_ms;    /* pending: from now until the next attempt */
} hookbox_outcome;

/* Records `count` outcomes in one transaction: an attempt row each, and the
 * delivery's new state when it is still pending (an operator's resend
 * meanwhile leaves it pending, attempts counted on). */
bool hookbox_record(PGconn *db, const hookbox_outcome *outcomes, size_t count, char *err,
                    size_t err_size);

typedef struct {
    long long pending, parked;
} hookbox_stats;
bool hookbox_stats_read(PGconn *db, hookbox_stats *out, char *err, size_t err_size);

#endif
