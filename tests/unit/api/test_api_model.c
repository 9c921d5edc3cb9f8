/* Unit tests for services/api/apimodel: validation of tally-api's plan and key
 * bodies, usage query parameters (bucket and period math) and list cursors. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "apimodel.h"
#include "digest.h"
#include "suites.h"
#include "timeutil.h"

static json_t *parse(const char *text)
{
    json_error_t jerr;
    json_t *value = json_loads(text, JSON_REJECT_DUPLICATES, &jerr);
    ck_assert_msg(value != NULL, "test JSON %s: %s", text, jerr.text);
    return value;
}

/* Applies `text` to a fresh plan (creating) and returns whether it was
 * accepted; on refusal, the error code must be `code`. */
static bool plan_accepts(const char *text, const char *code)
{
    apimodel_plan plan;
    apimodel_error err = {0};
    ck_assert(apimodel_plan_init(&plan));
    json_t *body = parse(text);
    bool ok = apimodel_plan_apply(&plan, body, true, &err);
    json_decref(body);
    apimodel_plan_free(&plan);
    if (!ok && code)
        ck_assert_msg(strcmp(err.code, code) == 0, "%s: code %s (%s), expected %s", text,
                      err.code, err.message, code);
    return ok;
}

START_TEST(plan_full_body)
{
    apimodel_plan plan;
    apimodel_error err;
    ck_assert(apimodel_plan_init(&plan));
    json_t *body = parse("{\"name\":\"Pro\",\"description\":\"d\\n2\",\"quota\":{\"limit\":1000,"
                         "\"period\":\"WEEK\",\"offset\":10},\"throttle\":{\"rateLimit\":2.5,"
                         "\"burstLimit\":5},\"methodThrottles\":{\"/a/b/GET\":{\"rateLimit\":1,"
                         "\"burstLimit\":1},\"/c/*\":{\"rateLimit\":0,\"burstLimit\":0}},"
                         "\"stripeMeterEventName\":\"calls\","
                         "\"stripeSubscriptionItemId\":\"si_plan\"}");
    ck_assert(apimodel_plan_apply(&plan, body, true, &err));
    ck_assert_str_eq(plan.name, "Pro");
    ck_assert(plan.has_quota && plan.quota_limit == 1000 && plan.quota_offset == 10 &&
              plan.quota_period == PERIOD_WEEK);
    ck_assert(plan.has_throttle && plan.throttle.rate_limit == 2.5 &&
              plan.throttle.burst_limit == 5);
    ck_assert_uint_eq(json_object_size(plan.method_throttles), 2);
    ck_assert(plan.has_meter);
    ck_assert(plan.has_subscription_item);
    ck_assert_str_eq(plan.subscription_item, "si_plan");
    json_decref(body);
    /* A merge patch: only the limit changes; null removes the throttle. */
    body = parse("{\"quota\":{\"limit\":7},\"throttle\":null,\"description\":null}");
    ck_assert(apimodel_plan_apply(&plan, body, false, &err));
    ck_assert(plan.quota_limit == 7 && plan.quota_offset == 10 && plan.quota_period == PERIOD_WEEK);
    ck_assert(!plan.has_throttle);
    ck_assert_str_eq(plan.description, "");
    ck_assert_str_eq(plan.name, "Pro");
    ck_assert(plan.has_subscription_item && plan.has_meter); /* untouched by the patch */
    json_decref(body);
    /* null clears the subscription item, and only it. */
    body = parse("{\"stripeSubscriptionItemId\":null}");
    ck_assert(apimodel_plan_apply(&plan, body, false, &err));
    ck_assert(!plan.has_subscription_item && plan.has_meter);
    json_decref(body);
    apimodel_plan_free(&plan);
}
END_TEST

