/* The webhook outbox's SQL: claim, record, count. */
#include "hookbox.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "buf.h"
#include "db.h"
#include "reporterdb.h"

void hookbox_delivery_free(hookbox_delivery *d)
{
    if (d == NULL)
        return;
    if (d->secret)
        explicit_bzero(d->secret, strlen(d->secret));
    if (d->previous_secret)
        explicit_bzero(d->previous_secret, strlen(d->previous_secret));
    free(d->strings);
    free(d);
}

bool hookbox_try_lock(PGconn *db, bool *held, char *err, size_t err_size)
{
    PGresult *res =
        reporterdb_run(db, "SELECT pg_try_advisory_lock(hashtext('tally-webhooks'))", 0, NULL,
                       PGRES_TUPLES_OK, "taking the webhook sender lock", err, err_size);
    if (res == NULL)
        return false;
    *held = strcmp(PQgetvalue(res, 0, 0), "t") == 0;
    PQclear(res);
    return true;
}

#define RFC3339(column) "to_char(" column " AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')"

/* The claim's columns, in this order. */
enum {
    COL_ALERT_ID, COL_ENDPOINT_ID, COL_ATTEMPTS, COL_URL, COL_SECRET, COL_PREVIOUS_SECRET,
    COL_EVENT_ID, COL_TYPE, COL_CREATED, COL_KEY_ID, COL_CUSTOMER_ID, COL_PLAN_ID, COL_PERIOD,
    COL_PERIOD_START, COL_PERIOD_END, COL_THRESHOLD, COL_LIMIT, COL_USED, COL_ENFORCEMENT,
    COL_COUNT
};

/* $1 busy endpoint ids (text[], one per attempt in flight), $2 per-endpoint
 * bound, $3 limit, $4 lease in ms. The window counts each endpoint's due
 * rows so that no endpoint takes more than its share of a claim; the
 * advisory lock makes this process the only claimer. */
static const char claim_sql[] =
    "WITH busy AS (SELECT b AS endpoint_id, count(*) AS n FROM unnest($1::text[]) AS b "
    "              GROUP BY b), "
    "due AS (SELECT d.alert_id, d.endpoint_id, d.next_attempt_at, "
    "               row_number() OVER (PARTITION BY d.endpoint_id "
    "                                  ORDER BY d.next_attempt_at, d.alert_id) AS rank "
    "          FROM webhook_deliveries d JOIN webhook_endpoints e ON e.id = d.endpoint_id "
    "         WHERE d.status = 'pending' AND d.next_attempt_at <= now() AND e.enabled), "
    "chosen AS (SELECT due.alert_id, due.endpoint_id FROM due LEFT JOIN busy USING (endpoint_id) "
    "            WHERE due.rank <= $2::int - coalesce(busy.n, 0) "
    "            ORDER BY due.next_attempt_at, due.alert_id LIMIT $3::int) "
    "UPDATE webhook_deliveries w "
    "   SET next_attempt_at = now() + make_interval(secs => $4::float8 / 1000) "
    "  FROM chosen, quota_alerts a, webhook_endpoints e "
    " WHERE w.alert_id = chosen.alert_id AND w.endpoint_id = chosen.endpoint_id "
    "   AND a.id = w.alert_id AND e.id = w.endpoint_id "
    "RETURNING w.alert_id, w.endpoint_id, w.attempts, e.url, e.secret, "
    "   CASE WHEN e.previous_secret_expires_at > now() THEN e.previous_secret END, "
    "   a.event_id, a.type, extract(epoch from a.created_at)::bigint, a.key_id, a.customer_id, "
    "   a.plan_id, a.period, " RFC3339("a.period_start") ", " RFC3339("a.period_end") ", "
    "   a.threshold, a.quota_limit, a.used, a.enforcement";

