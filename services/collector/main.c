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
 * trip. The price of a replay is only the work of re-reading a batch.
 *
 * Several writers (TALLY_WRITERS connections) write batches at once, so
 * PostgreSQL works on more than one core. What is consumed is split by key
 * into one batch per writer (a round: batch.c, lane_of), so the batches of
 * a round never add to the same rollup rows and never wait for each
 * other's commit. Their transactions may commit in any order, and the
 * guarantee holds: an event two uncommitted batches hold is recorded by the
 * earlier one only (writer.c, leave_to_earlier_batches), and offsets are
 * still committed in consumption order (offsets.c; a round's offsets go
 * with its last batch), so Kafka's committed offset never passes a batch
 * that is not in the database. */
#include <librdkafka/rdkafka.h>
#include <malloc.h>
#include <libpq-fe.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "collector.h"
#include "status.h"
#include "config.h"
#include "log.h"
#include "stopsignal.h"
#include "ops.h"
#include "timeutil.h"

/* ---- settings ---------------------------------------------------------- */

static collector_config config;

static const cfg_setting settings[] = {
    {"TALLY_DATABASE_URL", "database-url", CFG_STRING, &config.database_url, NULL, true, true, 0, 0,
     "libpq connection string of the Tally database"},
    {"TALLY_KAFKA_BROKERS", "kafka-brokers", CFG_STRING, &config.kafka.brokers, NULL, true, false,
     0, 0, "Kafka bootstrap servers, host:port[,host:port...]"},
    {"TALLY_KAFKA_TOPIC", "kafka-topic", CFG_STRING, &config.kafka_topic, "usage-events", false,
     false, 0, 0, "topic the usage events are read from"},
    {"TALLY_KAFKA_DLQ_TOPIC", "kafka-dlq-topic", CFG_STRING, &config.dlq_topic, "usage-events-dlq",
     false, false, 0, 0, "topic rejected events are published to, with the reason in headers"},
    {"TALLY_KAFKA_GROUP", "kafka-group", CFG_STRING, &config.kafka_group, "tally-collector", false,
     false, 0, 0, "consumer group; run more instances with the same group to scale"},
    {"TALLY_METRICS_ADDR", "metrics-addr", CFG_STRING, &config.metrics_addr, "127.0.0.1:9101",
     false, false, 0, 0, "where GET /metrics and GET /healthz listen"},
    {"TALLY_LOG_LEVEL", "log-level", CFG_STRING, &config.log_level_text, "info", false, false, 0, 0,
     "debug, info, warn or error"},
    {"TALLY_BATCH_MAX_EVENTS", "batch-max-events", CFG_INT, &config.batch_max_events, "50000",
     false, false, 1, BATCH_MAX_EVENTS_LIMIT, "a batch is written once it holds this many events"},
    {"TALLY_BATCH_MAX_WAIT_MS", "batch-max-wait-ms", CFG_INT, &config.batch_max_wait_ms, "100",
     false, false, 1, 200,
     "...or, when no more events are waiting, once its first event is this old; "
     "under sustained load batches fill up instead, for at most 1 s"},
    {"TALLY_WRITERS", "writers", CFG_INT, &config.writers, "4", false, false, 1, WRITERS_MAX,
     "database connections writing batches at once, each its own transaction and its own share "
     "of the keys (more use more of PostgreSQL's cores; batches then commit out of order, "
     "offsets still in order)"},
    {"TALLY_FETCH_WAIT_MS", "fetch-wait-ms", CFG_INT, &config.fetch_wait_ms, "10", false, false,
     1, 500,
     "how long the broker may hold a fetch that finds no new events (fetch.wait.max.ms); "
     "a broker that answers only then delays an event by up to this much"},
    {"TALLY_LATENESS_DAYS", "lateness-days", CFG_INT, &config.lateness_days, "35", false, false, 1,
     365,
     "events older than this many days are rejected as too_late; deduplication records are kept "
     "at least this long"},
    {"TALLY_MAX_EVENT_BYTES", "max-event-bytes", CFG_INT, &config.max_event_bytes, "65536", false,
     false, 512, 1048576, "message values above this size are rejected as too_large"},
    {"TALLY_KEY_REFRESH_MS", "key-refresh-ms", CFG_INT, &config.key_refresh_ms, "5000", false,
     false, 100, 3600000,
     "how often the whole key cache is reloaded (a miss is also looked up at once)"},
    {"TALLY_STALL_TIMEOUT_S", "stall-timeout-s", CFG_INT, &config.stall_timeout_s, "60", false,
     false, 5, 86400,
     "/healthz and /readyz answer 503 once consumed events have waited this long "
     "without being written (database or DLQ unavailable), so an orchestrator can act"},
    KAFKACONF_SETTINGS(config.kafka),
    {NULL, "assignment-strategy", CFG_STRING, &config.assignment_strategy, "cooperative-sticky",
     false, false, 0, 0, "Kafka partition assignment: cooperative-sticky, range or roundrobin"},
    {NULL, "session-timeout-ms", CFG_INT, &config.session_timeout_ms, "10000", false, false, 1000,
     300000,
     "how long the group waits for a silent (crashed) instance before its partitions "
     "move"},
};

