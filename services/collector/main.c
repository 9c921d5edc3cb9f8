/* tally-collector: consumes usage events from Kafka, deduplicates them by
 * (source, id) in PostgreSQL and rolls the new ones up per key / plan /
 * period, exactly once in effect.
 *
 * Delivery guarantee, and why offsets are committed the way they are:
 * a batch is (1) validated, its rejects published to the DLQ and confirmed,
 * (2) written in ONE database transaction that records every (source, id)
 * and adds only the never-seen ones to the rollups, and only then (3) its
 * Kafka offsets are committed. A crash before (2) commits loses nothing: the
 * events are read again from the last committed offset. A crash between (2)
 * and (3) makes the next owner read the batch again, and the deduplication
 * record, written in the same transaction as the rollups, turns every event
 * of it into a duplicate. So Kafka's committed offset may lag the database
 * but never leads it. We chose this over storing offsets in the database and
 * seeking on assignment because the deduplication record already makes
 * replays harmless; it keeps Kafka the single source of consumer positions
 * (standard tooling shows the lag) and rebalances need no database round
 * trip. The price of a replay is only the work of re-reading a batch. */
#include <librdkafka/rdkafka.h>
#include <malloc.h>
#include <libpq-fe.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "buf.h"
#include "config.h"
#include "event.h"
#include "keycache.h"
#include "log.h"
#include "metrics.h"
#include "ops.h"
#include "digest.h"
#include "rollup.h"
#include "store.h"
#include "period.h"
#include "timeutil.h"

/* ---- settings ---------------------------------------------------------- */

static const char *database_url;
static const char *kafka_brokers;
static const char *kafka_topic;
static const char *dlq_topic;
static const char *kafka_group;
static const char *metrics_addr;
static const char *log_level_text;
static const char *assignment_strategy;
static long long batch_max_events;
static long long batch_max_wait_ms;
static long long lateness_days;
static long long max_event_bytes;
static long long key_refresh_ms;
static long long session_timeout_ms;
static long long stall_timeout_s;
static const char *kafka_security_protocol;
static const char *kafka_sasl_mechanism;
static const char *kafka_sasl_username;
static const char *kafka_sasl_password;
static const char *kafka_ssl_ca_location;

/* The largest batch: TALLY_BATCH_MAX_EVENTS at most, plus what may still
 * arrive while consumption is paused. */
#define BATCH_MAX_EVENTS_LIMIT 200000
#define BATCH_SPILL_EVENTS     100000
/* So a batch's in-memory sums (rollup.c) can never overflow, whatever the
 * events say: every event is within the per-event bounds. */
_Static_assert((BATCH_MAX_EVENTS_LIMIT + BATCH_SPILL_EVENTS) * EVENT_MAX_BYTES_FIELD < INT64_MAX / 4 &&
                   (BATCH_MAX_EVENTS_LIMIT + BATCH_SPILL_EVENTS) * EVENT_MAX_UNITS < INT64_MAX / 4,
               "a batch's totals must fit in int64");

static const cfg_setting settings[] = {
    {"TALLY_DATABASE_URL", "database-url", CFG_STRING, &database_url, NULL, true, true, 0, 0,
     "libpq connection string of the Tally database"},
    {"TALLY_KAFKA_BROKERS", "kafka-brokers", CFG_STRING, &kafka_brokers, NULL, true, false, 0, 0,
     "Kafka bootstrap servers, host:port[,host:port...]"},
    {"TALLY_KAFKA_TOPIC", "kafka-topic", CFG_STRING, &kafka_topic, "usage-events", false, false, 0,
     0, "topic the usage events are read from"},
    {"TALLY_KAFKA_DLQ_TOPIC", "kafka-dlq-topic", CFG_STRING, &dlq_topic, "usage-events-dlq", false,
     false, 0, 0, "topic rejected events are published to, with the reason in headers"},
    {"TALLY_KAFKA_GROUP", "kafka-group", CFG_STRING, &kafka_group, "tally-collector", false, false,
     0, 0, "consumer group; run more instances with the same group to scale"},
    {"TALLY_METRICS_ADDR", "metrics-addr", CFG_STRING, &metrics_addr, "127.0.0.1:9101", false,
     false, 0, 0, "where GET /metrics and GET /healthz listen"},
    {"TALLY_LOG_LEVEL", "log-level", CFG_STRING, &log_level_text, "info", false, false, 0, 0,
     "debug, info, warn or error"},
    {"TALLY_BATCH_MAX_EVENTS", "batch-max-events", CFG_INT, &batch_max_events, "50000", false,
     false, 1, BATCH_MAX_EVENTS_LIMIT, "a batch is written once it holds this many events"},
    {"TALLY_BATCH_MAX_WAIT_MS", "batch-max-wait-ms", CFG_INT, &batch_max_wait_ms, "100", false,
     false, 1, 200, "...or, when no more events are waiting, once its first event is this old; "
     "under sustained load batches fill up instead, for at most 1 s"},
    {"TALLY_LATENESS_DAYS", "lateness-days", CFG_INT, &lateness_days, "35", false, false, 1, 365,
     "events older than this many days are rejected as too_late; deduplication records are kept "
     "at least this long"},
    {"TALLY_MAX_EVENT_BYTES", "max-event-bytes", CFG_INT, &max_event_bytes, "65536", false, false,
     512, 1048576, "message values above this size are rejected as too_large"},
    {"TALLY_KEY_REFRESH_MS", "key-refresh-ms", CFG_INT, &key_refresh_ms, "5000", false, false, 100,
     3600000, "how often the whole key cache is reloaded (a miss is also looked up at once)"},
    {"TALLY_STALL_TIMEOUT_S", "stall-timeout-s", CFG_INT, &stall_timeout_s, "60", false, false, 5,
     86400, "/healthz and /readyz answer 503 once consumed events have waited this long "
     "without being written (database or DLQ unavailable), so an orchestrator can act"},
    {"TALLY_KAFKA_SECURITY_PROTOCOL", "kafka-security-protocol", CFG_STRING,
     &kafka_security_protocol, "plaintext", false, false, 0, 0,
     "plaintext, ssl, sasl_plaintext or sasl_ssl"},
    {"TALLY_KAFKA_SASL_MECHANISM", "kafka-sasl-mechanism", CFG_STRING, &kafka_sasl_mechanism,
     NULL, false, false, 0, 0, "PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512 (with sasl_*)"},
    {"TALLY_KAFKA_SASL_USERNAME", "kafka-sasl-username", CFG_STRING, &kafka_sasl_username, NULL,
     false, false, 0, 0, "SASL user name"},
    {"TALLY_KAFKA_SASL_PASSWORD", "kafka-sasl-password", CFG_STRING, &kafka_sasl_password, NULL,
     false, true, 0, 0, "SASL password (or TALLY_KAFKA_SASL_PASSWORD_FILE)"},
    {"TALLY_KAFKA_SSL_CA_LOCATION", "kafka-ssl-ca-location", CFG_STRING, &kafka_ssl_ca_location,
     NULL, false, false, 0, 0, "CA certificate file the brokers' certificates are verified "
     "against (ssl, sasl_ssl; default: the system's store)"},
    {NULL, "assignment-strategy", CFG_STRING, &assignment_strategy, "cooperative-sticky", false,
     false, 0, 0, "Kafka partition assignment: cooperative-sticky, range or roundrobin"},
    {NULL, "session-timeout-ms", CFG_INT, &session_timeout_ms, "10000", false, false, 1000,
     300000, "how long the group waits for a silent (crashed) instance before its partitions "
     "move"},
};

/* ---- metrics ----------------------------------------------------------- */

static metric *m_consumed, *m_counted, *m_duplicates, *m_batches, *m_batch_size,
    *m_batch_seconds, *m_lag, *m_db_errors, *m_dlq_errors, *m_key_cache_size, *m_key_lookups,
    *m_last_commit, *m_paused, *m_stalled_seconds;
static metric *m_rejected[EVENT_ERR__COUNT];

/* Why consumption is paused: what the last failed write attempt met. */
typedef enum {
    PAUSE_DATABASE,        /* PostgreSQL unavailable or failing */
    PAUSE_DLQ,             /* the DLQ topic did not confirm rejected events */
    PAUSE_POISON_REFETCH,  /* poison events could not be read again for the DLQ */
    PAUSE__COUNT
} pause_reason;
static const char *const pause_reason_names[PAUSE__COUNT] = {"database", "dlq",
                                                             "poison_refetch"};
