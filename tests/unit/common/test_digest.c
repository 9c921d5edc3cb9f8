/* Unit tests for common/digest: SHA-256 at the lengths where its padding
 * changes shape (one block, the length spilling into a second block, exact
 * blocks), fed whole and in pieces, and the event digest the collector
 * stores in event_ids (it must never change: stored rows depend on it).
 * Expected values: Python's hashlib. */
#include <check.h>
#include <stdint.h>
#include <string.h>

#include "digest.h"
#include "suites.h"

static const struct {
    size_t len;
    const char *hex;
} vectors[] = {
    {0, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"},
    {1, "084fed08b978af4d7d196a7446a86b58009e636b611db16211b65a9aadff29c5"},
    {55, "e7313d333c272e639f790978283f9eb392e843d0f29b7016828bb1daa4aac70b"},
    {56, "4324d65f3c103567f5589c710bc08f8523f929a9272e3af36fc968e52abc6c27"},
    {63, "81c80242132f230c3bd41b3e63bbcff16107339549214a99614ff26664625055"},
    {64, "39e3d7b6b5d075d37d053ad89b24b41bef4f3c29760c84447cab3f3be1882241"},
    {65, "aacca6ff74fdbb296d165a45cecfa04e5127bc008770fbbdd48006f2d2fae95e"},
    {119, "9ce7368e4daf32341631b492e80359dc9f594b48453cd0dd5bf0b19279cc177e"},
    {120, "7836b787757e95e58b3ca5aec90b1b004e8deba1e50e9675af9cabf1a13a04b5"},
    {200, "2c7e18c942ef065b526a2d4e5546283749cd3ddfb51d8fc71f42717363685f46"},
};

/* The test message of length n: bytes (7i + 3) mod 256. */
static void message(uint8_t *out, size_t n)
{
    for (size_t i = 0; i < n; i++)
        out[i] = (uint8_t)((i * 7 + 3) % 256);
}

START_TEST(sha256_matches_hashlib_at_every_padding_shape)
{
    uint8_t data[200], hash[DIGEST_SHA256_LEN];
    char hex[2 * DIGEST_SHA256_LEN + 1];
    for (size_t v = 0; v < sizeof vectors / sizeof vectors[0]; v++) {
        message(data, vectors[v].len);
        digest_sha256(data, vectors[v].len, hash);
        digest_to_hex(hash, sizeof hash, hex);
        ck_assert_str_eq(hex, vectors[v].hex);
    }
}
END_TEST

START_TEST(sha256_in_pieces_equals_sha256_whole)
{
    uint8_t data[200], whole[DIGEST_SHA256_LEN], pieces[DIGEST_SHA256_LEN];
    message(data, sizeof data);
    digest_sha256(data, sizeof data, whole);
    for (size_t step = 1; step <= 70; step += 23) {
        digest_sha256_ctx ctx;
        digest_sha256_init(&ctx);
        for (size_t at = 0; at < sizeof data; at += step)
            digest_sha256_update(&ctx, data + at, at + step <= sizeof data ? step : sizeof data - at);
        digest_sha256_final(&ctx, pieces);
        ck_assert_mem_eq(pieces, whole, sizeof whole);
    }
}
END_TEST

START_TEST(event_digest_is_the_stored_one)
{
    /* SHA-256("<len(source)>:" source id), the first 16 bytes. */
    static const struct {
        size_t source_len;
        const char *id;
        const char *hex;
    } cases[] = {
        {1, "e1", "79b0927cb9e240fb84d15ae693f1acce"},
        {300, "y", "f1b6fffcb3094f4c2855fee8620f6ca2"},
    };
    char source[301];
    uint8_t digest[16];
    char hex[33];
    digest_event("gw-eu-1", "9b2f6c1e-0000", digest);
    digest_to_hex(digest, sizeof digest, hex);
    ck_assert_str_eq(hex, "248a55e2cadbc94b32fb229ab37ccbcf");
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        memset(source, i == 0 ? 's' : 'x', cases[i].source_len);
        source[cases[i].source_len] = '\0';
        digest_event(source, cases[i].id, digest);
        digest_to_hex(digest, sizeof digest, hex);
        ck_assert_str_eq(hex, cases[i].hex);
    }
}
END_TEST

Suite *digest_suite(void)
{
    Suite *s = suite_create("digest");
    TCase *tc = tcase_create("sha256");
    tcase_add_test(tc, sha256_matches_hashlib_at_every_padding_shape);
    tcase_add_test(tc, sha256_in_pieces_equals_sha256_whole);
    tcase_add_test(tc, event_digest_is_the_stored_one);
    suite_add_tcase(s, tc);
    return s;
}
