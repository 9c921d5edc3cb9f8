/* Levelled logging for the daemons (common/ library code never logs; it
 * fills the caller's error buffer instead). One line per message on stderr:
 *   2026-11-23T12:00:00.123Z info  collector: message
 * Never pass a secret (key value, Stripe key, admin token) to these. */
#ifndef TALLY_LOG_H
#define TALLY_LOG_H

#include <stdbool.h>

typedef enum { LOG_DEBUG = 0, LOG_INFO, LOG_WARN, LOG_ERROR } log_level;

/* Sets the component name printed on each line (borrowed; keep it static)
 * and the minimum level. */
void log_init(const char *component, log_level min_level);
/* Parses "debug", "info", "warn" or "error". */
bool log_parse_level(const char *text, log_level *out);
bool log_enabled(log_level level);
void log_write(log_level level, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

#define log_debug(...) do { if (log_enabled(LOG_DEBUG)) log_write(LOG_DEBUG, __VA_ARGS__); } while (0)
#define log_info(...)  log_write(LOG_INFO, __VA_ARGS__)
#define log_warn(...)  log_write(LOG_WARN, __VA_ARGS__)
#define log_error(...) log_write(LOG_ERROR, __VA_ARGS__)

#endif
