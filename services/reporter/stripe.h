/* Stripe's wire rules as pure functions (docs/STRIPE.md): the form body
 * encoding, how an answer is classified (the official SDKs' retry rules plus
 * what the reporter does with each outcome), the retry backoff, and the
 * idempotency key of a report. No I/O here, so every rule is unit-tested. */
#ifndef TALLY_STRIPE_H
#define TALLY_STRIPE_H

#include <stdbool.h>
#include <stdint.h>

#include "buf.h"

/* Stripe's limits on what we send. */
#define STRIPE_IDENTIFIER_MAX      100
#define STRIPE_IDEMPOTENCY_KEY_MAX 255

typedef enum {
    STRIPE_MODE_METER_EVENTS,   /* POST /v1/billing/meter_events */
    STRIPE_MODE_USAGE_RECORDS,  /* POST /v1/subscription_items/{id}/usage_records */
} stripe_mode;

/* What to do after an answer (or a failure to get one). */
typedef enum {
    STRIPE_ACCEPTED,      /* counted */
    STRIPE_DUPLICATE,     /* refused as a repeated identifier: counted before, so delivered */
    STRIPE_RETRY,         /* retry the same request, same idempotency key */
    STRIPE_RATE_LIMITED,  /* 429: retry, and slow the whole reporter down */
    STRIPE_NEW_KEY,       /* meter events only: retry under a new idempotency key, same identifier */
    STRIPE_AUTH_FAILED,   /* 401/403: our API key is refused; pause everything, park nothing */
    STRIPE_PARK,          /* refused for good: keep it for an operator, never retry on its own */
} stripe_outcome;

typedef struct {
    long http_status;          /* 0 when no answer arrived (timeout, connection error) */
    int should_retry;          /* Stripe-Should-Retry: 1 true, 0 false, -1 absent */
    bool replayed;             /* Idempotent-Replayed: true (a saved answer) */
    const char *error_type;    /* error.type of the body, or NULL */
    const char *error_message; /* error.message, or NULL */
    int replayed_failures;     /* saved 5xx answers replayed to this key so far, this one included */
} stripe_reply;

/* After this many replays of a saved failure, a meter event is retried under
 * a new idempotency key (its identifier stays); a usage record, which has no
 * identifier to guard it, is parked instead of looping forever. */
#define STRIPE_REPLAYED_FAILURES_MAX 2

stripe_outcome stripe_classify(stripe_mode mode, const stripe_reply *reply);
const char *stripe_outcome_name(stripe_outcome outcome);

/* Seconds to wait before retry number `retry` (1 for the first), as
 * stripe-python: min(0.5 * 2^(retry-1), 5), jittered to 50-100% by `jitter`
 * in [0, 1]. */
double stripe_backoff_s(int retry, double jitter);

/* Appends `name=value` to a form body (with '&' when not the first pair),
 * percent-encoding both as application/x-www-form-urlencoded. */
bool stripe_form_add(buf *body, const char *name, const char *value)
    __attribute__((warn_unused_result));

/* The Idempotency-Key for a report: its identifier for generation 0, then
 * "<identifier>-g<generation>". False when it would not fit `size`. */
bool stripe_idempotency_key(const char *identifier, int generation, char *out, size_t size);

/* Parses "meter_events" / "usage_records". */
bool stripe_parse_mode(const char *text, stripe_mode *out);
const char *stripe_mode_name(stripe_mode mode);  /* the settings' spelling */
const char *stripe_mode_column(stripe_mode mode); /* stripe_reports.mode */

#endif
