/* The Kafka side: the group consumer and its rebalances, the DLQ producer,
 * the reader of poison events, and the lag. */
#include "collector.h"

#include <stdio.h>
#include <string.h>

#include "kafkaconf.h"
#include "log.h"
#include "stopsignal.h"

/* queued.max.messages.kbytes: what librdkafka pre-fetches (make_consumer). */
#define FETCH_QUEUE_KBYTES 16384

static void on_rebalance(rd_kafka_t *rk, rd_kafka_resp_err_t err,
                         rd_kafka_topic_partition_list_t *partitions, void *opaque)
{
    collector *c = opaque;
    bool cooperative = strcmp(rd_kafka_rebalance_protocol(rk), "COOPERATIVE") == 0;
    /* Positions before a rebalance say nothing about the fetcher after it. */
    c->fetch_queue_filled = false;
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

static void on_kafka_error(rd_kafka_t *rk, int err, const char *reason, void *opaque)
{
    (void)rk;
    (void)opaque;
    if (err == RD_KAFKA_RESP_ERR__FATAL) {
        log_error("fatal Kafka error: %s; stopping", reason);
        stopsignal_request();
        return;
    }
    log_warn("Kafka: %s (%s)", reason, rd_kafka_err2name((rd_kafka_resp_err_t)err));
}

static bool set_conf(rd_kafka_conf_t *conf, const char *name, const char *value)
{
    char err[512];
    if (kafkaconf_set(conf, name, value, err, sizeof err))
        return true;
    log_error("%s", err);
    return false;
}

/* The brokers and how to reach them (TLS, SASL), for every client. */
static bool set_connection(rd_kafka_conf_t *conf, const collector_config *cfg,
                           const char *client_id)
{
    char err[512];
    if (kafkaconf_set_connection(conf, &cfg->kafka, client_id, err, sizeof err))
        return true;
    log_error("%s", err);
    return false;
}

/* A new client of `type` from `conf` (taken over either way), which is set
 * only when `configured`; with Tally's log and error callbacks. NULL with
 * err filled on failure. */
static rd_kafka_t *new_client(collector *c, rd_kafka_type_t type, rd_kafka_conf_t *conf,
                              bool configured, const char *what, char *err, size_t err_size)
{
    if (!configured) {
        rd_kafka_conf_destroy(conf);
        snprintf(err, err_size, "configuring the %s failed (see the log)", what);
        return NULL;
    }
    rd_kafka_conf_set_opaque(conf, c);
    rd_kafka_conf_set_log_cb(conf, kafkaconf_log);
    rd_kafka_conf_set_error_cb(conf, on_kafka_error);
    char kerr[256];
    rd_kafka_t *rk = rd_kafka_new(type, conf, kerr, sizeof kerr);
    if (rk == NULL) {
        rd_kafka_conf_destroy(conf); /* not taken over on failure */
        snprintf(err, err_size, "creating the %s: %s", what, kerr);
    }
    return rk;
}

rd_kafka_t *make_consumer(collector *c)
{
    char session[24], queued[24], fetch_wait[24];
    snprintf(session, sizeof session, "%lld", c->cfg->session_timeout_ms);
    snprintf(fetch_wait, sizeof fetch_wait, "%lld", c->cfg->fetch_wait_ms);
    /* What librdkafka pre-fetches is most of this process's memory: 16 MB of
     * queued messages and 8 MB fetch responses keep the parser fed within
     * the 100 MB budget. Measured: an 8 MB queue halved throughput when
     * jansson parsed every event; with the one-pass scanner, 16 MB instead
     * of 20 MB took the bench's peak RSS from 93.3..105.2 MB to 90.0..93.4
     * MB at a rate within the machine's noise (issue #16). When the queue
     * is full librdkafka 2.0 waits fetch.error.backoff.ms before fetching
     * again; its default of 500 ms stalls a fast consumer. */
    snprintf(queued, sizeof queued, "%d", FETCH_QUEUE_KBYTES);
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    bool ok = set_connection(conf, c->cfg, "tally-collector") &&
              set_conf(conf, "group.id", c->cfg->kafka_group) &&
              /* Offsets are committed by us, after the database commit. */
              set_conf(conf, "enable.auto.commit", "false") &&
              set_conf(conf, "enable.auto.offset.store", "false") &&
              /* A new group starts at the beginning: nothing published is skipped. */
              set_conf(conf, "auto.offset.reset", "earliest") &&
              set_conf(conf, "partition.assignment.strategy", c->cfg->assignment_strategy) &&
              set_conf(conf, "session.timeout.ms", session) &&
              set_conf(conf, "heartbeat.interval.ms",
                       c->cfg->session_timeout_ms >= 9000 ? "3000" : "500") &&
              set_conf(conf, "queued.max.messages.kbytes", queued) &&
              set_conf(conf, "fetch.max.bytes", "8388608") &&
              set_conf(conf, "fetch.error.backoff.ms", "10") &&
              /* The default of 500 ms is how late an event can be counted
               * when a broker (the dev broker, for one) holds an empty fetch
               * that long: counters' freshness (README, "Freshness"). */
              set_conf(conf, "fetch.wait.max.ms", fetch_wait) &&
              set_conf(conf, "log.queue", "false");
    rd_kafka_conf_set_rebalance_cb(conf, on_rebalance);
    char err[512];
    rd_kafka_t *rk = new_client(c, RD_KAFKA_CONSUMER, conf, ok, "Kafka consumer", err, sizeof err);
    if (rk == NULL) {
        log_error("%s", err);
        return NULL;
    }
    rd_kafka_poll_set_consumer(rk);
    rd_kafka_topic_partition_list_t *topics = rd_kafka_topic_partition_list_new(1);
    rd_kafka_topic_partition_list_add(topics, c->cfg->kafka_topic, RD_KAFKA_PARTITION_UA);
    rd_kafka_resp_err_t serr = rd_kafka_subscribe(rk, topics);
    rd_kafka_topic_partition_list_destroy(topics);
    if (serr) {
        log_error("subscribing to %s: %s", c->cfg->kafka_topic, rd_kafka_err2str(serr));
        rd_kafka_destroy(rk);
        return NULL;
    }
    return rk;
}

rd_kafka_t *make_dlq_producer(collector *c)
{
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    bool ok = set_connection(conf, c->cfg, "tally-collector-dlq") &&
              /* A rejected event must not be lost or reordered on retries. */
              set_conf(conf, "enable.idempotence", "true") && set_conf(conf, "acks", "all") &&
              set_conf(conf, "linger.ms", "5") && set_conf(conf, "log.queue", "false");
    rd_kafka_conf_set_dr_msg_cb(conf, dlq_delivered);
    char err[512];
    rd_kafka_t *rk = new_client(c, RD_KAFKA_PRODUCER, conf, ok, "DLQ producer", err, sizeof err);
    if (rk == NULL)
        log_error("%s", err);
    return rk;
}

/* A consumer that only reads given offsets again (poison events for the
 * DLQ): it never subscribes or commits, so the group is untouched. */
rd_kafka_t *make_reader(collector *c, char *err, size_t err_size)
{
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    char group[300];
    snprintf(group, sizeof group, "%s-reread", c->cfg->kafka_group);
    bool ok = set_connection(conf, c->cfg, "tally-collector-reread") &&
              set_conf(conf, "group.id", group) && set_conf(conf, "enable.auto.commit", "false") &&
              set_conf(conf, "enable.auto.offset.store", "false") &&
              /* An offset retention removed: start at the oldest kept, and
               * say when the end is reached, so the missing are known. */
              set_conf(conf, "auto.offset.reset", "earliest") &&
              set_conf(conf, "enable.partition.eof", "true") &&
              set_conf(conf, "log.queue", "false");
    rd_kafka_t *rk =
        new_client(c, RD_KAFKA_CONSUMER, conf, ok, "poison reader", err, err_size);
    if (rk != NULL)
        rd_kafka_poll_set_consumer(rk);
    return rk;
}

/* Lag = high watermark - where this group is: our position on partitions we
 * have read since assignment; the group's committed offset on the others (a
 * restarted instance that is caught up must not report the whole log);
 * the log start where nothing was ever committed (auto.offset.reset is
 * earliest). A partition whose committed offset cannot be fetched in 200 ms
 * is left out of this sample. */
void update_lag(collector *c)
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
    bool committed_known = unread->cnt == 0 || rd_kafka_committed(c->consumer, unread, 200) ==
                                                   RD_KAFKA_RESP_ERR_NO_ERROR;
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
    metrics_set(c->m.lag, (double)lag);
    rd_kafka_topic_partition_list_destroy(unread);
    rd_kafka_topic_partition_list_destroy(owned);
}

