#include "synth.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "event.h"
#include "timeutil.h"
#include "utf8.h"

/* ---- PRNG ---------------------------------------------------------------- */

void synth_rng_init(synth_rng *rng, uint64_t seed)
{
    rng->state = seed;
}

uint64_t synth_rng_next(synth_rng *rng)
{
    uint64_t z = (rng->state += UINT64_C(0x9E3779B97F4A7C15));
    z = (z ^ (z >> 30)) * UINT64_C(0xBF58476D1CE4E5B9);
    z = (z ^ (z >> 27)) * UINT64_C(0x94D049BB133111EB);
    return z ^ (z >> 31);
}

double synth_rng_unit(synth_rng *rng)
{
    return (double)(synth_rng_next(rng) >> 11) * (1.0 / 9007199254740992.0);
}

uint64_t synth_rng_below(synth_rng *rng, uint64_t bound)
{
    /* Modulo bias is below 2^-40 for every bound used here; irrelevant. */
    return synth_rng_next(rng) % bound;
}

/* ---- parsing --------------------------------------------------------------- */

/* Returns a new string holding `text` (len bytes, valid UTF-8) as JSON string
 * contents, or NULL when out of memory. */
static char *json_escape(const char *text, size_t len)
{
    char *out = malloc(len * 6 + 1);
    if (out == NULL)
        return NULL;
    size_t n = 0;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)text[i];
        if (c == '"' || c == '\\') {
            out[n++] = '\\';
            out[n++] = (char)c;
        } else if (c < 0x20) {
            static const char hex[] = "0123456789abcdef";
            memcpy(out + n, "\\u00", 4);
            out[n + 4] = hex[c >> 4];
            out[n + 5] = hex[c & 15];
            n += 6;
        } else {
            out[n++] = (char)c;
        }
    }
    out[n] = '\0';
    return out;
}

static char *copy_text(const char *text, size_t len)
{
    char *out = malloc(len + 1);
    if (out == NULL)
        return NULL;
    memcpy(out, text, len);
    out[len] = '\0';
    return out;
}

static bool all_digits(const char *text, size_t len)
{
    if (len == 0)
        return false;
    for (size_t i = 0; i < len; i++) {
        if (text[i] < '0' || text[i] > '9')
            return false;
    }
    return true;
}

/* Counts the comma-separated items of `list`. */
static size_t count_items(const char *list)
{
    size_t n = 1;
    for (const char *p = list; *p; p++)
        n += *p == ',';
    return n;
}

/* One key item: "id" or "id:weight" (the last colon followed by digits only
 * separates the weight, so ids may themselves contain colons). */
static bool parse_key(const char *item, size_t len, synth_key *out, char *err, size_t err_size)
{
    size_t id_len = len;
    uint64_t weight = 1;
    const char *colon = NULL;
    for (size_t i = len; i > 0; i--) {
        if (item[i - 1] == ':') {
            colon = item + i - 1;
            break;
        }
    }
    if (colon != NULL && all_digits(colon + 1, (size_t)(item + len - colon - 1))) {
        id_len = (size_t)(colon - item);
        size_t digits = (size_t)(item + len - colon - 1);
        if (digits > 7) {
            snprintf(err, err_size, "--keys: weight of \"%.*s\" must be 1..%d", (int)id_len, item,
                     SYNTH_MAX_WEIGHT);
            return false;
        }
        char number[8];
        memcpy(number, colon + 1, digits);
        number[digits] = '\0';
        weight = strtoull(number, NULL, 10);
        if (weight < 1 || weight > SYNTH_MAX_WEIGHT) {
            snprintf(err, err_size, "--keys: weight of \"%.*s\" must be 1..%d", (int)id_len, item,
                     SYNTH_MAX_WEIGHT);
            return false;
        }
    }
    if (id_len == 0 || id_len > EVENT_MAX_SUBJECT_LEN) {
        snprintf(err, err_size, "--keys: key id \"%.*s\" must be 1..%d bytes", (int)(len > 60 ? 60 : len),
                 item, EVENT_MAX_SUBJECT_LEN);
        return false;
    }
    if (!utf8_valid(item, id_len)) {
        snprintf(err, err_size, "--keys: key id is not valid UTF-8");
        return false;
    }
    out->id = copy_text(item, id_len);
    out->id_json = json_escape(item, id_len);
    out->weight = weight;
    if (out->id == NULL || out->id_json == NULL) {
        snprintf(err, err_size, "out of memory");
        return false;
    }
    return true;
}

