/* Fuzz target: services/api/apimodel.c's body models, apimodel_plan_apply and
 * apimodel_key_apply, as tally-api calls them on POST and PATCH bodies.
 * Input: one control byte (bit 0: key rather than plan; bit 1: creating
 * rather than patching; bit 2: patch a fully set model rather than an
 * empty one), then the body, parsed as the api parses it
 * (JSON_REJECT_DUPLICATES).
 * Properties of an accepted body: every field is within the bounds
 * apimodel.h documents, and the model written back as a creation body is
 * accepted again and gives the same model (what GET returns can be POSTed).
 * A refusal has one of the contract's codes and a non-empty message. */
#include <jansson.h>
#include <math.h>
#include <stdbool.h>
#include <string.h>

#include "apimodel.h"
#include "apitext.h"
#include "fuzz.h"
#include "utf8.h"

static void check_text(const char *text, size_t min, size_t max, bool multiline)
{
    size_t len = strnlen(text, max + 1);
    FUZZ_CHECK(len >= min && len <= max);
    FUZZ_CHECK(utf8_valid(text, len));
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)text[i];
        bool allowed_space = multiline && (c == '\t' || c == '\n' || c == '\r');
        FUZZ_CHECK(c != 0x7f && (c >= 0x20 || allowed_space));
    }
}

static void check_refusal(const apimodel_error *err)
{
    static const char *const codes[] = {"invalid_body",    "invalid_field", "unknown_field",
                                        "missing_field",   "read_only_field", "internal"};
    bool known = false;
    for (size_t i = 0; i < sizeof codes / sizeof codes[0]; i++)
        known = known || (err->code != NULL && strcmp(err->code, codes[i]) == 0);
    FUZZ_CHECK(known);
    size_t len = strnlen(err->message, sizeof err->message);
    FUZZ_CHECK(len >= 1 && len < sizeof err->message);
    /* The api sanitizes before answering; the message must survive that. */
    char answer[sizeof err->message];
    memcpy(answer, err->message, len + 1);
    apitext_utf8_sanitize(answer);
    FUZZ_CHECK(utf8_valid(answer, strlen(answer)));
}

/* ---- plans --------------------------------------------------------------- */

static void check_plan(const apimodel_plan *plan)
{
    check_text(plan->name, 1, APIMODEL_NAME_MAX, false);
    check_text(plan->description, 0, APIMODEL_DESCRIPTION_MAX, true);
    if (plan->has_quota) {
        FUZZ_CHECK(plan->quota_limit >= 0 && plan->quota_limit <= APIMODEL_QUOTA_MAX);
        FUZZ_CHECK(plan->quota_offset >= 0 && plan->quota_offset <= APIMODEL_QUOTA_MAX);
        FUZZ_CHECK((unsigned)plan->quota_period < PERIOD_KIND_COUNT);
    }
    if (plan->has_throttle) {
        FUZZ_CHECK(isfinite(plan->throttle.rate_limit));
        FUZZ_CHECK(plan->throttle.rate_limit >= 0 && plan->throttle.rate_limit <= APIMODEL_RATE_MAX);
        FUZZ_CHECK(plan->throttle.burst_limit >= 0 && plan->throttle.burst_limit <= APIMODEL_BURST_MAX);
    }
    apimodel_error err = {0};
    FUZZ_CHECK(plan->method_throttles != NULL);
    FUZZ_CHECK(apimodel_method_throttles_valid(plan->method_throttles, &err));
    if (plan->has_meter)
        check_text(plan->meter, 1, APIMODEL_METER_MAX, false);
    if (plan->has_subscription_item)
        check_text(plan->subscription_item, 1, APIMODEL_SUBSCRIPTION_ITEM_MAX, false);
}

