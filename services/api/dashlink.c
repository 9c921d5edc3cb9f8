/* Signed dashboard-link tokens (dashlink.h). */
#include "dashlink.h"

#include <stdio.h>
#include <string.h>

#include "digest.h"

#define TOKEN_PREFIX "tdl1."
#define SIGNED_LABEL "tally-dashboard-link-v1\n"
/* The label the link key is derived under: HMAC(server secret, label). */
#define KEY_LABEL "tally dashboard-link signing key v1"
#define EXPIRY_DIGITS_MAX 20

static digest_hmac_key link_key;

void dashlink_init(const char *server_secret, size_t len)
{
    uint8_t derived[DIGEST_SHA256_LEN];
    digest_hmac_sha256(server_secret, len, KEY_LABEL, strlen(KEY_LABEL), derived);
    digest_hmac_key_init(&link_key, derived, sizeof derived);
    memset(derived, 0, sizeof derived);
}

/* The signature of (expiry text, key id) as 64 lowercase hex digits. */
static void signature_hex(const char *expiry, size_t expiry_len, const char *key_id,
                          size_t id_len, char hex[2 * DIGEST_SHA256_LEN + 1])
{
    char message[sizeof SIGNED_LABEL + EXPIRY_DIGITS_MAX + 1 + APIROUTE_ID_MAX];
    size_t label_len = strlen(SIGNED_LABEL), n = 0;
    memcpy(message, SIGNED_LABEL, label_len);
    n += label_len;
    memcpy(message + n, expiry, expiry_len);
    n += expiry_len;
    message[n++] = '\n';
    memcpy(message + n, key_id, id_len);
    n += id_len;
    uint8_t mac[DIGEST_SHA256_LEN];
    digest_hmac_sha256_keyed(&link_key, message, n, mac);
    digest_to_hex(mac, sizeof mac, hex);
}

bool dashlink_sign(const char *key_id, int64_t expires_s, char *out, size_t size)
{
    size_t id_len = strlen(key_id);
    if (!apiroute_valid_id(key_id, id_len) || expires_s < 0)
        return false;
    char expiry[EXPIRY_DIGITS_MAX + 1];
    int expiry_len = snprintf(expiry, sizeof expiry, "%lld", (long long)expires_s);
    char hex[2 * DIGEST_SHA256_LEN + 1];
    signature_hex(expiry, (size_t)expiry_len, key_id, id_len, hex);
    int written = snprintf(out, size, TOKEN_PREFIX "%s.%s.%s", expiry, hex, key_id);
    return written > 0 && (size_t)written < size;
}

static bool equal_constant_time(const char *a, const char *b, size_t len)
{
    volatile unsigned char diff = 0;
    for (size_t i = 0; i < len; i++)
        diff |= (unsigned char)(a[i] ^ b[i]);
    return diff == 0;
}

/* The expiry's decimal digits (no sign, no leading zero but "0") as
 * seconds; false when they are not that or do not fit. */
static bool parse_expiry(const char *text, size_t len, int64_t *out)
{
    if (len == 0 || len > 18 || (len > 1 && text[0] == '0'))
        return false;
    int64_t value = 0;
    for (size_t i = 0; i < len; i++) {
        if (text[i] < '0' || text[i] > '9')
            return false;
        value = value * 10 + (text[i] - '0'); /* 18 digits cannot overflow */
    }
    *out = value;
    return true;
}

dashlink_verdict dashlink_verify(const char *token, size_t len, int64_t now_s,
                                 char key_id[APIROUTE_ID_MAX + 1], int64_t *expires_s)
{
    size_t prefix_len = strlen(TOKEN_PREFIX);
    if (len >= DASHLINK_TOKEN_MAX || len <= prefix_len ||
        memcmp(token, TOKEN_PREFIX, prefix_len) != 0)
        return DASHLINK_MALFORMED;
    const char *expiry = token + prefix_len, *end = token + len;
    const char *dot = memchr(expiry, '.', (size_t)(end - expiry));
    if (dot == NULL)
        return DASHLINK_MALFORMED;
    size_t expiry_len = (size_t)(dot - expiry);
    const char *signature = dot + 1;
    if ((size_t)(end - signature) < 2 * DIGEST_SHA256_LEN + 1 ||
        signature[2 * DIGEST_SHA256_LEN] != '.')
        return DASHLINK_MALFORMED;
    const char *id = signature + 2 * DIGEST_SHA256_LEN + 1;
    size_t id_len = (size_t)(end - id);
    int64_t expires;
    if (!parse_expiry(expiry, expiry_len, &expires) || !apiroute_valid_id(id, id_len))
        return DASHLINK_MALFORMED;
    char expected[2 * DIGEST_SHA256_LEN + 1];
    signature_hex(expiry, expiry_len, id, id_len, expected);
    if (!equal_constant_time(expected, signature, 2 * DIGEST_SHA256_LEN))
        return DASHLINK_BAD_SIGNATURE;
    /* Checked after the signature: an expiry is only news when it is true. */
    if (expires <= now_s)
        return DASHLINK_EXPIRED;
    memcpy(key_id, id, id_len);
    key_id[id_len] = '\0';
    *expires_s = expires;
    return DASHLINK_VALID;
}

const char *dashlink_verdict_message(dashlink_verdict verdict)
{
    switch (verdict) {
    case DASHLINK_VALID:
        return "the dashboard link is valid";
    case DASHLINK_MALFORMED:
        return "the bearer token is not a dashboard link";
    case DASHLINK_BAD_SIGNATURE:
        return "the dashboard link's signature does not match (altered, or from another server)";
    case DASHLINK_EXPIRED:
        return "the dashboard link has expired; ask for a new one";
    }
    return "?";
}