/* One endpoint item: "METHOD path", split at the first space. */
static bool parse_endpoint(const char *item, size_t len, synth_endpoint *out, char *err,
                           size_t err_size)
{
    const char *space = memchr(item, ' ', len);
    size_t method_len = space ? (size_t)(space - item) : 0;
    size_t path_len = space ? (size_t)(item + len - space - 1) : 0;
    if (space == NULL || method_len == 0 || method_len > EVENT_MAX_METHOD_LEN || path_len == 0 ||
        path_len > EVENT_MAX_ENDPOINT_LEN) {
        snprintf(err, err_size,
                 "--endpoints: \"%.*s\" must be \"METHOD path\" (method 1..%d bytes, path 1..%d)",
                 (int)(len > 60 ? 60 : len), item, EVENT_MAX_METHOD_LEN, EVENT_MAX_ENDPOINT_LEN);
        return false;
    }
    if (!utf8_valid(item, len)) {
        snprintf(err, err_size, "--endpoints: not valid UTF-8");
        return false;
    }
    out->method_json = json_escape(item, method_len);
    out->path_json = json_escape(space + 1, path_len);
    if (out->method_json == NULL || out->path_json == NULL) {
        snprintf(err, err_size, "out of memory");
        return false;
    }
    return true;
}

bool synth_init(synth_generator *gen, uint64_t seed, const char *keys, const char *endpoints,
                const char *source, double late_ratio, char *err, size_t err_size)
{
    memset(gen, 0, sizeof *gen);
    gen->seed = seed;
    gen->late_ratio = late_ratio;

    size_t source_len = strlen(source);
    if (source_len == 0 || source_len > EVENT_MAX_ID_LEN || !utf8_valid(source, source_len)) {
        snprintf(err, err_size, "--source must be 1..%d bytes of UTF-8", EVENT_MAX_ID_LEN);
        goto fail;
    }
    gen->source_json = json_escape(source, source_len);
    if (gen->source_json == NULL) {
        snprintf(err, err_size, "out of memory");
        goto fail;
    }

    size_t key_items = count_items(keys);
    if (key_items > SYNTH_MAX_KEYS) {
        snprintf(err, err_size, "--keys: at most %d keys", SYNTH_MAX_KEYS);
        goto fail;
    }
    gen->keys = calloc(key_items, sizeof *gen->keys);
    gen->cumulative_weight = calloc(key_items, sizeof *gen->cumulative_weight);
    if (gen->keys == NULL || gen->cumulative_weight == NULL) {
        snprintf(err, err_size, "out of memory");
        goto fail;
    }
    for (const char *p = keys;;) {
        const char *end = strchr(p, ',');
        size_t len = end ? (size_t)(end - p) : strlen(p);
        if (!parse_key(p, len, &gen->keys[gen->key_count], err, err_size)) {
            gen->key_count++; /* free what parse_key allocated */
            goto fail;
        }
        for (size_t i = 0; i < gen->key_count; i++) {
            if (strcmp(gen->keys[i].id, gen->keys[gen->key_count].id) == 0) {
                snprintf(err, err_size, "--keys: key \"%.60s\" is listed twice", gen->keys[i].id);
                gen->key_count++;
                goto fail;
            }
        }
        uint64_t before = gen->key_count ? gen->cumulative_weight[gen->key_count - 1] : 0;
        gen->cumulative_weight[gen->key_count] = before + gen->keys[gen->key_count].weight;
        gen->key_count++;
        if (end == NULL)
            break;
        p = end + 1;
    }

    size_t endpoint_items = count_items(endpoints);
    if (endpoint_items > SYNTH_MAX_ENDPOINTS) {
        snprintf(err, err_size, "--endpoints: at most %d endpoints", SYNTH_MAX_ENDPOINTS);
        goto fail;
    }
    gen->endpoints = calloc(endpoint_items, sizeof *gen->endpoints);
    if (gen->endpoints == NULL) {
        snprintf(err, err_size, "out of memory");
        goto fail;
    }
    for (const char *p = endpoints;;) {
        const char *end = strchr(p, ',');
        size_t len = end ? (size_t)(end - p) : strlen(p);
        bool ok = parse_endpoint(p, len, &gen->endpoints[gen->endpoint_count], err, err_size);
        gen->endpoint_count++;
        if (!ok)
            goto fail;
        if (end == NULL)
            break;
        p = end + 1;
    }
    return true;

fail:
    synth_free(gen);
    return false;
}

