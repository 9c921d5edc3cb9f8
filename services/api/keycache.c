/* See keycache.h. Concurrency: the snapshot (keys, plans, counters) is
 * swapped under a write lock; requests read it under the read lock. Once
 * published only the counter fields of its keys change (a targeted
 * refresh, refresh_counters), also under the write lock. Per-key mutable state (token buckets, allowed count)
 * is a separate object with its own mutex, moved from the old snapshot to
 * the new one at the swap, so a reload never resets a bucket.
 *
 * Quota accounting: used = max(the counter read from the database + what
 * this process allowed since that read, what this process allowed in the
 * current quota period). The count of allowed requests is marked just
 * before the query, so a request allowed while the query runs is still
 * counted afterwards. Requests allowed here but not yet counted by the
 * collector when the next load reads the counter are not counted twice;
 * the in-period count (kept across reloads, restarted at a rollover or a
 * plan change) keeps them counted even when the collector lags or is down,
 * so one process never lets a key past its quota, and several replicas
 * overshoot by at most what the others allowed and the collector has not
 * yet counted (apimodel_quota_used). */
#include "keycache.h"

#include <jansson.h>
#include <libpq-fe.h>
#include <math.h>
#include <pthread.h>
#include <errno.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "api.h"
#include "apitext.h"
#include "db.h"
#include "digest.h"
#include "hashindex.h"
#include "keyhash.h"
#include "keynotify.h"
#include "leases.h"
#include "log.h"
#include "metrics.h"
#include "period.h"
#include "rollupcols.h"
#include "timeutil.h"
#include "tokenbucket.h"

typedef struct {
    /* The key "/path/METHOD" (or "/path/ *") split, both canonical
     * (apimodel_method_key_split), as the request's are. */
    char path[APIMODEL_METHOD_PATH_MAX + 1];
    char method[APIMODEL_METHOD_PATH_MAX + 1];
    double rate;
    int64_t burst;
} method_throttle;

typedef struct {
    char *id;
    bool has_quota;
    int64_t quota_limit, quota_offset;
    period_kind quota_period;
    bool has_throttle;
    double rate;
    int64_t burst;
    method_throttle *methods;
    size_t method_count;
    int64_t created_at, updated_at;
    int64_t quota_set_at; /* the offset's first period is the one containing it */
    bool quota_soft;      /* allowed past the limit, up to the ceiling */
    int64_t ceiling_percent; /* of the limit in force; 0: no ceiling */
} plan_entry;

/* Per-key state that outlives snapshots. */
typedef struct {
    pthread_mutex_t lock;
    tokenbucket bucket;
    tokenbucket *method_buckets; /* one per method throttle of the plan, or NULL */
    size_t method_bucket_count;
    char plan_signature[APIROUTE_ID_MAX + 24]; /* plan id + updated_at: buckets reset on change */
    _Atomic int64_t allowed_total;             /* requests allowed by this process */
    /* allowed_total when the current snapshot's counters were read (or when
     * the quota period last rolled over), and at the start of the current
     * quota period here (or the last plan change); those periods' starts. */
    apimodel_quota_local local;
    int64_t next_mark;   /* taken by the refresh thread before its query */
} key_state;

typedef struct {
    uint8_t hash[32];
    char *id;
    char *customer_id; /* NULL when the key has none */
    bool enabled;
    int plan; /* index into plans, or -1 */
    int64_t used;         /* counter units of the plan's period at load */
    int64_t used_period;  /* that period's start */
    int64_t used_updated_at; /* the counter's updated_at, or 0 when there was none */
    int64_t quota_adjustment; /* quota_adjustments of used_period (UpdateUsage), or 0 */
    key_state *state;     /* owned by the snapshot that holds it */
} key_entry;

typedef struct {
    key_entry *keys;
    size_t key_count;
    plan_entry *plans;
    size_t plan_count;
    hashindex by_hash; /* keys by the stored form of their secret */
    hashindex by_id;
    int64_t loaded_at;
} snapshot;

struct keycache {
    const char *url;
    long long refresh_ms;
    PGconn *conn;
    pthread_t thread;
    bool thread_started;
    pthread_rwlock_t swap_lock;
    snapshot *current;
    pthread_mutex_t wake_lock;
    pthread_cond_t wake;
    pthread_cond_t served;
    uint64_t requested_seq, served_seq;
    bool stopping;
    /* Keys whose counters the collector announced changed (keynotify.h),
     * for the next targeted refresh; under wake_lock. */
    char **pending_ids;
    size_t pending_count;
    keynotify *listener;
};

static keycache *the_cache;
static metric *m_keys, *m_refreshes, *m_refresh_errors, *m_refresh_seconds, *m_hits, *m_misses;
static metric *m_unknown_queried, *m_unknown_refused, *m_counter_refreshes;

/* keycache_unknown_lookup_allowed's bucket, for the whole process. */
static pthread_mutex_t unknown_lookup_lock = PTHREAD_MUTEX_INITIALIZER;
static tokenbucket unknown_lookups;
static bool unknown_lookups_started;
static metric *m_outcomes[AUTHZ__COUNT];

static const char *const outcome_names[AUTHZ__COUNT] = {
    "allowed", "unknown_key", "disabled", "no_plan", "throttled", "over_quota", "not_ready"};

static void register_metrics(void)
{
    static char labels[AUTHZ__COUNT][40];
    m_keys = metrics_gauge("tally_api_key_cache_keys", "keys in the authorize cache", NULL);
    m_refreshes = metrics_counter("tally_api_key_cache_refreshes_total",
                                  "successful reloads of the authorize cache", NULL);
    m_refresh_errors = metrics_counter("tally_api_key_cache_refresh_errors_total",
                                       "failed reloads (the previous cache stays in use)", NULL);
    m_refresh_seconds = metrics_gauge("tally_api_key_cache_refresh_seconds",
                                      "duration of the last reload", NULL);
    m_counter_refreshes = metrics_counter(
        "tally_api_key_cache_counter_refreshes_total",
        "targeted refreshes of the counters the collector announced changed", NULL);
    m_hits = metrics_counter("tally_api_key_cache_hits_total",
                             "authorize look-ups that found the key in the cache", NULL);
    m_misses = metrics_counter("tally_api_key_cache_misses_total",
                               "authorize look-ups of an unknown key", NULL);
    m_unknown_queried = metrics_counter(
        "tally_api_unknown_key_lookups_total",
        "database look-ups of an x-api-key the cache did not know, by result",
        "result=\"queried\"");
    m_unknown_refused = metrics_counter(
        "tally_api_unknown_key_lookups_total",
        "database look-ups of an x-api-key the cache did not know, by result",
        "result=\"refused\"");
    for (int i = 0; i < AUTHZ__COUNT; i++) {
        snprintf(labels[i], sizeof labels[i], "outcome=\"%s\"", outcome_names[i]);
        m_outcomes[i] = metrics_counter("tally_api_authorize_total",
                                        "authorize decisions by outcome", labels[i]);
    }
}

