/* The collector's shared state: its settings, metrics, the batches and the
 * collector itself, and the functions its modules offer one another.
 *   batch.c   - a batch: staged events, rejects, offsets, poison;
 *   writer.c  - the writers: writing a batch (unknown keys, DLQ, the
 *               two-phase transaction); pausing and retrying;
 *   offsets.c - Kafka offsets, committed in consumption order;
 *   poison.c  - a batch the database refuses: isolating the events at
 *               fault and dead-lettering them;
 *   kafka.c   - the consumer, the DLQ producer, the poison reader, lag;
 *   main.c    - settings, metrics, health, start-up and the loop.
 * The delivery guarantee is described in main.c. */
#ifndef TALLY_COLLECTOR_H
#define TALLY_COLLECTOR_H

#include <librdkafka/rdkafka.h>
#include <libpq-fe.h>
#include <signal.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "buf.h"
#include "event.h"
#include "hashindex.h"
#include "kafkaconf.h"
#include "keyplans.h"
#include "metrics.h"
#include "rollup.h"
#include "store.h"

/* The largest batch: TALLY_BATCH_MAX_EVENTS at most, plus what may still
 * arrive while consumption is paused. */
#define BATCH_MAX_EVENTS_LIMIT 200000
#define BATCH_SPILL_EVENTS     100000
/* So a batch's in-memory sums (rollup.c) can never overflow, whatever the
 * events say: every event is within the per-event bounds. */
_Static_assert((BATCH_MAX_EVENTS_LIMIT + BATCH_SPILL_EVENTS) * EVENT_MAX_BYTES_FIELD <
                       INT64_MAX / 4 &&
                   (BATCH_MAX_EVENTS_LIMIT + BATCH_SPILL_EVENTS) * EVENT_MAX_UNITS < INT64_MAX / 4,
               "a batch's totals must fit in int64");

/* Settings (main.c's table fills them; read-only afterwards). */
typedef struct {
    const char *database_url;
    kafkaconf_connection kafka; /* brokers, TLS, SASL */
    const char *kafka_topic;
    const char *dlq_topic;
    const char *kafka_group;
    const char *metrics_addr;
    const char *log_level_text;
    const char *assignment_strategy;
    long long batch_max_events;
    long long batch_max_wait_ms;
    long long writers;
    long long fetch_wait_ms; /* librdkafka's fetch.wait.max.ms */
    long long lateness_days;
    long long max_event_bytes;
    long long key_refresh_ms;
    long long session_timeout_ms;
    long long stall_timeout_s;
} collector_config;

/* Why consumption is paused: what the last failed write attempt met. */
typedef enum {
    PAUSE_DATABASE,        /* PostgreSQL unavailable or failing */
    PAUSE_DLQ,             /* the DLQ topic did not confirm rejected events */
    PAUSE_POISON_REFETCH,  /* poison events could not be read again for the DLQ */
    PAUSE_REFUSES_ALL,     /* PostgreSQL refused every event of a batch: not the events' fault */
    PAUSE__COUNT
} pause_reason;
extern const char *const pause_reason_names[PAUSE__COUNT];

typedef struct {
    metric *consumed, *counted, *duplicates, *batches, *batch_size, *batch_seconds, *lag,
        *db_errors, *dlq_errors, *key_cache_size, *key_lookups, *last_commit, *paused,
        *stalled_seconds;
    metric *rejected[EVENT_ERR__COUNT];
    metric *pause_reason[PAUSE__COUNT];
} collector_metrics;

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
    size_t index;            /* its staged event in the batch */
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
    hashindex digest_index;   /* digest -> staged event */
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

/* At most this many database connections write batches at once
 * (TALLY_WRITERS). */
#define WRITERS_MAX 8
/* Batches handed to writers whose Kafka offsets are not committed yet, at
 * most: a batch that commits before its predecessors waits for them. */
#define ACKS_MAX (2 * WRITERS_MAX)

/* One database connection and the batch it writes. Writers work at once,
 * each its own transaction, so batches may commit out of order: the
 * deduplication record makes that safe (main.c), and offsets.c commits
 * Kafka offsets in consumption order all the same. */
