/* Fuzz target: services/api/sigv4.c, the SigV4 verifier's parsing of what
 * a client sends: the Authorization header, the request target and the
 * headers the signature names. Input: lines (LF) of
 *   1: the Authorization header value
 *   2: the method    3: the path    4: the query (may be empty)
 *   5..: headers, "name:value"
 * Properties: a parsed Authorization has bounded, NUL-terminated parts, an
 * 8-digit date and a 64-digit lower-case hex signature; a canonical request
 * starts with the method and a '/'-started URI, holds only printable
 * characters and line feeds in its URI and query lines (every other byte is
 * %XX-encoded), and is built the same way twice; the string to sign and the
 * signature follow from it without reading out of bounds. */
#include <stdbool.h>
#include <string.h>
#include <strings.h>

#include "fuzz.h"
#include "sigv4.h"

#define LINES_MAX 16
#define LINE_MAX_BYTES 2048

typedef struct {
    char lines[LINES_MAX][LINE_MAX_BYTES + 1];
    size_t count;
} input;

static bool input_header(void *ctx, const char *name, buf *out)
{
    const input *in = ctx;
    bool found = false;
    for (size_t i = 4; i < in->count; i++) {
        const char *colon = strchr(in->lines[i], ':');
        if (colon == NULL || (size_t)(colon - in->lines[i]) != strlen(name) ||
            strncasecmp(in->lines[i], name, strlen(name)) != 0)
            continue;
        if ((found && !buf_append(out, ",", 1)) || !buf_append_str(out, colon + 1))
            return false;
        found = true;
    }
    return found;
}

static void check_authorization(const sigv4_authorization *a)
{
    FUZZ_CHECK(strlen(a->access_key) >= 1 && strlen(a->access_key) <= SIGV4_ACCESS_KEY_MAX);
    FUZZ_CHECK(strlen(a->date) == 8 && strspn(a->date, "0123456789") == 8);
    FUZZ_CHECK(strlen(a->region) >= 1 && strlen(a->service) >= 1);
    FUZZ_CHECK(strlen(a->signature) == SIGV4_SIGNATURE_HEX);
    FUZZ_CHECK(strspn(a->signature, "0123456789abcdef") == SIGV4_SIGNATURE_HEX);
    FUZZ_CHECK(strstr(a->signed_headers, "host") != NULL);
}

/* The URI and query lines (2nd and 3rd) hold only encoded text. */
static void check_encoded_lines(const buf *canonical)
{
    const char *uri = memchr(canonical->data, '\n', canonical->len);
    FUZZ_CHECK(uri != NULL && uri[1] == '/');
    const char *query_end = strchr(strchr(uri + 1, '\n') + 1, '\n');
    for (const char *c = uri + 1; c < query_end; c++)
        FUZZ_CHECK(*c == '\n' || (*c > ' ' && *c < 0x7f));
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static input in;
    memset(&in, 0, sizeof in);
    size_t start = 0;
    for (size_t i = 0; i <= size && in.count < LINES_MAX; i++) {
        if (i == size || data[i] == '\n') {
            size_t len = i - start > LINE_MAX_BYTES ? LINE_MAX_BYTES : i - start;
            memcpy(in.lines[in.count], data + start, len);
            in.lines[in.count][len] = '\0'; /* an inner NUL ends the line, as in a C string */
            in.count++;
            start = i + 1;
        }
    }
    sigv4_authorization auth;
    char err[200];
    if (!sigv4_parse_authorization(in.lines[0], &auth, err, sizeof err))
        return 0;
    check_authorization(&auth);
    const char *method = in.lines[1][0] ? in.lines[1] : "GET";
    char path[LINE_MAX_BYTES + 2] = "/";
    strncat(path, in.lines[2], LINE_MAX_BYTES);
    buf first, second, to_sign;
    buf_init(&first, 64 * 1024);
    buf_init(&second, 64 * 1024);
    buf_init(&to_sign, 1024);
    bool built = sigv4_canonical_request(method, path, in.lines[3], auth.signed_headers,
                                         input_header, &in, "e3b0c442", &first, err, sizeof err);
    if (built) {
        FUZZ_CHECK(strncmp(first.data, method, strlen(method)) == 0);
        check_encoded_lines(&first);
        FUZZ_CHECK(sigv4_canonical_request(method, path, in.lines[3], auth.signed_headers,
                                           input_header, &in, "e3b0c442", &second, err,
                                           sizeof err));
        FUZZ_CHECK(first.len == second.len && memcmp(first.data, second.data, first.len) == 0);
        if (sigv4_string_to_sign("20150830T123600Z", &auth, first.data, first.len, &to_sign)) {
            uint8_t key[32];
            char signature[SIGV4_SIGNATURE_HEX + 1];
            sigv4_signing_key("secret", auth.date, auth.region, auth.service, key);
            sigv4_signature_hex(key, to_sign.data, to_sign.len, signature);
            FUZZ_CHECK(strlen(signature) == SIGV4_SIGNATURE_HEX);
        }
    }
    buf_free(&first);
    buf_free(&second);
    buf_free(&to_sign);
    return 0;
}
