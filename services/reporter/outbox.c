#include "outbox.h"

#include <inttypes.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include "buf.h"
#include "db.h"
#include "reporterdb.h"

/* The Stripe target of a (key k, plan p) in the mode the SQL expression
 * `mode` gives (a stripe_reports.mode value). */
#define TARGET_SQL(mode)                                                                       \
    "CASE WHEN " mode " = '" STRIPE_MODE_COLUMN_METER_EVENTS "' THEN p.stripe_meter_event_name " \
    "     ELSE coalesce(k.stripe_subscription_item_id, p.stripe_subscription_item_id) END"

/* Runs a statement that changes rows; *count: how many it changed. */
static bool run_change(PGconn *db, const char *sql, int nparams, const char *const *params,
                       const char *what, long long *count, char *err, size_t err_size)
{
    PGresult *res = reporterdb_run(db, sql, nparams, params, PGRES_COMMAND_OK, what, err, err_size);
    if (res == NULL)
        return false;
    *count = strtoll(PQcmdTuples(res), NULL, 10);
    PQclear(res);
    return true;
}

bool outbox_try_lock(PGconn *db, bool *held, char *err, size_t err_size)
{
    PGresult *res =
        reporterdb_run(db, "SELECT pg_try_advisory_lock(hashtext('tally-reporter'))", 0, NULL,
                       PGRES_TUPLES_OK, "taking the reporter lock", err, err_size);
    if (res == NULL)
        return false;
    *held = strcmp(PQgetvalue(res, 0, 0), "t") == 0;
    PQclear(res);
    return true;
}

bool outbox_clock(PGconn *db, double margin_s, char *out, size_t size, char *err,
                  size_t err_size)
{
    char margin[32];
    snprintf(margin, sizeof margin, "%.3f", margin_s);
    const char *params[] = {margin};
    PGresult *res =
        reporterdb_run(db, "SELECT now() - make_interval(secs => $1::float8)", 1, params,
                       PGRES_TUPLES_OK, "reading the database clock", err, err_size);
    if (res == NULL)
        return false;
    snprintf(out, size, "%s", PQgetvalue(res, 0, 0));
    PQclear(res);
    return true;
}

/* Which buckets to look at: those changed since $4 (every one when NULL)
 * within the lookback, summed over all their rows; settled ones only; minus
 * what their reports already cover, whatever those reports' status (a parked
 * report is not re-planned: an operator decides). The identifier is a digest
 * of (key, plan, hour, seq[, namespace]) with length prefixes, so it is the
 * same after any crash and different for every increment. */
static const char plan_sql[] =
    "WITH changed AS ("
    "  SELECT DISTINCT key_id, plan_id, hour FROM usage_hourly"
    "   WHERE hour >= now() - make_interval(days => $2::int) AND plan_id <> ''"
    "     AND ($4::timestamptz IS NULL OR updated_at >= $4::timestamptz)"
    "), counted AS ("
    "  SELECT c.key_id, c.plan_id, c.hour, sum(u.units)::bigint AS units,"
    "         max(u.updated_at) AS changed_at"
    "    FROM changed c JOIN usage_hourly u"
    "      ON u.key_id = c.key_id AND u.hour = c.hour AND u.plan_id = c.plan_id"
    "   GROUP BY 1, 2, 3"
    "), due AS ("
    "  SELECT c.key_id, c.plan_id, c.hour, c.units, k.stripe_customer_id AS customer,"
    "         " TARGET_SQL("$1") " AS target"
    "    FROM counted c JOIN api_keys k ON k.id = c.key_id JOIN plans p ON p.id = c.plan_id"
    "   WHERE k.stripe_customer_id IS NOT NULL"
    "     AND (c.changed_at <= now() - make_interval(secs => $3::float8)"
    "          OR c.hour + interval '1 hour' <= now() - make_interval(secs => $3::float8))"
    "), todo AS ("
    "  SELECT d.*, d.units - coalesce(r.reported, 0) AS quantity,"
    "         coalesce(r.last_seq + 1, 0) AS seq"
    "    FROM due d LEFT JOIN LATERAL ("
    "      SELECT sum(s.quantity) AS reported, max(s.seq) AS last_seq FROM stripe_reports s"
    "       WHERE s.key_id = d.key_id AND s.plan_id = d.plan_id AND s.hour = d.hour) r ON true"
    "   WHERE d.target IS NOT NULL"
    "), ins AS ("
    "  INSERT INTO stripe_reports (key_id, plan_id, hour, seq, quantity, mode,"
    "                              stripe_customer_id, target, identifier)"
    "  SELECT key_id, plan_id, hour, seq, quantity, $1, customer, target,"
    "         'tally_' || substr(encode(sha256(convert_to("
    "             octet_length(key_id)::text || ':' || key_id || octet_length(plan_id)::text"
    "             || ':' || plan_id || ':' || extract(epoch FROM hour)::bigint::text"
    "             || ':' || seq::text || $5::text, 'UTF8')), 'hex'), 1, 40)"
    "    FROM todo WHERE quantity > 0"
    "  RETURNING quantity"
    ") SELECT count(*), coalesce(sum(quantity), 0) FROM ins";

