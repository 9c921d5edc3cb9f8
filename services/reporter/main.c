/* tally-reporter: turns the collector's hourly rollups into Stripe usage.
 *
 * Why it cannot lose or double-count usage:
 *  - Outbox first. Each cycle plans, in ONE statement, a report for every
 *    (key, plan, hour) whose counted units exceed what its earlier reports
 *    cover, and commits it (quantity, customer, target, a deterministic
 *    identifier) before any call is made. A crash before the commit plans
 *    the same again; after it, the report is in the outbox.
 *  - Same identifier on every retry. The identifier is a digest of
 *    (key, plan, hour, seq); a retry after a timeout, a dropped connection or
 *    a kill -9 between sending and recording carries the same identifier and
 *    idempotency key, so Stripe either replays its saved answer or refuses
 *    the repeated identifier, which we count as delivered.
 *  - Late events raise a bucket's count; the next plan covers only the
 *    difference, as a new report with the next seq (a new identifier).
 *  - Nothing is dropped: refusals for good (unknown customer, too old) are
 *    parked with Stripe's message for an operator (`tally-reporter parked`,
 *    `requeue`), and their units stay out of the next plans.
 *
 * One reporter is active per database (a session advisory lock); another
 * instance stands by and takes over when the first one's session ends. */
#include <curl/curl.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "config.h"
#include "db.h"
#include "hooks.h"
#include "log.h"
#include "stopsignal.h"
#include "metrics.h"
#include "ops.h"
#include "outbox.h"
#include "sender.h"
#include "stripe.h"
#include "timeutil.h"

/* Reports held in memory: about ten minutes of work at the rate ceiling
 * (loading stamps first_sent_at, which the 23-hour rule reads), within these
 * bounds; loaded in batches small enough that a load (which stops the
 * dispatch loop) stays short. The outbox holds the rest. */
#define MAX_IN_MEMORY 20000
#define MIN_IN_MEMORY 100
#define LOAD_BATCH 5000
#define AHEAD_S 600
/* Changes older than this before the previous plan are looked at again:
 * a collector transaction stamps updated_at when it starts, not when it
 * commits. A full look happens every hour anyway. */
#define PLAN_OVERLAP_S 900.0
#define FULL_PLAN_EVERY_USEC (3600 * USEC_PER_SEC)
#define FLUSH_EVERY_USEC (200 * 1000)
#define FLUSH_BATCH 5000
/* --once: a report that failed this many times in the run is left pending. */
#define ONCE_GIVE_UP_AFTER 8
#define API_KEY_MAX 1024

static const char *database_url, *api_base, *api_key_env, *mode_text,
    *api_version, *metrics_addr, *log_level_text, *id_namespace;
static long long timeout_ms, interval_s, concurrency, lookback_days;
static double rate_limit, settle_s;
static bool once;
static bool webhooks_on;
static const char *webhook_allow_text;
static long long webhook_timeout_ms, webhook_concurrency, webhook_per_endpoint, webhook_poll_ms,
    webhook_retry_base_ms, webhook_retry_max_ms, webhook_retry_window_s;

/* The settings the daemon and every operator command take: one row each. */
#define DATABASE_URL_SETTING                                                                  \
    {"TALLY_DATABASE_URL", "database-url", CFG_STRING, &database_url, NULL, true, true, 0, 0, \
     "libpq connection string of the Tally database"}
#define LOG_LEVEL_SETTING                                                                     \
    {"TALLY_LOG_LEVEL", "log-level", CFG_STRING, &log_level_text, "info", false, false, 0, 0, \
     "debug, info, warn or error"}
#define SETTING_COUNT(table) (sizeof table / sizeof table[0])
/* Said when TALLY_STRIPE_MODE is neither spelling; takes the text. */
#define BAD_MODE_FORMAT                                                                     \
    "TALLY_STRIPE_MODE: \"%s\" is neither " STRIPE_MODE_NAME_METER_EVENTS " nor "           \
    STRIPE_MODE_NAME_USAGE_RECORDS

