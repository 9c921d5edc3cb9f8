#include "log.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "timeutil.h"

static const char *log_component = "tally";
static log_level log_min = LOG_INFO;
static pthread_mutex_t log_lock = PTHREAD_MUTEX_INITIALIZER;

static const char *const level_names[] = {"debug", "info", "warn", "error"};

void log_init(const char *component, log_level min_level)
{
    log_component = component;
    log_min = min_level;
}

bool log_parse_level(const char *text, log_level *out)
{
    for (int i = 0; i < 4; i++) {
        if (strcmp(text, level_names[i]) == 0) {
            *out = (log_level)i;
            return true;
        }
    }
    return false;
}

bool log_enabled(log_level level)
{
    return level >= log_min;
}

void log_write(log_level level, const char *fmt, ...)
{
    if (!log_enabled(level))
        return;
    char stamp[TIME_RFC3339_LEN];
    time_format_rfc3339(time_now_usec(), stamp, sizeof stamp);
    char message[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(message, sizeof message, fmt, ap);
    va_end(ap);
    /* One fprintf under a lock so lines from several threads never interleave. */
    pthread_mutex_lock(&log_lock);
    fprintf(stderr, "%s %-5s %s: %s\n", stamp, level_names[level], log_component, message);
    fflush(stderr);
    pthread_mutex_unlock(&log_lock);
}