/* ---- snapshots ---------------------------------------------------------- */

static uint64_t value_hash_slot(const uint8_t hash[32])
{
    uint64_t h;
    memcpy(&h, hash, sizeof h); /* SHA-256 bytes are already uniform */
    return h;
}

static void free_state(key_state *state)
{
    if (state == NULL)
        return;
    pthread_mutex_destroy(&state->lock);
    free(state->method_buckets);
    free(state);
}

static void free_snapshot(snapshot *snap)
{
    if (snap == NULL)
        return;
    for (size_t i = 0; i < snap->key_count; i++) {
        free(snap->keys[i].id);
        free(snap->keys[i].customer_id);
        free_state(snap->keys[i].state);
    }
    for (size_t i = 0; i < snap->plan_count; i++) {
        free(snap->plans[i].id);
        free(snap->plans[i].methods);
    }
    free(snap->keys);
    free(snap->plans);
    hashindex_free(&snap->by_hash);
    hashindex_free(&snap->by_id);
    free(snap);
}

static bool holds_hash(const void *entries, uint32_t index, const void *hash)
{
    const key_entry *keys = entries;
    return memcmp(keys[index].hash, hash, sizeof keys[index].hash) == 0;
}

static bool holds_id(const void *entries, uint32_t index, const void *id)
{
    const key_entry *keys = entries;
    return strcmp(keys[index].id, id) == 0;
}

static uint64_t id_hash(const char *id)
{
    return digest_fnv1a(id, strlen(id));
}

static const key_entry *find_by_hash(const snapshot *snap, const uint8_t hash[32])
{
    if (snap == NULL)
        return NULL;
    long found =
        hashindex_find(&snap->by_hash, value_hash_slot(hash), holds_hash, snap->keys, hash);
    return found >= 0 ? &snap->keys[found] : NULL;
}

static key_entry *find_by_id(snapshot *snap, const char *id)
{
    if (snap == NULL)
        return NULL;
    long found = hashindex_find(&snap->by_id, id_hash(id), holds_id, snap->keys, id);
    return found >= 0 ? &snap->keys[found] : NULL;
}

/* Both indexes are sized for every key of the snapshot, which never
 * grows: the adds cannot find them full. Of two keys with one hash (a
 * duplicate value left in the old form, keyhash.h), the first loaded is
 * the one found, as before the index was shared. */
static bool index_snapshot(snapshot *snap)
{
    if (!hashindex_init(&snap->by_hash, snap->key_count) ||
        !hashindex_init(&snap->by_id, snap->key_count))
        return false;
    for (size_t k = 0; k < snap->key_count; k++) {
        const key_entry *key = &snap->keys[k];
        if (!hashindex_add(&snap->by_hash, value_hash_slot(key->hash), (uint32_t)k) ||
            !hashindex_add(&snap->by_id, id_hash(key->id), (uint32_t)k))
            return false;
    }
    return true;
}

static bool parse_method_throttles(const char *text, plan_entry *plan)
{
    json_t *root = json_loads(text ? text : "{}", 0, NULL);
    if (root == NULL || !json_is_object(root)) {
        json_decref(root);
        return true; /* a malformed column (written by hand) means no overrides */
    }
    size_t count = json_object_size(root);
    plan->methods = count ? calloc(count, sizeof *plan->methods) : NULL;
    if (count && plan->methods == NULL) {
        json_decref(root);
        return false;
    }
    const char *pattern;
    json_t *value;
    json_object_foreach(root, pattern, value) {
        json_t *rate = json_object_get(value, "rateLimit");
        json_t *burst = json_object_get(value, "burstLimit");
        if (!json_is_number(rate) || !json_is_integer(burst))
            continue;
        method_throttle *m = &plan->methods[plan->method_count];
        /* Rows written before keys were stored canonical are made so here. */
        if (!apimodel_method_key_split(pattern, m->path, m->method))
            continue;
        plan->method_count++;
        m->rate = json_number_value(rate);
        m->burst = json_integer_value(burst);
    }
    json_decref(root);
    return true;
}

/* A key's plan, and its counter and quota adjustment of the plan's current
 * period, given the current day's, week's and month's starts as $1..$3:
 * the full load and the targeted refresh read them alike. */
#define KEY_COUNTER_JOINS                                                              \
    "LEFT JOIN plans p ON p.id = k.plan_id "                                           \
    "LEFT JOIN usage_counters c ON c.key_id = k.id "                                   \
    "AND c.period = p.quota_period AND c.period_start = "                              \
    "CASE p.quota_period WHEN 'DAY' THEN $1::timestamptz "                             \
    "WHEN 'WEEK' THEN $2::timestamptz ELSE $3::timestamptz END "                       \
    /* The key's own quota change for the same period (AWS's UpdateUsage,              \
     * migration 007). */                                                              \
    "LEFT JOIN quota_adjustments a ON a.key_id = k.id "                                \
    "AND a.period = p.quota_period AND a.period_start = "                              \
    "CASE p.quota_period WHEN 'DAY' THEN $1::timestamptz "                             \
    "WHEN 'WEEK' THEN $2::timestamptz ELSE $3::timestamptz END "

/* The current periods' starts at `now`, as microseconds and as text. */
typedef struct {
    int64_t at[PERIOD_KIND_COUNT];
    char text[PERIOD_KIND_COUNT][TIME_RFC3339_LEN];
} period_starts;

