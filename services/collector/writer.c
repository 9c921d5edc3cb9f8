/* The writers: each writes one batch at a time on its own connection:
 * unknown keys, rejects to the DLQ, the two-phase transaction (store.h),
 * then hands the offsets to offsets.c; a failure pauses and retries. */
#include "collector.h"

#include <poll.h>
#include <stdio.h>
#include <unistd.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "status.h"
#include "timeutil.h"

/* Looks up the keys the cache missed (a key created a moment ago is counted),
 * then stages the events whose key exists and rejects the rest. */
/* Stages the event if its key now exists, else rejects it; either way the
 * batch takes its message. */
static bool resolve_one(batch *b, unresolved *u, const keyplans *keys, char *err,
                        size_t err_size)
{
    const char *plan_id = keyplans_lookup(keys, u->event.subject);
    if (plan_id != NULL) {
        if (!stage_event(b, &u->event, plan_id, u->message)) {
            snprintf(err, err_size, "batch bounds exceeded while staging");
            return false;
        }
        rd_kafka_message_destroy(u->message);
        return true;
    }
    char subject[101], reason[200];
    copy_utf8(subject, sizeof subject, u->event.subject);
    snprintf(reason, sizeof reason, "subject \"%s\" is not a known API key id", subject);
    if (!add_reject(b, u->message, EVENT_ERR_UNKNOWN_KEY, reason)) {
        snprintf(err, err_size, "out of memory");
        return false;
    }
    return true;
}

static bool resolve_unknown_keys(collector *c, writer *w, char *err, size_t err_size)
{
    batch *b = w->batch;
    if (b->unresolved_count == 0)
        return true;
    const char **ids = malloc(b->unresolved_count * sizeof *ids);
    if (ids == NULL) {
        snprintf(err, err_size, "out of memory");
        return false;
    }
    for (size_t i = 0; i < b->unresolved_count; i++)
        ids[i] = b->unresolved[i].event.subject;
    metrics_add(c->m.key_lookups, 1);
    bool ok = store_lookup_keys(w->db, ids, b->unresolved_count, c->keys, err, err_size);
    free(ids);
    if (!ok)
        return false;
    metrics_set(c->m.key_cache_size, (double)keyplans_size(c->keys));
    size_t done = 0;
    for (; done < b->unresolved_count; done++) {
        if (!resolve_one(b, &b->unresolved[done], c->keys, err, err_size))
            break;
    }
    /* Keep only what is left (after a failure, for the retry). */
    memmove(b->unresolved, b->unresolved + done,
            (b->unresolved_count - done) * sizeof *b->unresolved);
    b->unresolved_count -= done;
    return b->unresolved_count == 0;
}

void dlq_delivered(rd_kafka_t *rk, const rd_kafka_message_t *message, void *opaque)
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
bool dlq_produce(collector *c, const rd_kafka_message_t *m, event_error code, const char *reason,
                 char *err, size_t err_size)
{
    rd_kafka_headers_t *original = NULL;
    rd_kafka_headers_t *headers =
        rd_kafka_message_headers(m, &original) == RD_KAFKA_RESP_ERR_NO_ERROR
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
        perr = rd_kafka_producev(
            c->dlq, RD_KAFKA_V_TOPIC(c->cfg->dlq_topic), RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
            RD_KAFKA_V_VALUE(m->payload, m->len), RD_KAFKA_V_KEY(m->key, m->key_len),
            RD_KAFKA_V_HEADERS(headers), RD_KAFKA_V_END);
        if (perr == RD_KAFKA_RESP_ERR__QUEUE_FULL)
            rd_kafka_poll(c->dlq, 50);
    } while (perr == RD_KAFKA_RESP_ERR__QUEUE_FULL);
    if (perr != RD_KAFKA_RESP_ERR_NO_ERROR) {
        rd_kafka_headers_destroy(headers); /* not taken over on failure */
        snprintf(err, err_size, "publishing to the DLQ topic %s: %s", c->cfg->dlq_topic,
                 rd_kafka_err2str(perr));
        return false;
    }
    return true;
}

