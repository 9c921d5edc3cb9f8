/* Unit tests for issue #12's pure parts of services/api: alert thresholds
 * and quota percentages (apimodel), soft quota fields of plan bodies, and
 * webhook endpoint bodies (webhookmodel). */
#include <stdint.h>
#include <string.h>

#include "apimodel.h"
#include "suites.h"
#include "webhookmodel.h"

static json_t *parse(const char *text)
{
    json_error_t jerr;
    json_t *value = json_loads(text, JSON_REJECT_DUPLICATES, &jerr);
    ck_assert_msg(value != NULL, "test JSON %s: %s", text, jerr.text);
    return value;
}

/* `text` applied to a new plan (creating); on refusal the code must be
 * `code`. The plan is left in *out when given (free it). */
static bool plan_apply(const char *text, const char *code, apimodel_plan *out)
{
    apimodel_plan plan;
    apimodel_error err = {0};
    ck_assert(apimodel_plan_init(&plan));
    json_t *body = parse(text);
    bool ok = apimodel_plan_apply(&plan, body, true, &err);
    json_decref(body);
    if (!ok && code)
        ck_assert_msg(strcmp(err.code, code) == 0, "%s: %s (%s), expected %s", text, err.code,
                      err.message, code);
    if (out)
        *out = plan;
    else
        apimodel_plan_free(&plan);
    return ok;
}

START_TEST(percent_units_round_up_and_saturate)
{
    ck_assert_int_eq(apimodel_percent_units(100, 80), 80);
    ck_assert_int_eq(apimodel_percent_units(8, 80), 7); /* 6.4 -> 7 */
    ck_assert_int_eq(apimodel_percent_units(8, 120), 10); /* 9.6 -> 10 */
    ck_assert_int_eq(apimodel_percent_units(3, 150), 5); /* 4.5 -> 5 */
    ck_assert_int_eq(apimodel_percent_units(1, 1), 1);
    ck_assert_int_eq(apimodel_percent_units(0, 150), 0);
    ck_assert_int_eq(apimodel_percent_units(INT64_C(1000000000000000), 100000),
                     INT64_C(1000000000000000000));
    ck_assert_int_eq(apimodel_percent_units(INT64_MAX, 200), INT64_MAX);
    ck_assert_int_eq(apimodel_percent_units(INT64_MAX / 100 * 99, 102), INT64_MAX);
    ck_assert_int_lt(apimodel_percent_units(INT64_MAX / 100 * 99, 101), INT64_MAX);
    /* exact where it fits: 199 * 150 / 100 = 298.5 -> 299 */
    ck_assert_int_eq(apimodel_percent_units(199, 150), 299);
}
END_TEST

START_TEST(thresholds_text_round_trip)
{
    apimodel_thresholds t;
    char text[APIMODEL_THRESHOLDS_TEXT_MAX];
    ck_assert(apimodel_thresholds_parse_text("{80,100,120}", &t));
    ck_assert_int_eq(t.count, 3);
    ck_assert_int_eq(t.percent[2], 120);
    apimodel_thresholds_text(&t, text, sizeof text);
    ck_assert_str_eq(text, "{80,100,120}");
    ck_assert(apimodel_thresholds_parse_text("{}", &t));
    ck_assert_int_eq(t.count, 0);
    apimodel_thresholds_text(&t, text, sizeof text);
    ck_assert_str_eq(text, "{}");
    const char *refused[] = {NULL, "", "{", "80", "{80,}", "{,80}", "{100,80}", "{80,80}",
                             "{0}", "{100001}", "{-1}", "{80}x", "{1,2,3,4,5,6,7,8,9,10,11,12,"
                             "13,14,15,16,17}"};
    for (size_t i = 0; i < sizeof refused / sizeof refused[0]; i++)
        ck_assert_msg(!apimodel_thresholds_parse_text(refused[i], &t), "accepted %s",
                      refused[i] ? refused[i] : "NULL");
    /* the widest there is fits its buffer */
    apimodel_thresholds wide = {APIMODEL_THRESHOLDS_MAX, {0}};
    for (int i = 0; i < APIMODEL_THRESHOLDS_MAX; i++)
        wide.percent[i] = APIMODEL_PERCENT_MAX - APIMODEL_THRESHOLDS_MAX + 1 + i;
    apimodel_thresholds_text(&wide, text, sizeof text);
    ck_assert(apimodel_thresholds_parse_text(text, &t));
    ck_assert_int_eq(t.count, APIMODEL_THRESHOLDS_MAX);
}
END_TEST