static void current_period_starts(int64_t now, period_starts *out)
{
    for (int k = 0; k < PERIOD_KIND_COUNT; k++) {
        out->at[k] = period_start((period_kind)k, now);
        time_format_rfc3339(out->at[k], out->text[k], sizeof out->text[k]);
    }
}

/* The cache's own connection, (re)connected when lost. */
static bool ensure_connected(keycache *cache, char *err, size_t err_size)
{
    if (cache->conn != NULL && PQstatus(cache->conn) == CONNECTION_OK)
        return true;
    if (cache->conn)
        PQfinish(cache->conn);
    cache->conn = db_connect(cache->url, "tally-api-keycache", err, err_size);
    return cache->conn != NULL;
}

/* Reads keys, plans and current counters in one read-only snapshot. */
static snapshot *load(keycache *cache, int64_t now, char *err, size_t err_size)
{
    snapshot *snap = calloc(1, sizeof *snap);
    PGresult *plans = NULL, *keys = NULL;
    if (snap == NULL) {
        snprintf(err, err_size, "out of memory");
        return NULL;
    }
    snap->loaded_at = now;
    if (!ensure_connected(cache, err, err_size))
        goto fail;
    if (!db_exec(cache->conn, "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY",
                 "starting the key cache load", err, err_size))
        goto fail;
    plans = PQexec(cache->conn,
                   "SELECT id, quota_limit, quota_period, quota_offset, throttle_rate_limit, "
                   "throttle_burst_limit, method_throttles::text, "
                   "(extract(epoch from created_at) * 1000000)::bigint, "
                   "(extract(epoch from updated_at) * 1000000)::bigint, "
                   "(extract(epoch from quota_set_at) * 1000000)::bigint, "
                   "quota_enforcement = 'soft', coalesce(quota_ceiling_percent, 0) FROM plans");
    if (!api_ok(plans)) {
        db_error(cache->conn, plans, "loading plans", err, err_size);
        goto fail;
    }
    period_starts starts;
    current_period_starts(now, &starts);
    const int64_t *start_at = starts.at;
    const char *params[] = {starts.text[PERIOD_DAY], starts.text[PERIOD_WEEK],
                            starts.text[PERIOD_MONTH]};
    keys = PQexecParams(cache->conn,
                        "SELECT k.id, encode(k.value_hash, 'hex'), k.enabled, k.plan_id, "
                        "coalesce(c.units, 0), "
                        "(extract(epoch from c.updated_at) * 1000000)::bigint, "
                        "k.value_hash_form, coalesce(a.adjustment, 0), k.customer_id FROM api_keys k "
                        KEY_COUNTER_JOINS
                        /* One value stored in both forms (a legacy row written by
                         * hand): the same key wins at every reload. */
                        "ORDER BY k.value_hash_form = 'hmac-sha256' DESC, k.id",
                        3, NULL, params, NULL, NULL, 0);
    if (!api_ok(keys)) {
        db_error(cache->conn, keys, "loading keys", err, err_size);
        goto fail;
    }
    if (!db_exec(cache->conn, "COMMIT", "ending the key cache load", err, err_size))
        goto fail;

    int plan_rows = PQntuples(plans);
    snap->plans = calloc((size_t)plan_rows + 1, sizeof *snap->plans);
    if (snap->plans == NULL)
        goto oom;
    for (int r = 0; r < plan_rows; r++) {
        plan_entry *p = &snap->plans[snap->plan_count++];
        p->id = strdup(PQgetvalue(plans, r, 0));
        if (p->id == NULL)
            goto oom;
        p->has_quota = api_field(plans, r, 1) != NULL &&
                       period_parse(PQgetvalue(plans, r, 2), &p->quota_period);
        p->quota_limit = api_field_int(plans, r, 1);
        p->quota_offset = api_field_int(plans, r, 3);
        p->has_throttle = api_field(plans, r, 4) != NULL && api_field(plans, r, 5) != NULL;
        p->rate = p->has_throttle ? strtod(PQgetvalue(plans, r, 4), NULL) : 0;
        p->burst = api_field_int(plans, r, 5);
        p->created_at = api_field_int(plans, r, 7);
        p->updated_at = api_field_int(plans, r, 8);
        p->quota_set_at = api_field_int(plans, r, 9);
        p->quota_soft = strcmp(PQgetvalue(plans, r, 10), "t") == 0;
        p->ceiling_percent = api_field_int(plans, r, 11);
        if (!parse_method_throttles(api_field(plans, r, 6), p))
            goto oom;
    }
    int key_rows = PQntuples(keys);
    snap->keys = calloc((size_t)key_rows + 1, sizeof *snap->keys);
    if (snap->keys == NULL)
        goto oom;
    for (int r = 0; r < key_rows; r++) {
        key_entry *k = &snap->keys[snap->key_count];
        if (!digest_from_hex(PQgetvalue(keys, r, 1), k->hash, sizeof k->hash))
            continue;
        if (strcmp(PQgetvalue(keys, r, 6), "sha256") == 0) {
            /* A row written in the old form since the start's conversion
             * (by hand, an old seeding script): read as if converted. */
            uint8_t legacy[32];
            memcpy(legacy, k->hash, sizeof legacy);
            keyhash_of_legacy(legacy, k->hash);
        }
        k->id = strdup(PQgetvalue(keys, r, 0));
        if (k->id == NULL)
            goto oom;
        snap->key_count++;
        const char *customer_id = api_field(keys, r, 8);
        if (customer_id != NULL && (k->customer_id = strdup(customer_id)) == NULL)
            goto oom;
        k->enabled = strcmp(PQgetvalue(keys, r, 2), "t") == 0;
        k->plan = -1;
        const char *plan_id = api_field(keys, r, 3);
        for (size_t p = 0; plan_id != NULL && p < snap->plan_count; p++) {
            if (strcmp(snap->plans[p].id, plan_id) == 0) {
                k->plan = (int)p;
                break;
            }
        }
        k->used = api_field_int(keys, r, 4);
        k->used_updated_at = api_field(keys, r, 5) != NULL ? api_field_int(keys, r, 5) : 0;
        k->quota_adjustment = api_field_int(keys, r, 7);
        k->used_period = k->plan >= 0 && snap->plans[k->plan].has_quota
                             ? start_at[snap->plans[k->plan].quota_period]
                             : 0;
    }
    if (!index_snapshot(snap))
        goto oom;
    PQclear(plans);
    PQclear(keys);
    return snap;
oom:
    snprintf(err, err_size, "out of memory loading the key cache");
fail:
    PQclear(plans);
    PQclear(keys);
    if (cache->conn && PQtransactionStatus(cache->conn) != PQTRANS_IDLE) {
        PGresult *res = PQexec(cache->conn, "ROLLBACK");
        PQclear(res);
    }
    free_snapshot(snap);
    return NULL;
}

