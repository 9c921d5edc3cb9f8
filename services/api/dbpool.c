/* A small pool of PostgreSQL connections shared by the worker threads.
 * libpq connections are not thread-safe, so each is lent to one request at a
 * time under a mutex; a lost connection is dropped and reopened on next use,
 * so the api rides out a database restart. */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "api.h"
#include "db.h"
#include "log.h"
#include "timeutil.h"

#define DBPOOL_MAX 32
/* The waits a request may spend on the database, so that a slow or locked
 * database answers 503 soon rather than letting requests pile up on the
 * database workers (authorize never waits on them: it runs on
 * libmicrohttpd's threads): a statement runs at most this long... */
#define DBPOOL_STATEMENT_TIMEOUT "5s"
/* ...and a request waits at most this long from its arrival for a free
 * connection, time spent queued for a worker included. */
#define DBPOOL_WAIT_MS 2000

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t available = PTHREAD_COND_INITIALIZER;
static PGconn *idle[DBPOOL_MAX]; /* NULL slots: not connected yet (or dropped) */
static bool lent[DBPOOL_MAX];
/* Statements prepared on each slot's current connection (owned copies of
 * their SQL; the statement name is "p<index>"). Parsing and planning a
 * statement costs more than running the small ones here, so each is
 * prepared once per connection. Only the thread the slot is lent to
 * touches its entries. */
#define PREPARED_MAX 48
static char *prepared[DBPOOL_MAX][PREPARED_MAX];
static int prepared_count[DBPOOL_MAX];
static int pool_size;
static const char *database_url;

/* A new connection with the api's session settings (db_connect is shared
 * with the collector, whose batches may rightly run longer). */
static PGconn *open_connection(char *err, size_t err_size)
{
    PGconn *conn = db_connect(database_url, "tally-api", err, err_size);
    if (conn != NULL && !db_exec(conn, "SET statement_timeout = '" DBPOOL_STATEMENT_TIMEOUT "'",
                                 "setting statement_timeout", err, err_size)) {
        PQfinish(conn);
        conn = NULL;
    }
    return conn;
}

bool dbpool_init(const char *url, int size, char *err, size_t err_size)
{
    if (size < 1 || size > DBPOOL_MAX) {
        snprintf(err, err_size, "database pool size must be 1..%d", DBPOOL_MAX);
        return false;
    }
    database_url = url;
    pool_size = size;
    /* One connection at start proves the settings; the rest open on demand. */
    idle[0] = open_connection(err, err_size);
    return idle[0] != NULL;
}

void dbpool_destroy(void)
{
    pthread_mutex_lock(&lock);
    for (int i = 0; i < pool_size; i++) {
        if (idle[i] && !lent[i]) {
            PQfinish(idle[i]);
            idle[i] = NULL;
        }
        for (int j = 0; j < prepared_count[i]; j++)
            free(prepared[i][j]);
        prepared_count[i] = 0;
    }
    pthread_mutex_unlock(&lock);
}

/* Takes a slot; returns its index, or -1 when none came free by `until`
 * (usec, CLOCK_REALTIME like time_now_usec). A free slot is taken even when
 * `until` has passed already. */
static int take_slot(int64_t until)
{
    struct timespec deadline;
    deadline.tv_sec = (time_t)(until / USEC_PER_SEC);
    deadline.tv_nsec = (long)(until % USEC_PER_SEC) * 1000L;
    pthread_mutex_lock(&lock);
    for (;;) {
        int free_slot = -1;
        for (int i = 0; i < pool_size; i++) {
            if (!lent[i] && idle[i] != NULL) {
                free_slot = i;
                break;
            }
            if (!lent[i] && free_slot < 0)
                free_slot = i;
        }
        if (free_slot >= 0) {
            lent[free_slot] = true;
            pthread_mutex_unlock(&lock);
            return free_slot;
        }
        if (pthread_cond_timedwait(&available, &lock, &deadline) == ETIMEDOUT) {
            pthread_mutex_unlock(&lock);
            return -1;
        }
    }
}

static void give_slot(int slot, PGconn *conn)
{
    pthread_mutex_lock(&lock);
    idle[slot] = conn;
    lent[slot] = false;
    pthread_cond_signal(&available);
    pthread_mutex_unlock(&lock);
}

static void set_slot(int slot, PGconn *conn)
{
    pthread_mutex_lock(&lock);
    idle[slot] = conn;
    pthread_mutex_unlock(&lock);
}

/* The slot's connection, (re)opened when needed. The slot is lent to the
 * calling thread, so no other thread uses its connection meanwhile. */
static PGconn *connect_slot(int slot, char *err, size_t err_size)
{
    pthread_mutex_lock(&lock);
    PGconn *conn = idle[slot];
    pthread_mutex_unlock(&lock);
    if (conn != NULL && PQstatus(conn) == CONNECTION_OK)
        return conn;
    if (conn != NULL) {
        set_slot(slot, NULL);
        PQfinish(conn);
    }
    for (int i = 0; i < prepared_count[slot]; i++) {
        free(prepared[slot][i]);
        prepared[slot][i] = NULL;
    }
    prepared_count[slot] = 0;
    conn = open_connection(err, err_size);
    set_slot(slot, conn);
    return conn;
}

