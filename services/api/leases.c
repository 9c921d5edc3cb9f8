/* See leases.h. Concurrency: one mutex guards the table of leases and
 * every lease's counts; requests take a unit under it, and wait on
 * `refilled` (at most LEASES_WAIT_MS) for the thread when a lease is
 * empty. Only the lease thread adds nothing and removes leases (a request
 * adds them), so the pointers it collects stay valid while it talks to
 * PostgreSQL without the mutex. */
#include "leases.h"

#include <libpq-fe.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "api.h"
#include "apiroute.h"
#include "db.h"
#include "digest.h"
#include "hashindex.h"
#include "log.h"
#include "metrics.h"
#include "timeutil.h"

/* A lease is asked for again this long after the pool said it was empty
 * (units may come back: a dead replica's, an idle one's, a raised quota). */
#define LEASES_EMPTY_RETRY_USEC (250 * INT64_C(1000))
/* The thread's pace between heartbeats: how soon a lease at half a slice
 * is topped up when no request woke it. */
#define LEASES_TICK_MS 20
/* Leases kept at most (keys x periods with traffic in this process). */
#define LEASES_MAX (1u << 20)
/* A statement on the lease connection never runs longer: a stuck database
 * must make the heartbeat fail (and this replica stop spending) in time. */
#define LEASES_STATEMENT_TIMEOUT "SET statement_timeout = 2000"

typedef struct {
    char key_id[APIROUTE_ID_MAX + 1];
    period_kind period;
    int64_t period_start, period_end;
    int64_t limit;        /* as the last request saw it (adjusted) */
    int64_t holding;      /* granted here and not spent */
    int64_t spent;        /* spent here in the period */
    int64_t reported;     /* `spent` as last written to quota_leases */
    int64_t empty_at;     /* when the pool last granted nothing (0: not) */
    int64_t used_at;      /* the last request that took or wanted a unit */
    bool wanted;          /* a request waits for a unit */
    bool release;         /* holding was dropped here: give it back in the table too */
} lease;

static struct {
    pthread_mutex_t lock;
    pthread_cond_t refilled; /* a grant arrived (or the pool is empty) */
    pthread_cond_t wake;     /* a lease needs the thread */
    lease **items;
    size_t count, capacity;
    hashindex index;
    leases_settings settings;
    const char *url;
    PGconn *conn;
    char replica_id[200];
    int64_t alive_until;   /* spend nothing from then on (no heartbeat since) */
    int64_t next_heartbeat;
    int64_t last_heartbeat;
    bool stopping;
    pthread_t thread;
    bool started;
} L = {.lock = PTHREAD_MUTEX_INITIALIZER,
       .refilled = PTHREAD_COND_INITIALIZER,
       .wake = PTHREAD_COND_INITIALIZER};

static _Atomic int64_t live_replicas = 1;
static atomic_bool enabled;
static metric *m_granted, *m_grants_empty, *m_heartbeat_errors, *m_live, *m_refused;

/* ---- arithmetic -------------------------------------------------------- */

int64_t leases_slice(int64_t limit, int64_t lease_max)
{
    int64_t slice = limit / LEASES_SLICE_DIVISOR;
    if (slice < LEASES_SLICE_MIN)
        slice = LEASES_SLICE_MIN;
    if (slice > lease_max)
        slice = lease_max;
    return slice < 1 ? 1 : slice;
}

int64_t leases_refill_want(int64_t holding, int64_t slice)
{
    if (holding < 0)
        holding = 0;
    if (holding * 2 > slice)
        return 0;
    return slice - holding;
}

int64_t leases_topup_want(const leases_topup_state *s)
{
    if (!s->recent || s->release_pending || s->period_over || s->empty_lately)
        return 0;
    return leases_refill_want(s->holding, leases_slice(s->limit, s->lease_max));
}

void leases_rate_share(double rate, int64_t burst, int64_t replicas, double *rate_share,
                       int64_t *burst_share)
{
    if (replicas < 1)
        replicas = 1;
    *rate_share = rate / (double)replicas;
    *burst_share = burst <= 0 ? 0 : burst / replicas + (burst % replicas != 0);
}