START_TEST(plan_alert_thresholds_and_soft_quota)
{
    apimodel_plan plan;
    ck_assert(plan_apply("{\"name\":\"p\"}", NULL, &plan));
    ck_assert_int_eq(plan.thresholds.count, 3); /* the default 80, 100, 120 */
    ck_assert(!plan.quota_soft);
    apimodel_plan_free(&plan);
    ck_assert(plan_apply("{\"name\":\"p\",\"alertThresholds\":[],\"quota\":{\"limit\":10,"
                         "\"period\":\"DAY\",\"enforcement\":\"soft\",\"ceilingPercent\":150}}",
                         NULL, &plan));
    ck_assert_int_eq(plan.thresholds.count, 0);
    ck_assert(plan.quota_soft && plan.has_ceiling);
    ck_assert_int_eq(plan.ceiling_percent, 150);
    /* PATCH to hard drops the stored ceiling; ceilingPercent null removes it */
    apimodel_error err;
    json_t *hard = parse("{\"quota\":{\"enforcement\":\"hard\"}}");
    ck_assert(apimodel_plan_apply(&plan, hard, false, &err));
    ck_assert(!plan.quota_soft && !plan.has_ceiling);
    json_decref(hard);
    apimodel_plan_free(&plan);
    const char *refused[] = {
        "{\"name\":\"p\",\"alertThresholds\":[100,80]}",
        "{\"name\":\"p\",\"alertThresholds\":[80,80]}",
        "{\"name\":\"p\",\"alertThresholds\":[0]}",
        "{\"name\":\"p\",\"alertThresholds\":[100001]}",
        "{\"name\":\"p\",\"alertThresholds\":[80.5]}",
        "{\"name\":\"p\",\"alertThresholds\":null}",
        "{\"name\":\"p\",\"alertThresholds\":[1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17]}",
        "{\"name\":\"p\",\"quota\":{\"limit\":1,\"period\":\"DAY\",\"enforcement\":\"Soft\"}}",
        "{\"name\":\"p\",\"quota\":{\"limit\":1,\"period\":\"DAY\",\"ceilingPercent\":150}}",
        "{\"name\":\"p\",\"quota\":{\"limit\":1,\"period\":\"DAY\",\"enforcement\":\"soft\","
        "\"ceilingPercent\":99}}",
        "{\"name\":\"p\",\"quota\":{\"limit\":1,\"period\":\"DAY\",\"enforcement\":\"soft\","
        "\"ceilingPercent\":100001}}",
    };
    for (size_t i = 0; i < sizeof refused / sizeof refused[0]; i++)
        ck_assert_msg(!plan_apply(refused[i], "invalid_field", NULL), "accepted %s", refused[i]);
}
END_TEST

START_TEST(key_alert_thresholds)
{
    apimodel_key key;
    apimodel_error err;
    apimodel_key_init(&key);
    json_t *own = parse("{\"alertThresholds\":[50,90]}");
    ck_assert(apimodel_key_apply(&key, own, false, &err));
    ck_assert(key.has_thresholds);
    ck_assert_int_eq(key.thresholds.count, 2);
    json_decref(own);
    json_t *plan_s = parse("{\"alertThresholds\":null}");
    ck_assert(apimodel_key_apply(&key, plan_s, false, &err));
    ck_assert(!key.has_thresholds);
    json_decref(plan_s);
    json_t *bad = parse("{\"alertThresholds\":[90,50]}");
    ck_assert(!apimodel_key_apply(&key, bad, false, &err));
    json_decref(bad);
}
END_TEST

/* `text` applied to a new endpoint (creating); the refusal code must be `code`. */
static bool endpoint_accepts(const char *text, const char *code)
{
    webhook_endpoint endpoint;
    apimodel_error err = {0};
    webhookmodel_init(&endpoint);
    json_t *body = parse(text);
    bool ok = webhookmodel_apply(&endpoint, body, true, &err);
    json_decref(body);
    if (!ok && code)
        ck_assert_msg(strcmp(err.code, code) == 0, "%s: %s (%s), expected %s", text, err.code,
                      err.message, code);
    return ok;
}

