#include "db.h"

#include <stdio.h>
#include <string.h>

PGconn *db_connect(const char *url, const char *application_name, char *err, size_t err_size)
{
    /* expand_dbname=1 lets `url` be a full connection string or URI while
     * the keywords after it fill in only what it does not set. */
    /* TCP keepalives notice a server that vanished without closing the
     * connection (a dead host, a cut network) in about 25 s instead of the
     * kernel's default of hours. */
    const char *keys[] = {"dbname",          "application_name",    "connect_timeout",
                          "client_encoding", "keepalives_idle",     "keepalives_interval",
                          "keepalives_count", NULL};
    const char *values[] = {url, application_name, "5", "UTF8", "10", "5", "3", NULL};
    PGconn *conn = PQconnectdbParams(keys, values, 1);
    if (conn == NULL) {
        snprintf(err, err_size, "connecting to PostgreSQL: out of memory");
        return NULL;
    }
    if (PQstatus(conn) != CONNECTION_OK) {
        db_error(conn, NULL, "connecting to PostgreSQL", err, err_size);
        PQfinish(conn);
        return NULL;
    }
    if (!db_exec(conn, "SET TimeZone TO 'UTC'", "setting the session time zone", err, err_size)) {
        PQfinish(conn);
        return NULL;
    }
    return conn;
}

void db_error(PGconn *conn, const PGresult *res, const char *what, char *err, size_t err_size)
{
    const char *message = res ? PQresultErrorMessage(res) : PQerrorMessage(conn);
    if (message == NULL || message[0] == '\0')
        message = PQerrorMessage(conn);
    size_t len = strlen(message);
    while (len > 0 && (message[len - 1] == '\n' || message[len - 1] == ' '))
        len--;
    snprintf(err, err_size, "%s: %.*s", what, (int)len, message);
}

bool db_exec(PGconn *conn, const char *sql, const char *what, char *err, size_t err_size)
{
    PGresult *res = PQexec(conn, sql);
    ExecStatusType status = PQresultStatus(res);
    bool ok = status == PGRES_COMMAND_OK || status == PGRES_TUPLES_OK;
    if (!ok)
        db_error(conn, res, what, err, err_size);
    PQclear(res);
    return ok;
}

bool db_connection_lost(PGconn *conn)
{
    return conn == NULL || PQstatus(conn) != CONNECTION_OK;
}

const char *db_sqlstate(const PGresult *res)
{
    const char *state = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
    return state ? state : "";
}

bool db_append_array_element(buf *out, const char *text)
{
    if (!buf_append(out, "\"", 1))
        return false;
    const char *run = text;
    for (const char *p = text; *p; p++) {
        if (*p == '"' || *p == '\\') {
            if (!buf_append(out, run, (size_t)(p - run)) || !buf_append(out, "\\", 1))
                return false;
            run = p; /* the quote or backslash itself starts the next run */
        }
    }
    return buf_append_str(out, run) && buf_append(out, "\"", 1);
}

bool db_append_text_array(buf *out, const char *const *items, size_t count)
{
    if (!buf_append(out, "{", 1))
        return false;
    for (size_t i = 0; i < count; i++) {
        if ((i > 0 && !buf_append(out, ",", 1)) || !db_append_array_element(out, items[i]))
            return false;
    }
    return buf_append(out, "}", 1);
}
