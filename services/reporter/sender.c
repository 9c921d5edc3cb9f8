#include "sender.h"

#include <curl/curl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include "buf.h"
#include "digest.h"
#include "hashindex.h"
#include "log.h"
#include "metrics.h"
#include "timeutil.h"
#include "tokenbucket.h"
#include "utf8.h"

/* An answer body past this is cut (Stripe's errors are a few hundred bytes). */
#define REPLY_MAX (64 * 1024)
/* Stripe may forget idempotency keys after 24 hours, and promises meter
 * event identifiers for "at least 24 hours": a report still unconfirmed
 * after this long is parked rather than retried into a double count. */
#define STALE_REPORT_USEC (23 * USEC_PER_HOUR)
/* After this many retryable failures in a row (any report), everything
 * pauses: Stripe or the network is down, hammering it helps nobody. */
#define OUTAGE_FAILURES 20
#define OUTAGE_PAUSE_MAX_USEC (60 * USEC_PER_SEC)
#define AUTH_PAUSE_USEC (30 * USEC_PER_SEC)
/* Lanes (one per customer and target) with nothing queued are dropped once
 * the lanes outnumber twice the reports in memory by this many: a daemon
 * reporting for millions of customers over months would otherwise keep one
 * forever for every customer it ever saw. */
#define IDLE_LANES_KEPT 1024
#define LANES_MIN_ROOM 512 /* an index of 1,024 slots */

typedef struct lane {
    char *name;                 /* "<mode>\x1f<customer>\x1f<target>" */
    uint64_t hash;
    report *head, *tail;
    bool busy;                  /* a call in flight */
    bool scheduled;             /* on the ready FIFO or the delayed list */
    struct lane *next;          /* link in that list */
} lane;

typedef struct {
    CURL *easy;
    struct curl_slist *headers;
    stripe_request request;     /* the call in flight (curl copies the body) */
    buf reply;
    stripe_answer answer;       /* its headers as they arrive */
    report *r;
    lane *l;
    char curl_error[CURL_ERROR_SIZE];
    int64_t started_usec;
} slot;

struct sender {
    sender_config cfg;
    char *auth_header;
    CURLM *multi;
    slot *slots;
    int free_count;
    int *free_slots;
    /* lanes: each its own allocation (the ready and delayed lists link
     * them), numbered 0..lane_count-1 in `lanes`, found by `lane_index` */
    lane **lanes;
    size_t lane_count, lane_room;
    hashindex lane_index;
    lane *ready_head, *ready_tail;  /* may start now */
    lane *delayed;                  /* waiting for a backoff */
    /* dirty reports, written by the caller */
    report **dirty;
    size_t dirty_count, dirty_cap;
    size_t in_memory, in_flight;
    tokenbucket bucket;
    double rate;                    /* the effective rate: the ceiling, lower after 429s */
    int64_t rate_recovered_usec, rate_lowered_usec;
    int64_t pause_until_usec;
    int consecutive_failures;
    int outage_pauses;
    bool hold, auth_failed;
    int64_t auth_logged_usec;
    sender_totals totals;
    metric *m_sent, *m_accepted, *m_duplicates, *m_retried, *m_rate_limited, *m_parked,
        *m_new_keys, *m_units, *m_latency, *m_in_flight, *m_rate, *m_lanes, *m_in_memory;
};

/* ---- lanes ------------------------------------------------------------- */

/* A lane no report and no list refers to: nothing is queued in it, no
 * call of it is in flight, it is on neither the ready FIFO nor the delayed
 * list. */
static bool lane_unused(const lane *l)
{
    return l->head == NULL && !l->busy && !l->scheduled;
}

static void lane_free(lane *l)
{
    free(l->name);
    free(l);
}

/* What lane_for looks up: a lane's name and its hash. */
typedef struct {
    const char *name;
    uint64_t hash;
} lane_key;

static bool lane_matches(const void *entries, uint32_t index, const void *key)
{
    const lane *l = ((lane *const *)entries)[index];
    const lane_key *k = key;
    return l->hash == k->hash && strcmp(l->name, k->name) == 0;
}

static uint64_t lane_hash(const void *entries, uint32_t index)
{
    return ((lane *const *)entries)[index]->hash;
}

/* An empty lane array with room for `room` lanes and its index. False
 * (nothing allocated) when out of memory. */
