/* Stripe's wire rules (docs/STRIPE.md §3-§4): what each answer means, the retry
 * backoff, the form encoding and the idempotency keys. */
#include <check.h>
#include <string.h>

#include "buf.h"
#include "stripe.h"
#include "suites.h"

static stripe_reply answer(long status, int should_retry, const char *type, const char *message)
{
    stripe_reply r = {.http_status = status,
                      .should_retry = should_retry,
                      .error_type = type,
                      .error_message = message};
    return r;
}

static stripe_outcome meter(stripe_reply r)
{
    return stripe_classify(STRIPE_MODE_METER_EVENTS, &r);
}

static stripe_outcome legacy(stripe_reply r)
{
    return stripe_classify(STRIPE_MODE_USAGE_RECORDS, &r);
}

START_TEST(success_and_duplicates)
{
    ck_assert_int_eq(meter(answer(200, -1, NULL, NULL)), STRIPE_ACCEPTED);
    ck_assert_int_eq(legacy(answer(200, -1, NULL, NULL)), STRIPE_ACCEPTED);
    /* a repeated identifier was counted before: delivered */
    stripe_reply dup = answer(400, 0, "invalid_request_error",
                              "An event already exists with identifier tally_ab12.");
    ck_assert_int_eq(meter(dup), STRIPE_DUPLICATE);
    /* usage records have no identifiers: the same text means nothing there */
    ck_assert_int_eq(legacy(dup), STRIPE_PARK);
}
END_TEST

START_TEST(retry_rules)
{
    /* no answer at all: may have been processed, retry with the same key */
    ck_assert_int_eq(meter(answer(0, -1, NULL, NULL)), STRIPE_RETRY);
    ck_assert_int_eq(meter(answer(500, -1, "api_error", "boom")), STRIPE_RETRY);
    ck_assert_int_eq(meter(answer(503, -1, NULL, NULL)), STRIPE_RETRY);
    ck_assert_int_eq(meter(answer(409, -1, "idempotency_error", "in progress")), STRIPE_RETRY);
    ck_assert_int_eq(meter(answer(429, -1, "invalid_request_error", "rate")), STRIPE_RATE_LIMITED);
    ck_assert_int_eq(meter(answer(429, 1, NULL, NULL)), STRIPE_RATE_LIMITED);
    /* the header wins both ways */
    ck_assert_int_eq(meter(answer(400, 1, "invalid_request_error", "x")), STRIPE_RETRY);
    ck_assert_int_eq(meter(answer(500, 0, "api_error", "x")), STRIPE_PARK);
    ck_assert_int_eq(meter(answer(429, 0, NULL, NULL)), STRIPE_PARK);
}
END_TEST

START_TEST(refusals)
{
    ck_assert_int_eq(meter(answer(400, -1, "invalid_request_error", "No such customer: 'cus_x'")),
                     STRIPE_PARK);
    ck_assert_int_eq(meter(answer(404, -1, "invalid_request_error", "No such item")), STRIPE_PARK);
    ck_assert_int_eq(legacy(answer(404, -1, "invalid_request_error", "No such item")),
                     STRIPE_PARK);
    /* a refused key is nobody's report: pause, park nothing */
    ck_assert_int_eq(meter(answer(401, -1, "invalid_request_error", "Invalid API Key")),
                     STRIPE_AUTH_FAILED);
    ck_assert_int_eq(legacy(answer(403, -1, NULL, NULL)), STRIPE_AUTH_FAILED);
    /* same key, other parameters: a new key is safe only with an identifier */
    stripe_reply idem = answer(400, -1, "idempotency_error", "Keys for idempotent requests");
    ck_assert_int_eq(meter(idem), STRIPE_NEW_KEY);
    ck_assert_int_eq(legacy(idem), STRIPE_PARK);
}
END_TEST

START_TEST(replayed_failures)
{
    stripe_reply r = answer(500, -1, "api_error", "saved");
    r.replayed = true;
    r.replayed_failures = 1;
    ck_assert_int_eq(meter(r), STRIPE_RETRY);
    ck_assert_int_eq(legacy(r), STRIPE_RETRY);
    r.replayed_failures = STRIPE_REPLAYED_FAILURES_MAX;
    ck_assert_int_eq(meter(r), STRIPE_NEW_KEY);
    ck_assert_int_eq(legacy(r), STRIPE_PARK);
    /* fresh (not replayed) failures are plain retries however many */
    r.replayed = false;
    r.replayed_failures = 9;
    ck_assert_int_eq(meter(r), STRIPE_RETRY);
}
END_TEST

