/* Key secrets as an HMAC under the server secret (keyhash.h). */
#include "keyhash.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "buf.h"
#include "db.h"
#include "digest.h"

/* The longest x-api-key looked at: a stored secret is at most 256 bytes. */
#define API_KEY_HEADER_MAX 256

/* Only the secret's HMAC schedule is kept, not the secret itself. */
static digest_hmac_key secret_key;

bool keyhash_init(const char *text, char *err, size_t err_size)
{
    size_t len = text != NULL ? strlen(text) : 0;
    if (len < KEYHASH_SECRET_MIN || len > KEYHASH_SECRET_MAX) {
        snprintf(err, err_size,
                 "TALLY_KEY_HMAC_SECRET (--key-hmac-secret, or a file: TALLY_KEY_HMAC_SECRET_FILE) "
                 "must be %d to %d bytes, e.g. `openssl rand -hex 32`",
                 KEYHASH_SECRET_MIN, KEYHASH_SECRET_MAX);
        return false;
    }
    digest_hmac_key_init(&secret_key, text, len);
    return true;
}

void keyhash_of_legacy(const uint8_t sha256[KEYHASH_LEN], uint8_t out[KEYHASH_LEN])
{
    digest_hmac_sha256_keyed(&secret_key, sha256, KEYHASH_LEN, out);
}

void keyhash_of_value(const char *value, size_t len, uint8_t out[KEYHASH_LEN])
{
    uint8_t inner[DIGEST_SHA256_LEN];
    digest_sha256(value, len, inner);
    keyhash_of_legacy(inner, out);
}

bool keyhash_from_request(api_request *req, uint8_t stored[KEYHASH_LEN],
                          uint8_t legacy[KEYHASH_LEN])
{
    const char *value = MHD_lookup_connection_value(req->conn, MHD_HEADER_KIND, "x-api-key");
    if (value == NULL || value[0] == '\0') {
        api_reply_error(req, 401, "unauthorized", "an API key is required in x-api-key");
        return false;
    }
    size_t len = strnlen(value, API_KEY_HEADER_MAX + 1);
    if (len > API_KEY_HEADER_MAX) {
        api_reply_error(req, 401, "unauthorized", "the API key is not valid");
        return false;
    }
    uint8_t inner[DIGEST_SHA256_LEN];
    digest_sha256(value, len, inner);
    keyhash_of_legacy(inner, stored);
    if (legacy != NULL)
        memcpy(legacy, inner, sizeof inner);
    return true;
}

/* The UPDATE's two parameters, text[] of ids and of their new hex hashes,
 * from the locked rows (id, hex SHA-256). */
static bool build_conversion(const PGresult *rows, buf *ids, buf *hashes)
{
    int count = PQntuples(rows);
    bool ok = buf_append_str(ids, "{") && buf_append_str(hashes, "{");
    for (int r = 0; ok && r < count; r++) {
        uint8_t legacy[KEYHASH_LEN], stored[KEYHASH_LEN];
        char hex[2 * KEYHASH_LEN + 1];
        if (!digest_from_hex(PQgetvalue(rows, r, 1), legacy, sizeof legacy))
            continue; /* the column's CHECK keeps this from happening */
        keyhash_of_legacy(legacy, stored);
        digest_to_hex(stored, sizeof stored, hex);
        ok = (r == 0 || (buf_append_str(ids, ",") && buf_append_str(hashes, ","))) &&
             db_append_array_element(ids, PQgetvalue(rows, r, 0)) &&
             db_append_array_element(hashes, hex);
    }
    return ok && buf_append_str(ids, "}") && buf_append_str(hashes, "}");
}

bool keyhash_convert_legacy(PGconn *conn, long *converted, long *duplicates, char *err,
                            size_t err_size)
{
    *converted = 0;
    *duplicates = 0;
    PGresult *rows = NULL, *res = NULL;
    buf ids, hashes;
    /* Every key is one id (<= 128 bytes, escaped at most twice over) and
     * one 64-byte hash: the limits only guard against a runaway. */
    buf_init(&ids, 1u << 30);
    buf_init(&hashes, 1u << 30);
    bool ok = false;
    if (!db_exec(conn, "BEGIN", "starting the key hash conversion", err, err_size))
        goto done;
    /* FOR UPDATE: a second api starting now waits here, then finds these
     * rows converted (READ COMMITTED re-checks the condition) and skips them. */
    rows = PQexec(conn, "SELECT id, encode(value_hash, 'hex') FROM api_keys "
                        "WHERE value_hash_form = 'sha256' ORDER BY id FOR UPDATE");
    if (PQresultStatus(rows) != PGRES_TUPLES_OK) {
        db_error(conn, rows, "reading keys stored as SHA-256", err, err_size);
        goto done;
    }
    if (PQntuples(rows) > 0) {
        if (!build_conversion(rows, &ids, &hashes)) {
            snprintf(err, err_size, "out of memory converting key hashes");
            goto done;
        }
        const char *params[] = {ids.data, hashes.data};
        res = PQexecParams(conn,
                           "UPDATE api_keys AS k SET value_hash = decode(v.hash, 'hex'), "
                           "value_hash_form = 'hmac-sha256' "
                           "FROM unnest($1::text[], $2::text[]) AS v(id, hash) "
                           "WHERE k.id = v.id AND k.value_hash_form = 'sha256' "
                           /* A row whose value another key (in the new
                            * form) has too stays as it is, rather than
                            * the unique index stopping every api's start. */
                           "AND NOT EXISTS (SELECT 1 FROM api_keys o "
                           "WHERE o.value_hash = decode(v.hash, 'hex'))",
                           2, NULL, params, NULL, NULL, 0);
        if (PQresultStatus(res) != PGRES_COMMAND_OK) {
            db_error(conn, res, "converting key hashes to HMAC", err, err_size);
            goto done;
        }
        *converted = strtol(PQcmdTuples(res), NULL, 10);
        *duplicates = PQntuples(rows) - *converted;
    }
    ok = db_exec(conn, "COMMIT", "committing the key hash conversion", err, err_size);
done:
    if (!ok && PQtransactionStatus(conn) != PQTRANS_IDLE) {
        PGresult *rollback = PQexec(conn, "ROLLBACK");
        PQclear(rollback);
        *converted = 0;
        *duplicates = 0;
    }
    PQclear(rows);
    PQclear(res);
    buf_free(&ids);
    buf_free(&hashes);
    return ok;
}
