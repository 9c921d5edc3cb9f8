/* Unit tests for services/collector/offsets: Kafka offsets are committed in
 * consumption order, whatever order the writers' batches commit in. */
#include <string.h>

#include "collector.h"
#include "suites.h"

static collector_config config = {.kafka_topic = "usage-events"};

static void collector_reset(collector *c)
{
    memset(c, 0, sizeof *c);
    c->cfg = &config;
}

/* A batch whose offsets to commit are `marks`. */
static void batch_marking(batch *b, partition_mark *marks, size_t count)
{
    memset(b, 0, sizeof *b);
    b->marks = marks;
    b->mark_count = count;
}

static int64_t offset_of(const rd_kafka_topic_partition_list_t *list, int32_t partition)
{
    const rd_kafka_topic_partition_t *p =
        rd_kafka_topic_partition_list_find(list, "usage-events", partition);
    return p ? p->offset : -1;
}

/* Batch 1 commits before batch 0: nothing may be committed until batch 0
 * is written too, then both at once, batch 1's offsets winning. */
START_TEST(later_batch_waits_for_the_earlier)
{
    collector c;
    collector_reset(&c);
    c.next_seq = 2; /* batches 0 and 1 handed over */
    partition_mark first[] = {{0, 100}, {1, 50}}, second[] = {{0, 180}, {2, 7}};
    batch b0, b1;
    batch_marking(&b0, first, 2);
    batch_marking(&b1, second, 2);

    offsets_record(&c, 1, &b1);
    ck_assert_ptr_null(offsets_take_ready(&c));
    ck_assert_uint_eq(c.acked_seq, 0);

    offsets_record(&c, 0, &b0);
    rd_kafka_topic_partition_list_t *ready = offsets_take_ready(&c);
    ck_assert_ptr_nonnull(ready);
    ck_assert_int_eq(ready->cnt, 3);
    ck_assert_int_eq(offset_of(ready, 0), 180);
    ck_assert_int_eq(offset_of(ready, 1), 50);
    ck_assert_int_eq(offset_of(ready, 2), 7);
    ck_assert_uint_eq(c.acked_seq, 2);
    rd_kafka_topic_partition_list_destroy(ready);
    ck_assert_ptr_null(offsets_take_ready(&c)); /* nothing left */
    offsets_free(&c);
}
END_TEST

/* In order, each batch's offsets are ready at once; a gap stops the
 * prefix there, and the room for more batches is bounded. */
START_TEST(in_order_and_gap)
{
    collector c;
    collector_reset(&c);
    partition_mark m0[] = {{3, 10}}, m1[] = {{3, 20}}, m3[] = {{3, 40}};
    batch b0, b1, b3;
    batch_marking(&b0, m0, 1);
    batch_marking(&b1, m1, 1);
    batch_marking(&b3, m3, 1);
    c.next_seq = 4;

    offsets_record(&c, 0, &b0);
    rd_kafka_topic_partition_list_t *ready = offsets_take_ready(&c);
    ck_assert_int_eq(offset_of(ready, 3), 10);
    rd_kafka_topic_partition_list_destroy(ready);

    offsets_record(&c, 3, &b3); /* batch 2 still being written */
    offsets_record(&c, 1, &b1);
    ready = offsets_take_ready(&c);
    ck_assert_int_eq(offset_of(ready, 3), 20); /* not 40: batch 2 is not in */
    ck_assert_uint_eq(c.acked_seq, 2);
    rd_kafka_topic_partition_list_destroy(ready);

    c.next_seq = c.acked_seq + ACKS_MAX;
    ck_assert(!offsets_room(&c, 1));
    c.next_seq = c.acked_seq + ACKS_MAX - 1; /* room for one more, not a round of two */
    ck_assert(offsets_room(&c, 1));
    ck_assert(!offsets_room(&c, 2));
    c.next_seq = 4;
    ck_assert(offsets_room(&c, 1));
    offsets_free(&c);
}
END_TEST

Suite *offsets_suite(void)
{
    Suite *s = suite_create("collector_offsets");
    TCase *tc = tcase_create("offsets");
    tcase_add_test(tc, later_batch_waits_for_the_earlier);
    tcase_add_test(tc, in_order_and_gap);
    suite_add_tcase(s, tc);
    return s;
}
