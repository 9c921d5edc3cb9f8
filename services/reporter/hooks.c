/* The webhook delivery thread: claim due deliveries, send them over libcurl's
 * multi interface, record every attempt. */
#include "hooks.h"

#include <curl/curl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include "db.h"
#include "hookbox.h"
#include "log.h"
#include "metrics.h"
#include "timeutil.h"

/* The answer kept for the log, and the most read before the transfer is
 * cut (a receiver streaming without end must not hold a slot). */
#define ANSWER_KEEP 1024
#define ANSWER_MAX (64 * 1024)
/* The part of an answer that goes into the attempt's error text. */
#define ANSWER_IN_ERROR 200
/* A claim is held this long past the attempt's timeout before a crashed
 * sender's delivery comes due again. */
#define LEASE_MARGIN_MS 2000
#define LOCK_RETRY_USEC (2 * USEC_PER_SEC)
#define STATS_EVERY_USEC (5 * USEC_PER_SEC)
#define CONNECT_BACKOFF_MAX_USEC (10 * USEC_PER_SEC)

typedef struct transfer {
    struct hooks *owner;
    hookbox_delivery *delivery;
    CURL *easy;
    struct curl_slist *headers;
    char *body;
    int64_t started_usec;
    char answer[ANSWER_KEEP + 1];
    size_t answer_len, answer_total;
    bool answer_cut;             /* aborted past ANSWER_MAX */
    char refused[160];           /* why the address was refused; "" when it was not */
    char curl_error[CURL_ERROR_SIZE];
} transfer;

struct hooks {
    hooks_config config;
    pthread_t thread;
    bool started;
    atomic_bool stop;
    _Atomic int64_t last_loop_usec; /* read by the metrics thread's /healthz */
    PGconn *db;
    bool locked;
    int64_t next_connect_usec, connect_backoff_usec, next_lock_usec, next_claim_usec,
        next_stats_usec;
    CURLM *multi;
    transfer **in_flight;        /* config.concurrency slots; NULL: free */
    int in_flight_count;
    hookbox_outcome *outcomes;   /* finished, not yet recorded */
    char (*outcome_errors)[HOOKBOX_ERROR_MAX];
    char (*outcome_endpoints)[HOOKBOX_ID_MAX + 1];
    size_t outcome_count;
    unsigned jitter_seed;
    metric *m_delivered, *m_failed, *m_parked_total, *m_pending, *m_parked, *m_seconds,
        *m_active;
};

static const double seconds_bounds[] = {0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1,
                                        2.5,  5,     10,   30,  60};

static void register_metrics(hooks *h)
{
    static const char help[] = "webhook attempts by result: delivered (2xx), failed (any "
                               "attempt that did not deliver), parked (given up)";
    h->m_delivered = metrics_counter("tally_webhook_deliveries_total", help,
                                     "result=\"delivered\"");
    h->m_failed = metrics_counter("tally_webhook_deliveries_total", help, "result=\"failed\"");
    h->m_parked_total = metrics_counter("tally_webhook_deliveries_total", help,
                                        "result=\"parked\"");
    h->m_pending = metrics_gauge("tally_webhook_deliveries_pending",
                                 "webhook deliveries not yet delivered nor parked", NULL);
    h->m_parked = metrics_gauge("tally_webhook_deliveries_parked",
                                "webhook deliveries given up, waiting for a resend", NULL);
    h->m_seconds = metrics_histogram("tally_webhook_delivery_seconds",
                                     "time of one webhook attempt, from start to answer or "
                                     "failure",
                                     NULL, seconds_bounds,
                                     sizeof seconds_bounds / sizeof seconds_bounds[0]);
    h->m_active = metrics_gauge("tally_webhook_sender_active",
                                "1 while this process holds the webhook sender lock", NULL);
}

hooks *hooks_new(const hooks_config *config, char *err, size_t err_size)
{
    hooks *h = calloc(1, sizeof *h);
    size_t n = (size_t)config->concurrency;
    if (h) {
        h->in_flight = calloc(n, sizeof *h->in_flight);
        h->outcomes = calloc(n, sizeof *h->outcomes);
        h->outcome_errors = calloc(n, sizeof *h->outcome_errors);
        h->outcome_endpoints = calloc(n, sizeof *h->outcome_endpoints);
        h->multi = curl_multi_init();
    }
    if (!h || !h->in_flight || !h->outcomes || !h->outcome_errors || !h->outcome_endpoints ||
        !h->multi) {
        snprintf(err, err_size, "webhooks: out of memory");
        hooks_stop(h);
        return NULL;
    }
    h->config = *config;
    h->jitter_seed = (unsigned)time_now_usec() ^ (unsigned)getpid();
    atomic_init(&h->stop, false);
    atomic_init(&h->last_loop_usec, 0);
    register_metrics(h);
    return h;
}