/* The state a key's plan gives: "<plan id>@<updated_at>" ("" without one). */
static void plan_signature(const plan_entry *plan, char *out, size_t size)
{
    snprintf(out, size, "%.128s@%lld", plan ? plan->id : "",
             plan ? (long long)plan->updated_at : 0LL);
}

/* Gives each key of `next` its state: moved from `prev` when the key was
 * there (buckets kept; method buckets reset when the plan changed), new
 * otherwise. Runs under the write lock: no request is inside either.
 * Everything that can fail (allocation) is done first; states move from
 * `prev` only once nothing else can fail, so on false `prev` is untouched
 * and stays usable. */
static bool carry_states(snapshot *prev, snapshot *next, int64_t now)
{
    size_t n = next->key_count;
    key_state **fresh = n ? calloc(n, sizeof *fresh) : NULL;         /* new states */
    tokenbucket **buckets = n ? calloc(n, sizeof *buckets) : NULL;   /* new method buckets */
    key_entry **olds = n ? calloc(n, sizeof *olds) : NULL;
    bool ok = n == 0 || (fresh && buckets && olds);
    /* Phase 1: find the old states and allocate what is missing. */
    for (size_t i = 0; ok && i < n; i++) {
        key_entry *k = &next->keys[i];
        olds[i] = find_by_id(prev, k->id);
        key_state *state = olds[i] ? olds[i]->state : NULL;
        const plan_entry *plan = k->plan >= 0 ? &next->plans[k->plan] : NULL;
        if (state == NULL) {
            fresh[i] = calloc(1, sizeof *fresh[i]);
            if (fresh[i] == NULL) {
                ok = false;
                break;
            }
            pthread_mutex_init(&fresh[i]->lock, NULL);
        }
        char signature[sizeof fresh[0]->plan_signature];
        plan_signature(plan, signature, sizeof signature);
        bool changed = state == NULL || strcmp(signature, state->plan_signature) != 0;
        if (changed && plan && plan->method_count) {
            buckets[i] = calloc(plan->method_count, sizeof *buckets[i]);
            if (buckets[i] == NULL)
                ok = false;
        }
    }
    if (!ok) {
        for (size_t i = 0; fresh && buckets && i < n; i++) {
            if (fresh[i]) {
                pthread_mutex_destroy(&fresh[i]->lock);
                free(fresh[i]);
            }
            free(buckets[i]);
        }
        free(fresh);
        free(buckets);
        free(olds);
        return false;
    }
    /* Phase 2: nothing below fails. */
    for (size_t i = 0; i < n; i++) {
        key_entry *k = &next->keys[i];
        const plan_entry *plan = k->plan >= 0 ? &next->plans[k->plan] : NULL;
        key_state *state;
        char signature[sizeof fresh[0]->plan_signature];
        plan_signature(plan, signature, sizeof signature);
        if (fresh[i]) {
            state = fresh[i];
            tokenbucket_init(&state->bucket, plan && plan->has_throttle ? plan->burst : 0, now);
            apimodel_quota_local_reload(&state->local, 0, k->used_period, true);
        } else {
            state = olds[i]->state;
            olds[i]->state = NULL;
            apimodel_quota_local_reload(&state->local, state->next_mark, k->used_period,
                                        strcmp(signature, state->plan_signature) != 0);
        }
        k->state = state;
        if (strcmp(signature, state->plan_signature) != 0) {
            /* A new or changed plan: full buckets at the new limits. */
            memcpy(state->plan_signature, signature, sizeof signature);
            tokenbucket_init(&state->bucket, plan && plan->has_throttle ? plan->burst : 0, now);
            free(state->method_buckets);
            state->method_buckets = buckets[i];
            state->method_bucket_count = buckets[i] ? plan->method_count : 0;
            for (size_t m = 0; m < state->method_bucket_count; m++)
                tokenbucket_init(&state->method_buckets[m], plan->methods[m].burst, now);
        }
    }
    free(fresh);
    free(buckets);
    free(olds);
    return true;
}

static bool refresh(keycache *cache, char *err, size_t err_size)
{
    int64_t started = time_now_usec();
    /* Mark the allowed counts before the query (see the top comment). Only
     * this thread changes `current`, so it may walk it without the lock. */
    snapshot *prev = cache->current;
    for (size_t i = 0; prev && i < prev->key_count; i++) {
        key_state *s = prev->keys[i].state;
        if (s)
            s->next_mark = atomic_load_explicit(&s->allowed_total, memory_order_relaxed);
    }
    snapshot *next = load(cache, started, err, err_size);
    if (next == NULL)
        return false;
    pthread_rwlock_wrlock(&cache->swap_lock);
    bool ok = carry_states(prev, next, time_now_usec());
    if (ok)
        cache->current = next;
    pthread_rwlock_unlock(&cache->swap_lock);
    if (!ok) {
        free_snapshot(next); /* no state moved into it: prev keeps them all */
        snprintf(err, err_size, "out of memory building the key cache");
        return false;
    }
    free_snapshot(prev);
    metrics_set(m_keys, (double)next->key_count);
    metrics_set(m_refresh_seconds, (double)(time_now_usec() - started) / 1e6);
    metrics_add(m_refreshes, 1);
    return true;
}

/* ---- targeted refreshes (the collector's change notices) -------------- */

/* Asks the thread for a full reload without waiting for it. */
static void request_full_reload(keycache *cache)
{
    pthread_mutex_lock(&cache->wake_lock);
    cache->requested_seq++;
    pthread_cond_signal(&cache->wake);
    pthread_mutex_unlock(&cache->wake_lock);
}

