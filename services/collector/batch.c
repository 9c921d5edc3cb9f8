/* A batch: what was consumed since the last one was handed to the writer. */
#include "collector.h"

#include <stdlib.h>
#include <string.h>

#include "digest.h"
#include "period.h"
#include "timeutil.h"
#include "utf8.h"

bool grow_array(void **items, size_t *cap, size_t count, size_t size)
{
    if (count < *cap)
        return true;
    size_t next = *cap ? *cap * 2 : 64;
    void *grown = realloc(*items, next * size);
    if (grown == NULL)
        return false;
    *items = grown;
    *cap = next;
    return true;
}

bool batch_init(batch *b, size_t capacity)
{
    memset(b, 0, sizeof *b);
    b->capacity = capacity;
    b->events = malloc(b->capacity * sizeof *b->events);
    b->digests = malloc(b->capacity * 16);
    b->week_days = malloc(b->capacity * sizeof *b->week_days);
    b->rollup = rollup_new(b->capacity);
    /* The digest index starts small and grows with the batch: clearing it
     * touches all of it, and a writer's batch seldom nears its capacity. */
    return b->events && b->digests && b->week_days && b->rollup &&
           hashindex_init(&b->digest_index, 4096);
}

void batch_clear(batch *b)
{
    for (size_t i = 0; i < b->reject_count; i++)
        rd_kafka_message_destroy(b->rejects[i].message);
    for (size_t i = 0; i < b->unresolved_count; i++)
        rd_kafka_message_destroy(b->unresolved[i].message);
    hashindex_clear(&b->digest_index);
    b->event_count = 0;
    if (b->rollup)
        rollup_clear(b->rollup);
    b->in_batch_duplicates = 0;
    b->poison_count = 0;
    b->counted_earlier = 0;
    b->reject_count = 0;
    b->unresolved_count = 0;
    b->mark_count = 0;
    b->consumed = 0;
    b->first_at = 0;
    b->dlq_done = false;
}

void batch_destroy(batch *b)
{
    batch_clear(b);
    free(b->events);
    free(b->digests);
    free(b->week_days);
    hashindex_free(&b->digest_index);
    rollup_free(b->rollup);
    free(b->rejects);
    free(b->unresolved);
    free(b->poisons);
    free(b->marks);
}

static bool holds_digest(const void *digests, uint32_t index, const void *digest)
{
    return memcmp((const uint8_t *)digests + (size_t)index * 16, digest, 16) == 0;
}

static uint64_t digest_hash(const uint8_t digest[16])
{
    uint64_t h;
    memcpy(&h, digest, sizeof h); /* a SHA-256 prefix is already uniform */
    return h;
}

static uint64_t staged_digest_hash(const void *digests, uint32_t index)
{
    return digest_hash((const uint8_t *)digests + (size_t)index * 16);
}

long batch_find_digest(const batch *b, const uint8_t digest[16])
{
    return hashindex_find(&b->digest_index, digest_hash(digest), holds_digest, b->digests, digest);
}

bool batch_empty(const batch *b)
{
    return b->consumed == 0 && b->mark_count == 0;
}

static bool mark_offset(batch *b, int32_t partition, int64_t offset)
{
    for (size_t i = 0; i < b->mark_count; i++) {
        if (b->marks[i].partition == partition) {
            if (offset + 1 > b->marks[i].next_offset)
                b->marks[i].next_offset = offset + 1;
            return true;
        }
    }
    if (!grow_array((void **)&b->marks, &b->mark_cap, b->mark_count, sizeof *b->marks))
        return false;
    b->marks[b->mark_count++] = (partition_mark){partition, offset + 1};
    return true;
}

/* Copies `text` into dst (dst_size > 0), cut on a character boundary so a
 * header never ends in half a UTF-8 sequence. */
void copy_utf8(char *dst, size_t dst_size, const char *text)
{
    size_t len = strlen(text);
    if (len >= dst_size)
        len = utf8_valid_prefix(text, dst_size - 1);
    memcpy(dst, text, len);
    dst[len] = '\0';
}

/* A database message (ERROR, then DETAIL and HINT lines) as one line: a
 * header value, and one log line. */
void flatten_lines(char *text)
{
    for (char *p = text; *p; p++) {
        if (*p == '\n' || *p == '\r' || *p == '\t')
            *p = ' ';
    }
}

bool add_reject(batch *b, rd_kafka_message_t *message, event_error code, const char *reason)
{
    if (!grow_array((void **)&b->rejects, &b->reject_cap, b->reject_count, sizeof *b->rejects))
        return false;
    reject *r = &b->rejects[b->reject_count++];
    r->message = message;
    r->code = code;
    copy_utf8(r->reason, sizeof r->reason, reason);
    b->dlq_done = false;
    return true;
}

/* stage_event once the event's digest is in its place in b->digests (the
 * next free one). */
