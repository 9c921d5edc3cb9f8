/* tally-ingest's Kafka side: one idempotent producer (acks=all) shared by
 * every request, a thread that serves its delivery reports, and a
 * per-request delivery tracker, so that an HTTP answer can wait for the
 * broker's acknowledgement of every event it accepted (docs/CONTRACT.md
 * §3.7). */
#ifndef TALLY_INGEST_PRODUCER_H
#define TALLY_INGEST_PRODUCER_H

#include <stdbool.h>
#include <stddef.h>

#include "kafkaconf.h"

typedef struct {
    const kafkaconf_connection *kafka; /* borrowed */
    const char *topic;                 /* borrowed */
    long long message_timeout_ms;      /* a delivery not acknowledged by then fails */
    long long linger_ms;               /* how long events wait to share a produce request */
    long long queue_max_messages;      /* the local queue; past it requests get 503 */
} producer_settings;

typedef struct producer producer;
/* The events one request sent, and how many the broker acknowledged. */
typedef struct delivery delivery;

/* Creates the producer and starts its delivery-report thread. New producer
 * (stop with producer_stop), or NULL with err filled. `settings` and what
 * it points to are borrowed for the producer's whole life. */
producer *producer_start(const producer_settings *settings, char *err, size_t err_size);
/* Waits up to timeout_ms for queued events to be delivered, stops the
 * thread and frees the producer. Call once no request uses it. */
void producer_stop(producer *p, int timeout_ms);
/* False while the brokers are known to be unreachable (every broker
 * connection down, and no metadata answer or delivery since): requests are
 * then refused at once instead of waiting for the message timeout. */
bool producer_reachable(const producer *p);

/* A new, empty tracker (freed by delivery_wait), or NULL without memory. */
delivery *delivery_new(void);

typedef enum {
    PRODUCE_QUEUED,     /* in the local queue; its report will come */
    PRODUCE_QUEUE_FULL, /* the local queue is full: try again later */
    PRODUCE_FAILED,     /* refused by librdkafka (err says why) */
} produce_result;

/* Queues one message (value and key copied) whose delivery `d` tracks. */
produce_result producer_send(producer *p, delivery *d, const char *key, size_t key_len,
                             const char *value, size_t value_len, char *err, size_t err_size);

/* Waits for the delivery report of every message sent with `d` (each comes
 * within the message timeout), frees `d` and returns how many failed: 0
 * means the broker acknowledged them all (acks=all). */
size_t delivery_wait(delivery *d);

#endif