bool outbox_plan(PGconn *db, stripe_mode mode, const char *since, double settle_s,
                 int lookback_days, const char *namespace, long long *reports,
                 long long *units, char *err, size_t err_size)
{
    char lookback[16], settle[32];
    snprintf(lookback, sizeof lookback, "%d", lookback_days);
    snprintf(settle, sizeof settle, "%.3f", settle_s);
    /* an empty namespace leaves the digest as it always was */
    char ns[160] = "";
    if (namespace[0])
        snprintf(ns, sizeof ns, ":%s", namespace);
    const char *params[] = {stripe_mode_column(mode), lookback, settle, since, ns};
    PGresult *res =
        reporterdb_run(db, plan_sql, 5, params, PGRES_TUPLES_OK, "planning reports", err, err_size);
    if (res == NULL)
        return false;
    *reports = strtoll(PQgetvalue(res, 0, 0), NULL, 10);
    *units = strtoll(PQgetvalue(res, 0, 1), NULL, 10);
    PQclear(res);
    return true;
}

/* Prints a JSON document built from database text (jansson escapes it);
 * takes `doc`. */
static bool print_json(json_t *doc, FILE *out, char *err, size_t err_size)
{
    bool ok = doc != NULL && json_dumpf(doc, out, JSON_INDENT(1)) == 0;
    json_decref(doc);
    if (!ok)
        snprintf(err, err_size, "writing JSON: out of memory or invalid UTF-8 in the data");
    else
        fputc('\n', out);
    return ok;
}

void report_free(report *r)
{
    if (r == NULL)
        return;
    free(r->last_error);
    free(r);
}

static int64_t epoch_usec(const char *text)
{
    return text[0] ? (int64_t)(strtod(text, NULL) * 1e6) : 0;
}

