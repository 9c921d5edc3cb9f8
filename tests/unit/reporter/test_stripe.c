/* Stripe's wire format (docs/STRIPE.md): the request built for a report in
 * each mode, and what each answer means, held against the documented
 * examples; the retry backoff, the form encoding and the idempotency keys. */
#include <check.h>
#include <stdlib.h>
#include <string.h>

#include "buf.h"
#include "stripe.h"
#include "suites.h"

/* ---- requests ------------------------------------------------------------ */

static const stripe_account account = {.api_base = "https://api.stripe.com", .api_version = ""};

/* docs/STRIPE.md §1's example report. */
static stripe_usage meter_usage(void)
{
    stripe_usage u = {
        .mode = STRIPE_MODE_METER_EVENTS,
        .customer = "cus_X",
        .target = "api_calls",
        .identifier = "tally_3f2a",
        .timestamp = 1700000000,
        .quantity = 25,
        .generation = 0,
    };
    return u;
}

/* docs/STRIPE.md §2's example report. */
static stripe_usage usage_record_usage(void)
{
    stripe_usage u = meter_usage();
    u.mode = STRIPE_MODE_USAGE_RECORDS;
    u.target = "si_ABC";
    return u;
}

/* The request's header named `name` ("Name: value"), or NULL. */
static const char *header(const stripe_request *req, const char *name)
{
    size_t n = strlen(name);
    for (int i = 0; i < req->header_count; i++)
        if (strncmp(req->headers[i], name, n) == 0 && req->headers[i][n] == ':')
            return req->headers[i];
    return NULL;
}

static void build(const stripe_account *acct, const stripe_usage *usage, stripe_request *req)
{
    char err[128] = "";
    ck_assert_msg(stripe_request_build(acct, usage, req, err, sizeof err), "%s", err);
}

START_TEST(meter_event_request)
{
    stripe_request req;
    stripe_request_init(&req);
    stripe_usage u = meter_usage();
    build(&account, &u, &req);
    ck_assert_str_eq(req.method, "POST");
    ck_assert_str_eq(req.url, "https://api.stripe.com/v1/billing/meter_events");
    ck_assert_str_eq(req.body.data, "event_name=api_calls&payload%5Bstripe_customer_id%5D=cus_X"
                                    "&payload%5Bvalue%5D=25&identifier=tally_3f2a"
                                    "&timestamp=1700000000");
    ck_assert_int_eq(req.header_count, 2);
    ck_assert_str_eq(header(&req, "Content-Type"),
                     "Content-Type: application/x-www-form-urlencoded");
    ck_assert_str_eq(header(&req, "Idempotency-Key"), "Idempotency-Key: tally_3f2a");
    /* meter events use the account's default version unless one is set */
    ck_assert_ptr_null(header(&req, "Stripe-Version"));
    stripe_account pinned = {.api_base = "http://127.0.0.1:8420", .api_version = "2025-03-31.basil"};
    u.generation = 2;
    build(&pinned, &u, &req);
    ck_assert_str_eq(req.url, "http://127.0.0.1:8420/v1/billing/meter_events");
    ck_assert_str_eq(header(&req, "Stripe-Version"), "Stripe-Version: 2025-03-31.basil");
    /* a new key generation keeps the identifier in the body */
    ck_assert_str_eq(header(&req, "Idempotency-Key"), "Idempotency-Key: tally_3f2a-g2");
    ck_assert_ptr_nonnull(strstr(req.body.data, "&identifier=tally_3f2a&"));
    ck_assert_int_eq(req.header_count, 3);
    stripe_request_free(&req);
}
END_TEST

