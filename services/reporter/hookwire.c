/* The webhook wire format: body, signature, retry schedule, answers. */
#include "hookwire.h"

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "digest.h"

double hookwire_percent(int64_t used, int64_t limit)
{
    if (limit <= 0)
        return 0;
    return round((double)used * 10000.0 / (double)limit) / 100.0;
}

/* A string member, or JSON null for NULL. */
static json_t *string_or_null(const char *text)
{
    return text ? json_string(text) : json_null();
}

bool hookwire_body(const hookwire_alert *a, char *out, size_t size)
{
    if (!a->event_id || !a->type || !a->key_id || !a->plan_id || !a->period ||
        !a->period_start || !a->period_end || !a->enforcement)
        return false;
    json_t *data = json_object();
    json_object_set_new(data, "keyId", json_string(a->key_id));
    json_object_set_new(data, "customerId", string_or_null(a->customer_id));
    json_object_set_new(data, "planId", json_string(a->plan_id));
    json_object_set_new(data, "period", json_string(a->period));
    json_object_set_new(data, "periodStart", json_string(a->period_start));
    json_object_set_new(data, "periodEnd", json_string(a->period_end));
    json_object_set_new(data, "threshold", json_integer(a->threshold));
    json_object_set_new(data, "used", json_integer(a->used));
    json_object_set_new(data, "limit", json_integer(a->limit));
    json_object_set_new(data, "percent", json_real(hookwire_percent(a->used, a->limit)));
    json_object_set_new(data, "enforcement", json_string(a->enforcement));
    json_t *event = json_object();
    json_object_set_new(event, "id", json_string(a->event_id));
    json_object_set_new(event, "type", json_string(a->type));
    json_object_set_new(event, "created", json_integer(a->created));
    json_object_set_new(event, "data", data);
    /* Fixed member order and real precision: the same alert, the same bytes. */
    size_t len = json_dumpb(event, out, size,
                            JSON_COMPACT | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(12));
    json_decref(event);
    if (len == 0 || len >= size)
        return false;
    out[len] = '\0';
    return true;
}

/* HMAC-SHA256(secret, "<t>.<body>") as hex into hex (65 bytes). */
static void sign_one(const char *secret, const char *t_text, const char *body, size_t body_len,
                     char hex[2 * DIGEST_SHA256_LEN + 1])
{
    digest_hmac_key key;
    digest_hmac_key_init(&key, secret, strlen(secret));
    /* The signed text is t, '.', body: fed to the inner hash in pieces. */
    digest_sha256_ctx inner = key.inner;
    digest_sha256_update(&inner, t_text, strlen(t_text));
    digest_sha256_update(&inner, ".", 1);
    digest_sha256_update(&inner, body, body_len);
    uint8_t inner_hash[DIGEST_SHA256_LEN], mac[DIGEST_SHA256_LEN];
    digest_sha256_final(&inner, inner_hash);
    digest_sha256_ctx outer = key.outer;
    digest_sha256_update(&outer, inner_hash, sizeof inner_hash);
    digest_sha256_final(&outer, mac);
    digest_to_hex(mac, sizeof mac, hex);
    explicit_bzero(&key, sizeof key);
    explicit_bzero(&inner, sizeof inner);
}

bool hookwire_signature(const char *secret, const char *previous_secret, int64_t t,
                        const char *body, size_t body_len, char *out, size_t size)
{
    char t_text[24], hex[2 * DIGEST_SHA256_LEN + 1], previous_hex[2 * DIGEST_SHA256_LEN + 1];
    snprintf(t_text, sizeof t_text, "%lld", (long long)t);
    sign_one(secret, t_text, body, body_len, hex);
    int n;
    if (previous_secret) {
        sign_one(previous_secret, t_text, body, body_len, previous_hex);
        n = snprintf(out, size, "t=%s,v1=%s,v1=%s", t_text, hex, previous_hex);
    } else {
        n = snprintf(out, size, "t=%s,v1=%s", t_text, hex);
    }
    return n > 0 && (size_t)n < size;
}

int64_t hookwire_nominal_delay_ms(const hookwire_schedule *s, int attempt)
{
    int64_t delay = s->base_ms;
    for (int i = 1; i < attempt && delay < s->cap_ms; i++)
        delay *= 2;
    return delay < s->cap_ms ? delay : s->cap_ms;
}

/* The nominal delays of attempts 1..attempt, added (saturating). */
static int64_t spent_ms(const hookwire_schedule *s, int attempt)
{
    int64_t total = 0;
    for (int i = 1; i <= attempt; i++) {
        total += hookwire_nominal_delay_ms(s, i);
        if (total > s->window_ms)
            break; /* past the window: the exact sum no longer matters */
    }
    return total;
}

bool hookwire_next_delay_ms(const hookwire_schedule *s, int attempt, double jitter,
                            int64_t *delay_ms)
{
    if (attempt < 1)
        attempt = 1;
    if (spent_ms(s, attempt) > s->window_ms)
        return false;
    if (jitter < 0 || jitter >= 1)
        jitter = 0.5;
    *delay_ms = (int64_t)((double)hookwire_nominal_delay_ms(s, attempt) * (0.8 + 0.4 * jitter));
    return true;
}

int hookwire_max_attempts(const hookwire_schedule *s)
{
    int attempt = 1;
    while (spent_ms(s, attempt) <= s->window_ms)
        attempt++;
    return attempt;
}

hookwire_outcome hookwire_classify(long http_status)
{
    if (http_status >= 200 && http_status < 300)
        return HOOKWIRE_DELIVERED;
    if (http_status == 410)
        return HOOKWIRE_GONE;
    return HOOKWIRE_RETRY;
}

void hookwire_printable(const char *text, size_t len, size_t max, char *out)
{
    size_t n = len < max ? len : max;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)text[i];
        out[i] = c >= 0x20 && c < 0x7f ? (char)c : '?';
    }
    out[n] = '\0';
}