static const cfg_setting settings[] = {
    DATABASE_URL_SETTING,
    {"TALLY_STRIPE_API_BASE", "stripe-api-base", CFG_STRING, &api_base, "https://api.stripe.com",
     false, false, 0, 0, "Stripe's base URL (a stand-in's in tests)"},
    /* also TALLY_STRIPE_API_KEY_FILE / --stripe-api-key-file, as every secret (config.h) */
    {"TALLY_STRIPE_API_KEY", "stripe-api-key", CFG_STRING, &api_key_env, NULL, false, true, 0, 0,
     "Stripe secret key (prefer the variable or the file: flags show in ps); never logged"},
    {"TALLY_STRIPE_MODE", "stripe-mode", CFG_STRING, &mode_text, STRIPE_MODE_NAME_METER_EVENTS,
     false, false, 0, 0,
     STRIPE_MODE_NAME_METER_EVENTS " (Billing Meter Events) or " STRIPE_MODE_NAME_USAGE_RECORDS
     " (legacy subscription-item usage records, action=increment)"},
    {"TALLY_STRIPE_VERSION", "stripe-version", CFG_STRING, &api_version, "", false, false, 0, 0,
     "Stripe-Version header; empty: the account's default for " STRIPE_MODE_NAME_METER_EVENTS
     ", " STRIPE_USAGE_RECORDS_VERSION " for " STRIPE_MODE_NAME_USAGE_RECORDS},
    {"TALLY_STRIPE_TIMEOUT_MS", "stripe-timeout-ms", CFG_INT, &timeout_ms, "30000", false, false,
     100, 600000, "a call without an answer after this long is retried (same identifier and "
     "idempotency key)"},
    {"TALLY_REPORT_INTERVAL_S", "report-interval-s", CFG_INT, &interval_s, "60", false, false, 1,
     86400, "how often new usage is planned into reports"},
    {"TALLY_REPORT_RATE_LIMIT", "report-rate-limit", CFG_DOUBLE, &rate_limit, "100", false, false,
     0.1, 100000, "ceiling on calls per second to Stripe (Stripe allows 1,000/s for meter "
     "events in live mode, less in test mode); 429s lower it for a while"},
    {"TALLY_REPORT_CONCURRENCY", "report-concurrency", CFG_INT, &concurrency, "8", false, false,
     1, 256, "calls in flight at most (and never two for one customer and meter)"},
    {"TALLY_REPORT_SETTLE_S", "report-settle-s", CFG_DOUBLE, &settle_s, "300", false, false, 0,
     86400, "an hour is reported once it ended, or its usage last changed, this long ago (0: "
     "report the running hour's usage at every cycle)"},
    {"TALLY_REPORT_LOOKBACK_DAYS", "report-lookback-days", CFG_INT, &lookback_days, "35", false,
     false, 1, 35, "usage older than this is not reported; usage older than 34 days is sent "
     "with a timestamp 34 days before its planning (Stripe refuses meter events older than 35 "
     "days)"},
    {"TALLY_REPORT_NAMESPACE", "report-namespace", CFG_STRING, &id_namespace, "", false, false,
     0, 0, "goes into every report identifier: give each deployment that reports to the same "
     "Stripe account its own (e.g. prod, staging), or Stripe takes one's reports for the "
     "other's duplicates"},
    {"TALLY_METRICS_ADDR", "metrics-addr", CFG_STRING, &metrics_addr, "127.0.0.1:9102", false,
     false, 0, 0, "where GET /metrics and GET /healthz listen"},
    /* Webhook delivery (hooks.h; README "Webhooks"): a thread of its own. */
    {"TALLY_WEBHOOKS", "webhooks", CFG_BOOL, &webhooks_on, "true", false, false, 0, 0,
     "deliver the quota alerts' webhooks (not with --once)"},
    {"TALLY_WEBHOOK_TIMEOUT_MS", "webhook-timeout-ms", CFG_INT, &webhook_timeout_ms, "10000",
     false, false, 100, 120000, "an attempt without a full answer after this long (connecting "
     "included) failed and is retried"},
    {"TALLY_WEBHOOK_CONCURRENCY", "webhook-concurrency", CFG_INT, &webhook_concurrency, "32",
     false, false, 1, 512, "webhook attempts in flight at most"},
    {"TALLY_WEBHOOK_ENDPOINT_CONCURRENCY", "webhook-endpoint-concurrency", CFG_INT,
     &webhook_per_endpoint, "2", false, false, 1, 64,
     "webhook attempts in flight to one endpoint at most (a slow or dead one holds no more)"},
    {"TALLY_WEBHOOK_POLL_MS", "webhook-poll-ms", CFG_INT, &webhook_poll_ms, "250", false, false,
     10, 60000, "how often the outbox is looked at for due deliveries"},
    {"TALLY_WEBHOOK_RETRY_BASE_MS", "webhook-retry-base-ms", CFG_INT, &webhook_retry_base_ms,
     "60000", false, false, 100, 86400000, "delay after the first failed attempt; doubled "
     "after each next one, +-20 % jitter"},
    {"TALLY_WEBHOOK_RETRY_MAX_DELAY_MS", "webhook-retry-max-delay-ms", CFG_INT,
     &webhook_retry_max_ms, "21600000", false, false, 100, 604800000,
     "the longest delay between two attempts (6 h)"},
    {"TALLY_WEBHOOK_RETRY_WINDOW_S", "webhook-retry-window-s", CFG_INT, &webhook_retry_window_s,
     "259200", false, false, 0, 2592000, "a delivery is parked once its retry delays add up to "
     "more than this (3 days, like Stripe)"},
    {"TALLY_WEBHOOK_ALLOW_NETWORKS", "webhook-allow-networks", CFG_STRING, &webhook_allow_text,
     "", false, false, 0, 0, "address classes webhooks may connect to beyond public ones, "
     "comma-separated: loopback, private, link-local, metadata (default none)"},
    LOG_LEVEL_SETTING,
    {NULL, "once", CFG_BOOL, &once, "false", false, false, 0, 0,
     "run one cycle (plan, send everything pending, retrying each report up to 8 times) and "
     "exit: 0 when nothing is left pending or parked, 1 otherwise, 2 when it could not run"},
};

