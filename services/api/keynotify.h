/* Hears PostgreSQL notices on one channel: a thread LISTENing on a
 * connection of its own hands each notice's payload to a handler. The key
 * cache uses it for the collector's counter change notices
 * (ROLLUP_COUNTERS_CHANNEL, rollupcols.h). Notices sent while nobody
 * listens are lost, so the handler hears of every gap: after each
 * reconnection (and after a first connection that only succeeded later
 * than keynotify_start) `lost` is called before any new notice. */
#ifndef TALLY_API_KEYNOTIFY_H
#define TALLY_API_KEYNOTIFY_H

typedef struct keynotify keynotify;

typedef struct {
    void (*changed)(void *context, const char *payload); /* payload borrowed for the call */
    void (*lost)(void *context);
    void *context;
} keynotify_handler;

/* Connects and LISTENs on `channel` (a constant identifier) before it
 * returns, so that whatever the caller reads from the database afterwards
 * misses no later notice; then starts the thread, which reconnects when
 * the connection drops. `url` and `channel` are borrowed for the
 * listener's life. NULL when the thread cannot start (logged: the caller
 * must do without notices). */
keynotify *keynotify_start(const char *url, const char *channel, keynotify_handler handler);
/* Stops the thread (no handler call after it returns) and frees
 * everything; NULL is fine. */
void keynotify_stop(keynotify *listener);

#endif
