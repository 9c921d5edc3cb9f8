/* tally-devbroker: a Kafka-protocol broker on loopback for development and
 * tests, built on librdkafka's mock cluster (rdkafka_mock.h). It creates the
 * events and dead-letter topics, prints and optionally writes the bootstrap
 * servers, then serves until SIGTERM or SIGINT.
 *
 * Everything lives in this process's memory: nothing survives a restart, and
 * the mock keeps only a bounded log per partition (see devbroker_summary). */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>

#include "config.h"
#include "log.h"

/* The mock replicates nothing for real; a replication factor above the
 * broker count would be refused, and above 3 only costs bookkeeping. */
#define DEVBROKER_MAX_REPLICATION 3

static volatile sig_atomic_t devbroker_stop_requested = 0;

/* SIGUSR1 takes every broker down (connections refused and dropped, as
 * when a real cluster is unreachable) and SIGUSR2 brings them back, with
 * their data, so tests can check that clients survive an outage. */
static volatile sig_atomic_t devbroker_outage_wanted = 0;

static void devbroker_on_signal(int signo)
{
    if (signo == SIGUSR1)
        devbroker_outage_wanted = 1;
    else if (signo == SIGUSR2)
        devbroker_outage_wanted = 0;
    else
        devbroker_stop_requested = 1;
}

static const char devbroker_usage[] = "tally-devbroker [options]";

static const char devbroker_summary[] =
    "Kafka-protocol dev broker on 127.0.0.1, built on librdkafka's mock cluster.\n"
    "IN MEMORY, NOT DURABLE: for development and tests only. Every message is lost\n"
    "when the process stops; listener ports are ephemeral (picked at start), so\n"
    "read them from the BOOTSTRAP line on stdout or from --bootstrap-file.\n"
    "\n"
    "Retention is bounded: the mock keeps at most about 5 MB (5 MiB of record\n"
    "batches) and at most 100000 produce batches per partition, and silently drops\n"
    "the oldest batches beyond that, consumed or not. Size --partitions for the\n"
    "volume you leave unconsumed (e.g. 16 partitions hold about 80 MB).\n"
    "\n"
    "Consumer groups work, with one quirk of this mock: when the last member of a\n"
    "group leaves, the next one to join waits up to that member's\n"
    "session.timeout.ms (librdkafka default 45 s) before it is assigned\n"
    "partitions; clients of this broker should set a short session.timeout.ms\n"
    "(e.g. 6000).\n"
    "\n"
    "Creates the events topic and the dead-letter topic; other topics are\n"
    "auto-created on first use with the mock's default partition count.\n"
    "SIGUSR1 takes every broker down (an outage: clients cannot connect), SIGUSR2\n"
    "brings them back with their data.\n"
    "Runs until SIGTERM or SIGINT, then shuts the cluster down and exits 0.\n"
    "On start it prints one line to stdout: BOOTSTRAP <host:port,...>";

/* Maps librdkafka's syslog levels (0 emerg .. 3 err, 4 warning, 5 notice,
 * 6 info, 7 debug) onto ours; <syslog.h> is not included because its LOG_*
 * macros collide with log.h. Called from librdkafka threads; log_write
 * serialises lines itself. */
static void devbroker_on_rdkafka_log(const rd_kafka_t *rk, int level, const char *facility,
                                     const char *message)
{
    (void)rk;
    /* The hosting handle has no bootstrap.servers on purpose (it only hosts
     * the mock); librdkafka's warning about that would only mislead. */
    if (strcmp(facility, "CONFWARN") == 0 && strstr(message, "bootstrap.servers") != NULL)
        return;
    log_level ours = LOG_DEBUG;
    if (level <= 3)
        ours = LOG_ERROR;
    else if (level == 4)
        ours = LOG_WARN;
    else if (level <= 6)
        ours = LOG_INFO;
    if (log_enabled(ours))
        log_write(ours, "librdkafka %s: %s", facility, message);
}

/* Writes "<bootstrap>\n" to path through a temporary file in the same
 * directory and rename(), so a reader never sees a partial line. */