/* Waits until the broker has confirmed everything queued for the DLQ. */
bool dlq_confirm(collector *c, char *err, size_t err_size)
{
    rd_kafka_resp_err_t ferr = rd_kafka_flush(c->dlq, 10000);
    if (ferr != RD_KAFKA_RESP_ERR_NO_ERROR || c->dlq_failures > 0) {
        snprintf(err, err_size, "DLQ topic %s did not confirm %d rejected events (%s)",
                 c->cfg->dlq_topic, c->dlq_failures, rd_kafka_err2str(ferr));
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

const char *const pause_reason_names[PAUSE__COUNT] = {"database", "dlq", "poison_refetch",
                                                     "database_refuses_all"};

/* Pauses or resumes fetching every assigned partition. */
static void pause_fetching(collector *c, bool pause)
{
    rd_kafka_topic_partition_list_t *owned = NULL;
    if (rd_kafka_assignment(c->consumer, &owned) == RD_KAFKA_RESP_ERR_NO_ERROR) {
        if (owned->cnt > 0) {
            if (pause)
                rd_kafka_pause_partitions(c->consumer, owned);
            else
                rd_kafka_resume_partitions(c->consumer, owned);
        }
        rd_kafka_topic_partition_list_destroy(owned);
    }
}

void set_paused(collector *c, bool paused, pause_reason reason)
{
    for (int r = 0; r < PAUSE__COUNT; r++)
        metrics_set(c->m.pause_reason[r], paused && r == (int)reason ? 1 : 0);
    pause_fetching(c, paused);
    if (c->paused != paused && paused)
        log_info("consumption paused until the batch can be written (%s)",
                 pause_reason_names[reason]);
    else if (c->paused != paused)
        log_info("consumption resumed");
    c->paused = paused;
    metrics_set(c->m.paused, paused ? 1 : 0);
}

/* A write failed and waits to be started again. */
static bool waiting_to_retry(const writer *w)
{
    return w->batch != NULL && !w->sent;
}

/* A batch held failed since it was handed over (consumption stays paused). */
static bool any_write_failed(const collector *c)
{
    for (int i = 0; i < c->writer_count; i++) {
        if (c->writers[i].batch != NULL && c->writers[i].failed)
            return true;
    }
    return false;
}

/* The write failed: count the error, keep the batch, pause consumption and
 * retry after a backoff (100 ms doubling to 5 s). Nothing was acknowledged
 * to Kafka. */
void write_failed(collector *c, writer *w, pause_reason reason, const char *err)
{
    bool database = reason == PAUSE_DATABASE || reason == PAUSE_REFUSES_ALL;
    metrics_add(database ? c->m.db_errors : c->m.dlq_errors, 1);
    log_error("batch of %zu events not written (writer %d), will retry: %s", w->batch->consumed,
              w->index, err);
    w->sent = false;
    w->rollups_sent = false;
    w->failed = true;
    if (!store_is_connected(w->db))
        store_disconnect(w->db);
    w->backoff_usec = w->backoff_usec ? w->backoff_usec * 2 : 100 * 1000;
    if (w->backoff_usec > 5 * USEC_PER_SEC)
        w->backoff_usec = 5 * USEC_PER_SEC;
    w->retry_at = time_now_usec() + w->backoff_usec;
    set_paused(c, true, reason);
}

/* The batch is in the database: hand its offsets on, account for it, and
 * free the writer. consumed = counted + duplicates + rejected, batch by
 * batch; `counted` is what this attempt found new, to which what an earlier
 * isolation pass committed is added. */
void write_done(collector *c, writer *w, uint64_t counted)
{
    batch *b = w->batch;
    offsets_written(c, w->seq, b);
    /* The status row is current only if this transaction carried it and no
     * other committed since its values were taken. */
    c->status_behind = !(w->carries_status && w->rollups_sent && w->status_commits == c->commits);
    c->commits++;
    /* The database took some of its events: a refusal of the rest of its
     * round is theirs, not a refusal of everything (poison.c). */
    if (b->event_count > b->poison_count && w->round > c->accepted_round)
        c->accepted_round = w->round;
    counted += b->counted_earlier;
    status_committed(b, counted);
    uint64_t duplicates = b->event_count - b->poison_count - counted + b->in_batch_duplicates;
    metrics_add(c->m.consumed, b->consumed);
    metrics_add(c->m.counted, counted);
    metrics_add(c->m.duplicates, duplicates);
    for (size_t i = 0; i < b->reject_count; i++)
        metrics_add(c->m.rejected[b->rejects[i].code], 1);
    for (size_t i = 0; i < b->poison_count; i++)
        metrics_add(c->m.rejected[b->poisons[i].code], 1);
    metrics_add(c->m.batches, 1);
    metrics_observe(c->m.batch_size, (double)b->consumed);
    double seconds = (double)(time_now_usec() - w->started) / 1e6;
    metrics_observe(c->m.batch_seconds, seconds);
    metrics_set(c->m.last_commit, (double)time_now_usec() / 1e6);
    log_debug("batch written by writer %d: %zu consumed, %llu counted, %llu duplicates, %zu "
              "rejected in %.1f ms",
              w->index, b->consumed, (unsigned long long)counted,
              (unsigned long long)duplicates, b->reject_count + b->poison_count, seconds * 1000);
    batch_clear(b);
    w->batch = NULL;
    w->since = 0;
    w->sent = false;
    w->rollups_sent = false;
    w->backoff_usec = 0;
    w->retry_at = 0;
    w->failed = false;
    if (c->paused && !any_write_failed(c))
        set_paused(c, false, PAUSE_DATABASE);
}

int64_t retry_writers(collector *c, int64_t now)
{
    int64_t next = 0;
    for (int i = 0; i < c->writer_count; i++) {
        writer *w = &c->writers[i];
        if (!waiting_to_retry(w))
            continue;
        if (now >= w->retry_at)
            write_start(c, w);
        else if (next == 0 || w->retry_at < next)
            next = w->retry_at;
    }
    return next;
}

/* Whether a batch handed over before w's, not committed yet, holds this
 * event: the same digest in the same event week (event_ids' key; another
 * week is another record). Only earlier batches: a retried batch must not
 * leave its events to a later one that left them to it. */
static bool held_earlier(const collector *c, const writer *w, const batch *b, size_t index)
{
    const uint8_t *digest = b->digests + index * 16;
    for (int i = 0; i < c->writer_count; i++) {
        const writer *other = &c->writers[i];
        if (other == w || other->batch == NULL || other->seq > w->seq)
            continue;
        long found = batch_find_digest(other->batch, digest);
        if (found >= 0 && other->batch->week_days[found] == b->week_days[index])
            return true;
    }
    return false;
}

/* Chooses the digests phase A records for w's new batch. An event that an
 * earlier batch still being written also holds is left to that batch: it
 * either commits the event or, retried, keeps it until it does (or sends it
 * to the DLQ as poison), so here it is a duplicate. Recording it here too
 * would make this INSERT wait for that whole transaction on its
 * uncommitted row, and the writers would take turns instead of working at
 * once (10 % duplicates put one in nearly every pair of batches). */
bool leave_to_earlier_batches(collector *c, writer *w)
{
    const batch *b = w->batch;
    w->digests = b->digests;
    w->week_days = b->week_days;
    w->digest_count = b->event_count;
    size_t i = 0;
    while (i < b->event_count && !held_earlier(c, w, b, i))
        i++;
    if (i == b->event_count)
        return true; /* the usual case: nothing shared */
    if (w->own_digests == NULL) {
        w->own_digests = malloc(b->capacity * 16);
        w->own_week_days = malloc(b->capacity * sizeof *w->own_week_days);
        if (w->own_digests == NULL || w->own_week_days == NULL)
            return false;
    }
    memcpy(w->own_digests, b->digests, i * 16);
    memcpy(w->own_week_days, b->week_days, i * sizeof *b->week_days);
    size_t kept = i;
    for (i++; i < b->event_count; i++) {
        if (held_earlier(c, w, b, i))
            continue;
        memcpy(w->own_digests + kept * 16, b->digests + i * 16, 16);
        w->own_week_days[kept++] = b->week_days[i];
    }
    w->digests = w->own_digests;
    w->week_days = w->own_week_days;
    w->digest_count = kept;
    return true;
}

/* Starts (or restarts) writing w's batch: unknown keys, DLQ, then the
 * database statement, which is left in flight. */
void write_start(collector *c, writer *w)
{
    batch *b = w->batch;
    char err[512];
    w->started = time_now_usec();
    /* Every attempt starts with no poison (write_isolating finds it again
     * if it is still refused); counted_earlier stays: those parts are
     * committed. */
    b->poison_count = 0;
    if (!resolve_unknown_keys(c, w, err, sizeof err)) {
        write_failed(c, w, PAUSE_DATABASE, err);
        return;
    }
    if (!publish_rejects(c, b, err, sizeof err)) {
        write_failed(c, w, PAUSE_DLQ, err);
        return;
    }
    if (b->event_count == 0) {
        write_done(c, w, 0);
        return;
    }
    /* After the unknown keys: their events are staged only now. */
    if (!leave_to_earlier_batches(c, w)) {
        /* Nothing of this batch is acknowledged: exit as a crash would and
         * let the next owner read it again (see batch_add's caller). */
        log_error("out of memory choosing a batch's digests; exiting without acknowledging it");
        fflush(NULL);
        _exit(1);
    }
    if (!store_send_inserts(w->db, w->digests, w->week_days, w->digest_count, err, sizeof err)) {
        write_failed(c, w, PAUSE_DATABASE, err);
        return;
    }
    w->sent = true;
    w->rollups_sent = false;
}

/* Whether a writer's transaction in flight carries the status row. */
static bool status_in_flight(const collector *c)
{
    for (int i = 0; i < c->writer_count; i++) {
        const writer *w = &c->writers[i];
        if (w->batch != NULL && w->sent && w->rollups_sent && w->carries_status)
            return true;
    }
    return false;
}

/* Phase A answered with the digests never seen before: count exactly those
 * events in the batch's rollup, and send phase B. */
static void send_rollups(collector *c, writer *w, PGresult *inserted)
{
    batch *b = w->batch;
    char err[512];
    uint64_t counted;
    if (!batch_count_new(b, inserted, &counted)) {
        write_isolating(c, w, "a batch total would overflow");
        return;
    }
    w->counted = counted;
    /* c->hourly and c->counters serve every writer: libpq copies the
     * parameters when the statement is queued. */
    if (!rollup_render(b->rollup, c->hourly, c->counters)) {
        write_isolating(c, w, "rollup parameters exceed their buffers or a total would overflow");
        return;
    }
    /* The status row goes with one writer's transaction at a time: two
     * would queue on its row lock, the later waiting for the earlier's
     * commit even when their batches share no key. */
    w->carries_status = !status_in_flight(c);
    w->status_commits = c->commits;
    if (w->carries_status)
        store_stage_status(w->db, status_values(c, b, counted + b->counted_earlier));
    if (!store_send_rollups(w->db, c->hourly, c->counters, counted == 0, err, sizeof err)) {
        write_failed(c, w, PAUSE_DATABASE, err);
        return;
    }
    w->rollups_sent = true;
}

/* Advances w's write without waiting. */
static void write_advance(collector *c, writer *w)
{
    while (w->batch != NULL && w->sent) {
        PGresult *inserted = NULL;
        char err[512];
        switch (store_poll(w->db, &inserted, err, sizeof err)) {
        case STORE_PENDING:
            return;
        case STORE_DONE:
            if (w->rollups_sent) {
                write_done(c, w, w->counted);
                return;
            }
            send_rollups(c, w, inserted);
            PQclear(inserted);
            break; /* phase B is in flight now */
        case STORE_FAILED:
            if (store_last_error(w->db) == STORE_ERROR_TRANSIENT) {
                write_failed(c, w, PAUSE_DATABASE, err);
            } else {
                metrics_add(c->m.db_errors, 1);
                write_isolating(c, w, err);
            }
            return;
        }
    }
}

bool writers_busy(const collector *c)
{
    for (int i = 0; i < c->writer_count; i++) {
        if (c->writers[i].batch != NULL && c->writers[i].sent)
            return true;
    }
    return false;
}

void writers_poll(collector *c, int timeout_ms)
{
    struct pollfd fds[WRITERS_MAX];
    int n = 0;
    for (int i = 0; i < c->writer_count && timeout_ms > 0; i++) {
        const writer *w = &c->writers[i];
        if (w->batch != NULL && w->sent && store_pollfd(w->db, &fds[n]))
            n++;
    }
    /* poll, not select: a descriptor past FD_SETSIZE (1024) is fine. */
    if (n > 0)
        poll(fds, (nfds_t)n, timeout_ms);
    for (int i = 0; i < c->writer_count; i++)
        write_advance(c, &c->writers[i]);
}

static writer *idle_writer(collector *c)
{
    for (int i = 0; i < c->writer_count; i++) {
        if (c->writers[i].batch == NULL)
            return &c->writers[i];
    }
    return NULL;
}

/* The batch neither filling nor being written (there are writers + lanes). */
static batch *free_batch(collector *c)
{
    for (int i = 0; i < c->writer_count + c->lane_count; i++) {
        batch *b = &c->batches[i];
        bool taken = false;
        for (int j = 0; j < c->lane_count && !taken; j++)
            taken = c->filling[j] == b;
        for (int j = 0; j < c->writer_count && !taken; j++)
            taken = c->writers[j].batch == b;
        if (!taken)
            return b;
    }
    return NULL; /* unreachable: an idle writer leaves one free */
}

bool round_empty(const collector *c)
{
    return batch_empty(c->filling[0]); /* it holds every message's offset */
}

size_t round_consumed(const collector *c)
{
    size_t consumed = 0;
    for (int i = 0; i < c->lane_count; i++)
        consumed += c->filling[i]->consumed;
    return consumed;
}

/* The batches handing the round over takes: lane 0's, and every other
 * lane's that holds a message. */
static int round_batches(const collector *c)
{
    int n = 1;
    for (int i = 1; i < c->lane_count; i++)
        n += !batch_empty(c->filling[i]);
    return n;
}

bool round_ready(const collector *c)
{
    int needed = round_batches(c);
    int idle = 0;
    for (int i = 0; i < c->writer_count; i++)
        idle += c->writers[i].batch == NULL;
    return idle >= needed && offsets_room(c, needed);
}

static void write_lane(collector *c, int lane, size_t round_events)
{
    writer *w = idle_writer(c);
    w->batch = c->filling[lane];
    w->seq = c->next_seq++;
    w->round = c->rounds;
    w->round_events = round_events;
    w->since = time_now_usec();
    c->filling[lane] = free_batch(c);
    write_start(c, w);
}

/* Lane 0's batch goes last: its offsets cover the whole round, and
 * offsets.c commits a batch's offsets only once every batch handed over
 * before it is written. */
void write_round(collector *c)
{
    /* Staged events only: most of those whose key is not known yet turn
     * out unknown (rejects), and must not make a refusal look general. */
    size_t events = 0;
    for (int lane = 0; lane < c->lane_count; lane++)
        events += c->filling[lane]->event_count;
    c->rounds++;
    for (int lane = 1; lane < c->lane_count; lane++) {
        if (!batch_empty(c->filling[lane]))
            write_lane(c, lane, events);
    }
    write_lane(c, 0, events);
}

bool write_all_now(collector *c)
{
    for (int i = 0; i < c->writer_count; i++) {
        writer *w = &c->writers[i];
        if (waiting_to_retry(w))
            write_start(c, w);
    }
    for (;;) {
        if (!round_empty(c) && round_ready(c))
            write_round(c);
        else if (writers_busy(c))
            writers_poll(c, 100);
        else
            break;
    }
    for (int i = 0; i < c->writer_count; i++) {
        if (c->writers[i].batch != NULL)
            return false;
    }
    return round_empty(c);
}

void write_status_if_behind(collector *c)
{
    writer *w = &c->writers[0];
    /* Not while a write is failing (the database is likely away: the
     * retries say so), and after a failure of its own not for 5 s. */
    int64_t now = time_now_usec();
    if (!c->status_behind || w->batch != NULL || writers_busy(c) || any_write_failed(c) ||
        now < c->status_retry_at)
        return;
    static batch nothing; /* no dead letters of its own */
    char err[512];
    if (store_write_status(w->db, status_values(c, &nothing, 0), err, sizeof err)) {
        c->status_behind = false;
    } else {
        log_warn("%s", err);
        c->status_retry_at = now + 5 * USEC_PER_SEC;
    }
}