/* ---- the table --------------------------------------------------------- */

typedef struct {
    const char *key_id;
    int64_t period_start;
} lease_name;

static uint64_t name_hash(const char *key_id, int64_t period_start)
{
    return digest_fnv1a(key_id, strlen(key_id)) ^ (uint64_t)period_start * 0x9E3779B97F4A7C15u;
}

static bool holds_name(const void *entries, uint32_t index, const void *wanted)
{
    lease *const *items = entries;
    const lease_name *name = wanted;
    return items[index]->period_start == name->period_start &&
           strcmp(items[index]->key_id, name->key_id) == 0;
}

static uint64_t hash_of_item(const void *entries, uint32_t index)
{
    lease *const *items = entries;
    return name_hash(items[index]->key_id, items[index]->period_start);
}

static lease *find_lease(const char *key_id, int64_t period_start)
{
    lease_name name = {key_id, period_start};
    long found = hashindex_find(&L.index, name_hash(key_id, period_start), holds_name, L.items,
                                &name);
    return found >= 0 ? L.items[found] : NULL;
}

/* The key's lease for the period, added empty when missing; NULL when out
 * of memory or LEASES_MAX are held. Under the mutex. */
static lease *find_or_add(const char *key_id, period_kind period, int64_t period_start)
{
    lease *found = find_lease(key_id, period_start);
    if (found != NULL)
        return found;
    if (strlen(key_id) > APIROUTE_ID_MAX || L.count >= LEASES_MAX)
        return NULL;
    if (L.count == L.capacity) {
        size_t capacity = L.capacity ? L.capacity * 2 : 64;
        lease **items = realloc(L.items, capacity * sizeof *items);
        if (items == NULL)
            return NULL;
        L.items = items;
        L.capacity = capacity;
    }
    if (hashindex_full(&L.index) && !hashindex_grow(&L.index, hash_of_item, L.items))
        return NULL;
    lease *fresh = calloc(1, sizeof *fresh);
    if (fresh == NULL)
        return NULL;
    snprintf(fresh->key_id, sizeof fresh->key_id, "%s", key_id);
    fresh->period = period;
    fresh->period_start = period_start;
    fresh->period_end = period_end(period, period_start);
    if (!hashindex_add(&L.index, name_hash(key_id, period_start), (uint32_t)L.count)) {
        free(fresh);
        return NULL;
    }
    L.items[L.count++] = fresh;
    return fresh;
}

/* Drops the leases of periods that ended and were reported. Thread only,
 * under the mutex. */
static void prune_ended(int64_t now)
{
    size_t kept = 0;
    for (size_t i = 0; i < L.count; i++) {
        lease *l = L.items[i];
        if (l->period_end <= now && l->reported == l->spent && !l->wanted && !l->release)
            free(l);
        else
            L.items[kept++] = l;
    }
    if (kept == L.count)
        return;
    L.count = kept;
    hashindex_clear(&L.index);
    for (size_t i = 0; i < L.count; i++) {
        /* Cannot fail: the index held more entries before. */
        if (!hashindex_add(&L.index, hash_of_item(L.items, (uint32_t)i), (uint32_t)i))
            abort();
    }
}

/* ---- requests ---------------------------------------------------------- */

static void deadline_in(struct timespec *at, long long ms)
{
    clock_gettime(CLOCK_REALTIME, at);
    long long ns = at->tv_nsec + (ms % 1000) * 1000000LL;
    at->tv_sec += (time_t)(ms / 1000 + ns / 1000000000LL);
    at->tv_nsec = (long)(ns % 1000000000LL);
}

bool leases_enabled(void)
{
    return atomic_load_explicit(&enabled, memory_order_relaxed);
}