START_TEST(webhook_bodies)
{
    ck_assert(endpoint_accepts("{\"url\":\"https://h.example.com/x?y=1\",\"eventTypes\":"
                               "[\"quota.exhausted\",\"quota.threshold_reached\"],"
                               "\"description\":\"d\",\"enabled\":false}", NULL));
    ck_assert(endpoint_accepts("{\"url\":\"HTTP://10.0.0.1:8080\",\"eventTypes\":"
                               "[\"quota.exhausted\"]}", NULL));
    struct {
        const char *body, *code;
    } refused[] = {
        {"{\"eventTypes\":[\"quota.exhausted\"]}", "missing_field"},
        {"{\"url\":\"https://h.example.com\"}", "missing_field"},
        {"{\"url\":\"ftp://h.example.com\",\"eventTypes\":[\"quota.exhausted\"]}", "invalid_field"},
        {"{\"url\":\"https://\",\"eventTypes\":[\"quota.exhausted\"]}", "invalid_field"},
        {"{\"url\":\"https://:80/\",\"eventTypes\":[\"quota.exhausted\"]}", "invalid_field"},
        {"{\"url\":\"https://a@h.example.com\",\"eventTypes\":[\"quota.exhausted\"]}",
         "invalid_field"},
        {"{\"url\":\"https://h.example.com/a b\",\"eventTypes\":[\"quota.exhausted\"]}",
         "invalid_field"},
        {"{\"url\":\"https://h.example.com\",\"eventTypes\":[]}", "invalid_field"},
        {"{\"url\":\"https://h.example.com\",\"eventTypes\":[\"quota.other\"]}", "invalid_field"},
        {"{\"url\":\"https://h.example.com\",\"eventTypes\":[\"quota.exhausted\","
         "\"quota.exhausted\"]}",
         "invalid_field"},
        {"{\"url\":\"https://h.example.com\",\"eventTypes\":[\"quota.exhausted\"],"
         "\"enabled\":1}",
         "invalid_field"},
        {"{\"url\":\"https://h.example.com\",\"eventTypes\":[\"quota.exhausted\"],"
         "\"secret\":\"whsec_x\"}",
         "read_only_field"},
        {"{\"url\":\"https://h.example.com\",\"eventTypes\":[\"quota.exhausted\"],\"x\":1}",
         "unknown_field"},
    };
    for (size_t i = 0; i < sizeof refused / sizeof refused[0]; i++)
        ck_assert_msg(!endpoint_accepts(refused[i].body, refused[i].code), "accepted %s",
                      refused[i].body);
    char long_url[WEBHOOK_URL_MAX + 32] = "https://h.example.com/";
    memset(long_url + strlen(long_url), 'a', WEBHOOK_URL_MAX);
    long_url[WEBHOOK_URL_MAX + 1] = '\0';
    apimodel_error err;
    ck_assert(!webhookmodel_url_valid(long_url, &err));
    long_url[WEBHOOK_URL_MAX] = '\0';
    ck_assert(webhookmodel_url_valid(long_url, &err));
}
END_TEST

START_TEST(webhook_event_types_text_and_rotation)
{
    webhook_endpoint e;
    webhookmodel_init(&e);
    ck_assert(webhookmodel_event_types_parse("{quota.exhausted,quota.threshold_reached}", &e));
    ck_assert_int_eq(e.event_type_count, 2);
    char text[WEBHOOK_EVENT_TYPES_TEXT_MAX];
    webhookmodel_event_types_text(&e, text, sizeof text);
    ck_assert_str_eq(text, "{\"quota.exhausted\",\"quota.threshold_reached\"}");
    ck_assert(!webhookmodel_event_types_parse("{quota.nope}", &e));
    ck_assert(!webhookmodel_event_types_parse("{quota.exhausted", &e));
    ck_assert(!webhookmodel_event_types_parse(NULL, &e));
    int64_t seconds;
    apimodel_error err;
    ck_assert(webhookmodel_rotation_parse(NULL, &seconds, &err));
    ck_assert_int_eq(seconds, 86400);
    json_t *body = parse("{\"expiresInSeconds\":0}");
    ck_assert(webhookmodel_rotation_parse(body, &seconds, &err));
    ck_assert_int_eq(seconds, 0);
    json_decref(body);
    const char *refused[] = {"{\"expiresInSeconds\":-1}", "{\"expiresInSeconds\":604801}",
                             "{\"expiresInSeconds\":\"60\"}", "{\"expires\":60}"};
    for (size_t i = 0; i < sizeof refused / sizeof refused[0]; i++) {
        body = parse(refused[i]);
        ck_assert_msg(!webhookmodel_rotation_parse(body, &seconds, &err), "accepted %s",
                      refused[i]);
        json_decref(body);
    }
}
END_TEST

Suite *alert_model_suite(void)
{
    Suite *s = suite_create("alert_model");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, percent_units_round_up_and_saturate);
    tcase_add_test(tc, thresholds_text_round_trip);
    tcase_add_test(tc, plan_alert_thresholds_and_soft_quota);
    tcase_add_test(tc, key_alert_thresholds);
    tcase_add_test(tc, webhook_bodies);
    tcase_add_test(tc, webhook_event_types_text_and_rotation);
    suite_add_tcase(s, tc);
    return s;
}
