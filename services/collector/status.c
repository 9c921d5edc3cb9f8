/* The collector's status row (status.h). */
#include "status.h"

#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "timeutil.h"

/* The rate is events counted over at least this long a window of commits. */
#define RATE_WINDOW_USEC (10 * USEC_PER_SEC)

const char status_upsert_sql[] =
    "INSERT INTO collector_status AS s (instance, kafka_group, started_at, last_commit_at, "
    "events_counted, events_per_second, lag_messages, dlq_by_code) "
    "VALUES ($1, $2, to_timestamp($3::bigint / 1000000.0), now(), $4::bigint, $5::float8, "
    "$6::bigint, $7::jsonb) ON CONFLICT (instance) DO UPDATE SET "
    "kafka_group = EXCLUDED.kafka_group, last_commit_at = EXCLUDED.last_commit_at, "
    "events_counted = EXCLUDED.events_counted, events_per_second = EXCLUDED.events_per_second, "
    "lag_messages = EXCLUDED.lag_messages, dlq_by_code = EXCLUDED.dlq_by_code";

static struct {
    char instance[300];
    const char *group;
    int64_t started_at;
    uint64_t counted;                   /* committed since the start */
    uint64_t dead_letters[EVENT_ERR__COUNT];
    int64_t window_start;               /* the rate's window */
    uint64_t window_counted;
    double rate;
    /* The values of the last status_values call. */
    char text[5][32];
    char dlq_json[EVENT_ERR__COUNT * 48 + 8];
    const char *values[STATUS_PARAMS];
} status;

void status_init(const char *kafka_group)
{
    char host[256] = "unknown";
    gethostname(host, sizeof host - 1);
    host[sizeof host - 1] = '\0';
    snprintf(status.instance, sizeof status.instance, "%s:%ld", host, (long)getpid());
    status.group = kafka_group;
    status.started_at = time_now_usec();
    status.window_start = status.started_at;
}

/* A batch's dead letters, by code, added to `counts`. */
static void add_dead_letters(const batch *b, uint64_t counts[EVENT_ERR__COUNT])
{
    for (size_t i = 0; i < b->reject_count; i++)
        counts[b->rejects[i].code]++;
    for (size_t i = 0; i < b->poison_count; i++)
        counts[b->poisons[i].code]++;
}

/* {"code": n, ...} of the non-zero counts into status.dlq_json. */
static void render_dead_letters(const uint64_t counts[EVENT_ERR__COUNT])
{
    size_t len = 0, size = sizeof status.dlq_json;
    len += (size_t)snprintf(status.dlq_json, size, "{");
    for (int e = 0; e < EVENT_ERR__COUNT; e++) {
        if (counts[e] == 0 || len >= size)
            continue;
        len += (size_t)snprintf(status.dlq_json + len, size - len, "%s\"%s\":%llu",
                                len > 1 ? "," : "", event_error_code((event_error)e),
                                (unsigned long long)counts[e]);
    }
    if (len < size)
        snprintf(status.dlq_json + len, size - len, "}");
}

const char *const *status_values(collector *c, const batch *b, uint64_t counting)
{
    int64_t now = time_now_usec();
    uint64_t counts[EVENT_ERR__COUNT];
    memcpy(counts, status.dead_letters, sizeof counts);
    add_dead_letters(b, counts);
    render_dead_letters(counts);
    double rate = status.rate;
    int64_t elapsed = now - status.window_start;
    if (elapsed >= RATE_WINDOW_USEC)
        rate = (double)(status.window_counted + counting) * (double)USEC_PER_SEC / (double)elapsed;
    double lag = metrics_gauge_value(c->m.lag);
    snprintf(status.text[0], sizeof status.text[0], "%lld", (long long)status.started_at);
    snprintf(status.text[1], sizeof status.text[1], "%llu",
             (unsigned long long)(status.counted + counting));
    snprintf(status.text[2], sizeof status.text[2], "%.3f", rate);
    snprintf(status.text[3], sizeof status.text[3], "%.0f", lag);
    status.values[0] = status.instance;
    status.values[1] = status.group;
    status.values[2] = status.text[0];
    status.values[3] = status.text[1];
    status.values[4] = status.text[2];
    status.values[5] = lag >= 0 ? status.text[3] : NULL;
    status.values[6] = status.dlq_json;
    return status.values;
}

void status_committed(const batch *b, uint64_t counted)
{
    add_dead_letters(b, status.dead_letters);
    status.counted += counted;
    status.window_counted += counted;
    int64_t now = time_now_usec(), elapsed = now - status.window_start;
    if (elapsed >= RATE_WINDOW_USEC) {
        status.rate = (double)status.window_counted * (double)USEC_PER_SEC / (double)elapsed;
        status.window_start = now;
        status.window_counted = 0;
    }
}