bool leases_take(const char *key_id, period_kind period, int64_t period_start, int64_t limit,
                 int64_t now)
{
    bool taken = false;
    pthread_mutex_lock(&L.lock);
    lease *l = find_or_add(key_id, period, period_start);
    if (l == NULL || now >= L.alive_until)
        goto done; /* cut off from the others: spend nothing they may be given */
    l->limit = limit;
    l->used_at = now;
    struct timespec deadline;
    deadline_in(&deadline, LEASES_WAIT_MS);
    while (l->holding == 0 && !L.stopping) {
        if (l->empty_at != 0 && now - l->empty_at < LEASES_EMPTY_RETRY_USEC)
            break; /* the pool was empty a moment ago: do not wait for it */
        l->wanted = true;
        pthread_cond_signal(&L.wake);
        if (pthread_cond_timedwait(&L.refilled, &L.lock, &deadline) != 0)
            break;
        now = time_now_usec();
        if (now >= L.alive_until)
            goto done;
    }
    if (l->holding > 0) {
        l->holding--;
        l->spent++;
        taken = true;
        if (leases_refill_want(l->holding, leases_slice(l->limit, L.settings.lease_max)) > 0)
            pthread_cond_signal(&L.wake);
    }
done:
    pthread_mutex_unlock(&L.lock);
    if (!taken)
        metrics_add(m_refused, 1);
    return taken;
}

void leases_give_back(const char *key_id, int64_t period_start)
{
    pthread_mutex_lock(&L.lock);
    lease *l = find_lease(key_id, period_start);
    if (l != NULL && l->spent > l->reported) {
        l->spent--;
        l->holding++;
    }
    pthread_mutex_unlock(&L.lock);
}

int64_t leases_live_replicas(void)
{
    return atomic_load_explicit(&live_replicas, memory_order_relaxed);
}

/* ---- the thread -------------------------------------------------------- */

static bool connect_if_needed(char *err, size_t err_size)
{
    if (L.conn != NULL && PQstatus(L.conn) == CONNECTION_OK)
        return true;
    if (L.conn != NULL)
        PQfinish(L.conn);
    L.conn = db_connect(L.url, "tally-api-leases", err, err_size);
    if (L.conn == NULL)
        return false;
    if (!db_exec(L.conn, LEASES_STATEMENT_TIMEOUT, "limiting lease statements", err, err_size)) {
        PQfinish(L.conn);
        L.conn = NULL;
        return false;
    }
    return true;
}

/* One parameterized statement on the lease connection; its result (the
 * caller clears it) or NULL with err. */
static PGresult *run(const char *sql, int count, const char *const *params, const char *what,
                     char *err, size_t err_size)
{
    if (!connect_if_needed(err, err_size))
        return NULL;
    PGresult *res = PQexecParams(L.conn, sql, count, NULL, params, NULL, NULL, 0);
    if (!api_ok(res)) {
        db_error(L.conn, res, what, err, err_size);
        PQclear(res);
        return NULL;
    }
    return res;
}

/* Writes `spent` (and with `release`, gives back what is not spent) of one
 * lease. */
static bool report(const char *key_id, period_kind period, int64_t period_start, int64_t spent,
                   bool release, char *err, size_t err_size)
{
    char start[TIME_RFC3339_LEN], spent_text[24];
    time_format_rfc3339(period_start, start, sizeof start);
    snprintf(spent_text, sizeof spent_text, "%lld", (long long)spent);
    const char *params[] = {key_id, period_name(period), start, L.replica_id, spent_text,
                            release ? "t" : "f"};
    PGresult *res = run(
        "UPDATE quota_leases SET spent = greatest(spent, $5::bigint), "
        "granted = CASE WHEN $6::boolean THEN greatest(spent, $5::bigint) "
        "ELSE greatest(granted, $5::bigint) END, updated_at = now() "
        "WHERE key_id = $1 AND period = $2 AND period_start = $3::timestamptz "
        "AND replica_id = $4",
        6, params, "reporting a lease", err, err_size);
    PQclear(res);
    return res != NULL;
}

/* Registers the heartbeat and reads the live count. On success this
 * replica may spend until `sent_at` + TTL (its peers count from the
 * database's later now()). A heartbeat after a lapse gives every lease
 * back first: the peers may have been given them meanwhile. */