static metric *m_pause_reason[PAUSE__COUNT];

static const double batch_size_bounds[] = {1, 10, 100, 500, 1000, 2500, 5000, 10000, 25000, 50000,
                                           100000};
static const double batch_seconds_bounds[] = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                                              0.1,   0.25,   0.5,   1,    2.5,   5};

static void register_metrics(void)
{
    m_consumed = metrics_counter("tally_collector_events_consumed_total",
                                 "Kafka messages consumed (counted + duplicates + rejected)", NULL);
    m_counted = metrics_counter("tally_collector_events_counted_total",
                                "events counted into the rollups for the first time", NULL);
    m_duplicates = metrics_counter("tally_collector_events_duplicate_total",
                                   "valid events whose (source, id) was already counted", NULL);
    static char labels[EVENT_ERR__COUNT][48];
    for (int e = 1; e < EVENT_ERR__COUNT; e++) {
        snprintf(labels[e], sizeof labels[e], "code=\"%s\"", event_error_code((event_error)e));
        m_rejected[e] = metrics_counter("tally_collector_events_rejected_total",
                                        "events published to the DLQ, by error code", labels[e]);
    }
    m_batches = metrics_counter("tally_collector_batches_total", "batches committed", NULL);
    m_batch_size = metrics_histogram("tally_collector_batch_events", "events per committed batch",
                                     NULL, batch_size_bounds,
                                     sizeof batch_size_bounds / sizeof batch_size_bounds[0]);
    m_batch_seconds = metrics_histogram(
        "tally_collector_batch_commit_seconds",
        "time to write a batch (DLQ, database transaction, offset commit)", NULL,
        batch_seconds_bounds, sizeof batch_seconds_bounds / sizeof batch_seconds_bounds[0]);
    m_lag = metrics_gauge("tally_collector_consumer_lag",
                          "messages behind the high watermark, summed over assigned partitions",
                          NULL);
    m_db_errors = metrics_counter("tally_collector_db_errors_total",
                                  "failed database operations (each is retried)", NULL);
    m_dlq_errors = metrics_counter("tally_collector_dlq_errors_total",
                                   "failed DLQ publications (each is retried)", NULL);
    m_key_cache_size = metrics_gauge("tally_collector_key_cache_keys", "API keys in the cache",
                                     NULL);
    m_key_lookups = metrics_counter("tally_collector_key_cache_miss_lookups_total",
                                    "database look-ups made for keys missing from the cache",
                                    NULL);
    m_last_commit = metrics_gauge("tally_collector_last_commit_timestamp_seconds",
                                  "when the last batch was committed", NULL);
    m_paused = metrics_gauge("tally_collector_paused",
                             "1 while consumption is paused because a batch cannot be written",
                             NULL);
    for (int r = 0; r < PAUSE__COUNT; r++) {
        static char reason_labels[PAUSE__COUNT][48];
        snprintf(reason_labels[r], sizeof reason_labels[r], "reason=\"%s\"", pause_reason_names[r]);
        m_pause_reason[r] = metrics_gauge(
            "tally_collector_pause_reason",
            "1 for the reason consumption is paused now (0 for the others)", reason_labels[r]);
    }
    m_stalled_seconds = metrics_gauge(
        "tally_collector_stalled_seconds",
        "how long the batch being written has waited (0 when none waits); /healthz fails past "
        "TALLY_STALL_TIMEOUT_S",
        NULL);
}

/* ---- the batch --------------------------------------------------------- */

typedef struct {
    rd_kafka_message_t *message; /* owned */
    event_error code;
    char reason[200];
} reject;

typedef struct {
    rd_kafka_message_t *message; /* owned */
    usage_event event;
} unresolved;

typedef struct {
    int32_t partition;
    int64_t next_offset;
} partition_mark;

/* A valid event with a known key, waiting for the database to say whether
 * its (source, id) is new. Its message is not kept (memory stays flat); its
 * place in Kafka is, so a poison event can be read again for the DLQ. */
typedef struct {
    int32_t group;           /* its hourly group in the batch's rollup */
    int32_t partition;
    int64_t offset;
    int64_t units, bytes;
} staged_event;

/* A staged event the database refused on its own (see isolate_poison). */
typedef struct {
    int32_t partition;
    int64_t offset;
    event_error code;
    char reason[200];
} poison;

/* Everything consumed since the last batch was handed to the writer. */
typedef struct {
    size_t capacity;          /* staged events at most */
    staged_event *events;
    uint8_t *digests;         /* 16 bytes per staged event: the deduplication key */
    int32_t *week_days;       /* per staged event: its event week, days since 1970 */
    size_t event_count;
    uint32_t *slots;          /* digest -> event index + 1, open addressing */
    size_t slot_count;
    rollup *rollup;
    size_t in_batch_duplicates;
    reject *rejects;
    size_t reject_count, reject_cap;
    unresolved *unresolved;   /* events whose key was not in the cache */
    size_t unresolved_count, unresolved_cap;
    poison *poisons;          /* staged events refused by the database, for the DLQ */
    size_t poison_count, poison_cap;
    uint64_t counted_earlier; /* events a failed isolation pass already committed */
    partition_mark *marks;    /* next offset to commit, per partition */
    size_t mark_count, mark_cap;
    size_t consumed;
    int64_t first_at;         /* when the first message of the batch arrived */
    bool dlq_done;            /* rejects published and confirmed */
} batch;

/* Two batches alternate: one fills from Kafka while the other is written,
 * so parsing and the database work overlap (and under load each write
 * takes all that arrived during the previous one). */
typedef struct {
    rd_kafka_t *consumer;
    rd_kafka_t *dlq;
    store *db;
    keycache *keys;
    batch batches[2];
    batch *filling;
    batch *writing;           /* NULL when no batch is being written */
    bool writing_sent;        /* an exchange is in flight (else it waits to retry) */
    bool rollups_sent;        /* ... and it is phase B (rollups and COMMIT) */
    uint64_t writing_counted; /* new events found by phase A */
    buf hourly[ROLLUP_HOURLY_COLUMNS];
    buf counters[ROLLUP_COUNTER_COLUMNS];
    int64_t writing_started;
    int64_t writing_since;    /* when the batch being written was handed over (0: none) */
    event_limits limits;
    bool paused;
    bool synchronous_commit;  /* during a revocation: commit offsets before returning */
    bool caught_up;           /* the last poll found no message waiting */
    bool ever_assigned;       /* the group has given this instance an assignment */
    int64_t retry_at;
    int64_t backoff_usec;
    int dlq_failures;         /* delivery failures seen by the DLQ producer */
} collector;

static volatile sig_atomic_t stop_requested;
static volatile sig_atomic_t last_loop_at; /* seconds; read by /healthz */
static volatile sig_atomic_t stalled_seconds; /* read by /healthz */

static void on_signal(int sig)
{
    (void)sig;
    if (stop_requested) {
        /* A second signal: exit now. Nothing unwritten was acknowledged, so
         * the events of the current batches are simply read again later. */
        static const char msg[] = "second signal: exiting at once\n";
        ssize_t ignored = write(STDERR_FILENO, msg, sizeof msg - 1);
        (void)ignored;
        _exit(130);
    }
    stop_requested = 1;
}

static bool grow_array(void **items, size_t *cap, size_t count, size_t size)
{
    if (count < *cap)
        return true;
    size_t next = *cap ? *cap * 2 : 64;
    void *grown = realloc(*items, next * size);
    if (grown == NULL)
        return false;
    *items = grown;
    *cap = next;
    return true;
}

static bool batch_init(batch *b)
{
    memset(b, 0, sizeof *b);
    /* A full batch, plus what may still arrive while consumption is paused
     * (bounded by queued.max.messages.kbytes). */
    b->capacity = (size_t)batch_max_events + BATCH_SPILL_EVENTS;
    b->slot_count = 16;
    while (b->slot_count < b->capacity * 2)
        b->slot_count *= 2;
    b->events = malloc(b->capacity * sizeof *b->events);
    b->digests = malloc(b->capacity * 16);
    b->week_days = malloc(b->capacity * sizeof *b->week_days);
    b->slots = calloc(b->slot_count, sizeof *b->slots);
    b->rollup = rollup_new(b->capacity);
    return b->events && b->digests && b->week_days && b->slots && b->rollup;
}

