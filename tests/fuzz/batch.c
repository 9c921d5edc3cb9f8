/* Fuzz target: services/ingest/ingestbody.c ingestbody_split_batch, the
 * first look tally-ingest takes at a POST /v1/events batch body.
 * Properties: the spans lie inside the body, in order, without overlap,
 * non-empty and without surrounding JSON whitespace, at most max_spans of
 * them; a refusal has a reason; and whenever jansson reads the body as a
 * JSON array, the split agrees: as many spans as elements, each span
 * alone being JSON equal to its element (so the bytes produced to Kafka
 * are exactly the event that was sent). */
#include <jansson.h>
#include <stdbool.h>
#include <string.h>

#include "fuzz.h"
#include "ingestbody.h"

#define MAX_SPANS 64

static bool is_space(char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

static void check_spans(const char *body, size_t size, const ingestbody_span *spans, size_t count)
{
    FUZZ_CHECK(count <= MAX_SPANS);
    size_t previous_end = 0;
    for (size_t i = 0; i < count; i++) {
        FUZZ_CHECK(spans[i].len > 0);
        FUZZ_CHECK(spans[i].offset >= previous_end + 1); /* '[' or ',' before it */
        FUZZ_CHECK(spans[i].offset + spans[i].len <= size);
        FUZZ_CHECK(!is_space(body[spans[i].offset]));
        FUZZ_CHECK(!is_space(body[spans[i].offset + spans[i].len - 1]));
        previous_end = spans[i].offset + spans[i].len;
    }
}

/* jansson's reading of the body; when it is an array of at most MAX_SPANS
 * elements, the split must match it element by element. */
static void check_against_jansson(const char *body, size_t size, ingestbody_result r,
                                  const ingestbody_span *spans, size_t count)
{
    json_t *whole = json_loadb(body, size, JSON_DECODE_ANY | JSON_ALLOW_NUL, NULL);
    if (whole == NULL)
        return;
    if (json_is_array(whole)) {
        size_t elements = json_array_size(whole);
        FUZZ_CHECK(r == (elements <= MAX_SPANS ? INGESTBODY_OK : INGESTBODY_TOO_MANY));
        if (r == INGESTBODY_OK) {
            FUZZ_CHECK(count == elements);
            for (size_t i = 0; i < count; i++) {
                json_t *alone = json_loadb(body + spans[i].offset, spans[i].len,
                                           JSON_DECODE_ANY | JSON_ALLOW_NUL, NULL);
                FUZZ_CHECK(alone != NULL);
                FUZZ_CHECK(json_equal(alone, json_array_get(whole, i)));
                json_decref(alone);
            }
        }
    } else {
        FUZZ_CHECK(r == INGESTBODY_NOT_ARRAY);
    }
    json_decref(whole);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *body = (const char *)data;
    ingestbody_span spans[MAX_SPANS];
    size_t count = 0;
    char err[160] = "";
    ingestbody_result r = ingestbody_split_batch(body, size, spans, MAX_SPANS, &count, err,
                                                 sizeof err);
    if (r == INGESTBODY_OK)
        check_spans(body, size, spans, count);
    else
        FUZZ_CHECK(err[0] != '\0');
    check_against_jansson(body, size, r, spans, count);
    return 0;
}