static volatile sig_atomic_t last_loop_at;
static volatile sig_atomic_t db_up;
/* The webhook sender, for /healthz; NULL when webhooks are off. Set before
 * the metrics endpoint starts. */
static hooks *health_webhooks;

static bool health(char *detail, size_t detail_size)
{
    long long idle = (long long)(time(NULL) - last_loop_at);
    double hooks_idle = health_webhooks ? hooks_idle_seconds(health_webhooks) : 0;
    snprintf(detail, detail_size, "main loop ran %llds ago; database %s%s", idle,
             db_up ? "connected" : "unavailable",
             hooks_idle >= 120 ? "; webhook loop stalled" : "");
    return idle < 120 && hooks_idle < 120;
}

/* ---- settings ------------------------------------------------------------ */

/* Checks the Stripe key (from the variable or, by cfg_load, its file) and
 * copies it; errors never show it. */
static bool load_api_key(char *out, size_t size, char *err, size_t err_size)
{
    size_t len = 0;
    if (api_key_env) {
        len = strlen(api_key_env);
        if (len >= size) {
            snprintf(err, err_size, "TALLY_STRIPE_API_KEY: longer than %zu bytes", size - 1);
            return false;
        }
        memcpy(out, api_key_env, len + 1);
    } else {
        snprintf(err, err_size, "TALLY_STRIPE_API_KEY or TALLY_STRIPE_API_KEY_FILE is required");
        return false;
    }
    if (len == 0) {
        snprintf(err, err_size, "the Stripe API key is empty");
        return false;
    }
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)out[i];
        if (c <= 0x20 || c >= 0x7f) {
            /* it goes into a header: no spaces, controls or line breaks */
            snprintf(err, err_size, "the Stripe API key holds a space or control character");
            return false;
        }
    }
    return true;
}

/* True when the host part of "host[:port][/path]" is exactly a loopback
 * name or address (localhost, 127.x.y.z, [::1]). */
static bool is_loopback_url_host(const char *rest)
{
    size_t n = rest[0] == '[' ? strcspn(rest, "]") + 1 : strcspn(rest, ":/");
    char host[64];
    if (n == 0 || n >= sizeof host)
        return false;
    memcpy(host, rest, n);
    host[n] = '\0';
    if (strcmp(host, "localhost") == 0 || strcmp(host, "[::1]") == 0)
        return true;
    unsigned a, b, c, d;
    char extra;
    return sscanf(host, "%u.%u.%u.%u%c", &a, &b, &c, &d, &extra) == 4 && a == 127 && b < 256 &&
           c < 256 && d < 256;
}

static bool check_namespace(char *err, size_t err_size)
{
    size_t len = strlen(id_namespace);
    if (len > 64 || strspn(id_namespace, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
                                         "0123456789_.-") != len) {
        snprintf(err, err_size, "TALLY_REPORT_NAMESPACE: at most 64 letters, digits, '_', '.' "
                                "or '-'");
        return false;
    }
    return true;
}

static bool check_api_version(char *err, size_t err_size)
{
    if (!stripe_version_valid(api_version)) {
        snprintf(err, err_size, "TALLY_STRIPE_VERSION: at most %d letters, digits, '_', '.' or "
                                "'-' (like 2025-02-24.acacia)",
                 STRIPE_VERSION_MAX);
        return false;
    }
    return true;
}

static bool check_api_base(char *out, size_t size, char *err, size_t err_size)
{
    size_t len = strlen(api_base);
    bool https = strncmp(api_base, "https://", 8) == 0;
    if (!https && strncmp(api_base, "http://", 7) != 0) {
        snprintf(err, err_size, "TALLY_STRIPE_API_BASE: must start with https:// or http://");
        return false;
    }
    while (len > 0 && api_base[len - 1] == '/')
        len--;
    if (len >= size || len <= (size_t)(https ? 8 : 7)) {
        snprintf(err, err_size, "TALLY_STRIPE_API_BASE: missing host or too long");
        return false;
    }
    memcpy(out, api_base, len);
    out[len] = '\0';
    if (!https && !is_loopback_url_host(out + 7))
        log_warn("TALLY_STRIPE_API_BASE is plain http to a remote host: the Stripe key travels "
                 "unencrypted (fine for a stand-in on a private network, never for Stripe)");
    return true;
}

/* ---- the daemon ---------------------------------------------------------- */

typedef struct {
    stripe_mode mode;
    PGconn *db;
    bool locked, standby_logged;
    int64_t next_connect_usec, connect_backoff_usec;
    int64_t next_lock_try_usec;
    sender *snd;
    int64_t cursor;              /* last report id loaded */
    bool exhausted;              /* the last load found nothing more */
    char since[64];              /* where the next incremental plan starts; "" for a full one */
    int64_t next_full_usec;
    int64_t next_cycle_usec;
    int64_t last_flush_usec;
    bool planned_once;
    long long planned_reports, planned_units;
    double plan_seconds;
    metric *m_pending, *m_parked, *m_oldest, *m_standby, *m_plan_seconds, *m_planned;
} reporter;

