/* Unit tests for services/collector/writer: which events a batch records
 * when other writers hold uncommitted batches (leave_to_earlier_batches);
 * and the batch's digest index, which grows as events are staged. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "collector.h"
#include "suites.h"
#include "timeutil.h"

#define DAY_2026_11_23 1795392000LL /* a Monday, 00:00 UTC */

static void stage(batch *b, const char *id, int64_t time_s)
{
    usage_event ev;
    memset(&ev, 0, sizeof ev);
    snprintf(ev.source, sizeof ev.source, "unit");
    snprintf(ev.id, sizeof ev.id, "%s", id);
    snprintf(ev.subject, sizeof ev.subject, "key_a");
    ev.time_usec = time_s * USEC_PER_SEC;
    ev.units = 1;
    rd_kafka_message_t message;
    memset(&message, 0, sizeof message);
    ck_assert(stage_event(b, &ev, "plan", &message));
}

/* Two writers: writer 0 holds batch 0 (seq 0), writer 1 batch 1 (seq 1). */
typedef struct {
    collector c;
    batch b0, b1;
} two_writers;

static void two_writers_init(two_writers *t)
{
    memset(t, 0, sizeof *t);
    ck_assert(batch_init(&t->b0, 16) && batch_init(&t->b1, 16));
    t->c.writer_count = 2;
    t->c.writers[0] = (writer){.index = 0, .batch = &t->b0, .seq = 0};
    t->c.writers[1] = (writer){.index = 1, .batch = &t->b1, .seq = 1};
}

static void two_writers_free(two_writers *t)
{
    batch_destroy(&t->b0);
    batch_destroy(&t->b1);
    for (int i = 0; i < 2; i++) {
        free(t->c.writers[i].own_digests);
        free(t->c.writers[i].own_week_days);
    }
}

/* An event both batches hold is recorded by the earlier batch only, and
 * the earlier batch, retried, still records it (it must never leave it to
 * the later batch, which left it to the earlier one: that would lose it). */
START_TEST(shared_event_goes_to_the_earlier_batch_even_on_retry)
{
    two_writers t;
    two_writers_init(&t);
    int64_t now = DAY_2026_11_23 + 3600;
    stage(&t.b0, "e", now);
    stage(&t.b0, "f", now);
    stage(&t.b1, "e", now); /* a re-send of e */
    stage(&t.b1, "g", now);

    ck_assert(leave_to_earlier_batches(&t.c, &t.c.writers[1]));
    ck_assert_uint_eq(t.c.writers[1].digest_count, 1); /* g only */
    ck_assert(memcmp(t.c.writers[1].digests, t.b1.digests + 16, 16) == 0);

    ck_assert(leave_to_earlier_batches(&t.c, &t.c.writers[0])); /* a retry of batch 0 */
    ck_assert_uint_eq(t.c.writers[0].digest_count, 2);           /* e and f */
    ck_assert_ptr_eq(t.c.writers[0].digests, t.b0.digests);
    two_writers_free(&t);
}
END_TEST

/* The same (source, id) in another event week is another event_ids record:
 * each batch records its own. */
START_TEST(another_week_is_another_event)
{
    two_writers t;
    two_writers_init(&t);
    stage(&t.b0, "e", DAY_2026_11_23 + 3600);
    stage(&t.b1, "e", DAY_2026_11_23 + 8 * 86400); /* the next week */
    ck_assert(leave_to_earlier_batches(&t.c, &t.c.writers[1]));
    ck_assert_uint_eq(t.c.writers[1].digest_count, 1);
    two_writers_free(&t);
}
END_TEST

/* With no other batch held, a batch records all its events. */
START_TEST(alone_records_everything)
{
    two_writers t;
    two_writers_init(&t);
    stage(&t.b1, "e", DAY_2026_11_23 + 3600);
    stage(&t.b1, "f", DAY_2026_11_23 + 3600);
    t.c.writers[0].batch = NULL; /* batch 0 committed */
    ck_assert(leave_to_earlier_batches(&t.c, &t.c.writers[1]));
    ck_assert_uint_eq(t.c.writers[1].digest_count, 2);
    two_writers_free(&t);
}
END_TEST

/* A batch's digest index starts small (batch.c): past several growths
 * every staged event is still found, and a re-send is still caught. */
START_TEST(digest_index_grows_with_the_batch)
{
    batch b;
    ck_assert(batch_init(&b, 30000));
    char id[16];
    for (int i = 0; i < 20000; i++) {
        snprintf(id, sizeof id, "e%d", i);
        stage(&b, id, DAY_2026_11_23 + 3600);
    }
    ck_assert_uint_eq(b.event_count, 20000);
    stage(&b, "e12345", DAY_2026_11_23 + 3600); /* a re-send */
    ck_assert_uint_eq(b.event_count, 20000);
    ck_assert_uint_eq(b.in_batch_duplicates, 1);
    for (size_t i = 0; i < b.event_count; i++)
        ck_assert_int_eq(batch_find_digest(&b, b.digests + i * 16), (long)i);
    batch_clear(&b);
    stage(&b, "e1", DAY_2026_11_23 + 3600); /* a new batch: not a duplicate */
    ck_assert_uint_eq(b.event_count, 1);
    ck_assert_uint_eq(b.in_batch_duplicates, 0);
    batch_destroy(&b);
}
END_TEST

Suite *writer_suite(void)
{
    Suite *s = suite_create("collector_writer");
    TCase *tc = tcase_create("leave_to_earlier_batches");
    tcase_add_test(tc, shared_event_goes_to_the_earlier_batch_even_on_retry);
    tcase_add_test(tc, another_week_is_another_event);
    tcase_add_test(tc, alone_records_everything);
    suite_add_tcase(s, tc);
    TCase *index = tcase_create("digest_index");
    tcase_add_test(index, digest_index_grows_with_the_batch);
    suite_add_tcase(s, index);
    return s;
}