static void free_ids(char **ids, size_t count)
{
    for (size_t i = 0; i < count; i++)
        free(ids[i]);
    free(ids);
}

/* Announced keys waiting beyond this many: a full reload instead. */
#define KEYCACHE_PENDING_MAX 10000

/* Queues one announced key id for the next targeted refresh; false when
 * the queue is full or memory is short (the caller asks for a full
 * reload instead). Under wake_lock. */
static bool queue_pending_id(keycache *cache, const char *id, size_t len)
{
    if (cache->pending_count == KEYCACHE_PENDING_MAX)
        return false;
    if (cache->pending_ids == NULL) {
        cache->pending_ids = calloc(KEYCACHE_PENDING_MAX, sizeof *cache->pending_ids);
        if (cache->pending_ids == NULL)
            return false;
    }
    char *copy = strndup(id, len);
    if (copy == NULL)
        return false;
    cache->pending_ids[cache->pending_count++] = copy;
    return true;
}

/* The collector's notice (keynotify.h, rollupcols.h): `payload` is
 * comma-separated key ids, or "*" for every key. More than
 * KEYCACHE_PENDING_MAX keys waiting at once turn into a full reload. Works
 * before the refresh thread starts: what is queued then waits for it. */
static void on_counters_changed(void *context, const char *payload)
{
    keycache *cache = context;
    if (payload == NULL)
        return;
    pthread_mutex_lock(&cache->wake_lock);
    bool whole = strcmp(payload, "*") == 0;
    for (const char *id = payload; !whole && *id != '\0';) {
        size_t len = strcspn(id, ",");
        /* An id no key can have is skipped (ids are 1..APIROUTE_ID_MAX). */
        if (len > 0 && len <= APIROUTE_ID_MAX && !queue_pending_id(cache, id, len))
            whole = true;
        id += len + (id[len] == ',');
    }
    if (whole) {
        /* Too many keys at once, or "*": a full reload reads them all. */
        free_ids(cache->pending_ids, cache->pending_count);
        cache->pending_ids = NULL;
        cache->pending_count = 0;
        cache->requested_seq++;
    }
    pthread_cond_signal(&cache->wake);
    pthread_mutex_unlock(&cache->wake_lock);
}

/* Notices may have been missed (the listening connection was down). */
static void on_notices_lost(void *context)
{
    request_full_reload(context);
}

/* Takes each named key's counter into `snap` (the current one), under the
 * write lock, as a full reload would have read it. False when a row does
 * not match what the snapshot holds (a new key, another plan or period):
 * only a full reload can take that. */
static bool apply_counters(keycache *cache, snapshot *snap, PGresult *rows,
                           const period_starts *starts)
{
    bool matched = true;
    pthread_rwlock_wrlock(&cache->swap_lock);
    for (int r = 0; r < PQntuples(rows); r++) {
        key_entry *k = find_by_id(snap, PQgetvalue(rows, r, 0));
        const char *plan_id = api_field(rows, r, 1);
        const plan_entry *plan = k != NULL && k->plan >= 0 ? &snap->plans[k->plan] : NULL;
        period_kind period;
        bool same_plan = k != NULL && (plan == NULL ? plan_id == NULL
                                                    : plan_id != NULL && strcmp(plan->id, plan_id) == 0);
        if (!same_plan || (plan != NULL && plan->has_quota &&
                           (!period_parse(PQgetvalue(rows, r, 2), &period) ||
                            period != plan->quota_period))) {
            matched = false;
            continue;
        }
        if (plan == NULL || !plan->has_quota || k->state == NULL)
            continue; /* no counter to keep */
        k->used = api_field_int(rows, r, 3);
        k->used_updated_at = api_field(rows, r, 4) != NULL ? api_field_int(rows, r, 4) : 0;
        k->quota_adjustment = api_field_int(rows, r, 5);
        k->used_period = starts->at[period];
        apimodel_quota_local_reload(&k->state->local, k->state->next_mark, k->used_period, false);
    }
    pthread_rwlock_unlock(&cache->swap_lock);
    return matched;
}

/* Reads the counters of the `count` named keys (borrowed) and takes them
 * into the current snapshot. Keys, plans and everything else stay as the
 * last full reload read them; a key the snapshot does not hold, or holds
 * with another plan, asks for a full reload. Only the refresh thread calls
 * this, so `current` stays put meanwhile. */
static bool refresh_counters(keycache *cache, char *const *ids, size_t count, char *err,
                             size_t err_size)
{
    snapshot *snap = cache->current;
    if (snap == NULL || count == 0)
        return true;
    int64_t started = time_now_usec();
    /* Mark the allowed counts before the query, as refresh does. */
    for (size_t i = 0; i < count; i++) {
        key_entry *k = find_by_id(snap, ids[i]);
        if (k != NULL && k->state != NULL)
            k->state->next_mark =
                atomic_load_explicit(&k->state->allowed_total, memory_order_relaxed);
    }
    buf array;
    buf_init(&array, (size_t)KEYCACHE_PENDING_MAX * (2 * APIROUTE_ID_MAX + 4) + 16);
    if (!db_append_text_array(&array, (const char *const *)ids, count)) {
        buf_free(&array);
        snprintf(err, err_size, "refreshing counters: too many keys");
        return false;
    }
    if (!ensure_connected(cache, err, err_size)) {
        buf_free(&array);
        return false;
    }
    period_starts starts;
    current_period_starts(started, &starts);
    const char *params[] = {starts.text[PERIOD_DAY], starts.text[PERIOD_WEEK],
                            starts.text[PERIOD_MONTH], array.data};
    PGresult *rows = PQexecParams(
        cache->conn,
        "SELECT k.id, k.plan_id, p.quota_period, coalesce(c.units, 0), "
        "(extract(epoch from c.updated_at) * 1000000)::bigint, coalesce(a.adjustment, 0) "
        "FROM api_keys k " KEY_COUNTER_JOINS "WHERE k.id = ANY ($4::text[])",
        4, NULL, params, NULL, NULL, 0);
    buf_free(&array);
    if (!api_ok(rows)) {
        db_error(cache->conn, rows, "refreshing counters", err, err_size);
        PQclear(rows);
        return false;
    }
    if (!apply_counters(cache, snap, rows, &starts))
        request_full_reload(cache);
    PQclear(rows);
    metrics_add(m_counter_refreshes, 1);
    return true;
}