typedef struct {
    int index;                /* for logs */
    store *db;
    batch *batch;             /* being written; NULL when idle */
    uint64_t seq;             /* the batch's place in consumption order */
    uint64_t round;           /* the round it was handed over in (from 1) */
    size_t round_events;      /* events the whole round had staged then */
    bool sent;                /* an exchange is in flight (else it waits to retry) */
    bool rollups_sent;        /* ... and it is phase B (rollups and COMMIT) */
    bool carries_status;      /* ... which updates the collector_status row */
    uint64_t status_commits;  /* c->commits when its status values were taken */
    uint64_t counted;         /* new events found by phase A */
    int64_t started;          /* this attempt */
    int64_t since;            /* when the batch was handed over */
    int64_t retry_at;         /* after a failure (0: none) */
    bool failed;              /* its batch failed since handed over: consumption stays paused */
    int64_t backoff_usec;
    /* The digests phase A records: the batch's own, or (when some are
     * left to an earlier batch, see leave_to_earlier_batches) `own_*`, the
     * rest. */
    const uint8_t *digests;
    const int32_t *week_days;
    size_t digest_count;
    uint8_t *own_digests;     /* batch capacity; allocated at the first need */
    int32_t *own_week_days;
} writer;

/* A handed-over batch's offsets, kept until every earlier batch is written. */
typedef struct {
    bool written;
    partition_mark *marks;
    size_t count, cap;
} pending_ack;

typedef struct {
    const collector_config *cfg;
    collector_metrics m;
    rd_kafka_t *consumer;
    rd_kafka_t *dlq;
    keyplans *keys;
    writer writers[WRITERS_MAX];
    int writer_count;
    batch batches[2 * WRITERS_MAX]; /* one filling per lane, one per writer */
    /* Each key's events go to one lane's filling batch (lane_of), so the
     * batches of a round, written at once, never add to the same rollup
     * rows: otherwise one writer's rollups wait for another's commit (only
     * two rounds in flight at once can still share a lane's keys). Lane 0's
     * batch also holds the offsets of every message of the round. */
    batch *filling[WRITERS_MAX];
    int lane_count;           /* = writer_count */
    uint64_t next_seq;        /* the next batch handed over gets this */
    uint64_t rounds;          /* rounds handed over */
    uint64_t accepted_round;  /* the latest round a batch of which committed events */
    uint64_t acked_seq;       /* the oldest batch whose offsets are not committed */
    pending_ack acks[ACKS_MAX];
    buf hourly[ROLLUP_HOURLY_COLUMNS];
    buf counters[ROLLUP_COUNTER_COLUMNS];
    event_limits limits;
    uint64_t commits;         /* batches committed */
    bool status_behind;       /* a commit happened that the status row does not show */
    int64_t status_retry_at;  /* after a failed catch-up of the status row */
    bool paused;
    rd_kafka_queue_t *consumer_queue; /* the consumer's, to sample its length */
    int64_t last_message_at;  /* when the consumer last returned a message */
    int64_t last_wake_at;     /* wake_starved_fetcher's last look */
    double average_message_bytes;
    int messages_since_sample;
    bool fetch_queue_filled;  /* the queue was nearly full since the last wake */
    bool synchronous_commit;  /* during a revocation: commit offsets before returning */
    bool caught_up;           /* the last poll found no message waiting */
    bool ever_assigned;       /* the group has given this instance an assignment */
    int dlq_failures;         /* delivery failures seen by the DLQ producer */
} collector;

/* ---- batch.c ---- */
bool grow_array(void **items, size_t *cap, size_t count, size_t size);
/* A batch that holds up to `capacity` staged events. */
bool batch_init(batch *b, size_t capacity);
void batch_clear(batch *b);
void batch_destroy(batch *b);
bool batch_empty(const batch *b);
/* The staged event with this digest, or -1. */
long batch_find_digest(const batch *b, const uint8_t digest[16]);
/* Takes ownership of `message`. False only when memory or the batch's
 * bounds run out (the caller then stops without acknowledging anything). */