START_TEST(usage_record_request)
{
    stripe_request req;
    stripe_request_init(&req);
    stripe_usage u = usage_record_usage();
    build(&account, &u, &req);
    ck_assert_str_eq(req.method, "POST");
    ck_assert_str_eq(req.url, "https://api.stripe.com/v1/subscription_items/si_ABC/usage_records");
    ck_assert_str_eq(req.body.data, "quantity=25&timestamp=1700000000&action=increment");
    ck_assert_str_eq(header(&req, "Idempotency-Key"), "Idempotency-Key: tally_3f2a");
    /* usage records exist only up to 2025-02-24.acacia: pinned unless set */
    ck_assert_str_eq(header(&req, "Stripe-Version"), "Stripe-Version: 2025-02-24.acacia");
    stripe_account pinned = {.api_base = "https://api.stripe.com",
                             .api_version = "2024-06-20"};
    build(&pinned, &u, &req);
    ck_assert_str_eq(header(&req, "Stripe-Version"), "Stripe-Version: 2024-06-20");
    /* the item is escaped into the path: no way out of it */
    u.target = "si_1/../x y";
    build(&account, &u, &req);
    ck_assert_str_eq(req.url,
                     "https://api.stripe.com/v1/subscription_items/si_1%2F..%2Fx%20y/usage_records");
    stripe_request_free(&req);
}
END_TEST

START_TEST(request_limits)
{
    stripe_request req;
    stripe_request_init(&req);
    char err[128];
    /* an identifier whose key passes 255 characters is refused, not cut */
    char identifier[STRIPE_IDEMPOTENCY_KEY_MAX];
    memset(identifier, 'a', sizeof identifier - 1);
    identifier[sizeof identifier - 1] = '\0';
    stripe_usage u = meter_usage();
    u.identifier = identifier;
    ck_assert(stripe_request_build(&account, &u, &req, err, sizeof err));
    u.generation = 1;
    ck_assert(!stripe_request_build(&account, &u, &req, err, sizeof err));
    ck_assert_ptr_nonnull(strstr(err, "idempotency key"));
    /* a URL past its maximum is refused, not truncated */
    char base[STRIPE_URL_MAX];
    memset(base, 'h', sizeof base - 1);
    base[sizeof base - 1] = '\0';
    stripe_account long_base = {.api_base = base, .api_version = ""};
    u = meter_usage();
    ck_assert(!stripe_request_build(&long_base, &u, &req, err, sizeof err));
    u = usage_record_usage();
    ck_assert(!stripe_request_build(&long_base, &u, &req, err, sizeof err));
    /* a later build starts afresh */
    build(&account, &u, &req);
    ck_assert_str_eq(req.body.data, "quantity=25&timestamp=1700000000&action=increment");
    stripe_request_free(&req);
}
END_TEST

START_TEST(versions)
{
    ck_assert(stripe_version_valid(""));
    ck_assert(stripe_version_valid("2025-02-24.acacia"));
    ck_assert(stripe_version_valid("2024-06-20"));
    /* a header line never carries another header */
    ck_assert(!stripe_version_valid("2025-02-24.acacia\r\nX-Evil: 1"));
    ck_assert(!stripe_version_valid("2025-02-24 acacia"));
    char longest[STRIPE_VERSION_MAX + 2];
    memset(longest, '1', sizeof longest - 1);
    longest[sizeof longest - 1] = '\0';
    ck_assert(!stripe_version_valid(longest));
    longest[STRIPE_VERSION_MAX] = '\0';
    ck_assert(stripe_version_valid(longest));
}
END_TEST

START_TEST(authorization)
{
    char *h = stripe_authorization("sk_test_123");
    ck_assert_str_eq(h, "Authorization: Bearer sk_test_123");
    free(h);
}
END_TEST

/* ---- answers ------------------------------------------------------------- */

/* An answer with `status`, header lines `headers` (NULL-terminated) and a
 * body. */
static stripe_answer answer(long status, const char *const *headers, const char *body)
{
    stripe_answer a;
    stripe_answer_init(&a);
    for (int i = 0; headers && headers[i]; i++)
        stripe_answer_header(&a, headers[i], strlen(headers[i]));
    a.http_status = status;
    a.body = body;
    a.body_len = body ? strlen(body) : 0;
    return a;
}

static stripe_outcome classify(stripe_mode mode, stripe_answer a)
{
    stripe_verdict v;
    stripe_classify(mode, &a, 0, &v);
    return v.outcome;
}