/* Logs a failed reload or refresh, at most every 10 s (not once a second
 * for hours). */
static void log_refresh_failure(const char *what, const char *err, int64_t *last_log)
{
    metrics_add(m_refresh_errors, 1);
    int64_t now = time_now_usec();
    if (now - *last_log > 10 * USEC_PER_SEC) {
        log_warn("%s failed (the previous cache stays in use): %s", what, err);
        *last_log = now;
    }
}

static struct timespec deadline_after_ms(long long ms)
{
    struct timespec at;
    clock_gettime(CLOCK_REALTIME, &at);
    long long ns = at.tv_nsec + (ms % 1000) * 1000000LL;
    at.tv_sec += (time_t)(ms / 1000 + ns / 1000000000LL);
    at.tv_nsec = (long)(ns % 1000000000LL);
    return at;
}

static bool deadline_passed(const struct timespec *at)
{
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    return now.tv_sec > at->tv_sec || (now.tv_sec == at->tv_sec && now.tv_nsec >= at->tv_nsec);
}

/* Full reloads every refresh interval and on request (keycache_refresh_now,
 * a lost or oversized notice); targeted refreshes of announced keys in
 * between, at once. A full reload also covers every key pending then. */
static void *refresh_thread(void *arg)
{
    keycache *cache = arg;
    int64_t last_error_log = 0;
    struct timespec next_full = deadline_after_ms(cache->refresh_ms);
    pthread_mutex_lock(&cache->wake_lock);
    while (!cache->stopping) {
        bool asked = cache->requested_seq != cache->served_seq;
        if (!asked && cache->pending_count == 0) {
            int waited = pthread_cond_timedwait(&cache->wake, &cache->wake_lock, &next_full);
            if (cache->stopping)
                break;
            if (waited != ETIMEDOUT && !deadline_passed(&next_full))
                continue; /* woken: see what for */
        }
        char **ids = cache->pending_ids;
        size_t count = cache->pending_count;
        cache->pending_ids = NULL;
        cache->pending_count = 0;
        bool full = cache->requested_seq != cache->served_seq || deadline_passed(&next_full);
        uint64_t serving = cache->requested_seq;
        pthread_mutex_unlock(&cache->wake_lock);
        char err[512];
        if (full) {
            if (!refresh(cache, err, sizeof err))
                log_refresh_failure("key cache reload", err, &last_error_log);
            next_full = deadline_after_ms(cache->refresh_ms);
        } else if (!refresh_counters(cache, ids, count, err, sizeof err)) {
            log_refresh_failure("counter refresh", err, &last_error_log);
        }
        free_ids(ids, count);
        pthread_mutex_lock(&cache->wake_lock);
        if (full) {
            cache->served_seq = serving;
            pthread_cond_broadcast(&cache->served);
        }
    }
    pthread_mutex_unlock(&cache->wake_lock);
    return NULL;
}

/* Converts the rows still stored as SHA-256 on the cache's connection,
 * before the first load (keyhash_convert_legacy). */
static bool convert_legacy_hashes(keycache *cache, char *err, size_t err_size)
{
    cache->conn = db_connect(cache->url, "tally-api-keycache", err, err_size);
    if (cache->conn == NULL)
        return false;
    long converted = 0, duplicates = 0;
    if (!keyhash_convert_legacy(cache->conn, &converted, &duplicates, err, err_size))
        return false;
    if (converted > 0)
        log_info("converted %ld key hashes from SHA-256 to HMAC-SHA-256", converted);
    if (duplicates > 0)
        log_warn("%ld keys stored as SHA-256 have the value of another key and were left so "
                 "(SELECT id FROM api_keys WHERE value_hash_form = 'sha256')",
                 duplicates);
    return true;
}

keycache *keycache_start(const char *url, long long refresh_ms, char *err, size_t err_size)
{
    keycache *cache = calloc(1, sizeof *cache);
    if (cache == NULL) {
        snprintf(err, err_size, "out of memory");
        return NULL;
    }
    cache->url = url;
    cache->refresh_ms = refresh_ms;
    pthread_rwlock_init(&cache->swap_lock, NULL);
    pthread_mutex_init(&cache->wake_lock, NULL);
    pthread_cond_init(&cache->wake, NULL);
    pthread_cond_init(&cache->served, NULL);
    register_metrics();
    if (!convert_legacy_hashes(cache, err, err_size)) {
        keycache_stop(cache);
        return NULL;
    }
    /* Listening before the first load: no change committed after the load
     * read goes unheard. */
    cache->listener = keynotify_start(
        url, ROLLUP_COUNTERS_CHANNEL,
        (keynotify_handler){on_counters_changed, on_notices_lost, cache});
    if (!refresh(cache, err, err_size) ||
        pthread_create(&cache->thread, NULL, refresh_thread, cache) != 0) {
        if (err[0] == '\0')
            snprintf(err, err_size, "cannot start the key cache thread");
        keycache_stop(cache);
        return NULL;
    }
    cache->thread_started = true;
    the_cache = cache;
    return cache;
}

void keycache_stop(keycache *cache)
{
    if (cache == NULL)
        return;
    keynotify_stop(cache->listener); /* first: it calls into the cache */
    if (cache->thread_started) {
        pthread_mutex_lock(&cache->wake_lock);
        cache->stopping = true;
        pthread_cond_broadcast(&cache->wake);
        pthread_cond_broadcast(&cache->served);
        pthread_mutex_unlock(&cache->wake_lock);
        pthread_join(cache->thread, NULL);
    }
    if (the_cache == cache)
        the_cache = NULL;
    free_snapshot(cache->current);
    free_ids(cache->pending_ids, cache->pending_count);
    if (cache->conn)
        PQfinish(cache->conn);
    pthread_rwlock_destroy(&cache->swap_lock);
    pthread_mutex_destroy(&cache->wake_lock);
    pthread_cond_destroy(&cache->wake);
    pthread_cond_destroy(&cache->served);
    free(cache);
}