/* ---- metrics ----------------------------------------------------------- */


static const double batch_size_bounds[] = {1,    10,    100,   500,   1000,  2500,
                                           5000, 10000, 25000, 50000, 100000};
static const double batch_seconds_bounds[] = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                                              0.1,   0.25,   0.5,   1,    2.5,   5};

/* The collector's single-valued metrics: where each goes, and what it is. */
static const struct {
    size_t offset; /* of its metric * in collector_metrics */
    bool gauge;    /* else a counter */
    const char *name, *help;
} scalar_metrics[] = {
#define SCALAR(field, gauge, name, help) {offsetof(collector_metrics, field), gauge, name, help}
    SCALAR(consumed, false, "tally_collector_events_consumed_total",
           "Kafka messages consumed (counted + duplicates + rejected)"),
    SCALAR(counted, false, "tally_collector_events_counted_total",
           "events counted into the rollups for the first time"),
    SCALAR(duplicates, false, "tally_collector_events_duplicate_total",
           "valid events whose (source, id) was already counted"),
    SCALAR(batches, false, "tally_collector_batches_total", "batches committed"),
    SCALAR(lag, true, "tally_collector_consumer_lag",
           "messages behind the high watermark, summed over assigned partitions"),
    SCALAR(db_errors, false, "tally_collector_db_errors_total",
           "failed database operations (each is retried)"),
    SCALAR(dlq_errors, false, "tally_collector_dlq_errors_total",
           "failed DLQ publications (each is retried)"),
    SCALAR(key_cache_size, true, "tally_collector_key_cache_keys", "API keys in the cache"),
    SCALAR(key_lookups, false, "tally_collector_key_cache_miss_lookups_total",
           "database look-ups made for keys missing from the cache"),
    SCALAR(last_commit, true, "tally_collector_last_commit_timestamp_seconds",
           "when the last batch was committed"),
    SCALAR(paused, true, "tally_collector_paused",
           "1 while consumption is paused because a batch cannot be written"),
    SCALAR(stalled_seconds, true, "tally_collector_stalled_seconds",
           "how long the batch being written has waited (0 when none waits); /healthz fails "
           "past TALLY_STALL_TIMEOUT_S"),
#undef SCALAR
};

static void register_metrics(collector_metrics *m)
{
    for (size_t i = 0; i < sizeof scalar_metrics / sizeof scalar_metrics[0]; i++) {
        metric **slot = (metric **)((char *)m + scalar_metrics[i].offset);
        *slot = scalar_metrics[i].gauge
                    ? metrics_gauge(scalar_metrics[i].name, scalar_metrics[i].help, NULL)
                    : metrics_counter(scalar_metrics[i].name, scalar_metrics[i].help, NULL);
    }
    static char code_labels[EVENT_ERR__COUNT][48];
    for (int e = 1; e < EVENT_ERR__COUNT; e++) {
        snprintf(code_labels[e], sizeof code_labels[e], "code=\"%s\"",
                 event_error_code((event_error)e));
        m->rejected[e] = metrics_counter("tally_collector_events_rejected_total",
                                         "events published to the DLQ, by error code",
                                         code_labels[e]);
    }
    static char reason_labels[PAUSE__COUNT][48];
    for (int r = 0; r < PAUSE__COUNT; r++) {
        snprintf(reason_labels[r], sizeof reason_labels[r], "reason=\"%s\"",
                 pause_reason_names[r]);
        m->pause_reason[r] = metrics_gauge(
            "tally_collector_pause_reason",
            "1 for the reason consumption is paused now (0 for the others)", reason_labels[r]);
    }
    m->batch_size = metrics_histogram("tally_collector_batch_events", "events per committed batch",
                                      NULL, batch_size_bounds,
                                      sizeof batch_size_bounds / sizeof batch_size_bounds[0]);
    m->batch_seconds = metrics_histogram(
        "tally_collector_batch_commit_seconds",
        "time to write a batch (DLQ, database transaction, offset commit)", NULL,
        batch_seconds_bounds, sizeof batch_seconds_bounds / sizeof batch_seconds_bounds[0]);
}