static void batch_clear(batch *b)
{
    for (size_t i = 0; i < b->reject_count; i++)
        rd_kafka_message_destroy(b->rejects[i].message);
    for (size_t i = 0; i < b->unresolved_count; i++)
        rd_kafka_message_destroy(b->unresolved[i].message);
    if (b->event_count > 0)
        memset(b->slots, 0, b->slot_count * sizeof *b->slots);
    b->event_count = 0;
    if (b->rollup)
        rollup_clear(b->rollup);
    b->in_batch_duplicates = 0;
    b->poison_count = 0;
    b->counted_earlier = 0;
    b->reject_count = 0;
    b->unresolved_count = 0;
    b->mark_count = 0;
    b->consumed = 0;
    b->first_at = 0;
    b->dlq_done = false;
}

static void batch_destroy(batch *b)
{
    batch_clear(b);
    free(b->events);
    free(b->digests);
    free(b->week_days);
    free(b->slots);
    rollup_free(b->rollup);
    free(b->rejects);
    free(b->unresolved);
    free(b->poisons);
    free(b->marks);
}

/* The slot of `digest`: holding its event index + 1, or 0 if absent. */
static uint32_t *digest_slot(const batch *b, const uint8_t digest[16])
{
    uint64_t h;
    memcpy(&h, digest, sizeof h); /* a SHA-256 prefix is already uniform */
    size_t mask = b->slot_count - 1;
    for (size_t i = h & mask;; i = (i + 1) & mask) {
        uint32_t *slot = &b->slots[i];
        if (*slot == 0 || memcmp(b->digests + (size_t)(*slot - 1) * 16, digest, 16) == 0)
            return slot;
    }
}

static bool batch_empty(const batch *b)
{
    return b->consumed == 0;
}

static bool mark_offset(batch *b, int32_t partition, int64_t offset)
{
    for (size_t i = 0; i < b->mark_count; i++) {
        if (b->marks[i].partition == partition) {
            if (offset + 1 > b->marks[i].next_offset)
                b->marks[i].next_offset = offset + 1;
            return true;
        }
    }
    if (!grow_array((void **)&b->marks, &b->mark_cap, b->mark_count, sizeof *b->marks))
        return false;
    b->marks[b->mark_count++] = (partition_mark){partition, offset + 1};
    return true;
}

/* Copies `text` into dst (dst_size > 0), cut on a character boundary so a
 * header never ends in half a UTF-8 sequence. */
static void copy_utf8(char *dst, size_t dst_size, const char *text)
{
    size_t len = strlen(text);
    if (len >= dst_size)
        len = utf8_valid_prefix(text, dst_size - 1);
    memcpy(dst, text, len);
    dst[len] = '\0';
}

/* A database message (ERROR, then DETAIL and HINT lines) as one line: a
 * header value, and one log line. */
static void flatten_lines(char *text)
{
    for (char *p = text; *p; p++) {
        if (*p == '\n' || *p == '\r' || *p == '\t')
            *p = ' ';
    }
}

static bool add_reject(batch *b, rd_kafka_message_t *message, event_error code,
                       const char *reason)
{
    if (!grow_array((void **)&b->rejects, &b->reject_cap, b->reject_count, sizeof *b->rejects))
        return false;
    reject *r = &b->rejects[b->reject_count++];
    r->message = message;
    r->code = code;
    copy_utf8(r->reason, sizeof r->reason, reason);
    b->dlq_done = false;
    return true;
}

/* Adds a valid event with a known key, unless its (source, id) is already
 * in the batch. False when the batch's bounds are exceeded. */
static bool stage_event(batch *b, const usage_event *ev, const char *plan_id,
                        const rd_kafka_message_t *message)
{
    if (b->event_count >= b->capacity)
        return false;
    uint8_t *digest = b->digests + b->event_count * 16;
    digest_event(ev->source, ev->id, digest);
    uint32_t *slot = digest_slot(b, digest);
    if (*slot != 0) {
        b->in_batch_duplicates++;
        return true;
    }
    long group = rollup_group(b->rollup, ev->subject, plan_id, ev->method, ev->endpoint,
                              ev->time_usec);
    if (group < 0)
        return false;
    b->week_days[b->event_count] =
        (int32_t)(period_start(PERIOD_WEEK, ev->time_usec) / USEC_PER_DAY);
    b->events[b->event_count] =
        (staged_event){(int32_t)group, message->partition, message->offset, ev->units, ev->bytes};
    *slot = (uint32_t)++b->event_count;
    return true;
}

/* Takes ownership of `message`. False only when memory or the batch's bounds
 * run out (the caller then stops without acknowledging anything). */
static bool batch_add(collector *c, rd_kafka_message_t *message)
{
    batch *b = c->filling;
    if (!mark_offset(b, message->partition, message->offset))
        return false;
    if (b->consumed++ == 0)
        b->first_at = time_now_usec();
    c->limits.now_usec = time_now_usec();
    usage_event ev;
    char reason[200];
    event_error err =
        event_parse(message->payload, message->len, &c->limits, &ev, reason, sizeof reason);
    if (err != EVENT_OK)
        return add_reject(b, message, err, reason);
    const char *plan_id = keycache_lookup(c->keys, ev.subject);
    if (plan_id == NULL) {
        if (!grow_array((void **)&b->unresolved, &b->unresolved_cap, b->unresolved_count,
                        sizeof *b->unresolved))
            return false;
        b->unresolved[b->unresolved_count++] = (unresolved){message, ev};
        return true;
    }
    bool ok = stage_event(b, &ev, plan_id, message);
    rd_kafka_message_destroy(message);
    return ok;
}

/* ---- writing ----------------------------------------------------------- */

static void write_isolating(collector *c, const char *why);
static rd_kafka_t *make_reader(char *err, size_t err_size);

/* Looks up the keys the cache missed (a key created a moment ago is counted),
 * then stages the events whose key exists and rejects the rest. */
static bool resolve_unknown_keys(collector *c, batch *b, char *err, size_t err_size)
{
    if (b->unresolved_count == 0)
        return true;
    const char **ids = malloc(b->unresolved_count * sizeof *ids);
    if (ids == NULL) {
        snprintf(err, err_size, "out of memory");
        return false;
    }
    for (size_t i = 0; i < b->unresolved_count; i++)
        ids[i] = b->unresolved[i].event.subject;
    metrics_add(m_key_lookups, 1);
    bool ok = store_lookup_keys(c->db, ids, b->unresolved_count, c->keys, err, err_size);
    free(ids);
    if (!ok)
        return false;
    metrics_set(m_key_cache_size, (double)keycache_size(c->keys));
    for (size_t i = 0; i < b->unresolved_count; i++) {
        unresolved *u = &b->unresolved[i];
        const char *plan_id = keycache_lookup(c->keys, u->event.subject);
        if (plan_id != NULL) {
            if (!stage_event(b, &u->event, plan_id, u->message)) {
                snprintf(err, err_size, "batch bounds exceeded while staging");
                return false;
            }
            rd_kafka_message_destroy(u->message);
        } else {
            char subject[101], reason[200];
            copy_utf8(subject, sizeof subject, u->event.subject);
            snprintf(reason, sizeof reason, "subject \"%s\" is not a known API key id", subject);
            if (!add_reject(b, u->message, EVENT_ERR_UNKNOWN_KEY, reason)) {
                snprintf(err, err_size, "out of memory");
                return false;
            }
        }
        u->message = NULL;
    }
    b->unresolved_count = 0;
    return true;
}

static void dlq_delivered(rd_kafka_t *rk, const rd_kafka_message_t *message, void *opaque)
{
    (void)rk;
    collector *c = opaque;
    if (message->err) {
        c->dlq_failures++;
        log_warn("DLQ delivery failed: %s", rd_kafka_err2str(message->err));
    }
}

/* Queues one rejected message for the DLQ, unchanged (value, key and
 * headers), with the reason in added headers. */
