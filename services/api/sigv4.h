/* AWS Signature Version 4, the verifying side, as pure functions: the
 * Authorization header's parts, the canonical request, the string to sign,
 * the signing key and the signature (docs/AWS-USAGE-PLANS.md §6). No I/O,
 * no allocation beyond the caller's bounded buffers, no logging; the AWS
 * listener (aws.c) feeds it the request and judges the clock and the
 * credentials. The unit tests hold it against AWS's published
 * aws-sig-v4-test-suite vectors. */
#ifndef TALLY_SIGV4_H
#define TALLY_SIGV4_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "buf.h"

#define SIGV4_ALGORITHM "AWS4-HMAC-SHA256"
#define SIGV4_ACCESS_KEY_MAX 128
#define SIGV4_SCOPE_PART_MAX 63       /* a region or a service name */
#define SIGV4_SIGNED_HEADERS_MAX 1024 /* "host;x-amz-date;..." */
#define SIGV4_SIGNATURE_HEX 64
#define SIGV4_AMZ_DATE_LEN 16         /* 20150830T123600Z */

/* The parts of "AWS4-HMAC-SHA256 Credential=<akid>/<yyyymmdd>/<region>/
 * <service>/aws4_request, SignedHeaders=<a;b>, Signature=<64 hex>". */
typedef struct {
    char access_key[SIGV4_ACCESS_KEY_MAX + 1];
    char date[9]; /* YYYYMMDD */
    char region[SIGV4_SCOPE_PART_MAX + 1];
    char service[SIGV4_SCOPE_PART_MAX + 1];
    char signed_headers[SIGV4_SIGNED_HEADERS_MAX + 1];
    char signature[SIGV4_SIGNATURE_HEX + 1];
} sigv4_authorization;

/* Parses an Authorization header value into out. False with a message in
 * err (naming what is missing or malformed, never quoting the signature)
 * when it is not of that form: another algorithm, a part missing or given
 * twice, a credential scope of other than five parts or not ending in
 * aws4_request, signed headers not lower-case, sorted and unique or
 * without "host", a signature not 64 lower-case hex digits. */
bool sigv4_parse_authorization(const char *header, sigv4_authorization *out, char *err,
                               size_t err_size);

/* Parses X-Amz-Date's basic ISO 8601 form "YYYYMMDDTHHMMSSZ" into usec. */
bool sigv4_parse_amz_date(const char *text, int64_t *out);

/* Whether `name` is one of the ';'-separated names of a SignedHeaders list:
 * an exact name, never a prefix of a longer one ("x-amz-date" is not signed
 * by "x-amz-date-extra"). */
bool sigv4_header_signed(const char *signed_headers, const char *name);

/* Appends the value of the request header `name` (lower case) to out, as
 * sent; several fields of one name joined by ','. False when the request
 * has no such header (or out is full). */
typedef bool (*sigv4_header_fn)(void *ctx, const char *name, buf *out);

/* The canonical request into out (reset first):
 *   method \n canonical URI \n canonical query \n canonical headers \n
 *   signed headers \n payload hash
 * `path` and `query` are the request target's as sent (still
 * percent-encoded; query without '?', NULL or "" when none). The canonical
 * URI is the path with every byte but unreserved ones and '/' encoded as
 * %XX, as AWS's services other than S3 sign it (an escape already in the
 * path is encoded again). The canonical query decodes each name and value
 * once, encodes them again strictly and sorts by name then value. Each
 * header of `signed_headers` is looked up with `header`; its value trimmed
 * and inner runs of spaces folded to one. False with err when a signed
 * header is missing or out fills up. */
bool sigv4_canonical_request(const char *method, const char *path, const char *query,
                             const char *signed_headers, sigv4_header_fn header, void *ctx,
                             const char *payload_hash_hex, buf *out, char *err, size_t err_size);

/* The string to sign into out (reset first):
 * "AWS4-HMAC-SHA256\n<amz date>\n<scope>\n<hex SHA-256 of the canonical request>",
 * the scope being "<date>/<region>/<service>/aws4_request". False when out
 * is too small. */
bool sigv4_string_to_sign(const char *amz_date, const sigv4_authorization *auth,
                          const char *canonical_request, size_t canonical_len, buf *out);

/* kSigning = HMAC(HMAC(HMAC(HMAC("AWS4" + secret, date), region), service),
 * "aws4_request"). */
void sigv4_signing_key(const char *secret, const char *date, const char *region,
                       const char *service, uint8_t out[32]);

/* Hex HMAC-SHA-256 of the string to sign under the signing key. */
void sigv4_signature_hex(const uint8_t signing_key[32], const char *string_to_sign, size_t len,
                         char out[SIGV4_SIGNATURE_HEX + 1]);

/* Compares two signatures of SIGV4_SIGNATURE_HEX characters in time that
 * does not depend on where they differ. */
bool sigv4_signature_equal(const char *a, const char *b);

#endif
