/* SHA-256 (FIPS 180-4) and HMAC-SHA-256, written for Tally: API key values
 * are stored as an HMAC of their SHA-256, and the collector records each event as a 128-bit digest
 * of its (source, id). Pure functions, no allocation. */
#ifndef TALLY_DIGEST_H
#define TALLY_DIGEST_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define DIGEST_SHA256_LEN 32

typedef struct {
    uint32_t state[8];
    uint64_t length;     /* bytes hashed so far */
    uint8_t block[64];
    size_t block_len;
} digest_sha256_ctx;

void digest_sha256_init(digest_sha256_ctx *ctx);
void digest_sha256_update(digest_sha256_ctx *ctx, const void *data, size_t len);
void digest_sha256_final(digest_sha256_ctx *ctx, uint8_t out[DIGEST_SHA256_LEN]);
/* One call: out = SHA-256(data). */
void digest_sha256(const void *data, size_t len, uint8_t out[DIGEST_SHA256_LEN]);
/* HMAC-SHA-256 (RFC 2104, FIPS 198-1) of data under key, any key length:
 * how tally-api stores key secrets (HMAC of their SHA-256 under a server
 * secret, services/api/keyhash.h). */
void digest_hmac_sha256(const void *key, size_t key_len, const void *data, size_t len,
                        uint8_t out[DIGEST_SHA256_LEN]);
/* A key's HMAC-SHA-256 schedule: the hash states after its inner and outer
 * pads, computed once, so each MAC under a long-lived key (the api's key
 * secret, once per authorize) costs two blocks fewer. */
typedef struct {
    digest_sha256_ctx inner, outer;
} digest_hmac_key;
void digest_hmac_key_init(digest_hmac_key *k, const void *key, size_t key_len);
void digest_hmac_sha256_keyed(const digest_hmac_key *k, const void *data, size_t len,
                              uint8_t out[DIGEST_SHA256_LEN]);
/* The event digest the collector records (see migrations/001_init.sql,
 * tally_event_hash): the first 16 bytes of
 * SHA-256(<decimal byte length of source> ":" source id). The length prefix
 * keeps two different pairs from ever hashing the same text. */
void digest_event(const char *source, const char *id, uint8_t out[16]);
/* FNV-1a, 64 bits: the hash of the services' in-memory tables (keys,
 * rollup groups, lanes). Not a digest: fast, and no use against an
 * adversary. */
uint64_t digest_fnv1a(const void *data, size_t len);

/* Writes `len` bytes as lowercase hex plus NUL into out (2 * len + 1 bytes). */
void digest_to_hex(const uint8_t *bytes, size_t len, char *out);
/* The inverse, for digests PostgreSQL gives back (encode(x, 'hex')):
 * exactly 2 * len lowercase hex digits into `len` bytes; false otherwise. */
bool digest_from_hex(const char *text, uint8_t *bytes, size_t len);

#endif