bool outbox_load(PGconn *db, int64_t after_id, int limit, void (*take)(void *ctx, report *r),
                 void *ctx, int *loaded, char *err, size_t err_size)
{
    char after[32], lim[16];
    snprintf(after, sizeof after, "%" PRId64, after_id);
    snprintf(lim, sizeof lim, "%d", limit);
    const char *params[] = {after, lim};
    /* Taking a report for sending stamps first_sent_at (if not yet), before
     * any call: the 23-hour rule (sender.c) survives any crash. Usage older
     * than 34 days when planned is sent as of 34 days before planning, inside
     * Stripe's 35-day window however long the sending takes. */
    PGresult *res = reporterdb_run(
        db,
        "WITH taken AS ("
        "  UPDATE stripe_reports SET first_sent_at = coalesce(first_sent_at, now())"
        "   WHERE id IN (SELECT id FROM stripe_reports WHERE status = 'pending'"
        "                   AND id > $1::bigint ORDER BY id LIMIT $2::int)"
        "  RETURNING *"
        ") SELECT id, mode, stripe_customer_id, target, identifier,"
        "       extract(epoch FROM greatest(hour, created_at - interval '34 days'))::bigint,"
        "       quantity, idempotency_generation, attempts,"
        "       extract(epoch FROM first_sent_at)::text,"
        "       extract(epoch FROM next_attempt_at)::text"
        "  FROM taken ORDER BY id",
        2, params, PGRES_TUPLES_OK, "loading pending reports", err, err_size);
    if (res == NULL)
        return false;
    int rows = PQntuples(res);
    for (int i = 0; i < rows; i++) {
        const char *customer = PQgetvalue(res, i, 2), *target = PQgetvalue(res, i, 3),
                   *identifier = PQgetvalue(res, i, 4);
        size_t lc = strlen(customer) + 1, lt = strlen(target) + 1, li = strlen(identifier) + 1;
        report *r = calloc(1, sizeof *r + lc + lt + li);
        if (r == NULL) {
            snprintf(err, err_size, "loading pending reports: out of memory");
            PQclear(res);
            return false;
        }
        char *strings = (char *)(r + 1);
        r->customer = memcpy(strings, customer, lc);
        r->target = memcpy(strings + lc, target, lt);
        r->identifier = memcpy(strings + lc + lt, identifier, li);
        r->id = strtoll(PQgetvalue(res, i, 0), NULL, 10);
        if (!stripe_mode_from_column(PQgetvalue(res, i, 1), &r->mode))
            r->mode = STRIPE_MODE_USAGE_RECORDS; /* the table's CHECK allows no other */
        r->hour = strtoll(PQgetvalue(res, i, 5), NULL, 10);
        r->quantity = strtoll(PQgetvalue(res, i, 6), NULL, 10);
        r->generation = (int)strtol(PQgetvalue(res, i, 7), NULL, 10);
        r->attempts = (int)strtol(PQgetvalue(res, i, 8), NULL, 10);
        r->first_sent_usec = epoch_usec(PQgetvalue(res, i, 9));
        r->ready_usec = epoch_usec(PQgetvalue(res, i, 10));
        r->status = REPORT_PENDING;
        take(ctx, r);
    }
    *loaded = rows;
    PQclear(res);
    return true;
}

static const char *status_name(report_status s)
{
    return s == REPORT_ACCEPTED ? "accepted" : s == REPORT_PARKED ? "parked" : "pending";
}

/* Appends one element of an integer array literal. */
static bool add_int(buf *b, long long v)
{
    return buf_appendf(b, "%s%lld", b->len > 1 ? "," : "", v);
}

static bool add_text(buf *b, const char *v)
{
    return (b->len <= 1 || buf_append(b, ",", 1)) && db_append_array_element(b, v);
}

enum { F_ID, F_STATUS, F_ATTEMPTS, F_GEN, F_NEXT, F_FIRST, F_LAST, F_HTTP, F_ERROR, F_COUNT };

