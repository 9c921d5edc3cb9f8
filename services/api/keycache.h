/* The authorize cache: every key (by the stored form of its secret,
 * keyhash.h) with its
 * plan and the quota counter of the plan's current period, reloaded from
 * PostgreSQL by a background thread every refresh interval (and at once
 * after an admin change in this process); between reloads, the counters
 * of the keys the collector announces changed are read at once. Per-key token buckets and the
 * count of requests this process allowed since the last reload live here
 * too, and survive reloads. One cache per process. */
#ifndef TALLY_API_KEYCACHE_H
#define TALLY_API_KEYCACHE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "apimodel.h"
#include "apiroute.h"
#include "period.h"

typedef struct keycache keycache;

typedef enum {
    AUTHZ_ALLOWED,
    AUTHZ_UNKNOWN_KEY,
    AUTHZ_DISABLED,
    AUTHZ_NO_PLAN,
    AUTHZ_THROTTLED,
    AUTHZ_OVER_QUOTA,
    AUTHZ_NOT_READY, /* no successful load yet */
    AUTHZ__COUNT
} authz_outcome;

typedef struct {
    authz_outcome outcome;
    char key_id[APIROUTE_ID_MAX + 1];
    char customer_id[APIMODEL_CUSTOMER_ID_MAX + 1]; /* "" when the key has none */
    /* X-RateLimit-*: the quota when the plan has one, else the throttle
     * bucket, else all 0 (no limit applies). */
    int64_t limit, remaining, reset_seconds;
    int64_t retry_after_seconds; /* for 429 */
    bool overage; /* allowed past a soft quota's limit (X-Tally-Quota: overage) */
} authz_decision;

/* Converts the keys still stored as a plain SHA-256 (keyhash.h), loads
 * the cache once (false with err when either fails) and starts the reload
 * thread. `url` is borrowed for the process's life. */
keycache *keycache_start(const char *url, long long refresh_ms, char *err, size_t err_size);
/* Stops the thread and frees everything; NULL is fine. */
void keycache_stop(keycache *cache);
/* Decides one gateway request: the key by `hash`, its plan's quota
 * (counter + allowed here since the load; a soft quota refuses only from
 * its ceiling on, and marks what it allows past the limit), then the token bucket (the
 * plan's, or the per-method one matching "<path>/<METHOD>"). Counts an
 * allowed request. `path` may carry a query string; it is ignored. */
void keycache_authorize(const uint8_t hash[32], const char *method, const char *uri,
                        int64_t now, authz_decision *out);

/* A key's quota as the cache loaded it (GET /v1/keys/{id}/quota and
 * GET /v1/me/quota), or as the database gave it. */
typedef struct {
    char key_id[APIROUTE_ID_MAX + 1];
    bool enabled;
    bool has_plan;
    char plan_id[APIROUTE_ID_MAX + 1];
    bool has_quota; /* the plan has one; the fields below are set */
    int64_t quota_limit, quota_offset, quota_set_at;
    period_kind quota_period;
    int64_t used;   /* the counter's units for the current period */
    int64_t quota_adjustment; /* the key's own change of this period's limit (migration 007) */
    int64_t as_of;  /* the counter's updated_at, or the load's time without one */
} keycache_quota_facts;
/* The key is named by `key_id` or, when that is NULL, by `hash` (the
 * stored form of its secret, as authorize finds it). Fills `out` from the cache
 * and returns true, or returns false when the cache cannot answer exactly:
 * not loaded, the key unknown to it, its last load too old (reloads
 * failing) or from an earlier quota period. */
bool keycache_quota(const char *key_id, const uint8_t *hash, int64_t now,
                    keycache_quota_facts *out);
/* A period's limit with a key's adjustment (AWS's UpdateUsage) added,
 * never below 0. */
int64_t keycache_adjusted_limit(int64_t limit, int64_t adjustment);

/* What the cache knows of the key whose stored form is `hash` (for
 * /v1/me/usage, so that only keys it does not know cost a query). */
typedef enum {
    KEYCACHE_KEY_FOUND,   /* key_id and enabled set, as of the last load */
    KEYCACHE_KEY_UNKNOWN, /* not in a load at most a reload interval old */
    KEYCACHE_KEY_UNSURE,  /* no load yet, or the last is too old (reloads failing) */
} keycache_key_answer;
keycache_key_answer keycache_find_key(const uint8_t hash[32], int64_t now, char *key_id,
                                      size_t key_id_size, bool *enabled);

/* Database look-ups of keys the cache does not know (/v1/me/usage and /v1/me/quota: a key
 * created by another process since the last load) are few by nature; a
 * flood of random keys must not turn into a flood of queries. True when
 * one may be made now: a token bucket shared by the process, of
 * KEYCACHE_UNKNOWN_LOOKUP_RATE per second and as many at once. When
 * false, the caller answers from the cache alone (401: the key was not in
 * the last load), and a new key is found by the next reload instead. */
#define KEYCACHE_UNKNOWN_LOOKUP_RATE 10
bool keycache_unknown_lookup_allowed(int64_t now);

#endif
