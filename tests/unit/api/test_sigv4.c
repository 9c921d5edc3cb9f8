/* Unit tests for services/api/sigv4: AWS's published aws-sig-v4-test-suite
 * cases (credentials AKIDEXAMPLE / wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY,
 * 20150830T123600Z, us-east-1, service "service"): each request below is
 * the suite's, and the expected signatures are the suite's .authz values;
 * the signing key is the one of AWS's SigV4 documentation example (iam).
 * Then the Authorization header parser's refusals. */
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "digest.h"
#include "sigv4.h"
#include "suites.h"

#define SECRET "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"
#define AMZ_DATE "20150830T123600Z"

typedef struct {
    const char *name, *value;
} header;

typedef struct {
    const char *name; /* the test suite's directory */
    const char *method, *path, *query, *body;
    header headers[4];
    const char *signed_headers;
    const char *signature; /* the suite's expected signature */
} vector;

static const vector vectors[] = {
    {"get-vanilla", "GET", "/", "", "",
     {{"Host", "example.amazonaws.com"}, {"X-Amz-Date", AMZ_DATE}},
     "host;x-amz-date", "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"},
    {"get-vanilla-query-order-key-case", "GET", "/", "Param2=value2&Param1=value1", "",
     {{"Host", "example.amazonaws.com"}, {"X-Amz-Date", AMZ_DATE}},
     "host;x-amz-date", "b97d918cfa904a5beff61c982a1b6f458b799221646efd99d3219ec94cdf2500"},
    {"get-header-value-trim", "GET", "/", "", "",
     {{"Host", "example.amazonaws.com"},
      {"My-Header1", " value1"},
      {"My-Header2", " \"a   b   c\""},
      {"X-Amz-Date", AMZ_DATE}},
     "host;my-header1;my-header2;x-amz-date",
     "acc3ed3afb60bb290fc8d2dd0098b9911fcaa05412b367055dee359757a9c736"},
    {"post-x-www-form-urlencoded", "POST", "/", "", "Param1=value1",
     {{"Content-Type", "application/x-www-form-urlencoded"},
      {"Host", "example.amazonaws.com"},
      {"X-Amz-Date", AMZ_DATE}},
     "content-type;host;x-amz-date",
     "ff11897932ad3f4e8b18135d722051e5ac45fc38421b1da7b9d196a0fe09473a"},
    {"get-space", "GET", "/example space/", "", "",
     {{"Host", "example.amazonaws.com"}, {"X-Amz-Date", AMZ_DATE}},
     "host;x-amz-date", "652487583200325589f1fba4c7e578f72c47cb61beeca81406b39ddec1366741"},
    {"get-unreserved", "GET",
     "/-._~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz", "", "",
     {{"Host", "example.amazonaws.com"}, {"X-Amz-Date", AMZ_DATE}},
     "host;x-amz-date", "07ef7494c76fa4850883e2b006601f940f8a34d404d0cfa977f52a65bbf5f24f"},
    {"get-vanilla-utf8-query", "GET", "/", "\xe1\x88\xb4=bar", "",
     {{"Host", "example.amazonaws.com"}, {"X-Amz-Date", AMZ_DATE}},
     "host;x-amz-date", "2cdec8eed098649ff3a119c94853b13c643bcf08f8b0a1d91e12c9027818dd04"},
};

static bool vector_header(void *ctx, const char *name, buf *out)
{
    const vector *v = ctx;
    for (size_t i = 0; i < sizeof v->headers / sizeof v->headers[0]; i++) {
        if (v->headers[i].name != NULL && strcasecmp(v->headers[i].name, name) == 0)
            return buf_append_str(out, v->headers[i].value);
    }
    return false;
}

/* The signature of vector v, as the api computes it. */
static void sign_vector(const vector *v, char out[SIGV4_SIGNATURE_HEX + 1])
{
    sigv4_authorization auth;
    char header_text[600], err[200];
    snprintf(header_text, sizeof header_text,
             "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, "
             "SignedHeaders=%s, Signature=%s",
             v->signed_headers, v->signature);
    ck_assert_msg(sigv4_parse_authorization(header_text, &auth, err, sizeof err), "%s: %s",
                  v->name, err);
    uint8_t hash[32];
    char hash_hex[65];
    digest_sha256(v->body, strlen(v->body), hash);
    digest_to_hex(hash, sizeof hash, hash_hex);
    buf canonical, to_sign;
    buf_init(&canonical, 8192);
    buf_init(&to_sign, 1024);
    ck_assert_msg(sigv4_canonical_request(v->method, v->path, v->query, auth.signed_headers,
                                          vector_header, (void *)v, hash_hex, &canonical, err,
                                          sizeof err),
                  "%s: %s", v->name, err);
    ck_assert(sigv4_string_to_sign(AMZ_DATE, &auth, canonical.data, canonical.len, &to_sign));
    uint8_t key[32];
    sigv4_signing_key(SECRET, auth.date, auth.region, auth.service, key);
    sigv4_signature_hex(key, to_sign.data, to_sign.len, out);
    buf_free(&canonical);
    buf_free(&to_sign);
}

