/* Fuzz target: common/event.c event_parse, the collector's first look at
 * every Kafka message value, under the collector's default limits.
 * Properties: an accepted event's fields are within the bounds README.md
 * and event.h document; a refusal has a known code and a non-empty,
 * one-line, valid UTF-8 reason (it becomes the DLQ's tally-error-message
 * header); parsing the same bytes twice gives the same answer (the
 * per-thread JSON arena is reset between events). */
#include <stdbool.h>
#include <string.h>

#include "event.h"
#include "fuzz.h"
#include "timeutil.h"
#include "utf8.h"

static const event_limits limits = {
    .now_usec = FUZZ_NOW_USEC,
    .lateness_usec = EVENT_LATENESS_DEFAULT_USEC,
    .max_bytes = EVENT_MAX_BYTES_DEFAULT,
};

/* A required text field: 1..max bytes, no NUL inside, valid UTF-8. */
static void check_text(const char *text, size_t max, bool required)
{
    size_t len = strnlen(text, max + 1);
    FUZZ_CHECK(len <= max);
    FUZZ_CHECK(!required || len >= 1);
    FUZZ_CHECK(utf8_valid(text, len));
}

static void check_accepted(const usage_event *ev)
{
    check_text(ev->id, EVENT_MAX_ID_LEN, true);
    check_text(ev->source, EVENT_MAX_ID_LEN, true);
    check_text(ev->type, EVENT_MAX_ID_LEN, true);
    check_text(ev->subject, EVENT_MAX_SUBJECT_LEN, true);
    check_text(ev->method, EVENT_MAX_METHOD_LEN, false);
    check_text(ev->endpoint, EVENT_MAX_ENDPOINT_LEN, false);
    for (const char *p = ev->method; *p; p++)
        FUZZ_CHECK(*p >= 'A' && *p <= 'Z');
    FUZZ_CHECK(ev->time_usec >= limits.now_usec - limits.lateness_usec);
    FUZZ_CHECK(ev->time_usec <= limits.now_usec + EVENT_FUTURE_TOLERANCE_USEC);
    FUZZ_CHECK(ev->status == -1 || (ev->status >= 100 && ev->status <= 599));
    FUZZ_CHECK(ev->units >= 0 && ev->units <= EVENT_MAX_UNITS);
    FUZZ_CHECK(ev->bytes >= 0 && ev->bytes <= EVENT_MAX_BYTES_FIELD);
}

static void check_refused(event_error err, const char *msg, size_t msg_size)
{
    FUZZ_CHECK(err > EVENT_OK && err < EVENT_ERR__COUNT);
    FUZZ_CHECK(strcmp(event_error_code(err), "unknown") != 0);
    size_t len = strnlen(msg, msg_size);
    FUZZ_CHECK(len >= 1 && len < msg_size);
    for (size_t i = 0; i < len; i++)
        FUZZ_CHECK((unsigned char)msg[i] >= 0x20 && msg[i] != 0x7f);
    FUZZ_CHECK(utf8_valid(msg, len));
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* The collector's reason buffer is 200 bytes (services/collector/main.c). */
    char msg[200], again_msg[200];
    usage_event ev, again;
    const char *payload = (const char *)data;
    event_error err = event_parse(payload, size, &limits, &ev, msg, sizeof msg);
    if (err == EVENT_OK)
        check_accepted(&ev);
    else
        check_refused(err, msg, sizeof msg);
    event_error err_again = event_parse(payload, size, &limits, &again, again_msg,
                                        sizeof again_msg);
    FUZZ_CHECK(err_again == err);
    FUZZ_CHECK(err != EVENT_OK || usage_event_equal(&ev, &again));
    FUZZ_CHECK(err == EVENT_OK || strcmp(msg, again_msg) == 0);
    return 0;
}