/* ---- signals ----------------------------------------------------------- */

static volatile sig_atomic_t last_loop_at;    /* seconds; read by /healthz */
static volatile sig_atomic_t stalled_seconds; /* read by /healthz */
/* The metrics /healthz reads (gauges are safe to read from its thread). */
static const collector_metrics *health_metrics;

/* ---- main -------------------------------------------------------------- */

static const char *current_pause_reason(void)
{
    for (int r = 0; r < PAUSE__COUNT; r++) {
        if (metrics_gauge_value(health_metrics->pause_reason[r]) > 0)
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
    snprintf(detail, detail_size,
             "main loop ran %llds ago; paused: %s; batch waiting %llds "
             "(limit %llds)",
             idle, current_pause_reason(), stalled, config.stall_timeout_s);
    return idle < 60 && stalled < config.stall_timeout_s;
}

static void refresh_keys(collector *c)
{
    keyplans *fresh = keyplans_new();
    char err[512];
    if (fresh == NULL)
        return;
    if (!store_load_keys(c->writers[0].db, fresh, err, sizeof err)) {
        log_warn("key cache not refreshed: %s", err);
        keyplans_free(fresh);
        return;
    }
    keyplans_free(c->keys);
    c->keys = fresh;
    metrics_set(c->m.key_cache_size, (double)keyplans_size(fresh));
}

static bool maintain_partitions(collector *c)
{
    int created = 0, dropped = 0;
    char err[512];
    if (!store_maintain_partitions(c->writers[0].db, &created, &dropped, err, sizeof err)) {
        log_warn("%s (trying again in a minute)", err);
        return false;
    }
    if (created || dropped)
        log_info("event_ids partitions: %d created, %d expired ones dropped", created, dropped);
    return true;
}

/* How long the longest-waiting handed-over batch has waited to be written. */
static int64_t longest_wait_usec(const collector *c, int64_t now)
{
    int64_t longest = 0;
    for (int i = 0; i < c->writer_count; i++) {
        const writer *w = &c->writers[i];
        if (w->batch != NULL && now - w->since > longest)
            longest = now - w->since;
    }
    return longest;
}

/* Events consumed but not yet in the database. */
static size_t unwritten_events(const collector *c)
{
    size_t events = round_consumed(c);
    for (int i = 0; i < c->writer_count; i++) {
        if (c->writers[i].batch != NULL)
            events += c->writers[i].batch->consumed;
    }
    return events;
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
        settings, sizeof settings / sizeof settings[0], argc, argv, &config.log_level_text, &level);
    if (status >= 0)
        return status;
    log_init("collector", level);

    /* librdkafka's fetch buffers are megabytes each and short-lived: keep
     * them mmapped, so freeing one returns it to the system, instead of
     * letting glibc raise its threshold and hold them in the heap. */
    mallopt(M_MMAP_THRESHOLD, 256 * 1024);

    stopsignal_install();
    last_loop_at = (sig_atomic_t)time(NULL);

    collector c;
    memset(&c, 0, sizeof c);
    c.cfg = &config;
    register_metrics(&c.m);
    health_metrics = &c.m;
    /* A full batch, plus what may still arrive while consumption is paused
     * (bounded by queued.max.messages.kbytes). */
    size_t capacity = (size_t)config.batch_max_events + BATCH_SPILL_EVENTS;
    c.writer_count = (int)config.writers;
    c.lane_count = c.writer_count;
    for (int i = 0; i < c.writer_count + c.lane_count; i++) {
        if (!batch_init(&c.batches[i], capacity)) {
            log_error("out of memory");
            return 1;
        }
    }
    for (int i = 0; i < c.lane_count; i++)
        c.filling[i] = &c.batches[i];
    for (int i = 0; i < c.writer_count; i++) {
        c.writers[i].index = i;
        c.writers[i].db = store_new(config.database_url, (int)config.lateness_days);
        if (c.writers[i].db == NULL) {
            log_error("out of memory");
            return 1;
        }
    }
    for (int i = 0; i < ROLLUP_HOURLY_COLUMNS; i++)
        buf_init(&c.hourly[i], 256u << 20);
    for (int i = 0; i < ROLLUP_COUNTER_COLUMNS; i++)
        buf_init(&c.counters[i], 256u << 20);
    c.limits.lateness_usec = config.lateness_days * USEC_PER_DAY;
    c.limits.max_bytes = (size_t)config.max_event_bytes;
    c.keys = keyplans_new();
    ops_server *ops = ops_start(config.metrics_addr, health, err, sizeof err);
    if (ops == NULL) {
        log_error("TALLY_METRICS_ADDR: %s", err);
        return 1;
    }
    /* The database must be reachable once before consuming anything. */
    for (int64_t backoff = 100000; !stopsignal_requested();) {
        if (store_ensure_connected(c.writers[0].db, err, sizeof err))
            break;
        log_warn("%s; retrying in %lld ms", err, (long long)(backoff / 1000));
        usleep((useconds_t)backoff);
        last_loop_at = (sig_atomic_t)time(NULL);
        backoff = backoff * 2 > 5 * USEC_PER_SEC ? 5 * USEC_PER_SEC : backoff * 2;
    }
    if (stopsignal_requested()) {
        ops_stop(ops);
        return 0;
    }
    bool partitions_ready = maintain_partitions(&c);
    refresh_keys(&c);
    status_init(config.kafka_group);
    c.consumer = make_consumer(&c);
    c.dlq = make_dlq_producer(&c);
    if (c.consumer == NULL || c.dlq == NULL) {
        ops_stop(ops);
        return 1;
    }
    c.consumer_queue = rd_kafka_queue_get_consumer(c.consumer);
    log_info("consuming %s as group %s from %s (batches of up to %lld events or %lld ms, %d "
             "writers)",
             config.kafka_topic, config.kafka_group, config.kafka.brokers, config.batch_max_events,
             config.batch_max_wait_ms, c.writer_count);

    int64_t next_key_refresh = time_now_usec() + config.key_refresh_ms * 1000;
    int64_t next_maintenance = time_now_usec() + (partitions_ready ? 3600 : 60) * USEC_PER_SEC;
    int64_t next_lag = 0;
    int64_t last_db_check = 0;
    while (!stopsignal_requested()) {
        int64_t now = time_now_usec();
        /* Checking the database costs a system call: while messages keep
         * coming, do it every half millisecond rather than per message. */
        if (writers_busy(&c) && (c.caught_up || now - last_db_check >= 500)) {
            writers_poll(&c, 0);
            last_db_check = now;
        }
        last_loop_at = (sig_atomic_t)(now / USEC_PER_SEC);
        stalled_seconds = (sig_atomic_t)(longest_wait_usec(&c, now) / USEC_PER_SEC);
        metrics_set(c.m.stalled_seconds, (double)stalled_seconds);
        int64_t retry_at = retry_writers(&c, now);
        /* Writer 0's connection is idle between its writes: the moment for
         * the key refresh. */
        if (c.writers[0].batch == NULL && now >= next_key_refresh) {
            refresh_keys(&c);
            next_key_refresh = now + config.key_refresh_ms * 1000;
        }
        if (c.caught_up)
            write_status_if_behind(&c);
        /* The partition upkeep waits for every open transaction on
         * event_ids: no batch is handed over while it is due, and it runs
         * once no writer has one open. */
        bool maintenance_due = now >= next_maintenance;
        if (maintenance_due && !writers_busy(&c)) {
            next_maintenance = now + (maintain_partitions(&c) ? 3600 : 60) * USEC_PER_SEC;
            continue;
        }
        const batch *head = c.filling[0]; /* the round's age */
        bool full = round_consumed(&c) >= (size_t)config.batch_max_events;
        /* Under light load a batch goes after config.batch_max_wait_ms; while events
         * keep arriving it fills up (bigger batches amortise the rollup
         * upserts) but never waits more than a second. */
        int64_t age = now - head->first_at;
        bool due = !round_empty(&c) &&
                   ((age >= config.batch_max_wait_ms * 1000 && c.caught_up) || age >= USEC_PER_SEC);
        if ((full || due) && !maintenance_due && round_ready(&c)) {
            write_round(&c);
            continue;
        }
        bool busy = writers_busy(&c);
        if (full && busy) {
            /* Every writer busy: wait for the database (heartbeats go on in
             * librdkafka's background thread). */
            writers_poll(&c, 100);
            continue;
        }
        int timeout_ms;
        if (busy)
            timeout_ms = 1; /* check the statements in flight often */
        else if (retry_at != 0)
            timeout_ms = (int)((retry_at - now) / 1000);
        else if (!round_empty(&c))
            timeout_ms = (int)((head->first_at + config.batch_max_wait_ms * 1000 - now) / 1000);
        else
            timeout_ms = 100;
        timeout_ms = timeout_ms < 0 ? 0 : timeout_ms > 100 ? 100 : timeout_ms;
        /* Polled even while the database is unavailable: that serves the
         * group's callbacks so membership survives; the partitions are
         * paused then, so little or nothing arrives. */
        rd_kafka_message_t *message = rd_kafka_consumer_poll(c.consumer, timeout_ms);
        c.caught_up = message == NULL;
        if (message != NULL) {
            c.last_message_at = time_now_usec(); /* the poll may have waited */
            note_fetch_queue(&c, message);
        } else {
            wake_starved_fetcher(&c, time_now_usec());
        }
        if (message != NULL) {
            if (message->err) {
                if (message->err != RD_KAFKA_RESP_ERR__PARTITION_EOF)
                    log_warn("consumer: %s", rd_kafka_message_errstr(message));
                rd_kafka_message_destroy(message);
            } else if (!batch_add(&c, message)) {
                /* The message was not taken, but its offset may already be
                 * marked: writing now could acknowledge it unwritten. Exit
                 * as a crash would (nothing committed past the database,
                 * every event read again by the next owner), status 1 so
                 * the supervisor restarts us. */
                log_error("out of memory or batch bounds exceeded; exiting without "
                          "acknowledging the current batches");
                fflush(NULL);
                _exit(1);
            }
        }
        if (now >= next_lag) {
            update_lag(&c);
            next_lag = now + 2 * USEC_PER_SEC;
        }
    }

    /* SIGTERM: finish the batches (a few tries while the database answers),
     * then leave the group cleanly. */
    log_info("stopping: writing the last %zu events", unwritten_events(&c));
    c.synchronous_commit = true;
    for (int attempt = 0; attempt < 20 && !write_all_now(&c); attempt++)
        usleep(250 * 1000);
    if (unwritten_events(&c) > 0)
        log_warn("exiting with events not written; they are read again on restart");
    bool closable =
        c.ever_assigned || strcmp(config.assignment_strategy, "cooperative-sticky") != 0;
    rd_kafka_queue_destroy(c.consumer_queue);
    if (closable) {
        rd_kafka_consumer_close(c.consumer);
        rd_kafka_destroy(c.consumer);
    }
    rd_kafka_flush(c.dlq, 5000);
    rd_kafka_destroy(c.dlq);
    for (int i = 0; i < c.writer_count + c.lane_count; i++)
        batch_destroy(&c.batches[i]);
    offsets_free(&c);
    for (int i = 0; i < ROLLUP_HOURLY_COLUMNS; i++)
        buf_free(&c.hourly[i]);
    for (int i = 0; i < ROLLUP_COUNTER_COLUMNS; i++)
        buf_free(&c.counters[i]);
    keyplans_free(c.keys);
    for (int i = 0; i < c.writer_count; i++) {
        store_free(c.writers[i].db);
        free(c.writers[i].own_digests);
        free(c.writers[i].own_week_days);
    }
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
