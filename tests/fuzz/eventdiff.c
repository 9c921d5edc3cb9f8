/* Fuzz target, differential: event_parse (the one-pass scanner of
 * common/eventscan.c, with jansson behind it) against event_parse_jansson
 * (jansson alone, the reference) on the same bytes. Property: the same
 * answer on every input: the same code, the same reason text, and for an
 * accepted event the same fields. The scanner may give up on anything; it
 * must never accept what jansson refuses nor read a member differently. */
#include <stdbool.h>
#include <string.h>

#include "event.h"
#include "fuzz.h"

static const event_limits limits = {
    .now_usec = FUZZ_NOW_USEC,
    .lateness_usec = EVENT_LATENESS_DEFAULT_USEC,
    .max_bytes = EVENT_MAX_BYTES_DEFAULT,
};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* The collector's reason buffer is 200 bytes (services/collector/batch.c). */
    char fast_msg[200], reference_msg[200];
    usage_event fast, reference;
    const char *payload = (const char *)data;
    event_error fast_err = event_parse(payload, size, &limits, &fast, fast_msg, sizeof fast_msg);
    event_error reference_err = event_parse_jansson(payload, size, &limits, &reference,
                                                    reference_msg, sizeof reference_msg);
    FUZZ_CHECK(fast_err == reference_err);
    FUZZ_CHECK(strcmp(fast_msg, reference_msg) == 0);
    FUZZ_CHECK(fast_err != EVENT_OK || usage_event_equal(&fast, &reference));
    return 0;
}