static bool dlq_produce(collector *c, const rd_kafka_message_t *m, event_error code,
                        const char *reason, char *err, size_t err_size)
{
    rd_kafka_headers_t *original = NULL;
    rd_kafka_headers_t *headers = rd_kafka_message_headers(m, &original) ==
                                          RD_KAFKA_RESP_ERR_NO_ERROR
                                      ? rd_kafka_headers_copy(original)
                                      : rd_kafka_headers_new(5);
    char partition[16], offset[24];
    snprintf(partition, sizeof partition, "%d", (int)m->partition);
    snprintf(offset, sizeof offset, "%lld", (long long)m->offset);
    rd_kafka_header_add(headers, "tally-error-code", -1, event_error_code(code), -1);
    rd_kafka_header_add(headers, "tally-error-message", -1, reason, -1);
    rd_kafka_header_add(headers, "tally-source-topic", -1, rd_kafka_topic_name(m->rkt), -1);
    rd_kafka_header_add(headers, "tally-source-partition", -1, partition, -1);
    rd_kafka_header_add(headers, "tally-source-offset", -1, offset, -1);
    rd_kafka_resp_err_t perr;
    do {
        perr = rd_kafka_producev(c->dlq, RD_KAFKA_V_TOPIC(dlq_topic),
                                 RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
                                 RD_KAFKA_V_VALUE(m->payload, m->len),
                                 RD_KAFKA_V_KEY(m->key, m->key_len), RD_KAFKA_V_HEADERS(headers),
                                 RD_KAFKA_V_END);
        if (perr == RD_KAFKA_RESP_ERR__QUEUE_FULL)
            rd_kafka_poll(c->dlq, 50);
    } while (perr == RD_KAFKA_RESP_ERR__QUEUE_FULL);
    if (perr != RD_KAFKA_RESP_ERR_NO_ERROR) {
        rd_kafka_headers_destroy(headers); /* not taken over on failure */
        snprintf(err, err_size, "publishing to the DLQ topic %s: %s", dlq_topic,
                 rd_kafka_err2str(perr));
        return false;
    }
    return true;
}

/* Waits until the broker has confirmed everything queued for the DLQ. */
static bool dlq_confirm(collector *c, char *err, size_t err_size)
{
    rd_kafka_resp_err_t ferr = rd_kafka_flush(c->dlq, 10000);
    if (ferr != RD_KAFKA_RESP_ERR_NO_ERROR || c->dlq_failures > 0) {
        snprintf(err, err_size, "DLQ topic %s did not confirm %d rejected events (%s)", dlq_topic,
                 c->dlq_failures, rd_kafka_err2str(ferr));
        return false;
    }
    return true;
}

/* Publishes the batch's rejects to the DLQ and waits until the broker has
 * them all. */
static bool publish_rejects(collector *c, batch *b, char *err, size_t err_size)
{
    if (b->dlq_done || b->reject_count == 0) {
        b->dlq_done = true;
        return true;
    }
    c->dlq_failures = 0;
    for (size_t i = 0; i < b->reject_count; i++) {
        const reject *r = &b->rejects[i];
        if (!dlq_produce(c, r->message, r->code, r->reason, err, err_size))
            return false;
    }
    if (!dlq_confirm(c, err, err_size))
        return false;
    b->dlq_done = true;
    return true;
}

/* Commits the batch's offsets for the partitions this instance still owns.
 * A failed commit is only logged: the database already holds the batch, so
 * a replay from an older offset is deduplicated. */
static void commit_offsets(collector *c, const batch *b)
{
    rd_kafka_topic_partition_list_t *owned = NULL;
    if (rd_kafka_assignment(c->consumer, &owned) != RD_KAFKA_RESP_ERR_NO_ERROR)
        return;
    rd_kafka_topic_partition_list_t *offsets =
        rd_kafka_topic_partition_list_new((int)b->mark_count);
    for (size_t i = 0; i < b->mark_count; i++) {
        if (rd_kafka_topic_partition_list_find(owned, kafka_topic, b->marks[i].partition))
            rd_kafka_topic_partition_list_add(offsets, kafka_topic, b->marks[i].partition)->offset =
                b->marks[i].next_offset;
    }
    if (offsets->cnt > 0) {
        rd_kafka_resp_err_t cerr =
            rd_kafka_commit(c->consumer, offsets, c->synchronous_commit ? 0 : 1);
        if (cerr != RD_KAFKA_RESP_ERR_NO_ERROR)
            log_warn("committing Kafka offsets: %s (the batch is in the database; a replay is "
                     "deduplicated)",
                     rd_kafka_err2str(cerr));
    }
    rd_kafka_topic_partition_list_destroy(offsets);
    rd_kafka_topic_partition_list_destroy(owned);
}

static void set_paused(collector *c, bool paused, pause_reason reason)
{
    for (int r = 0; r < PAUSE__COUNT; r++)
        metrics_set(m_pause_reason[r], paused && r == (int)reason ? 1 : 0);
    rd_kafka_topic_partition_list_t *owned = NULL;
    if (rd_kafka_assignment(c->consumer, &owned) == RD_KAFKA_RESP_ERR_NO_ERROR) {
        if (owned->cnt > 0) {
            if (paused)
                rd_kafka_pause_partitions(c->consumer, owned);
            else
                rd_kafka_resume_partitions(c->consumer, owned);
        }
        rd_kafka_topic_partition_list_destroy(owned);
    }
    if (c->paused != paused && paused)
        log_info("consumption paused until the batch can be written (%s)",
                 pause_reason_names[reason]);
    else if (c->paused != paused)
        log_info("consumption resumed");
    c->paused = paused;
    metrics_set(m_paused, paused ? 1 : 0);
}

/* The write failed: keep the batch, pause consumption and retry after a
 * backoff (100 ms doubling to 5 s). Nothing was acknowledged to Kafka. */
static void write_failed(collector *c, pause_reason reason, const char *err)
{
    log_error("batch of %zu events not written, will retry: %s", c->writing->consumed, err);
    c->writing_sent = false;
    c->rollups_sent = false;
    if (!store_is_connected(c->db))
        store_disconnect(c->db);
    c->backoff_usec = c->backoff_usec ? c->backoff_usec * 2 : 100 * 1000;
    if (c->backoff_usec > 5 * USEC_PER_SEC)
        c->backoff_usec = 5 * USEC_PER_SEC;
    c->retry_at = time_now_usec() + c->backoff_usec;
    set_paused(c, true, reason);
}

/* The batch is in the database: acknowledge it to Kafka and account for it.
 * consumed = counted + duplicates + rejected, batch by batch; `counted` is
 * what this attempt found new, to which what an earlier isolation pass
 * committed is added. */
static void write_done(collector *c, uint64_t counted)
{
    batch *b = c->writing;
    commit_offsets(c, b);
    counted += b->counted_earlier;
    uint64_t duplicates = b->event_count - b->poison_count - counted + b->in_batch_duplicates;
    metrics_add(m_consumed, b->consumed);
    metrics_add(m_counted, counted);
    metrics_add(m_duplicates, duplicates);
    for (size_t i = 0; i < b->reject_count; i++)
        metrics_add(m_rejected[b->rejects[i].code], 1);
    for (size_t i = 0; i < b->poison_count; i++)
        metrics_add(m_rejected[b->poisons[i].code], 1);
    metrics_add(m_batches, 1);
    metrics_observe(m_batch_size, (double)b->consumed);
    double seconds = (double)(time_now_usec() - c->writing_started) / 1e6;
    metrics_observe(m_batch_seconds, seconds);
    metrics_set(m_last_commit, (double)time_now_usec() / 1e6);
    log_debug("batch written: %zu consumed, %llu counted, %llu duplicates, %zu rejected in "
              "%.1f ms",
              b->consumed, (unsigned long long)counted, (unsigned long long)duplicates,
              b->reject_count + b->poison_count, seconds * 1000);
    batch_clear(b);
    c->writing = NULL;
    c->writing_since = 0;
    c->writing_sent = false;
    c->rollups_sent = false;
    c->backoff_usec = 0;
    c->retry_at = 0;
    if (c->paused)
        set_paused(c, false, PAUSE_DATABASE);
}

/* Starts (or restarts) writing c->writing: unknown keys, DLQ, then the
 * database statement, which is left in flight. */
static void write_start(collector *c)
{
    batch *b = c->writing;
    char err[512];
    c->writing_started = time_now_usec();
    if (!resolve_unknown_keys(c, b, err, sizeof err)) {
        metrics_add(m_db_errors, 1);
        write_failed(c, PAUSE_DATABASE, err);
        return;
    }
    if (!publish_rejects(c, b, err, sizeof err)) {
        metrics_add(m_dlq_errors, 1);
        write_failed(c, PAUSE_DLQ, err);
        return;
    }
    if (b->event_count == 0) {
        write_done(c, 0);
        return;
    }
    if (!store_send_inserts(c->db, b->digests, b->week_days, b->event_count, err, sizeof err)) {
        metrics_add(m_db_errors, 1);
        write_failed(c, PAUSE_DATABASE, err);
        return;
    }
    c->writing_sent = true;
    c->rollups_sent = false;
}

