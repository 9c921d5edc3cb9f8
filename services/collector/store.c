#include "store.h"

#include <libpq-fe.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "db.h"
#include "period.h"
#include "timeutil.h"

struct store {
    const char *url;
    int lateness_days;
    PGconn *conn;
};

/* Session-local staging tables, emptied at every commit. */
static const char sql_setup[] =
    "CREATE TEMP TABLE IF NOT EXISTS tally_staged ("
    "  seq bigint, source text, id text, key_id text, plan_id text, method text,"
    "  endpoint text, units bigint, bytes bigint,"
    "  hour_s bigint, day_s bigint, week_s bigint, month_s bigint) ON COMMIT DELETE ROWS;"
    "CREATE TEMP TABLE IF NOT EXISTS tally_fresh (LIKE tally_staged) ON COMMIT DELETE ROWS;";

/* Records every staged (source, id) in its event week; the pairs the insert
 * returns were never seen before, and only those go on to the rollups. The
 * sort gives every collector the same lock order on the unique index, and
 * DISTINCT ON keeps the first copy of a pair sent twice in one batch. */
static const char sql_dedup[] =
    "WITH inserted AS ("
    "  INSERT INTO event_ids (source, id, event_week)"
    "  SELECT source, id, (to_timestamp(week_s) AT TIME ZONE 'UTC')::date"
    "    FROM tally_staged ORDER BY source, id"
    "  ON CONFLICT DO NOTHING"
    "  RETURNING source, id)"
    " INSERT INTO tally_fresh"
    " SELECT DISTINCT ON (s.source, s.id) s.*"
    "   FROM tally_staged s JOIN inserted i ON i.source = s.source AND i.id = s.id"
    "  ORDER BY s.source, s.id, s.seq";

/* Sorted so that concurrent collectors lock rollup rows in the same order. */
static const char sql_hourly[] =
    "INSERT INTO usage_hourly AS u (key_id, hour, plan_id, method, endpoint, requests, units, bytes)"
    " SELECT key_id, to_timestamp(hour_s), plan_id, method, endpoint,"
    "        count(*), sum(units)::bigint, sum(bytes)::bigint"
    "   FROM tally_fresh GROUP BY key_id, hour_s, plan_id, method, endpoint"
    "  ORDER BY key_id, hour_s, plan_id, method, endpoint"
    " ON CONFLICT (key_id, hour, plan_id, method, endpoint) DO UPDATE"
    "    SET requests = u.requests + EXCLUDED.requests, units = u.units + EXCLUDED.units,"
    "        bytes = u.bytes + EXCLUDED.bytes, updated_at = now()";

static const char sql_counters[] =
    "INSERT INTO usage_counters AS c (key_id, period, period_start, requests, units, bytes)"
    " SELECT key_id, p.period,"
    "        to_timestamp(CASE p.period WHEN 'DAY' THEN day_s WHEN 'WEEK' THEN week_s"
    "                     ELSE month_s END) AS start,"
    "        count(*), sum(units)::bigint, sum(bytes)::bigint"
    "   FROM tally_fresh CROSS JOIN (VALUES ('DAY'), ('WEEK'), ('MONTH')) AS p (period)"
    "  GROUP BY key_id, p.period, start ORDER BY key_id, p.period, start"
    " ON CONFLICT (key_id, period, period_start) DO UPDATE"
    "    SET requests = c.requests + EXCLUDED.requests, units = c.units + EXCLUDED.units,"
    "        bytes = c.bytes + EXCLUDED.bytes, updated_at = now()";

store *store_new(const char *url, int lateness_days)
{
    store *st = calloc(1, sizeof *st);
    if (st) {
        st->url = url;
        st->lateness_days = lateness_days;
    }
    return st;
}

void store_disconnect(store *st)
{
    if (st->conn) {
        PQfinish(st->conn);
        st->conn = NULL;
    }
}

void store_free(store *st)
{
    if (st == NULL)
        return;
    store_disconnect(st);
    free(st);
}

bool store_is_connected(const store *st)
{
    return !db_connection_lost(st->conn);
}

