/* Listening for PostgreSQL notices on one channel (keynotify.h). */
#include "keynotify.h"

#include <errno.h>
#include <libpq-fe.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "db.h"
#include "log.h"
#include "timeutil.h"

/* How often the thread looks at its stop flag while no notice comes, and
 * how long it waits between failed connection attempts. */
#define KEYNOTIFY_POLL_MS 200
#define KEYNOTIFY_RETRY_USEC (1 * USEC_PER_SEC)

struct keynotify {
    const char *url, *channel;
    keynotify_handler handler;
    PGconn *conn; /* the thread's once started; NULL while disconnected */
    pthread_t thread;
    atomic_bool stopping;
};

/* A new connection LISTENing on the channel, or NULL with err. */
static PGconn *listen_connect(const keynotify *listener, char *err, size_t err_size)
{
    PGconn *conn = db_connect(listener->url, "tally-api-keynotify", err, err_size);
    if (conn == NULL)
        return NULL;
    char sql[128];
    snprintf(sql, sizeof sql, "LISTEN %s", listener->channel);
    if (!db_exec(conn, sql, "listening for notices", err, err_size)) {
        PQfinish(conn);
        return NULL;
    }
    return conn;
}

/* Waits up to KEYNOTIFY_POLL_MS for input and hands every notice received
 * to the handler. False when the connection is gone. */
static bool receive_notices(keynotify *listener, char *err, size_t err_size)
{
    PGconn *conn = listener->conn;
    struct pollfd pfd = {PQsocket(conn), POLLIN, 0};
    int ready = poll(&pfd, 1, KEYNOTIFY_POLL_MS);
    if (ready < 0 && errno != EINTR) {
        snprintf(err, err_size, "waiting for notices: %s", strerror(errno));
        return false;
    }
    if (ready > 0 && !PQconsumeInput(conn)) {
        db_error(conn, NULL, "receiving notices", err, err_size);
        return false;
    }
    PGnotify *notice;
    while ((notice = PQnotifies(conn)) != NULL) {
        listener->handler.changed(listener->handler.context, notice->extra);
        PQfreemem(notice);
    }
    if (PQstatus(conn) != CONNECTION_OK) {
        db_error(conn, NULL, "receiving notices", err, err_size);
        return false;
    }
    return true;
}

static void *listen_thread(void *arg)
{
    keynotify *listener = arg;
    int64_t retry_at = 0, last_error_log = 0;
    char err[512];
    while (!atomic_load(&listener->stopping)) {
        if (listener->conn == NULL) {
            int64_t now = time_now_usec();
            if (now < retry_at) {
                poll(NULL, 0, KEYNOTIFY_POLL_MS);
                continue;
            }
            listener->conn = listen_connect(listener, err, sizeof err);
            if (listener->conn == NULL) {
                retry_at = now + KEYNOTIFY_RETRY_USEC;
                if (now - last_error_log > 10 * USEC_PER_SEC) {
                    log_warn("%s (retrying every second)", err);
                    last_error_log = now;
                }
                continue;
            }
            log_info("listening on %s again", listener->channel);
            /* Whatever was announced before this LISTEN is lost. */
            listener->handler.lost(listener->handler.context);
        }
        if (!receive_notices(listener, err, sizeof err)) {
            log_warn("%s; listening again", err);
            PQfinish(listener->conn);
            listener->conn = NULL;
        }
    }
    return NULL;
}

keynotify *keynotify_start(const char *url, const char *channel, keynotify_handler handler)
{
    keynotify *listener = calloc(1, sizeof *listener);
    if (listener == NULL) {
        log_warn("out of memory starting the listener on %s", channel);
        return NULL;
    }
    *listener = (keynotify){.url = url, .channel = channel, .handler = handler};
    atomic_init(&listener->stopping, false);
    char err[512];
    /* Before the caller's first read; when it fails, the thread's later
     * connection reports the gap (`lost`). */
    listener->conn = listen_connect(listener, err, sizeof err);
    if (listener->conn == NULL)
        log_warn("%s (retrying every second)", err);
    if (pthread_create(&listener->thread, NULL, listen_thread, listener) != 0) {
        log_warn("cannot start the listener on %s", channel);
        if (listener->conn != NULL)
            PQfinish(listener->conn);
        free(listener);
        return NULL;
    }
    return listener;
}

void keynotify_stop(keynotify *listener)
{
    if (listener == NULL)
        return;
    atomic_store(&listener->stopping, true);
    pthread_join(listener->thread, NULL);
    if (listener->conn != NULL)
        PQfinish(listener->conn);
    free(listener);
}