START_TEST(plan_refusals)
{
    ck_assert(plan_accepts("{\"name\":\"x\"}", NULL));
    ck_assert(!plan_accepts("{}", "missing_field"));
    ck_assert(!plan_accepts("[]", "invalid_body"));
    ck_assert(!plan_accepts("{\"name\":\"\"}", "invalid_field"));
    ck_assert(!plan_accepts("{\"name\":null}", "invalid_field"));
    ck_assert(!plan_accepts("{\"name\":\"a\\tb\"}", "invalid_field"));
    ck_assert(!plan_accepts("{\"name\":\"x\",\"extra\":1}", "unknown_field"));
    ck_assert(!plan_accepts("{\"name\":\"x\",\"createdAt\":\"2026-01-01\"}", "read_only_field"));
    ck_assert(!plan_accepts("{\"name\":\"x\",\"quota\":{\"limit\":-1,\"period\":\"DAY\"}}",
                            "invalid_field"));
    ck_assert(!plan_accepts("{\"name\":\"x\",\"quota\":{\"limit\":1e3,\"period\":\"DAY\"}}",
                            "invalid_field"));
    ck_assert(!plan_accepts("{\"name\":\"x\",\"quota\":{\"limit\":1,\"period\":\"Day\"}}",
                            "invalid_field"));
    ck_assert(!plan_accepts("{\"name\":\"x\",\"quota\":{\"period\":\"DAY\"}}", "missing_field"));
    ck_assert(!plan_accepts("{\"name\":\"x\",\"quota\":{\"limit\":1000000000000001,"
                            "\"period\":\"DAY\"}}", "invalid_field"));
    ck_assert(!plan_accepts("{\"name\":\"x\",\"throttle\":{\"rateLimit\":true,\"burstLimit\":1}}",
                            "invalid_field"));
    ck_assert(!plan_accepts("{\"name\":\"x\",\"throttle\":{\"rateLimit\":1,"
                            "\"burstLimit\":2147483648}}", "invalid_field"));
    ck_assert(!plan_accepts("{\"name\":\"x\",\"throttle\":{\"burstLimit\":1}}", "missing_field"));
    ck_assert(!plan_accepts("{\"name\":\"x\",\"methodThrottles\":{\"/GET\":{\"rateLimit\":1,"
                            "\"burstLimit\":1}}}", "invalid_field"));
    ck_assert(!plan_accepts("{\"name\":\"x\",\"methodThrottles\":{\"/a b/GET\":{\"rateLimit\":1,"
                            "\"burstLimit\":1}}}", "invalid_field"));
    ck_assert(!plan_accepts("{\"name\":\"x\",\"methodThrottles\":{\"/a/GET\":{\"rateLimit\":1,"
                            "\"burstLimit\":1,\"x\":1}}}", "unknown_field"));
    ck_assert(!plan_accepts("{\"name\":\"x\",\"stripeMeterEventName\":\"\"}", "invalid_field"));
    ck_assert(!plan_accepts("{\"name\":\"x\",\"stripeSubscriptionItemId\":\"\"}",
                            "invalid_field"));
    ck_assert(!plan_accepts("{\"name\":\"x\",\"stripeSubscriptionItemId\":5}", "invalid_field"));
    ck_assert(!plan_accepts("{\"name\":\"x\",\"stripeSubscriptionItemId\":\"si\\n1\"}",
                            "invalid_field"));
    ck_assert(plan_accepts("{\"name\":\"x\",\"stripeSubscriptionItemId\":null}", NULL));
    {
        /* 100 bytes are accepted, 101 refused (the column's CHECK). */
        char item[200];
        snprintf(item, sizeof item, "{\"name\":\"x\",\"stripeSubscriptionItemId\":\"%0100d\"}", 0);
        ck_assert(plan_accepts(item, NULL));
        snprintf(item, sizeof item, "{\"name\":\"x\",\"stripeSubscriptionItemId\":\"%0101d\"}", 0);
        ck_assert(!plan_accepts(item, "invalid_field"));
    }
    char big[400];
    memset(big, 0, sizeof big);
    strcpy(big, "{\"name\":\"");
    memset(big + strlen(big), 'n', 257);
    strcat(big, "\"}");
    ck_assert(!plan_accepts(big, "invalid_field"));
}
END_TEST

