/* The body of POST /v1/events (CloudEvents HTTP binding, structured and
 * batch modes): which mode a Content-Type names, and where each event of a
 * batch lies in the body. Pure functions, no allocation: each event's bytes
 * are then validated, as sent, by the collector's own parser (event.h). */
#ifndef TALLY_INGESTBODY_H
#define TALLY_INGESTBODY_H

#include <stdbool.h>
#include <stddef.h>

typedef enum {
    INGESTBODY_STRUCTURED, /* application/cloudevents+json: the body is one event */
    INGESTBODY_BATCH,      /* application/cloudevents-batch+json: a JSON array of events */
    INGESTBODY_UNSUPPORTED /* anything else, binary mode included: 415 */
} ingestbody_mode;

/* The mode of a Content-Type header value (borrowed; NULL when absent).
 * The media type is compared without regard to case; parameters such as
 * "; charset=utf-8" are allowed (the events are UTF-8 whatever they say). */
ingestbody_mode ingestbody_mode_of(const char *content_type);

/* One event of a batch: body[offset, offset + len), surrounding JSON
 * whitespace excluded. */
typedef struct {
    size_t offset;
    size_t len;
} ingestbody_span;

typedef enum {
    INGESTBODY_OK,
    INGESTBODY_NOT_ARRAY, /* the body does not start with '[' */
    INGESTBODY_MALFORMED, /* unterminated, an empty element, or bytes after the array */
    INGESTBODY_TOO_MANY,  /* more than max_spans events */
} ingestbody_result;

/* Splits a batch body (borrowed, `len` bytes, need not be NUL-terminated)
 * into the spans of its top-level array's elements, at most max_spans,
 * written to spans[0..*count). Only the array's structure is checked here
 * (strings, escapes and nesting are followed so that a ',' or ']' inside an
 * event does not split it); each element is then an event candidate whose
 * own JSON is judged by event_parse, so a broken event is refused alone.
 * On failure err says where (never quoting the body); *count is only
 * meaningful with INGESTBODY_OK. */
ingestbody_result ingestbody_split_batch(const char *body, size_t len, ingestbody_span *spans,
                                         size_t max_spans, size_t *count, char *err,
                                         size_t err_size) __attribute__((warn_unused_result));

#endif