static bool stage_digested(batch *b, const usage_event *ev, const char *plan_id,
                           const rd_kafka_message_t *message)
{
    const uint8_t *digest = b->digests + b->event_count * 16;
    if (batch_find_digest(b, digest) >= 0) {
        b->in_batch_duplicates++;
        return true;
    }
    /* Where an event's value for each rollup dimension comes from. */
    const char *dimensions[ROLLUP_TEXT_DIMENSION_COUNT] = {
        [ROLLUP_DIM_KEY] = ev->subject,
        [ROLLUP_DIM_PLAN] = plan_id,
        [ROLLUP_DIM_METHOD] = ev->method,
        [ROLLUP_DIM_ENDPOINT] = ev->endpoint,
    };
    long group = rollup_group(b->rollup, dimensions, ev->time_usec);
    if (group < 0 ||
        (hashindex_full(&b->digest_index) &&
         !hashindex_grow(&b->digest_index, staged_digest_hash, b->digests)) ||
        !hashindex_add(&b->digest_index, digest_hash(digest), (uint32_t)b->event_count))
        return false;
    b->week_days[b->event_count] =
        (int32_t)(period_start(PERIOD_WEEK, ev->time_usec) / USEC_PER_DAY);
    b->events[b->event_count] =
        (staged_event){(int32_t)group, message->partition, message->offset, ev->units, ev->bytes};
    b->event_count++;
    return true;
}

/* Adds a valid event with a known key, unless its (source, id) is already
 * in the batch. False when the batch's bounds are exceeded. */
bool stage_event(batch *b, const usage_event *ev, const char *plan_id,
                 const rd_kafka_message_t *message)
{
    if (b->event_count >= b->capacity)
        return false;
    digest_event(ev->source, ev->id, b->digests + b->event_count * 16);
    return stage_digested(b, ev, plan_id, message);
}

/* Whether another lane's batch of the round holds this digest: the same
 * (source, id) sent again under another key. The copy consumed first is
 * the one counted, as within one batch, whatever the keys' lanes. */
static bool held_by_another_lane(const collector *c, const batch *b, const uint8_t digest[16])
{
    for (int i = 0; i < c->lane_count; i++) {
        if (c->filling[i] != b && batch_find_digest(c->filling[i], digest) >= 0)
            return true;
    }
    return false;
}

/* The lane of a key id: the same key always takes the same lane. */
static int lane_of(const collector *c, const char *key_id)
{
    return (int)(digest_fnv1a(key_id, strlen(key_id)) % (uint64_t)c->lane_count);
}

/* Takes ownership of `message`. False only when memory or the batch's bounds
 * run out (the caller then stops without acknowledging anything). */
bool batch_add(collector *c, rd_kafka_message_t *message)
{
    batch *head = c->filling[0]; /* the round's offsets and age */
    if (!mark_offset(head, message->partition, message->offset))
        return false;
    c->limits.now_usec = time_now_usec();
    if (head->first_at == 0)
        head->first_at = c->limits.now_usec;
    usage_event ev;
    char reason[200];
    event_error err =
        event_parse(message->payload, message->len, &c->limits, &ev, reason, sizeof reason);
    if (err != EVENT_OK) {
        head->consumed++;
        return add_reject(head, message, err, reason);
    }
    batch *b = c->filling[lane_of(c, ev.subject)];
    b->consumed++;
    const char *plan_id = keyplans_lookup(c->keys, ev.subject);
    if (plan_id == NULL) {
        if (!grow_array((void **)&b->unresolved, &b->unresolved_cap, b->unresolved_count,
                        sizeof *b->unresolved))
            return false;
        b->unresolved[b->unresolved_count++] = (unresolved){message, ev};
        return true;
    }
    if (b->event_count >= b->capacity)
        return false; /* the message stays the caller's */
    uint8_t *digest = b->digests + b->event_count * 16;
    digest_event(ev.source, ev.id, digest);
    if (held_by_another_lane(c, b, digest))
        b->in_batch_duplicates++;
    else if (!stage_digested(b, &ev, plan_id, message))
        return false;
    rd_kafka_message_destroy(message);
    return true;
}

bool add_poison(batch *b, size_t index, event_error code, const char *reason)
{
    if (!grow_array((void **)&b->poisons, &b->poison_cap, b->poison_count, sizeof *b->poisons))
        return false;
    poison *p = &b->poisons[b->poison_count++];
    p->index = index;
    p->partition = b->events[index].partition;
    p->offset = b->events[index].offset;
    p->code = code;
    copy_utf8(p->reason, sizeof p->reason, reason);
    flatten_lines(p->reason);
    return true;
}

/* An event's contribution to each rollup measure (rollupcols.h). */
static void event_measures(const staged_event *ev, int64_t out[ROLLUP_MEASURE_COUNT])
{
    out[ROLLUP_MEASURE_REQUESTS] = 1;
    out[ROLLUP_MEASURE_UNITS] = ev->units;
    out[ROLLUP_MEASURE_BYTES] = ev->bytes;
}

bool batch_count_new(batch *b, const PGresult *inserted, uint64_t *fresh)
{
    rollup_reset_counts(b->rollup); /* a retried batch starts from zero again */
    *fresh = 0;
    for (int i = 0; i < PQntuples(inserted); i++) {
        if (PQgetlength(inserted, i, 0) != 16)
            continue;
        long index = batch_find_digest(b, (const uint8_t *)PQgetvalue(inserted, i, 0));
        if (index < 0)
            continue; /* cannot happen: the database only returns what we sent */
        int64_t measures[ROLLUP_MEASURE_COUNT];
        event_measures(&b->events[index], measures);
        if (!rollup_add(b->rollup, b->events[index].group, measures))
            return false;
        (*fresh)++;
    }
    return true;
}