/* The plan's methodThrottles as stored: canonical keys (the form the
 * authorize cache compares an X-Original-URI in), -0.0 rates as 0. */
START_TEST(method_throttle_keys_are_stored_canonical)
{
    apimodel_plan plan;
    apimodel_error err;
    ck_assert(apimodel_plan_init(&plan));
    json_t *body = parse("{\"name\":\"c\",\"throttle\":{\"rateLimit\":-0.0,\"burstLimit\":1},"
                         "\"methodThrottles\":{\"/ITEMS/./x;p/HEAD\":{\"rateLimit\":-0.0,"
                         "\"burstLimit\":1},\"/a%2Fb//POST\":{\"rateLimit\":1,\"burstLimit\":2},"
                         "\"/%2e/*\":{\"rateLimit\":3.5,\"burstLimit\":2}}}");
    ck_assert(apimodel_plan_apply(&plan, body, true, &err));
    json_decref(body);
    ck_assert(plan.throttle.rate_limit == 0 && !signbit(plan.throttle.rate_limit));
    char *dumped = json_dumps(plan.method_throttles, JSON_COMPACT | JSON_SORT_KEYS);
    ck_assert_str_eq(dumped, "{\"//*\":{\"burstLimit\":2,\"rateLimit\":3.5},"
                             "\"/a/b/POST\":{\"burstLimit\":2,\"rateLimit\":1},"
                             "\"/items/x/GET\":{\"burstLimit\":1,\"rateLimit\":0.0}}");
    free(dumped);
    /* Stored keys are canonical already: applying them again changes nothing. */
    json_t *again = apimodel_method_throttles_canonical(plan.method_throttles, &err);
    ck_assert(again != NULL && json_equal(again, plan.method_throttles));
    json_decref(again);
    apimodel_plan_free(&plan);
    /* Two spellings of one path and method. */
    ck_assert(!plan_accepts("{\"name\":\"x\",\"methodThrottles\":{\"/items/GET\":{\"rateLimit\":1,"
                            "\"burstLimit\":1},\"/ITEMS/HEAD\":{\"rateLimit\":1,"
                            "\"burstLimit\":1}}}", "invalid_field"));
    /* Too long once canonical: 100 bytes of UTF-8 are 300 escaped. */
    char key[400] = "{\"name\":\"x\",\"methodThrottles\":{\"/";
    for (int i = 0; i < 50; i++)
        strcat(key, "\xc3\xa9");
    strcat(key, "/GET\":{\"rateLimit\":1,\"burstLimit\":1}}}");
    ck_assert(!plan_accepts(key, "invalid_field"));
    char path[APIMODEL_METHOD_PATH_MAX + 1], method[APIMODEL_METHOD_PATH_MAX + 1];
    ck_assert(apimodel_method_key_split("//GET", path, method));
    ck_assert_str_eq(path, "/");
    ck_assert_str_eq(method, "GET");
    ck_assert(apimodel_method_key_split("/Items./HEAD", path, method));
    ck_assert_str_eq(path, "/items");
    ck_assert_str_eq(method, "GET");
    ck_assert(!apimodel_method_key_split("/items/get", path, method));
    ck_assert(!apimodel_method_key_split("/GET", path, method));
}
END_TEST

/* HMAC-SHA-256, which key secrets are stored under: RFC 4231's vectors 1,
 * 2 and 6 (a key longer than the block is hashed first). */