static stripe_outcome meter(stripe_answer a)
{
    return classify(STRIPE_MODE_METER_EVENTS, a);
}

static stripe_outcome legacy(stripe_answer a)
{
    return classify(STRIPE_MODE_USAGE_RECORDS, a);
}

static const char *const no_retry[] = {"Stripe-Should-Retry: false\r\n", NULL};
static const char *const retry[] = {"Stripe-Should-Retry: true\r\n", NULL};
static const char *const replayed[] = {"Idempotent-Replayed: true\r\n", NULL};

static const char duplicate_body[] =
    "{\"error\":{\"type\":\"invalid_request_error\",\"param\":\"identifier\","
    "\"message\":\"An event already exists with identifier tally_3f2a.\"}}";
static const char in_progress_body[] =
    "{\"error\":{\"type\":\"idempotency_error\",\"code\":\"idempotency_key_in_use\","
    "\"message\":\"There is currently another in-progress request using this Idempotency "
    "Key\"}}";
static const char rate_limit_body[] =
    "{\"error\":{\"type\":\"invalid_request_error\",\"code\":\"rate_limit\","
    "\"message\":\"Request rate limit exceeded.\"}}";
static const char api_error_body[] =
    "{\"error\":{\"type\":\"api_error\",\"message\":\"Something went wrong on Stripe's end.\"}}";
static const char mismatch_body[] =
    "{\"error\":{\"type\":\"idempotency_error\",\"message\":\"Keys for idempotent requests can "
    "only be used with the same parameters they were first used with.\"}}";
static const char no_customer_body[] =
    "{\"error\":{\"type\":\"invalid_request_error\",\"code\":\"resource_missing\","
    "\"param\":\"payload[stripe_customer_id]\",\"message\":\"No such customer: 'cus_Y'\"}}";
static const char bad_key_body[] =
    "{\"error\":{\"type\":\"invalid_request_error\","
    "\"message\":\"Invalid API Key provided: sk_test_****2abc\"}}";

START_TEST(headers_read)
{
    stripe_answer a = answer(200, NULL, NULL);
    ck_assert_int_eq(a.should_retry, -1);
    ck_assert(!a.replayed);
    const char *const lines[] = {"HTTP/1.1 500 Internal Server Error\r\n",
                                 "request-id: req_123\r\n",
                                 "stripe-should-retry:  TRUE \r\n",
                                 "Idempotent-Replayed: true\r\n",
                                 "Stripe-Should-Retry-After: false\r\n",
                                 "\r\n",
                                 NULL};
    a = answer(500, lines, NULL);
    ck_assert_int_eq(a.should_retry, 1);
    ck_assert(a.replayed);
    a = answer(400, no_retry, NULL);
    ck_assert_int_eq(a.should_retry, 0);
    const char *const odd[] = {"Stripe-Should-Retry: yes", "Idempotent-Replayed: false", NULL};
    a = answer(400, odd, NULL);
    ck_assert_int_eq(a.should_retry, 0); /* anything but true is false */
    ck_assert(!a.replayed);
}
END_TEST

START_TEST(success_and_duplicates)
{
    const char ok[] = "{\"object\":\"billing.meter_event\",\"identifier\":\"tally_3f2a\"}";
    ck_assert_int_eq(meter(answer(200, NULL, ok)), STRIPE_ACCEPTED);
    ck_assert_int_eq(legacy(answer(200, NULL, "{\"object\":\"usage_record\"}")), STRIPE_ACCEPTED);
    /* a repeated identifier (400, Stripe-Should-Retry: false) was counted
     * before: delivered */
    ck_assert_int_eq(meter(answer(400, no_retry, duplicate_body)), STRIPE_DUPLICATE);
    /* usage records have no identifiers: the same text means nothing there */
    ck_assert_int_eq(legacy(answer(400, no_retry, duplicate_body)), STRIPE_PARK);
}
END_TEST