/* Phase A answered with the digests never seen before: count exactly those
 * events in the batch's rollup, and send phase B. */
static void send_rollups(collector *c, PGresult *inserted)
{
    batch *b = c->writing;
    char err[512];
    rollup_reset_counts(b->rollup); /* a retried batch starts from zero again */
    uint64_t counted = 0;
    for (int i = 0; i < PQntuples(inserted); i++) {
        if (PQgetlength(inserted, i, 0) != 16)
            continue;
        uint32_t slot = *digest_slot(b, (const uint8_t *)PQgetvalue(inserted, i, 0));
        if (slot == 0)
            continue; /* cannot happen: the database only returns what we sent */
        const staged_event *ev = &b->events[slot - 1];
        if (!rollup_add(b->rollup, ev->group, ev->units, ev->bytes)) {
            write_isolating(c, "a batch total would overflow");
            return;
        }
        counted++;
    }
    c->writing_counted = counted;
    if (!rollup_render(b->rollup, c->hourly, c->counters)) {
        write_isolating(c, "rollup parameters exceed their buffers or a total would overflow");
        return;
    }
    if (!store_send_rollups(c->db, c->hourly, c->counters, counted == 0, err, sizeof err)) {
        metrics_add(m_db_errors, 1);
        write_failed(c, PAUSE_DATABASE, err);
        return;
    }
    c->rollups_sent = true;
}

/* Advances the write in flight; with `wait`, until it is done. */
static void write_poll(collector *c, bool wait)
{
    while (c->writing != NULL && c->writing_sent) {
        PGresult *inserted = NULL;
        char err[512];
        switch (store_poll(c->db, wait, &inserted, err, sizeof err)) {
        case STORE_PENDING:
            return;
        case STORE_DONE:
            if (c->rollups_sent) {
                write_done(c, c->writing_counted);
                return;
            }
            send_rollups(c, inserted);
            PQclear(inserted);
            break; /* phase B is in flight now */
        case STORE_FAILED:
            metrics_add(m_db_errors, 1);
            if (store_last_error(c->db) == STORE_ERROR_TRANSIENT)
                write_failed(c, PAUSE_DATABASE, err);
            else
                write_isolating(c, err);
            return;
        }
    }
}

/* Hands the filling batch to the writer (which must be idle). */
static void write_next(collector *c)
{
    c->writing = c->filling;
    c->writing_since = time_now_usec();
    c->filling = c->filling == &c->batches[0] ? &c->batches[1] : &c->batches[0];
    write_start(c);
}

/* Writes everything consumed so far, synchronously, one attempt per batch.
 * True when nothing is left unwritten. */
static bool write_all_now(collector *c)
{
    if (c->writing && !c->writing_sent)
        write_start(c);
    write_poll(c, true);
    if (c->writing == NULL && !batch_empty(c->filling)) {
        write_next(c);
        write_poll(c, true);
    }
    return c->writing == NULL && batch_empty(c->filling);
}

/* ---- poison events ----------------------------------------------------- */

/* A batch the database refused for its data (store_last_error: a total out
 * of bigint's range, a constraint) would be refused again on every retry and
 * stop every key from being counted. So it is written again in parts, each
 * in its own transaction, and every part that is refused is halved until the
 * events refused on their own are found: those go to the DLQ with the
 * database's message, everything else is counted. An event is refused in
 * the state its predecessors left (a counter one event short of overflowing
 * takes the first event and refuses the next), as a serial writer would.
 * Parts committed before a transient failure are found again as duplicates
 * when the batch is retried; counted_earlier keeps the metrics right. */

typedef enum { PART_WRITTEN, PART_REFUSED, PART_FAILED } part_outcome;

static part_outcome part_refused(collector *c, event_error *code)
{
    store_error_kind kind = store_last_error(c->db);
    store_rollback(c->db);
    if (kind == STORE_ERROR_TRANSIENT)
        return PART_FAILED;
    *code = kind == STORE_ERROR_OVERFLOW ? EVENT_ERR_COUNTER_OVERFLOW : EVENT_ERR_DATABASE_REJECTED;
    return PART_REFUSED;
}

/* Counts the part's new events (the digests `inserted` lists) in the batch's
 * rollup, from zero. False when a total would overflow. */
static bool count_new_events(batch *b, const PGresult *inserted, uint64_t *fresh)
{
    rollup_reset_counts(b->rollup);
    *fresh = 0;
    for (int i = 0; i < PQntuples(inserted); i++) {
        if (PQgetlength(inserted, i, 0) != 16)
            continue;
        uint32_t slot = *digest_slot(b, (const uint8_t *)PQgetvalue(inserted, i, 0));
        if (slot == 0)
            continue;
        const staged_event *ev = &b->events[slot - 1];
        if (!rollup_add(b->rollup, ev->group, ev->units, ev->bytes))
            return false;
        (*fresh)++;
    }
    return true;
}

/* Writes the staged events [start, start + count) in one transaction. */
static part_outcome write_part(collector *c, size_t start, size_t count, event_error *code,
                               char *err, size_t err_size)
{
    batch *b = c->writing;
    if (!store_begin(c->db, err, err_size))
        return PART_FAILED;
    PGresult *inserted = store_insert_digests(c->db, b->digests + start * 16,
                                              b->week_days + start, count, err, err_size);
    if (inserted == NULL)
        return part_refused(c, code);
    uint64_t fresh;
    bool fits = count_new_events(b, inserted, &fresh);
    PQclear(inserted);
    if (!fits || !rollup_render(b->rollup, c->hourly, c->counters)) {
        store_rollback(c->db);
        *code = EVENT_ERR_COUNTER_OVERFLOW;
        snprintf(err, err_size, "counting this event would overflow a total");
        return PART_REFUSED;
    }
    if ((fresh > 0 && !store_add_rollups(c->db, c->hourly, c->counters, err, err_size)) ||
        !store_commit(c->db, err, err_size))
        return part_refused(c, code);
    b->counted_earlier += fresh;
    return PART_WRITTEN;
}

static bool add_poison(batch *b, size_t index, event_error code, const char *reason)
{
    if (!grow_array((void **)&b->poisons, &b->poison_cap, b->poison_count, sizeof *b->poisons))
        return false;
    poison *p = &b->poisons[b->poison_count++];
    p->partition = b->events[index].partition;
    p->offset = b->events[index].offset;
    p->code = code;
    copy_utf8(p->reason, sizeof p->reason, reason);
    flatten_lines(p->reason);
    return true;
}

/* Writes [start, start + count), halving refused parts down to single
 * events. Recursion depth is log2 of the batch size (at most 19). */
static part_outcome isolate_range(collector *c, size_t start, size_t count, bool known_refused,
                                  char *err, size_t err_size)
{
    event_error code = EVENT_ERR_DATABASE_REJECTED;
    if (!known_refused) {
        part_outcome o = write_part(c, start, count, &code, err, err_size);
        if (o != PART_REFUSED)
            return o;
        if (count == 1) {
            flatten_lines(err);
            log_warn("event at partition %d offset %lld refused by the database, sent to the "
                     "DLQ: %s",
                     (int)c->writing->events[start].partition,
                     (long long)c->writing->events[start].offset, err);
            return add_poison(c->writing, start, code, err) ? PART_WRITTEN : PART_FAILED;
        }
    }
    size_t half = count / 2;
    part_outcome o = isolate_range(c, start, half, false, err, err_size);
    return o == PART_FAILED ? o : isolate_range(c, start + half, count - half, false, err, err_size);
}

static int compare_poisons(const void *a, const void *b)
{
    const poison *x = a, *y = b;
    if (x->partition != y->partition)
        return x->partition < y->partition ? -1 : 1;
    return x->offset < y->offset ? -1 : x->offset > y->offset;
}

/* Reads `count` poison events of one partition (sorted by offset) again
 * with `reader` and queues each for the DLQ. An offset no longer in the log
 * (retention passed it) cannot be sent: it is logged and skipped. */