static bool lanes_alloc(size_t room, lane ***lanes, hashindex *index)
{
    *lanes = malloc(room * sizeof **lanes);
    if (*lanes == NULL)
        return false;
    if (!hashindex_init(index, room)) {
        free(*lanes);
        *lanes = NULL;
        return false;
    }
    return true;
}

/* Room for one more lane: the index grows once half full, the array
 * doubles when full. */
static bool lanes_reserve(sender *s)
{
    if (hashindex_full(&s->lane_index) && !hashindex_grow(&s->lane_index, lane_hash, s->lanes))
        return false;
    if (s->lane_count < s->lane_room)
        return true;
    lane **grown = realloc(s->lanes, s->lane_room * 2 * sizeof *grown);
    if (grown == NULL)
        return false;
    s->lanes = grown;
    s->lane_room *= 2;
    return true;
}

/* Drops the unused lanes once they are many; the array and the index shrink
 * to fit the rest (the index at most half full). Costs one pass over the
 * lanes, after at least IDLE_LANES_KEPT new lanes. The kept lanes are
 * indexed afresh before anything is freed, so running out of memory
 * changes nothing. */
static void lanes_trim(sender *s)
{
    if (s->lane_count <= s->in_memory * 2 + IDLE_LANES_KEPT)
        return;
    size_t used = 0;
    for (size_t i = 0; i < s->lane_count; i++)
        if (!lane_unused(s->lanes[i]))
            used++;
    size_t room = used + 1 < LANES_MIN_ROOM ? LANES_MIN_ROOM : used + 1;
    lane **kept;
    hashindex index;
    bool ok = lanes_alloc(room, &kept, &index);
    size_t count = 0;
    for (size_t i = 0; ok && i < s->lane_count; i++) {
        if (lane_unused(s->lanes[i]))
            continue;
        kept[count] = s->lanes[i];
        ok = hashindex_add(&index, kept[count]->hash, (uint32_t)count);
        count++;
    }
    if (!ok) {
        if (kept) {
            free(kept);
            hashindex_free(&index);
        }
        log_warn("out of memory trimming the reporter's lanes; trying again later");
        return;
    }
    for (size_t i = 0; i < s->lane_count; i++)
        if (lane_unused(s->lanes[i]))
            lane_free(s->lanes[i]);
    free(s->lanes);
    hashindex_free(&s->lane_index);
    s->lanes = kept;
    s->lane_room = room;
    s->lane_count = count;
    s->lane_index = index;
}

/* The lane of `r`'s customer and target, made when it has none; NULL when
 * out of memory. */
static lane *lane_for(sender *s, const report *r)
{
    char name[512];
    snprintf(name, sizeof name, "%s\x1f%s\x1f%s", stripe_mode_column(r->mode), r->customer,
             r->target);
    lane_key key = {.name = name, .hash = digest_fnv1a(name, strlen(name))};
    long found = hashindex_find(&s->lane_index, key.hash, lane_matches, s->lanes, &key);
    if (found >= 0)
        return s->lanes[found];
    if (!lanes_reserve(s))
        return NULL;
    lane *l = calloc(1, sizeof *l);
    if (l == NULL || (l->name = strdup(name)) == NULL) {
        free(l);
        return NULL;
    }
    l->hash = key.hash;
    if (!hashindex_add(&s->lane_index, l->hash, (uint32_t)s->lane_count)) {
        lane_free(l);
        return NULL;
    }
    s->lanes[s->lane_count++] = l;
    return l;
}

/* Puts an idle lane with work where the dispatcher finds it. */
static void lane_schedule(sender *s, lane *l, int64_t now)
{
    if (l->busy || l->scheduled || l->head == NULL)
        return;
    l->scheduled = true;
    l->next = NULL;
    if (l->head->ready_usec <= now) {
        if (s->ready_tail)
            s->ready_tail->next = l;
        else
            s->ready_head = l;
        s->ready_tail = l;
    } else {
        l->next = s->delayed;
        s->delayed = l;
    }
}

static lane *ready_pop(sender *s)
{
    lane *l = s->ready_head;
    if (l) {
        s->ready_head = l->next;
        if (s->ready_head == NULL)
            s->ready_tail = NULL;
        l->next = NULL;
        l->scheduled = false;
    }
    return l;
}

/* Moves delayed lanes whose head is due to the ready FIFO. */
static void promote_delayed(sender *s, int64_t now)
{
    lane **link = &s->delayed;
    while (*link) {
        lane *l = *link;
        if (l->head->ready_usec <= now) {
            *link = l->next;
            l->scheduled = false;
            lane_schedule(s, l, now);
        } else {
            link = &l->next;
        }
    }
}