START_TEST(retry_rules)
{
    /* no answer at all: may have been processed, retry with the same key */
    ck_assert_int_eq(meter(answer(0, NULL, NULL)), STRIPE_RETRY);
    ck_assert_int_eq(meter(answer(500, NULL, api_error_body)), STRIPE_RETRY);
    ck_assert_int_eq(meter(answer(503, NULL, "<html>bad gateway</html>")), STRIPE_RETRY);
    ck_assert_int_eq(meter(answer(409, NULL, in_progress_body)), STRIPE_RETRY);
    ck_assert_int_eq(legacy(answer(409, NULL, in_progress_body)), STRIPE_RETRY);
    ck_assert_int_eq(meter(answer(429, NULL, rate_limit_body)), STRIPE_RATE_LIMITED);
    ck_assert_int_eq(meter(answer(429, retry, rate_limit_body)), STRIPE_RATE_LIMITED);
    /* the header wins both ways */
    ck_assert_int_eq(meter(answer(400, retry, no_customer_body)), STRIPE_RETRY);
    ck_assert_int_eq(meter(answer(500, no_retry, api_error_body)), STRIPE_PARK);
    ck_assert_int_eq(meter(answer(429, no_retry, rate_limit_body)), STRIPE_PARK);
}
END_TEST

START_TEST(refusals)
{
    ck_assert_int_eq(meter(answer(400, NULL, no_customer_body)), STRIPE_PARK);
    ck_assert_int_eq(legacy(answer(404, NULL, no_customer_body)), STRIPE_PARK);
    /* a refused key is nobody's report: pause, park nothing */
    ck_assert_int_eq(meter(answer(401, NULL, bad_key_body)), STRIPE_AUTH_FAILED);
    ck_assert_int_eq(legacy(answer(403, NULL, NULL)), STRIPE_AUTH_FAILED);
    /* same key, other parameters: a new key is safe only with an identifier */
    ck_assert_int_eq(meter(answer(400, NULL, mismatch_body)), STRIPE_NEW_KEY);
    ck_assert_int_eq(legacy(answer(400, NULL, mismatch_body)), STRIPE_PARK);
}
END_TEST

START_TEST(replayed_failures)
{
    /* Stripe replays a saved 500 to its key: the 2nd replay in a row breaks
     * the loop */
    stripe_answer saved = answer(500, replayed, api_error_body);
    stripe_verdict v;
    stripe_classify(STRIPE_MODE_METER_EVENTS, &saved, 0, &v);
    ck_assert_int_eq(v.outcome, STRIPE_RETRY);
    ck_assert_int_eq(v.replayed_failures, 1);
    stripe_classify(STRIPE_MODE_METER_EVENTS, &saved, v.replayed_failures, &v);
    ck_assert_int_eq(v.outcome, STRIPE_NEW_KEY);
    ck_assert_int_eq(v.replayed_failures, STRIPE_REPLAYED_FAILURES_MAX);
    stripe_classify(STRIPE_MODE_USAGE_RECORDS, &saved, 1, &v);
    ck_assert_int_eq(v.outcome, STRIPE_PARK);
    /* fresh (not replayed) 5xx: plain retries, the run left as it is */
    stripe_answer fresh = answer(500, NULL, api_error_body);
    stripe_classify(STRIPE_MODE_METER_EVENTS, &fresh, 9, &v);
    ck_assert_int_eq(v.outcome, STRIPE_RETRY);
    ck_assert_int_eq(v.replayed_failures, 9);
    /* any answer below 500, no answer included, ends the run */
    stripe_answer none = answer(0, NULL, NULL);
    stripe_classify(STRIPE_MODE_METER_EVENTS, &none, 1, &v);
    ck_assert_int_eq(v.replayed_failures, 0);
    stripe_answer busy = answer(409, NULL, in_progress_body);
    stripe_classify(STRIPE_MODE_METER_EVENTS, &busy, 1, &v);
    ck_assert_int_eq(v.replayed_failures, 0);
}
END_TEST

