#include "stripe.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "utf8.h"

/* ---- modes --------------------------------------------------------------- */

/* One row a mode: its setting's spelling and its stripe_reports.mode value,
 * so that each lookup below is one loop over one list. */
static const struct {
    stripe_mode mode;
    const char *name;   /* TALLY_STRIPE_MODE */
    const char *column; /* stripe_reports.mode */
} modes[] = {
    {STRIPE_MODE_METER_EVENTS, STRIPE_MODE_NAME_METER_EVENTS, STRIPE_MODE_COLUMN_METER_EVENTS},
    {STRIPE_MODE_USAGE_RECORDS, STRIPE_MODE_NAME_USAGE_RECORDS, STRIPE_MODE_COLUMN_USAGE_RECORDS},
};
#define MODE_COUNT (sizeof modes / sizeof modes[0])

/* Sets *out to the mode whose name (or, with `by_column`, column value) is
 * `text`; false when none is. */
static bool mode_of_text(const char *text, bool by_column, stripe_mode *out)
{
    for (size_t i = 0; i < MODE_COUNT; i++) {
        if (strcmp(text, by_column ? modes[i].column : modes[i].name) == 0) {
            *out = modes[i].mode;
            return true;
        }
    }
    return false;
}

/* The row of `mode`; the last one (usage records) for a value outside the
 * enum, as the names always read. */
static size_t mode_row(stripe_mode mode)
{
    size_t i = 0;
    while (i < MODE_COUNT - 1 && modes[i].mode != mode)
        i++;
    return i;
}

bool stripe_parse_mode(const char *text, stripe_mode *out)
{
    return mode_of_text(text, false, out);
}

const char *stripe_mode_name(stripe_mode mode)
{
    return modes[mode_row(mode)].name;
}

const char *stripe_mode_column(stripe_mode mode)
{
    return modes[mode_row(mode)].column;
}

bool stripe_mode_from_column(const char *column, stripe_mode *out)
{
    return mode_of_text(column, true, out);
}

/* ---- requests ------------------------------------------------------------ */

/* Percent-encodes every byte but the unreserved ones (RFC 3986: A-Z a-z 0-9
 * - _ . ~): right for form names and values (a space is %20, never '+') and
 * for a path segment alike. */
static bool percent_encode(buf *out, const char *text)
{
    static const char hex[] = "0123456789ABCDEF";
    for (const unsigned char *p = (const unsigned char *)text; *p; p++) {
        unsigned char c = *p;
        bool plain = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                     c == '-' || c == '_' || c == '.' || c == '~';
        char enc[3] = {'%', hex[c >> 4], hex[c & 15]};
        if (!(plain ? buf_append(out, p, 1) : buf_append(out, enc, 3)))
            return false;
    }
    return true;
}

