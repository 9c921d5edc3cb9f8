#include "collector.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "timeutil.h"

/* A batch the database refused for its data (store_last_error: a total out
 * of bigint's range, a constraint) would be refused again on every retry and
 * stop every key from being counted. So it is written again in parts, each
 * in its own transaction, and every part that is refused is halved until the
 * events refused on their own are found: those go to the DLQ with the
 * database's message, everything else is counted. An event is refused in
 * the state its predecessors left (a counter one event short of overflowing
 * takes the first event and refuses the next), as a serial writer would.
 * Parts committed before a transient failure are found again as duplicates
 * when the batch is retried; counted_earlier keeps the metrics right. */

typedef enum { PART_WRITTEN, PART_REFUSED, PART_FAILED } part_outcome;

static part_outcome part_refused(writer *w, event_error *code)
{
    store_error_kind kind = store_last_error(w->db);
    store_rollback(w->db);
    if (kind == STORE_ERROR_TRANSIENT)
        return PART_FAILED;
    *code = kind == STORE_ERROR_OVERFLOW ? EVENT_ERR_COUNTER_OVERFLOW : EVENT_ERR_DATABASE_REJECTED;
    return PART_REFUSED;
}

/* Writes the staged events [start, start + count) in one transaction. */
static part_outcome write_part(collector *c, writer *w, size_t start, size_t count,
                               event_error *code, char *err, size_t err_size)
{
    batch *b = w->batch;
    if (!store_begin(w->db, err, err_size))
        return PART_FAILED;
    PGresult *inserted = store_insert_digests(w->db, b->digests + start * 16, b->week_days + start,
                                              count, err, err_size);
    if (inserted == NULL)
        return part_refused(w, code);
    uint64_t fresh;
    bool fits = batch_count_new(b, inserted, &fresh);
    PQclear(inserted);
    if (!fits || !rollup_render(b->rollup, c->hourly, c->counters)) {
        store_rollback(w->db);
        *code = EVENT_ERR_COUNTER_OVERFLOW;
        snprintf(err, err_size, "counting this event would overflow a total");
        return PART_REFUSED;
    }
    if ((fresh > 0 && !store_add_rollups(w->db, c->hourly, c->counters, err, err_size)) ||
        !store_commit(w->db, err, err_size))
        return part_refused(w, code);
    b->counted_earlier += fresh;
    return PART_WRITTEN;
}

/* Writes [start, start + count), halving refused parts down to single
 * events. Recursion depth is log2 of the batch size (at most 19). */
static part_outcome isolate_range(collector *c, writer *w, size_t start, size_t count,
                                  bool known_refused, char *err, size_t err_size)
{
    event_error code = EVENT_ERR_DATABASE_REJECTED;
    if (!known_refused) {
        part_outcome o = write_part(c, w, start, count, &code, err, err_size);
        if (o != PART_REFUSED)
            return o;
        if (count == 1) {
            flatten_lines(err);
            log_warn("event at partition %d offset %lld refused by the database, sent to the "
                     "DLQ: %s",
                     (int)w->batch->events[start].partition,
                     (long long)w->batch->events[start].offset, err);
            return add_poison(w->batch, start, code, err) ? PART_WRITTEN : PART_FAILED;
        }
    }
    size_t half = count / 2;
    part_outcome o = isolate_range(c, w, start, half, false, err, err_size);
    return o == PART_FAILED ? o
                            : isolate_range(c, w, start + half, count - half, false, err, err_size);
}

static int compare_poisons(const void *a, const void *b)
{
    const poison *x = a, *y = b;
    if (x->partition != y->partition)
        return x->partition < y->partition ? -1 : 1;
    return x->offset < y->offset ? -1 : x->offset > y->offset;
}

/* Reads `count` poison events of one partition (sorted by offset) again
 * with `reader` and queues each for the DLQ. An offset no longer in the log
 * (retention passed it) cannot be sent: it is logged and skipped. */
static bool republish_partition(collector *c, rd_kafka_t *reader, const poison *p, size_t count,
                                char *err, size_t err_size)
{
    rd_kafka_topic_partition_list_t *list = rd_kafka_topic_partition_list_new(1);
    rd_kafka_topic_partition_list_add(list, c->cfg->kafka_topic, p[0].partition)->offset =
        p[0].offset;
    rd_kafka_resp_err_t aerr = rd_kafka_assign(reader, list);
    rd_kafka_topic_partition_list_destroy(list);
    if (aerr != RD_KAFKA_RESP_ERR_NO_ERROR) {
        snprintf(err, err_size, "reading poison events again: %s", rd_kafka_err2str(aerr));
        return false;
    }
    size_t next = 0;
    bool ok = true;
    int64_t deadline = time_now_usec() + 30 * USEC_PER_SEC;
    while (ok && next < count && time_now_usec() < deadline) {
        rd_kafka_message_t *m = rd_kafka_consumer_poll(reader, 100);
        if (m == NULL)
            continue;
        /* Offsets passed over, or the partition's end reached without them:
         * retention removed them. */
        bool at_end = m->err == RD_KAFKA_RESP_ERR__PARTITION_EOF;
        for (; next < count && (at_end || (!m->err && p[next].offset < m->offset)); next++)
            log_error("poison event at partition %d offset %lld is no longer in %s; not sent "
                      "to the DLQ",
                      (int)p[next].partition, (long long)p[next].offset, c->cfg->kafka_topic);
        if (!m->err && next < count && p[next].offset == m->offset) {
            ok = dlq_produce(c, m, p[next].code, p[next].reason, err, err_size);
            next++;
        }
        rd_kafka_message_destroy(m);
    }
    rd_kafka_assign(reader, NULL);
    if (ok && next < count)
        snprintf(err, err_size, "reading poison events again from %s [%d]: timed out",
                 c->cfg->kafka_topic, (int)p[0].partition);
    return ok && next == count;
}