static bool devbroker_write_bootstrap_file(const char *path, const char *bootstrap)
{
    bool ok = false;
    char tmp[4096];
    FILE *out = NULL;
    int n = snprintf(tmp, sizeof tmp, "%s.tmp.%ld", path, (long)getpid());
    if (n < 0 || (size_t)n >= sizeof tmp) {
        log_error("--bootstrap-file path is too long");
        return false;
    }
    out = fopen(tmp, "w");
    if (out == NULL) {
        log_error("cannot create %s: %s", tmp, strerror(errno));
        goto cleanup;
    }
    if (fprintf(out, "%s\n", bootstrap) < 0 || fflush(out) != 0 || fsync(fileno(out)) != 0) {
        log_error("cannot write %s: %s", tmp, strerror(errno));
        goto cleanup;
    }
    if (fclose(out) != 0) {
        out = NULL;
        log_error("cannot write %s: %s", tmp, strerror(errno));
        goto cleanup;
    }
    out = NULL;
    if (rename(tmp, path) != 0) {
        log_error("cannot rename %s to %s: %s", tmp, path, strerror(errno));
        goto cleanup;
    }
    ok = true;
cleanup:
    if (out != NULL)
        fclose(out);
    if (!ok)
        unlink(tmp);
    return ok;
}

static bool devbroker_create_topic(rd_kafka_mock_cluster_t *cluster, const char *topic,
                                   long long partitions, int replication)
{
    rd_kafka_resp_err_t err =
        rd_kafka_mock_topic_create(cluster, topic, (int)partitions, replication);
    if (err != RD_KAFKA_RESP_ERR_NO_ERROR) {
        log_error("cannot create topic %s with %lld partitions: %s", topic, partitions,
                  rd_kafka_err2str(err));
        return false;
    }
    log_info("topic %s: %lld partitions, replication factor %d", topic, partitions, replication);
    return true;
}

