/* Admin bearer token and x-api-key checks. The admin token is compared as
 * SHA-256 digests in constant time, so neither its content nor its length
 * leaks through timing; it is never logged. An x-api-key is looked up by
 * its stored form (keyhash.h), never compared as text. */
#include <string.h>
#include <strings.h>

#include "api.h"
#include "digest.h"
#include "keyhash.h"

static uint8_t admin_digest[DIGEST_SHA256_LEN];

void auth_init(const char *admin_token)
{
    digest_sha256(admin_token, strlen(admin_token), admin_digest);
}

static bool equal_constant_time(const uint8_t *a, const uint8_t *b, size_t len)
{
    volatile uint8_t diff = 0;
    for (size_t i = 0; i < len; i++)
        diff |= (uint8_t)(a[i] ^ b[i]);
    return diff == 0;
}

bool auth_admin(api_request *req)
{
    const char *header =
        MHD_lookup_connection_value(req->conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_AUTHORIZATION);
    static const char scheme[] = "Bearer ";
    /* The scheme is case-insensitive (RFC 9110 11.1); the token is not. */
    if (header == NULL || strncasecmp(header, scheme, sizeof scheme - 1) != 0 ||
        header[sizeof scheme - 1] == '\0') {
        api_add_header(req, "WWW-Authenticate", "Bearer realm=\"tally-admin\"");
        api_reply_error(req, 401, "unauthorized",
                        "admin routes need Authorization: Bearer <admin token>");
        return false;
    }
    const char *token = header + sizeof scheme - 1;
    uint8_t digest[DIGEST_SHA256_LEN];
    digest_sha256(token, strlen(token), digest);
    if (!equal_constant_time(digest, admin_digest, sizeof digest)) {
        api_add_header(req, "WWW-Authenticate", "Bearer realm=\"tally-admin\", error=\"invalid_token\"");
        api_reply_error(req, 401, "unauthorized", "the admin token is not valid");
        return false;
    }
    return true;
}

bool auth_api_key_hash(api_request *req, uint8_t hash[32])
{
    return keyhash_from_request(req, hash, NULL);
}
