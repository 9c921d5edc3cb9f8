/* tally-loadgen: publishes synthetic usage events (CloudEvents JSON, one per
 * Kafka message, key = subject) for development, tests and benchmarks, with
 * controlled duplicates and late events. See --help and synth.h. */
#include <errno.h>
#include <inttypes.h>
#include <librdkafka/rdkafka.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include "config.h"
#include "event.h"
#include "log.h"
#include "summary.h"
#include "synth.h"
#include "timeutil.h"

#define EXIT_DELIVERY_FAILED 1
#define EXIT_BAD_ARGUMENTS   2

#define SEED_MAX             INT64_C(9007199254740991) /* 2^53 - 1: exact in any JSON reader */
#define RECENT_WINDOW        1000        /* "recent" duplicates: one of the last 1000 events */
#define SEND_TIME_RING       (1u << 20)  /* wall-clock mode: send times kept for re-sends */
#define FLUSH_TIMEOUT_MS     60000
#define METADATA_WAIT_MS     10000
#define PROGRESS_INTERVAL_US (5 * USEC_PER_SEC)
#define MAX_SCHEDULE_LAG_US  (100 * 1000) /* behind schedule by more: do not burst to catch up */
#define MAX_POLL_WAIT_US     (100 * 1000)
#define POLL_EVERY           1024        /* serve delivery reports every this many messages */

typedef struct {
    const char *brokers;
    const char *topic;
    const char *log_level;
    const char *keys;
    const char *endpoints;
    const char *source;
    const char *base_time;
    const char *summary_path;
    long long count;     /* -1: not given */
    long long seed;      /* -1: not given */
    bool uuid_ids;
    long long replay;    /* -1: not given */
    double duration;     /* -1: not given */
    double rate;
    double dup_ratio;
    double dup_other_partition;
    double late_ratio;
} options;

/* Delivery outcome, written by the delivery report callback (which runs in
 * rd_kafka_poll/flush on the main thread). */
typedef struct {
    uint64_t delivered;
    uint64_t failed;
    bool fatal;
} delivery_state;

static volatile sig_atomic_t stop_requested = 0;

static void on_signal(int signo)
{
    (void)signo;
    if (stop_requested)
        _exit(130); /* second signal: give up on draining */
    stop_requested = 1;
}

static int64_t monotonic_usec(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * USEC_PER_SEC + ts.tv_nsec / 1000;
}

/* ---- partitioning ---------------------------------------------------------- */

/* CRC-32 (IEEE), the hash of librdkafka's default partitioner, so ordinary
 * messages land where any librdkafka producer keyed by subject would put them. */
static uint32_t crc32_ieee(const char *data, size_t len)
{
    static uint32_t table[256];
    static bool ready = false;
    if (!ready) {
        for (uint32_t i = 0; i < 256; i++) {
            uint32_t c = i;
            for (int k = 0; k < 8; k++)
                c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
            table[i] = c;
        }
        ready = true;
    }
    uint32_t crc = 0xFFFFFFFFu;
    for (size_t i = 0; i < len; i++)
        crc = table[(crc ^ (unsigned char)data[i]) & 0xFF] ^ (crc >> 8);
    return crc ^ 0xFFFFFFFFu;
}

/* ---- producer ---------------------------------------------------------------- */

static void on_delivery(rd_kafka_t *rk, const rd_kafka_message_t *msg, void *opaque)
{
    (void)rk;
    delivery_state *state = opaque;
    if (msg->err == RD_KAFKA_RESP_ERR_NO_ERROR) {
        state->delivered++;
        return;
    }
    state->failed++;
    /* The same cause usually fails a whole batch: log the first few only. */
    if (state->failed <= 5)
        log_error("delivery failed: %s", rd_kafka_err2str(msg->err));
    else if (state->failed == 6)
        log_error("more delivery failures; counting them without logging");
}