static bool republish_partition(collector *c, rd_kafka_t *reader, const poison *p, size_t count,
                                char *err, size_t err_size)
{
    rd_kafka_topic_partition_list_t *list = rd_kafka_topic_partition_list_new(1);
    rd_kafka_topic_partition_list_add(list, kafka_topic, p[0].partition)->offset = p[0].offset;
    rd_kafka_resp_err_t aerr = rd_kafka_assign(reader, list);
    rd_kafka_topic_partition_list_destroy(list);
    if (aerr != RD_KAFKA_RESP_ERR_NO_ERROR) {
        snprintf(err, err_size, "reading poison events again: %s", rd_kafka_err2str(aerr));
        return false;
    }
    size_t next = 0;
    bool ok = true;
    int64_t deadline = time_now_usec() + 30 * USEC_PER_SEC;
    while (ok && next < count && time_now_usec() < deadline) {
        rd_kafka_message_t *m = rd_kafka_consumer_poll(reader, 100);
        if (m == NULL)
            continue;
        for (; !m->err && next < count && p[next].offset < m->offset; next++)
            log_error("poison event at partition %d offset %lld is no longer in %s; not sent "
                      "to the DLQ",
                      (int)p[next].partition, (long long)p[next].offset, kafka_topic);
        if (!m->err && next < count && p[next].offset == m->offset) {
            ok = dlq_produce(c, m, p[next].code, p[next].reason, err, err_size);
            next++;
        }
        rd_kafka_message_destroy(m);
    }
    rd_kafka_assign(reader, NULL);
    if (ok && next < count)
        snprintf(err, err_size, "reading poison events again from %s [%d]: timed out",
                 kafka_topic, (int)p[0].partition);
    return ok && next == count;
}

/* The batch no longer holds the poison events' messages (a staged event's
 * message is dropped to keep memory flat), so a consumer of their own reads
 * them again, and each goes to the DLQ unchanged with its reason. */
static bool publish_poisons(collector *c, batch *b, char *err, size_t err_size)
{
    if (b->poison_count == 0)
        return true;
    qsort(b->poisons, b->poison_count, sizeof *b->poisons, compare_poisons);
    rd_kafka_t *reader = make_reader(err, err_size);
    if (reader == NULL)
        return false;
    c->dlq_failures = 0;
    bool ok = true;
    for (size_t i = 0, end; ok && i < b->poison_count; i = end) {
        for (end = i; end < b->poison_count && b->poisons[end].partition == b->poisons[i].partition;)
            end++;
        ok = republish_partition(c, reader, &b->poisons[i], end - i, err, err_size);
    }
    rd_kafka_consumer_close(reader);
    rd_kafka_destroy(reader);
    return ok && dlq_confirm(c, err, err_size);
}

static void write_isolating(collector *c, const char *why)
{
    batch *b = c->writing;
    char err[512], reason[512];
    snprintf(reason, sizeof reason, "%s", why);
    flatten_lines(reason);
    log_warn("batch of %zu events refused by the database (%s); writing it in parts to find "
             "the events at fault",
             b->event_count, reason);
    store_disconnect(c->db); /* whatever the pipeline left: start afresh */
    c->writing_sent = false;
    c->rollups_sent = false;
    b->poison_count = 0;
    if (isolate_range(c, 0, b->event_count, b->event_count > 1, err, sizeof err) == PART_FAILED) {
        metrics_add(m_db_errors, 1);
        write_failed(c, PAUSE_DATABASE, err);
        return;
    }
    if (!publish_poisons(c, b, err, sizeof err)) {
        metrics_add(m_dlq_errors, 1);
        write_failed(c, PAUSE_POISON_REFETCH, err);
        return;
    }
    log_info("batch written in parts: %zu events sent to the DLQ, %llu counted", b->poison_count,
             (unsigned long long)b->counted_earlier);
    write_done(c, 0);
}

/* ---- Kafka ------------------------------------------------------------- */

static void on_rebalance(rd_kafka_t *rk, rd_kafka_resp_err_t err,
                         rd_kafka_topic_partition_list_t *partitions, void *opaque)
{
    collector *c = opaque;
    bool cooperative = strcmp(rd_kafka_rebalance_protocol(rk), "COOPERATIVE") == 0;
    if (err == RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS) {
        log_info("assigned %d partition(s) (%s)", partitions->cnt,
                 cooperative ? "cooperative" : "eager");
        c->ever_assigned = true;
        rd_kafka_error_t *aerr = NULL;
        if (cooperative)
            aerr = rd_kafka_incremental_assign(rk, partitions);
        else
            rd_kafka_assign(rk, partitions);
        if (aerr) {
            log_error("incremental assign: %s", rd_kafka_error_string(aerr));
            rd_kafka_error_destroy(aerr);
        }
        if (c->paused && partitions->cnt > 0)
            rd_kafka_pause_partitions(rk, partitions);
        return;
    }
    if (err == RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS) {
        log_info("revoking %d partition(s)%s", partitions->cnt,
                 rd_kafka_assignment_lost(rk) ? " (assignment lost)" : "");
        /* Write what was consumed while these partitions are still ours, so
         * the new owner starts after it. If that fails the batches are kept
         * and written later: their events may then be processed by the new
         * owner too, and the deduplication record counts them once, whoever
         * commits first. */
        if (!rd_kafka_assignment_lost(rk)) {
            c->synchronous_commit = true;
            write_all_now(c);
            c->synchronous_commit = false;
        }
        if (cooperative) {
            rd_kafka_error_t *uerr = rd_kafka_incremental_unassign(rk, partitions);
            if (uerr) {
                log_error("incremental unassign: %s", rd_kafka_error_string(uerr));
                rd_kafka_error_destroy(uerr);
            }
        } else {
            rd_kafka_assign(rk, NULL);
        }
        return;
    }
    log_error("rebalance failed: %s", rd_kafka_err2str(err));
    rd_kafka_assign(rk, NULL);
}

static void on_kafka_log(const rd_kafka_t *rk, int level, const char *facility, const char *text)
{
    (void)rk;
    if (level <= 3)
        log_error("kafka %s: %s", facility, text);
    else if (level <= 4)
        log_warn("kafka %s: %s", facility, text);
    else
        log_debug("kafka %s: %s", facility, text);
}

static void on_kafka_error(rd_kafka_t *rk, int err, const char *reason, void *opaque)
{
    (void)rk;
    (void)opaque;
    if (err == RD_KAFKA_RESP_ERR__FATAL) {
        log_error("fatal Kafka error: %s; stopping", reason);
        stop_requested = 1;
        return;
    }
    log_warn("Kafka: %s (%s)", reason, rd_kafka_err2name((rd_kafka_resp_err_t)err));
}

static bool set_conf(rd_kafka_conf_t *conf, const char *name, const char *value)
{
    char err[256];
    if (rd_kafka_conf_set(conf, name, value, err, sizeof err) != RD_KAFKA_CONF_OK) {
        /* Never echo a secret's value. */
        log_error("Kafka setting %s=%s: %s", name,
                  strcmp(name, "sasl.password") == 0 ? "(hidden)" : value, err);
        return false;
    }
    return true;
}

/* The brokers and how to reach them (TLS, SASL), for every client. */
static bool set_connection(rd_kafka_conf_t *conf, const char *client_id)
{
    return set_conf(conf, "bootstrap.servers", kafka_brokers) &&
           set_conf(conf, "client.id", client_id) &&
           set_conf(conf, "security.protocol", kafka_security_protocol) &&
           (kafka_sasl_mechanism == NULL ||
            set_conf(conf, "sasl.mechanisms", kafka_sasl_mechanism)) &&
           (kafka_sasl_username == NULL || set_conf(conf, "sasl.username", kafka_sasl_username)) &&
           (kafka_sasl_password == NULL || set_conf(conf, "sasl.password", kafka_sasl_password)) &&
           (kafka_ssl_ca_location == NULL ||
            set_conf(conf, "ssl.ca.location", kafka_ssl_ca_location));
}

