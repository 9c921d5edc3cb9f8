#include "digest.h"

#include <string.h>

/* The first 32 bits of the fractional parts of the cube roots of the first
 * 64 primes (FIPS 180-4, 4.2.2). */
static const uint32_t round_constants[64] = {
    0x428a2f98u, 0x71374491u, 0xb5c0fbcfu, 0xe9b5dba5u,
    0x3956c25bu, 0x59f111f1u, 0x923f82a4u, 0xab1c5ed5u,
    0xd807aa98u, 0x12835b01u, 0x243185beu, 0x550c7dc3u,
    0x72be5d74u, 0x80deb1feu, 0x9bdc06a7u, 0xc19bf174u,
    0xe49b69c1u, 0xefbe4786u, 0x0fc19dc6u, 0x240ca1ccu,
    0x2de92c6fu, 0x4a7484aau, 0x5cb0a9dcu, 0x76f988dau,
    0x983e5152u, 0xa831c66du, 0xb00327c8u, 0xbf597fc7u,
    0xc6e00bf3u, 0xd5a79147u, 0x06ca6351u, 0x14292967u,
    0x27b70a85u, 0x2e1b2138u, 0x4d2c6dfcu, 0x53380d13u,
    0x650a7354u, 0x766a0abbu, 0x81c2c92eu, 0x92722c85u,
    0xa2bfe8a1u, 0xa81a664bu, 0xc24b8b70u, 0xc76c51a3u,
    0xd192e819u, 0xd6990624u, 0xf40e3585u, 0x106aa070u,
    0x19a4c116u, 0x1e376c08u, 0x2748774cu, 0x34b0bcb5u,
    0x391c0cb3u, 0x4ed8aa4au, 0x5b9cca4fu, 0x682e6ff3u,
    0x748f82eeu, 0x78a5636fu, 0x84c87814u, 0x8cc70208u,
    0x90befffau, 0xa4506cebu, 0xbef9a3f7u, 0xc67178f2u
};

static uint32_t rotr(uint32_t x, unsigned n)
{
    return (x >> n) | (x << (32 - n));
}

static void compress(uint32_t state[8], const uint8_t block[64])
{
    uint32_t w[64];
    for (int i = 0; i < 16; i++)
        w[i] = (uint32_t)block[i * 4] << 24 | (uint32_t)block[i * 4 + 1] << 16 |
               (uint32_t)block[i * 4 + 2] << 8 | (uint32_t)block[i * 4 + 3];
    for (int i = 16; i < 64; i++) {
        uint32_t s0 = rotr(w[i - 15], 7) ^ rotr(w[i - 15], 18) ^ (w[i - 15] >> 3);
        uint32_t s1 = rotr(w[i - 2], 17) ^ rotr(w[i - 2], 19) ^ (w[i - 2] >> 10);
        w[i] = w[i - 16] + s0 + w[i - 7] + s1;
    }
    uint32_t a = state[0], b = state[1], c = state[2], d = state[3];
    uint32_t e = state[4], f = state[5], g = state[6], h = state[7];
    for (int i = 0; i < 64; i++) {
        uint32_t t1 = h + (rotr(e, 6) ^ rotr(e, 11) ^ rotr(e, 25)) + ((e & f) ^ (~e & g)) +
                      round_constants[i] + w[i];
        uint32_t t2 = (rotr(a, 2) ^ rotr(a, 13) ^ rotr(a, 22)) + ((a & b) ^ (a & c) ^ (b & c));
        h = g;
        g = f;
        f = e;
        e = d + t1;
        d = c;
        c = b;
        b = a;
        a = t1 + t2;
    }
    state[0] += a;
    state[1] += b;
    state[2] += c;
    state[3] += d;
    state[4] += e;
    state[5] += f;
    state[6] += g;
    state[7] += h;
}

void digest_sha256_init(digest_sha256_ctx *ctx)
{
    /* The first 32 bits of the fractional parts of the square roots of the
     * first 8 primes (FIPS 180-4, 5.3.3). */
    static const uint32_t initial[8] = {0x6a09e667u, 0xbb67ae85u, 0x3c6ef372u, 0xa54ff53au, 0x510e527fu, 0x9b05688cu, 0x1f83d9abu, 0x5be0cd19u};
    memcpy(ctx->state, initial, sizeof initial);
    ctx->length = 0;
    ctx->block_len = 0;
}

void digest_sha256_update(digest_sha256_ctx *ctx, const void *data, size_t len)
{
    const uint8_t *p = data;
    ctx->length += len;
    while (len > 0) {
        size_t take = 64 - ctx->block_len < len ? 64 - ctx->block_len : len;
        memcpy(ctx->block + ctx->block_len, p, take);
        ctx->block_len += take;
        p += take;
        len -= take;
        if (ctx->block_len == 64) {
            compress(ctx->state, ctx->block);
            ctx->block_len = 0;
        }
    }
}

