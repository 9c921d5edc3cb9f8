#include "store.h"
#include "status.h"

#include <libpq-fe.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <poll.h>
#include <stdarg.h>

#include "db.h"
#include "event.h"
#include "timeutil.h"

#define SESSION_LOCK_TIMEOUT "30s"

struct store {
    const char *url;
    int lateness_days;
    PGconn *conn;
    buf params;       /* binary array parameters of phase A */
    int statements;   /* statements sent before the pipeline's sync */
    int completed;    /* statements whose results have all been read */
    int keep;         /* the statement whose result is handed back, or -1 */
    PGresult *kept;
    bool unflushed;   /* a sent exchange still has bytes in libpq's buffer */
    bool failed;
    char failure[512];
    store_error_kind last_error;
    char rollup_sql[4096];
    const char *const *status; /* store_stage_status: sent with the next rollups */
};

/* Which failures are the data's fault: SQLSTATE class 22 (data exception,
 * 22003 being a total out of bigint's range) and 23 (integrity constraint,
 * e.g. no event_ids partition for an event's week). Retrying such a batch
 * can never succeed; everything else (a lost connection, a deadlock, a
 * server shutting down, a full disk) may, so it is retried. */
static store_error_kind classify_sqlstate(const char *sqlstate)
{
    if (strcmp(sqlstate, "22003") == 0)
        return STORE_ERROR_OVERFLOW;
    if (strncmp(sqlstate, "22", 2) == 0 || strncmp(sqlstate, "23", 2) == 0)
        return STORE_ERROR_DATA;
    return STORE_ERROR_TRANSIENT;
}

static bool exec_step(store *st, const char *sql, const char *what, char *err, size_t err_size);

store_error_kind store_last_error(const store *st)
{
    return st->last_error;
}

/* Phase A: record the digests; RETURNING lists only those never seen. The
 * sort gives concurrent collectors the same index lock order. */
static const char sql_inserts[] =
    "INSERT INTO event_ids (event_hash, event_week)"
    " SELECT h, date '1970-01-01' + d FROM unnest($1::uuid[], $2::int[]) AS t (h, d)"
    "  ORDER BY h"
    " ON CONFLICT DO NOTHING"
    " RETURNING event_hash";

/* The counters' change notice (README, "Freshness"): sent in the batch's
 * transaction, so PostgreSQL delivers it at the commit to every tally-api
 * LISTENing on ROLLUP_COUNTERS_CHANNEL. The payload is distinct key ids of
 * the counter rows (the key_id array of the rollup statement),
 * comma-separated (ids never hold one); NOTIFY takes less than 8,000 bytes,
 * so the ids go in chunks of at most 7,000 bytes plus one id (at most
 * EVENT_MAX_SUBJECT_LEN), one notice each. */
static const char sql_notify[] =
    "SELECT pg_notify('" ROLLUP_COUNTERS_CHANNEL "', string_agg(id, ','))"
    " FROM (SELECT id, sum(octet_length(id) + 1) OVER (ORDER BY id) / 7000 AS chunk"
    "       FROM (SELECT DISTINCT id FROM unnest($1::text[]) AS id) AS changed) AS chunked"
    " GROUP BY chunk";
_Static_assert(7000 + EVENT_MAX_SUBJECT_LEN + 1 < 8000, "a notice fits NOTIFY's payload");

/* Phase B: the new events' totals, pre-aggregated by the collector, as one
 * statement built from rollupcols.h (build_rollup_sql). Rows are sorted in
 * primary-key order so concurrent collectors lock them in the same order;
 * usage_hourly first, for one lock order across both tables. */
static const char *const text_dimensions[] = {
#define ROLLUP_COLUMN_NAME(id, column) column,
    ROLLUP_TEXT_DIMENSIONS(ROLLUP_COLUMN_NAME)};
static const char *const measures[] = {ROLLUP_MEASURES(ROLLUP_COLUMN_NAME)};
#undef ROLLUP_COLUMN_NAME
_Static_assert(sizeof text_dimensions / sizeof *text_dimensions == ROLLUP_TEXT_DIMENSION_COUNT &&
                   sizeof measures / sizeof *measures == ROLLUP_MEASURE_COUNT,
               "rollup column names");