/* The assigned partitions that hold events past what was consumed (by the
 * high watermarks of the last fetch responses: no request is made), at
 * their positions; NULL when none. */
static rd_kafka_topic_partition_list_t *partitions_behind(collector *c)
{
    rd_kafka_topic_partition_list_t *owned = NULL;
    if (rd_kafka_assignment(c->consumer, &owned) != RD_KAFKA_RESP_ERR_NO_ERROR)
        return NULL;
    rd_kafka_position(c->consumer, owned);
    rd_kafka_topic_partition_list_t *behind = rd_kafka_topic_partition_list_new(owned->cnt);
    for (int i = 0; i < owned->cnt; i++) {
        const rd_kafka_topic_partition_t *p = &owned->elems[i];
        int64_t low = 0, high = 0;
        if (p->offset >= 0 &&
            rd_kafka_get_watermark_offsets(c->consumer, p->topic, p->partition, &low, &high) ==
                RD_KAFKA_RESP_ERR_NO_ERROR &&
            high > p->offset)
            rd_kafka_topic_partition_list_add(behind, p->topic, p->partition)->offset = p->offset;
    }
    rd_kafka_topic_partition_list_destroy(owned);
    if (behind->cnt == 0) {
        rd_kafka_topic_partition_list_destroy(behind);
        return NULL;
    }
    return behind;
}

