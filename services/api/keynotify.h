/* Hears the collector's counter change notices: a thread LISTENing on
 * ROLLUP_COUNTERS_CHANNEL (rollupcols.h) on a connection of its own, which
 * hands each notice to the key cache (keycache_counters_changed). Notices
 * sent while it is not listening are lost: after every (re)connection it
 * asks the cache for a full reload (keycache_notices_lost), and between
 * failures the cache's periodic reload is the safety net. */
#ifndef TALLY_API_KEYNOTIFY_H
#define TALLY_API_KEYNOTIFY_H

typedef struct keynotify keynotify;

/* Starts the thread; `url` is borrowed for the listener's life. NULL when
 * the thread cannot start (logged; the cache then relies on its reloads). */
keynotify *keynotify_start(const char *url);
/* Stops the thread and frees everything; NULL is fine. */
void keynotify_stop(keynotify *listener);

#endif