static void db_failed(reporter *rp, const char *err)
{
    log_warn("%s", err);
    if (rp->db && db_connection_lost(rp->db)) {
        PQfinish(rp->db);
        rp->db = NULL;
        rp->locked = false;
        db_up = 0;
        /* The lock went with the session: stop starting calls until it is
         * ours again (another reporter may take over meanwhile). */
        sender_hold(rp->snd, true);
    }
}

static bool ensure_db(reporter *rp, int64_t now)
{
    if (rp->db)
        return true;
    if (now < rp->next_connect_usec)
        return false;
    char err[512];
    rp->db = db_connect(database_url, "tally-reporter", err, sizeof err);
    if (rp->db == NULL) {
        rp->connect_backoff_usec = rp->connect_backoff_usec ? rp->connect_backoff_usec * 2
                                                            : 250 * 1000;
        if (rp->connect_backoff_usec > 10 * USEC_PER_SEC)
            rp->connect_backoff_usec = 10 * USEC_PER_SEC;
        rp->next_connect_usec = now + rp->connect_backoff_usec;
        log_warn("%s; retrying in %lld ms", err, (long long)(rp->connect_backoff_usec / 1000));
        return false;
    }
    rp->connect_backoff_usec = 0;
    db_up = 1;
    return true;
}

static bool flush(reporter *rp, bool force)
{
    size_t count;
    report *const *dirty = sender_dirty(rp->snd, &count);
    int64_t now = time_now_usec();
    if (count == 0)
        return true;
    if (!force && count < FLUSH_BATCH && now - rp->last_flush_usec < FLUSH_EVERY_USEC)
        return true;
    if (rp->db == NULL)
        return false;
    char err[512];
    if (!outbox_flush(rp->db, dirty, count, err, sizeof err)) {
        db_failed(rp, err);
        return false;
    }
    sender_flushed(rp->snd);
    rp->last_flush_usec = now;
    return true;
}

static bool ensure_lock(reporter *rp, int64_t now)
{
    if (rp->locked)
        return true;
    if (now < rp->next_lock_try_usec)
        return false;
    rp->next_lock_try_usec = now + (once ? 0 : interval_s * USEC_PER_SEC / 4 + USEC_PER_SEC);
    /* Outcomes of calls made before the lock was lost are written first
     * (only still-pending rows change, so another reporter's work wins). */
    if (!flush(rp, true))
        return false;
    bool held = false;
    char err[512];
    if (!outbox_try_lock(rp->db, &held, err, sizeof err)) {
        db_failed(rp, err);
        return false;
    }
    metrics_set(rp->m_standby, held ? 0 : 1);
    if (!held) {
        /* Another reporter owns the outbox now: forget our queue. */
        sender_drop_queued(rp->snd);
        if (sender_in_memory(rp->snd) == 0)
            rp->cursor = 0;
        if (!rp->standby_logged)
            log_info("another tally-reporter holds the outbox lock; standing by");
        rp->standby_logged = true;
        return false;
    }
    log_info("active: this reporter holds the outbox lock");
    rp->standby_logged = false;
    rp->locked = true;
    rp->since[0] = '\0';
    rp->exhausted = false;
    if (sender_in_memory(rp->snd) == 0)
        rp->cursor = 0;
    sender_hold(rp->snd, stopsignal_requested());
    return true;
}

static void read_stats(reporter *rp)
{
    outbox_stats st;
    char err[512];
    if (!outbox_stats_read(rp->db, &st, err, sizeof err)) {
        db_failed(rp, err);
        return;
    }
    metrics_set(rp->m_pending, (double)st.pending);
    metrics_set(rp->m_parked, (double)st.parked);
    metrics_set(rp->m_oldest, st.oldest_pending_s);
}

static void plan(reporter *rp, int64_t now)
{
    char err[512], next_since[64];
    bool full = rp->since[0] == '\0' || now >= rp->next_full_usec;
    int64_t t0 = time_now_usec();
    /* A bucket becomes due `settle_s` after its last change: the next look
     * must reach back that far too. */
    double overlap = (settle_s > PLAN_OVERLAP_S ? settle_s : PLAN_OVERLAP_S) + (double)interval_s;
    if (!outbox_clock(rp->db, overlap, next_since, sizeof next_since, err, sizeof err)) {
        db_failed(rp, err);
        return;
    }
    long long reports = 0, units = 0;
    if (!outbox_plan(rp->db, rp->mode, full ? NULL : rp->since, settle_s, (int)lookback_days,
                     id_namespace, &reports, &units, err, sizeof err)) {
        db_failed(rp, err);
        return;
    }
    snprintf(rp->since, sizeof rp->since, "%s", next_since);
    if (full)
        rp->next_full_usec = now + FULL_PLAN_EVERY_USEC;
    rp->plan_seconds = (double)(time_now_usec() - t0) / 1e6;
    rp->planned_reports += reports;
    rp->planned_units += units;
    rp->planned_once = true;
    rp->exhausted = false;
    /* Requeued reports have old ids: look from the start whenever nothing is
     * held in memory (nothing can be loaded twice then). */
    if (sender_in_memory(rp->snd) == 0)
        rp->cursor = 0;
    metrics_set(rp->m_plan_seconds, rp->plan_seconds);
    metrics_add(rp->m_planned, (uint64_t)reports);
    if (reports > 0)
        log_info("planned %lld reports (%lld units) in %.2f s (%s look)", reports, units,
                 rp->plan_seconds, full ? "full" : "incremental");
    read_stats(rp);
}