bool outbox_flush(PGconn *db, report *const *reports, size_t count, char *err, size_t err_size)
{
    if (count == 0)
        return true;
    buf cols[F_COUNT];
    bool ok = true;
    for (int c = 0; c < F_COUNT; c++) {
        buf_init(&cols[c], 64u << 20);
        ok = ok && buf_append(&cols[c], "{", 1);
    }
    for (size_t i = 0; i < count && ok; i++) {
        const report *r = reports[i];
        ok = add_int(&cols[F_ID], r->id) && add_text(&cols[F_STATUS], status_name(r->status)) &&
             add_int(&cols[F_ATTEMPTS], r->attempts) && add_int(&cols[F_GEN], r->generation) &&
             add_int(&cols[F_NEXT], r->ready_usec) && add_int(&cols[F_FIRST], r->first_sent_usec) &&
             add_int(&cols[F_LAST], r->last_sent_usec) &&
             add_int(&cols[F_HTTP], r->last_http_status) &&
             add_text(&cols[F_ERROR], r->last_error ? r->last_error : "");
    }
    for (int c = 0; c < F_COUNT; c++)
        ok = ok && buf_append(&cols[c], "}", 1);
    if (!ok) {
        snprintf(err, err_size, "recording outcomes: batch too large");
    } else {
        const char *params[F_COUNT];
        for (int c = 0; c < F_COUNT; c++)
            params[c] = cols[c].data;
        PGresult *res = reporterdb_run(
            db,
            "UPDATE stripe_reports s SET status = v.status,"
            "       attempts = greatest(s.attempts, v.attempts),"
            "       idempotency_generation = greatest(s.idempotency_generation, v.gen),"
            "       next_attempt_at = to_timestamp(v.next / 1e6),"
            "       first_sent_at = least(s.first_sent_at, CASE WHEN v.first > 0"
            "                             THEN to_timestamp(v.first / 1e6) END),"
            "       last_sent_at = CASE WHEN v.last > 0 THEN to_timestamp(v.last / 1e6) END,"
            "       last_http_status = nullif(v.http, 0), last_error = nullif(v.error, ''),"
            "       done_at = CASE WHEN v.status <> 'pending' THEN now() END"
            "  FROM unnest($1::bigint[], $2::text[], $3::int[], $4::int[], $5::bigint[],"
            "              $6::bigint[], $7::bigint[], $8::int[], $9::text[])"
            "       AS v(id, status, attempts, gen, next, first, last, http, error)"
            " WHERE s.id = v.id AND s.status = 'pending'",
            F_COUNT, params, PGRES_COMMAND_OK, "recording outcomes", err, err_size);
        ok = res != NULL;
        PQclear(res);
    }
    for (int c = 0; c < F_COUNT; c++)
        buf_free(&cols[c]);
    return ok;
}

bool outbox_stats_read(PGconn *db, outbox_stats *out, char *err, size_t err_size)
{
    PGresult *res =
        reporterdb_run(db,
                       "SELECT count(*) FILTER (WHERE status = 'pending'),"
                       "       count(*) FILTER (WHERE status = 'parked'),"
                       "       coalesce(extract(epoch FROM now() - min(created_at)"
                       "                FILTER (WHERE status = 'pending')), 0)"
                       "  FROM stripe_reports WHERE status <> 'accepted'",
                       0, NULL, PGRES_TUPLES_OK, "reading outbox statistics", err, err_size);
    if (res == NULL)
        return false;
    out->pending = strtoll(PQgetvalue(res, 0, 0), NULL, 10);
    out->parked = strtoll(PQgetvalue(res, 0, 1), NULL, 10);
    out->oldest_pending_s = strtod(PQgetvalue(res, 0, 2), NULL);
    PQclear(res);
    return true;
}

/* Per (key, plan, hour) in range: counted units and what the reports say,
 * then per the customer and target the key and plan have now. */