static bool prepare(PGconn *conn, const char *name, const char *sql, int nparams,
                    const char *what, char *err, size_t err_size)
{
    PGresult *res = PQprepare(conn, name, sql, nparams, NULL);
    bool ok = PQresultStatus(res) == PGRES_COMMAND_OK;
    if (!ok)
        db_error(conn, res, what, err, err_size);
    PQclear(res);
    return ok;
}

bool store_ensure_connected(store *st, char *err, size_t err_size)
{
    if (store_is_connected(st))
        return true;
    store_disconnect(st);
    st->conn = db_connect(st->url, "tally-collector", err, err_size);
    if (st->conn == NULL)
        return false;
    if (!db_exec(st->conn, "SET client_min_messages TO warning", "configuring the session", err,
                 err_size) ||
        !db_exec(st->conn, sql_setup, "creating the staging tables", err, err_size) ||
        !prepare(st->conn, "dedup", sql_dedup, 0, "preparing the deduplication statement", err,
                 err_size) ||
        !prepare(st->conn, "hourly", sql_hourly, 0, "preparing the hourly rollup statement", err,
                 err_size) ||
        !prepare(st->conn, "counters", sql_counters, 0, "preparing the counter statement", err,
                 err_size)) {
        store_disconnect(st);
        return false;
    }
    return true;
}

static bool fill_cache(PGresult *res, keycache *cache, char *err, size_t err_size)
{
    for (int i = 0; i < PQntuples(res); i++) {
        if (!keycache_put(cache, PQgetvalue(res, i, 0), PQgetvalue(res, i, 1))) {
            snprintf(err, err_size, "loading keys: out of memory");
            return false;
        }
    }
    return true;
}

bool store_load_keys(store *st, keycache *cache, char *err, size_t err_size)
{
    if (!store_ensure_connected(st, err, err_size))
        return false;
    PGresult *res = PQexec(st->conn, "SELECT id, coalesce(plan_id, '') FROM api_keys");
    bool ok = PQresultStatus(res) == PGRES_TUPLES_OK;
    if (!ok)
        db_error(st->conn, res, "loading API keys", err, err_size);
    else
        ok = fill_cache(res, cache, err, err_size);
    PQclear(res);
    return ok;
}

bool store_lookup_keys(store *st, const char *const *ids, size_t count, keycache *cache,
                       char *err, size_t err_size)
{
    if (!store_ensure_connected(st, err, err_size))
        return false;
    buf array;
    buf_init(&array, 64u << 20);
    if (!db_append_text_array(&array, ids, count)) {
        buf_free(&array);
        snprintf(err, err_size, "looking up keys: too many unknown keys in one batch");
        return false;
    }
    const char *params[1] = {array.data};
    PGresult *res = PQexecParams(
        st->conn, "SELECT id, coalesce(plan_id, '') FROM api_keys WHERE id = ANY ($1::text[])", 1,
        NULL, params, NULL, NULL, 0);
    bool ok = PQresultStatus(res) == PGRES_TUPLES_OK;
    if (!ok)
        db_error(st->conn, res, "looking up unknown API keys", err, err_size);
    else
        ok = fill_cache(res, cache, err, err_size);
    PQclear(res);
    buf_free(&array);
    return ok;
}

bool store_maintain_partitions(store *st, int *created, int *dropped, char *err, size_t err_size)
{
    if (!store_ensure_connected(st, err, err_size))
        return false;
    char days[16];
    snprintf(days, sizeof days, "%d", st->lateness_days);
    const char *params[1] = {days};
    PGresult *res = PQexecParams(st->conn,
                                 "SELECT tally_ensure_event_partitions($1::int),"
                                 "       tally_drop_expired_event_partitions($1::int)",
                                 1, NULL, params, NULL, NULL, 0);
    bool ok = PQresultStatus(res) == PGRES_TUPLES_OK && PQntuples(res) == 1;
    if (ok) {
        *created = atoi(PQgetvalue(res, 0, 0));
        *dropped = atoi(PQgetvalue(res, 0, 1));
    } else {
        db_error(st->conn, res, "maintaining event_ids partitions", err, err_size);
    }
    PQclear(res);
    return ok;
}

