/* The webhook wire format (services/reporter/hookwire.h): the body, the
 * Tally-Signature header against HMAC-SHA256 values computed independently
 * (Python's hmac module), the retry schedule and what answers mean; and the
 * address classes of services/reporter/hookaddr.h. */
#include <arpa/inet.h>
#include <check.h>
#include <netinet/in.h>
#include <string.h>

#include "hookaddr.h"
#include "hookwire.h"
#include "suites.h"

/* ---- signature ------------------------------------------------------------ */

/* python3 -c 'import hmac,hashlib; print(hmac.new(b"whsec_test",
 *   b"1700000000.{\"id\":\"evt_1\"}", hashlib.sha256).hexdigest())' */
#define MAC_TEST "c89214b5b5da833daed6f0b8c5bb6bd58cea9022bd80ccc78230f3942d632925"
#define MAC_OLD  "ef1b1b7e4b312671a75ef2a03e10529f7834a6528a49db77ad6568c8c8017843"

START_TEST(signature_one_secret)
{
    const char body[] = "{\"id\":\"evt_1\"}";
    char out[HOOKWIRE_SIGNATURE_MAX];
    ck_assert(hookwire_signature("whsec_test", NULL, 1700000000, body, strlen(body), out,
                                 sizeof out));
    ck_assert_str_eq(out, "t=1700000000,v1=" MAC_TEST);
}
END_TEST

START_TEST(signature_during_rotation)
{
    const char body[] = "{\"id\":\"evt_1\"}";
    char out[HOOKWIRE_SIGNATURE_MAX];
    ck_assert(hookwire_signature("whsec_test", "whsec_old", 1700000000, body, strlen(body), out,
                                 sizeof out));
    ck_assert_str_eq(out, "t=1700000000,v1=" MAC_TEST ",v1=" MAC_OLD);
    /* a buffer too small is refused, not truncated */
    char small[40];
    ck_assert(!hookwire_signature("whsec_test", NULL, 1700000000, body, strlen(body), small,
                                  sizeof small));
}
END_TEST

START_TEST(signature_changes_with_body_and_time)
{
    char a[HOOKWIRE_SIGNATURE_MAX], b[HOOKWIRE_SIGNATURE_MAX], c[HOOKWIRE_SIGNATURE_MAX];
    ck_assert(hookwire_signature("s", NULL, 1700000000, "{}", 2, a, sizeof a));
    ck_assert(hookwire_signature("s", NULL, 1700000001, "{}", 2, b, sizeof b));
    ck_assert(hookwire_signature("s", NULL, 1700000000, "{ }", 3, c, sizeof c));
    ck_assert_str_ne(strchr(a, ','), strchr(b, ','));
    ck_assert_str_ne(strchr(a, ','), strchr(c, ','));
}
END_TEST

/* ---- body ----------------------------------------------------------------- */

static hookwire_alert sample_alert(void)
{
    hookwire_alert a = {
        .event_id = "evt_0123",
        .type = "quota.threshold_reached",
        .created = 1764331200,
        .key_id = "key_1",
        .customer_id = "cust_9",
        .plan_id = "pro",
        .period = "MONTH",
        .period_start = "2026-11-01T00:00:00Z",
        .period_end = "2026-12-01T00:00:00Z",
        .threshold = 80,
        .used = 801,
        .limit = 1000,
        .enforcement = "soft",
    };
    return a;
}

START_TEST(body_fields)
{
    hookwire_alert a = sample_alert();
    char out[HOOKWIRE_BODY_MAX];
    ck_assert(hookwire_body(&a, out, sizeof out));
    ck_assert_str_eq(out, "{\"id\":\"evt_0123\",\"type\":\"quota.threshold_reached\","
                          "\"created\":1764331200,\"data\":{\"keyId\":\"key_1\","
                          "\"customerId\":\"cust_9\",\"planId\":\"pro\",\"period\":\"MONTH\","
                          "\"periodStart\":\"2026-11-01T00:00:00Z\","
                          "\"periodEnd\":\"2026-12-01T00:00:00Z\",\"threshold\":80,"
                          "\"used\":801,\"limit\":1000,\"percent\":80.1,"
                          "\"enforcement\":\"soft\"}}");
    /* no customer: null, not left out */
    a.customer_id = NULL;
    ck_assert(hookwire_body(&a, out, sizeof out));
    ck_assert_ptr_nonnull(strstr(out, "\"customerId\":null"));
    /* too small a buffer, a missing field: refused */
    char small[64];
    ck_assert(!hookwire_body(&a, small, sizeof small));
    a.event_id = NULL;
    ck_assert(!hookwire_body(&a, out, sizeof out));
}
END_TEST

