/* Fuzz target: the canonical form of a gateway's request target and method
 * (services/api/apitext.c apitext_canonical_path, apitext_canonical_method), by
 * which per-method throttles are keyed and matched, and the split of a
 * stored methodThrottles key (services/api/apimodel.c apimodel_method_key_split).
 * The input bytes are the target (and the method, and the key).
 * Properties of a canonical path c = canon(x):
 *   - APITEXT_CANONICAL_SIZE(len) bytes hold it; it starts with '/';
 *   - it is a fixed point: canon(c) == c (idempotent);
 *   - it has the documented shape: no empty, "." or ".." segment, no
 *     segment ending in '.', no trailing '/' (but the root), only a-z 0-9
 *     -._~!$&'()*+,=:@ and '/' as themselves, anything else as %XX with
 *     upper-case hex;
 *   - a buffer one byte short of it is refused (0), never overrun;
 * of a canonical method: a fixed point, never "HEAD", no lower-case letter;
 * of a split key: both halves are fixed points of their canonical forms. */
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "apimodel.h"
#include "apitext.h"
#include "fuzz.h"

static bool upper_hex(char c)
{
    return (c >= '0' && c <= '9') || (c >= 'A' && c <= 'F');
}

static bool literal(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
           (c != '\0' && strchr("-._~!$&'()*+,=:@", c) != NULL);
}

/* The documented shape, segment by segment. */
static void check_shape(const char *c, size_t n)
{
    FUZZ_CHECK(n >= 1 && c[0] == '/' && strlen(c) == n);
    if (n == 1)
        return;
    FUZZ_CHECK(c[n - 1] != '/');
    size_t at = 1;
    while (at <= n) {
        size_t end = at;
        while (end < n && c[end] != '/')
            end++;
        size_t len = end - at;
        FUZZ_CHECK(len >= 1);                        /* no empty segment */
        FUZZ_CHECK(c[end - 1] != '.');               /* nor ".", "..", "x." */
        for (size_t k = at; k < end; k++) {
            if (c[k] == '%') {
                FUZZ_CHECK(k + 2 < end && upper_hex(c[k + 1]) && upper_hex(c[k + 2]));
                k += 2;
            } else {
                FUZZ_CHECK(literal(c[k]));
            }
        }
        at = end + 1;
    }
}

static void check_path(const char *uri, size_t len)
{
    size_t size = APITEXT_CANONICAL_SIZE(len);
    char *canonical = malloc(size);
    FUZZ_CHECK(canonical != NULL);
    size_t n = apitext_canonical_path(uri, len, canonical, size);
    FUZZ_CHECK(n >= 1 && n < size);
    check_shape(canonical, n);
    size_t again_size = APITEXT_CANONICAL_SIZE(n);
    char *again = malloc(again_size);
    FUZZ_CHECK(again != NULL);
    FUZZ_CHECK(apitext_canonical_path(canonical, n, again, again_size) == n);
    FUZZ_CHECK(memcmp(again, canonical, n + 1) == 0);
    /* Exactly n bytes leave no room for the NUL: refused, not overrun (the
     * malloc'd size lets ASan see a write past it). */
    char *short_buffer = malloc(n);
    FUZZ_CHECK(short_buffer != NULL);
    FUZZ_CHECK(apitext_canonical_path(uri, len, short_buffer, n) == 0);
    free(short_buffer);
    free(again);
    free(canonical);
}

static void check_method(const char *method, size_t len)
{
    char *out = malloc(len + 1);
    FUZZ_CHECK(out != NULL);
    size_t n = apitext_canonical_method(method, len, out, len + 1);
    if (n > 0) {
        FUZZ_CHECK(strlen(out) <= n && n <= len);
        FUZZ_CHECK(strcmp(out, "HEAD") != 0);
        for (size_t k = 0; k < n; k++)
            FUZZ_CHECK(!(out[k] >= 'a' && out[k] <= 'z'));
        char again[APIMODEL_METHOD_PATH_MAX + 1];
        if (n < sizeof again) {
            FUZZ_CHECK(apitext_canonical_method(out, n, again, sizeof again) == n);
            FUZZ_CHECK(memcmp(again, out, n) == 0);
        }
    }
    free(out);
}

static void check_key_split(const char *data, size_t len)
{
    if (len > 4 * APIMODEL_METHOD_PATH_MAX || memchr(data, '\0', len) != NULL)
        return; /* JSON member names the api accepts hold no NUL */
    char key[4 * APIMODEL_METHOD_PATH_MAX + 1];
    memcpy(key, data, len);
    key[len] = '\0';
    char path[APIMODEL_METHOD_PATH_MAX + 1], method[APIMODEL_METHOD_PATH_MAX + 1];
    if (!apimodel_method_key_split(key, path, method))
        return;
    size_t path_len = strlen(path);
    char again[APITEXT_CANONICAL_SIZE(APIMODEL_METHOD_PATH_MAX)];
    FUZZ_CHECK(apitext_canonical_path(path, path_len, again, sizeof again) == path_len);
    FUZZ_CHECK(strcmp(again, path) == 0);
    size_t method_len = strlen(method);
    FUZZ_CHECK(method_len >= 1);
    FUZZ_CHECK(apitext_canonical_method(method, method_len, again, sizeof again) == method_len);
    FUZZ_CHECK(strcmp(again, method) == 0);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *text = (const char *)data;
    check_path(text, size);
    check_method(text, size);
    check_key_split(text, size);
    return 0;
}