/* ---- one attempt ---------------------------------------------------------- */

/* libcurl's open-socket callback: the address about to be dialled, after
 * any name resolution, is checked here, so a name that resolves to a
 * metadata address (or is re-pointed there later) is refused all the same. */
static curl_socket_t open_socket(void *clientp, curlsocktype purpose,
                                 struct curl_sockaddr *address)
{
    transfer *t = clientp;
    (void)purpose;
    hookaddr_class c = hookaddr_classify(&address->addr, address->addrlen);
    if (!hookaddr_allowed(t->owner->config.allow, c)) {
        char text[64];
        hookaddr_format(&address->addr, address->addrlen, text, sizeof text);
        snprintf(t->refused, sizeof t->refused,
                 "address %s refused: %s (TALLY_WEBHOOK_ALLOW_NETWORKS)", text,
                 hookaddr_class_name(c));
        return CURL_SOCKET_BAD;
    }
    return socket(address->family, address->socktype, address->protocol);
}

static size_t on_answer(char *data, size_t size, size_t count, void *userdata)
{
    transfer *t = userdata;
    size_t n = size * count;
    if (t->answer_len < ANSWER_KEEP) {
        size_t keep = ANSWER_KEEP - t->answer_len < n ? ANSWER_KEEP - t->answer_len : n;
        memcpy(t->answer + t->answer_len, data, keep);
        t->answer_len += keep;
    }
    t->answer_total += n;
    if (t->answer_total > ANSWER_MAX) {
        t->answer_cut = true;
        return 0; /* enough: the status is what counts */
    }
    return n;
}

static void transfer_free(transfer *t)
{
    if (t == NULL)
        return;
    if (t->easy)
        curl_easy_cleanup(t->easy);
    curl_slist_free_all(t->headers);
    free(t->body);
    hookbox_delivery_free(t->delivery);
    free(t);
}

static bool url_scheme_allowed(const char *url)
{
    return strncasecmp(url, "https://", 8) == 0 || strncasecmp(url, "http://", 7) == 0;
}

/* Builds the request; false with err for a delivery that cannot be sent
 * at all (it is recorded as a failed attempt). */
static bool transfer_prepare(hooks *h, transfer *t, char *err, size_t err_size)
{
    hookbox_delivery *d = t->delivery;
    if (!url_scheme_allowed(d->url)) {
        snprintf(err, err_size, "the endpoint's url is neither http:// nor https://");
        return false;
    }
    t->body = malloc(HOOKWIRE_BODY_MAX);
    if (t->body == NULL || !hookwire_body(&d->alert, t->body, HOOKWIRE_BODY_MAX)) {
        snprintf(err, err_size, "the delivery's body could not be built");
        return false;
    }
    size_t body_len = strlen(t->body);
    char signature[HOOKWIRE_SIGNATURE_MAX], header[HOOKWIRE_SIGNATURE_MAX + 32];
    if (!hookwire_signature(d->secret, d->previous_secret, time_now_usec() / USEC_PER_SEC,
                            t->body, body_len, signature, sizeof signature)) {
        snprintf(err, err_size, "the signature could not be built");
        return false;
    }
    snprintf(header, sizeof header, "Tally-Signature: %s", signature);
    /* The event id goes into a header only when it is a plain token (the
     * migration's are "evt_" and hex): never a line break from a row. */
    char event_header[160] = "Expect:";
    size_t id_len = strlen(d->alert.event_id);
    if (id_len <= 128 && strspn(d->alert.event_id, "abcdefghijklmnopqrstuvwxyz"
                                                   "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.:-") ==
                             id_len)
        snprintf(event_header, sizeof event_header, "Tally-Event-Id: %s", d->alert.event_id);
    const char *lines[] = {"Content-Type: application/json", header, event_header, "Expect:"};
    for (size_t i = 0; i < sizeof lines / sizeof lines[0]; i++) {
        struct curl_slist *next = curl_slist_append(t->headers, lines[i]);
        if (next == NULL) {
            snprintf(err, err_size, "out of memory");
            return false;
        }
        t->headers = next;
    }
    t->easy = curl_easy_init();
    if (t->easy == NULL) {
        snprintf(err, err_size, "curl_easy_init failed");
        return false;
    }
    CURL *e = t->easy;
    curl_easy_setopt(e, CURLOPT_PRIVATE, t);
    curl_easy_setopt(e, CURLOPT_URL, d->url);
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, t->headers);
    curl_easy_setopt(e, CURLOPT_POSTFIELDS, t->body);
    curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE, (long)body_len);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_answer);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, t);
    curl_easy_setopt(e, CURLOPT_OPENSOCKETFUNCTION, open_socket);
    curl_easy_setopt(e, CURLOPT_OPENSOCKETDATA, t);
    curl_easy_setopt(e, CURLOPT_ERRORBUFFER, t->curl_error);
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, h->config.timeout_ms);
    curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, h->config.timeout_ms);
    /* http and https only, no redirects (a 3xx is a failed attempt), no
     * proxy from the environment (the address checked must be the one
     * dialled). */
    curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, 0L);
    curl_easy_setopt(e, CURLOPT_PROXY, "");
    curl_easy_setopt(e, CURLOPT_SSL_VERIFYPEER, 1L);
    curl_easy_setopt(e, CURLOPT_SSL_VERIFYHOST, 2L);
    curl_easy_setopt(e, CURLOPT_USERAGENT, "tally-webhooks/1.0");
    return true;
}

