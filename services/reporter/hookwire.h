/* The webhook wire format, all of it, as pure functions (README "Webhooks"):
 * the JSON body of an alert's delivery, the Tally-Signature header (Stripe's
 * scheme: t=<unix>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>, a second v1
 * under the previous secret while it has not expired), the retry schedule
 * (exponential backoff with jitter, parked once the window is spent) and
 * what an answer means. No I/O: the delivery loop (hooks.c) moves bytes. */
#ifndef TALLY_REPORTER_HOOKWIRE_H
#define TALLY_REPORTER_HOOKWIRE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* What one delivery says, as quota_alerts keeps it (borrowed strings). */
typedef struct {
    const char *event_id;     /* quota_alerts.event_id: the receiver's dedup key */
    const char *type;         /* quota.threshold_reached, quota.exhausted, ... */
    int64_t created;          /* unix seconds: when the threshold was reached */
    const char *key_id;
    const char *customer_id;  /* NULL: the key has none */
    const char *plan_id;
    const char *period;       /* DAY, WEEK or MONTH */
    const char *period_start; /* RFC 3339 */
    const char *period_end;
    int threshold;            /* percent of the limit */
    int64_t used, limit;
    const char *enforcement;  /* hard or soft */
} hookwire_alert;

/* The longest body built; quota_alerts' columns are bounded well below. */
#define HOOKWIRE_BODY_MAX 8192

/* The delivery's JSON body into out (NUL-terminated); false when it does
 * not fit `size` or a field is missing. The same alert always gives the
 * same bytes, whatever attempt. */
bool hookwire_body(const hookwire_alert *alert, char *out, size_t size);

/* used * 100 / limit, rounded to two decimals (0 when limit <= 0). */
double hookwire_percent(int64_t used, int64_t limit);

/* "t=<t>,v1=<hex>" and ",v1=<hex>" for previous_secret when not NULL: 20 +
 * 2 * 68 bytes at most. */
#define HOOKWIRE_SIGNATURE_MAX 176
/* The Tally-Signature header's value (without its name) for `body` sent at
 * unix time `t`. False when it does not fit `size`. */
bool hookwire_signature(const char *secret, const char *previous_secret, int64_t t,
                        const char *body, size_t body_len, char *out, size_t size);

/* The retry schedule. Attempt n (1-based) that failed is followed, after a
 * nominal delay of min(base * 2^(n-1), cap), by attempt n + 1, unless the
 * nominal delays of attempts 1..n add up to more than `window`: then the
 * delivery is parked. Counting nominal delays (not wall time) means an
 * outage of the sender itself does not eat a delivery's window, and a
 * resend (attempts back to 0) gets a whole new one. Milliseconds. */
typedef struct {
    int64_t base_ms, cap_ms, window_ms;
} hookwire_schedule;

/* The nominal delay after failed attempt n (n >= 1). */
int64_t hookwire_nominal_delay_ms(const hookwire_schedule *s, int attempt);
/* After failed attempt `attempt`: true and the delay before the next one in
 * *delay_ms, spread by `jitter` in [0, 1) over [0.8, 1.2) x nominal so that
 * endpoints failing together do not retry together; false: park it. */
bool hookwire_next_delay_ms(const hookwire_schedule *s, int attempt, double jitter,
                            int64_t *delay_ms);
/* How many attempts the schedule makes at most before parking. */
int hookwire_max_attempts(const hookwire_schedule *s);

typedef enum {
    HOOKWIRE_DELIVERED, /* any 2xx */
    HOOKWIRE_RETRY,     /* everything else: no answer, 3xx (no redirects), 4xx, 5xx */
    HOOKWIRE_GONE,      /* 410: the receiver says the endpoint is gone: parked now */
} hookwire_outcome;

/* What an HTTP status (0: no answer) means for the delivery. */
hookwire_outcome hookwire_classify(long http_status);

/* Copies at most `max` bytes of an answer into out as printable ASCII
 * (anything else becomes '?'), NUL-terminated (out holds max + 1). */
void hookwire_printable(const char *text, size_t len, size_t max, char *out);

#endif