static bool heartbeat(int64_t sent_at, char *err, size_t err_size)
{
    char ttl[24];
    snprintf(ttl, sizeof ttl, "%lld", L.settings.ttl_ms);
    const char *params[] = {L.replica_id, ttl};
    PGresult *res = run(
        "WITH beat AS (INSERT INTO api_replicas (id) VALUES ($1) ON CONFLICT (id) DO UPDATE "
        "SET heartbeat_at = now(), stopped = false RETURNING id) "
        "SELECT 1 + (SELECT count(*) FROM api_replicas r WHERE r.id <> $1 AND NOT r.stopped "
        "AND r.heartbeat_at > now() - $2::bigint * interval '1 millisecond') "
        "FROM beat",
        2, params, "writing the replica heartbeat", err, err_size);
    if (res == NULL)
        return false;
    int64_t live = PQntuples(res) == 1 ? api_field_int(res, 0, 0) : 1;
    PQclear(res);
    atomic_store_explicit(&live_replicas, live < 1 ? 1 : live, memory_order_relaxed);
    metrics_set(m_live, (double)live);
    pthread_mutex_lock(&L.lock);
    if (L.alive_until <= sent_at) {
        for (size_t i = 0; i < L.count; i++) {
            L.items[i]->holding = 0;
            L.items[i]->release = true; /* report_all gives it back in the table */
        }
    }
    L.alive_until = sent_at + L.settings.ttl_ms * 1000;
    pthread_mutex_unlock(&L.lock);
    /* Replicas dead for a day go, with their leases (ON DELETE CASCADE). */
    res = run("DELETE FROM api_replicas WHERE heartbeat_at < now() - interval '1 day'", 0, NULL,
              "forgetting replicas dead for a day", err, err_size);
    PQclear(res);
    return true;
}

typedef struct {
    lease *l;
    char key_id[APIROUTE_ID_MAX + 1];
    period_kind period;
    int64_t period_start, limit, spent, want;
    bool release;
} lease_work;

/* Reports every lease with unreported spending, and gives back those no
 * request used since the previous heartbeat (so that a replica without
 * traffic strands nothing for longer than two heartbeats). */
static void report_all(int64_t now)
{
    pthread_mutex_lock(&L.lock);
    size_t n = L.count;
    lease_work *work = n ? calloc(n, sizeof *work) : NULL;
    size_t todo = 0;
    for (size_t i = 0; work != NULL && i < n; i++) {
        lease *l = L.items[i];
        if (l->used_at < L.last_heartbeat && l->holding > 0) {
            l->holding = 0; /* idle since the previous heartbeat */
            l->release = true;
        }
        if (l->spent == l->reported && !l->release)
            continue;
        lease_work *w = &work[todo++];
        *w = (lease_work){.l = l, .period = l->period, .period_start = l->period_start,
                          .spent = l->spent, .release = l->release};
        l->release = false;
        memcpy(w->key_id, l->key_id, sizeof w->key_id);
    }
    pthread_mutex_unlock(&L.lock);
    for (size_t i = 0; i < todo; i++) {
        char err[512];
        bool ok = report(work[i].key_id, work[i].period, work[i].period_start, work[i].spent,
                         work[i].release, err, sizeof err);
        if (!ok)
            log_warn("lease report failed: %s", err);
        pthread_mutex_lock(&L.lock);
        lease *l = work[i].l;
        if (ok && l->reported < work[i].spent)
            l->reported = work[i].spent;
        if (!ok && work[i].release)
            l->release = true; /* again at the next heartbeat */
        pthread_mutex_unlock(&L.lock);
    }
    free(work);
    pthread_mutex_lock(&L.lock);
    prune_ended(now); /* after the loop: `work` pointed into the leases */
    pthread_mutex_unlock(&L.lock);
}

/* Asks for a top-up of every lease at half a slice or less that a request
 * used lately, or wants now, unless the pool was empty a moment ago. */