/* ---- outcomes ------------------------------------------------------------- */

static void add_outcome(hooks *h, const hookbox_delivery *d, int64_t started_usec,
                        long http_status, const char *error, hookwire_outcome result)
{
    /* One outcome per slot at most: there are as many as slots, and
     * outcomes are recorded before anything new is claimed. */
    size_t i = h->outcome_count++;
    hookbox_outcome *o = &h->outcomes[i];
    snprintf(h->outcome_endpoints[i], sizeof h->outcome_endpoints[i], "%s", d->endpoint_id);
    snprintf(h->outcome_errors[i], sizeof h->outcome_errors[i], "%s", error ? error : "");
    int64_t now = time_now_usec();
    double seconds = (double)(now - started_usec) / 1e6;
    *o = (hookbox_outcome){
        .alert_id = d->alert_id,
        .endpoint_id = h->outcome_endpoints[i],
        .attempted_usec = started_usec,
        .http_status = http_status,
        .error = error ? h->outcome_errors[i] : NULL,
        .duration_ms = (int)(seconds * 1000),
    };
    metrics_observe(h->m_seconds, seconds);
    if (result == HOOKWIRE_DELIVERED) {
        o->status = HOOKBOX_DELIVERED;
        metrics_add(h->m_delivered, 1);
        log_debug("webhook %s delivered to endpoint %s (HTTP %ld, %.3f s)", d->alert.event_id,
                  d->endpoint_id, http_status, seconds);
        return;
    }
    metrics_add(h->m_failed, 1);
    double jitter = (double)rand_r(&h->jitter_seed) / ((double)RAND_MAX + 1.0);
    bool again = result == HOOKWIRE_RETRY &&
                 hookwire_next_delay_ms(&h->config.schedule, d->attempts + 1, jitter,
                                        &o->next_delay_ms);
    o->status = again ? HOOKBOX_PENDING : HOOKBOX_PARKED;
    if (!again)
        metrics_add(h->m_parked_total, 1);
    log_warn("webhook %s to endpoint %s, attempt %d: %s; %s", d->alert.event_id, d->endpoint_id,
             d->attempts + 1, error ? error : "failed",
             again ? "retrying later" : result == HOOKWIRE_GONE ? "parked (410 Gone)"
                                                                 : "parked (retry window spent)");
}

/* The failed attempt's error text: the refusal, curl's words, or the
 * status with the start of the answer. */
static void describe_failure(const transfer *t, CURLcode rc, long status, char *out,
                             size_t size)
{
    if (t->refused[0]) {
        snprintf(out, size, "%s", t->refused);
    } else if (rc != CURLE_OK && !(t->answer_cut && status > 0)) {
        snprintf(out, size, "%s", t->curl_error[0] ? t->curl_error : curl_easy_strerror(rc));
    } else {
        char answer[ANSWER_IN_ERROR + 1];
        hookwire_printable(t->answer, t->answer_len, ANSWER_IN_ERROR, answer);
        snprintf(out, size, "HTTP %ld: %s", status, answer);
    }
}