/* The batch no longer holds the poison events' messages (a staged event's
 * message is dropped to keep memory flat), so a consumer of their own reads
 * them again, and each goes to the DLQ unchanged with its reason. */
static bool publish_poisons(collector *c, batch *b, char *err, size_t err_size)
{
    if (b->poison_count == 0)
        return true;
    qsort(b->poisons, b->poison_count, sizeof *b->poisons, compare_poisons);
    rd_kafka_t *reader = make_reader(c, err, err_size);
    if (reader == NULL)
        return false;
    c->dlq_failures = 0;
    bool ok = true;
    for (size_t i = 0, end; ok && i < b->poison_count; i = end) {
        for (end = i;
             end < b->poison_count && b->poisons[end].partition == b->poisons[i].partition;)
            end++;
        ok = republish_partition(c, reader, &b->poisons[i], end - i, err, err_size);
    }
    rd_kafka_consumer_close(reader);
    rd_kafka_destroy(reader);
    return ok && dlq_confirm(c, err, err_size);
}

/* A round of at least this many events whose batches PostgreSQL refuses
 * whole, each event on its own and none for an overflow, is taken for a
 * refusal of everything (a missing event_ids partition, a constraint that
 * no event meets): dead-lettering it would send all traffic to the DLQ in
 * silence, so the batch is kept and retried and /healthz turns red
 * instead. Judged by the round, not the batch: a round's batches split its
 * keys (lanes), so one key's events can fill a batch alone; if another
 * batch of the round, or of a later one, got events in, the refusal is
 * these events' own. (The other writers' transactions have ended by now:
 * write_isolating waits for them.) */
#define REFUSES_ALL_MIN_EVENTS 20

static bool refuses_everything(const collector *c, const writer *w)
{
    const batch *b = w->batch;
    if (w->round_events < REFUSES_ALL_MIN_EVENTS || b->poison_count < b->event_count ||
        c->accepted_round >= w->round)
        return false;
    for (size_t i = 0; i < b->poison_count; i++) {
        if (b->poisons[i].code == EVENT_ERR_COUNTER_OVERFLOW)
            return false; /* an overflow is the events' own */
    }
    return true;
}

/* A refusal that ended while the batch was being written in parts (the
 * constraint dropped, the missing partition created: parts written after
 * it were accepted) leaves good events refused before the end. Each event
 * refused gets one more try on its own, and only those refused twice go to
 * the DLQ. Rare (one transaction per refused event), and it changes
 * nothing for an event at fault: it is refused again. */
static part_outcome second_look(collector *c, writer *w, char *err, size_t err_size)
{
    batch *b = w->batch;
    size_t kept = 0;
    for (size_t i = 0; i < b->poison_count; i++) {
        event_error code = EVENT_ERR_DATABASE_REJECTED;
        part_outcome o = write_part(c, w, b->poisons[i].index, 1, &code, err, err_size);
        if (o == PART_FAILED)
            return o;
        if (o == PART_REFUSED)
            b->poisons[kept++] = b->poisons[i];
    }
    if (kept < b->poison_count)
        log_info("%zu of %zu refused events accepted on a second try (the refusal ended while "
                 "the batch was written in parts)",
                 b->poison_count - kept, b->poison_count);
    b->poison_count = kept;
    return PART_WRITTEN;
}

void write_isolating(collector *c, writer *w, const char *why)
{
    batch *b = w->batch;
    char err[512], reason[512];
    snprintf(reason, sizeof reason, "%s", why);
    flatten_lines(reason);
    log_warn("batch of %zu events refused by the database (%s); writing it in parts to find "
             "the events at fault",
             b->event_count, reason);
    store_disconnect(w->db); /* whatever the pipeline left: start afresh */
    w->sent = false;
    w->rollups_sent = false;
    /* The parts are written synchronously: first let the other writers'
     * transactions end, since a part may wait for one of their rows and
     * they move on only while served. */
    while (writers_busy(c))
        writers_poll(c, 100);
    if (isolate_range(c, w, 0, b->event_count, b->event_count > 1, err, sizeof err) ==
        PART_FAILED) {
        write_failed(c, w, PAUSE_DATABASE, err);
        return;
    }
    if (refuses_everything(c, w)) {
        char systemic[700];
        snprintf(systemic, sizeof systemic,
                 "PostgreSQL refused each of the batch's %zu events on its own (%.400s); "
                 "not dead-lettering a whole batch",
                 b->event_count, b->poisons[0].reason);
        write_failed(c, w, PAUSE_REFUSES_ALL, systemic);
        return;
    }
    if (b->poison_count > 0 && second_look(c, w, err, sizeof err) == PART_FAILED) {
        write_failed(c, w, PAUSE_DATABASE, err);
        return;
    }
    if (!publish_poisons(c, b, err, sizeof err)) {
        write_failed(c, w, PAUSE_POISON_REFETCH, err);
        return;
    }
    log_info("batch written in parts: %zu events sent to the DLQ, %llu counted", b->poison_count,
             (unsigned long long)b->counted_earlier);
    write_done(c, w, 0);
}