/* The slot `conn` is lent from, or -1 when it is not a pooled connection. */
static int lent_slot_of(const PGconn *conn)
{
    pthread_mutex_lock(&lock);
    int slot = -1;
    for (int i = 0; i < pool_size; i++) {
        if (lent[i] && idle[i] == conn) {
            slot = i;
            break;
        }
    }
    pthread_mutex_unlock(&lock);
    return slot;
}

PGconn *dbpool_acquire(api_request *req)
{
    int64_t arrived = req->received_at != 0 ? req->received_at : time_now_usec();
    int slot = take_slot(arrived + DBPOOL_WAIT_MS * (int64_t)1000);
    if (slot < 0) {
        log_warn("%s: no database connection came free within %d ms of the request's arrival",
                 apiroute_label(req->route), DBPOOL_WAIT_MS);
        api_add_header(req, "Retry-After", "1");
        api_reply_error(req, 503, "database_busy",
                        "every database connection is busy; try again shortly");
        return NULL;
    }
    char err[512];
    PGconn *conn = connect_slot(slot, err, sizeof err);
    if (conn == NULL) {
        give_slot(slot, NULL);
        log_error("%s: %s", apiroute_label(req->route), err);
        api_reply_error(req, 503, "database_unavailable",
                        "the database is unreachable; try again shortly");
        return NULL;
    }
    return conn;
}

void dbpool_release(PGconn *conn)
{
    int slot = lent_slot_of(conn);
    if (slot < 0) {
        PQfinish(conn);
        return;
    }
    /* A connection left inside a transaction (a failed handler) is reset. */
    if (PQtransactionStatus(conn) != PQTRANS_IDLE) {
        PGresult *res = PQexec(conn, "ROLLBACK");
        PQclear(res);
        if (PQtransactionStatus(conn) != PQTRANS_IDLE) {
            PQfinish(conn);
            conn = NULL;
        }
    }
    if (conn != NULL && PQstatus(conn) != CONNECTION_OK) {
        PQfinish(conn);
        conn = NULL;
    }
    give_slot(slot, conn);
}

bool dbpool_ping(char *err, size_t err_size)
{
    int slot = take_slot(time_now_usec() + DBPOOL_WAIT_MS * (int64_t)1000);
    if (slot < 0) {
        snprintf(err, err_size, "every database connection is busy");
        return false;
    }
    PGconn *conn = connect_slot(slot, err, err_size);
    if (conn == NULL) {
        give_slot(slot, NULL);
        return false;
    }
    bool ok = db_exec(conn, "SELECT 1", "checking the database", err, err_size);
    if (!ok && PQstatus(conn) != CONNECTION_OK) {
        PQfinish(conn);
        conn = NULL;
    }
    give_slot(slot, conn);
    return ok;
}

PGresult *api_exec(PGconn *conn, const char *sql, int count, const char *const *params)
{
    int slot = lent_slot_of(conn);
    if (slot >= 0) {
        int index = -1;
        for (int i = 0; i < prepared_count[slot]; i++) {
            if (strcmp(prepared[slot][i], sql) == 0) {
                index = i;
                break;
            }
        }
        char name[16];
        if (index < 0 && prepared_count[slot] < PREPARED_MAX) {
            snprintf(name, sizeof name, "p%d", prepared_count[slot]);
            PGresult *res = PQprepare(conn, name, sql, count, NULL);
            if (PQresultStatus(res) != PGRES_COMMAND_OK)
                return res; /* its error (e.g. statement_timeout) is the answer: not run twice */
            PQclear(res);
            char *copy = strdup(sql);
            if (copy == NULL) {
                /* Run it this once and forget it, so the name is free again. */
                res = PQexecPrepared(conn, name, count, params, NULL, NULL, 0);
                char drop[32];
                snprintf(drop, sizeof drop, "DEALLOCATE %s", name);
                PQclear(PQexec(conn, drop));
                return res;
            }
            index = prepared_count[slot]++;
            prepared[slot][index] = copy;
        }
        if (index >= 0) {
            snprintf(name, sizeof name, "p%d", index);
            return PQexecPrepared(conn, name, count, params, NULL, NULL, 0);
        }
    }
    /* Not a pooled connection, or a full registry. */
    return PQexecParams(conn, sql, count, NULL, params, NULL, NULL, 0);
}

bool api_ok(const PGresult *res)
{
    ExecStatusType status = PQresultStatus(res);
    return status == PGRES_COMMAND_OK || status == PGRES_TUPLES_OK;
}

const char *api_field(const PGresult *res, int row, int col)
{
    return PQgetisnull(res, row, col) ? NULL : PQgetvalue(res, row, col);
}

long long api_field_int(const PGresult *res, int row, int col)
{
    return PQgetisnull(res, row, col) ? 0 : strtoll(PQgetvalue(res, row, col), NULL, 10);
}