static rd_kafka_t *make_consumer(collector *c)
{
    char session[24], queued[24];
    snprintf(session, sizeof session, "%lld", session_timeout_ms);
    /* What librdkafka pre-fetches is most of this process's memory: 20 MB of
     * queued messages and 8 MB fetch responses keep the parser fed (measured:
     * an 8 MB queue halves throughput) within the 100 MB budget. When the
     * queue is full librdkafka 2.0 waits fetch.error.backoff.ms before
     * fetching again; its default of 500 ms stalls a fast consumer. */
    snprintf(queued, sizeof queued, "%lld", 20480LL);
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    bool ok = set_connection(conf, "tally-collector") &&
              set_conf(conf, "group.id", kafka_group) &&
              /* Offsets are committed by us, after the database commit. */
              set_conf(conf, "enable.auto.commit", "false") &&
              set_conf(conf, "enable.auto.offset.store", "false") &&
              /* A new group starts at the beginning: nothing published is skipped. */
              set_conf(conf, "auto.offset.reset", "earliest") &&
              set_conf(conf, "partition.assignment.strategy", assignment_strategy) &&
              set_conf(conf, "session.timeout.ms", session) &&
              set_conf(conf, "heartbeat.interval.ms", session_timeout_ms >= 9000 ? "3000" : "500") &&
              set_conf(conf, "queued.max.messages.kbytes", queued) &&
              set_conf(conf, "fetch.max.bytes", "8388608") &&
              set_conf(conf, "fetch.error.backoff.ms", "10") &&
              set_conf(conf, "log.queue", "false");
    if (!ok) {
        rd_kafka_conf_destroy(conf);
        return NULL;
    }
    rd_kafka_conf_set_opaque(conf, c);
    rd_kafka_conf_set_rebalance_cb(conf, on_rebalance);
    rd_kafka_conf_set_log_cb(conf, on_kafka_log);
    rd_kafka_conf_set_error_cb(conf, on_kafka_error);
    char err[512];
    rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, err, sizeof err);
    if (rk == NULL) {
        log_error("creating the Kafka consumer: %s", err);
        rd_kafka_conf_destroy(conf);
        return NULL;
    }
    /* rd_kafka_new() took ownership of conf. */
    rd_kafka_poll_set_consumer(rk);
    rd_kafka_topic_partition_list_t *topics = rd_kafka_topic_partition_list_new(1);
    rd_kafka_topic_partition_list_add(topics, kafka_topic, RD_KAFKA_PARTITION_UA);
    rd_kafka_resp_err_t serr = rd_kafka_subscribe(rk, topics);
    rd_kafka_topic_partition_list_destroy(topics);
    if (serr) {
        log_error("subscribing to %s: %s", kafka_topic, rd_kafka_err2str(serr));
        rd_kafka_destroy(rk);
        return NULL;
    }
    return rk;
}

static rd_kafka_t *make_dlq_producer(collector *c)
{
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    bool ok = set_connection(conf, "tally-collector-dlq") &&
              /* A rejected event must not be lost or reordered on retries. */
              set_conf(conf, "enable.idempotence", "true") && set_conf(conf, "acks", "all") &&
              set_conf(conf, "linger.ms", "5") && set_conf(conf, "log.queue", "false");
    if (!ok) {
        rd_kafka_conf_destroy(conf);
        return NULL;
    }
    rd_kafka_conf_set_opaque(conf, c);
    rd_kafka_conf_set_dr_msg_cb(conf, dlq_delivered);
    rd_kafka_conf_set_log_cb(conf, on_kafka_log);
    rd_kafka_conf_set_error_cb(conf, on_kafka_error);
    char err[512];
    rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, err, sizeof err);
    if (rk == NULL) {
        log_error("creating the DLQ producer: %s", err);
        rd_kafka_conf_destroy(conf);
    }
    return rk;
}

/* A consumer that only reads given offsets again (poison events for the
 * DLQ): it never subscribes or commits, so the group is untouched. */
static rd_kafka_t *make_reader(char *err, size_t err_size)
{
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    char group[300];
    snprintf(group, sizeof group, "%s-reread", kafka_group);
    bool ok = set_connection(conf, "tally-collector-reread") && set_conf(conf, "group.id", group) &&
              set_conf(conf, "enable.auto.commit", "false") &&
              set_conf(conf, "enable.auto.offset.store", "false") &&
              set_conf(conf, "log.queue", "false");
    if (!ok) {
        rd_kafka_conf_destroy(conf);
        snprintf(err, err_size, "configuring the poison reader failed");
        return NULL;
    }
    rd_kafka_conf_set_log_cb(conf, on_kafka_log);
    char kerr[256];
    rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, kerr, sizeof kerr);
    if (rk == NULL) {
        rd_kafka_conf_destroy(conf);
        snprintf(err, err_size, "creating the poison reader: %s", kerr);
        return NULL;
    }
    rd_kafka_poll_set_consumer(rk);
    return rk;
}

/* Lag = high watermark - where this group is: our position on partitions we
 * have read since assignment; the group's committed offset on the others (a
 * restarted instance that is caught up must not report the whole log);
 * the log start where nothing was ever committed (auto.offset.reset is
 * earliest). A partition whose committed offset cannot be fetched in 200 ms
 * is left out of this sample. */
static void update_lag(collector *c)
{
    rd_kafka_topic_partition_list_t *owned = NULL;
    if (rd_kafka_assignment(c->consumer, &owned) != RD_KAFKA_RESP_ERR_NO_ERROR)
        return;
    rd_kafka_position(c->consumer, owned);
    rd_kafka_topic_partition_list_t *unread = rd_kafka_topic_partition_list_new(owned->cnt);
    for (int i = 0; i < owned->cnt; i++) {
        if (owned->elems[i].offset < 0)
            rd_kafka_topic_partition_list_add(unread, owned->elems[i].topic,
                                              owned->elems[i].partition);
    }
    bool committed_known = unread->cnt == 0 ||
                           rd_kafka_committed(c->consumer, unread, 200) == RD_KAFKA_RESP_ERR_NO_ERROR;
    int64_t lag = 0;
    for (int i = 0; i < owned->cnt; i++) {
        const rd_kafka_topic_partition_t *p = &owned->elems[i];
        int64_t low = 0, high = 0;
        if (rd_kafka_get_watermark_offsets(c->consumer, p->topic, p->partition, &low, &high) !=
                RD_KAFKA_RESP_ERR_NO_ERROR ||
            high < 0)
            continue;
        int64_t position = p->offset;
        if (position < 0) {
            const rd_kafka_topic_partition_t *committed =
                rd_kafka_topic_partition_list_find(unread, p->topic, p->partition);
            if (!committed_known || committed == NULL || committed->err)
                continue;
            position = committed->offset >= 0 ? committed->offset : low;
        }
        if (high > position)
            lag += high - position;
    }
    metrics_set(m_lag, (double)lag);
    rd_kafka_topic_partition_list_destroy(unread);
    rd_kafka_topic_partition_list_destroy(owned);
}

/* ---- main -------------------------------------------------------------- */

static const char *current_pause_reason(void)
{
    for (int r = 0; r < PAUSE__COUNT; r++) {
        if (metrics_gauge_value(m_pause_reason[r]) > 0)
            return pause_reason_names[r];
    }
    return "no";
}

/* Unhealthy when the loop stopped turning, or when consumed events have
 * waited longer than TALLY_STALL_TIMEOUT_S to be written: either way
 * nothing is being counted, and a restart or an operator is needed. */
static bool health(char *detail, size_t detail_size)
{
    long long idle = (long long)(time(NULL) - last_loop_at);
    long long stalled = (long long)stalled_seconds;
    snprintf(detail, detail_size, "main loop ran %llds ago; paused: %s; batch waiting %llds "
             "(limit %llds)",
             idle, current_pause_reason(), stalled, stall_timeout_s);
    return idle < 60 && stalled < stall_timeout_s;
}

static void refresh_keys(collector *c)
{
    keycache *fresh = keycache_new();
    char err[512];
    if (fresh == NULL)
        return;
    if (!store_load_keys(c->db, fresh, err, sizeof err)) {
        log_warn("key cache not refreshed: %s", err);
        keycache_free(fresh);
        return;
    }
    keycache_free(c->keys);
    c->keys = fresh;
    metrics_set(m_key_cache_size, (double)keycache_size(fresh));
}

static void maintain_partitions(collector *c)
{
    int created = 0, dropped = 0;
    char err[512];
    if (store_maintain_partitions(c->db, &created, &dropped, err, sizeof err)) {
        if (created || dropped)
            log_info("event_ids partitions: %d created, %d expired ones dropped", created,
                     dropped);
    } else {
        log_warn("%s", err);
    }
}

