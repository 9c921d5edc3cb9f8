/* Thin helpers over libpq shared by the services. Library code: errors go
 * into the caller's buffer (with what was being done), never to a log. */
#ifndef TALLY_DB_H
#define TALLY_DB_H

#include <libpq-fe.h>
#include <stdbool.h>
#include <stddef.h>

#include "buf.h"

/* Connects to `url` (a libpq connection string or URI; borrowed) as
 * `application_name`, with TimeZone UTC and client_encoding UTF8. Returns a
 * new connection the caller owns, or NULL with err filled in. */
PGconn *db_connect(const char *url, const char *application_name, char *err, size_t err_size);
/* Runs a statement without parameters; true when it succeeded. */
bool db_exec(PGconn *conn, const char *sql, const char *what, char *err, size_t err_size)
    __attribute__((warn_unused_result));
/* True when the connection is gone (reconnect), as opposed to a failed
 * statement on a live connection. */
bool db_connection_lost(PGconn *conn);
/* Fills err with "<what>: <server message>" for a failed result (borrowed)
 * or, when res is NULL, the connection's message. */
void db_error(PGconn *conn, const PGresult *res, const char *what, char *err, size_t err_size);
/* The SQLSTATE of a failed result, or "" when there is none. */
const char *db_sqlstate(const PGresult *res);
/* Appends a PostgreSQL text[] literal of `count` strings ({"a","b\"c"}),
 * for a parameter cast to text[]; false when the buffer's limit is hit. */
bool db_append_text_array(buf *out, const char *const *items, size_t count)
    __attribute__((warn_unused_result));
/* Appends one element of an array literal: "text", with " and \\ escaped. */
bool db_append_array_element(buf *out, const char *text) __attribute__((warn_unused_result));

#endif