void digest_sha256_final(digest_sha256_ctx *ctx, uint8_t out[DIGEST_SHA256_LEN])
{
    /* The padding (FIPS 180-4, 5.1.1) written into the block at once: a 1
     * bit, zeros, then the message length in bits, big-endian, in the last
     * 8 bytes; a second block when the first has no room for the length. */
    uint64_t bits = ctx->length * 8;
    ctx->block[ctx->block_len++] = 0x80;
    if (ctx->block_len > 56) {
        memset(ctx->block + ctx->block_len, 0, 64 - ctx->block_len);
        compress(ctx->state, ctx->block);
        ctx->block_len = 0;
    }
    memset(ctx->block + ctx->block_len, 0, 56 - ctx->block_len);
    for (int i = 0; i < 8; i++)
        ctx->block[56 + i] = (uint8_t)(bits >> (56 - 8 * i));
    compress(ctx->state, ctx->block);
    ctx->block_len = 0;
    for (int i = 0; i < 8; i++) {
        out[i * 4] = (uint8_t)(ctx->state[i] >> 24);
        out[i * 4 + 1] = (uint8_t)(ctx->state[i] >> 16);
        out[i * 4 + 2] = (uint8_t)(ctx->state[i] >> 8);
        out[i * 4 + 3] = (uint8_t)ctx->state[i];
    }
}

void digest_sha256(const void *data, size_t len, uint8_t out[DIGEST_SHA256_LEN])
{
    digest_sha256_ctx ctx;
    digest_sha256_init(&ctx);
    digest_sha256_update(&ctx, data, len);
    digest_sha256_final(&ctx, out);
}

void digest_hmac_key_init(digest_hmac_key *k, const void *key, size_t key_len)
{
    enum { BLOCK = 64 };
    uint8_t block_key[BLOCK] = {0};
    if (key_len > BLOCK) /* a long key is replaced by its digest (RFC 2104) */
        digest_sha256(key, key_len, block_key);
    else if (key_len > 0)
        memcpy(block_key, key, key_len);
    uint8_t pad[BLOCK];
    for (int i = 0; i < BLOCK; i++)
        pad[i] = (uint8_t)(block_key[i] ^ 0x36);
    digest_sha256_init(&k->inner);
    digest_sha256_update(&k->inner, pad, BLOCK);
    for (int i = 0; i < BLOCK; i++)
        pad[i] = (uint8_t)(block_key[i] ^ 0x5c);
    digest_sha256_init(&k->outer);
    digest_sha256_update(&k->outer, pad, BLOCK);
    /* The key's derivatives do not outlive the call on the stack. */
    volatile uint8_t *wipe = block_key;
    for (int i = 0; i < BLOCK; i++)
        wipe[i] = 0;
    wipe = pad;
    for (int i = 0; i < BLOCK; i++)
        wipe[i] = 0;
}

void digest_hmac_sha256_keyed(const digest_hmac_key *k, const void *data, size_t len,
                              uint8_t out[DIGEST_SHA256_LEN])
{
    uint8_t inner[DIGEST_SHA256_LEN];
    digest_sha256_ctx ctx = k->inner;
    digest_sha256_update(&ctx, data, len);
    digest_sha256_final(&ctx, inner);
    ctx = k->outer;
    digest_sha256_update(&ctx, inner, sizeof inner);
    digest_sha256_final(&ctx, out);
}

void digest_hmac_sha256(const void *key, size_t key_len, const void *data, size_t len,
                        uint8_t out[DIGEST_SHA256_LEN])
{
    digest_hmac_key k;
    digest_hmac_key_init(&k, key, key_len);
    digest_hmac_sha256_keyed(&k, data, len, out);
}

/* The decimal digits of n, no sign, no NUL; their count. */
static size_t decimal(size_t n, char out[24])
{
    char reversed[24];
    size_t count = 0;
    do {
        reversed[count++] = (char)('0' + n % 10);
        n /= 10;
    } while (n > 0);
    for (size_t i = 0; i < count; i++)
        out[i] = reversed[count - 1 - i];
    return count;
}

void digest_event(const char *source, const char *id, uint8_t out[16])
{
    /* Called for every event the collector counts: the length prefix is
     * written by hand rather than with snprintf, which cost more than the
     * rest of the digest's bookkeeping. */
    char prefix[24];
    size_t source_len = strlen(source);
    size_t n = decimal(source_len, prefix);
    prefix[n++] = ':';
    digest_sha256_ctx ctx;
    uint8_t full[DIGEST_SHA256_LEN];
    digest_sha256_init(&ctx);
    digest_sha256_update(&ctx, prefix, n);
    digest_sha256_update(&ctx, source, source_len);
    digest_sha256_update(&ctx, id, strlen(id));
    digest_sha256_final(&ctx, full);
    memcpy(out, full, 16);
}

void digest_to_hex(const uint8_t *bytes, size_t len, char *out)
{
    static const char digits[] = "0123456789abcdef";
    for (size_t i = 0; i < len; i++) {
        out[2 * i] = digits[bytes[i] >> 4];
        out[2 * i + 1] = digits[bytes[i] & 15];
    }
    out[2 * len] = '\0';
}

static int hex_digit(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    return -1;
}

bool digest_from_hex(const char *text, uint8_t *bytes, size_t len)
{
    if (text == NULL || strlen(text) != 2 * len)
        return false;
    for (size_t i = 0; i < len; i++) {
        int high = hex_digit(text[2 * i]), low = hex_digit(text[2 * i + 1]);
        if (high < 0 || low < 0)
            return false;
        bytes[i] = (uint8_t)(high << 4 | low);
    }
    return true;
}

uint64_t digest_fnv1a(const void *data, size_t len)
{
    const unsigned char *p = data;
    uint64_t h = 14695981039346656037ULL; /* the FNV offset basis */
    for (size_t i = 0; i < len; i++)
        h = (h ^ p[i]) * 1099511628211ULL;
    return h;
}
