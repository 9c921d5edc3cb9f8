#include "stripe.h"

#include <stdio.h>
#include <string.h>

/* The message Stripe answers a repeated meter-event identifier with. */
static const char duplicate_prefix[] = "An event already exists with identifier";

stripe_outcome stripe_classify(stripe_mode mode, const stripe_reply *r)
{
    long s = r->http_status;
    if (s == 0)
        return STRIPE_RETRY; /* may have been processed: same key, same identifier */
    if (s >= 200 && s < 300)
        return STRIPE_ACCEPTED;
    if (mode == STRIPE_MODE_METER_EVENTS && s == 400 && r->error_message != NULL &&
        strncmp(r->error_message, duplicate_prefix, sizeof duplicate_prefix - 1) == 0)
        return STRIPE_DUPLICATE;
    if (s == 401 || s == 403)
        return STRIPE_AUTH_FAILED; /* a key problem, not this report's */
    if (s == 429 && r->should_retry != 0)
        return STRIPE_RATE_LIMITED;
    /* A saved failure replayed again and again never changes: break the loop
     * (meter events: new key, same identifier; usage records: park). */
    if (s >= 500 && r->replayed && r->replayed_failures >= STRIPE_REPLAYED_FAILURES_MAX)
        return mode == STRIPE_MODE_METER_EVENTS ? STRIPE_NEW_KEY : STRIPE_PARK;
    if (r->should_retry == 1)
        return STRIPE_RETRY;
    if (r->should_retry == 0)
        return STRIPE_PARK;
    if (s == 409 || s >= 500)
        return STRIPE_RETRY;
    if (s == 400 && r->error_type != NULL && strcmp(r->error_type, "idempotency_error") == 0)
        return mode == STRIPE_MODE_METER_EVENTS ? STRIPE_NEW_KEY : STRIPE_PARK;
    return STRIPE_PARK;
}

const char *stripe_outcome_name(stripe_outcome outcome)
{
    switch (outcome) {
    case STRIPE_ACCEPTED: return "accepted";
    case STRIPE_DUPLICATE: return "duplicate";
    case STRIPE_RETRY: return "retry";
    case STRIPE_RATE_LIMITED: return "rate_limited";
    case STRIPE_NEW_KEY: return "new_key";
    case STRIPE_AUTH_FAILED: return "auth_failed";
    case STRIPE_PARK: return "park";
    }
    return "?";
}

double stripe_backoff_s(int retry, double jitter)
{
    double delay = 0.5;
    for (int i = 1; i < retry && delay < 5.0; i++)
        delay *= 2;
    if (delay > 5.0)
        delay = 5.0;
    if (jitter < 0)
        jitter = 0;
    if (jitter > 1)
        jitter = 1;
    return delay * (0.5 + 0.5 * jitter);
}

static bool form_escape(buf *body, const char *text)
{
    static const char hex[] = "0123456789ABCDEF";
    for (const unsigned char *p = (const unsigned char *)text; *p; p++) {
        unsigned char c = *p;
        bool plain = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                     c == '-' || c == '_' || c == '.' || c == '~';
        char enc[3] = {'%', hex[c >> 4], hex[c & 15]};
        if (!(plain ? buf_append(body, p, 1) : buf_append(body, enc, 3)))
            return false;
    }
    return true;
}

bool stripe_form_add(buf *body, const char *name, const char *value)
{
    size_t before = body->len;
    bool ok = (body->len == 0 || buf_append(body, "&", 1)) && form_escape(body, name) &&
              buf_append(body, "=", 1) && form_escape(body, value);
    if (!ok && body->data) {
        body->len = before; /* all or nothing */
        body->data[before] = '\0';
    }
    return ok;
}

bool stripe_idempotency_key(const char *identifier, int generation, char *out, size_t size)
{
    int n = generation == 0 ? snprintf(out, size, "%s", identifier)
                            : snprintf(out, size, "%s-g%d", identifier, generation);
    return n > 0 && (size_t)n < size && n <= STRIPE_IDEMPOTENCY_KEY_MAX;
}

bool stripe_parse_mode(const char *text, stripe_mode *out)
{
    if (strcmp(text, "meter_events") == 0)
        *out = STRIPE_MODE_METER_EVENTS;
    else if (strcmp(text, "usage_records") == 0)
        *out = STRIPE_MODE_USAGE_RECORDS;
    else
        return false;
    return true;
}

const char *stripe_mode_name(stripe_mode mode)
{
    return mode == STRIPE_MODE_METER_EVENTS ? "meter_events" : "usage_records";
}

const char *stripe_mode_column(stripe_mode mode)
{
    return mode == STRIPE_MODE_METER_EVENTS ? "meter_event" : "usage_record";
}