START_TEST(percent)
{
    ck_assert(hookwire_percent(800, 1000) == 80.0);
    ck_assert(hookwire_percent(1, 3) == 33.33);
    ck_assert(hookwire_percent(2, 3) == 66.67);
    ck_assert(hookwire_percent(5, 0) == 0.0);
    ck_assert(hookwire_percent(1500, 1000) == 150.0);
}
END_TEST

/* ---- schedule ------------------------------------------------------------- */

/* The defaults: 1 min doubling to 6 h, for 3 days. */
static const hookwire_schedule defaults = {
    .base_ms = 60000, .cap_ms = 6 * 3600000LL, .window_ms = 3 * 86400000LL};

START_TEST(backoff_doubles_to_the_cap)
{
    ck_assert_int_eq(hookwire_nominal_delay_ms(&defaults, 1), 60000);
    ck_assert_int_eq(hookwire_nominal_delay_ms(&defaults, 2), 120000);
    ck_assert_int_eq(hookwire_nominal_delay_ms(&defaults, 5), 960000);
    ck_assert_int_eq(hookwire_nominal_delay_ms(&defaults, 9), 256 * 60000);
    ck_assert_int_eq(hookwire_nominal_delay_ms(&defaults, 10), 6 * 3600000LL);
    ck_assert_int_eq(hookwire_nominal_delay_ms(&defaults, 1000), 6 * 3600000LL);
}
END_TEST

START_TEST(backoff_jitter_bounds)
{
    int64_t d;
    ck_assert(hookwire_next_delay_ms(&defaults, 1, 0.0, &d));
    ck_assert_int_eq(d, 48000);
    ck_assert(hookwire_next_delay_ms(&defaults, 1, 0.999999, &d));
    ck_assert(d >= 71999 && d < 72000);
    ck_assert(hookwire_next_delay_ms(&defaults, 3, 0.5, &d));
    ck_assert_int_eq(d, 240000);
}
END_TEST

START_TEST(backoff_parks_after_the_window)
{
    /* 1+2+...+256 min = 511 min after attempts 1..9, then 6 h each: after
     * attempt 19, 511 min + 10 x 6 h = 68.5 h <= 72 h, so a 20th follows;
     * after it 74.5 h > 72 h: parked. */
    int64_t d;
    ck_assert(hookwire_next_delay_ms(&defaults, 19, 0.5, &d));
    ck_assert_int_eq(d, 6 * 3600000LL);
    ck_assert(!hookwire_next_delay_ms(&defaults, 20, 0.5, &d));
    ck_assert_int_eq(hookwire_max_attempts(&defaults), 20);
    /* the tests' short window: 200 ms doubling, 1 s in all */
    hookwire_schedule s = {.base_ms = 200, .cap_ms = 60000, .window_ms = 1000};
    ck_assert(hookwire_next_delay_ms(&s, 1, 0.5, &d)); /* 200 */
    ck_assert(hookwire_next_delay_ms(&s, 2, 0.5, &d)); /* 600 */
    ck_assert(!hookwire_next_delay_ms(&s, 3, 0.5, &d)); /* 1400 > 1000 */
    ck_assert_int_eq(hookwire_max_attempts(&s), 3);
    /* a zero window: the first failure parks */
    s.window_ms = 0;
    ck_assert(!hookwire_next_delay_ms(&s, 1, 0.5, &d));
}
END_TEST

