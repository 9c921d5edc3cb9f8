/* Listening for the collector's counter change notices (keynotify.h). */
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
#include "keycache.h"
#include "log.h"
#include "rollupcols.h"
#include "timeutil.h"

/* How often the thread looks at its stop flag while no notice comes, and
 * waits between failed connection attempts. */
#define KEYNOTIFY_POLL_MS 200
#define KEYNOTIFY_RETRY_USEC (1 * USEC_PER_SEC)

struct keynotify {
    const char *url;
    pthread_t thread;
    atomic_bool stopping;
};

/* A new connection LISTENing on the channel, or NULL with err. */
static PGconn *listen_connect(const char *url, char *err, size_t err_size)
{
    PGconn *conn = db_connect(url, "tally-api-keynotify", err, err_size);
    if (conn == NULL)
        return NULL;
    if (!db_exec(conn, "LISTEN " ROLLUP_COUNTERS_CHANNEL, "listening for counter changes", err,
                 err_size)) {
        PQfinish(conn);
        return NULL;
    }
    return conn;
}

/* Waits up to KEYNOTIFY_POLL_MS for input and hands every notice received
 * to the cache. False when the connection is gone. */
static bool receive_notices(PGconn *conn, char *err, size_t err_size)
{
    struct pollfd pfd = {PQsocket(conn), POLLIN, 0};
    int ready = poll(&pfd, 1, KEYNOTIFY_POLL_MS);
    if (ready < 0 && errno != EINTR) {
        snprintf(err, err_size, "waiting for counter changes: %s", strerror(errno));
        return false;
    }
    if (ready > 0 && !PQconsumeInput(conn)) {
        db_error(conn, NULL, "receiving counter changes", err, err_size);
        return false;
    }
    PGnotify *notice;
    while ((notice = PQnotifies(conn)) != NULL) {
        keycache_counters_changed(notice->extra);
        PQfreemem(notice);
    }
    if (PQstatus(conn) != CONNECTION_OK) {
        db_error(conn, NULL, "receiving counter changes", err, err_size);
        return false;
    }
    return true;
}

static void *listen_thread(void *arg)
{
    keynotify *listener = arg;
    PGconn *conn = NULL;
    int64_t retry_at = 0, last_error_log = 0;
    char err[512];
    while (!atomic_load(&listener->stopping)) {
        if (conn == NULL) {
            int64_t now = time_now_usec();
            if (now < retry_at) {
                poll(NULL, 0, KEYNOTIFY_POLL_MS);
                continue;
            }
            conn = listen_connect(listener->url, err, sizeof err);
            if (conn == NULL) {
                retry_at = now + KEYNOTIFY_RETRY_USEC;
                if (now - last_error_log > 10 * USEC_PER_SEC) {
                    log_warn("%s (the key cache's periodic reload stays in use)", err);
                    last_error_log = now;
                }
                continue;
            }
            /* Whatever was announced before LISTEN took effect is lost. */
            keycache_notices_lost();
        }
        if (!receive_notices(conn, err, sizeof err)) {
            log_warn("%s; listening again", err);
            PQfinish(conn);
            conn = NULL;
        }
    }
    if (conn != NULL)
        PQfinish(conn);
    return NULL;
}

keynotify *keynotify_start(const char *url)
{
    keynotify *listener = calloc(1, sizeof *listener);
    if (listener == NULL) {
        log_warn("out of memory starting the counter change listener");
        return NULL;
    }
    listener->url = url;
    atomic_init(&listener->stopping, false);
    if (pthread_create(&listener->thread, NULL, listen_thread, listener) != 0) {
        log_warn("cannot start the counter change listener: counters refresh only "
                 "with the key cache's reloads");
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
    free(listener);
}