static const char reconcile_sql[] =
    "WITH counted AS ("
    "  SELECT key_id, plan_id, hour, sum(units)::bigint AS units FROM usage_hourly"
    "   WHERE plan_id <> '' AND ($2::timestamptz IS NULL OR hour >= $2::timestamptz)"
    "     AND ($3::timestamptz IS NULL OR hour < $3::timestamptz)"
    "   GROUP BY 1, 2, 3"
    "), reported AS ("
    "  SELECT key_id, plan_id, hour,"
    "         sum(quantity) FILTER (WHERE status = 'accepted') AS accepted,"
    "         sum(quantity) FILTER (WHERE status = 'pending') AS pending,"
    "         sum(quantity) FILTER (WHERE status = 'parked') AS parked,"
    "         max(stripe_customer_id) AS customer, max(target) AS target"
    "    FROM stripe_reports"
    "   WHERE ($2::timestamptz IS NULL OR hour >= $2::timestamptz)"
    "     AND ($3::timestamptz IS NULL OR hour < $3::timestamptz)"
    "   GROUP BY 1, 2, 3"
    "), joined AS ("
    "  SELECT coalesce(c.key_id, r.key_id) AS key_id, coalesce(c.plan_id, r.plan_id) AS plan_id,"
    "         r.customer, r.target, coalesce(c.units, 0) AS counted,"
    "         coalesce(r.accepted, 0) AS accepted, coalesce(r.pending, 0) AS pending,"
    "         coalesce(r.parked, 0) AS parked"
    "    FROM counted c FULL JOIN reported r"
    "      ON r.key_id = c.key_id AND r.plan_id = c.plan_id AND r.hour = c.hour"
    "), buckets AS ("
    "  SELECT coalesce(k.stripe_customer_id, j.customer) AS customer,"
    "         coalesce(" TARGET_SQL("$1") ", j.target) AS target,"
    "         j.counted, j.accepted, j.pending, j.parked"
    "    FROM joined j LEFT JOIN api_keys k ON k.id = j.key_id"
    "    LEFT JOIN plans p ON p.id = j.plan_id"
    ") SELECT customer, target, sum(counted)::bigint, sum(accepted)::bigint,"
    "         sum(pending)::bigint, sum(parked)::bigint"
    "    FROM buckets WHERE customer IS NOT NULL AND target IS NOT NULL"
    "   GROUP BY 1, 2 ORDER BY 1, 2";

bool outbox_reconcile(PGconn *db, stripe_mode mode, const char *from, const char *to, bool json,
                      FILE *out, long long *differences, char *err, size_t err_size)
{
    const char *params[] = {stripe_mode_column(mode), from, to};
    PGresult *res =
        reporterdb_run(db, reconcile_sql, 3, params, PGRES_TUPLES_OK, "reconciling", err, err_size);
    if (res == NULL)
        return false;
    int rows = PQntuples(res);
    json_t *list = json ? json_array() : NULL;
    *differences = 0;
    if (!json)
        fprintf(out, "%-24s %-28s %12s %12s %10s %10s %12s  %s\n", "customer", "meter/item",
                "counted", "accepted", "pending", "parked", "unreported", "status");
    for (int i = 0; i < rows; i++) {
        long long counted = strtoll(PQgetvalue(res, i, 2), NULL, 10);
        long long accepted = strtoll(PQgetvalue(res, i, 3), NULL, 10);
        long long pending = strtoll(PQgetvalue(res, i, 4), NULL, 10);
        long long parked = strtoll(PQgetvalue(res, i, 5), NULL, 10);
        long long unreported = counted - accepted - pending - parked;
        bool ok = counted == accepted + pending;
        if (!ok)
            (*differences)++;
        const char *customer = PQgetvalue(res, i, 0), *target = PQgetvalue(res, i, 1);
        if (json)
            json_array_append_new(
                list, json_pack("{s:s, s:s, s:I, s:I, s:I, s:I, s:I, s:b}", "customer", customer,
                                "target", target, "counted", (json_int_t)counted, "accepted",
                                (json_int_t)accepted, "pending", (json_int_t)pending, "parked",
                                (json_int_t)parked, "unreported", (json_int_t)unreported, "ok",
                                ok));
        else
            fprintf(out, "%-24s %-28s %12lld %12lld %10lld %10lld %12lld  %s\n", customer,
                    target, counted, accepted, pending, parked, unreported,
                    ok ? "ok" : "DIFFERS");
    }
    PQclear(res);
    return json ? print_json(list, out, err, err_size) : true;
}

