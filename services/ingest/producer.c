/* The idempotent producer and the delivery trackers (producer.h). */
#include "producer.h"

#include <librdkafka/rdkafka.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "stopsignal.h"

struct producer {
    rd_kafka_t *rk;
    rd_kafka_topic_t *topic;
    pthread_t thread;
    atomic_bool stopping;
    atomic_bool reachable;
};

struct delivery {
    pthread_mutex_t lock;
    pthread_cond_t done;
    size_t pending; /* sent, no report yet */
    size_t failed;  /* reports with an error */
};

/* How often the brokers are asked for metadata while they are known to be
 * down, to learn they are back without sending an event. */
#define PROBE_INTERVAL_MS 500

delivery *delivery_new(void)
{
    delivery *d = calloc(1, sizeof *d);
    if (d == NULL)
        return NULL;
    pthread_mutex_init(&d->lock, NULL);
    pthread_cond_init(&d->done, NULL);
    return d;
}

size_t delivery_wait(delivery *d)
{
    pthread_mutex_lock(&d->lock);
    while (d->pending > 0)
        pthread_cond_wait(&d->done, &d->lock);
    size_t failed = d->failed;
    pthread_mutex_unlock(&d->lock);
    pthread_cond_destroy(&d->done);
    pthread_mutex_destroy(&d->lock);
    free(d);
    return failed;
}

/* A message's report: counts it in its tracker, and wakes the request when
 * it was the last. Runs on the producer's thread. After the unlock the
 * tracker may be freed by its request: it is not touched again. */
static void on_delivery(rd_kafka_t *rk, const rd_kafka_message_t *message, void *opaque)
{
    (void)rk;
    producer *p = opaque;
    delivery *d = message->_private;
    /* A failure is counted by the request (tally_ingest_requests_total
     * {status="503"}); one log line per event would flood during an outage. */
    if (message->err)
        log_debug("delivery failed: %s", rd_kafka_err2str(message->err));
    else
        atomic_store(&p->reachable, true);
    pthread_mutex_lock(&d->lock);
    if (message->err)
        d->failed++;
    if (--d->pending == 0)
        pthread_cond_signal(&d->done);
    pthread_mutex_unlock(&d->lock);
}

static void on_kafka_error(rd_kafka_t *rk, int err, const char *reason, void *opaque)
{
    (void)rk;
    producer *p = opaque;
    if (err == RD_KAFKA_RESP_ERR__FATAL) {
        /* An idempotent producer that hit a fatal error cannot guarantee
         * anything any more: stop, and let the supervisor restart us. */
        log_error("fatal Kafka error: %s; stopping", reason);
        atomic_store(&p->reachable, false);
        stopsignal_request();
        return;
    }
    if (err == RD_KAFKA_RESP_ERR__ALL_BROKERS_DOWN)
        atomic_store(&p->reachable, false);
    log_warn("Kafka: %s (%s)", reason, rd_kafka_err2name((rd_kafka_resp_err_t)err));
}

/* While the brokers are known down: one metadata request, which succeeds
 * as soon as a broker answers again. */
static void probe_brokers(producer *p)
{
    const struct rd_kafka_metadata *metadata = NULL;
    if (rd_kafka_metadata(p->rk, 0, p->topic, &metadata, PROBE_INTERVAL_MS) ==
        RD_KAFKA_RESP_ERR_NO_ERROR) {
        rd_kafka_metadata_destroy(metadata);
        if (!atomic_exchange(&p->reachable, true))
            log_info("Kafka reachable again");
    }
}

static void *serve_reports(void *arg)
{
    producer *p = arg;
    while (!atomic_load(&p->stopping)) {
        rd_kafka_poll(p->rk, 100);
        if (!atomic_load(&p->reachable))
            probe_brokers(p);
    }
    return NULL;
}