void synth_free(synth_generator *gen)
{
    for (size_t i = 0; i < gen->key_count; i++) {
        free(gen->keys[i].id);
        free(gen->keys[i].id_json);
    }
    for (size_t i = 0; i < gen->endpoint_count; i++) {
        free(gen->endpoints[i].method_json);
        free(gen->endpoints[i].path_json);
    }
    free(gen->keys);
    free(gen->cumulative_weight);
    free(gen->endpoints);
    free(gen->source_json);
    memset(gen, 0, sizeof *gen);
}

/* ---- generation ------------------------------------------------------------ */

static int draw_status(synth_rng *rng)
{
    /* Mostly success, with the client and server errors a gateway sees. */
    uint64_t r = synth_rng_below(rng, 1000);
    if (r < 900)
        return 200;
    if (r < 930)
        return 404;
    if (r < 950)
        return 400;
    if (r < 970)
        return 429;
    if (r < 990)
        return 500;
    return 503;
}

void synth_draw(const synth_generator *gen, uint64_t index, synth_event *out)
{
    /* Mix the index first so neighbouring (seed, index) pairs give unrelated
     * streams; seed ^ index alone would make (s, i) and (s ^ 1, i ^ 1) equal. */
    synth_rng probe = {index};
    synth_rng rng;
    synth_rng_init(&rng, gen->seed ^ synth_rng_next(&probe));

    /* Always the same draws in the same order, so each field depends only on
     * (seed, index) and the settings that shape it. */
    uint64_t pick = synth_rng_below(&rng, gen->cumulative_weight[gen->key_count - 1]);
    size_t lo = 0, hi = gen->key_count - 1;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (pick < gen->cumulative_weight[mid])
            hi = mid;
        else
            lo = mid + 1;
    }
    out->index = index;
    out->key = lo;
    out->endpoint = (size_t)synth_rng_below(&rng, gen->endpoint_count);
    out->status = draw_status(&rng);
    out->units = 1 + (int)synth_rng_below(&rng, 5);
    out->bytes = (int)synth_rng_below(&rng, 4097);
    out->jitter_ms = (int64_t)synth_rng_below(&rng, (uint64_t)SYNTH_MAX_JITTER_MS + 1);
    double late_draw = synth_rng_unit(&rng);
    int64_t late_ms = SYNTH_LATE_MIN_MS +
                      (int64_t)synth_rng_below(&rng, (uint64_t)(SYNTH_LATE_MAX_MS - SYNTH_LATE_MIN_MS) + 1);
    out->late = late_draw < gen->late_ratio;
    out->late_ms = out->late ? late_ms : 0;
}

int64_t synth_event_time_ms(const synth_event *ev, int64_t anchor_ms)
{
    return anchor_ms - ev->jitter_ms - ev->late_ms;
}

/* A bounded appender: callers size buf for the worst case (SYNTH_MAX_JSON),
 * and `put` still refuses to run past the end. */
typedef struct {
    char *buf;
    size_t len, size;
} appender;

static void put(appender *a, const char *text, size_t len)
{
    if (len > a->size - a->len)
        len = a->size - a->len;
    memcpy(a->buf + a->len, text, len);
    a->len += len;
}

static void put_str(appender *a, const char *text)
{
    put(a, text, strlen(text));
}