static void on_error(rd_kafka_t *rk, int err, const char *reason, void *opaque)
{
    delivery_state *state = opaque;
    if (err == RD_KAFKA_RESP_ERR__FATAL) {
        char detail[512];
        rd_kafka_fatal_error(rk, detail, sizeof detail);
        log_error("fatal producer error: %s", detail);
        state->fatal = true;
        return;
    }
    log_warn("kafka: %s: %s", rd_kafka_err2name((rd_kafka_resp_err_t)err), reason);
}

/* librdkafka's own log lines, in ours. Errors also reach on_error, which
 * logs them at warn, so these are debug detail. */
static void on_kafka_log(const rd_kafka_t *rk, int level, const char *facility, const char *text)
{
    (void)rk;
    (void)level;
    log_debug("kafka %s: %s", facility, text);
}

static bool set_conf(rd_kafka_conf_t *conf, const char *name, const char *value)
{
    char err[512];
    if (rd_kafka_conf_set(conf, name, value, err, sizeof err) != RD_KAFKA_CONF_OK) {
        log_error("producer setting %s=%s: %s", name, value, err);
        return false;
    }
    return true;
}

/* Returns a new producer, or NULL (logged). `state` is borrowed and must
 * outlive the producer. */
static rd_kafka_t *producer_new(const char *brokers, delivery_state *state)
{
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    char err[512];
    bool ok = set_conf(conf, "bootstrap.servers", brokers) &&
              set_conf(conf, "client.id", "tally-loadgen") &&
              /* Retries never duplicate or reorder: the only duplicates are
               * the ones loadgen makes on purpose, and it counts them. */
              set_conf(conf, "enable.idempotence", "true") &&
              set_conf(conf, "acks", "all") &&
              /* Throughput over latency: let batches fill for a few ms. */
              set_conf(conf, "linger.ms", "10") &&
              set_conf(conf, "batch.num.messages", "10000") &&
              set_conf(conf, "batch.size", "1000000") &&
              /* Events are small and the machine is CPU-bound; consumers
               * read plain payloads. */
              set_conf(conf, "compression.type", "none") &&
              /* About two seconds of headroom at 200k events/s before
               * QUEUE_FULL pushes back. */
              set_conf(conf, "queue.buffering.max.messages", "500000") &&
              /* A broker gone for a minute fails the run rather than hanging it. */
              set_conf(conf, "message.timeout.ms", "60000") &&
              set_conf(conf, "log.connection.close", "false");
    if (!ok) {
        rd_kafka_conf_destroy(conf);
        return NULL;
    }
    rd_kafka_conf_set_opaque(conf, state);
    rd_kafka_conf_set_dr_msg_cb(conf, on_delivery);
    rd_kafka_conf_set_error_cb(conf, on_error);
    rd_kafka_conf_set_log_cb(conf, on_kafka_log);
    rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, err, sizeof err);
    if (rk == NULL) {
        log_error("cannot create the Kafka producer: %s", err);
        rd_kafka_conf_destroy(conf);
        return NULL;
    }
    /* rd_kafka_new() took ownership of conf. */
    return rk;
}

/* The topic's partition count, or 0 when the metadata is unavailable within
 * METADATA_WAIT_MS (then librdkafka's partitioner places every message, and
 * an unreachable broker shows up as delivery failures). */
static int topic_partitions(rd_kafka_t *rk, rd_kafka_topic_t *rkt, const char *topic)
{
    int64_t deadline = monotonic_usec() + METADATA_WAIT_MS * 1000;
    int partitions = 0;
    while (partitions == 0 && !stop_requested) {
        int64_t left_ms = (deadline - monotonic_usec()) / 1000;
        if (left_ms <= 0)
            break;
        const struct rd_kafka_metadata *md = NULL;
        rd_kafka_resp_err_t err = rd_kafka_metadata(rk, 0, rkt, &md, (int)left_ms);
        if (err != RD_KAFKA_RESP_ERR_NO_ERROR) {
            log_warn("metadata for topic %s: %s", topic, rd_kafka_err2str(err));
            continue;
        }
        if (md->topic_cnt == 1 && md->topics[0].err == RD_KAFKA_RESP_ERR_NO_ERROR)
            partitions = md->topics[0].partition_cnt;
        else if (md->topic_cnt == 1)
            log_warn("metadata for topic %s: %s", topic, rd_kafka_err2str(md->topics[0].err));
        rd_kafka_metadata_destroy(md);
        if (partitions == 0)
            usleep(500 * 1000); /* a topic being auto-created shows up shortly */
    }
    return partitions;
}