int main(int argc, char **argv)
{
    const char *topic = NULL;
    const char *dlq_topic = NULL;
    const char *bootstrap_file = NULL;
    const char *log_level_text = NULL;
    long long partitions = 0;
    long long dlq_partitions = 0;
    long long broker_count = 0;

    const cfg_setting settings[] = {
        {.env = "TALLY_KAFKA_TOPIC", .flag = "topic", .type = CFG_STRING, .target = &topic,
         .default_value = "usage-events", .help = "events topic to create"},
        {.env = "TALLY_KAFKA_DLQ_TOPIC", .flag = "dlq-topic", .type = CFG_STRING,
         .target = &dlq_topic, .default_value = "usage-events-dlq",
         .help = "dead-letter topic to create"},
        {.flag = "partitions", .type = CFG_INT, .target = &partitions, .default_value = "16",
         .min = 1, .max = 10000,
         .help = "partitions of the events topic (each keeps at most about 5 MB)"},
        {.flag = "dlq-partitions", .type = CFG_INT, .target = &dlq_partitions,
         .default_value = "4", .min = 1, .max = 10000,
         .help = "partitions of the dead-letter topic"},
        {.flag = "brokers", .type = CFG_INT, .target = &broker_count, .default_value = "1",
         .min = 1, .max = 16, .help = "number of mock brokers (each on its own port)"},
        {.flag = "bootstrap-file", .type = CFG_STRING, .target = &bootstrap_file,
         .help = "also write the bootstrap servers to this file (atomically: temporary "
                 "file, then rename); removed again at exit"},
        {.env = "TALLY_LOG_LEVEL", .flag = "log-level", .type = CFG_STRING,
         .target = &log_level_text, .default_value = "info",
         .help = "debug, info, warn or error (debug also traces the mock)"},
    };
    const size_t setting_count = sizeof settings / sizeof settings[0];

    char err[512];
    log_level min_level;
    int status = cfg_start("tally-devbroker", devbroker_usage, devbroker_summary, settings,
                           setting_count, argc, argv, &log_level_text, &min_level);
    if (status >= 0)
        return status;
    log_init("devbroker", min_level);
    if (strcmp(topic, dlq_topic) == 0) {
        log_error("TALLY_KAFKA_TOPIC and TALLY_KAFKA_DLQ_TOPIC must differ (both are \"%s\")",
                  topic);
        return 2;
    }

    int result = 1;
    rd_kafka_t *handle = NULL;
    rd_kafka_mock_cluster_t *cluster = NULL;
    bool wrote_bootstrap_file = false;

    struct sigaction action;
    memset(&action, 0, sizeof action);
    action.sa_handler = devbroker_on_signal;
    sigemptyset(&action.sa_mask);
    sigaction(SIGTERM, &action, NULL);
    sigaction(SIGINT, &action, NULL);
    sigaction(SIGUSR1, &action, NULL);
    sigaction(SIGUSR2, &action, NULL);
    /* A client that disconnects mid-write must not kill the broker. */
    signal(SIGPIPE, SIG_IGN);

    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    rd_kafka_conf_set_log_cb(conf, devbroker_on_rdkafka_log);
    /* The handle only hosts the mock cluster; it never produces. */
    if (rd_kafka_conf_set(conf, "client.id", "tally-devbroker", err, sizeof err) !=
            RD_KAFKA_CONF_OK ||
        (min_level == LOG_DEBUG &&
         rd_kafka_conf_set(conf, "debug", "mock", err, sizeof err) != RD_KAFKA_CONF_OK)) {
        log_error("librdkafka configuration: %s", err);
        rd_kafka_conf_destroy(conf);
        goto cleanup;
    }
    handle = rd_kafka_new(RD_KAFKA_PRODUCER, conf, err, sizeof err);
    if (handle == NULL) {
        log_error("cannot create the librdkafka handle: %s", err);
        rd_kafka_conf_destroy(conf);
        goto cleanup;
    }
    conf = NULL; /* rd_kafka_new() took ownership on success */

    cluster = rd_kafka_mock_cluster_new(handle, (int)broker_count);
    if (cluster == NULL) {
        log_error("cannot start the mock cluster with %lld broker(s) on loopback", broker_count);
        goto cleanup;
    }
    int replication =
        broker_count < DEVBROKER_MAX_REPLICATION ? (int)broker_count : DEVBROKER_MAX_REPLICATION;
    if (!devbroker_create_topic(cluster, topic, partitions, replication) ||
        !devbroker_create_topic(cluster, dlq_topic, dlq_partitions, replication))
        goto cleanup;

    const char *bootstrap = rd_kafka_mock_cluster_bootstraps(cluster);
    if (bootstrap_file != NULL) {
        if (!devbroker_write_bootstrap_file(bootstrap_file, bootstrap))
            goto cleanup;
        wrote_bootstrap_file = true;
    }
    printf("BOOTSTRAP %s\n", bootstrap);
    fflush(stdout);
    log_info("serving %lld broker(s) at %s (in memory, not durable; about 5 MB kept per "
             "partition)",
             broker_count, bootstrap);

    bool down = false;
    while (!devbroker_stop_requested) {
        struct timespec pause = {.tv_sec = 0, .tv_nsec = 100 * 1000 * 1000};
        nanosleep(&pause, NULL);
        bool want_down = devbroker_outage_wanted != 0;
        if (want_down != down) {
            for (int32_t id = 1; id <= (int32_t)broker_count; id++) {
                if (want_down)
                    rd_kafka_mock_broker_set_down(cluster, id);
                else
                    rd_kafka_mock_broker_set_up(cluster, id);
            }
            down = want_down;
            log_info(down ? "outage: all brokers down (SIGUSR2 brings them back)"
                          : "outage over: all brokers up");
        }
    }
    log_info("stop requested, shutting down");
    result = 0;

cleanup:
    if (wrote_bootstrap_file && unlink(bootstrap_file) != 0 && errno != ENOENT)
        log_warn("cannot remove %s: %s", bootstrap_file, strerror(errno));
    /* The cluster borrows the handle, so it goes first. */
    if (cluster != NULL)
        rd_kafka_mock_cluster_destroy(cluster);
    if (handle != NULL)
        rd_kafka_destroy(handle);
    if (result == 0)
        log_info("stopped");
    return result;
}