bool outbox_list_parked(PGconn *db, int limit, bool json, FILE *out, long long *count, char *err,
                        size_t err_size)
{
    char lim[16];
    snprintf(lim, sizeof lim, "%d", limit);
    const char *params[] = {lim};
    PGresult *res = reporterdb_run(
        db,
        "SELECT id, stripe_customer_id, target, mode, hour, quantity, attempts,"
        "       coalesce(last_http_status::text, ''), coalesce(last_error, ''), done_at"
        "  FROM stripe_reports WHERE status = 'parked' ORDER BY id LIMIT $1::int",
        1, params, PGRES_TUPLES_OK, "listing parked reports", err, err_size);
    if (res == NULL)
        return false;
    int rows = PQntuples(res);
    json_t *list = json ? json_array() : NULL;
    *count = rows;
    for (int i = 0; i < rows; i++) {
        const char *v[10];
        for (int c = 0; c < 10; c++)
            v[c] = PQgetvalue(res, i, c);
        if (json)
            json_array_append_new(
                list, json_pack("{s:I, s:s, s:s, s:s, s:s, s:I, s:i, s:o, s:s, s:s}", "id",
                                (json_int_t)strtoll(v[0], NULL, 10), "customer", v[1], "target",
                                v[2], "mode", v[3], "hour", v[4], "quantity",
                                (json_int_t)strtoll(v[5], NULL, 10), "attempts", atoi(v[6]),
                                "httpStatus", v[7][0] ? json_integer(atoi(v[7])) : json_null(),
                                "error", v[8], "parkedAt", v[9]));
        else
            fprintf(out, "#%s %s %s (%s) hour %s, quantity %s, %s attempt(s), parked %s: %s\n",
                    v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[9], v[8]);
    }
    PQclear(res);
    return json ? print_json(list, out, err, err_size) : true;
}

/* Each report keeps its mode; its customer and target are read again. It
 * gets a new id: a running reporter loads pending reports in id order from
 * where it stopped, so it sees the report at its next cycle. */
static const char requeue_sql[] =
    "WITH fresh AS ("
    "  SELECT s.id, k.stripe_customer_id AS customer, " TARGET_SQL("s.mode") " AS target"
    "    FROM stripe_reports s JOIN api_keys k ON k.id = s.key_id"
    "    JOIN plans p ON p.id = s.plan_id"
    "   WHERE s.status = 'parked' AND ($1::bigint IS NULL OR s.id = $1::bigint)"
    "     AND ($2::text IS NULL OR s.stripe_customer_id = $2::text)"
    ") UPDATE stripe_reports s SET status = 'pending', attempts = 0,"
    "         id = nextval(pg_get_serial_sequence('stripe_reports', 'id')),"
    "         stripe_customer_id = f.customer, target = f.target,"
    "         idempotency_generation = s.idempotency_generation + 1,"
    "         next_attempt_at = now(), done_at = NULL, first_sent_at = NULL,"
    "         last_error = 'requeued by an operator after: ' || coalesce(s.last_error, '')"
    "    FROM fresh f WHERE s.id = f.id AND f.customer IS NOT NULL AND f.target IS NOT NULL";

bool outbox_requeue(PGconn *db, long long id, const char *customer, long long *count, char *err,
                    size_t err_size)
{
    char idtext[32];
    snprintf(idtext, sizeof idtext, "%lld", id);
    const char *params[] = {id > 0 ? idtext : NULL, customer};
    return run_change(db, requeue_sql, 2, params, "requeueing parked reports", count, err,
                      err_size);
}

bool outbox_resolve(PGconn *db, long long id, long long *count, char *err, size_t err_size)
{
    char idtext[32];
    snprintf(idtext, sizeof idtext, "%lld", id);
    const char *params[] = {idtext};
    return run_change(db,
                      "UPDATE stripe_reports SET status = 'accepted', done_at = now(),"
                      "       last_error = 'resolved by an operator (counted in Stripe) after: '"
                      "                    || coalesce(last_error, '')"
                      " WHERE id = $1::bigint AND status = 'parked'",
                      1, params, "resolving a parked report", count, err, err_size);
}
