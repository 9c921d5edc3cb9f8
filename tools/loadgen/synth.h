/* Synthetic usage events for tally-loadgen. Every field of event `index` is a
 * pure function of (seed, index) and the generator's settings (keys, weights,
 * endpoints, source, late ratio), so a re-send can be regenerated
 * byte-for-byte instead of stored, and a second run with the same settings
 * reproduces the same events. Only the event's time needs an anchor from the
 * caller: a fixed base time, or the wall clock when the event was first sent. */
#ifndef TALLY_LOADGEN_SYNTH_H
#define TALLY_LOADGEN_SYNTH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define SYNTH_MAX_KEYS      10000
#define SYNTH_MAX_WEIGHT    1000000
#define SYNTH_MAX_ENDPOINTS 256
/* Large enough for any event: all strings are length-limited at parse time
 * and escaped at most 6 bytes per input byte (worst case ~4.2 KB). */
#define SYNTH_MAX_JSON      8192

#define SYNTH_MAX_JITTER_MS  INT64_C(60000)           /* 0..60 s before the anchor */
#define SYNTH_LATE_MIN_MS    (INT64_C(1) * 3600000)   /* late events: 1 h .. */
#define SYNTH_LATE_MAX_MS    (INT64_C(72) * 3600000)  /* .. 72 h further back */

typedef struct {
    char *id;            /* the subject, raw (owned) */
    char *id_json;       /* the subject as JSON string contents, escaped (owned) */
    uint64_t weight;
} synth_key;

typedef struct {
    char *method_json;   /* escaped, owned */
    char *path_json;     /* escaped, owned */
} synth_endpoint;

typedef struct {
    uint64_t seed;
    synth_key *keys;
    size_t key_count;
    uint64_t *cumulative_weight; /* cumulative_weight[i] = sum of weights 0..i */
    synth_endpoint *endpoints;
    size_t endpoint_count;
    char *source_json;           /* escaped, owned */
    double late_ratio;
    bool uuid_ids;               /* ids as random-looking UUIDs (from seed, index) */
} synth_generator;

/* The fields of one event, before its time is anchored. */
typedef struct {
    uint64_t index;
    size_t key;          /* index into generator.keys */
    size_t endpoint;     /* index into generator.endpoints */
    int status;
    int units;           /* 1..5 */
    int bytes;           /* 0..4096 */
    int64_t jitter_ms;   /* 0..SYNTH_MAX_JITTER_MS */
    bool late;
    int64_t late_ms;     /* 0, or SYNTH_LATE_MIN_MS..SYNTH_LATE_MAX_MS when late */
} synth_event;

/* A splitmix64 stream: small, fast, and good enough for synthetic traffic. */
typedef struct {
    uint64_t state;
} synth_rng;

void synth_rng_init(synth_rng *rng, uint64_t seed);
uint64_t synth_rng_next(synth_rng *rng);
/* Uniform in [0, 1). */
double synth_rng_unit(synth_rng *rng);
/* Uniform in [0, bound), bound > 0. */
uint64_t synth_rng_below(synth_rng *rng, uint64_t bound);

/* Fills *gen (zeroed first) from the comma-separated lists `keys`
 * ("id[:weight],...") and `endpoints` ("METHOD path,..."); all strings are
 * copied. On failure returns false, writes a reason into err and leaves
 * nothing to free. Free a successful generator with synth_free(). */
bool synth_init(synth_generator *gen, uint64_t seed, const char *keys, const char *endpoints,
                const char *source, double late_ratio, char *err, size_t err_size);
void synth_free(synth_generator *gen);

/* Draws the fields of event `index`; a pure function of (gen, index). */
void synth_draw(const synth_generator *gen, uint64_t index, synth_event *out);
/* The event's time: anchor minus jitter minus the late offset, in ms. */
int64_t synth_event_time_ms(const synth_event *ev, int64_t anchor_ms);
/* Renders the CloudEvents JSON of `ev` with the given time into buf (size
 * >= SYNTH_MAX_JSON). Returns the length, without a terminating NUL. */
size_t synth_render(const synth_generator *gen, const synth_event *ev, int64_t time_ms, char *buf,
                    size_t size);

#endif