static void finish(hooks *h, transfer *t, CURLcode rc)
{
    long status = 0;
    curl_easy_getinfo(t->easy, CURLINFO_RESPONSE_CODE, &status);
    /* An answer cut for its size still said its status; any other
     * transport failure delivered nothing, whatever status came first. */
    bool answered = rc == CURLE_OK || (t->answer_cut && status > 0);
    hookwire_outcome result = answered ? hookwire_classify(status) : HOOKWIRE_RETRY;
    char error[HOOKBOX_ERROR_MAX] = "";
    if (result != HOOKWIRE_DELIVERED)
        describe_failure(t, rc, status, error, sizeof error);
    add_outcome(h, t->delivery, t->started_usec, status, error[0] ? error : NULL, result);
}

static int free_slot(const hooks *h)
{
    for (int i = 0; i < h->config.concurrency; i++)
        if (h->in_flight[i] == NULL)
            return i;
    return -1;
}

/* hookbox_claim's take: starts the attempt (ours from now on). */
static void start(void *ctx, hookbox_delivery *d)
{
    hooks *h = ctx;
    int slot = free_slot(h);
    transfer *t = calloc(1, sizeof *t);
    if (slot < 0 || t == NULL) {
        /* cannot happen (claims never exceed the free slots); the lease
         * brings the delivery back */
        free(t);
        hookbox_delivery_free(d);
        return;
    }
    t->owner = h;
    t->delivery = d;
    t->started_usec = time_now_usec();
    char err[HOOKBOX_ERROR_MAX];
    if (!transfer_prepare(h, t, err, sizeof err)) {
        add_outcome(h, d, t->started_usec, 0, err, HOOKWIRE_RETRY);
        transfer_free(t);
        return;
    }
    CURLMcode mc = curl_multi_add_handle(h->multi, t->easy);
    if (mc != CURLM_OK) {
        add_outcome(h, d, t->started_usec, 0, curl_multi_strerror(mc), HOOKWIRE_RETRY);
        transfer_free(t);
        return;
    }
    h->in_flight[slot] = t;
    h->in_flight_count++;
}

static void reap(hooks *h)
{
    CURLMsg *msg;
    int left;
    while ((msg = curl_multi_info_read(h->multi, &left)) != NULL) {
        if (msg->msg != CURLMSG_DONE)
            continue;
        transfer *t = NULL;
        curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **)&t);
        CURLcode rc = msg->data.result;
        curl_multi_remove_handle(h->multi, msg->easy_handle);
        finish(h, t, rc);
        for (int i = 0; i < h->config.concurrency; i++)
            if (h->in_flight[i] == t) {
                h->in_flight[i] = NULL;
                h->in_flight_count--;
            }
        transfer_free(t);
    }
}

/* ---- the database side ---------------------------------------------------- */

static void db_failed(hooks *h, const char *err)
{
    log_warn("webhooks: %s", err);
    if (h->db && db_connection_lost(h->db)) {
        PQfinish(h->db);
        h->db = NULL;
        h->locked = false;
        metrics_set(h->m_active, 0);
    }
}

static bool ensure_db(hooks *h, int64_t now)
{
    if (h->db)
        return true;
    if (now < h->next_connect_usec)
        return false;
    char err[512];
    h->db = db_connect(h->config.database_url, "tally-reporter-webhooks", err, sizeof err);
    if (h->db == NULL) {
        h->connect_backoff_usec = h->connect_backoff_usec ? h->connect_backoff_usec * 2
                                                          : 250 * 1000;
        if (h->connect_backoff_usec > CONNECT_BACKOFF_MAX_USEC)
            h->connect_backoff_usec = CONNECT_BACKOFF_MAX_USEC;
        h->next_connect_usec = now + h->connect_backoff_usec;
        log_warn("webhooks: %s", err);
        return false;
    }
    h->connect_backoff_usec = 0;
    return true;
}

static void ensure_lock(hooks *h, int64_t now)
{
    if (h->locked || now < h->next_lock_usec)
        return;
    h->next_lock_usec = now + LOCK_RETRY_USEC;
    bool held = false;
    char err[512];
    if (!hookbox_try_lock(h->db, &held, err, sizeof err)) {
        db_failed(h, err);
        return;
    }
    if (held)
        log_info("webhooks: this reporter delivers webhooks (holds the webhook sender lock)");
    h->locked = held;
    metrics_set(h->m_active, held ? 1 : 0);
}