static void take_report(void *ctx, report *r)
{
    reporter *rp = ctx;
    if (once && r->ready_usec > time_now_usec())
        r->ready_usec = time_now_usec(); /* one run: no waiting for an earlier backoff */
    if (r->id > rp->cursor)
        rp->cursor = r->id;
    sender_add(rp->snd, r);
}

static void load(reporter *rp)
{
    double ahead = rate_limit * AHEAD_S;
    size_t cap = ahead > MAX_IN_MEMORY ? MAX_IN_MEMORY : ahead < MIN_IN_MEMORY ? MIN_IN_MEMORY
                                                                             : (size_t)ahead;
    size_t batch = cap < LOAD_BATCH ? cap : LOAD_BATCH;
    if (rp->exhausted || sender_in_memory(rp->snd) + batch > cap)
        return;
    char err[512];
    int loaded = 0;
    if (!outbox_load(rp->db, rp->cursor, (int)batch, take_report, rp, &loaded, err,
                     sizeof err)) {
        db_failed(rp, err);
        return;
    }
    if ((size_t)loaded < batch)
        rp->exhausted = true;
}

static void register_metrics(reporter *rp)
{
    rp->m_pending = metrics_gauge("tally_reporter_pending_reports",
                                  "reports in the outbox not yet accepted (at the last cycle)",
                                  NULL);
    rp->m_parked = metrics_gauge("tally_reporter_parked_reports",
                                 "reports Stripe refused for good, waiting for an operator", NULL);
    rp->m_oldest = metrics_gauge("tally_reporter_oldest_unreported_seconds",
                                 "age of the oldest report not yet accepted by Stripe", NULL);
    rp->m_standby = metrics_gauge("tally_reporter_standby",
                                  "1 while another reporter holds the outbox lock", NULL);
    rp->m_plan_seconds = metrics_gauge("tally_reporter_plan_seconds",
                                       "how long the last planning statement took", NULL);
    rp->m_planned = metrics_counter("tally_reporter_reports_planned_total",
                                    "reports written to the outbox", NULL);
}

/* This process's peak resident set (VmHWM) in kB; 0 when unknown. Not
 * getrusage's ru_maxrss: Linux carries that over from the program that
 * started us (a fork or vfork before exec counts the parent's pages). */
static long long peak_rss_kb(void)
{
    FILE *f = fopen("/proc/self/status", "r");
    if (f == NULL)
        return 0;
    char line[256];
    long long kb = 0;
    while (fgets(line, sizeof line, f))
        if (sscanf(line, "VmHWM: %lld kB", &kb) == 1)
            break;
    fclose(f);
    return kb;
}

/* One line of JSON on stdout after --once, for scripts and the benchmark. */
static void print_summary(reporter *rp, double seconds, double send_seconds,
                          const outbox_stats *st)
{
    const sender_totals *t = sender_get_totals(rp->snd);
    printf("{\"planned\":%lld,\"plannedUnits\":%lld,\"calls\":%lld,\"accepted\":%lld,"
           "\"duplicates\":%lld,\"unitsAccepted\":%lld,\"retried\":%lld,\"rateLimited\":%lld,"
           "\"newKeys\":%lld,\"parked\":%lld,\"givenUp\":%lld,\"pendingLeft\":%lld,"
           "\"parkedTotal\":%lld,\"planSeconds\":%.3f,\"sendSeconds\":%.3f,\"seconds\":%.3f,"
           "\"callsPerSecond\":%.1f,\"peakRssKb\":%lld}\n",
           rp->planned_reports, rp->planned_units, t->sent, t->accepted, t->duplicates,
           t->units_accepted, t->retried, t->rate_limited, t->new_keys, t->parked, t->given_up,
           st->pending, st->parked, rp->plan_seconds, send_seconds, seconds,
           send_seconds > 0 ? (double)t->sent / send_seconds : 0.0, peak_rss_kb());
    fflush(stdout);
}

/* The webhook sender from its settings (not started); NULL with err. */
static hooks *new_webhooks(char *err, size_t err_size)
{
    hooks_config hc = {
        .database_url = database_url,
        .timeout_ms = (long)webhook_timeout_ms,
        .concurrency = (int)webhook_concurrency,
        .per_endpoint = (int)webhook_per_endpoint,
        .poll_ms = (int)webhook_poll_ms,
        .schedule = {.base_ms = webhook_retry_base_ms,
                     .cap_ms = webhook_retry_max_ms > webhook_retry_base_ms
                                   ? webhook_retry_max_ms
                                   : webhook_retry_base_ms,
                     .window_ms = webhook_retry_window_s * 1000},
    };
    if (!hookaddr_parse_allow(webhook_allow_text, &hc.allow, err, err_size))
        return NULL;
    hooks *h = hooks_new(&hc, err, err_size);
    if (h)
        log_info("webhooks: at most %lld in flight (%lld per endpoint), %lld ms per attempt, "
                 "retried for %lld s (%d attempts at most)",
                 webhook_concurrency, webhook_per_endpoint, webhook_timeout_ms,
                 webhook_retry_window_s, hookwire_max_attempts(&hc.schedule));
    return h;
}