START_TEST(hmac_sha256_matches_rfc_4231)
{
    static const struct {
        const char *key;
        size_t key_len;
        const char *data, *hex;
    } cases[] = {
        {"\x0b\x0b\x0b\x0b\x0b\x0b\x0b\x0b\x0b\x0b\x0b\x0b\x0b\x0b\x0b\x0b\x0b\x0b\x0b\x0b", 20,
         "Hi There", "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"},
        {"Jefe", 4, "what do ya want for nothing?",
         "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"},
        {NULL, 131, "Test Using Larger Than Block-Size Key - Hash Key First",
         "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char key[131];
        if (cases[i].key != NULL)
            memcpy(key, cases[i].key, cases[i].key_len);
        else
            memset(key, 0xaa, sizeof key);
        uint8_t mac[DIGEST_SHA256_LEN];
        char hex[2 * DIGEST_SHA256_LEN + 1];
        digest_hmac_sha256(key, cases[i].key_len, cases[i].data, strlen(cases[i].data), mac);
        digest_to_hex(mac, sizeof mac, hex);
        ck_assert_str_eq(hex, cases[i].hex);
        uint8_t back[DIGEST_SHA256_LEN];
        ck_assert(digest_from_hex(hex, back, sizeof back));
        ck_assert(memcmp(back, mac, sizeof mac) == 0);
    }
    uint8_t out[2];
    ck_assert(!digest_from_hex("abc", out, 2));   /* too short */
    ck_assert(!digest_from_hex("abcdef", out, 2)); /* too long */
    ck_assert(!digest_from_hex("ABCD", out, 2));   /* PostgreSQL writes lower case */
    ck_assert(!digest_from_hex(" abc", out, 2));
    ck_assert(!digest_from_hex(NULL, out, 2));
}
END_TEST

START_TEST(key_bodies)
{
    apimodel_key key;
    apimodel_error err;
    apimodel_key_init(&key);
    json_t *body = parse("{\"name\":\"a\",\"customerId\":\"c\",\"enabled\":false,"
                         "\"value\":\"0123456789abcdefghij\",\"planId\":\"pln_1\"}");
    ck_assert(apimodel_key_apply(&key, body, true, &err));
    ck_assert(key.has_value && key.has_plan_id && key.has_customer_id && !key.enabled);
    json_decref(body);
    body = parse("{\"customerId\":null}");
    ck_assert(apimodel_key_apply(&key, body, false, &err));
    ck_assert(!key.has_customer_id);
    json_decref(body);
    body = parse("{\"stripeSubscriptionItemId\":\"si_key\"}");
    ck_assert(apimodel_key_apply(&key, body, false, &err));
    ck_assert(key.has_subscription_item);
    ck_assert_str_eq(key.subscription_item, "si_key");
    json_decref(body);
    body = parse("{\"stripeSubscriptionItemId\":null}");
    ck_assert(apimodel_key_apply(&key, body, false, &err));
    ck_assert(!key.has_subscription_item);
    json_decref(body);
    static const struct {
        const char *text;
        bool creating;
        const char *code;
    } bad[] = {
        {"{\"value\":\"0123456789abcdefghi\"}", true, "invalid_field"},  /* 19 characters */
        {"{\"value\":\"0123456789 abcdefghij\"}", true, "invalid_field"},
        {"{\"value\":\"0123456789abcdefghij\"}", false, "read_only_field"},
        {"{\"planId\":\"p\"}", false, "read_only_field"},
        {"{\"planId\":\"a/b\"}", true, "invalid_field"},
        {"{\"enabled\":0}", true, "invalid_field"},
        {"{\"customerId\":\"\"}", true, "invalid_field"},
        {"{\"stripeSubscriptionItemId\":\"\"}", true, "invalid_field"},
        {"{\"stripeSubscriptionItemId\":[]}", false, "invalid_field"},
        {"{\"stripeSubscriptionItemId\":\"si_0123456789012345678901234567890123456789012345678901"
         "2345678901234567890123456789012345678901234567\"}", true, "invalid_field"}, /* 101 */
        {"{\"owner\":\"x\"}", true, "unknown_field"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        apimodel_key_init(&key);
        body = parse(bad[i].text);
        ck_assert_msg(!apimodel_key_apply(&key, body, bad[i].creating, &err), "%s", bad[i].text);
        ck_assert_msg(strcmp(err.code, bad[i].code) == 0, "%s: %s", bad[i].text, err.code);
        json_decref(body);
    }
}
END_TEST

static int64_t at(const char *text)
{
    int64_t t;
    ck_assert(time_parse_rfc3339(text, strlen(text), &t));
    return t;
}

START_TEST(usage_query_ranges)
{
    apimodel_usage_query q;
    apimodel_error err;
    int64_t now = at("2026-11-23T12:34:56Z");
    ck_assert(apimodel_usage_query_parse(NULL, NULL, NULL, NULL, now, &q, &err));
    ck_assert_int_eq(q.granularity, GRANULARITY_DAY);
    ck_assert_int_eq(q.from, at("2026-10-24T00:00:00Z"));
    ck_assert_int_eq(q.to, at("2026-11-24T00:00:00Z"));
    ck_assert_int_eq(q.points, 31);
    ck_assert(apimodel_usage_query_parse(NULL, NULL, "hour", NULL, now, &q, &err));
    ck_assert_int_eq(q.from, at("2026-11-22T12:00:00Z"));
    ck_assert_int_eq(q.to, at("2026-11-23T13:00:00Z"));
    ck_assert_int_eq(q.points, 25);
    ck_assert(apimodel_usage_query_parse(NULL, NULL, "month", NULL, now, &q, &err));
    ck_assert_int_eq(q.from, at("2025-12-01T00:00:00Z"));
    ck_assert_int_eq(q.to, at("2026-12-01T00:00:00Z"));
    ck_assert_int_eq(q.points, 12);
    /* A date `to` includes its day; months are calendar months. */
    ck_assert(apimodel_usage_query_parse("2024-01-31", "2024-03-01", "month", "endpoint", now, &q,
                                         &err));
    ck_assert(q.group_by_endpoint);
    ck_assert_int_eq(q.from, at("2024-01-01T00:00:00Z"));
    ck_assert_int_eq(q.to, at("2024-04-01T00:00:00Z"));
    ck_assert_int_eq(q.points, 3);
    ck_assert_int_eq(apimodel_bucket_next(GRANULARITY_MONTH, at("2024-02-01T00:00:00Z")),
                     at("2024-03-01T00:00:00Z"));
    /* Offsets are read as instants. */
    ck_assert(apimodel_usage_query_parse("2026-11-23T01:30:00+02:00", "2026-11-23T00:00:00Z",
                                         "hour", NULL, now, &q, &err));
    ck_assert_int_eq(q.from, at("2026-11-22T23:00:00Z"));
    ck_assert_int_eq(q.points, 1);
    /* from == to still shows its bucket. */
    ck_assert(apimodel_usage_query_parse("2026-11-23T05:00:00Z", "2026-11-23T05:00:00Z", "hour",
                                         NULL, now, &q, &err));
    ck_assert_int_eq(q.points, 1);
    ck_assert_int_eq(q.to - q.from, USEC_PER_HOUR);
    /* 1000 hours pass, 1001 do not. */
    ck_assert(apimodel_usage_query_parse("2026-01-01T00:00:00Z", "2026-02-11T16:00:00Z", "hour",
                                         NULL, now, &q, &err));
    ck_assert_int_eq(q.points, 1000);
    ck_assert(!apimodel_usage_query_parse("2026-01-01T00:00:00Z", "2026-02-11T16:00:01Z", "hour",
                                          NULL, now, &q, &err));
    ck_assert_str_eq(err.code, "too_many_points");
}
END_TEST

/* A date `to` covers its whole day: a date-time `from` inside it is not
 * "after" it; the instant after that day is. */
START_TEST(usage_query_date_to_covers_its_day)
{
    apimodel_usage_query q;
    apimodel_error err;
    int64_t now = at("2026-11-23T12:00:00Z");
    ck_assert(apimodel_usage_query_parse("2026-11-01T12:00:00Z", "2026-11-01", "hour", NULL, now,
                                         &q, &err));
    ck_assert_int_eq(q.from, at("2026-11-01T12:00:00Z"));
    ck_assert_int_eq(q.to, at("2026-11-02T00:00:00Z"));
    ck_assert_int_eq(q.points, 12);
    ck_assert(apimodel_usage_query_parse("2026-11-01T23:59:59Z", "2026-11-01", "day", NULL, now,
                                         &q, &err));
    ck_assert_int_eq(q.points, 1);
    ck_assert(!apimodel_usage_query_parse("2026-11-02T00:00:00Z", "2026-11-01", "hour", NULL, now,
                                          &q, &err));
    ck_assert_str_eq(err.code, "invalid_range");
}
END_TEST

/* The count of requests allowed here since the counters were read starts
 * afresh when the quota period rolls over, and a reload that read the
 * counters of an earlier period does not bring the old count back. */
START_TEST(quota_local_count_resets_at_rollover)
{
    int64_t day1 = at("2026-11-23T00:00:00Z"), day2 = at("2026-11-24T00:00:00Z");
    apimodel_quota_local q = {0};
    apimodel_quota_local_reload(&q, 0, day1, false);
    ck_assert_int_eq(apimodel_quota_local_count(&q, 7, day1), 7);
    /* Midnight: the 7 belong to day 1. */
    ck_assert_int_eq(apimodel_quota_local_count(&q, 7, day2), 0);
    ck_assert_int_eq(apimodel_quota_local_count(&q, 9, day2), 2);
    /* A reload whose query started before midnight (mark 5, day 1's
     * counters) keeps the day-2 count. */
    apimodel_quota_local_reload(&q, 5, day1, false);
    ck_assert_int_eq(apimodel_quota_local_count(&q, 10, day2), 3);
    /* A reload in day 2 counts from its mark. */
    apimodel_quota_local_reload(&q, 9, day2, false);
    ck_assert_int_eq(apimodel_quota_local_count(&q, 10, day2), 1);
    /* A changed plan (another period kind) takes the reload's mark. */
    apimodel_quota_local_reload(&q, 10, at("2026-11-01T00:00:00Z"), true);
    ck_assert_int_eq(apimodel_quota_local_count(&q, 12, at("2026-11-01T00:00:00Z")), 2);
}
END_TEST

/* The quota decision's `used`: the database counter plus what was allowed
 * here since the reload, but never below what was allowed here in the
 * period, so a lagging (or stopped) collector cannot let one process past
 * the quota by reloading. */
START_TEST(quota_used_never_below_allowed_in_period)
{
    int64_t day1 = at("2026-11-23T00:00:00Z"), day2 = at("2026-11-24T00:00:00Z");
    apimodel_quota_local q = {0};
    apimodel_quota_local_reload(&q, 0, day1, true); /* a new key */
    /* Quota 3, no events counted: 3 allowed (total 0..2 before each). */
    for (int64_t total = 0; total < 3; total++)
        ck_assert_int_eq(apimodel_quota_used(&q, 0, day1, total, day1), total);
    ck_assert_int_eq(apimodel_quota_used(&q, 0, day1, 3, day1), 3); /* 429 */
    /* Reloads while the collector has counted nothing: still 3, not 0. */
    apimodel_quota_local_reload(&q, 3, day1, false);
    ck_assert_int_eq(apimodel_quota_used(&q, 0, day1, 3, day1), 3);
    apimodel_quota_local_reload(&q, 3, day1, false);
    ck_assert_int_eq(apimodel_quota_used(&q, 0, day1, 3, day1), 3);
    /* The collector caught up with 2 of them: 2 + 0 < 3, still 3. */
    ck_assert_int_eq(apimodel_quota_used(&q, 2, day1, 3, day1), 3);
    /* Other replicas' requests in the counter: the counter wins. */
    ck_assert_int_eq(apimodel_quota_used(&q, 10, day1, 3, day1), 10);
    ck_assert_int_eq(apimodel_quota_used(&q, 10, day1, 4, day1), 11);
    /* A counter read for an earlier period counts nothing. */
    ck_assert_int_eq(apimodel_quota_used(&q, 10, day1 - 86400 * INT64_C(1000000), 4, day1), 4);
    /* Midnight: both counts start afresh. */
    ck_assert_int_eq(apimodel_quota_used(&q, 10, day1, 4, day2), 0);
    ck_assert_int_eq(apimodel_quota_used(&q, 0, day2, 6, day2), 2);
    /* A reload whose query started before midnight (day 1's counter 50)
     * keeps day 2's counts and does not count day 1's counter. */
    apimodel_quota_local_reload(&q, 5, day1, false);
    ck_assert_int_eq(apimodel_quota_used(&q, 50, day1, 7, day2), 3);
    /* A day-2 reload: counter 1 + 0 since, but 3 allowed here in day 2. */
    apimodel_quota_local_reload(&q, 7, day2, false);
    ck_assert_int_eq(apimodel_quota_used(&q, 1, day2, 7, day2), 3);
    ck_assert_int_eq(apimodel_quota_used(&q, 1, day2, 8, day2), 4);
    /* A changed plan restarts both counts at the reload's mark. */
    int64_t nov = at("2026-11-01T00:00:00Z");
    apimodel_quota_local_reload(&q, 8, nov, true);
    ck_assert_int_eq(apimodel_quota_used(&q, 0, nov, 8, nov), 0);
    ck_assert_int_eq(apimodel_quota_used(&q, 0, nov, 10, nov), 2);
    ck_assert_int_eq(apimodel_quota_used(&q, 5, nov, 10, nov), 7);
}
END_TEST

START_TEST(usage_query_default_from_stays_in_year_one)
{
    apimodel_usage_query q;
    apimodel_error err;
    int64_t now = at("2026-11-23T12:34:56Z");
    int64_t earliest = at("0001-01-01T00:00:00Z");
    static const char *const granularities[] = {"hour", "day", "month"};
    for (size_t i = 0; i < 3; i++) {
        ck_assert_msg(apimodel_usage_query_parse(NULL, "0001-01-01", granularities[i], NULL, now,
                                                 &q, &err),
                      "%s: %s", granularities[i], err.message);
        ck_assert_msg(q.from >= earliest, "%s: from %lld", granularities[i], (long long)q.from);
        ck_assert_int_gt(q.to, q.from);
    }
    ck_assert(apimodel_usage_query_parse(NULL, "0001-01-01", "day", NULL, now, &q, &err));
    ck_assert_int_eq(q.from, earliest);
    ck_assert_int_eq(q.to, at("0001-01-02T00:00:00Z"));
}
END_TEST

/* An unknown member's name is quoted cut short, but never inside a
 * character: the message stays valid UTF-8. */
START_TEST(quoted_names_are_cut_at_characters)
{
    char name[80];
    memset(name, 'a', 59);
    memcpy(name + 59, "\xc3\xa9\xc3\xa9", 5); /* e-acute across byte 60 */
    char text[200];
    snprintf(text, sizeof text, "{\"name\":\"x\",\"%s\":1}", name);
    apimodel_plan plan;
    apimodel_error err = {0};
    ck_assert(apimodel_plan_init(&plan));
    json_t *body = parse(text);
    ck_assert(!apimodel_plan_apply(&plan, body, true, &err));
    json_decref(body);
    apimodel_plan_free(&plan);
    ck_assert_str_eq(err.code, "unknown_field");
    json_t *as_json = json_string(err.message);
    ck_assert_msg(as_json != NULL, "not valid UTF-8: %s", err.message);
    json_decref(as_json);
}
END_TEST

START_TEST(usage_query_refusals)
{
    apimodel_usage_query q;
    apimodel_error err;
    int64_t now = at("2026-11-23T12:00:00Z");
    static const struct {
        const char *from, *to, *granularity, *group_by, *code;
    } bad[] = {
        {"2026-11-02", "2026-11-01", NULL, NULL, "invalid_range"},
        {"2026-11-01T00:00:01Z", "2026-11-01T00:00:00Z", "hour", NULL, "invalid_range"},
        {"2026-11-31", NULL, NULL, NULL, "invalid_parameter"},
        {"yesterday", NULL, NULL, NULL, "invalid_parameter"},
        {"", NULL, NULL, NULL, "invalid_parameter"},
        {NULL, "2026-11-01T25:00:00Z", NULL, NULL, "invalid_parameter"},
        {NULL, NULL, "minute", NULL, "invalid_parameter"},
        {NULL, NULL, "", NULL, "invalid_parameter"},
        {NULL, NULL, NULL, "method", "invalid_parameter"},
        {"2000-01-01", NULL, "day", NULL, "too_many_points"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        ck_assert_msg(!apimodel_usage_query_parse(bad[i].from, bad[i].to, bad[i].granularity,
                                                  bad[i].group_by, now, &q, &err),
                      "case %zu accepted", i);
        ck_assert_msg(strcmp(err.code, bad[i].code) == 0, "case %zu: %s", i, err.code);
    }
}
END_TEST

START_TEST(cursors_and_limits)
{
    char cursor[APIMODEL_CURSOR_MAX + 1], id[APIMODEL_ID_MAX + 1];
    apimodel_error err;
    const char *ids[] = {"a", "ab", "abc", "key_pro_acme", "pln_0123456789abcdefghij"};
    for (size_t i = 0; i < sizeof ids / sizeof ids[0]; i++) {
        apimodel_cursor_encode(ids[i], cursor, sizeof cursor);
        ck_assert(apimodel_cursor_decode(cursor, id, sizeof id, &err));
        ck_assert_str_eq(id, ids[i]);
    }
    char long_id[APIMODEL_ID_MAX + 1];
    memset(long_id, 'z', APIMODEL_ID_MAX);
    long_id[APIMODEL_ID_MAX] = '\0';
    apimodel_cursor_encode(long_id, cursor, sizeof cursor);
    ck_assert(apimodel_cursor_decode(cursor, id, sizeof id, &err));
    ck_assert_str_eq(id, long_id);
    ck_assert(!apimodel_cursor_decode("", id, sizeof id, &err));
    ck_assert(!apimodel_cursor_decode("a", id, sizeof id, &err));
    ck_assert(!apimodel_cursor_decode("a+b=", id, sizeof id, &err));
    ck_assert(!apimodel_cursor_decode("ICA", id, sizeof id, &err)); /* "  ": not an id */
    int limit;
    ck_assert(apimodel_parse_limit(NULL, &limit, &err) && limit == APIMODEL_LIST_LIMIT_DEFAULT);
    ck_assert(apimodel_parse_limit("500", &limit, &err) && limit == 500);
    ck_assert(!apimodel_parse_limit("501", &limit, &err));
    ck_assert(!apimodel_parse_limit("0", &limit, &err));
    ck_assert(!apimodel_parse_limit("+5", &limit, &err));
    ck_assert(!apimodel_parse_limit("5x", &limit, &err));
    ck_assert(!apimodel_parse_limit("99999999999999999999", &limit, &err));
}
END_TEST

Suite *api_model_suite(void)
{
    Suite *s = suite_create("api_model");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, plan_full_body);
    tcase_add_test(tc, plan_refusals);
    tcase_add_test(tc, key_bodies);
    tcase_add_test(tc, hmac_sha256_matches_rfc_4231);
    tcase_add_test(tc, method_throttle_keys_are_stored_canonical);
    tcase_add_test(tc, usage_query_ranges);
    tcase_add_test(tc, usage_query_refusals);
    tcase_add_test(tc, usage_query_date_to_covers_its_day);
    tcase_add_test(tc, quota_local_count_resets_at_rollover);
    tcase_add_test(tc, quota_used_never_below_allowed_in_period);
    tcase_add_test(tc, usage_query_default_from_stays_in_year_one);
    tcase_add_test(tc, quoted_names_are_cut_at_characters);
    tcase_add_test(tc, cursors_and_limits);
    suite_add_tcase(s, tc);
    return s;
}