START_TEST(error_body)
{
    stripe_answer a = answer(400, NULL, no_customer_body);
    stripe_verdict v;
    stripe_classify(STRIPE_MODE_METER_EVENTS, &a, 0, &v);
    ck_assert_str_eq(v.type, "invalid_request_error");
    ck_assert_str_eq(v.code, "resource_missing");
    ck_assert_str_eq(v.message, "No such customer: 'cus_Y'");
    /* no code: empty; not JSON, or no error object: all empty */
    a = answer(500, NULL, api_error_body);
    stripe_classify(STRIPE_MODE_METER_EVENTS, &a, 0, &v);
    ck_assert_str_eq(v.type, "api_error");
    ck_assert_str_eq(v.code, "");
    const char *odd[] = {"<html>502</html>", "{\"error\":\"boom\"}", "{\"error\":{\"type\":7}}",
                         ""};
    for (size_t i = 0; i < sizeof odd / sizeof odd[0]; i++) {
        a = answer(502, NULL, odd[i]);
        stripe_classify(STRIPE_MODE_METER_EVENTS, &a, 0, &v);
        ck_assert_str_eq(v.type, "");
        ck_assert_str_eq(v.message, "");
        ck_assert_int_eq(v.outcome, STRIPE_RETRY);
    }
    /* the body is read only up to body_len (a cut or unterminated buffer) */
    a = answer(400, NULL, no_customer_body);
    a.body_len = 20;
    stripe_classify(STRIPE_MODE_METER_EVENTS, &a, 0, &v);
    ck_assert_str_eq(v.type, "");
    /* a long message is cut on a character boundary: "é" is 2 bytes, and
     * 399 bytes of room would split the 200th */
    char body[1024] = "{\"error\":{\"type\":\"invalid_request_error\",\"message\":\"";
    for (int i = 0; i < 300; i++)
        strcat(body, "\xc3\xa9");
    strcat(body, "\"}}");
    a = answer(400, NULL, body);
    stripe_classify(STRIPE_MODE_METER_EVENTS, &a, 0, &v);
    ck_assert_uint_eq(strlen(v.message), 398);
    ck_assert_int_eq(v.outcome, STRIPE_PARK);
}
END_TEST

/* ---- the rest ------------------------------------------------------------ */

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
    ck_assert_str_eq(stripe_mode_name(STRIPE_MODE_METER_EVENTS), "meter_events");
    ck_assert_str_eq(stripe_mode_name(STRIPE_MODE_USAGE_RECORDS), "usage_records");
    /* stripe_reports.mode, both ways */
    ck_assert_str_eq(stripe_mode_column(STRIPE_MODE_METER_EVENTS), "meter_event");
    ck_assert_str_eq(stripe_mode_column(STRIPE_MODE_USAGE_RECORDS), "usage_record");
    ck_assert(stripe_mode_from_column("usage_record", &m));
    ck_assert_int_eq(m, STRIPE_MODE_USAGE_RECORDS);
    ck_assert(stripe_mode_from_column("meter_event", &m));
    ck_assert_int_eq(m, STRIPE_MODE_METER_EVENTS);
    ck_assert(!stripe_mode_from_column("meter_events", &m));
}
END_TEST

Suite *stripe_suite(void)
{
    Suite *s = suite_create("stripe");
    TCase *requests = tcase_create("requests");
    tcase_add_test(requests, meter_event_request);
    tcase_add_test(requests, usage_record_request);
    tcase_add_test(requests, request_limits);
    tcase_add_test(requests, authorization);
    tcase_add_test(requests, versions);
    tcase_add_test(requests, form_encoding);
    tcase_add_test(requests, idempotency_keys);
    suite_add_tcase(s, requests);
    TCase *answers = tcase_create("answers");
    tcase_add_test(answers, headers_read);
    tcase_add_test(answers, success_and_duplicates);
    tcase_add_test(answers, retry_rules);
    tcase_add_test(answers, refusals);
    tcase_add_test(answers, replayed_failures);
    tcase_add_test(answers, error_body);
    tcase_add_test(answers, backoff);
    suite_add_tcase(s, answers);
    TCase *names = tcase_create("modes");
    tcase_add_test(names, modes);
    suite_add_tcase(s, names);
    return s;
}