static int64_t next_delayed_usec(const sender *s)
{
    int64_t next = INT64_MAX;
    for (const lane *l = s->delayed; l; l = l->next)
        if (l->head->ready_usec < next)
            next = l->head->ready_usec;
    return next;
}

/* ---- set-up ------------------------------------------------------------ */

static size_t on_body(char *data, size_t size, size_t n, void *ctx)
{
    slot *sl = ctx;
    size_t len = size * n;
    size_t room = sl->reply.max - sl->reply.len;
    /* past the limit the rest is dropped, not an error: the status decides */
    if (!buf_append(&sl->reply, data, len < room ? len : room)) {
        /* out of memory: the answer is read as having no body */
    }
    return len;
}

/* Stripe's headers are read as they arrive; stripe.c says which matter. */
static size_t on_header(char *line, size_t size, size_t n, void *ctx)
{
    slot *sl = ctx;
    stripe_answer_header(&sl->answer, line, size * n);
    return size * n;
}

static void register_metrics(sender *s)
{
    static const double bounds[] = {0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30};
    s->m_sent = metrics_counter("tally_reporter_calls_total", "calls made to Stripe", NULL);
    s->m_accepted = metrics_counter("tally_reporter_reports_accepted_total",
                                    "reports Stripe counted (duplicates included)", NULL);
    s->m_duplicates = metrics_counter(
        "tally_reporter_reports_duplicate_total",
        "reports Stripe refused as a repeated identifier: counted earlier, so delivered", NULL);
    s->m_retried = metrics_counter("tally_reporter_calls_retried_total",
                                   "calls that failed in a retryable way (429s included)", NULL);
    s->m_rate_limited = metrics_counter("tally_reporter_rate_limited_total",
                                        "429 answers; each one halves the request rate", NULL);
    s->m_parked = metrics_counter("tally_reporter_reports_parked_total",
                                  "reports Stripe refused for good, left for an operator", NULL);
    s->m_new_keys = metrics_counter(
        "tally_reporter_idempotency_keys_renewed_total",
        "meter events retried under a new idempotency key after replayed failures", NULL);
    s->m_units = metrics_counter("tally_reporter_units_accepted_total",
                                 "units in the reports Stripe counted", NULL);
    s->m_latency = metrics_histogram("tally_reporter_call_seconds", "Stripe call duration", NULL,
                                     bounds, sizeof bounds / sizeof bounds[0]);
    s->m_in_flight = metrics_gauge("tally_reporter_calls_in_flight", "calls in flight", NULL);
    s->m_rate = metrics_gauge("tally_reporter_request_rate",
                              "the current request rate ceiling (calls/s; lowered by 429s)", NULL);
    s->m_lanes = metrics_gauge("tally_reporter_lanes",
                               "customer and target queues held in memory (unused ones are "
                               "dropped once 1,024 more than twice the reports in memory)",
                               NULL);
    s->m_in_memory = metrics_gauge("tally_reporter_reports_in_memory",
                                   "reports held in memory: queued, in flight, or done and not "
                                   "yet written (at most 20,000)", NULL);
}