bool stripe_form_add(buf *body, const char *name, const char *value)
{
    size_t before = body->len;
    bool ok = (body->len == 0 || buf_append(body, "&", 1)) && percent_encode(body, name) &&
              buf_append(body, "=", 1) && percent_encode(body, value);
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

bool stripe_version_valid(const char *version)
{
    static const char allowed[] = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
                                  "0123456789_.-";
    size_t len = strlen(version);
    return len <= STRIPE_VERSION_MAX && strspn(version, allowed) == len;
}

char *stripe_authorization(const char *api_key)
{
    static const char prefix[] = "Authorization: Bearer ";
    size_t len = sizeof prefix + strlen(api_key);
    char *header = malloc(len);
    if (header)
        snprintf(header, len, "%s%s", prefix, api_key);
    return header;
}

void stripe_request_init(stripe_request *req)
{
    memset(req, 0, sizeof *req);
    buf_init(&req->body, STRIPE_BODY_MAX);
}

void stripe_request_free(stripe_request *req)
{
    buf_free(&req->body);
}

/* POST {base}/v1/billing/meter_events (docs/STRIPE.md §1). */
static bool meter_event_call(const stripe_account *account, const stripe_usage *usage,
                             stripe_request *req, const char *quantity, const char *timestamp)
{
    int n = snprintf(req->url, sizeof req->url, "%s/v1/billing/meter_events", account->api_base);
    return n > 0 && (size_t)n < sizeof req->url &&
           stripe_form_add(&req->body, "event_name", usage->target) &&
           stripe_form_add(&req->body, "payload[stripe_customer_id]", usage->customer) &&
           stripe_form_add(&req->body, "payload[value]", quantity) &&
           stripe_form_add(&req->body, "identifier", usage->identifier) &&
           stripe_form_add(&req->body, "timestamp", timestamp);
}

/* POST {base}/v1/subscription_items/{item}/usage_records, the item
 * percent-encoded into the path (docs/STRIPE.md §2). */
static bool usage_record_call(const stripe_account *account, const stripe_usage *usage,
                              stripe_request *req, const char *quantity, const char *timestamp)
{
    buf url;
    buf_init(&url, sizeof req->url - 1);
    bool ok = buf_append_str(&url, account->api_base) &&
              buf_append_str(&url, "/v1/subscription_items/") &&
              percent_encode(&url, usage->target) && buf_append_str(&url, "/usage_records");
    if (ok)
        memcpy(req->url, url.data, url.len + 1);
    buf_free(&url);
    return ok && stripe_form_add(&req->body, "quantity", quantity) &&
           stripe_form_add(&req->body, "timestamp", timestamp) &&
           stripe_form_add(&req->body, "action", "increment");
}

static bool add_header(stripe_request *req, const char *name, const char *value)
{
    if (req->header_count >= STRIPE_REQUEST_HEADERS)
        return false;
    char *line = req->headers[req->header_count];
    int n = snprintf(line, STRIPE_HEADER_LINE_MAX, "%s: %s", name, value);
    if (n < 0 || n >= STRIPE_HEADER_LINE_MAX)
        return false;
    req->header_count++;
    return true;
}

bool stripe_request_build(const stripe_account *account, const stripe_usage *usage,
                          stripe_request *req, char *err, size_t err_size)
{
    char quantity[32], timestamp[32], key[STRIPE_IDEMPOTENCY_KEY_MAX + 1];
    snprintf(quantity, sizeof quantity, "%lld", (long long)usage->quantity);
    snprintf(timestamp, sizeof timestamp, "%lld", (long long)usage->timestamp);
    req->method = "POST";
    req->url[0] = '\0';
    req->header_count = 0;
    buf_reset(&req->body);
    bool meter_events = usage->mode == STRIPE_MODE_METER_EVENTS;
    if (!(meter_events ? meter_event_call(account, usage, req, quantity, timestamp)
                       : usage_record_call(account, usage, req, quantity, timestamp))) {
        snprintf(err, err_size, "the URL or the form body is too long (or out of memory)");
        return false;
    }
    if (!stripe_idempotency_key(usage->identifier, usage->generation, key, sizeof key)) {
        snprintf(err, err_size, "the idempotency key would pass %d characters",
                 STRIPE_IDEMPOTENCY_KEY_MAX);
        return false;
    }
    const char *version = account->api_version[0] ? account->api_version
                          : meter_events          ? ""
                                                  : STRIPE_USAGE_RECORDS_VERSION;
    if (!add_header(req, "Content-Type", "application/x-www-form-urlencoded") ||
        !add_header(req, "Idempotency-Key", key) ||
        (version[0] && !add_header(req, "Stripe-Version", version))) {
        snprintf(err, err_size, "a header is too long");
        return false;
    }
    return true;
}

/* ---- answers ------------------------------------------------------------- */

void stripe_answer_init(stripe_answer *answer)
{
    memset(answer, 0, sizeof *answer);
    answer->should_retry = -1;
}

/* Whether `line` is header `name`; its value, blanks and line end trimmed. */
static bool header_is(const char *line, size_t len, const char *name, const char **value,
                      size_t *value_len)
{
    size_t n = strlen(name);
    if (len <= n || strncasecmp(line, name, n) != 0 || line[n] != ':')
        return false;
    const char *v = line + n + 1, *end = line + len;
    while (v < end && (*v == ' ' || *v == '\t'))
        v++;
    while (end > v && (end[-1] == '\r' || end[-1] == '\n' || end[-1] == ' '))
        end--;
    *value = v;
    *value_len = (size_t)(end - v);
    return true;
}

static bool is_true(const char *value, size_t len)
{
    return len == 4 && strncasecmp(value, "true", 4) == 0;
}

void stripe_answer_header(stripe_answer *answer, const char *line, size_t len)
{
    const char *v;
    size_t vlen;
    if (header_is(line, len, "Stripe-Should-Retry", &v, &vlen))
        answer->should_retry = is_true(v, vlen) ? 1 : 0;
    else if (header_is(line, len, "Idempotent-Replayed", &v, &vlen))
        answer->replayed = is_true(v, vlen);
}

/* Copies a JSON string into `out`, cut where it stops fitting (on a UTF-8
 * boundary: the database refuses invalid UTF-8, and Stripe's messages are
 * not ASCII-only); "" when `value` is not a string. */
static void copy_text(char *out, size_t size, const json_t *value)
{
    const char *text = json_string_value(value);
    snprintf(out, size, "%s", text ? text : "");
    out[utf8_valid_prefix(out, strlen(out))] = '\0';
}

/* The body's {"error":{"type","code","message"}}; anything else leaves the
 * fields empty. */
static void read_error_body(const stripe_answer *answer, stripe_verdict *out)
{
    out->type[0] = out->code[0] = out->message[0] = '\0';
    if (answer->body == NULL || answer->body_len == 0)
        return;
    json_t *doc = json_loadb(answer->body, answer->body_len, 0, NULL);
    const json_t *error = json_object_get(doc, "error");
    copy_text(out->type, sizeof out->type, json_object_get(error, "type"));
    copy_text(out->code, sizeof out->code, json_object_get(error, "code"));
    copy_text(out->message, sizeof out->message, json_object_get(error, "message"));
    json_decref(doc);
}

/* The message Stripe answers a repeated meter-event identifier with. */
static const char duplicate_prefix[] = "An event already exists with identifier";

/* docs/STRIPE.md §4's table, first match wins. */
static stripe_outcome outcome_of(stripe_mode mode, const stripe_answer *a, int replayed_failures,
                                 const stripe_verdict *e)
{
    long s = a->http_status;
    if (s == 0)
        return STRIPE_RETRY; /* may have been processed: same key, same identifier */
    if (s >= 200 && s < 300)
        return STRIPE_ACCEPTED;
    if (mode == STRIPE_MODE_METER_EVENTS && s == 400 &&
        strncmp(e->message, duplicate_prefix, sizeof duplicate_prefix - 1) == 0)
        return STRIPE_DUPLICATE;
    if (s == 401 || s == 403)
        return STRIPE_AUTH_FAILED; /* a key problem, not this report's */
    if (s == 429 && a->should_retry != 0)
        return STRIPE_RATE_LIMITED;
    /* A saved failure replayed again and again never changes: break the loop
     * (meter events: new key, same identifier; usage records: park). */
    if (s >= 500 && a->replayed && replayed_failures >= STRIPE_REPLAYED_FAILURES_MAX)
        return mode == STRIPE_MODE_METER_EVENTS ? STRIPE_NEW_KEY : STRIPE_PARK;
    if (a->should_retry == 1)
        return STRIPE_RETRY;
    if (a->should_retry == 0)
        return STRIPE_PARK;
    if (s == 409 || s >= 500)
        return STRIPE_RETRY;
    if (s == 400 && strcmp(e->type, "idempotency_error") == 0)
        return mode == STRIPE_MODE_METER_EVENTS ? STRIPE_NEW_KEY : STRIPE_PARK;
    return STRIPE_PARK;
}

void stripe_classify(stripe_mode mode, const stripe_answer *answer, int replayed_failures,
                     stripe_verdict *out)
{
    read_error_body(answer, out);
    /* Only saved failures replayed in a row count: any answer below 500
     * (no answer included) ends the run; a fresh 5xx leaves it as it is. */
    if (answer->http_status >= 500 && answer->replayed)
        replayed_failures++;
    else if (answer->http_status < 500)
        replayed_failures = 0;
    out->replayed_failures = replayed_failures;
    out->outcome = outcome_of(mode, answer, replayed_failures, out);
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
