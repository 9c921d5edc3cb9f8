/* Dashboard links (issue #14): a signed, short-lived token that lets a
 * browser read one key's usage and quota on the /v1/me routes, without the
 * key's secret. A token is
 *     tdl1.<expiry, unix seconds>.<signature, 64 hex>.<key id>
 * the signature being HMAC-SHA-256, under the link key, of
 * "tally-dashboard-link-v1\n<expiry>\n<key id>". The key id comes last
 * because ids may hold dots. The link key is derived from
 * TALLY_KEY_HMAC_SECRET with its own label (dashlink_init), so that no new
 * secret has to be shared between apis and a link's MAC can never be
 * mistaken for a stored key hash. Tokens are not stored: they cannot be
 * revoked one by one, only by disabling the key (403) or changing the
 * secret (every key and link becomes unknown). Pure functions and one
 * process-wide key; no allocation. */
#ifndef TALLY_API_DASHLINK_H
#define TALLY_API_DASHLINK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "apiroute.h"

#define DASHLINK_TTL_DEFAULT_S 3600
#define DASHLINK_TTL_MIN_S 60
#define DASHLINK_TTL_MAX_S (7 * 24 * 3600) /* links are meant to be short-lived */
/* "tdl1." + 20 digits + "." + 64 hex + "." + an id, and the NUL. */
#define DASHLINK_TOKEN_MAX (5 + 20 + 1 + 64 + 1 + APIROUTE_ID_MAX + 1)

typedef enum {
    DASHLINK_VALID,
    DASHLINK_MALFORMED,     /* not a token of this form (or too long) */
    DASHLINK_BAD_SIGNATURE, /* tampered with, or signed under another secret */
    DASHLINK_EXPIRED,
} dashlink_verdict;

/* Derives the link key from the server secret (borrowed, not kept). */
void dashlink_init(const char *server_secret, size_t len);
/* The token for `key_id` (a valid path id) expiring at `expires_s` into
 * out; false when it does not fit `size`. */
bool dashlink_sign(const char *key_id, int64_t expires_s, char *out, size_t size);
/* Checks `token` (len bytes, not necessarily NUL-terminated) at `now_s`:
 * on DASHLINK_VALID the key id is copied into key_id and the expiry into
 * *expires_s. The signature is compared in constant time. */
dashlink_verdict dashlink_verify(const char *token, size_t len, int64_t now_s,
                                 char key_id[APIROUTE_ID_MAX + 1], int64_t *expires_s);
/* A sentence for a 401 saying why a token was refused. */
const char *dashlink_verdict_message(dashlink_verdict verdict);

#endif