/* ---- the send loop ----------------------------------------------------------- */

typedef struct {
    const options *opt;
    const synth_generator *gen;
    summary *sum;
    delivery_state *delivery;
    rd_kafka_t *rk;
    rd_kafka_topic_t *rkt;
    int partitions;             /* 0: let librdkafka partition */
    int64_t base_ms;            /* < 0: wall-clock mode */
    int64_t start_wall_ms;
    uint32_t *send_offsets_ms;  /* wall-clock mode: ring of first-send times - start */
    synth_rng sequence;         /* unique/duplicate decisions, from the seed */
    uint64_t produce_errors;
    bool stopped_by_error;
} run_state;

/* The time anchor of event `index`: the base time, or when it was first sent. */
static int64_t anchor_ms(const run_state *run, uint64_t index)
{
    if (run->base_ms >= 0)
        return run->base_ms;
    return run->start_wall_ms + run->send_offsets_ms[index & (SEND_TIME_RING - 1)];
}

/* Hands one message to the producer, waiting while its queue is full. False
 * when the message was not accepted (stopped, or a produce error). */
static bool produce(run_state *run, const char *payload, size_t len, const char *key,
                    size_t key_len, int32_t partition)
{
    for (;;) {
        if (rd_kafka_produce(run->rkt, partition, RD_KAFKA_MSG_F_COPY, (void *)payload, len, key,
                             key_len, NULL) == 0)
            return true;
        rd_kafka_resp_err_t err = rd_kafka_last_error();
        if (err == RD_KAFKA_RESP_ERR__QUEUE_FULL && !stop_requested && !run->delivery->fatal) {
            rd_kafka_poll(run->rk, 50); /* deliveries free queue space */
            continue;
        }
        if (err != RD_KAFKA_RESP_ERR__QUEUE_FULL) {
            log_error("produce to %s failed: %s", run->opt->topic, rd_kafka_err2str(err));
            run->produce_errors++;
            run->stopped_by_error = true;
        }
        return false;
    }
}

/* Sends event `index`, rendered from (seed, index). A re-send goes to another
 * partition with key "<subject>#dup" when other_partition is set. */
static bool send_event(run_state *run, const synth_event *ev, bool other_partition)
{
    char payload[SYNTH_MAX_JSON];
    char key[EVENT_MAX_SUBJECT_LEN + 8];
    int64_t time_ms = synth_event_time_ms(ev, anchor_ms(run, ev->index));
    size_t len = synth_render(run->gen, ev, time_ms, payload, sizeof payload);
    const char *subject = run->gen->keys[ev->key].id;
    size_t key_len = strlen(subject);
    memcpy(key, subject, key_len);
    int32_t partition = RD_KAFKA_PARTITION_UA;
    if (run->partitions > 0)
        partition = (int32_t)(crc32_ieee(subject, key_len) % (uint32_t)run->partitions);
    if (other_partition) {
        memcpy(key + key_len, "#dup", 4);
        key_len += 4;
        if (run->partitions > 1) {
            uint64_t shift = 1 + synth_rng_below(&run->sequence, (uint64_t)run->partitions - 1);
            partition = (int32_t)(((uint64_t)partition + shift) % (uint64_t)run->partitions);
        } else if (run->partitions == 0) {
            partition = RD_KAFKA_PARTITION_UA; /* the changed key picks the partition */
        }
    }
    return produce(run, payload, len, key, key_len, partition);
}

/* Picks an already sent event to re-send: half from the last RECENT_WINDOW,
 * half from further back (anywhere since index 0 with a base time; within the
 * send-time ring in wall-clock mode). */