START_TEST(test_suite_vectors_sign_as_published)
{
    for (size_t i = 0; i < sizeof vectors / sizeof vectors[0]; i++) {
        char signature[SIGV4_SIGNATURE_HEX + 1];
        sign_vector(&vectors[i], signature);
        ck_assert_msg(strcmp(signature, vectors[i].signature) == 0, "%s: got %s",
                      vectors[i].name, signature);
        ck_assert(sigv4_signature_equal(signature, vectors[i].signature));
    }
}
END_TEST

START_TEST(canonical_request_of_get_vanilla_is_the_suites)
{
    const vector *v = &vectors[1];
    buf canonical;
    char err[100];
    buf_init(&canonical, 4096);
    ck_assert(sigv4_canonical_request(
        v->method, v->path, v->query, v->signed_headers, vector_header, (void *)v,
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855", &canonical, err,
        sizeof err));
    ck_assert_str_eq(canonical.data,
                     "GET\n/\nParam1=value1&Param2=value2\nhost:example.amazonaws.com\n"
                     "x-amz-date:20150830T123600Z\n\nhost;x-amz-date\n"
                     "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    buf_free(&canonical);
}
END_TEST

START_TEST(signing_key_is_the_documented_one)
{
    uint8_t key[32];
    char hex[65];
    sigv4_signing_key(SECRET, "20150830", "us-east-1", "iam", key);
    digest_to_hex(key, sizeof key, hex);
    ck_assert_str_eq(hex, "c4afb1cc5771d871763a393e44b703571b55cc28424d1a5e86da6ed3c154a4b9");
}
END_TEST

START_TEST(a_changed_byte_changes_the_signature)
{
    vector changed = vectors[3]; /* the POST */
    char signature[SIGV4_SIGNATURE_HEX + 1];
    changed.body = "Param1=value2";
    sign_vector(&changed, signature);
    ck_assert(!sigv4_signature_equal(signature, vectors[3].signature));
    changed = vectors[1];
    changed.query = "Param2=value2&Param1=value3";
    sign_vector(&changed, signature);
    ck_assert(!sigv4_signature_equal(signature, vectors[1].signature));
}
END_TEST

START_TEST(a_missing_signed_header_is_refused)
{
    const vector *v = &vectors[0];
    buf canonical;
    char err[100];
    buf_init(&canonical, 4096);
    ck_assert(!sigv4_canonical_request("GET", "/", "", "host;x-amz-content-sha256;x-amz-date",
                                       vector_header, (void *)v, "00", &canonical, err,
                                       sizeof err));
    ck_assert_ptr_nonnull(strstr(err, "x-amz-content-sha256"));
    buf_free(&canonical);
}
END_TEST

START_TEST(authorization_parts_are_parsed)
{
    sigv4_authorization a;
    char err[200];
    ck_assert(sigv4_parse_authorization(
        "AWS4-HMAC-SHA256 Credential=AKID1/20261128/eu-west-1/apigateway/aws4_request,"
        "SignedHeaders=host;x-amz-date,Signature="
        "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31",
        &a, err, sizeof err));
    ck_assert_str_eq(a.access_key, "AKID1");
    ck_assert_str_eq(a.date, "20261128");
    ck_assert_str_eq(a.region, "eu-west-1");
    ck_assert_str_eq(a.service, "apigateway");
    ck_assert_str_eq(a.signed_headers, "host;x-amz-date");
}
END_TEST

START_TEST(malformed_authorizations_are_refused)
{
    static const char sig[] = "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31";
    static const char *const cases[] = {
        "",
        "AWS4-HMAC-SHA1 Credential=A/20150830/r/s/aws4_request, SignedHeaders=host, Signature=%s",
        "AWS4-HMAC-SHA256 Credential=A/20150830/r/s/aws4_request, SignedHeaders=host",
        "AWS4-HMAC-SHA256 Credential=A/20150830/r/s, SignedHeaders=host, Signature=%s",
        "AWS4-HMAC-SHA256 Credential=A/2015083/r/s/aws4_request, SignedHeaders=host, Signature=%s",
        "AWS4-HMAC-SHA256 Credential=A/20150830/r/s/aws4_request/x, SignedHeaders=host, "
        "Signature=%s",
        "AWS4-HMAC-SHA256 Credential=A/20150830/r/s/aws4_request, SignedHeaders=x-amz-date;host, "
        "Signature=%s",
        "AWS4-HMAC-SHA256 Credential=A/20150830/r/s/aws4_request, SignedHeaders=Host, "
        "Signature=%s",
        "AWS4-HMAC-SHA256 Credential=A/20150830/r/s/aws4_request, SignedHeaders=x-amz-date, "
        "Signature=%s",
        "AWS4-HMAC-SHA256 Credential=A/20150830/r/s/aws4_request, SignedHeaders=host;host, "
        "Signature=%s",
        "AWS4-HMAC-SHA256 Credential=A/20150830/r/s/aws4_request, SignedHeaders=host, "
        "Signature=5FA00FA31553B73EBF1942676E86291E8372FF2A2260956D9B8AAE1D763FBF31",
        "AWS4-HMAC-SHA256 Credential=A/20150830/r/s/aws4_request, SignedHeaders=host, "
        "Signature=5fa0",
        "AWS4-HMAC-SHA256 Credential=A/20150830/r/s/aws4_request, SignedHeaders=host, "
        "Signature=%s, Signature=%s",
        "AWS4-HMAC-SHA256 Credential=A/20150830/r/s/aws4_request, SignedHeaders=host, "
        "Signature=%s, Extra=1",
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char text[600], err[200];
        sigv4_authorization a;
        /* "%s" in a case stands for a well-formed signature. */
        size_t at = 0;
        for (const char *c = cases[i]; *c != '\0' && at + sizeof sig < sizeof text; c++) {
            if (c[0] == '%' && c[1] == 's') {
                memcpy(text + at, sig, sizeof sig - 1);
                at += sizeof sig - 1;
                c++;
            } else {
                text[at++] = *c;
            }
        }
        text[at] = '\0';
        ck_assert_msg(!sigv4_parse_authorization(text, &a, err, sizeof err), "case %zu", i);
        ck_assert_ptr_null(strstr(err, sig)); /* a signature is never quoted */
    }
}
END_TEST

START_TEST(signed_header_names_match_exactly)
{
    ck_assert(sigv4_header_signed("host;x-amz-date", "x-amz-date"));
    ck_assert(sigv4_header_signed("x-amz-date;host", "x-amz-date"));
    ck_assert(sigv4_header_signed("x-amz-date", "x-amz-date"));
    /* a longer name, a shorter one, a name inside another: not signed */
    ck_assert(!sigv4_header_signed("host;x-amz-date-extra", "x-amz-date"));
    ck_assert(!sigv4_header_signed("host;x-amz-dat", "x-amz-date"));
    ck_assert(!sigv4_header_signed("my-x-amz-date;host", "x-amz-date"));
    ck_assert(!sigv4_header_signed("", "x-amz-date"));
    ck_assert(!sigv4_header_signed("host;", "x-amz-date"));
}
END_TEST

START_TEST(amz_dates_are_strict)
{
    int64_t t;
    ck_assert(sigv4_parse_amz_date("20150830T123600Z", &t));
    ck_assert_int_eq(t, INT64_C(1440938160) * 1000000);
    ck_assert(!sigv4_parse_amz_date("20150830T123600", &t));
    ck_assert(!sigv4_parse_amz_date("2015-08-30T12:36:00Z", &t));
    ck_assert(!sigv4_parse_amz_date("20150231T123600Z", &t));
    ck_assert(!sigv4_parse_amz_date("20150830T246000Z", &t));
    ck_assert(!sigv4_parse_amz_date(NULL, &t));
}
END_TEST

Suite *api_sigv4_suite(void)
{
    Suite *s = suite_create("api_sigv4");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, test_suite_vectors_sign_as_published);
    tcase_add_test(tc, canonical_request_of_get_vanilla_is_the_suites);
    tcase_add_test(tc, signing_key_is_the_documented_one);
    tcase_add_test(tc, a_changed_byte_changes_the_signature);
    tcase_add_test(tc, a_missing_signed_header_is_refused);
    tcase_add_test(tc, authorization_parts_are_parsed);
    tcase_add_test(tc, malformed_authorizations_are_refused);
    tcase_add_test(tc, amz_dates_are_strict);
    tcase_add_test(tc, signed_header_names_match_exactly);
    suite_add_tcase(s, tc);
    return s;
}