bool store_stage_row(buf *rows, uint64_t seq, const char *source, const char *id,
                     const char *key_id, const char *plan_id, const char *method,
                     const char *endpoint, int64_t units, int64_t bytes, int64_t time_usec)
{
    /* Period starts are computed here, by the unit-tested period module, and
     * passed as whole epoch seconds, so SQL never re-derives them. */
    long long hour_s = (long long)(time_truncate(time_usec, USEC_PER_HOUR) / USEC_PER_SEC);
    long long day_s = (long long)(period_start(PERIOD_DAY, time_usec) / USEC_PER_SEC);
    long long week_s = (long long)(period_start(PERIOD_WEEK, time_usec) / USEC_PER_SEC);
    long long month_s = (long long)(period_start(PERIOD_MONTH, time_usec) / USEC_PER_SEC);
    return buf_appendf(rows, "%llu\t", (unsigned long long)seq) &&
           db_append_copy_text(rows, source) && buf_append(rows, "\t", 1) &&
           db_append_copy_text(rows, id) && buf_append(rows, "\t", 1) &&
           db_append_copy_text(rows, key_id) && buf_append(rows, "\t", 1) &&
           db_append_copy_text(rows, plan_id) && buf_append(rows, "\t", 1) &&
           db_append_copy_text(rows, method) && buf_append(rows, "\t", 1) &&
           db_append_copy_text(rows, endpoint) &&
           buf_appendf(rows, "\t%lld\t%lld\t%lld\t%lld\t%lld\t%lld\n", (long long)units,
                       (long long)bytes, hour_s, day_s, week_s, month_s);
}

static bool run_prepared(PGconn *conn, const char *name, const char *what, uint64_t *affected,
                         char *err, size_t err_size)
{
    PGresult *res = PQexecPrepared(conn, name, 0, NULL, NULL, NULL, 0);
    bool ok = PQresultStatus(res) == PGRES_COMMAND_OK;
    if (ok && affected)
        *affected = strtoull(PQcmdTuples(res), NULL, 10);
    if (!ok)
        db_error(conn, res, what, err, err_size);
    PQclear(res);
    return ok;
}

static bool copy_rows(PGconn *conn, const buf *rows, char *err, size_t err_size)
{
    PGresult *res = PQexec(conn, "COPY tally_staged FROM STDIN");
    if (PQresultStatus(res) != PGRES_COPY_IN) {
        db_error(conn, res, "starting COPY into the staging table", err, err_size);
        PQclear(res);
        return false;
    }
    PQclear(res);
    const size_t chunk = 1u << 20;
    bool sent = true;
    for (size_t off = 0; off < rows->len && sent; off += chunk) {
        size_t n = rows->len - off < chunk ? rows->len - off : chunk;
        sent = PQputCopyData(conn, rows->data + off, (int)n) == 1;
    }
    if (PQputCopyEnd(conn, sent ? NULL : "client failed to send") != 1)
        sent = false;
    bool ok = sent;
    while ((res = PQgetResult(conn)) != NULL) {
        if (PQresultStatus(res) != PGRES_COMMAND_OK && ok) {
            db_error(conn, res, "copying the batch into the staging table", err, err_size);
            ok = false;
        }
        PQclear(res);
    }
    if (!sent && ok)
        db_error(conn, NULL, "sending the batch", err, err_size);
    return ok && sent;
}

bool store_commit_batch(store *st, const buf *rows, uint64_t *counted, char *err, size_t err_size)
{
    if (!store_ensure_connected(st, err, err_size))
        return false;
    uint64_t fresh = 0;
    bool ok = db_exec(st->conn, "BEGIN", "starting the batch transaction", err, err_size) &&
              (rows->len == 0 || copy_rows(st->conn, rows, err, err_size)) &&
              run_prepared(st->conn, "dedup", "deduplicating the batch", &fresh, err, err_size) &&
              run_prepared(st->conn, "hourly", "adding to the hourly rollups", NULL, err,
                           err_size) &&
              run_prepared(st->conn, "counters", "adding to the period counters", NULL, err,
                           err_size) &&
              db_exec(st->conn, "COMMIT", "committing the batch", err, err_size);
    if (!ok) {
        char ignored[256];
        if (store_is_connected(st) &&
            !db_exec(st->conn, "ROLLBACK", "rolling back", ignored, sizeof ignored))
            store_disconnect(st);
        return false;
    }
    *counted = fresh;
    return true;
}