/* A copy of the row's text fields in one allocation; the alert points into it. */
static hookbox_delivery *delivery_from_row(const PGresult *res, int row)
{
    static const int text_columns[] = {COL_URL,      COL_SECRET,       COL_PREVIOUS_SECRET,
                                       COL_EVENT_ID, COL_TYPE,         COL_KEY_ID,
                                       COL_CUSTOMER_ID, COL_PLAN_ID,   COL_PERIOD,
                                       COL_PERIOD_START, COL_PERIOD_END, COL_ENFORCEMENT};
    enum { TEXTS = sizeof text_columns / sizeof text_columns[0] };
    size_t total = 0;
    for (size_t i = 0; i < TEXTS; i++)
        total += (size_t)PQgetlength(res, row, text_columns[i]) + 1;
    hookbox_delivery *d = calloc(1, sizeof *d);
    char *strings = malloc(total);
    if (d == NULL || strings == NULL) {
        free(d);
        free(strings);
        return NULL;
    }
    char *texts[COL_COUNT] = {0};
    char *p = strings;
    for (size_t i = 0; i < TEXTS; i++) {
        int col = text_columns[i];
        if (PQgetisnull(res, row, col))
            continue;
        size_t n = (size_t)PQgetlength(res, row, col);
        memcpy(p, PQgetvalue(res, row, col), n + 1);
        texts[col] = p;
        p += n + 1;
    }
    d->strings = strings;
    d->alert_id = strtoll(PQgetvalue(res, row, COL_ALERT_ID), NULL, 10);
    snprintf(d->endpoint_id, sizeof d->endpoint_id, "%s", PQgetvalue(res, row, COL_ENDPOINT_ID));
    d->attempts = (int)strtol(PQgetvalue(res, row, COL_ATTEMPTS), NULL, 10);
    d->url = texts[COL_URL];
    d->secret = texts[COL_SECRET];
    d->previous_secret = texts[COL_PREVIOUS_SECRET];
    d->alert = (hookwire_alert){
        .event_id = texts[COL_EVENT_ID],
        .type = texts[COL_TYPE],
        .created = strtoll(PQgetvalue(res, row, COL_CREATED), NULL, 10),
        .key_id = texts[COL_KEY_ID],
        .customer_id = texts[COL_CUSTOMER_ID],
        .plan_id = texts[COL_PLAN_ID],
        .period = texts[COL_PERIOD],
        .period_start = texts[COL_PERIOD_START],
        .period_end = texts[COL_PERIOD_END],
        .threshold = (int)strtol(PQgetvalue(res, row, COL_THRESHOLD), NULL, 10),
        .limit = strtoll(PQgetvalue(res, row, COL_LIMIT), NULL, 10),
        .used = strtoll(PQgetvalue(res, row, COL_USED), NULL, 10),
        .enforcement = texts[COL_ENFORCEMENT],
    };
    return d;
}

bool hookbox_claim(PGconn *db, const char *const *busy, size_t busy_count, int per_endpoint,
                   int limit, int64_t lease_ms, void (*take)(void *ctx, hookbox_delivery *d),
                   void *ctx, int *claimed, char *err, size_t err_size)
{
    buf busy_text;
    /* Endpoint ids are at most 128 characters, each escaped at worst twice over. */
    buf_init(&busy_text, 16 + busy_count * (2 * HOOKBOX_ID_MAX + 4));
    if (!db_append_text_array(&busy_text, busy, busy_count)) {
        buf_free(&busy_text);
        snprintf(err, err_size, "claiming webhook deliveries: the busy list does not fit");
        return false;
    }
    char per[16], lim[16], lease[24];
    snprintf(per, sizeof per, "%d", per_endpoint);
    snprintf(lim, sizeof lim, "%d", limit);
    snprintf(lease, sizeof lease, "%lld", (long long)lease_ms);
    const char *params[] = {busy_text.data ? busy_text.data : "{}", per, lim, lease};
    PGresult *res = reporterdb_run(db, claim_sql, 4, params, PGRES_TUPLES_OK,
                                   "claiming webhook deliveries", err, err_size);
    buf_free(&busy_text);
    if (res == NULL)
        return false;
    int rows = PQntuples(res);
    *claimed = 0;
    for (int i = 0; i < rows; i++) {
        hookbox_delivery *d = delivery_from_row(res, i);
        if (d == NULL) {
            /* Out of memory: the claim's lease brings the rest back later. */
            snprintf(err, err_size, "claiming webhook deliveries: out of memory");
            PQclear(res);
            return false;
        }
        take(ctx, d);
        (*claimed)++;
    }
    PQclear(res);
    return true;
}