bool batch_add(collector *c, rd_kafka_message_t *message);
bool add_reject(batch *b, rd_kafka_message_t *message, event_error code, const char *reason);
bool stage_event(batch *b, const usage_event *ev, const char *plan_id,
                 const rd_kafka_message_t *message);
bool add_poison(batch *b, size_t index, event_error code, const char *reason);
/* Counts, from zero, the staged events whose digests `inserted` (phase A's
 * result) lists as new into the batch's rollup; *fresh is how many. False
 * when a total would overflow. */
bool batch_count_new(batch *b, const PGresult *inserted, uint64_t *fresh);
void copy_utf8(char *dst, size_t dst_size, const char *text);
void flatten_lines(char *text);

/* ---- writer.c ---- */
void dlq_delivered(rd_kafka_t *rk, const rd_kafka_message_t *message, void *opaque);
bool dlq_produce(collector *c, const rd_kafka_message_t *m, event_error code,
                 const char *reason, char *err, size_t err_size);
bool dlq_confirm(collector *c, char *err, size_t err_size);
void set_paused(collector *c, bool paused, pause_reason reason);
void write_failed(collector *c, writer *w, pause_reason reason, const char *err);
void write_done(collector *c, writer *w, uint64_t counted);
void write_start(collector *c, writer *w);
/* Starts again each failed write whose backoff has passed; returns the
 * earliest retry still to come (0: none). */
int64_t retry_writers(collector *c, int64_t now);
/* Sets w->digests / week_days / digest_count: the events of w's batch that
 * no earlier uncommitted batch also holds (writer.c says why). False when
 * memory runs out. */
bool leave_to_earlier_batches(collector *c, writer *w);
/* Whether the round (every lane's filling batch) holds no message. */
bool round_empty(const collector *c);
/* Messages the round holds, in all lanes. */
size_t round_consumed(const collector *c);
/* Whether enough writers are idle to take the round now. */
bool round_ready(const collector *c);
/* Hands each lane's batch that holds messages to an idle writer (from
 * round_ready), lane 0's last. */
void write_round(collector *c);
/* Whether any writer has an exchange in flight. */
bool writers_busy(const collector *c);
/* Waits up to timeout_ms for any writer's database answer, then advances
 * every writer in flight (never one alone: a transaction may wait for
 * another writer's, which only moves on when it is served). */
void writers_poll(collector *c, int timeout_ms);
/* Brings the collector_status row up to date on writer 0's connection when
 * a commit it does not show happened and no writer is busy. */
void write_status_if_behind(collector *c);
/* Writes everything consumed so far, synchronously, one attempt per batch.
 * True when nothing is left unwritten. */
bool write_all_now(collector *c);

/* ---- offsets.c ---- */
/* Batch `seq` (a writer's) is in the database: its offsets are committed
 * once every batch handed over before it is too. */
void offsets_written(collector *c, uint64_t seq, const batch *b);
/* offsets_written's two steps, without Kafka: keep batch `seq`'s offsets,
 * then take the offsets of the batches now written in order from the
 * oldest (merged, later batches winning; NULL when the oldest is still
 * being written). */
void offsets_record(collector *c, uint64_t seq, const batch *b);
rd_kafka_topic_partition_list_t *offsets_take_ready(collector *c);
/* Whether `batches` more batches may be handed over (ACKS_MAX not
 * exceeded). */
bool offsets_room(const collector *c, int batches);
void offsets_free(collector *c);

/* ---- poison.c ---- */
void write_isolating(collector *c, writer *w, const char *why);

/* ---- kafka.c ---- */
rd_kafka_t *make_consumer(collector *c);
rd_kafka_t *make_dlq_producer(collector *c);
rd_kafka_t *make_reader(collector *c, char *err, size_t err_size);
void update_lag(collector *c);
/* Called for each message consumed: notes whether librdkafka's queue is
 * nearly full (a sample every thousand messages). */
void note_fetch_queue(collector *c, const rd_kafka_message_t *m);
/* Called when a poll found no message: restarts librdkafka's fetcher if it
 * waits while the partitions hold unread events (kafka.c says why). */
void wake_starved_fetcher(collector *c, int64_t now);

#endif