sender *sender_new(const sender_config *config, char *err, size_t err_size)
{
    sender *s = calloc(1, sizeof *s);
    if (s == NULL) {
        snprintf(err, err_size, "out of memory");
        return NULL;
    }
    s->cfg = *config;
    s->auth_header = stripe_authorization(config->api_key);
    s->multi = curl_multi_init();
    s->slots = calloc((size_t)config->concurrency, sizeof *s->slots);
    s->free_slots = calloc((size_t)config->concurrency, sizeof *s->free_slots);
    if (s->auth_header == NULL || s->multi == NULL || s->slots == NULL || s->free_slots == NULL ||
        !lanes_alloc(LANES_MIN_ROOM, &s->lanes, &s->lane_index)) {
        snprintf(err, err_size, "out of memory");
        sender_free(s);
        return NULL;
    }
    s->lane_room = LANES_MIN_ROOM;
    curl_multi_setopt(s->multi, CURLMOPT_MAX_HOST_CONNECTIONS, (long)config->concurrency);
    for (int i = 0; i < config->concurrency; i++) {
        slot *sl = &s->slots[i];
        stripe_request_init(&sl->request);
        buf_init(&sl->reply, REPLY_MAX);
        sl->easy = curl_easy_init();
        if (sl->easy == NULL) {
            snprintf(err, err_size, "curl_easy_init failed");
            sender_free(s);
            return NULL;
        }
        CURL *e = sl->easy;
        curl_easy_setopt(e, CURLOPT_PRIVATE, sl);
        curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_body);
        curl_easy_setopt(e, CURLOPT_WRITEDATA, sl);
        curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, on_header);
        curl_easy_setopt(e, CURLOPT_HEADERDATA, sl);
        curl_easy_setopt(e, CURLOPT_ERRORBUFFER, sl->curl_error);
        curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
        curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, config->timeout_ms);
        curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS,
                         config->timeout_ms < 10000 ? config->timeout_ms : 10000L);
        curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
        curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, 0L);
        /* TLS: verify the peer and the host name (libcurl's defaults, made
         * explicit so no build or environment can weaken them). */
        curl_easy_setopt(e, CURLOPT_SSL_VERIFYPEER, 1L);
        curl_easy_setopt(e, CURLOPT_SSL_VERIFYHOST, 2L);
        curl_easy_setopt(e, CURLOPT_USERAGENT, "tally-reporter/1.0");
        curl_easy_setopt(e, CURLOPT_TCP_KEEPALIVE, 1L);
        s->free_slots[s->free_count++] = i;
    }
    s->rate = config->rate_limit;
    tokenbucket_init(&s->bucket, 1, time_now_usec());
    register_metrics(s);
    metrics_set(s->m_rate, s->rate);
    return s;
}

static void free_lane_reports(lane *l)
{
    for (report *r = l->head, *next; r; r = next) {
        next = r->lane_next;
        if (!r->dirty)
            report_free(r); /* dirty ones are on the dirty list and freed there */
    }
}

void sender_free(sender *s)
{
    if (s == NULL)
        return;
    for (int i = 0; s->slots && i < s->cfg.concurrency; i++) {
        slot *sl = &s->slots[i];
        if (sl->easy) {
            if (sl->r)
                curl_multi_remove_handle(s->multi, sl->easy);
            curl_easy_cleanup(sl->easy);
        }
        curl_slist_free_all(sl->headers);
        stripe_request_free(&sl->request);
        buf_free(&sl->reply);
    }
    for (size_t i = 0; i < s->lane_count; i++) {
        free_lane_reports(s->lanes[i]);
        lane_free(s->lanes[i]);
    }
    for (size_t i = 0; i < s->dirty_count; i++)
        report_free(s->dirty[i]);
    free(s->dirty);
    free(s->lanes);
    hashindex_free(&s->lane_index);
    if (s->multi)
        curl_multi_cleanup(s->multi);
    if (s->auth_header) {
        explicit_bzero(s->auth_header, strlen(s->auth_header));
        free(s->auth_header);
    }
    free(s->slots);
    free(s->free_slots);
    free(s);
}

/* ---- queueing and outcomes -------------------------------------------- */

static void mark_dirty(sender *s, report *r)
{
    if (r->dirty)
        return;
    if (s->dirty_count == s->dirty_cap) {
        size_t cap = s->dirty_cap ? s->dirty_cap * 2 : 1024;
        report **fresh = realloc(s->dirty, cap * sizeof *fresh);
        if (fresh == NULL) {
            /* The state is still in memory: it is written once there is
             * room, or the report is simply sent again after a restart. */
            log_warn("out of memory recording an outcome");
            return;
        }
        s->dirty = fresh;
        s->dirty_cap = cap;
    }
    r->dirty = true;
    s->dirty[s->dirty_count++] = r;
}

void sender_add(sender *s, report *r)
{
    lane *l = lane_for(s, r);
    if (l == NULL) {
        log_error("out of memory queueing report %lld; it stays pending in the database",
                  (long long)r->id);
        report_free(r);
        return;
    }
    r->lane_next = NULL;
    if (l->tail)
        l->tail->lane_next = r;
    else
        l->head = r;
    l->tail = r;
    s->in_memory++;
    lane_schedule(s, l, time_now_usec());
}

/* Cuts `text` where snprintf may have split a character: the database
 * refuses invalid UTF-8, and Stripe's messages are not ASCII-only. */
static void cut_utf8_tail(char *text)
{
    text[utf8_valid_prefix(text, strlen(text))] = '\0';
}

static void clear_error(report *r)
{
    free(r->last_error);
    r->last_error = NULL;
}

/* The text is formatted aside first: the arguments may include the report's
 * current error (the 23-hour park quotes it). */