static void refill_all(int64_t now)
{
    pthread_mutex_lock(&L.lock);
    if (now >= L.alive_until) {
        pthread_mutex_unlock(&L.lock);
        return;
    }
    size_t n = L.count;
    lease_work *work = n ? calloc(n, sizeof *work) : NULL;
    size_t todo = 0;
    for (size_t i = 0; work != NULL && i < n; i++) {
        lease *l = L.items[i];
        leases_topup_state state = {
            .holding = l->holding, .limit = l->limit, .lease_max = L.settings.lease_max,
            .recent = l->wanted || l->used_at >= L.last_heartbeat,
            .release_pending = l->release, .period_over = l->period_end <= now,
            .empty_lately = l->empty_at != 0 && now - l->empty_at < LEASES_EMPTY_RETRY_USEC};
        int64_t want = leases_topup_want(&state);
        if (want == 0)
            continue;
        lease_work *w = &work[todo++];
        *w = (lease_work){.l = l, .period = l->period, .period_start = l->period_start,
                          .limit = l->limit, .spent = l->spent, .want = want};
        memcpy(w->key_id, l->key_id, sizeof w->key_id);
    }
    pthread_mutex_unlock(&L.lock);
    for (size_t i = 0; i < todo; i++) {
        lease_work *w = &work[i];
        char start[TIME_RFC3339_LEN], limit[24], spent[24], want[24], ttl[24], err[512];
        time_format_rfc3339(w->period_start, start, sizeof start);
        snprintf(limit, sizeof limit, "%lld", (long long)w->limit);
        snprintf(spent, sizeof spent, "%lld", (long long)w->spent);
        snprintf(want, sizeof want, "%lld", (long long)w->want);
        snprintf(ttl, sizeof ttl, "%lld", L.settings.ttl_ms);
        const char *params[] = {w->key_id, period_name(w->period), start, L.replica_id,
                                limit, spent, want, ttl};
        PGresult *res = run("SELECT tally_lease_grant($1, $2, $3::timestamptz, $4, "
                            "$5::bigint, $6::bigint, $7::bigint, $8::bigint)",
                            8, params, "leasing quota", err, sizeof err);
        int64_t granted = res != NULL && PQntuples(res) == 1 ? api_field_int(res, 0, 0) : 0;
        if (res == NULL)
            log_warn("%s", err);
        bool answered = res != NULL;
        PQclear(res);
        pthread_mutex_lock(&L.lock);
        lease *l = w->l;
        if (answered && l->reported < w->spent)
            l->reported = w->spent;
        /* A grant made while this replica was still alive to the others. */
        if (time_now_usec() < L.alive_until)
            l->holding += granted;
        else if (granted > 0)
            l->release = true;
        l->empty_at = granted > 0 ? 0 : time_now_usec();
        l->wanted = false;
        pthread_cond_broadcast(&L.refilled);
        pthread_mutex_unlock(&L.lock);
        metrics_add(granted > 0 ? m_granted : m_grants_empty, granted > 0 ? (double)granted : 1);
    }
    free(work);
}

static void *lease_thread(void *arg)
{
    (void)arg;
    int64_t last_error_log = 0;
    pthread_mutex_lock(&L.lock);
    while (!L.stopping) {
        struct timespec deadline;
        deadline_in(&deadline, LEASES_TICK_MS);
        pthread_cond_timedwait(&L.wake, &L.lock, &deadline);
        if (L.stopping)
            break;
        pthread_mutex_unlock(&L.lock);
        int64_t now = time_now_usec();
        if (now >= L.next_heartbeat) {
            char err[512];
            if (!heartbeat(now, err, sizeof err)) {
                metrics_add(m_heartbeat_errors, 1);
                if (now - last_error_log > 10 * USEC_PER_SEC) {
                    log_warn("replica heartbeat failed (quota leases stop at %lld ms of "
                             "silence): %s", L.settings.ttl_ms, err);
                    last_error_log = now;
                }
            } else {
                report_all(now);
                L.last_heartbeat = now;
            }
            L.next_heartbeat = now + L.settings.heartbeat_ms * 1000;
        }
        refill_all(time_now_usec());
        pthread_mutex_lock(&L.lock);
    }
    pthread_mutex_unlock(&L.lock);
    return NULL;
}