static void put_u64(appender *a, uint64_t v)
{
    char digits[20];
    size_t n = 0;
    do {
        digits[sizeof digits - 1 - n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    put(a, digits + sizeof digits - n, n);
}

static void put_hex(appender *a, uint64_t v)
{
    static const char hex[] = "0123456789abcdef";
    char digits[16];
    size_t n = 0;
    do {
        digits[sizeof digits - 1 - n++] = hex[v & 15];
        v >>= 4;
    } while (v);
    put(a, digits + sizeof digits - n, n);
}

/* Writes `v` as exactly `width` digits. */
static void put_fixed(appender *a, int v, int width)
{
    char digits[8];
    for (int i = width - 1; i >= 0; i--) {
        digits[i] = (char)('0' + v % 10);
        v /= 10;
    }
    put(a, digits, (size_t)width);
}

/* Same text as time_format_rfc3339 (YYYY-MM-DDTHH:MM:SS.mmmZ), without
 * snprintf: this runs once per message. */
static void put_time(appender *a, int64_t time_ms)
{
    civil_time ct;
    time_to_civil(time_ms * 1000, &ct);
    put_fixed(a, ct.year, 4);
    put(a, "-", 1);
    put_fixed(a, ct.month, 2);
    put(a, "-", 1);
    put_fixed(a, ct.day, 2);
    put(a, "T", 1);
    put_fixed(a, ct.hour, 2);
    put(a, ":", 1);
    put_fixed(a, ct.minute, 2);
    put(a, ":", 1);
    put_fixed(a, ct.second, 2);
    put(a, ".", 1);
    put_fixed(a, ct.usec / 1000, 3);
    put(a, "Z", 1);
}

size_t synth_render(const synth_generator *gen, const synth_event *ev, int64_t time_ms, char *buf,
                    size_t size)
{
    appender a = {buf, 0, size};
    const synth_endpoint *endpoint = &gen->endpoints[ev->endpoint];
    if (gen->uuid_ids) {
        /* A version-4-shaped UUID drawn from (seed, index): what gateways
         * typically send, and the worst case for a B-tree (random order). */
        static const char hex[] = "0123456789abcdef";
        synth_rng rng;
        synth_rng_init(&rng, (gen->seed * UINT64_C(0x9E3779B97F4A7C15)) ^ ev->index ^
                                 UINT64_C(0x5851F42D4C957F2D));
        uint64_t hi = synth_rng_next(&rng), lo = synth_rng_next(&rng);
        hi = (hi & ~UINT64_C(0xF000)) | UINT64_C(0x4000);
        lo = (lo & ~(UINT64_C(3) << 62)) | (UINT64_C(2) << 62);
        char text[37];
        size_t n = 0;
        for (int i = 0; i < 32; i++) {
            if (i == 8 || i == 12 || i == 16 || i == 20)
                text[n++] = '-';
            uint64_t word = i < 16 ? hi : lo;
            text[n++] = hex[(word >> (60 - 4 * (i % 16))) & 0xF];
        }
        text[n] = '\0';
        put_str(&a, "{\"specversion\":\"1.0\",\"id\":\"");
        put_str(&a, text);
    } else {
        put_str(&a, "{\"specversion\":\"1.0\",\"id\":\"lg-");
        put_hex(&a, gen->seed);
        put(&a, "-", 1);
        put_u64(&a, ev->index);
    }
    put_str(&a, "\",\"source\":\"");
    put_str(&a, gen->source_json);
    put_str(&a, "\",\"type\":\"api.request\",\"subject\":\"");
    put_str(&a, gen->keys[ev->key].id_json);
    put_str(&a, "\",\"time\":\"");
    put_time(&a, time_ms);
    put_str(&a, "\",\"data\":{\"method\":\"");
    put_str(&a, endpoint->method_json);
    put_str(&a, "\",\"endpoint\":\"");
    put_str(&a, endpoint->path_json);
    put_str(&a, "\",\"status\":");
    put_u64(&a, (uint64_t)ev->status);
    put_str(&a, ",\"units\":");
    put_u64(&a, (uint64_t)ev->units);
    put_str(&a, ",\"bytes\":");
    put_u64(&a, (uint64_t)ev->bytes);
    put_str(&a, "}}");
    return a.len;
}