static void set_error(report *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void set_error(report *r, const char *fmt, ...)
{
    char text[REPORT_ERROR_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(text, sizeof text, fmt, ap);
    va_end(ap);
    cut_utf8_tail(text);
    char *kept = strdup(text);
    if (kept == NULL)
        log_warn("report %lld: out of memory keeping its error: %s", (long long)r->id, text);
    clear_error(r);
    r->last_error = kept;
}

/* For log lines: a report's error, or "" when it has none. */
static const char *error_text(const report *r)
{
    return r->last_error ? r->last_error : "";
}

static double jitter(void)
{
    uint32_t v = 0;
    if (getrandom(&v, sizeof v, 0) != sizeof v)
        v = (uint32_t)time_now_usec();
    return (double)v / 4294967295.0;
}

/* A done report leaves its lane; the lane goes back to the dispatcher. */
static void lane_release(sender *s, lane *l, report *r, int64_t now)
{
    l->busy = false;
    r->in_flight = false;
    if (r->status != REPORT_PENDING || r->given_up) {
        l->head = r->lane_next;
        if (l->head == NULL)
            l->tail = NULL;
        r->lane_next = NULL;
    }
    lane_schedule(s, l, now);
}

/* --once: the report stays pending in the database for a later run;
 * lane_release takes it out of its lane, the flush frees it. */
static void give_up(sender *s, report *r)
{
    r->given_up = true;
    s->totals.given_up++;
}

static void schedule_retry(sender *s, report *r, int64_t now, int failures)
{
    r->ready_usec = now + (int64_t)(stripe_backoff_s(failures, jitter()) * 1e6);
    if (s->cfg.give_up_after > 0 && ++r->run_failures >= s->cfg.give_up_after)
        give_up(s, r);
}

static void note_failure(sender *s, int64_t now)
{
    if (++s->consecutive_failures < OUTAGE_FAILURES)
        return;
    int64_t pause = USEC_PER_SEC << (s->outage_pauses < 6 ? s->outage_pauses : 6);
    if (pause > OUTAGE_PAUSE_MAX_USEC)
        pause = OUTAGE_PAUSE_MAX_USEC;
    s->outage_pauses++;
    s->consecutive_failures = 0;
    if (now + pause > s->pause_until_usec)
        s->pause_until_usec = now + pause;
    log_warn("%d calls in a row failed; pausing all calls for %lld s", OUTAGE_FAILURES,
             (long long)(pause / USEC_PER_SEC));
}

/* The report's error text for an answer (or for no answer). */
static void record_answer_error(report *r, const stripe_verdict *v, long status,
                                const char *transport_error)
{
    if (v->outcome == STRIPE_AUTH_FAILED)
        /* Stripe's message shows part of the key: keep only the code */
        set_error(r, "HTTP %ld %s%s%s: Stripe refused the API key", status, v->type,
                  v->code[0] ? "/" : "", v->code);
    else if (status == 0)
        set_error(r, "no answer: %s", transport_error);
    else if (v->message[0])
        set_error(r, "HTTP %ld %s%s%s: %s", status, v->type, v->code[0] ? "/" : "", v->code,
                  v->message);
    else
        set_error(r, "HTTP %ld without a Stripe error body", status);
}

static void handle_answer(sender *s, slot *sl, CURLcode result, int64_t now)
{
    report *r = sl->r;
    lane *l = sl->l;
    long status = 0;
    if (result == CURLE_OK)
        curl_easy_getinfo(sl->easy, CURLINFO_RESPONSE_CODE, &status);
    metrics_observe(s->m_latency, (double)(now - sl->started_usec) / 1e6);
    sl->answer.http_status = status;
    sl->answer.body = sl->reply.data;
    sl->answer.body_len = sl->reply.len;
    stripe_verdict verdict;
    stripe_classify(r->mode, &sl->answer, r->replayed_failures, &verdict);
    stripe_outcome outcome = verdict.outcome;
    r->replayed_failures = verdict.replayed_failures;
    r->last_http_status = (int)status;
    record_answer_error(r, &verdict, status,
                        sl->curl_error[0] ? sl->curl_error : curl_easy_strerror(result));
    if (outcome != STRIPE_RETRY && outcome != STRIPE_RATE_LIMITED && outcome != STRIPE_NEW_KEY)
        s->consecutive_failures = 0;
    if (outcome == STRIPE_ACCEPTED || outcome == STRIPE_DUPLICATE) {
        s->outage_pauses = 0;
        s->auth_failed = false;
    }

    switch (outcome) {
    case STRIPE_ACCEPTED:
    case STRIPE_DUPLICATE:
        r->status = REPORT_ACCEPTED;
        if (outcome == STRIPE_ACCEPTED) {
            clear_error(r);
        } else {
            set_error(r, "duplicate identifier: Stripe had counted it already");
            s->totals.duplicates++;
            metrics_add(s->m_duplicates, 1);
        }
        s->totals.accepted++;
        s->totals.units_accepted += r->quantity;
        metrics_add(s->m_accepted, 1);
        metrics_add(s->m_units, (uint64_t)r->quantity);
        break;
    case STRIPE_RATE_LIMITED:
        /* 429 slows everybody down: halve the rate and pause all calls
         * briefly, at most once a second (the answers of calls already in
         * flight say nothing new), never below a tenth of the ceiling. */
        s->totals.rate_limited++;
        metrics_add(s->m_rate_limited, 1);
        if (now - s->rate_lowered_usec >= USEC_PER_SEC) {
            double floor = s->cfg.rate_limit / 10 < 0.1 ? 0.1 : s->cfg.rate_limit / 10;
            s->rate = s->rate / 2 < floor ? floor : s->rate / 2;
            s->rate_lowered_usec = s->rate_recovered_usec = now;
            metrics_set(s->m_rate, s->rate);
            int64_t pause = now + (int64_t)(stripe_backoff_s(1, jitter()) * 1e6);
            if (pause > s->pause_until_usec)
                s->pause_until_usec = pause;
        }
        /* fall through */
    case STRIPE_RETRY:
        s->totals.retried++;
        metrics_add(s->m_retried, 1);
        note_failure(s, now);
        schedule_retry(s, r, now, ++r->failures);
        break;
    case STRIPE_NEW_KEY:
        r->generation++;
        r->replayed_failures = 0;
        r->failures = 0; /* a new key is a new request: short backoff again */
        s->totals.new_keys++;
        s->totals.retried++;
        metrics_add(s->m_new_keys, 1);
        metrics_add(s->m_retried, 1);
        note_failure(s, now);
        schedule_retry(s, r, now, 1);
        log_info("report %lld: Stripe keeps replaying a saved failure; retrying under "
                 "idempotency key generation %d, same identifier",
                 (long long)r->id, r->generation);
        break;
    case STRIPE_AUTH_FAILED:
        s->auth_failed = true;
        if (now - s->auth_logged_usec > 60 * USEC_PER_SEC || s->auth_logged_usec == 0) {
            log_error("Stripe refused the API key (%s); pausing all calls for %d s — check "
                      "TALLY_STRIPE_API_KEY",
                      error_text(r), (int)(AUTH_PAUSE_USEC / USEC_PER_SEC));
            s->auth_logged_usec = now;
        }
        s->pause_until_usec = now + AUTH_PAUSE_USEC;
        r->ready_usec = s->pause_until_usec;
        if (s->cfg.give_up_after > 0) {
            /* --once: nothing will pass with this key; stop the run */
            give_up(s, r);
            s->hold = true;
        }
        break;
    case STRIPE_PARK:
        r->status = REPORT_PARKED;
        s->totals.parked++;
        metrics_add(s->m_parked, 1);
        log_warn("report %lld (%s, %s, hour %lld, %lld units) parked: %s", (long long)r->id,
                 r->customer, r->target, (long long)r->hour, (long long)r->quantity,
                 error_text(r));
        break;
    }
    log_debug("report %lld: HTTP %ld -> %s", (long long)r->id, status,
              stripe_outcome_name(outcome));
    mark_dirty(s, r);
    lane_release(s, l, r, now);
}

/* A report first taken for sending 23 hours ago and still unconfirmed
 * cannot be retried safely: Stripe may have counted an earlier attempt and
 * forgotten its idempotency key (usage records) or identifier (meter events:
 * "at least 24 hours"). Park it for an operator to check. first_sent_at is
 * written when the report is loaded, before any call, so a crash cannot
 * reset this clock. */
static bool park_stale_report(sender *s, report *r, int64_t now)
{
    if (r->first_sent_usec == 0 || now - r->first_sent_usec < STALE_REPORT_USEC)
        return false;
    r->status = REPORT_PARKED;
    set_error(r, "unconfirmed 23 hours after it was first sent: Stripe may have counted it and "
                 "may no longer recognise a retry; check the %s in Stripe, then `requeue` or "
                 "`resolve` it (last: %.300s)",
              r->mode == STRIPE_MODE_USAGE_RECORDS ? "subscription item's usage records"
                                                   : "customer's meter events",
              error_text(r));
    s->totals.parked++;
    metrics_add(s->m_parked, 1);
    mark_dirty(s, r);
    return true;
}

/* Appends a header line; when out of memory frees the whole list and
 * returns NULL. */
static struct curl_slist *append_header(struct curl_slist *list, const char *line)
{
    struct curl_slist *next = curl_slist_append(list, line);
    if (next == NULL)
        curl_slist_free_all(list);
    return next;
}

/* What `r` tells Stripe (stripe.c builds the call from it). */
static stripe_usage usage_of(const report *r)
{
    stripe_usage u = {
        .mode = r->mode,
        .customer = r->customer,
        .target = r->target,
        .identifier = r->identifier,
        .timestamp = r->hour,
        .quantity = r->quantity,
        .generation = r->generation,
    };
    return u;
}

/* Hands the call for `r` to the slot's curl handle: stripe.c's request,
 * with the Authorization header and curl's "Expect:" (no 100-continue
 * round trip) added. */
static bool build_request(sender *s, slot *sl, const report *r)
{
    stripe_account account = {.api_base = s->cfg.api_base, .api_version = s->cfg.api_version};
    stripe_usage usage = usage_of(r);
    char err[128];
    if (!stripe_request_build(&account, &usage, &sl->request, err, sizeof err)) {
        log_warn("report %lld: could not build the request: %s", (long long)r->id, err);
        return false;
    }
    curl_slist_free_all(sl->headers);
    sl->headers = NULL;
    struct curl_slist *h = curl_slist_append(NULL, s->auth_header);
    for (int i = 0; h && i < sl->request.header_count; i++)
        h = append_header(h, sl->request.headers[i]);
    h = h ? append_header(h, "Expect:") : NULL;
    if (h == NULL) {
        log_warn("report %lld: could not build the request: out of memory", (long long)r->id);
        return false;
    }
    sl->headers = h;
    curl_easy_setopt(sl->easy, CURLOPT_URL, sl->request.url);
    curl_easy_setopt(sl->easy, CURLOPT_HTTPHEADER, sl->headers);
    curl_easy_setopt(sl->easy, CURLOPT_POSTFIELDSIZE, (long)sl->request.body.len);
    curl_easy_setopt(sl->easy, CURLOPT_COPYPOSTFIELDS, sl->request.body.data);
    return true;
}

/* Gives the slot of an answered call back to the free ones. */
static void slot_release(sender *s, slot *sl)
{
    sl->r = NULL;
    sl->l = NULL;
    s->free_slots[s->free_count++] = (int)(sl - s->slots);
    s->in_flight--;
}

/* Starts the head of `l` in a free slot. */
static void start_call(sender *s, lane *l, int64_t now)
{
    report *r = l->head;
    if (park_stale_report(s, r, now)) {
        lane_release(s, l, r, now);
        return;
    }
    slot *sl = &s->slots[s->free_slots[--s->free_count]];
    buf_reset(&sl->reply);
    stripe_answer_init(&sl->answer);
    sl->curl_error[0] = '\0';
    if (!build_request(s, sl, r)) {
        s->free_count++;
        r->ready_usec = now + USEC_PER_SEC;
        lane_schedule(s, l, now);
        return;
    }
    sl->r = r;
    sl->l = l;
    sl->started_usec = now;
    l->busy = true;
    r->in_flight = true;
    r->attempts++;
    r->last_sent_usec = now;
    if (r->first_sent_usec == 0)
        r->first_sent_usec = now;
    s->in_flight++;
    s->totals.sent++;
    metrics_add(s->m_sent, 1);
    CURLMcode mc = curl_multi_add_handle(s->multi, sl->easy);
    if (mc != CURLM_OK) {
        log_error("curl_multi_add_handle: %s", curl_multi_strerror(mc));
        handle_answer(s, sl, CURLE_FAILED_INIT, now);
        slot_release(s, sl);
    }
}

/* The token bucket for a ceiling of `rate` calls a second: a burst of 2 %
 * of it (20 ms worth, so a short stall in the loop costs little) and a
 * refill rate lowered by as much, so that no one-second window holds more
 * than `rate` calls. Below 50 calls/s the burst is one call. */
static int64_t bucket_shape(double rate, double *refill)
{
    if (rate < 50) {
        *refill = rate;
        return 1;
    }
    int64_t burst = (int64_t)(rate / 50);
    *refill = rate - (double)burst;
    return burst;
}

static void dispatch(sender *s, int64_t now)
{
    /* 429s halved the rate; it creeps back (10% a second) while calls pass */
    if (s->rate < s->cfg.rate_limit && now - s->rate_recovered_usec >= USEC_PER_SEC) {
        s->rate = s->rate * 1.1 > s->cfg.rate_limit ? s->cfg.rate_limit : s->rate * 1.1;
        s->rate_recovered_usec = now;
        metrics_set(s->m_rate, s->rate);
    }
    promote_delayed(s, now);
    if (s->hold || now < s->pause_until_usec)
        return;
    double refill;
    int64_t burst = bucket_shape(s->rate, &refill);
    while (s->free_count > 0 && s->ready_head) {
        if (!tokenbucket_take(&s->bucket, refill, burst, now))
            break;
        start_call(s, ready_pop(s), now);
    }
}

void sender_run(sender *s, int max_wait_ms)
{
    int64_t now = time_now_usec();
    dispatch(s, now);
    /* Wait no longer than until the next token, backoff or pause ends. */
    int64_t wake = now + (int64_t)max_wait_ms * 1000;
    if (!s->hold) {
        int64_t next = next_delayed_usec(s);
        if (s->ready_head && s->free_count > 0) {
            double refill;
            int64_t burst = bucket_shape(s->rate, &refill);
            int64_t token = now + tokenbucket_wait_usec(&s->bucket, refill, burst, now);
            next = token < next ? token : next;
        }
        if (s->pause_until_usec > now && next < s->pause_until_usec)
            next = s->pause_until_usec;
        if (next < wake)
            wake = next;
    }
    int timeout_ms = (int)((wake - now + 999) / 1000);
    int running = 0;
    curl_multi_perform(s->multi, &running);
    if (s->in_flight > 0 || timeout_ms > 0)
        curl_multi_poll(s->multi, NULL, 0, timeout_ms < 0 ? 0 : timeout_ms, NULL);
    curl_multi_perform(s->multi, &running);
    CURLMsg *msg;
    int left;
    now = time_now_usec();
    while ((msg = curl_multi_info_read(s->multi, &left)) != NULL) {
        if (msg->msg != CURLMSG_DONE)
            continue;
        slot *sl = NULL;
        curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **)&sl);
        CURLcode result = msg->data.result;
        curl_multi_remove_handle(s->multi, msg->easy_handle);
        handle_answer(s, sl, result, now);
        slot_release(s, sl);
    }
    metrics_set(s->m_in_flight, (double)s->in_flight);
    metrics_set(s->m_lanes, (double)s->lane_count);
    metrics_set(s->m_in_memory, (double)s->in_memory);
    dispatch(s, time_now_usec());
}