static int run_daemon(void)
{
    char err[512], key[API_KEY_MAX + 1], base[600];
    stripe_mode mode;
    if (!stripe_parse_mode(mode_text, &mode)) {
        log_error(BAD_MODE_FORMAT, mode_text);
        return 2;
    }
    if (!load_api_key(key, sizeof key, err, sizeof err) ||
        !check_api_base(base, sizeof base, err, sizeof err) || !check_namespace(err, sizeof err) ||
        !check_api_version(err, sizeof err)) {
        log_error("%s", err);
        return 2;
    }
    sender_config sc = {
        .api_base = base,
        .api_key = key,
        .api_version = api_version,
        .timeout_ms = (long)timeout_ms,
        .concurrency = (int)concurrency,
        .rate_limit = rate_limit,
        .give_up_after = once ? ONCE_GIVE_UP_AFTER : 0,
    };
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
        log_error("curl_global_init failed");
        return 2;
    }
    reporter rp;
    memset(&rp, 0, sizeof rp);
    rp.mode = mode;
    register_metrics(&rp);
    rp.snd = sender_new(&sc, err, sizeof err);
    explicit_bzero(key, sizeof key); /* the sender keeps the only copy */
    if (rp.snd == NULL) {
        log_error("%s", err);
        return 2;
    }
    hooks *webhooks = NULL;
    if (webhooks_on && !once && (webhooks = new_webhooks(err, sizeof err)) == NULL) {
        log_error("%s", err);
        sender_free(rp.snd);
        return 2;
    }
    health_webhooks = webhooks;
    ops_server *ops = ops_start(metrics_addr, health, err, sizeof err);
    if (ops == NULL) {
        log_error("TALLY_METRICS_ADDR: %s", err);
        hooks_stop(webhooks);
        sender_free(rp.snd);
        return 2;
    }
    if (webhooks && !hooks_start(webhooks, err, sizeof err)) {
        log_error("%s", err);
        ops_stop(ops);
        hooks_stop(webhooks);
        sender_free(rp.snd);
        return 2;
    }
    log_info("reporting %s to %s (at most %lld in flight, %.1f calls/s%s)",
             stripe_mode_name(mode), base, concurrency, rate_limit,
             once ? "; one cycle" : "");

    int status = 0;
    int64_t started = time_now_usec(), send_started = 0;
    while (true) {
        int64_t now = time_now_usec();
        last_loop_at = (sig_atomic_t)(now / USEC_PER_SEC);
        if (stopsignal_requested())
            sender_hold(rp.snd, true);
        if (ensure_db(&rp, now)) {
            if (!rp.locked && !ensure_lock(&rp, now) && once && rp.standby_logged) {
                log_error("another tally-reporter is active on this database; --once needs the "
                          "outbox to itself");
                status = 2;
                break;
            }
            if (rp.locked && !stopsignal_requested() && now >= rp.next_cycle_usec &&
                !(once && rp.planned_once)) {
                plan(&rp, now);
                rp.next_cycle_usec = now + interval_s * USEC_PER_SEC;
                if (send_started == 0)
                    send_started = time_now_usec();
            }
            if (rp.locked && rp.db && !stopsignal_requested())
                load(&rp);
            if (rp.db)
                flush(&rp, false);
        } else if (once && !rp.planned_once && now - started > 30 * USEC_PER_SEC) {
            log_error("the database stayed unreachable for 30 s");
            status = 2;
            break;
        }
        bool drained = sender_idle(rp.snd) && sender_in_flight(rp.snd) == 0;
        if (stopsignal_requested() && sender_in_flight(rp.snd) == 0)
            break;
        if (once && rp.planned_once && rp.exhausted && drained)
            break;
        if (once && sender_auth_failed(rp.snd) && sender_in_flight(rp.snd) == 0)
            break; /* nothing passes with this key: stop, exit 1 */
        sender_run(rp.snd, 100);
    }
    int64_t send_ended = time_now_usec();
    /* Write every outcome we have; a few tries if the database blinks. */
    for (int i = 0; i < 20 && !flush(&rp, true); i++) {
        usleep(250 * 1000);
        ensure_db(&rp, time_now_usec());
    }
    if (once && status == 0) {
        outbox_stats st = {0};
        char e2[512];
        if (rp.db == NULL || !outbox_stats_read(rp.db, &st, e2, sizeof e2)) {
            log_error("could not read what is left in the outbox");
            status = 2;
        } else {
            double seconds = (double)(send_ended - started) / 1e6;
            /* send_started is taken after the plan returned */
            double send_seconds =
                send_started ? (double)(send_ended - send_started) / 1e6 : 0;
            print_summary(&rp, seconds, send_seconds, &st);
            status = st.pending == 0 && st.parked == 0 ? 0 : 1;
            if (status)
                log_warn("left in the outbox: %lld pending, %lld parked (see `tally-reporter "
                         "parked`)",
                         st.pending, st.parked);
        }
    }
    size_t unwritten;
    sender_dirty(rp.snd, &unwritten);
    if (unwritten)
        log_warn("%zu outcomes could not be written; those reports are sent again (same "
                 "identifiers) on the next start",
                 unwritten);
    ops_stop(ops); /* /healthz reads the webhook sender: stopped first */
    hooks_stop(webhooks); /* attempts in flight finish and are recorded */
    sender_free(rp.snd);
    if (rp.db)
        PQfinish(rp.db);
    curl_global_cleanup();
    log_info("stopped");
    return status;
}