static uint64_t pick_duplicate(run_state *run)
{
    uint64_t sent = run->sum->unique;
    uint64_t recent = sent < RECENT_WINDOW ? sent : RECENT_WINDOW;
    if (synth_rng_unit(&run->sequence) < 0.5)
        return sent - 1 - synth_rng_below(&run->sequence, recent);
    uint64_t oldest = 0;
    if (run->base_ms < 0 && sent > SEND_TIME_RING)
        oldest = sent - SEND_TIME_RING;
    uint64_t span = sent - oldest;
    if (span > recent)
        span -= recent; /* strictly older than the recent window */
    return oldest + synth_rng_below(&run->sequence, span);
}

static void log_progress(const run_state *run, uint64_t *last_sent, int64_t *last_at, int64_t now)
{
    double seconds = (double)(now - *last_at) / 1e6;
    log_info("sent %" PRIu64 " (%.0f msg/s), unique %" PRIu64 ", duplicates %" PRIu64
             ", delivered %" PRIu64 ", failed %" PRIu64 ", queued %d",
             run->sum->sent, (double)(run->sum->sent - *last_sent) / seconds, run->sum->unique,
             run->sum->duplicates, run->delivery->delivered, run->delivery->failed,
             rd_kafka_outq_len(run->rk));
    *last_sent = run->sum->sent;
    *last_at = now;
}

/* Sends until the count, duration or a signal ends the run. */
static void send_loop(run_state *run)
{
    const options *opt = run->opt;
    bool replay = opt->replay >= 0;
    int64_t start = monotonic_usec();
    int64_t deadline = opt->duration >= 0 ? start + (int64_t)(opt->duration * 1e6) : INT64_MAX;
    double interval_us = opt->rate > 0 ? 1e6 / opt->rate : 0;
    int64_t schedule_origin = start;
    uint64_t scheduled = 0; /* messages paced since schedule_origin */
    int64_t last_progress = start;
    uint64_t last_progress_sent = 0;
    synth_event ev;

    while (!stop_requested && !run->delivery->fatal && !run->stopped_by_error) {
        if (replay && run->sum->sent >= (uint64_t)opt->replay)
            break;
        int64_t now = monotonic_usec();
        if (now >= deadline)
            break;
        if (now - last_progress >= PROGRESS_INTERVAL_US)
            log_progress(run, &last_progress_sent, &last_progress, now);
        if (interval_us > 0) {
            int64_t due = schedule_origin + (int64_t)((double)scheduled * interval_us);
            if (due - now >= 1000) {
                /* Ahead of schedule: wait in poll, serving deliveries. */
                int64_t wait_us = due - now;
                if (wait_us > deadline - now)
                    wait_us = deadline - now;
                if (wait_us > MAX_POLL_WAIT_US)
                    wait_us = MAX_POLL_WAIT_US; /* notice signals promptly at low rates */
                rd_kafka_poll(run->rk, (int)((wait_us + 999) / 1000));
                continue;
            }
            if (now - due > MAX_SCHEDULE_LAG_US) {
                /* Stalled (queue full, slow broker): resume the pace from now
                 * rather than sending the backlog in one burst. */
                schedule_origin = now;
                scheduled = 0;
            }
            scheduled++;
        }

        bool sent_ok;
        bool duplicate;
        if (replay) {
            synth_draw(run->gen, run->sum->sent % (uint64_t)opt->count, &ev);
            bool other = synth_rng_unit(&run->sequence) < opt->dup_other_partition;
            sent_ok = send_event(run, &ev, other);
            duplicate = true;
        } else if (run->sum->unique > 0 && synth_rng_unit(&run->sequence) < opt->dup_ratio) {
            synth_draw(run->gen, pick_duplicate(run), &ev);
            bool other = synth_rng_unit(&run->sequence) < opt->dup_other_partition;
            sent_ok = send_event(run, &ev, other);
            duplicate = true;
        } else {
            if (opt->count >= 0 && run->sum->unique >= (uint64_t)opt->count)
                break;
            uint64_t index = run->sum->unique;
            synth_draw(run->gen, index, &ev);
            if (run->base_ms < 0) {
                int64_t offset = time_now_usec() / 1000 - run->start_wall_ms;
                run->send_offsets_ms[index & (SEND_TIME_RING - 1)] =
                    (uint32_t)(offset < 0 ? 0 : offset);
            }
            sent_ok = send_event(run, &ev, false);
            duplicate = false;
            if (sent_ok)
                summary_add_unique(run->sum, &ev, synth_event_time_ms(&ev, anchor_ms(run, index)));
        }
        if (!sent_ok)
            break;
        run->sum->sent++;
        if (duplicate)
            run->sum->duplicates++;
        if ((run->sum->sent & (POLL_EVERY - 1)) == 0)
            rd_kafka_poll(run->rk, 0);
    }
}