static json_t *plan_to_body(const apimodel_plan *plan)
{
    json_t *body = json_pack("{s:s,s:s,s:O}", "name", plan->name, "description",
                             plan->description, "methodThrottles", plan->method_throttles);
    FUZZ_CHECK(body != NULL);
    if (plan->has_quota)
        json_object_set_new(body, "quota",
                            json_pack("{s:I,s:s,s:I}", "limit", (json_int_t)plan->quota_limit,
                                      "period", period_name(plan->quota_period), "offset",
                                      (json_int_t)plan->quota_offset));
    if (plan->has_throttle)
        json_object_set_new(body, "throttle",
                            json_pack("{s:f,s:I}", "rateLimit", plan->throttle.rate_limit,
                                      "burstLimit", (json_int_t)plan->throttle.burst_limit));
    if (plan->has_meter)
        json_object_set_new(body, "stripeMeterEventName", json_string(plan->meter));
    if (plan->has_subscription_item)
        json_object_set_new(body, "stripeSubscriptionItemId", json_string(plan->subscription_item));
    return body;
}

static bool same_plan(const apimodel_plan *a, const apimodel_plan *b)
{
    return strcmp(a->name, b->name) == 0 && strcmp(a->description, b->description) == 0 &&
           a->has_quota == b->has_quota &&
           (!a->has_quota || (a->quota_limit == b->quota_limit &&
                              a->quota_offset == b->quota_offset &&
                              a->quota_period == b->quota_period)) &&
           a->has_throttle == b->has_throttle &&
           (!a->has_throttle || (a->throttle.rate_limit == b->throttle.rate_limit &&
                                 a->throttle.burst_limit == b->throttle.burst_limit)) &&
           json_equal(a->method_throttles, b->method_throttles) && a->has_meter == b->has_meter &&
           (!a->has_meter || strcmp(a->meter, b->meter) == 0) &&
           a->has_subscription_item == b->has_subscription_item &&
           (!a->has_subscription_item || strcmp(a->subscription_item, b->subscription_item) == 0);
}

/* A plan with every optional part set, as a PATCH finds it in the database. */
static void fill_plan(apimodel_plan *plan)
{
    json_t *body = json_loads(
        "{\"name\":\"Pro\",\"description\":\"d\",\"quota\":{\"limit\":1000,\"period\":\"WEEK\","
        "\"offset\":10},\"throttle\":{\"rateLimit\":5.5,\"burstLimit\":10},"
        "\"methodThrottles\":{\"/items/GET\":{\"rateLimit\":1,\"burstLimit\":2}},"
        "\"stripeMeterEventName\":\"calls\",\"stripeSubscriptionItemId\":\"si_1\"}",
        0, NULL);
    apimodel_error err;
    FUZZ_CHECK(body != NULL && apimodel_plan_apply(plan, body, true, &err));
    json_decref(body);
}

static void fuzz_plan(const json_t *body, bool creating, bool filled)
{
    apimodel_plan plan;
    apimodel_error err = {0};
    FUZZ_CHECK(apimodel_plan_init(&plan));
    if (filled)
        fill_plan(&plan);
    else if (!creating)
        memcpy(plan.name, "n", 2); /* a stored plan always has a name */
    if (!apimodel_plan_apply(&plan, body, creating, &err)) {
        check_refusal(&err);
        apimodel_plan_free(&plan);
        return;
    }
    check_plan(&plan);
    json_t *written = plan_to_body(&plan);
    apimodel_plan copy;
    FUZZ_CHECK(apimodel_plan_init(&copy));
    FUZZ_CHECK(apimodel_plan_apply(&copy, written, true, &err));
    FUZZ_CHECK(same_plan(&plan, &copy));
    json_decref(written);
    apimodel_plan_free(&copy);
    apimodel_plan_free(&plan);
}

/* ---- keys ---------------------------------------------------------------- */