/* ---- operator commands ---------------------------------------------------- */

static const char *from_text, *to_text;
static bool json_out, requeue_all;
static long long limit_rows, requeue_id;
static const char *customer_filter;

#define JSON_SETTING {NULL, "json", CFG_BOOL, &json_out, "false", false, false, 0, 0, "print JSON"}

static const cfg_setting reconcile_settings[] = {
    DATABASE_URL_SETTING,
    {"TALLY_STRIPE_MODE", "stripe-mode", CFG_STRING, &mode_text, STRIPE_MODE_NAME_METER_EVENTS,
     false, false, 0, 0,
     "which target names the rows: the meter event name or the subscription item"},
    LOG_LEVEL_SETTING,
    {NULL, "from", CFG_STRING, &from_text, NULL, false, false, 0, 0,
     "first hour to include (RFC 3339 or YYYY-MM-DD); default: all"},
    {NULL, "to", CFG_STRING, &to_text, NULL, false, false, 0, 0,
     "end of the range, exclusive (RFC 3339 or YYYY-MM-DD); default: all"},
    JSON_SETTING,
};

static const cfg_setting parked_settings[] = {
    DATABASE_URL_SETTING,
    LOG_LEVEL_SETTING,
    {NULL, "limit", CFG_INT, &limit_rows, "100", false, false, 1, 100000, "rows at most"},
    JSON_SETTING,
};

static const cfg_setting resolve_settings[] = {
    DATABASE_URL_SETTING,
    LOG_LEVEL_SETTING,
    {NULL, "id", CFG_INT, &requeue_id, NULL, true, false, 1, 9e18,
     "the parked report Stripe did count"},
};

static const cfg_setting requeue_settings[] = {
    DATABASE_URL_SETTING,
    LOG_LEVEL_SETTING,
    {NULL, "id", CFG_INT, &requeue_id, "0", false, false, 0, 9e18, "the parked report to requeue"},
    {NULL, "all", CFG_BOOL, &requeue_all, "false", false, false, 0, 0,
     "requeue every parked report (of --customer, when given)"},
    {NULL, "customer", CFG_STRING, &customer_filter, NULL, false, false, 0, 0,
     "only this Stripe customer's parked reports"},
};

/* reconcile's mode and range, as its check read them (a bound NULL: open). */
static stripe_mode reconcile_mode = STRIPE_MODE_METER_EVENTS;
static char from_buf[TIME_RFC3339_LEN], to_buf[TIME_RFC3339_LEN];
static const char *from_bound, *to_bound;

/* RFC 3339 or a date, normalised for SQL; NULL stays NULL. */
static bool parse_bound(const char *name, const char *text, char *out, size_t size,
                        const char **result)
{
    int64_t t;
    *result = NULL;
    if (text == NULL)
        return true;
    if (!time_parse_rfc3339(text, strlen(text), &t) && !time_parse_date(text, strlen(text), &t)) {
        fprintf(stderr, "tally-reporter: --%s: \"%.60s\" is neither RFC 3339 nor YYYY-MM-DD\n",
                name, text);
        return false;
    }
    time_format_rfc3339(t, out, size);
    *result = out;
    return true;
}

static bool check_reconcile(void)
{
    if (!stripe_parse_mode(mode_text, &reconcile_mode)) {
        fprintf(stderr, "tally-reporter: " BAD_MODE_FORMAT "\n", mode_text);
        return false;
    }
    return parse_bound("from", from_text, from_buf, sizeof from_buf, &from_bound) &&
           parse_bound("to", to_text, to_buf, sizeof to_buf, &to_bound);
}

static int run_reconcile(PGconn *db, char *err, size_t err_size)
{
    long long differ = 0;
    if (!outbox_reconcile(db, reconcile_mode, from_bound, to_bound, json_out, stdout, &differ,
                          err, err_size))
        return 2;
    if (!json_out)
        printf("%lld row(s) differ\n", differ);
    return differ > 0 ? 1 : 0;
}

static int run_parked(PGconn *db, char *err, size_t err_size)
{
    long long shown = 0;
    if (!outbox_list_parked(db, (int)limit_rows, json_out, stdout, &shown, err, err_size))
        return 2;
    if (!json_out)
        printf("%lld parked report(s) shown\n", shown);
    return 0;
}