static const char *const status_names[] = {
    [HOOKBOX_PENDING] = "pending", [HOOKBOX_DELIVERED] = "delivered", [HOOKBOX_PARKED] = "parked"};

/* One attempt row, and the delivery's state while it is still pending. The
 * attempt is logged only while its endpoint exists (deleted endpoints take
 * their rows with them). */
static const char record_sql[] =
    "WITH attempt AS ("
    "  INSERT INTO webhook_attempts (alert_id, endpoint_id, attempted_at, http_status, error, "
    "                                duration_ms) "
    "  SELECT $1::bigint, $2, to_timestamp($3::float8 / 1e6), $4::int, $5, $6::int "
    "   WHERE EXISTS (SELECT 1 FROM webhook_endpoints WHERE id = $2)) "
    "UPDATE webhook_deliveries SET status = $7, attempts = attempts + 1, "
    "       next_attempt_at = CASE WHEN $7 = 'pending' "
    "            THEN now() + make_interval(secs => $8::float8 / 1000) "
    "            ELSE next_attempt_at END, "
    "       last_attempt_at = to_timestamp($3::float8 / 1e6), last_http_status = $4::int, "
    "       last_error = $5, delivered_at = CASE WHEN $7 = 'delivered' THEN now() END "
    " WHERE alert_id = $1::bigint AND endpoint_id = $2 AND status = 'pending'";

static bool record_one(PGconn *db, const hookbox_outcome *o, char *err, size_t err_size)
{
    char alert[24], at[24], status[16], duration[16], delay[24];
    snprintf(alert, sizeof alert, "%lld", (long long)o->alert_id);
    snprintf(at, sizeof at, "%lld", (long long)o->attempted_usec);
    snprintf(status, sizeof status, "%ld", o->http_status);
    snprintf(duration, sizeof duration, "%d", o->duration_ms);
    snprintf(delay, sizeof delay, "%lld", (long long)o->next_delay_ms);
    const char *params[] = {alert,
                            o->endpoint_id,
                            at,
                            o->http_status ? status : NULL,
                            o->error,
                            duration,
                            status_names[o->status],
                            delay};
    PGresult *res = reporterdb_run(db, record_sql, 8, params, PGRES_COMMAND_OK,
                                   "recording a webhook attempt", err, err_size);
    if (res == NULL)
        return false;
    PQclear(res);
    return true;
}

bool hookbox_record(PGconn *db, const hookbox_outcome *outcomes, size_t count, char *err,
                    size_t err_size)
{
    if (count == 0)
        return true;
    if (count == 1)
        return record_one(db, outcomes, err, err_size); /* one statement: its own transaction */
    if (!db_exec(db, "BEGIN", "recording webhook attempts", err, err_size))
        return false;
    for (size_t i = 0; i < count; i++)
        if (!record_one(db, &outcomes[i], err, err_size)) {
            PQclear(PQexec(db, "ROLLBACK"));
            return false;
        }
    return db_exec(db, "COMMIT", "committing webhook attempts", err, err_size);
}

bool hookbox_stats_read(PGconn *db, hookbox_stats *out, char *err, size_t err_size)
{
    PGresult *res =
        reporterdb_run(db,
                       "SELECT count(*) FILTER (WHERE status = 'pending'), "
                       "       count(*) FILTER (WHERE status = 'parked') "
                       "  FROM webhook_deliveries WHERE status <> 'delivered'",
                       0, NULL, PGRES_TUPLES_OK, "counting webhook deliveries", err, err_size);
    if (res == NULL)
        return false;
    out->pending = strtoll(PQgetvalue(res, 0, 0), NULL, 10);
    out->parked = strtoll(PQgetvalue(res, 0, 1), NULL, 10);
    PQclear(res);
    return true;
}