int main(int argc, char **argv)
{
    char err[512];
    log_level level;
    int status = cfg_start(
        "tally-collector", "tally-collector [--flag value ...]",
        "Consumes CloudEvents usage events from Kafka, deduplicates them by (source, id) in "
        "PostgreSQL and\nrolls them up per key / plan / hour and quota period; rejected events "
        "go to the DLQ topic.\nSIGTERM finishes the current batch and exits; a second signal "
        "exits at once.",
        settings, sizeof settings / sizeof settings[0], argc, argv, &log_level_text, &level);
    if (status >= 0)
        return status;
    log_init("collector", level);
    register_metrics();
    /* librdkafka's fetch buffers are megabytes each and short-lived: keep
     * them mmapped, so freeing one returns it to the system, instead of
     * letting glibc raise its threshold and hold them in the heap. */
    mallopt(M_MMAP_THRESHOLD, 256 * 1024);

    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
    last_loop_at = (sig_atomic_t)time(NULL);

    collector c;
    memset(&c, 0, sizeof c);
    if (!batch_init(&c.batches[0]) || !batch_init(&c.batches[1])) {
        log_error("out of memory");
        return 1;
    }
    c.filling = &c.batches[0];
    for (int i = 0; i < ROLLUP_HOURLY_COLUMNS; i++)
        buf_init(&c.hourly[i], 256u << 20);
    for (int i = 0; i < ROLLUP_COUNTER_COLUMNS; i++)
        buf_init(&c.counters[i], 256u << 20);
    c.limits.lateness_usec = lateness_days * USEC_PER_DAY;
    c.limits.max_bytes = (size_t)max_event_bytes;
    c.db = store_new(database_url, (int)lateness_days);
    c.keys = keycache_new();
    ops_server *ops = ops_start(metrics_addr, health, err, sizeof err);
    if (ops == NULL) {
        log_error("TALLY_METRICS_ADDR: %s", err);
        return 1;
    }
    /* The database must be reachable once before consuming anything. */
    for (int64_t backoff = 100000; !stop_requested;) {
        if (store_ensure_connected(c.db, err, sizeof err))
            break;
        log_warn("%s; retrying in %lld ms", err, (long long)(backoff / 1000));
        usleep((useconds_t)backoff);
        last_loop_at = (sig_atomic_t)time(NULL);
        backoff = backoff * 2 > 5 * USEC_PER_SEC ? 5 * USEC_PER_SEC : backoff * 2;
    }
    if (stop_requested) {
        ops_stop(ops);
        return 0;
    }
    maintain_partitions(&c);
    refresh_keys(&c);
    c.consumer = make_consumer(&c);
    c.dlq = make_dlq_producer(&c);
    if (c.consumer == NULL || c.dlq == NULL) {
        ops_stop(ops);
        return 1;
    }
    log_info("consuming %s as group %s from %s (batches of up to %lld events or %lld ms)",
             kafka_topic, kafka_group, kafka_brokers, batch_max_events, batch_max_wait_ms);

    int64_t next_key_refresh = time_now_usec() + key_refresh_ms * 1000;
    int64_t next_maintenance = time_now_usec() + 3600 * USEC_PER_SEC;
    int64_t next_lag = 0;
    int64_t last_db_check = 0;
    while (!stop_requested) {
        int64_t now = time_now_usec();
        /* Checking the database costs a system call: while messages keep
         * coming, do it every half millisecond rather than per message. */
        if (c.writing_sent && (c.caught_up || now - last_db_check >= 500)) {
            write_poll(&c, false);
            last_db_check = now;
        }
        last_loop_at = (sig_atomic_t)(now / USEC_PER_SEC);
        stalled_seconds = (sig_atomic_t)(c.writing ? (now - c.writing_since) / USEC_PER_SEC : 0);
        metrics_set(m_stalled_seconds, (double)stalled_seconds);
        if (c.writing && !c.writing_sent && now >= c.retry_at)
            write_start(&c);
        if (c.writing == NULL) {
            /* The connection is idle between writes: the moment for the
             * periodic work that needs it. */
            if (now >= next_key_refresh) {
                refresh_keys(&c);
                next_key_refresh = now + key_refresh_ms * 1000;
            }
            if (now >= next_maintenance) {
                maintain_partitions(&c);
                next_maintenance = now + 3600 * USEC_PER_SEC;
            }
        }
        batch *f = c.filling;
        bool full = f->consumed >= (size_t)batch_max_events;
        /* Under light load a batch goes after batch_max_wait_ms; while events
         * keep arriving it fills up (bigger batches amortise the rollup
         * upserts) but never waits more than a second. */
        int64_t age = now - f->first_at;
        bool due = !batch_empty(f) &&
                   ((age >= batch_max_wait_ms * 1000 && c.caught_up) || age >= USEC_PER_SEC);
        if (c.writing == NULL && (full || due)) {
            write_next(&c);
            continue;
        }
        if (full && c.writing && c.writing_sent) {
            /* Both batches busy: wait for the database (heartbeats go on in
             * librdkafka's background thread). */
            write_poll(&c, true);
            continue;
        }
        int timeout_ms;
        if (c.writing && c.writing_sent)
            timeout_ms = 1; /* check the statement in flight often */
        else if (c.writing)
            timeout_ms = (int)((c.retry_at - now) / 1000);
        else if (!batch_empty(f))
            timeout_ms = (int)((f->first_at + batch_max_wait_ms * 1000 - now) / 1000);
        else
            timeout_ms = 100;
        timeout_ms = timeout_ms < 0 ? 0 : timeout_ms > 100 ? 100 : timeout_ms;
        /* Polled even while the database is unavailable: that serves the
         * group's callbacks so membership survives; the partitions are
         * paused then, so little or nothing arrives. */
        rd_kafka_message_t *message = rd_kafka_consumer_poll(c.consumer, timeout_ms);
        c.caught_up = message == NULL;
        if (message != NULL) {
            if (message->err) {
                if (message->err != RD_KAFKA_RESP_ERR__PARTITION_EOF)
                    log_warn("consumer: %s", rd_kafka_message_errstr(message));
                rd_kafka_message_destroy(message);
            } else if (!batch_add(&c, message)) {
                log_error("out of memory or batch bounds exceeded; stopping without "
                          "acknowledging the current batches");
                rd_kafka_message_destroy(message);
                break;
            }
        }
        if (now >= next_lag) {
            update_lag(&c);
            next_lag = now + 2 * USEC_PER_SEC;
        }
    }

    /* SIGTERM: finish the batches (a few tries while the database answers),
     * then leave the group cleanly. */
    log_info("stopping: writing the last %zu events",
             c.filling->consumed + (c.writing ? c.writing->consumed : 0));
    c.synchronous_commit = true;
    for (int attempt = 0; attempt < 20 && !write_all_now(&c); attempt++)
        usleep(250 * 1000);
    if (c.writing || !batch_empty(c.filling))
        log_warn("exiting with events not written; they are read again on restart");
    bool closable = c.ever_assigned || strcmp(assignment_strategy, "cooperative-sticky") != 0;
    if (closable) {
        rd_kafka_consumer_close(c.consumer);
        rd_kafka_destroy(c.consumer);
    }
    rd_kafka_flush(c.dlq, 5000);
    rd_kafka_destroy(c.dlq);
    batch_destroy(&c.batches[0]);
    batch_destroy(&c.batches[1]);
    for (int i = 0; i < ROLLUP_HOURLY_COLUMNS; i++)
        buf_free(&c.hourly[i]);
    for (int i = 0; i < ROLLUP_COUNTER_COLUMNS; i++)
        buf_free(&c.counters[i]);
    keycache_free(c.keys);
    store_free(c.db);
    ops_stop(ops);
    if (!closable) {
        /* librdkafka 2.0.2 (Debian 12) aborts in
         * rd_kafka_sticky_assignor_state_destroy when a cooperative-sticky
         * consumer that never had an assignment is closed or destroyed
         * (librdkafka issue 4312, fixed in 2.3.0). It holds no partitions and
         * consumed nothing, so there is nothing to hand back: exit without
         * destroying it; the group drops the member after its session
         * timeout. _exit, because the handle is deliberately not freed. */
        log_info("stopped (before the first assignment)");
        fflush(NULL);
        _exit(0);
    }
    log_info("stopped");
    return 0;
}
