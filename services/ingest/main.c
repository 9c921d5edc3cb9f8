/* tally-ingest: POST /v1/events for gateways and services without a Kafka
 * client. Takes CloudEvents over HTTP (structured and batch modes), checks
 * each event with the collector's own parser, produces the accepted ones to
 * the events topic with an idempotent producer and answers 202 only once
 * the broker acknowledged every one of them (docs/CONTRACT.md §3.7).
 *
 * A program of its own rather than routes of tally-api: a request here
 * waits for Kafka (milliseconds normally, up to the message timeout during
 * an outage) on its connection's thread, and a burst of batches is CPU for
 * JSON parsing; neither may touch /v1/authorize's latency, which is decided
 * from memory on the api's HTTP threads. Separate, it also scales and
 * fails on its own, and needs no database. */
#include <microhttpd.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "config.h"
#include "ingest.h"
#include "kafkaconf.h"
#include "log.h"
#include "ops.h"
#include "stopsignal.h"
#include "timeutil.h"

/* ---- settings ---------------------------------------------------------- */

/* A guessable token would let anyone bill anyone's keys. */
#define INGEST_TOKEN_MIN 16

static kafkaconf_connection kafka;
static const char *kafka_topic, *listen_addr, *ingest_token, *metrics_addr, *log_level_text;
static long long max_batch_events, max_body_bytes, lateness_days, max_event_bytes;
static long long produce_timeout_ms, linger_ms, queue_max_messages, connection_limit;

static const cfg_setting settings[] = {
    {"TALLY_KAFKA_BROKERS", "kafka-brokers", CFG_STRING, &kafka.brokers, NULL, true, false, 0, 0,
     "Kafka bootstrap servers, host:port[,host:port...]"},
    {"TALLY_KAFKA_TOPIC", "kafka-topic", CFG_STRING, &kafka_topic, "usage-events", false, false,
     0, 0, "topic the accepted events are produced to (the collector's)"},
    KAFKACONF_SETTINGS(kafka),
    {"TALLY_INGEST_ADDR", "ingest-addr", CFG_STRING, &listen_addr, "127.0.0.1:8081", false,
     false, 0, 0, "where POST /v1/events listens (host:port)"},
    {"TALLY_INGEST_TOKEN", "ingest-token", CFG_STRING, &ingest_token, NULL, true, true, 0, 0,
     "bearer token producers send (at least 16 characters; never logged); not the admin "
     "token"},
    {"TALLY_INGEST_MAX_BATCH_EVENTS", "max-batch-events", CFG_INT, &max_batch_events, "1000",
     false, false, 1, 10000, "events a batch may hold (more: 413 too_many_events)"},
    {"TALLY_INGEST_MAX_BODY_BYTES", "max-body-bytes", CFG_INT, &max_body_bytes, "1048576", false,
     false, 4096, 16777216, "bytes a request body may hold (more: 413 body_too_large)"},
    {"TALLY_INGEST_PRODUCE_TIMEOUT_MS", "produce-timeout-ms", CFG_INT, &produce_timeout_ms,
     "5000", false, false, 1000, 300000,
     "an event the broker has not acknowledged by then fails its request with 503"},
    {"TALLY_LATENESS_DAYS", "lateness-days", CFG_INT, &lateness_days, "35", false, false, 1, 365,
     "events older than this many days are refused as too_late (keep the collector's value)"},
    {"TALLY_MAX_EVENT_BYTES", "max-event-bytes", CFG_INT, &max_event_bytes, "65536", false, false,
     512, 1048576, "an event above this size is refused as too_large (keep the collector's value)"},
    {"TALLY_METRICS_ADDR", "metrics-addr", CFG_STRING, &metrics_addr, "127.0.0.1:9103", false,
     false, 0, 0, "where GET /metrics and GET /healthz listen"},
    {"TALLY_LOG_LEVEL", "log-level", CFG_STRING, &log_level_text, "info", false, false, 0, 0,
     "debug, info, warn or error"},
    {NULL, "connections", CFG_INT, &connection_limit, "256", false, false, 1, 4096,
     "concurrent connections, one thread each (a request waits for Kafka on it)"},
    {NULL, "linger-ms", CFG_INT, &linger_ms, "2", false, false, 0, 1000,
     "how long an event waits for others to share a produce request"},
    {NULL, "queue-max-messages", CFG_INT, &queue_max_messages, "100000", false, false, 1000,
     10000000, "events librdkafka may hold unacknowledged; past it requests get 503"},
};

/* ---- metrics ----------------------------------------------------------- */

static const double produce_bounds[] = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                                        0.1,   0.25,   0.5,   1,    2.5,   5,    10};

static void register_metrics(ingest_metrics *m)
{
    static const char *const status_labels[] = {
#define INGEST_STATUS_LABEL(code) "status=\"" #code "\"",
        INGEST_STATUSES(INGEST_STATUS_LABEL)
#undef INGEST_STATUS_LABEL
    };
    for (int i = 0; i < INGEST_STATUS_COUNT; i++)
        m->requests[i] = metrics_counter("tally_ingest_requests_total",
                                         "HTTP requests answered, by status", status_labels[i]);
    m->accepted = metrics_counter("tally_ingest_events_accepted_total",
                                  "events acknowledged by Kafka and answered as accepted", NULL);
    static char code_labels[EVENT_ERR__COUNT][48];
    for (int e = 1; e < EVENT_ERR__COUNT; e++) {
        snprintf(code_labels[e], sizeof code_labels[e], "code=\"%s\"",
                 event_error_code((event_error)e));
        m->refused[e] = metrics_counter("tally_ingest_events_refused_total",
                                        "events refused by the parser, by DLQ code",
                                        code_labels[e]);
    }
    m->unacknowledged = metrics_counter(
        "tally_ingest_events_unacknowledged_total",
        "valid events Kafka did not acknowledge (their request got 503)", NULL);
    m->produce_seconds = metrics_histogram(
        "tally_ingest_produce_seconds",
        "per request: from the first event sent to the last acknowledgement", NULL,
        produce_bounds, sizeof produce_bounds / sizeof produce_bounds[0]);
    m->kafka_reachable = metrics_gauge("tally_ingest_kafka_reachable",
                                       "1 unless every broker connection is down", NULL);
}