START_TEST(answers)
{
    ck_assert_int_eq(hookwire_classify(200), HOOKWIRE_DELIVERED);
    ck_assert_int_eq(hookwire_classify(204), HOOKWIRE_DELIVERED);
    ck_assert_int_eq(hookwire_classify(299), HOOKWIRE_DELIVERED);
    ck_assert_int_eq(hookwire_classify(0), HOOKWIRE_RETRY);
    ck_assert_int_eq(hookwire_classify(301), HOOKWIRE_RETRY);
    ck_assert_int_eq(hookwire_classify(400), HOOKWIRE_RETRY);
    ck_assert_int_eq(hookwire_classify(429), HOOKWIRE_RETRY);
    ck_assert_int_eq(hookwire_classify(500), HOOKWIRE_RETRY);
    ck_assert_int_eq(hookwire_classify(410), HOOKWIRE_GONE);
    char out[8];
    hookwire_printable("ab\ncd\x01\xff", 7, 7, out);
    ck_assert_str_eq(out, "ab?cd??");
    hookwire_printable("abcdef", 6, 3, out);
    ck_assert_str_eq(out, "abc");
}
END_TEST

/* ---- addresses ------------------------------------------------------------ */

static hookaddr_class v4(const char *text)
{
    struct in_addr a;
    ck_assert_int_eq(inet_pton(AF_INET, text, &a), 1);
    return hookaddr_classify_v4(ntohl(a.s_addr));
}

static hookaddr_class v6(const char *text)
{
    struct in6_addr a;
    ck_assert_int_eq(inet_pton(AF_INET6, text, &a), 1);
    return hookaddr_classify_v6(a.s6_addr);
}

START_TEST(address_classes)
{
    ck_assert_int_eq(v4("8.8.8.8"), HOOKADDR_PUBLIC);
    ck_assert_int_eq(v4("127.0.0.1"), HOOKADDR_LOOPBACK);
    ck_assert_int_eq(v4("127.255.0.9"), HOOKADDR_LOOPBACK);
    ck_assert_int_eq(v4("10.1.2.3"), HOOKADDR_PRIVATE);
    ck_assert_int_eq(v4("172.16.0.1"), HOOKADDR_PRIVATE);
    ck_assert_int_eq(v4("172.31.255.255"), HOOKADDR_PRIVATE);
    ck_assert_int_eq(v4("172.32.0.1"), HOOKADDR_PUBLIC);
    ck_assert_int_eq(v4("192.168.1.1"), HOOKADDR_PRIVATE);
    ck_assert_int_eq(v4("100.64.0.1"), HOOKADDR_PRIVATE);
    ck_assert_int_eq(v4("169.254.1.1"), HOOKADDR_LINK_LOCAL);
    ck_assert_int_eq(v4("169.254.169.254"), HOOKADDR_METADATA);
    ck_assert_int_eq(v4("169.254.170.2"), HOOKADDR_METADATA);
    ck_assert_int_eq(v4("100.100.100.200"), HOOKADDR_METADATA);
    ck_assert_int_eq(v4("0.0.0.0"), HOOKADDR_RESERVED);
    ck_assert_int_eq(v4("224.0.0.1"), HOOKADDR_RESERVED);
    ck_assert_int_eq(v4("255.255.255.255"), HOOKADDR_RESERVED);
    ck_assert_int_eq(v6("2606:4700::1111"), HOOKADDR_PUBLIC);
    ck_assert_int_eq(v6("::1"), HOOKADDR_LOOPBACK);
    ck_assert_int_eq(v6("::"), HOOKADDR_RESERVED);
    ck_assert_int_eq(v6("fe80::1"), HOOKADDR_LINK_LOCAL);
    ck_assert_int_eq(v6("febf::1"), HOOKADDR_LINK_LOCAL);
    ck_assert_int_eq(v6("fd00:ec2::254"), HOOKADDR_METADATA);
    ck_assert_int_eq(v6("fd12::1"), HOOKADDR_PRIVATE);
    ck_assert_int_eq(v6("ff02::1"), HOOKADDR_RESERVED);
    /* an IPv4 address in IPv6 clothing is judged as IPv4 */
    ck_assert_int_eq(v6("::ffff:169.254.169.254"), HOOKADDR_METADATA);
    ck_assert_int_eq(v6("::ffff:127.0.0.1"), HOOKADDR_LOOPBACK);
    ck_assert_int_eq(v6("64:ff9b::a9fe:a9fe"), HOOKADDR_METADATA);
    ck_assert_int_eq(v6("::ffff:8.8.8.8"), HOOKADDR_PUBLIC);
    /* tunnels: 6to4 by its embedded address; Teredo, local NAT64 refused */
    ck_assert_int_eq(v6("2002:a9fe:a9fe::1"), HOOKADDR_METADATA);
    ck_assert_int_eq(v6("2002:0a00:0001::1"), HOOKADDR_PRIVATE);
    ck_assert_int_eq(v6("2002:0808:0808::1"), HOOKADDR_PUBLIC);
    ck_assert_int_eq(v6("2001:0:4136:e378:8000:63bf:3fff:fdd2"), HOOKADDR_RESERVED);
    ck_assert_int_eq(v6("64:ff9b:1::a9fe:a9fe"), HOOKADDR_RESERVED);
    ck_assert_int_eq(v6("fec0::1"), HOOKADDR_PRIVATE);
    ck_assert_int_eq(v6("2001:4860:4860::8888"), HOOKADDR_PUBLIC);
}
END_TEST