void keycache_refresh_now(void)
{
    keycache *cache = the_cache;
    if (cache == NULL)
        return;
    pthread_mutex_lock(&cache->wake_lock);
    uint64_t ticket = ++cache->requested_seq;
    pthread_cond_signal(&cache->wake);
    struct timespec deadline;
    clock_gettime(CLOCK_REALTIME, &deadline);
    deadline.tv_sec += 2;
    while (cache->served_seq < ticket && !cache->stopping) {
        if (pthread_cond_timedwait(&cache->served, &cache->wake_lock, &deadline) != 0)
            break; /* the next periodic reload will pick the change up */
    }
    pthread_mutex_unlock(&cache->wake_lock);
}

/* ---- decisions ---------------------------------------------------------- */

static int64_t ceil_seconds(int64_t usec)
{
    if (usec <= 0)
        return 0;
    /* Not (usec + USEC_PER_SEC - 1) / USEC_PER_SEC: usec may be near INT64_MAX. */
    return usec / USEC_PER_SEC + (usec % USEC_PER_SEC != 0);
}

/* The method throttle for the request's method and X-Original-URI, or -1.
 * Both are compared in their canonical form (apitext.h), as the plan's
 * keys are stored and loaded, so that every spelling of one resource meets
 * the same throttle; the first of two keys with one canonical form (only
 * rows from before canonical keys can have two) wins, and a key naming
 * the method wins over the path's "*". */
static int match_method(const plan_entry *plan, const char *method, const char *uri)
{
    if (plan->method_count == 0 || method == NULL || uri == NULL)
        return -1;
    char verb[APIMODEL_METHOD_PATH_MAX + 1];
    if (apitext_canonical_method(method, strlen(method), verb, sizeof verb) == 0)
        return -1; /* longer than any stored method */
    size_t uri_len = strlen(uri);
    char local[2048];
    size_t size = APITEXT_CANONICAL_SIZE(uri_len);
    /* The whole form is needed even when it ends up short: "/<long>/../x". */
    char *path = size <= sizeof local ? local : malloc(size);
    if (path == NULL)
        return -1;
    int found = -1;
    if (apitext_canonical_path(uri, uri_len, path, size) == 0)
        goto done;
    /* The path's own method first, then its "*": a plan with "/x/GET" and
     * "/x/ *" throttles GET /x by the first, whatever order jsonb keeps. */
    int any_method = -1;
    for (size_t m = 0; m < plan->method_count && found < 0; m++) {
        const char *want = plan->methods[m].method;
        if (strcmp(plan->methods[m].path, path) != 0)
            continue;
        if (strcmp(want, verb) == 0)
            found = (int)m;
        else if (any_method < 0 && strcmp(want, "*") == 0)
            any_method = (int)m;
    }
    if (found < 0)
        found = any_method;
done:
    if (path != local)
        free(path);
    return found;
}

/* Whether a key `used` units into a quota whose limit in force is `limit`
 * (used >= limit) is refused: always with a hard quota; with a soft one
 * only from its ceiling on, if it has one. */
static bool quota_refuses(const plan_entry *plan, int64_t used, int64_t limit)
{
    if (!plan->quota_soft)
        return true;
    return plan->ceiling_percent > 0 &&
           used >= apimodel_percent_units(limit, plan->ceiling_percent);
}

void keycache_authorize(const uint8_t hash[32], const char *method, const char *uri,
                        int64_t now, authz_decision *out)
{
    memset(out, 0, sizeof *out);
    keycache *cache = the_cache;
    if (cache == NULL) {
        out->outcome = AUTHZ_NOT_READY;
        metrics_add(m_outcomes[AUTHZ_NOT_READY], 1);
        return;
    }
    pthread_rwlock_rdlock(&cache->swap_lock);
    const snapshot *snap = cache->current;
    const key_entry *key = find_by_hash(snap, hash);
    if (key == NULL) {
        pthread_rwlock_unlock(&cache->swap_lock);
        out->outcome = AUTHZ_UNKNOWN_KEY;
        metrics_add(m_misses, 1);
        metrics_add(m_outcomes[AUTHZ_UNKNOWN_KEY], 1);
        return;
    }
    metrics_add(m_hits, 1);
    snprintf(out->key_id, sizeof out->key_id, "%s", key->id);
    snprintf(out->customer_id, sizeof out->customer_id, "%s",
             key->customer_id != NULL ? key->customer_id : "");
    const plan_entry *plan = key->plan >= 0 ? &snap->plans[key->plan] : NULL;
    if (!key->enabled || plan == NULL) {
        out->outcome = key->enabled ? AUTHZ_NO_PLAN : AUTHZ_DISABLED;
        goto done;
    }
    key_state *state = key->state;
    pthread_mutex_lock(&state->lock);
    int64_t used = -1, limit = 0, period_end_at = 0;
    if (plan->has_quota) {
        /* Only what was allowed in the current period counts: at a
         * rollover the local counts start afresh, and a counter loaded for
         * an earlier period counts nothing. Never below what this process
         * allowed in the period, however far behind the collector is. */
        int64_t current = period_start(plan->quota_period, now);
        used = apimodel_quota_used(
            &state->local, key->used, key->used_period,
            atomic_load_explicit(&state->allowed_total, memory_order_relaxed), current);
        limit = period_limit(plan->quota_limit, plan->quota_offset, plan->quota_period,
                             plan->quota_set_at, now);
        /* The adjustment belongs to the period it was loaded for. */
        if (key->used_period == current)
            limit = keycache_adjusted_limit(limit, key->quota_adjustment);
        period_end_at = period_end(plan->quota_period, now);
    }
    int m = match_method(plan, method, uri);
    tokenbucket *bucket = m >= 0 && (size_t)m < state->method_bucket_count
                              ? &state->method_buckets[m]
                              : (plan->has_throttle ? &state->bucket : NULL);
    double rate = m >= 0 && bucket != &state->bucket ? plan->methods[m].rate : plan->rate;
    int64_t burst = m >= 0 && bucket != &state->bucket ? plan->methods[m].burst : plan->burst;
    /* Several replicas (leases.h): this one's share of the rate, and a
     * unit of the quota leased from PostgreSQL; with none left to lease
     * the key is past its limit as far as this replica can tell. */
    bool shared = leases_enabled();
    if (shared && bucket != NULL)
        leases_rate_share(rate, burst, leases_live_replicas(), &rate, &burst);
    bool leased = false;
    bool over_limit = plan->has_quota && used >= limit;
    if (plan->has_quota && !over_limit && shared)
        over_limit = !(leased = leases_take(key->id, plan->quota_period,
                                            period_start(plan->quota_period, now), limit, now));
    if (over_limit && quota_refuses(plan, used, limit)) {
        out->outcome = AUTHZ_OVER_QUOTA;
        out->retry_after_seconds = ceil_seconds(period_end_at - now);
    } else if (bucket != NULL && !tokenbucket_take(bucket, rate, burst, now)) {
        if (leased)
            leases_give_back(key->id, period_start(plan->quota_period, now));
        out->outcome = AUTHZ_THROTTLED;
        int64_t wait = tokenbucket_wait_usec(bucket, rate, burst, now);
        out->retry_after_seconds = wait == INT64_MAX ? 60 : ceil_seconds(wait);
        if (out->retry_after_seconds < 1)
            out->retry_after_seconds = 1;
    } else {
        out->outcome = AUTHZ_ALLOWED;
        out->overage = over_limit; /* a soft quota's request past its limit */
        atomic_fetch_add_explicit(&state->allowed_total, 1, memory_order_relaxed);
        if (used >= 0)
            used++;
    }
    if (plan->has_quota) {
        out->limit = limit;
        out->remaining = limit - used > 0 ? limit - used : 0;
        out->reset_seconds = ceil_seconds(period_end_at - now);
    } else if (bucket != NULL) {
        out->limit = burst;
        out->remaining = tokenbucket_available(bucket, rate, burst, now);
        int64_t full = tokenbucket_full_usec(bucket, rate, burst, now);
        out->reset_seconds = full == INT64_MAX ? 0 : ceil_seconds(full);
    }
    pthread_mutex_unlock(&state->lock);
done:
    pthread_rwlock_unlock(&cache->swap_lock);
    metrics_add(m_outcomes[out->outcome], 1);
}

