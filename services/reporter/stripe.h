/* Stripe's wire format, all of it, as pure functions (docs/STRIPE.md): the
 * mode names, the request for a report (method, URL, headers, form body),
 * how an answer (status, headers, error body) is classified, the retry
 * backoff and the idempotency key of a report. No I/O here: the sender only
 * moves these bytes, and every rule is unit-tested against Stripe's
 * documented examples. */
#ifndef TALLY_STRIPE_H
#define TALLY_STRIPE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "buf.h"

/* Stripe's limits on what we send. */
#define STRIPE_IDENTIFIER_MAX      100
#define STRIPE_IDEMPOTENCY_KEY_MAX 255

/* ---- modes --------------------------------------------------------------- */

typedef enum {
    STRIPE_MODE_METER_EVENTS,   /* POST /v1/billing/meter_events */
    STRIPE_MODE_USAGE_RECORDS,  /* POST /v1/subscription_items/{id}/usage_records */
} stripe_mode;

/* The settings' spelling (TALLY_STRIPE_MODE). */
#define STRIPE_MODE_NAME_METER_EVENTS  "meter_events"
#define STRIPE_MODE_NAME_USAGE_RECORDS "usage_records"
/* stripe_reports.mode (migrations/003_stripe_reports.sql); literals, so SQL
 * text may quote them. */
#define STRIPE_MODE_COLUMN_METER_EVENTS  "meter_event"
#define STRIPE_MODE_COLUMN_USAGE_RECORDS "usage_record"

/* Parses a setting's spelling; false for anything else. */
bool stripe_parse_mode(const char *text, stripe_mode *out);
const char *stripe_mode_name(stripe_mode mode);
const char *stripe_mode_column(stripe_mode mode);
/* A stripe_reports.mode value; false for anything else. */
bool stripe_mode_from_column(const char *column, stripe_mode *out);

/* ---- requests ------------------------------------------------------------ */

/* Usage records exist only up to this API version: it is pinned for them
 * unless TALLY_STRIPE_VERSION says otherwise. */
#define STRIPE_USAGE_RECORDS_VERSION "2025-02-24.acacia"
/* The longest TALLY_STRIPE_VERSION taken (Stripe's look "2025-02-24.acacia"). */
#define STRIPE_VERSION_MAX 64

/* Whether `version` may go into the Stripe-Version header: "" (none), or at
 * most STRIPE_VERSION_MAX letters, digits, '_', '.' or '-' (never a line
 * break that would start another header). */
bool stripe_version_valid(const char *version);

/* Where requests go. Borrowed strings. */
typedef struct {
    const char *api_base;    /* "https://api.stripe.com", no trailing slash */
    const char *api_version; /* Stripe-Version; "": the account's default for meter events,
                              * STRIPE_USAGE_RECORDS_VERSION for usage records */
} stripe_account;

/* What one report tells Stripe. Borrowed strings. */
typedef struct {
    stripe_mode mode;
    const char *customer;   /* meter events' payload[stripe_customer_id] (usage records: the
                             * item names the customer) */
    const char *target;     /* meter event name, or subscription item id */
    const char *identifier; /* meter events' identifier; the idempotency key's base */
    int64_t timestamp;      /* unix seconds */
    int64_t quantity;
    int generation;         /* idempotency key generation */
} stripe_usage;

#define STRIPE_URL_MAX          1024
#define STRIPE_HEADER_LINE_MAX  (STRIPE_IDEMPOTENCY_KEY_MAX + 32)
#define STRIPE_REQUEST_HEADERS  3
#define STRIPE_BODY_MAX         8192

/* One call, ready for any HTTP client. The Authorization header is not
 * among the headers: the API key stays with whoever holds it
 * (stripe_authorization). */
typedef struct {
    const char *method; /* static */
    char url[STRIPE_URL_MAX];
    char headers[STRIPE_REQUEST_HEADERS][STRIPE_HEADER_LINE_MAX]; /* "Name: value" */
    int header_count;
    buf body;           /* application/x-www-form-urlencoded, at most STRIPE_BODY_MAX */
} stripe_request;

void stripe_request_init(stripe_request *req);
void stripe_request_free(stripe_request *req);
/* Builds the call that reports `usage` (docs/STRIPE.md §1-§3) into `req`
 * (initialized; its earlier contents are replaced). False, with the reason in
 * `err`, when a part does not fit its maximum or memory runs out. */
bool stripe_request_build(const stripe_account *account, const stripe_usage *usage,
                          stripe_request *req, char *err, size_t err_size)
    __attribute__((warn_unused_result));

/* "Authorization: Bearer <api_key>" as a new string (the caller frees it,
 * after wiping it), or NULL when out of memory. */
char *stripe_authorization(const char *api_key);

/* Appends `name=value` to a form body (with '&' when not the first pair),
 * percent-encoding both as application/x-www-form-urlencoded. All or
 * nothing. */
bool stripe_form_add(buf *body, const char *name, const char *value)
    __attribute__((warn_unused_result));

/* The Idempotency-Key for a report: its identifier for generation 0, then
 * "<identifier>-g<generation>". False when it would not fit `size`. */
bool stripe_idempotency_key(const char *identifier, int generation, char *out, size_t size);

/* ---- answers ------------------------------------------------------------- */

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

/* An answer as it arrives. Fill it with stripe_answer_init, then
 * stripe_answer_header for each header line, then the status and body. */
typedef struct {
    long http_status;  /* 0 when no answer arrived (timeout, connection error) */
    int should_retry;  /* Stripe-Should-Retry: 1 true, 0 false, -1 absent */
    bool replayed;     /* Idempotent-Replayed: true (a saved answer) */
    const char *body;  /* borrowed; NULL or body_len bytes, not necessarily NUL-terminated */
    size_t body_len;
} stripe_answer;

void stripe_answer_init(stripe_answer *answer);
/* Notes a response header line ("Name: value", CRLF or not) when it is one
 * the classification reads; any other line is ignored. */
void stripe_answer_header(stripe_answer *answer, const char *line, size_t len);

/* After this many replays of a saved failure, a meter event is retried under
 * a new idempotency key (its identifier stays); a usage record, which has no
 * identifier to guard it, is parked instead of looping forever. */
#define STRIPE_REPLAYED_FAILURES_MAX 2

/* What an answer means. The error fields are the body's
 * {"error":{"type","code","message"}}, cut to fit on a UTF-8 boundary;
 * "" when absent. */
typedef struct {
    stripe_outcome outcome;
    int replayed_failures; /* saved 5xx answers replayed to this key in a row, this one
                            * included: keep it with the report for the next answer */
    char type[64], code[64], message[400];
} stripe_verdict;

/* Classifies `answer` to a report in `mode` whose earlier answers under its
 * current key were `replayed_failures` replayed failures in a row
 * (docs/STRIPE.md §4). */
void stripe_classify(stripe_mode mode, const stripe_answer *answer, int replayed_failures,
                     stripe_verdict *out);
const char *stripe_outcome_name(stripe_outcome outcome);

/* Seconds to wait before retry number `retry` (1 for the first), as
 * stripe-python: min(0.5 * 2^(retry-1), 5), jittered to 50-100% by `jitter`
 * in [0, 1]. */
double stripe_backoff_s(int retry, double jitter);

#endif