START_TEST(address_allow_setting)
{
    hookaddr_allow allow = 99;
    char err[160];
    ck_assert(hookaddr_parse_allow("", &allow, err, sizeof err));
    ck_assert_uint_eq(allow, 0);
    ck_assert(hookaddr_allowed(allow, HOOKADDR_PUBLIC));
    ck_assert(!hookaddr_allowed(allow, HOOKADDR_LOOPBACK));
    ck_assert(!hookaddr_allowed(allow, HOOKADDR_LINK_LOCAL));
    ck_assert(!hookaddr_allowed(allow, HOOKADDR_METADATA));
    ck_assert(hookaddr_parse_allow("loopback,private", &allow, err, sizeof err));
    ck_assert(hookaddr_allowed(allow, HOOKADDR_LOOPBACK));
    ck_assert(hookaddr_allowed(allow, HOOKADDR_PRIVATE));
    ck_assert(!hookaddr_allowed(allow, HOOKADDR_LINK_LOCAL));
    /* metadata needs its own word; reserved is never allowed */
    ck_assert(hookaddr_parse_allow("link-local", &allow, err, sizeof err));
    ck_assert(!hookaddr_allowed(allow, HOOKADDR_METADATA));
    ck_assert(hookaddr_parse_allow("loopback,private,link-local,metadata", &allow, err,
                                   sizeof err));
    ck_assert(hookaddr_allowed(allow, HOOKADDR_METADATA));
    ck_assert(!hookaddr_allowed(allow, HOOKADDR_RESERVED));
    ck_assert(!hookaddr_parse_allow("loopback,everything", &allow, err, sizeof err));
    ck_assert_ptr_nonnull(strstr(err, "everything"));
    ck_assert(!hookaddr_parse_allow("Loopback", &allow, err, sizeof err));
}
END_TEST

Suite *hookwire_suite(void)
{
    Suite *s = suite_create("hookwire");
    TCase *signing = tcase_create("signature");
    tcase_add_test(signing, signature_one_secret);
    tcase_add_test(signing, signature_during_rotation);
    tcase_add_test(signing, signature_changes_with_body_and_time);
    suite_add_tcase(s, signing);
    TCase *body = tcase_create("body");
    tcase_add_test(body, body_fields);
    tcase_add_test(body, percent);
    suite_add_tcase(s, body);
    TCase *schedule = tcase_create("schedule");
    tcase_add_test(schedule, backoff_doubles_to_the_cap);
    tcase_add_test(schedule, backoff_jitter_bounds);
    tcase_add_test(schedule, backoff_parks_after_the_window);
    tcase_add_test(schedule, answers);
    suite_add_tcase(s, schedule);
    TCase *addresses = tcase_create("addresses");
    tcase_add_test(addresses, address_classes);
    tcase_add_test(addresses, address_allow_setting);
    suite_add_tcase(s, addresses);
    return s;
}