report *const *sender_dirty(sender *s, size_t *count)
{
    *count = s->dirty_count;
    return s->dirty;
}

void sender_flushed(sender *s)
{
    for (size_t i = 0; i < s->dirty_count; i++) {
        report *r = s->dirty[i];
        r->dirty = false;
        /* Done, or given up for this run: it has left its lane. */
        if (r->status != REPORT_PENDING || r->given_up) {
            report_free(r);
            s->in_memory--;
        }
    }
    s->dirty_count = 0;
    lanes_trim(s);
}

size_t sender_in_memory(const sender *s)
{
    return s->in_memory;
}

size_t sender_in_flight(const sender *s)
{
    return s->in_flight;
}

bool sender_idle(const sender *s)
{
    return s->in_flight == 0 && s->ready_head == NULL && s->delayed == NULL;
}

void sender_hold(sender *s, bool hold)
{
    s->hold = hold;
}

void sender_drop_queued(sender *s)
{
    if (s->in_flight > 0 || s->dirty_count > 0)
        return; /* only once everything in flight is answered and written */
    for (size_t i = 0; i < s->lane_count; i++) {
        lane *l = s->lanes[i];
        free_lane_reports(l);
        l->head = l->tail = NULL;
        l->scheduled = false;
        l->next = NULL;
    }
    s->ready_head = s->ready_tail = s->delayed = NULL;
    s->in_memory = 0;
}

bool sender_auth_failed(const sender *s)
{
    return s->auth_failed;
}

const sender_totals *sender_get_totals(const sender *s)
{
    return &s->totals;
}