static void check_key(const apimodel_key *key, bool creating)
{
    check_text(key->name, 0, APIMODEL_NAME_MAX, false);
    check_text(key->description, 0, APIMODEL_DESCRIPTION_MAX, true);
    if (key->has_customer_id)
        check_text(key->customer_id, 1, APIMODEL_CUSTOMER_ID_MAX, false);
    if (key->has_stripe_customer_id)
        check_text(key->stripe_customer_id, 1, APIMODEL_CUSTOMER_ID_MAX, false);
    if (key->has_subscription_item)
        check_text(key->subscription_item, 1, APIMODEL_SUBSCRIPTION_ITEM_MAX, false);
    FUZZ_CHECK(creating || (!key->has_value && !key->has_plan_id));
    if (key->has_value) {
        check_text(key->value, APIMODEL_VALUE_MIN, APIMODEL_VALUE_MAX, false);
        for (const char *c = key->value; *c; c++)
            FUZZ_CHECK(*c > 0x20 && *c < 0x7f);
    }
    if (key->has_plan_id)
        FUZZ_CHECK(apimodel_valid_id(key->plan_id));
}

static void set_optional(json_t *body, const char *name, bool has, const char *value)
{
    if (has)
        json_object_set_new(body, name, json_string(value));
}

static json_t *key_to_body(const apimodel_key *key)
{
    json_t *body = json_pack("{s:s,s:s,s:b}", "name", key->name, "description",
                             key->description, "enabled", key->enabled);
    FUZZ_CHECK(body != NULL);
    set_optional(body, "customerId", key->has_customer_id, key->customer_id);
    set_optional(body, "stripeCustomerId", key->has_stripe_customer_id, key->stripe_customer_id);
    set_optional(body, "stripeSubscriptionItemId", key->has_subscription_item,
                 key->subscription_item);
    set_optional(body, "value", key->has_value, key->value);
    set_optional(body, "planId", key->has_plan_id, key->plan_id);
    return body;
}

static bool same_optional(bool has_a, const char *a, bool has_b, const char *b)
{
    return has_a == has_b && (!has_a || strcmp(a, b) == 0);
}

static bool same_key(const apimodel_key *a, const apimodel_key *b)
{
    return strcmp(a->name, b->name) == 0 && strcmp(a->description, b->description) == 0 &&
           a->enabled == b->enabled &&
           same_optional(a->has_customer_id, a->customer_id, b->has_customer_id, b->customer_id) &&
           same_optional(a->has_stripe_customer_id, a->stripe_customer_id,
                         b->has_stripe_customer_id, b->stripe_customer_id) &&
           same_optional(a->has_subscription_item, a->subscription_item,
                         b->has_subscription_item, b->subscription_item) &&
           same_optional(a->has_value, a->value, b->has_value, b->value) &&
           same_optional(a->has_plan_id, a->plan_id, b->has_plan_id, b->plan_id);
}

static void fill_key(apimodel_key *key)
{
    json_t *body = json_loads("{\"name\":\"k\",\"description\":\"d\",\"customerId\":\"c\","
                              "\"stripeCustomerId\":\"cus_1\",\"stripeSubscriptionItemId\":"
                              "\"si_1\",\"enabled\":false}",
                              0, NULL);
    apimodel_error err;
    FUZZ_CHECK(body != NULL && apimodel_key_apply(key, body, false, &err));
    json_decref(body);
}

static void fuzz_key(const json_t *body, bool creating, bool filled)
{
    apimodel_key key;
    apimodel_error err = {0};
    apimodel_key_init(&key);
    if (filled)
        fill_key(&key);
    if (!apimodel_key_apply(&key, body, creating, &err)) {
        check_refusal(&err);
        return;
    }
    check_key(&key, creating);
    json_t *written = key_to_body(&key);
    apimodel_key copy;
    apimodel_key_init(&copy);
    FUZZ_CHECK(apimodel_key_apply(&copy, written, true, &err));
    FUZZ_CHECK(same_key(&key, &copy));
    json_decref(written);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    unsigned control = data[0];
    json_error_t jerr;
    json_t *body = json_loadb((const char *)data + 1, size - 1, JSON_REJECT_DUPLICATES, &jerr);
    if (body == NULL)
        return 0; /* the api answers invalid_json before any model sees it */
    bool creating = (control & 2) != 0, filled = (control & 4) != 0;
    if (control & 1)
        fuzz_key(body, creating, filled);
    else
        fuzz_plan(body, creating, filled);
    json_decref(body);
    return 0;
}