/* librdkafka 2.0's fetcher stops fetching a partition once its queue holds
 * queued.max.messages.kbytes and looks again only a second later (later
 * versions made that fetch.queue.backoff.ms), however soon the queue is
 * drained. The collector drains 16 MB in a fraction of that second:
 * measured with librdkafka's fetch debug log, it then waited 0.8 s of every
 * second and consumed about 93,000 events a second whatever the database
 * could take. A pause and resume does not end that wait; a seek does. So
 * when the queue, after being nearly full, has run dry (no message for
 * WAKE_QUIET_USEC) while the partitions hold unread events, they are
 * sought to their positions, at most every WAKE_INTERVAL_USEC. A seek
 * drops what may be queued and fetches it again from the position:
 * nothing consumed is read twice and nothing is skipped. */
#define WAKE_QUIET_USEC    (20 * 1000)
#define WAKE_INTERVAL_USEC (100 * 1000)
/* The queue counts as full at this share of FETCH_QUEUE_KBYTES. */
#define FULL_QUEUE_SHARE   0.75
#define QUEUE_SAMPLE_EVERY 1000 /* messages */

void note_fetch_queue(collector *c, const rd_kafka_message_t *m)
{
    /* librdkafka counts a message's value and key against the limit. */
    double bytes = (double)(m->len + m->key_len);
    c->average_message_bytes += (bytes - c->average_message_bytes) / 64;
    if (++c->messages_since_sample < QUEUE_SAMPLE_EVERY)
        return;
    c->messages_since_sample = 0;
    double queued = (double)rd_kafka_queue_length(c->consumer_queue) * c->average_message_bytes;
    if (queued >= FULL_QUEUE_SHARE * FETCH_QUEUE_KBYTES * 1024.0)
        c->fetch_queue_filled = true;
}

void wake_starved_fetcher(collector *c, int64_t now)
{
    /* Only after the queue was (nearly) full: otherwise the fetcher is not
     * waiting out its second, and a seek would only throw away a fetch in
     * flight (over and over, on a slow link). */
    if (!c->fetch_queue_filled || c->paused || now - c->last_message_at < WAKE_QUIET_USEC ||
        now - c->last_wake_at < WAKE_INTERVAL_USEC)
        return;
    c->last_wake_at = now;
    rd_kafka_topic_partition_list_t *behind = partitions_behind(c);
    if (behind == NULL)
        return;
    c->fetch_queue_filled = false;
    rd_kafka_error_t *error = rd_kafka_seek_partitions(c->consumer, behind, 0);
    if (error != NULL) {
        log_warn("restarting fetches: %s", rd_kafka_error_string(error));
        rd_kafka_error_destroy(error);
    }
    rd_kafka_topic_partition_list_destroy(behind);
}