typedef struct {
    char *text;
    size_t size, len;
    bool overflow;
} sql_text;

static void sql_add(sql_text *q, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void sql_add(sql_text *q, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(q->text + q->len, q->size - q->len, fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= q->size - q->len)
        q->overflow = true;
    else
        q->len += (size_t)n;
}

/* The names, comma-separated; with `after_another`, a comma before the first
 * too (the list continues one already written). */
static void sql_names(sql_text *q, const char *const *names, int count, bool after_another)
{
    for (int i = 0; i < count; i++)
        sql_add(q, "%s%s", i > 0 || after_another ? ", " : "", names[i]);
}

static void sql_sums(sql_text *q, const char *table_alias)
{
    for (int i = 0; i < ROLLUP_MEASURE_COUNT; i++)
        sql_add(q, "%s = %s.%s + EXCLUDED.%s, ", measures[i], table_alias, measures[i],
                measures[i]);
    sql_add(q, "updated_at = now()");
}

/* "$first::type[], ..." for `count` parameters. */
static void sql_arrays(sql_text *q, int first, int count, const char *type)
{
    for (int i = 0; i < count; i++)
        sql_add(q, "%s$%d::%s[]", first + i > 1 ? ", " : "", first + i, type);
}

static void build_hourly_upsert(sql_text *q)
{
    const char *const *dims = text_dimensions;
    int dim_count = ROLLUP_TEXT_DIMENSION_COUNT;
    sql_add(q, "WITH hourly AS (INSERT INTO usage_hourly AS u (");
    sql_names(q, dims, dim_count, false);
    sql_add(q, ", hour");
    sql_names(q, measures, ROLLUP_MEASURE_COUNT, true);
    sql_add(q, ") SELECT ");
    sql_names(q, dims, dim_count, false);
    sql_add(q, ", to_timestamp(hour)");
    sql_names(q, measures, ROLLUP_MEASURE_COUNT, true);
    sql_add(q, " FROM unnest(");
    sql_arrays(q, 1, dim_count, "text");
    sql_arrays(q, dim_count + 1, 1 + ROLLUP_MEASURE_COUNT, "bigint");
    sql_add(q, ") AS t (");
    sql_names(q, dims, dim_count, false);
    sql_add(q, ", hour");
    sql_names(q, measures, ROLLUP_MEASURE_COUNT, true);
    /* Primary-key order: the key, the hour, then the other dimensions. */
    sql_add(q, ") ORDER BY %s, hour", dims[0]);
    sql_names(q, dims + 1, dim_count - 1, true);
    sql_add(q, " ON CONFLICT (%s, hour", dims[0]);
    sql_names(q, dims + 1, dim_count - 1, true);
    sql_add(q, ") DO UPDATE SET ");
    sql_sums(q, "u");
    sql_add(q, " RETURNING 1)");
}

static void build_counter_upsert(sql_text *q)
{
    int first = ROLLUP_HOURLY_COLUMNS + 1;
    sql_add(q, ", counters AS (INSERT INTO usage_counters AS c (key_id, period, period_start");
    sql_names(q, measures, ROLLUP_MEASURE_COUNT, true);
    sql_add(q, ") SELECT key_id, period, to_timestamp(period_start)");
    sql_names(q, measures, ROLLUP_MEASURE_COUNT, true);
    sql_add(q, " FROM unnest($%d::text[], $%d::text[]", first, first + 1);
    sql_arrays(q, first + 2, 1 + ROLLUP_MEASURE_COUNT, "bigint");
    sql_add(q, ") AS t (key_id, period, period_start");
    sql_names(q, measures, ROLLUP_MEASURE_COUNT, true);
    /* hourly first: one lock order for all */
    sql_add(q, ") WHERE (SELECT count(*) FROM hourly) >= 0 ORDER BY key_id, period, period_start"
               " ON CONFLICT (key_id, period, period_start) DO UPDATE SET ");
    sql_sums(q, "c");
    sql_add(q, " RETURNING c.key_id, c.period, c.period_start, c.units)");
}

/* Threshold alerts, in the statement (and so the transaction) that moved
 * the counters: each counter's units went from (new - this batch's) to
 * new, under the row lock the upsert holds, so concurrent collectors see
 * consecutive, non-overlapping moves; tally_raise_quota_alerts (migration
 * 006) raises the thresholds crossed, once each. One set-based call per
 * batch. */
static void build_alert_call(sql_text *q)
{
    int first = ROLLUP_HOURLY_COLUMNS + 1;
    int units = first + 3 + ROLLUP_MEASURE_UNITS;
    sql_add(q, " SELECT tally_raise_quota_alerts(array_agg(n.key_id), array_agg(n.period),"
               " array_agg(n.period_start), array_agg(n.units - d.units), array_agg(n.units))"
               " FROM counters n JOIN unnest($%d::text[], $%d::text[], $%d::bigint[],"
               " $%d::bigint[]) AS d (key_id, period, period_start, units)"
               " ON d.key_id = n.key_id AND d.period = n.period"
               " AND to_timestamp(d.period_start) = n.period_start",
            first, first + 1, first + 2, units);
}

/* The phase B statement, derived from rollupcols.h; false if it does not
 * fit (a programming error, found by the first connection). */
static bool build_rollup_sql(char *out, size_t size)
{
    sql_text q = {out, size, 0, false};
    build_hourly_upsert(&q);
    build_counter_upsert(&q);
    build_alert_call(&q);
    return !q.overflow;
}

store *store_new(const char *url, int lateness_days)
{
    store *st = calloc(1, sizeof *st);
    if (st) {
        st->url = url;
        st->lateness_days = lateness_days;
        buf_init(&st->params, 64u << 20);
        if (!build_rollup_sql(st->rollup_sql, sizeof st->rollup_sql)) {
            free(st);
            return NULL;
        }
    }
    return st;
}

void store_disconnect(store *st)
{
    if (st->kept) {
        PQclear(st->kept);
        st->kept = NULL;
    }
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
    buf_free(&st->params);
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
    /* A lock held past SESSION_LOCK_TIMEOUT (a schema change on event_ids
     * waiting behind a transaction, say) fails the write as a transient
     * error, retried, instead of freezing the collector. Rows the writers
     * share are held for a commit's time, far less. */
    /* JIT compilation costs more than it saves on statements that run a few
     * times a second (the planner cannot see how small the arrays are). */
    if (!db_exec(st->conn, "SET jit = off", "configuring the session", err, err_size) ||
        !db_exec(st->conn, "SET lock_timeout = '" SESSION_LOCK_TIMEOUT "'",
                 "configuring the session", err, err_size) ||
        !prepare(st->conn, "inserts", sql_inserts, 2, "preparing the deduplication statement",
                 err, err_size) ||
        !prepare(st->conn, "rollups", st->rollup_sql, STORE_ROLLUP_PARAMS,
                 "preparing the rollup statement", err, err_size) ||
        !prepare(st->conn, "status", status_upsert_sql, STATUS_PARAMS,
                 "preparing the status statement", err, err_size) ||
        !prepare(st->conn, "notify", sql_notify, 1, "preparing the counters' change notice",
                 err, err_size)) {
        store_disconnect(st);
        return false;
    }
    /* Sends never block: the collector parses the next batch meanwhile. */
    PQsetnonblocking(st->conn, 1);
    return true;
}

static bool fill_cache(PGresult *res, keyplans *cache, char *err, size_t err_size)
{
    for (int i = 0; i < PQntuples(res); i++) {
        if (!keyplans_put(cache, PQgetvalue(res, i, 0), PQgetvalue(res, i, 1))) {
            snprintf(err, err_size, "loading keys: out of memory");
            return false;
        }
    }
    return true;
}

/* Adds the keys of a key query's result (cleared here) to `cache`. */
static bool take_keys(store *st, PGresult *res, const char *what, keyplans *cache, char *err,
                      size_t err_size)
{
    bool ok = PQresultStatus(res) == PGRES_TUPLES_OK;
    if (!ok)
        db_error(st->conn, res, what, err, err_size);
    else
        ok = fill_cache(res, cache, err, err_size);
    PQclear(res);
    return ok;
}

bool store_load_keys(store *st, keyplans *cache, char *err, size_t err_size)
{
    if (!store_ensure_connected(st, err, err_size))
        return false;
    PGresult *res = PQexec(st->conn, "SELECT id, coalesce(plan_id, '') FROM api_keys");
    return take_keys(st, res, "loading API keys", cache, err, err_size);
}

bool store_lookup_keys(store *st, const char *const *ids, size_t count, keyplans *cache,
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
    bool ok = take_keys(st, res, "looking up unknown API keys", cache, err, err_size);
    buf_free(&array);
    return ok;
}

/* Creating or dropping a partition locks event_ids exclusively, so it waits
 * for every open transaction that wrote to it, and every later writer
 * (this collector's other writers, other collectors) queues behind it. A
 * short lock_timeout makes it give up instead (and try again later) when a
 * transaction stays open, rather than stall everyone. */
#define MAINTENANCE_LOCK_TIMEOUT "2s"

static bool run_maintenance(store *st, int *created, int *dropped, char *err, size_t err_size)
{
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

bool store_maintain_partitions(store *st, int *created, int *dropped, char *err, size_t err_size)
{
    if (!store_begin(st, err, err_size))
        return false;
    bool ok = exec_step(st, "SET LOCAL lock_timeout = '" MAINTENANCE_LOCK_TIMEOUT "'",
                        "limiting the partition upkeep's lock wait", err, err_size) &&
              run_maintenance(st, created, dropped, err, err_size) &&
              store_commit(st, err, err_size);
    if (!ok)
        store_rollback(st);
    return ok;
}

static bool put_int32(buf *b, int32_t value)
{
    uint8_t be[4] = {(uint8_t)((uint32_t)value >> 24), (uint8_t)((uint32_t)value >> 16),
                     (uint8_t)((uint32_t)value >> 8), (uint8_t)value};
    return buf_append(b, be, 4);
}

/* A one-dimensional array in PostgreSQL's binary format: header, then each
 * element as length + bytes (`elem_size` bytes from `items`, or int32s). */
static bool put_binary_array(buf *b, uint32_t element_type, const void *items, size_t count,
                             int elem_size)
{
    bool ok = put_int32(b, 1) && put_int32(b, 0) && put_int32(b, (int32_t)element_type) &&
              put_int32(b, (int32_t)count) && put_int32(b, 1);
    for (size_t i = 0; ok && i < count; i++) {
        ok = put_int32(b, elem_size);
        if (ok && element_type == 23)
            ok = put_int32(b, ((const int32_t *)items)[i]);
        else if (ok)
            ok = buf_append(b, (const uint8_t *)items + i * (size_t)elem_size, (size_t)elem_size);
    }
    return ok;
}

static void begin_exchange(store *st, int keep)
{
    st->statements = 0;
    st->completed = 0;
    st->keep = keep;
    st->failed = false;
    st->failure[0] = '\0';
    st->last_error = STORE_ERROR_TRANSIENT;
}

static bool send_failed(store *st, const char *what, char *err, size_t err_size)
{
    db_error(st->conn, NULL, what, err, err_size);
    st->last_error = STORE_ERROR_TRANSIENT;
    store_disconnect(st);
    return false;
}

/* The two binary array parameters of the deduplication statement. */
typedef struct {
    const char *values[2];
    int lengths[2];
    int formats[2];
} digest_params;

static bool build_digest_params(store *st, const uint8_t *digests, const int32_t *week_days,
                                size_t count, digest_params *out, char *err, size_t err_size)
{
    enum { UUID_OID = 2950, INT4_OID = 23 };
    buf_reset(&st->params);
    bool built = put_binary_array(&st->params, UUID_OID, digests, count, 16);
    size_t split = st->params.len;
    built = built && put_binary_array(&st->params, INT4_OID, week_days, count, 4);
    if (!built) {
        snprintf(err, err_size, "batch too large for its parameter buffer");
        st->last_error = STORE_ERROR_TRANSIENT;
        return false;
    }
    *out = (digest_params){{st->params.data, st->params.data + split},
                           {(int)split, (int)(st->params.len - split)},
                           {1, 1}};
    return true;
}

/* The fourteen array literals of the rollup statement, in its order. */
static void rollup_values(const buf *hourly, const buf *counters,
                          const char *values[STORE_ROLLUP_PARAMS])
{
    for (int i = 0; i < ROLLUP_HOURLY_COLUMNS; i++)
        values[i] = hourly[i].data;
    for (int i = 0; i < ROLLUP_COUNTER_COLUMNS; i++)
        values[ROLLUP_HOURLY_COLUMNS + i] = counters[i].data;
}

bool store_send_inserts(store *st, const uint8_t *digests, const int32_t *week_days,
                        size_t count, char *err, size_t err_size)
{
    digest_params p;
    if (!store_ensure_connected(st, err, err_size) ||
        !build_digest_params(st, digests, week_days, count, &p, err, err_size))
        return false;
    begin_exchange(st, 1);
    if (!PQenterPipelineMode(st->conn) ||
        !PQsendQueryParams(st->conn, "BEGIN", 0, NULL, NULL, NULL, NULL, 0) ||
        !PQsendQueryPrepared(st->conn, "inserts", 2, p.values, p.lengths, p.formats, 1) ||
        !PQpipelineSync(st->conn))
        return send_failed(st, "sending the batch's event digests", err, err_size);
    st->statements = 2;
    st->unflushed = PQflush(st->conn) == 1;
    return true;
}

/* Queues the change notice of the counters in `counters` (sql_notify). */
static bool send_counters_notice(store *st, const buf *counters)
{
    const char *values[1] = {counters[0].data}; /* the key_id column */
    return PQsendQueryPrepared(st->conn, "notify", 1, values, NULL, NULL, 0) == 1;
}

bool store_send_rollups(store *st, const buf *hourly, const buf *counters, bool nothing_new,
                        char *err, size_t err_size)
{
    begin_exchange(st, -1);
    const char *const *status = st->status; /* this exchange's only, sent or not */
    st->status = NULL;
    const char *values[STORE_ROLLUP_PARAMS];
    rollup_values(hourly, counters, values);
    if (!PQenterPipelineMode(st->conn) ||
        (!nothing_new &&
         (!PQsendQueryPrepared(st->conn, "rollups", STORE_ROLLUP_PARAMS, values, NULL, NULL, 0) ||
          !send_counters_notice(st, counters))) ||
        (status != NULL &&
         !PQsendQueryPrepared(st->conn, "status", STATUS_PARAMS, status, NULL, NULL, 0)) ||
        !PQsendQueryParams(st->conn, "COMMIT", 0, NULL, NULL, NULL, NULL, 0) ||
        !PQpipelineSync(st->conn))
        return send_failed(st, "sending the batch's rollups", err, err_size);
    /* rollups and notice, or nothing new; the status row; COMMIT */
    st->statements = (nothing_new ? 1 : 3) + (status != NULL ? 1 : 0);
    st->unflushed = PQflush(st->conn) == 1;
    return true;
}

bool store_write_status(store *st, const char *const *values, char *err, size_t err_size)
{
    if (!store_ensure_connected(st, err, err_size))
        return false;
    PGresult *res = PQexecPrepared(st->conn, "status", STATUS_PARAMS, values, NULL, NULL, 0);
    bool ok = PQresultStatus(res) == PGRES_COMMAND_OK;
    if (!ok)
        db_error(st->conn, res, "updating the collector's status row", err, err_size);
    PQclear(res);
    return ok;
}

bool store_pollfd(const store *st, struct pollfd *pfd)
{
    if (st->conn == NULL || PQsocket(st->conn) < 0)
        return false;
    *pfd = (struct pollfd){PQsocket(st->conn), (short)(POLLIN | (st->unflushed ? POLLOUT : 0)),
                           0};
    return true;
}

void store_stage_status(store *st, const char *const *values)
{
    st->status = values;
}

store_progress store_poll(store *st, PGresult **kept, char *err, size_t err_size)
{
    *kept = NULL;
    int flushed = PQflush(st->conn);
    st->unflushed = flushed == 1;
    if (flushed < 0 || !PQconsumeInput(st->conn)) {
        db_error(st->conn, NULL, "talking to PostgreSQL", err, err_size);
        store_disconnect(st);
        return STORE_FAILED;
    }
    while (!PQisBusy(st->conn)) {
        PGresult *res = PQgetResult(st->conn);
        if (res == NULL) {
            st->completed++; /* the end of one statement's results */
            if (st->completed > st->statements + 1) {
                snprintf(err, err_size, "talking to PostgreSQL: pipeline out of step");
                store_disconnect(st);
                return STORE_FAILED;
            }
            continue;
        }
        ExecStatusType status = PQresultStatus(res);
        if (status == PGRES_PIPELINE_SYNC) {
            PQclear(res);
            bool ok = !st->failed && PQexitPipelineMode(st->conn) == 1;
            if (!ok) {
                snprintf(err, err_size, "%s",
                         st->failed ? st->failure : "leaving pipeline mode failed");
                store_disconnect(st); /* rolls the transaction back */
                return STORE_FAILED;
            }
            *kept = st->kept;
            st->kept = NULL;
            return STORE_DONE;
        }
        if (status == PGRES_FATAL_ERROR || status == PGRES_PIPELINE_ABORTED) {
            if (!st->failed) {
                db_error(st->conn, res, "writing the batch", st->failure,
                         sizeof st->failure);
                st->last_error = classify_sqlstate(db_sqlstate(res));
            }
            st->failed = true;
        } else if (st->completed == st->keep && st->kept == NULL) {
            st->kept = res;
            continue;
        }
        PQclear(res);
    }
    return STORE_PENDING;
}

/* ---- one part of a batch, synchronously (isolating poison events) ------ */

/* The failure of a synchronous step: message, kind; a lost connection is
 * dropped (the server rolls its transaction back). */
static bool step_failed(store *st, PGresult *res, const char *what, char *err, size_t err_size)
{
    db_error(st->conn, res, what, err, err_size);
    st->last_error = db_connection_lost(st->conn) ? STORE_ERROR_TRANSIENT
                                                  : classify_sqlstate(db_sqlstate(res));
    PQclear(res);
    if (db_connection_lost(st->conn))
        store_disconnect(st);
    return false;
}

static bool exec_step(store *st, const char *sql, const char *what, char *err, size_t err_size)
{
    PGresult *res = PQexec(st->conn, sql);
    if (PQresultStatus(res) != PGRES_COMMAND_OK)
        return step_failed(st, res, what, err, err_size);
    PQclear(res);
    return true;
}

bool store_begin(store *st, char *err, size_t err_size)
{
    st->last_error = STORE_ERROR_TRANSIENT;
    return store_ensure_connected(st, err, err_size) &&
           exec_step(st, "BEGIN", "starting a transaction", err, err_size);
}

PGresult *store_insert_digests(store *st, const uint8_t *digests, const int32_t *week_days,
                               size_t count, char *err, size_t err_size)
{
    digest_params p;
    if (!build_digest_params(st, digests, week_days, count, &p, err, err_size))
        return NULL;
    PGresult *res = PQexecPrepared(st->conn, "inserts", 2, p.values, p.lengths, p.formats, 1);
    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        step_failed(st, res, "recording event digests", err, err_size);
        return NULL;
    }
    return res;
}

bool store_add_rollups(store *st, const buf *hourly, const buf *counters, char *err,
                       size_t err_size)
{
    const char *values[STORE_ROLLUP_PARAMS];
    rollup_values(hourly, counters, values);
    PGresult *res =
        PQexecPrepared(st->conn, "rollups", STORE_ROLLUP_PARAMS, values, NULL, NULL, 0);
    if (PQresultStatus(res) != PGRES_TUPLES_OK) /* it ends with the alerts' SELECT */
        return step_failed(st, res, "adding to the rollups", err, err_size);
    PQclear(res);
    const char *ids[1] = {counters[0].data};
    res = PQexecPrepared(st->conn, "notify", 1, ids, NULL, NULL, 0);
    if (PQresultStatus(res) != PGRES_TUPLES_OK)
        return step_failed(st, res, "announcing the changed counters", err, err_size);
    PQclear(res);
    return true;
}

bool store_commit(store *st, char *err, size_t err_size)
{
    return exec_step(st, "COMMIT", "committing", err, err_size);
}

void store_rollback(store *st)
{
    if (store_is_connected(st)) {
        PGresult *res = PQexec(st->conn, "ROLLBACK");
        if (PQresultStatus(res) != PGRES_COMMAND_OK)
            store_disconnect(st); /* unknown state: start afresh */
        PQclear(res);
    }
}
