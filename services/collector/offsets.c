/* Kafka offsets, committed in consumption order. Writers commit their
 * batches to the database in whatever order the database finishes them;
 * committing a later batch's offsets first would acknowledge an earlier
 * batch still unwritten, which a crash would then lose. So each batch's
 * offsets wait here until every batch handed over before it is written. */
#include "collector.h"

#include <stdlib.h>
#include <string.h>

#include "log.h"

/* Sets (or adds) each mark's partition in `list`: later batches come later,
 * so their offsets replace earlier ones. */
static void merge_marks(rd_kafka_topic_partition_list_t *list, const char *topic,
                        const partition_mark *marks, size_t count)
{
    for (size_t i = 0; i < count; i++) {
        rd_kafka_topic_partition_t *p =
            rd_kafka_topic_partition_list_find(list, topic, marks[i].partition);
        if (p == NULL)
            p = rd_kafka_topic_partition_list_add(list, topic, marks[i].partition);
        p->offset = marks[i].next_offset;
    }
}

/* Keeps only the partitions this instance still owns: a revoked one's new
 * owner commits its own offsets. */
static rd_kafka_topic_partition_list_t *owned_only(collector *c,
                                                   const rd_kafka_topic_partition_list_t *all)
{
    rd_kafka_topic_partition_list_t *owned = NULL;
    if (rd_kafka_assignment(c->consumer, &owned) != RD_KAFKA_RESP_ERR_NO_ERROR)
        return NULL;
    rd_kafka_topic_partition_list_t *kept = rd_kafka_topic_partition_list_new(all->cnt);
    for (int i = 0; i < all->cnt; i++) {
        const rd_kafka_topic_partition_t *p = &all->elems[i];
        if (rd_kafka_topic_partition_list_find(owned, p->topic, p->partition))
            rd_kafka_topic_partition_list_add(kept, p->topic, p->partition)->offset = p->offset;
    }
    rd_kafka_topic_partition_list_destroy(owned);
    return kept;
}

/* A failed commit is only logged: the database already holds the batches,
 * so a replay from an older offset is deduplicated. */
static void commit_list(collector *c, const rd_kafka_topic_partition_list_t *merged)
{
    rd_kafka_topic_partition_list_t *offsets = owned_only(c, merged);
    if (offsets == NULL)
        return;
    if (offsets->cnt > 0) {
        rd_kafka_resp_err_t cerr =
            rd_kafka_commit(c->consumer, offsets, c->synchronous_commit ? 0 : 1);
        if (cerr != RD_KAFKA_RESP_ERR_NO_ERROR)
            log_warn("committing Kafka offsets: %s (the batch is in the database; a replay is "
                     "deduplicated)",
                     rd_kafka_err2str(cerr));
    }
    rd_kafka_topic_partition_list_destroy(offsets);
}

bool offsets_room(const collector *c, int batches)
{
    return c->next_seq - c->acked_seq + (uint64_t)batches <= ACKS_MAX;
}

void offsets_record(collector *c, uint64_t seq, const batch *b)
{
    pending_ack *a = &c->acks[seq % ACKS_MAX];
    a->count = 0;
    if (b->mark_count > a->cap) {
        partition_mark *grown = realloc(a->marks, b->mark_count * sizeof *grown);
        if (grown != NULL) {
            a->marks = grown;
            a->cap = b->mark_count;
        }
    }
    if (b->mark_count <= a->cap) {
        /* None in a round's batches but its last (lane 0's), which carries
         * the round's offsets; memcpy must not see their NULL array. */
        if (b->mark_count > 0)
            memcpy(a->marks, b->marks, b->mark_count * sizeof *b->marks);
        a->count = b->mark_count;
    } else {
        /* Committing less is always safe: a later batch's offsets (or a
         * replay, deduplicated) cover these partitions. */
        log_warn("out of memory keeping a batch's offsets; they are committed with a later one");
    }
    a->written = true;
}

rd_kafka_topic_partition_list_t *offsets_take_ready(collector *c)
{
    if (c->acked_seq == c->next_seq || !c->acks[c->acked_seq % ACKS_MAX].written)
        return NULL; /* the oldest batch is still being written */
    rd_kafka_topic_partition_list_t *merged = rd_kafka_topic_partition_list_new(16);
    for (; c->acked_seq < c->next_seq; c->acked_seq++) {
        pending_ack *ready = &c->acks[c->acked_seq % ACKS_MAX];
        if (!ready->written)
            break;
        merge_marks(merged, c->cfg->kafka_topic, ready->marks, ready->count);
        ready->written = false;
    }
    return merged;
}

void offsets_written(collector *c, uint64_t seq, const batch *b)
{
    offsets_record(c, seq, b);
    rd_kafka_topic_partition_list_t *ready = offsets_take_ready(c);
    if (ready != NULL) {
        commit_list(c, ready);
        rd_kafka_topic_partition_list_destroy(ready);
    }
}

void offsets_free(collector *c)
{
    for (int i = 0; i < ACKS_MAX; i++)
        free(c->acks[i].marks);
}
