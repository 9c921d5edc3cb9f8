/* The members event_parse reads, and a one-pass scanner that finds them in
 * a plain event without building a JSON tree.
 *
 * eventscan_fields() is a fast path, never a judge: it answers only for
 * input it is certain jansson (json_loadb with JSON_REJECT_DUPLICATES |
 * JSON_DECODE_ANY, as event.c calls it) accepts as an object, and then
 * fills exactly what jansson's tree would give. Anything else (escapes,
 * bytes above 0x7f, fractions and exponents, integers of 19 digits or
 * more, deep nesting, many members, any syntax error) makes it give up, and
 * event.c asks jansson, whose answer, error text included, stands. The
 * differential fuzz target tests/fuzz/eventdiff.c holds it to that. */
#ifndef TALLY_EVENTSCAN_H
#define TALLY_EVENTSCAN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef enum {
    FIELD_ABSENT = 0, /* no such member, or its value is null */
    FIELD_STRING,
    FIELD_INTEGER,
    FIELD_OBJECT,
    FIELD_OTHER /* true, false, an array, a real number */
} field_kind;

typedef struct {
    field_kind kind;
    const char *text; /* FIELD_STRING: borrowed, len bytes, not NUL-terminated */
    size_t len;
    int64_t integer; /* FIELD_INTEGER */
} event_field;

/* The envelope's members event_parse reads, in the order it checks them. */
typedef enum {
    TOP_SPECVERSION,
    TOP_ID,
    TOP_SOURCE,
    TOP_TYPE,
    TOP_SUBJECT,
    TOP_TIME,
    TOP_DATA,
    TOP__COUNT
} top_member;

/* The members of `data` it reads. */
typedef enum {
    DATA_UNITS,
    DATA_BYTES,
    DATA_STATUS,
    DATA_METHOD,
    DATA_ENDPOINT,
    DATA__COUNT
} data_member;

typedef struct {
    event_field top[TOP__COUNT];
    event_field data[DATA__COUNT]; /* meaningful when top[TOP_DATA] is an object */
} event_fields;

extern const char *const eventscan_top_names[TOP__COUNT];
extern const char *const eventscan_data_names[DATA__COUNT];

/* True when `payload` (len bytes, borrowed) is certainly a JSON object
 * jansson accepts; *out then points into payload. False: not sure, ask
 * jansson (*out is then meaningless). */
bool eventscan_fields(const char *payload, size_t len, event_fields *out);

#endif