static int run_resolve(PGconn *db, char *err, size_t err_size)
{
    long long resolved = 0;
    if (!outbox_resolve(db, requeue_id, &resolved, err, err_size))
        return 2;
    printf(resolved == 1 ? "report %lld resolved as accepted\n"
                         : "report %lld is not parked: nothing changed\n",
           requeue_id);
    return resolved == 1 ? 0 : 1;
}

static bool check_requeue(void)
{
    if ((requeue_id > 0) == requeue_all) {
        fprintf(stderr, "tally-reporter requeue: give --id N or --all (see --help)\n");
        return false;
    }
    return true;
}

static int run_requeue(PGconn *db, char *err, size_t err_size)
{
    long long requeued = 0;
    if (!outbox_requeue(db, requeue_id, customer_filter, &requeued, err, err_size))
        return 2;
    printf("%lld report(s) requeued\n", requeued);
    return 0;
}

/* An operator command: one row, from which its --help, its settings and
 * what it runs all follow. */
typedef struct {
    const char *name, *usage, *about;
    const cfg_setting *settings;
    size_t setting_count;
    /* Checks the settings before connecting; false: exit 2 (it said why).
     * NULL: nothing to check. */
    bool (*check)(void);
    /* Runs on `db` and says what it did: the exit status, 0 or 1; 2 with
     * `err` filled when the database failed. */
    int (*run)(PGconn *db, char *err, size_t err_size);
} command;

static const command commands[] = {
    {"reconcile", "tally-reporter reconcile [--from T] [--to T] [--json]",
     "Per Stripe customer and meter (or subscription item): units counted, accepted by Stripe, "
     "still\npending, parked. Exit status 0 when counted = accepted + pending for every row, 1 "
     "when\nany row differs (parked or unreported units, or more accepted than counted), 2 on "
     "errors.",
     reconcile_settings, SETTING_COUNT(reconcile_settings), check_reconcile, run_reconcile},
    {"parked", "tally-reporter parked [--limit N] [--json]",
     "Lists the reports Stripe refused for good, with Stripe's message.", parked_settings,
     SETTING_COUNT(parked_settings), NULL, run_parked},
    {"requeue", "tally-reporter requeue (--id N | --all) [--customer cus_...]",
     "Sends parked reports again (after fixing what Stripe refused): each in its own mode, "
     "the\ncustomer and target read again from its key and plan, the same identifier, a new "
     "idempotency\nkey. The running reporter sends them at its next cycle.",
     requeue_settings, SETTING_COUNT(requeue_settings), check_requeue, run_requeue},
    {"resolve", "tally-reporter resolve --id N",
     "Marks a parked report as accepted without sending it, once an operator has checked in "
     "Stripe\nthat it was counted (a usage record whose saved failure kept being replayed, or "
     "one left\nunconfirmed for 23 hours). Its units then count as delivered; nothing is sent.",
     resolve_settings, SETTING_COUNT(resolve_settings), NULL, run_resolve},
};

/* The command named `name`; NULL when there is none. */
static const command *find_command(const char *name)
{
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        if (strcmp(commands[i].name, name) == 0)
            return &commands[i];
    return NULL;
}

static PGconn *connect_or_say(void)
{
    char err[512];
    PGconn *db = db_connect(database_url, "tally-reporter", err, sizeof err);
    if (db == NULL)
        fprintf(stderr, "tally-reporter: %s\n", err);
    return db;
}

static int run_command(const command *cmd, int argc, char **argv)
{
    log_level level;
    char program[64];
    snprintf(program, sizeof program, "tally-reporter %s", cmd->name);
    int status = cfg_start(program, cmd->usage, cmd->about, cmd->settings, cmd->setting_count,
                           argc, argv, &log_level_text, &level);
    if (status >= 0)
        return status;
    log_init("reporter", level);
    if (cmd->check && !cmd->check())
        return 2;
    PGconn *db = connect_or_say();
    if (db == NULL)
        return 2;
    char err[512];
    status = cmd->run(db, err, sizeof err);
    if (status == 2)
        fprintf(stderr, "tally-reporter: %s\n", err);
    PQfinish(db);
    return status;
}

int main(int argc, char **argv)
{
    const command *cmd = argc > 1 ? find_command(argv[1]) : NULL;
    if (cmd)
        return run_command(cmd, argc - 1, argv + 1);
    log_level level;
    int status = cfg_start(
        "tally-reporter",
        "tally-reporter [--once] [--flag value ...] | reconcile | parked | requeue | resolve",
        "Reports the units the collector counted to Stripe as idempotent increments per key / "
        "plan / hour,\nthrough an outbox in PostgreSQL: nothing lost, nothing billed twice. "
        "Subcommands (each has --help):\n"
        "  reconcile  counted vs reported per customer and meter\n"
        "  parked     reports Stripe refused for good\n"
        "  requeue    send parked reports again\n"
        "  resolve    mark a parked report Stripe did count as accepted\n"
        "SIGTERM lets calls in flight finish, records them and exits; a second signal exits at "
        "once.",
        settings, SETTING_COUNT(settings), argc, argv, &log_level_text, &level);
    if (status >= 0)
        return status;
    log_init("reporter", level);
    stopsignal_install();
    last_loop_at = (sig_atomic_t)time(NULL);
    return run_daemon();
}
