/* Fuzz target: the usage query's parameters as tally-api reads them from a
 * query string: each raw value percent-decoded by libmicrohttpd's unescape
 * step (services/api/apitext.c apitext_unescape), then from, to, granularity and
 * groupBy parsed (services/api/apimodel.c apimodel_usage_query_parse, called by
 * services/api/usage.c), and the list parameters limit and position
 * (apimodel_parse_limit, apimodel_cursor_decode).
 * Input: byte 0 says which of the six parameters are present (bit i for
 * the i-th), bytes 1..4 move "now" within 2000..2136, then the present raw
 * values in order, separated by NUL (a query value never holds one:
 * apitext_unescape keeps %00 as it is).
 * Properties of the unescape step: it never lengthens a value, never
 * makes a NUL (the value's length is its strlen) nor a '/'.
 * Properties of an accepted usage query: from < to, both on bucket starts
 * of the granularity, 1..APIMODEL_USAGE_POINTS_MAX points, and stepping
 * bucket by bucket from `from` reaches `to` in exactly `points` steps; an
 * explicit from/to is covered (from's bucket starts the range, to's instant
 * lies inside it). An accepted limit is 1..APIMODEL_LIST_LIMIT_MAX; an
 * accepted position decodes to a valid id that encodes and decodes back to
 * itself, as does any valid id given as position. */
#include <stdbool.h>
#include <string.h>

#include "apimodel.h"
#include "apitext.h"
#include "fuzz.h"
#include "timeutil.h"

enum { P_FROM, P_TO, P_GRANULARITY, P_GROUP_BY, P_LIMIT, P_POSITION, P__COUNT };

#define YEAR2000_USEC (INT64_C(946684800) * USEC_PER_SEC)
#define VALUE_MAX 512 /* longer values are cut: the parsers refuse them anyway */

static size_t count_slashes(const char *text)
{
    size_t n = 0;
    for (; *text; text++)
        n += *text == '/';
    return n;
}

/* Decodes `value` in place as the api's unescape callback does. */
static void unescape_value(char *value)
{
    size_t raw_len = strlen(value), raw_slashes = count_slashes(value);
    size_t len = apitext_unescape(value);
    FUZZ_CHECK(len <= raw_len && strlen(value) == len);
    FUZZ_CHECK(count_slashes(value) == raw_slashes);
}

static void check_refusal(const apimodel_error *err)
{
    FUZZ_CHECK(err->code != NULL);
    FUZZ_CHECK(strcmp(err->code, "invalid_parameter") == 0 ||
               strcmp(err->code, "invalid_range") == 0 ||
               strcmp(err->code, "too_many_points") == 0);
    FUZZ_CHECK(err->message[0] != '\0');
}

/* The instant the api reads from a from/to value, as apimodel.c documents
 * it; false when the text is neither form. */
static bool instant_of(const char *text, int64_t *out, bool *is_date)
{
    size_t len = strlen(text);
    *is_date = len == 10 && time_parse_date(text, len, out);
    return *is_date || time_parse_rfc3339(text, len, out);
}

static void check_range(const char *from, const char *to, const apimodel_usage_query *q)
{
    int64_t at;
    bool is_date;
    if (from != NULL && instant_of(from, &at, &is_date))
        FUZZ_CHECK(q->from == apimodel_bucket_start(q->granularity, at));
    if (to != NULL && instant_of(to, &at, &is_date)) {
        int64_t end = is_date ? at + USEC_PER_DAY : at; /* a date includes its day */
        FUZZ_CHECK(q->to >= end);
        FUZZ_CHECK(q->points == 1 || apimodel_bucket_start(q->granularity, q->to - 1) < end);
    }
}

static void check_usage_query(const char *const *value, int64_t now)
{
    apimodel_usage_query q;
    apimodel_error err = {0};
    if (!apimodel_usage_query_parse(value[P_FROM], value[P_TO], value[P_GRANULARITY],
                                    value[P_GROUP_BY], now, &q, &err)) {
        check_refusal(&err);
        return;
    }
    FUZZ_CHECK(q.from < q.to);
    FUZZ_CHECK(apimodel_bucket_start(q.granularity, q.from) == q.from);
    FUZZ_CHECK(apimodel_bucket_start(q.granularity, q.to) == q.to);
    FUZZ_CHECK(q.points >= 1 && q.points <= APIMODEL_USAGE_POINTS_MAX);
    int64_t at = q.from, steps = 0;
    while (at < q.to && steps <= APIMODEL_USAGE_POINTS_MAX) {
        int64_t next = apimodel_bucket_next(q.granularity, at);
        FUZZ_CHECK(next > at);
        at = next;
        steps++;
    }
    FUZZ_CHECK(at == q.to && steps == q.points);
    FUZZ_CHECK(q.group_by_endpoint == (value[P_GROUP_BY] != NULL));
    if (value[P_GRANULARITY] != NULL)
        FUZZ_CHECK(strcmp(apimodel_granularity_name(q.granularity), value[P_GRANULARITY]) == 0);
    check_range(value[P_FROM], value[P_TO], &q);
}

static void check_limit(const char *text)
{
    int limit = 0;
    apimodel_error err = {0};
    if (!apimodel_parse_limit(text, &limit, &err)) {
        check_refusal(&err);
        return;
    }
    FUZZ_CHECK(limit >= 1 && limit <= APIMODEL_LIST_LIMIT_MAX);
}

/* An id survives encode-then-decode unchanged. */
static void check_id_round_trip(const char *id)
{
    char cursor[APIMODEL_CURSOR_MAX + 1], back[APIMODEL_ID_MAX + 1];
    apimodel_error err = {0};
    apimodel_cursor_encode(id, cursor, sizeof cursor);
    FUZZ_CHECK(apimodel_cursor_decode(cursor, back, sizeof back, &err));
    FUZZ_CHECK(strcmp(back, id) == 0);
}

static void check_position(const char *text)
{
    if (text == NULL)
        return;
    char id[APIMODEL_ID_MAX + 1];
    apimodel_error err = {0};
    if (apimodel_cursor_decode(text, id, sizeof id, &err)) {
        FUZZ_CHECK(apimodel_valid_id(id));
        check_id_round_trip(id);
    } else {
        check_refusal(&err);
    }
    if (apimodel_valid_id(text))
        check_id_round_trip(text);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 5)
        return 0;
    unsigned present = data[0];
    uint32_t seconds = (uint32_t)data[1] << 24 | (uint32_t)data[2] << 16 |
                       (uint32_t)data[3] << 8 | data[4];
    int64_t now = YEAR2000_USEC + (int64_t)seconds * USEC_PER_SEC;
    char storage[P__COUNT][VALUE_MAX + 1];
    const char *value[P__COUNT] = {NULL};
    size_t at = 5;
    for (int i = 0; i < P__COUNT; i++) {
        if (!(present & (1u << i)))
            continue;
        size_t len = 0;
        while (at + len < size && data[at + len] != '\0')
            len++;
        size_t kept = len < VALUE_MAX ? len : VALUE_MAX;
        memcpy(storage[i], data + at, kept);
        storage[i][kept] = '\0';
        unescape_value(storage[i]);
        value[i] = storage[i];
        at += len + (at + len < size);
    }
    check_usage_query(value, now);
    check_limit(value[P_LIMIT]);
    check_position(value[P_POSITION]);
    return 0;
}
