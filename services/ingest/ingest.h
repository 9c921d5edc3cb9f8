/* tally-ingest's shared state and the functions its modules offer one
 * another:
 *   ingestbody.c - content types and splitting a batch (pure);
 *   producer.c   - the idempotent Kafka producer and delivery tracking;
 *   events.c     - POST /v1/events: token, limits, validation, produce,
 *                  the per-event answer;
 *   main.c       - settings, metrics, the HTTP server, start and stop. */
#ifndef TALLY_INGEST_H
#define TALLY_INGEST_H

#include <microhttpd.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "buf.h"
#include "digest.h"
#include "event.h"
#include "metrics.h"
#include "producer.h"

/* The answers POST /v1/events gives, in the order of their metrics. */
#define INGEST_STATUSES(X) X(202) X(400) X(401) X(404) X(405) X(413) X(415) X(500) X(503)
enum {
#define INGEST_STATUS_ONE(code) +1
    INGEST_STATUS_COUNT = 0 INGEST_STATUSES(INGEST_STATUS_ONE)
#undef INGEST_STATUS_ONE
};

/* Seconds a 503 asks the client to wait before retrying. */
#define INGEST_RETRY_AFTER_S 2

typedef struct {
    metric *requests[INGEST_STATUS_COUNT]; /* by answer, INGEST_STATUSES order */
    metric *accepted;                      /* events acknowledged by the broker */
    metric *refused[EVENT_ERR__COUNT];     /* events refused, by code */
    metric *unacknowledged;                /* accepted events whose delivery failed (503) */
    metric *produce_seconds;               /* first send to last acknowledgement, per request */
    metric *kafka_reachable;               /* 1 or 0 */
} ingest_metrics;

/* Everything a request needs; filled by main.c, read-only afterwards
 * (apart from the metrics and the producer, which are thread-safe). */
typedef struct {
    producer *kafka;
    uint8_t token_digest[DIGEST_SHA256_LEN]; /* SHA-256 of the ingest token */
    size_t max_body_bytes;
    size_t max_batch_events;
    int64_t lateness_usec;
    size_t max_event_bytes;
    ingest_metrics m;
} ingest_context;

/* One request's state between libmicrohttpd's calls (events.c). */
typedef struct ingest_request ingest_request;

/* libmicrohttpd's access handler for the public address: POST /v1/events
 * (and GET /healthz); `cls` is the ingest_context. Runs on the
 * connection's own thread, which waits there for the broker's
 * acknowledgements. */
enum MHD_Result events_handle(void *cls, struct MHD_Connection *conn, const char *url,
                              const char *method, const char *version, const char *upload_data,
                              size_t *upload_data_size, void **req_cls);
/* Frees a request's state (MHD_OPTION_NOTIFY_COMPLETED). */
void events_completed(void *cls, struct MHD_Connection *conn, void **req_cls,
                      enum MHD_RequestTerminationCode code);
/* The index of `status` in INGEST_STATUSES, or -1. */
int events_status_index(unsigned status);

#endif