static rd_kafka_conf_t *producer_conf(const producer_settings *s, producer *p, char *err,
                                      size_t err_size)
{
    char timeout[24], linger[24], queue[24];
    snprintf(timeout, sizeof timeout, "%lld", s->message_timeout_ms);
    snprintf(linger, sizeof linger, "%lld", s->linger_ms);
    snprintf(queue, sizeof queue, "%lld", s->queue_max_messages);
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    bool ok = kafkaconf_set_connection(conf, s->kafka, "tally-ingest", err, err_size) &&
              /* An event is acknowledged to the client only once every
               * in-sync replica has it, and a retry inside librdkafka never
               * writes it twice or out of order. */
              kafkaconf_set(conf, "enable.idempotence", "true", err, err_size) &&
              kafkaconf_set(conf, "acks", "all", err, err_size) &&
              /* Bounds how long a request waits for its report: past it the
               * delivery fails and the client gets 503 (and retries). */
              kafkaconf_set(conf, "message.timeout.ms", timeout, err, err_size) &&
              /* Concurrent requests' events for one partition share a produce
               * request. */
              kafkaconf_set(conf, "linger.ms", linger, err, err_size) &&
              kafkaconf_set(conf, "queue.buffering.max.messages", queue, err, err_size) &&
              /* librdkafka 2.0 sends one small ProduceRequest per partition,
               * up to five at once, and a request waits for its slowest
               * partition: no small write of ours may wait for the broker's
               * delayed ACK. */
              kafkaconf_set(conf, "socket.nagle.disable", "true", err, err_size) &&
              kafkaconf_set(conf, "log.queue", "false", err, err_size);
    if (!ok) {
        rd_kafka_conf_destroy(conf);
        return NULL;
    }
    rd_kafka_conf_set_opaque(conf, p);
    rd_kafka_conf_set_dr_msg_cb(conf, on_delivery);
    rd_kafka_conf_set_log_cb(conf, kafkaconf_log);
    rd_kafka_conf_set_error_cb(conf, on_kafka_error);
    return conf;
}

producer *producer_start(const producer_settings *settings, char *err, size_t err_size)
{
    producer *p = calloc(1, sizeof *p);
    if (p == NULL) {
        snprintf(err, err_size, "out of memory");
        return NULL;
    }
    atomic_init(&p->stopping, false);
    atomic_init(&p->reachable, true);
    rd_kafka_conf_t *conf = producer_conf(settings, p, err, err_size);
    if (conf == NULL) {
        free(p);
        return NULL;
    }
    char kafka_err[256];
    p->rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, kafka_err, sizeof kafka_err);
    if (p->rk == NULL) {
        rd_kafka_conf_destroy(conf); /* not taken over on failure */
        snprintf(err, err_size, "creating the Kafka producer: %s", kafka_err);
        free(p);
        return NULL;
    }
    conf = NULL; /* rd_kafka_new took it */
    p->topic = rd_kafka_topic_new(p->rk, settings->topic, NULL);
    if (p->topic == NULL || pthread_create(&p->thread, NULL, serve_reports, p) != 0) {
        snprintf(err, err_size, "starting the Kafka producer for topic %s failed",
                 settings->topic);
        if (p->topic)
            rd_kafka_topic_destroy(p->topic);
        rd_kafka_destroy(p->rk);
        free(p);
        return NULL;
    }
    return p;
}

void producer_stop(producer *p, int timeout_ms)
{
    if (p == NULL)
        return;
    if (rd_kafka_flush(p->rk, timeout_ms) != RD_KAFKA_RESP_ERR_NO_ERROR)
        log_warn("%d event(s) still unacknowledged at exit (their requests were answered 503)",
                 rd_kafka_outq_len(p->rk));
    atomic_store(&p->stopping, true);
    pthread_join(p->thread, NULL);
    rd_kafka_topic_destroy(p->topic);
    rd_kafka_destroy(p->rk);
    free(p);
}

bool producer_reachable(const producer *p)
{
    return atomic_load(&p->reachable);
}

produce_result producer_send(producer *p, delivery *d, const char *key, size_t key_len,
                             const char *value, size_t value_len, char *err, size_t err_size)
{
    pthread_mutex_lock(&d->lock);
    d->pending++;
    pthread_mutex_unlock(&d->lock);
    if (rd_kafka_produce(p->topic, RD_KAFKA_PARTITION_UA, RD_KAFKA_MSG_F_COPY, (void *)value,
                         value_len, key, key_len, d) == 0)
        return PRODUCE_QUEUED;
    rd_kafka_resp_err_t kerr = rd_kafka_last_error();
    pthread_mutex_lock(&d->lock);
    d->pending--; /* no report will come for it */
    pthread_mutex_unlock(&d->lock);
    snprintf(err, err_size, "%s", rd_kafka_err2str(kerr));
    return kerr == RD_KAFKA_RESP_ERR__QUEUE_FULL ? PRODUCE_QUEUE_FULL : PRODUCE_FAILED;
}
