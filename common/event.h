/* Usage events: CloudEvents 1.0, structured JSON mode (docs/CONTRACT.md §3).
 * event_parse() validates one Kafka message value and fills a usage_event;
 * every rejection has a stable code that goes into the DLQ header
 * `tally-error-code`. */
#ifndef TALLY_EVENT_H
#define TALLY_EVENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define EVENT_MAX_BYTES_DEFAULT   65536   /* a message value above this is too_large */
#define EVENT_MAX_ID_LEN          256     /* id, source, type */
#define EVENT_MAX_SUBJECT_LEN     128     /* API key ids */
#define EVENT_MAX_METHOD_LEN      16
#define EVENT_MAX_ENDPOINT_LEN    256
/* Per-event bounds no real API request reaches. They are chosen so that a
 * batch's in-memory sums cannot overflow int64 (EVENT_MAX_BATCH_SUM below);
 * the stored totals can, and are checked by PostgreSQL (counter_overflow). */
#define EVENT_MAX_UNITS           INT64_C(1000000000)    /* data.units per event: 10^9 */
#define EVENT_MAX_BYTES_FIELD     INT64_C(1000000000000) /* data.bytes per event: 10^12 (1 TB) */
#define EVENT_FUTURE_TOLERANCE_USEC (INT64_C(5) * 60 * 1000000)
#define EVENT_LATENESS_DEFAULT_USEC (INT64_C(35) * 86400 * 1000000)

typedef enum {
    EVENT_OK = 0,
    EVENT_ERR_EMPTY,                   /* empty or null message value */
    EVENT_ERR_TOO_LARGE,               /* value above the size limit */
    EVENT_ERR_INVALID_UTF8,            /* not valid UTF-8 */
    EVENT_ERR_INVALID_JSON,            /* not JSON, or duplicate member names */
    EVENT_ERR_NOT_OBJECT,              /* JSON, but not an object */
    EVENT_ERR_MISSING_FIELD,           /* a required attribute is absent */
    EVENT_ERR_INVALID_FIELD,           /* wrong type, empty, too long, out of range */
    EVENT_ERR_UNSUPPORTED_SPECVERSION, /* specversion is not "1.0" */
    EVENT_ERR_INVALID_TIME,            /* time is not RFC 3339 */
    EVENT_ERR_TOO_LATE,                /* older than the lateness horizon */
    EVENT_ERR_IN_FUTURE,               /* more than 5 minutes ahead */
    EVENT_ERR_UNKNOWN_KEY,             /* subject names no API key (set by the collector) */
    EVENT_ERR_COUNTER_OVERFLOW,        /* counting it would overflow a stored total (collector) */
    EVENT_ERR_DATABASE_REJECTED,       /* PostgreSQL refused to store it (collector) */
    EVENT_ERR__COUNT
} event_error;

typedef struct {
    char id[EVENT_MAX_ID_LEN + 1];
    char source[EVENT_MAX_ID_LEN + 1];
    char type[EVENT_MAX_ID_LEN + 1];
    char subject[EVENT_MAX_SUBJECT_LEN + 1];
    int64_t time_usec;
    char method[EVENT_MAX_METHOD_LEN + 1];     /* "" when absent */
    char endpoint[EVENT_MAX_ENDPOINT_LEN + 1]; /* "" when absent */
    int status;                                /* -1 when absent */
    int64_t units;                             /* default 1 */
    int64_t bytes;                             /* default 0 */
} usage_event;

typedef struct {
    int64_t now_usec;       /* the clock the time window is judged against */
    int64_t lateness_usec;  /* events older than now - lateness are too_late */
    size_t max_bytes;       /* value size limit */
} event_limits;

/* The stable, snake_case code of an error ("invalid_json"). */
const char *event_error_code(event_error err);
/* Validates `len` bytes of `payload` (borrowed; need not be NUL-terminated)
 * and fills *out. On failure returns the error and writes a one-line reason
 * naming the field into msg (never the payload itself beyond a short quote).
 * *out is only meaningful when EVENT_OK is returned. */
event_error event_parse(const char *payload, size_t len, const event_limits *limits,
                        usage_event *out, char *msg, size_t msg_size);
/* event_parse without the one-pass scanner (common/eventscan.h): jansson
 * alone. The same answer on every input; kept as the reference that the
 * differential fuzz target and the unit tests compare event_parse with. */
event_error event_parse_jansson(const char *payload, size_t len, const event_limits *limits,
                                usage_event *out, char *msg, size_t msg_size);
/* Whether two parsed events hold the same fields: how the unit tests and
 * the fuzz targets check that two parses of one payload agree. */
bool usage_event_equal(const usage_event *a, const usage_event *b);

#endif