/* ---- health and the HTTP server ---------------------------------------- */

static ingest_context context;

/* Healthy while the process serves; Kafka's state is told, not judged: a
 * restart would not bring the brokers back. */
static bool health(char *detail, size_t detail_size)
{
    bool reachable = producer_reachable(context.kafka);
    metrics_set(context.m.kafka_reachable, reachable ? 1 : 0);
    snprintf(detail, detail_size, "kafka reachable: %s", reachable ? "yes" : "no");
    return true;
}

static struct MHD_Daemon *start_http(void)
{
    struct sockaddr_storage addr;
    socklen_t addr_len;
    char err[256];
    if (!ops_parse_listen_addr(listen_addr, &addr, &addr_len, err, sizeof err)) {
        log_error("TALLY_INGEST_ADDR: %s", err);
        return NULL;
    }
    /* A thread per connection: a request blocks there until the broker
     * acknowledged its events, without holding up any other. */
    unsigned flags = MHD_USE_THREAD_PER_CONNECTION | MHD_USE_INTERNAL_POLLING_THREAD;
    if (addr.ss_family == AF_INET6)
        flags |= MHD_USE_IPv6;
    struct MHD_Daemon *daemon = MHD_start_daemon(
        flags, 0, NULL, NULL, events_handle, &context, MHD_OPTION_SOCK_ADDR,
        (const struct sockaddr *)&addr, MHD_OPTION_CONNECTION_LIMIT, (unsigned)connection_limit,
        MHD_OPTION_CONNECTION_TIMEOUT, 30u, MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)65536,
        MHD_OPTION_NOTIFY_COMPLETED, events_completed, NULL, MHD_OPTION_LISTEN_BACKLOG_SIZE, 1024u,
        MHD_OPTION_END);
    if (daemon == NULL)
        log_error("cannot listen on %s (TALLY_INGEST_ADDR; address in use?)", listen_addr);
    return daemon;
}

int main(int argc, char **argv)
{
    log_level level;
    int status = cfg_start(
        "tally-ingest", "tally-ingest [--flag value ...]",
        "POST /v1/events: CloudEvents over HTTP (structured and batch modes) into the events "
        "topic,\nvalidated by the collector's parser and answered 202 only once Kafka "
        "acknowledged them.\nSIGTERM stops accepting, answers the requests in flight and exits.",
        settings, sizeof settings / sizeof settings[0], argc, argv, &log_level_text, &level);
    if (status >= 0)
        return status;
    if (strlen(ingest_token) < INGEST_TOKEN_MIN) {
        fprintf(stderr, "tally-ingest: TALLY_INGEST_TOKEN (--ingest-token) must be at least %d "
                        "characters\n", INGEST_TOKEN_MIN);
        return 2;
    }
    log_init("ingest", level);
    stopsignal_install();

    digest_sha256(ingest_token, strlen(ingest_token), context.token_digest);
    context.max_body_bytes = (size_t)max_body_bytes;
    context.max_batch_events = (size_t)max_batch_events;
    context.lateness_usec = lateness_days * USEC_PER_DAY;
    context.max_event_bytes = (size_t)max_event_bytes;
    register_metrics(&context.m);

    char err[512];
    producer_settings ps = {.kafka = &kafka,
                            .topic = kafka_topic,
                            .message_timeout_ms = produce_timeout_ms,
                            .linger_ms = linger_ms,
                            .queue_max_messages = queue_max_messages};
    context.kafka = producer_start(&ps, err, sizeof err);
    if (context.kafka == NULL) {
        log_error("%s", err);
        return 1;
    }
    ops_server *ops = ops_start(metrics_addr, health, err, sizeof err);
    if (ops == NULL) {
        log_error("TALLY_METRICS_ADDR: %s", err);
        producer_stop(context.kafka, 0);
        return 1;
    }
    struct MHD_Daemon *daemon = start_http();
    if (daemon == NULL) {
        ops_stop(ops);
        producer_stop(context.kafka, 0);
        return 1;
    }
    log_info("POST /v1/events on %s into topic %s at %s (batches of up to %lld events, %lld "
             "bytes)",
             listen_addr, kafka_topic, kafka.brokers, max_batch_events, max_body_bytes);
    while (!stopsignal_requested()) {
        metrics_set(context.m.kafka_reachable, producer_reachable(context.kafka) ? 1 : 0);
        usleep(100 * 1000);
    }
    log_info("stopping: answering the requests in flight");
    /* Joins every connection thread, each after its answer: the producer
     * serves their acknowledgements until then. */
    MHD_stop_daemon(daemon);
    producer_stop(context.kafka, (int)produce_timeout_ms);
    ops_stop(ops);
    log_info("stopped");
    return 0;
}