int64_t keycache_adjusted_limit(int64_t limit, int64_t adjustment)
{
    int64_t total;
    if (__builtin_add_overflow(limit, adjustment, &total))
        return adjustment > 0 ? INT64_MAX : 0;
    return total > 0 ? total : 0;
}

bool keycache_quota(const char *key_id, const uint8_t *hash, int64_t now,
                    keycache_quota_facts *out)
{
    memset(out, 0, sizeof *out);
    keycache *cache = the_cache;
    if (cache == NULL || (key_id == NULL && hash == NULL))
        return false;
    bool answered = false;
    pthread_rwlock_rdlock(&cache->swap_lock);
    snapshot *snap = cache->current;
    /* A snapshot older than a reload interval and a second means reloads
     * are failing: the database answers instead (or says it cannot). */
    if (snap == NULL || now - snap->loaded_at > (int64_t)cache->refresh_ms * 1000 + USEC_PER_SEC)
        goto done;
    const key_entry *key = key_id != NULL ? find_by_id(snap, key_id) : find_by_hash(snap, hash);
    if (key == NULL)
        goto done; /* perhaps created since the load (or by another process) */
    snprintf(out->key_id, sizeof out->key_id, "%s", key->id);
    out->enabled = key->enabled;
    const plan_entry *plan = key->plan >= 0 ? &snap->plans[key->plan] : NULL;
    if (plan != NULL && plan->has_quota) {
        if (key->used_period != period_start(plan->quota_period, now))
            goto done; /* loaded in an earlier period: this one's counter is unknown here */
        out->has_quota = true;
        out->quota_limit = plan->quota_limit;
        out->quota_offset = plan->quota_offset;
        out->quota_period = plan->quota_period;
        out->quota_set_at = plan->quota_set_at;
        out->used = key->used;
        out->quota_adjustment = key->quota_adjustment;
    }
    out->has_plan = plan != NULL;
    if (plan != NULL)
        snprintf(out->plan_id, sizeof out->plan_id, "%s", plan->id);
    /* As of the counter's last write; with no counter, nothing was counted
     * as of the load. */
    out->as_of = out->has_quota && key->used_updated_at != 0 ? key->used_updated_at
                                                             : snap->loaded_at;
    answered = true;
done:
    pthread_rwlock_unlock(&cache->swap_lock);
    return answered;
}

keycache_key_answer keycache_find_key(const uint8_t hash[32], int64_t now, char *key_id,
                                      size_t key_id_size, bool *enabled)
{
    keycache *cache = the_cache;
    if (cache == NULL)
        return KEYCACHE_KEY_UNSURE;
    keycache_key_answer answer = KEYCACHE_KEY_UNSURE;
    pthread_rwlock_rdlock(&cache->swap_lock);
    const snapshot *snap = cache->current;
    /* As keycache_quota: an old load means reloads are failing, and a key
     * missing from it may well exist. */
    if (snap != NULL && now - snap->loaded_at <= (int64_t)cache->refresh_ms * 1000 + USEC_PER_SEC) {
        const key_entry *key = find_by_hash(snap, hash);
        answer = key != NULL ? KEYCACHE_KEY_FOUND : KEYCACHE_KEY_UNKNOWN;
        if (key != NULL) {
            snprintf(key_id, key_id_size, "%s", key->id);
            *enabled = key->enabled;
        }
    }
    pthread_rwlock_unlock(&cache->swap_lock);
    return answer;
}

bool keycache_unknown_lookup_allowed(int64_t now)
{
    pthread_mutex_lock(&unknown_lookup_lock);
    if (!unknown_lookups_started) {
        tokenbucket_init(&unknown_lookups, KEYCACHE_UNKNOWN_LOOKUP_RATE, now);
        unknown_lookups_started = true;
    }
    bool allowed = tokenbucket_take(&unknown_lookups, KEYCACHE_UNKNOWN_LOOKUP_RATE,
                                    KEYCACHE_UNKNOWN_LOOKUP_RATE, now);
    pthread_mutex_unlock(&unknown_lookup_lock);
    metrics_add(allowed ? m_unknown_queried : m_unknown_refused, 1);
    return allowed;
}