static bool record(hooks *h)
{
    if (h->outcome_count == 0)
        return true;
    if (h->db == NULL)
        return false;
    char err[512];
    if (!hookbox_record(h->db, h->outcomes, h->outcome_count, err, sizeof err)) {
        db_failed(h, err);
        return false;
    }
    h->outcome_count = 0;
    return true;
}

static void claim(hooks *h, int64_t now)
{
    int free_slots = h->config.concurrency - h->in_flight_count;
    if (free_slots <= 0 || now < h->next_claim_usec)
        return;
    const char **endpoints = calloc((size_t)h->config.concurrency, sizeof *endpoints);
    if (endpoints == NULL)
        return;
    size_t busy_count = 0;
    for (int i = 0; i < h->config.concurrency; i++)
        if (h->in_flight[i])
            endpoints[busy_count++] = h->in_flight[i]->delivery->endpoint_id;
    int claimed = 0;
    char err[512];
    int64_t lease_ms = h->config.timeout_ms + LEASE_MARGIN_MS;
    if (!hookbox_claim(h->db, endpoints, busy_count, h->config.per_endpoint, free_slots, lease_ms,
                       start, h, &claimed, err, sizeof err))
        db_failed(h, err);
    free(endpoints);
    /* A full claim may have left more due: look again at once. */
    h->next_claim_usec = claimed == free_slots ? now : now + h->config.poll_ms * 1000LL;
}

static void read_stats(hooks *h, int64_t now)
{
    if (now < h->next_stats_usec)
        return;
    h->next_stats_usec = now + STATS_EVERY_USEC;
    hookbox_stats st;
    char err[512];
    if (!hookbox_stats_read(h->db, &st, err, sizeof err)) {
        db_failed(h, err);
        return;
    }
    metrics_set(h->m_pending, (double)st.pending);
    metrics_set(h->m_parked, (double)st.parked);
}

/* ---- the loop ------------------------------------------------------------- */

static void *run(void *arg)
{
    hooks *h = arg;
    while (true) {
        bool stopping = atomic_load(&h->stop);
        if (stopping && h->in_flight_count == 0)
            break;
        int64_t now = time_now_usec();
        atomic_store(&h->last_loop_usec, now);
        if (ensure_db(h, now)) {
            ensure_lock(h, now);
            /* Outcomes first: nothing new is claimed over unrecorded ones. */
            if (h->db && record(h) && h->locked && !stopping)
                claim(h, now);
            if (h->db && h->locked)
                read_stats(h, now);
        }
        int running = 0;
        curl_multi_perform(h->multi, &running);
        reap(h);
        int wait_ms = h->config.poll_ms < 100 ? h->config.poll_ms : 100;
        curl_multi_poll(h->multi, NULL, 0, wait_ms, NULL);
        curl_multi_perform(h->multi, &running);
        reap(h);
    }
    /* Record what finished; a few tries if the database blinks. */
    for (int i = 0; i < 20 && !record(h); i++) {
        usleep(250 * 1000);
        ensure_db(h, time_now_usec());
    }
    if (h->outcome_count)
        log_warn("webhooks: %zu attempt outcomes could not be recorded; those deliveries are "
                 "sent again (same event ids)",
                 h->outcome_count);
    return NULL;
}

double hooks_idle_seconds(const hooks *h)
{
    int64_t last = atomic_load(&h->last_loop_usec);
    return last ? (double)(time_now_usec() - last) / 1e6 : 0;
}

bool hooks_start(hooks *h, char *err, size_t err_size)
{
    atomic_store(&h->last_loop_usec, time_now_usec());
    int rc = pthread_create(&h->thread, NULL, run, h);
    if (rc != 0) {
        snprintf(err, err_size, "webhooks: pthread_create: %s", strerror(rc));
        return false;
    }
    h->started = true;
    return true;
}

void hooks_stop(hooks *h)
{
    if (h == NULL)
        return;
    if (h->started) {
        atomic_store(&h->stop, true);
        pthread_join(h->thread, NULL);
    }
    if (h->multi)
        curl_multi_cleanup(h->multi);
    if (h->db)
        PQfinish(h->db);
    free(h->in_flight);
    free(h->outcomes);
    free(h->outcome_errors);
    free(h->outcome_endpoints);
    free(h);
}