/* ---- settings ------------------------------------------------------------------- */

static const char help_summary[] =
    "Publishes synthetic API usage events (CloudEvents 1.0 JSON, one per Kafka message,\n"
    "message key = subject) to the events topic, with controlled duplicates and late events.\n"
    "Event i is a pure function of (seed, i): its id is \"lg-<seed hex>-<i>\", and key,\n"
    "endpoint, units (1..5), bytes (0..4096), status and lateness come from a PRNG seeded by\n"
    "both. Its time is --base-time (or the wall clock at first send) minus 0..60 s of jitter,\n"
    "minus 1..72 h for late events. Duplicates re-send a sent event byte for byte.\n"
    "Give --count and/or --duration. --replay N re-sends events 0..count-1 of a previous run\n"
    "(same --seed, --base-time, --keys, --endpoints, --source, --late-ratio).\n"
    "Exit status: 0 every message delivered, 1 a delivery or producer failure, 2 bad arguments.\n"
    "SIGINT/SIGTERM stops sending, waits for deliveries (up to 60 s) and writes the summary;\n"
    "a second signal exits at once.";

int main(int argc, char **argv)
{
    options opt = {.count = -1, .seed = -1, .replay = -1, .duration = -1};
    const cfg_setting settings[] = {
        {"TALLY_KAFKA_BROKERS", "brokers", CFG_STRING, &opt.brokers, NULL, true, false, 0, 0,
         "Kafka bootstrap servers, host:port[,host:port]"},
        {"TALLY_KAFKA_TOPIC", "topic", CFG_STRING, &opt.topic, "usage-events", false, false, 0, 0,
         "topic to publish to"},
        {"TALLY_LOG_LEVEL", "log-level", CFG_STRING, &opt.log_level, "info", false, false, 0, 0,
         "debug, info, warn or error"},
        {NULL, "keys", CFG_STRING, &opt.keys, NULL, true, false, 0, 0,
         "comma-separated API key ids used as subjects, each optionally id:weight (integer "
         "weight, default 1) to skew traffic, e.g. key_a,key_b:5 (a trailing :digits is always "
         "the weight)"},
        {NULL, "count", CFG_INT, &opt.count, NULL, false, false, 1, 1e15,
         "unique events to send (duplicates come on top)"},
        {NULL, "duration", CFG_DOUBLE, &opt.duration, NULL, false, false, 0.001, 1e9,
         "stop after this many seconds"},
        {NULL, "rate", CFG_DOUBLE, &opt.rate, "0", false, false, 0, 1e9,
         "messages per second, paced evenly; 0 = as fast as possible"},
        {NULL, "dup-ratio", CFG_DOUBLE, &opt.dup_ratio, "0", false, false, 0, 0.9,
         "fraction of sent messages that re-send an already sent event (half recent, half "
         "further back)"},
        {NULL, "dup-other-partition", CFG_DOUBLE, &opt.dup_other_partition, "0.5", false, false, 0,
         1, "fraction of re-sends keyed \"<subject>#dup\" and put on another partition"},
        {NULL, "late-ratio", CFG_DOUBLE, &opt.late_ratio, "0", false, false, 0, 1,
         "fraction of unique events timed 1 to 72 hours in the past"},
        {NULL, "endpoints", CFG_STRING, &opt.endpoints,
         "GET /v1/items,POST /v1/items,GET /v1/items/{id},GET /v1/search", false, false, 0, 0,
         "comma-separated \"METHOD path\" pairs"},
        {NULL, "source", CFG_STRING, &opt.source, "loadgen", false, false, 0, 0,
         "CloudEvents source of every event"},
        {NULL, "uuid-ids", CFG_BOOL, &opt.uuid_ids, "false", false, false, 0, 0,
         "make event ids random-looking UUIDs (still a pure function of seed and index) instead "
         "of lg-<seed hex>-<index>"},
        {NULL, "seed", CFG_INT, &opt.seed, NULL, false, false, 0, (double)SEED_MAX,
         "PRNG seed (default: random, printed); same seed and base time = same events"},
        {NULL, "base-time", CFG_STRING, &opt.base_time, NULL, false, false, 0, 0,
         "RFC 3339 time; event times become base time minus jitter (and lateness), so runs "
         "are fully reproducible (default: the wall clock at send)"},
        {NULL, "replay", CFG_INT, &opt.replay, NULL, false, false, 1, 1e15,
         "send N byte-identical re-sends of events 0..count-1 (cycling) and nothing new; needs "
         "--base-time and --count"},
        {NULL, "summary", CFG_STRING, &opt.summary_path, NULL, false, false, 0, 0,
         "write a JSON summary (sent, unique, duplicates, late, failed, per-key and per-hour "
         "totals) to this file"},
    };
    const size_t setting_count = sizeof settings / sizeof settings[0];
    const char *usage = "tally-loadgen --brokers HOST:PORT --keys ID[:WEIGHT],... "
                        "(--count N | --duration S) [options]";
    char err[512];
    log_level level;
    int status = cfg_start("tally-loadgen", usage, help_summary, settings, setting_count, argc,
                           argv, &opt.log_level, &level);
    if (status >= 0)
        return status == 0 ? 0 : EXIT_BAD_ARGUMENTS;
    log_init("loadgen", level);

    int64_t base_ms = -1;
    if (opt.base_time != NULL) {
        int64_t usec;
        if (!time_parse_rfc3339(opt.base_time, strlen(opt.base_time), &usec) || usec < 0) {
            fprintf(stderr, "tally-loadgen: --base-time must be an RFC 3339 time, got \"%.60s\"\n",
                    opt.base_time);
            return EXIT_BAD_ARGUMENTS;
        }
        base_ms = usec / 1000;
    }
    if (opt.replay >= 0 && (base_ms < 0 || opt.count < 0)) {
        fprintf(stderr, "tally-loadgen: --replay needs --base-time and --count (of the run "
                        "being replayed)\n");
        return EXIT_BAD_ARGUMENTS;
    }
    if (opt.count < 0 && opt.duration < 0) {
        fprintf(stderr, "tally-loadgen: give --count and/or --duration (see --help)\n");
        return EXIT_BAD_ARGUMENTS;
    }
    if (opt.topic[0] == '\0') {
        fprintf(stderr, "tally-loadgen: TALLY_KAFKA_TOPIC (--topic) must not be empty\n");
        return EXIT_BAD_ARGUMENTS;
    }

    uint64_t seed;
    if (opt.seed >= 0) {
        seed = (uint64_t)opt.seed;
    } else if (getrandom(&seed, sizeof seed, 0) != (ssize_t)sizeof seed) {
        seed = (uint64_t)time_now_usec() ^ ((uint64_t)getpid() << 32);
    }
    seed &= (uint64_t)SEED_MAX;

    synth_generator gen;
    if (!synth_init(&gen, seed, opt.keys, opt.endpoints, opt.source, opt.late_ratio, err,
                    sizeof err)) {
        fprintf(stderr, "tally-loadgen: %s\n", err);
        return EXIT_BAD_ARGUMENTS;
    }
    gen.uuid_ids = opt.uuid_ids;

    int exit_code = EXIT_DELIVERY_FAILED;
    summary sum;
    delivery_state delivery = {0};
    rd_kafka_t *rk = NULL;
    rd_kafka_topic_t *rkt = NULL;
    uint32_t *send_offsets = NULL;
    bool summary_ready = summary_init(&sum, gen.key_count);
    if (!summary_ready) {
        log_error("out of memory");
        goto done;
    }
    if (base_ms < 0) {
        send_offsets = calloc(SEND_TIME_RING, sizeof *send_offsets);
        if (send_offsets == NULL) {
            log_error("out of memory");
            goto done;
        }
    }

    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);

    rk = producer_new(opt.brokers, &delivery);
    if (rk == NULL)
        goto done;
    rkt = rd_kafka_topic_new(rk, opt.topic, NULL);
    if (rkt == NULL) {
        log_error("topic %s: %s", opt.topic, rd_kafka_err2str(rd_kafka_last_error()));
        goto done;
    }

    log_info("seed %" PRIu64 " (ids lg-%" PRIx64 "-<index>), topic %s, brokers %s%s", seed, seed,
             opt.topic, opt.brokers, opt.replay >= 0 ? ", replay mode" : "");
    int partitions = topic_partitions(rk, rkt, opt.topic);
    if (partitions == 0)
        log_warn("partition count of %s unknown: \"#dup\" re-sends may share the original's "
                 "partition", opt.topic);
    else
        log_debug("topic %s has %d partitions", opt.topic, partitions);

    run_state run = {
        .opt = &opt,
        .gen = &gen,
        .sum = &sum,
        .delivery = &delivery,
        .rk = rk,
        .rkt = rkt,
        .partitions = partitions,
        .base_ms = base_ms,
        .start_wall_ms = time_now_usec() / 1000,
        .send_offsets_ms = send_offsets,
    };
    synth_rng_init(&run.sequence, seed ^ UINT64_C(0xD1B54A32D192ED03));

    int64_t started = monotonic_usec();
    send_loop(&run);
    double send_seconds = (double)(monotonic_usec() - started) / 1e6;
    if (stop_requested)
        log_info("signal received: stopped sending, waiting for deliveries");

    rd_kafka_resp_err_t flush_err = rd_kafka_flush(rk, FLUSH_TIMEOUT_MS);
    if (flush_err != RD_KAFKA_RESP_ERR_NO_ERROR) {
        log_error("%d messages still undelivered after %d s; giving up on them",
                  rd_kafka_outq_len(rk), FLUSH_TIMEOUT_MS / 1000);
        rd_kafka_purge(rk, RD_KAFKA_PURGE_F_QUEUE | RD_KAFKA_PURGE_F_INFLIGHT);
        rd_kafka_flush(rk, 5000); /* serves the purged messages' delivery reports */
    }
    double total_seconds = (double)(monotonic_usec() - started) / 1e6;
    /* Whatever was accepted but not confirmed counts as failed, with any
     * message the producer refused outright. */
    sum.failed = sum.sent - delivery.delivered + run.produce_errors;

    if (opt.summary_path != NULL && !summary_write(&sum, &gen, opt.summary_path, base_ms, err,
                                                   sizeof err)) {
        log_error("summary: %s", err);
        exit_code = EXIT_DELIVERY_FAILED;
    } else {
        exit_code = sum.failed == 0 && !delivery.fatal ? 0 : EXIT_DELIVERY_FAILED;
    }
    fprintf(stderr,
            "tally-loadgen: seed %" PRIu64 ": sent %" PRIu64 " (unique %" PRIu64
            ", duplicates %" PRIu64 ", late %" PRIu64 "), failed %" PRIu64
            ", %.2f s sending (%.0f msg/s), %.2f s with flush%s\n",
            seed, sum.sent, sum.unique, sum.duplicates, sum.late, sum.failed, send_seconds,
            send_seconds > 0 ? (double)sum.sent / send_seconds : 0.0, total_seconds,
            stop_requested ? ", interrupted" : "");

done:
    if (rkt != NULL)
        rd_kafka_topic_destroy(rkt);
    if (rk != NULL)
        rd_kafka_destroy(rk);
    free(send_offsets);
    if (summary_ready)
        summary_free(&sum);
    synth_free(&gen);
    return exit_code;
}