static void register_metrics(void)
{
    m_granted = metrics_counter("tally_api_quota_lease_units_total",
                                "quota units leased from PostgreSQL by this replica", NULL);
    m_grants_empty = metrics_counter("tally_api_quota_lease_empty_total",
                                     "lease requests the pool could not grant anything", NULL);
    m_refused = metrics_counter("tally_api_quota_lease_refusals_total",
                                "requests refused for want of a leased unit", NULL);
    m_heartbeat_errors = metrics_counter("tally_api_replica_heartbeat_errors_total",
                                         "failed heartbeats to api_replicas", NULL);
    m_live = metrics_gauge("tally_api_replicas_live",
                           "live api replicas sharing quotas and rates, as of the last heartbeat",
                           NULL);
}

/* "<host>-<pid>-<random>": unique per process, readable in api_replicas. */
static bool make_replica_id(char *err, size_t err_size)
{
    char host[64] = "api";
    if (gethostname(host, sizeof host) != 0)
        snprintf(host, sizeof host, "api");
    host[sizeof host - 1] = '\0';
    char suffix[16];
    if (!random_base62("", 8, suffix, sizeof suffix)) {
        snprintf(err, err_size, "no random bytes for the replica id");
        return false;
    }
    snprintf(L.replica_id, sizeof L.replica_id, "%s-%ld-%s", host, (long)getpid(), suffix);
    return true;
}

bool leases_start(const char *url, const leases_settings *settings, char *err,
                  size_t err_size)
{
    L.url = url;
    L.settings = *settings;
    register_metrics();
    if (!make_replica_id(err, err_size) || !hashindex_init(&L.index, 64)) {
        if (err[0] == '\0')
            snprintf(err, err_size, "out of memory");
        return false;
    }
    int64_t now = time_now_usec();
    if (!heartbeat(now, err, err_size))
        return false;
    L.last_heartbeat = now;
    L.next_heartbeat = now + L.settings.heartbeat_ms * 1000;
    if (pthread_create(&L.thread, NULL, lease_thread, NULL) != 0) {
        snprintf(err, err_size, "cannot start the lease thread");
        return false;
    }
    L.started = true;
    atomic_store(&enabled, true);
    log_info("replica %s shares quotas and rates through PostgreSQL (%lld live; heartbeat "
             "%lld ms, TTL %lld ms, slices up to %lld)",
             L.replica_id, (long long)leases_live_replicas(), L.settings.heartbeat_ms,
             L.settings.ttl_ms, L.settings.lease_max);
    return true;
}

void leases_stop(void)
{
    if (L.started) {
        pthread_mutex_lock(&L.lock);
        L.stopping = true;
        pthread_cond_broadcast(&L.wake);
        pthread_cond_broadcast(&L.refilled);
        pthread_mutex_unlock(&L.lock);
        pthread_join(L.thread, NULL);
        L.started = false;
        /* Every lease back, then dead to the others at once. */
        pthread_mutex_lock(&L.lock);
        L.alive_until = 0;
        for (size_t i = 0; i < L.count; i++)
            L.items[i]->holding = 0;
        pthread_mutex_unlock(&L.lock);
        char err[512];
        for (size_t i = 0; i < L.count; i++) {
            lease *l = L.items[i];
            if (!report(l->key_id, l->period, l->period_start, l->spent, true, err, sizeof err))
                break;
        }
        const char *params[] = {L.replica_id};
        PGresult *res = run("UPDATE api_replicas SET stopped = true WHERE id = $1",
                            1, params, "leaving the replicas", err, sizeof err);
        PQclear(res);
    }
    atomic_store(&enabled, false);
    for (size_t i = 0; i < L.count; i++)
        free(L.items[i]);
    free(L.items);
    L.items = NULL;
    L.count = L.capacity = 0;
    hashindex_free(&L.index);
    if (L.conn != NULL)
        PQfinish(L.conn);
    L.conn = NULL;
}