START_TEST(backoff)
{
    /* min(0.5 * 2^(n-1), 5) seconds, jittered to 50-100% */
    ck_assert_double_eq_tol(stripe_backoff_s(1, 1.0), 0.5, 1e-9);
    ck_assert_double_eq_tol(stripe_backoff_s(1, 0.0), 0.25, 1e-9);
    ck_assert_double_eq_tol(stripe_backoff_s(2, 1.0), 1.0, 1e-9);
    ck_assert_double_eq_tol(stripe_backoff_s(4, 1.0), 4.0, 1e-9);
    ck_assert_double_eq_tol(stripe_backoff_s(5, 1.0), 5.0, 1e-9);
    ck_assert_double_eq_tol(stripe_backoff_s(60, 1.0), 5.0, 1e-9);
    ck_assert_double_eq_tol(stripe_backoff_s(60, 0.0), 2.5, 1e-9);
    ck_assert_double_eq_tol(stripe_backoff_s(3, 7.0), 2.0, 1e-9);  /* jitter clamped */
    ck_assert_double_eq_tol(stripe_backoff_s(3, -1.0), 1.0, 1e-9);
}
END_TEST

START_TEST(form_encoding)
{
    buf b;
    buf_init(&b, 256);
    ck_assert(stripe_form_add(&b, "event_name", "api_calls"));
    ck_assert(stripe_form_add(&b, "payload[stripe_customer_id]", "cus_A&b=c"));
    ck_assert(stripe_form_add(&b, "payload[value]", "25"));
    ck_assert_str_eq(b.data, "event_name=api_calls&payload%5Bstripe_customer_id%5D=cus_A%26b%3Dc"
                             "&payload%5Bvalue%5D=25");
    buf_reset(&b);
    ck_assert(stripe_form_add(&b, "x", "a b/\xc3\xa9~"));
    ck_assert_str_eq(b.data, "x=a%20b%2F%C3%A9~");
    buf_free(&b);
    /* all or nothing at the limit */
    buf_init(&b, 12);
    ck_assert(stripe_form_add(&b, "a", "1"));
    ck_assert(!stripe_form_add(&b, "long", "0123456789"));
    ck_assert_str_eq(b.data, "a=1");
    buf_free(&b);
}
END_TEST

START_TEST(idempotency_keys)
{
    char key[STRIPE_IDEMPOTENCY_KEY_MAX + 1];
    ck_assert(stripe_idempotency_key("tally_abc", 0, key, sizeof key));
    ck_assert_str_eq(key, "tally_abc");
    ck_assert(stripe_idempotency_key("tally_abc", 3, key, sizeof key));
    ck_assert_str_eq(key, "tally_abc-g3");
    char small[8];
    ck_assert(!stripe_idempotency_key("tally_abc", 0, small, sizeof small));
}
END_TEST

START_TEST(modes)
{
    stripe_mode m;
    ck_assert(stripe_parse_mode("meter_events", &m));
    ck_assert_int_eq(m, STRIPE_MODE_METER_EVENTS);
    ck_assert(stripe_parse_mode("usage_records", &m));
    ck_assert_int_eq(m, STRIPE_MODE_USAGE_RECORDS);
    ck_assert(!stripe_parse_mode("usage_record", &m));
    ck_assert(!stripe_parse_mode("", &m));
    ck_assert_str_eq(stripe_mode_column(STRIPE_MODE_METER_EVENTS), "meter_event");
    ck_assert_str_eq(stripe_mode_name(STRIPE_MODE_USAGE_RECORDS), "usage_records");
}
END_TEST

Suite *stripe_suite(void)
{
    Suite *s = suite_create("stripe");
    TCase *tc = tcase_create("stripe");
    tcase_add_test(tc, success_and_duplicates);
    tcase_add_test(tc, retry_rules);
    tcase_add_test(tc, refusals);
    tcase_add_test(tc, replayed_failures);
    tcase_add_test(tc, backoff);
    tcase_add_test(tc, form_encoding);
    tcase_add_test(tc, idempotency_keys);
    tcase_add_test(tc, modes);
    suite_add_tcase(s, tc);
    return s;
}
