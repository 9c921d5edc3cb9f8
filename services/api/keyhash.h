/* How tally-api stores key secrets: value_hash = HMAC-SHA-256(server
 * secret, SHA-256(value)), so that a copy of the database alone does not
 * let anyone test guesses of a key's value (an unsalted SHA-256 did). The
 * inner SHA-256 lets a row stored in the older form (value_hash =
 * SHA-256(value), api_keys.value_hash_form 'sha256', migration 005) be
 * converted without its value: the api converts every such row when it
 * starts, and until then (a row written by hand or by an older seeding
 * script) reads it in memory the same way. The secret comes from
 * TALLY_KEY_HMAC_SECRET (or the file TALLY_KEY_HMAC_SECRET_FILE names,
 * config.h); it is never logged. Changing it makes every key unknown: it is not rotated. */
#ifndef TALLY_API_KEYHASH_H
#define TALLY_API_KEYHASH_H

#include <libpq-fe.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "api.h"

#define KEYHASH_SECRET_MIN 32   /* bytes: 256 bits written as text */
#define KEYHASH_SECRET_MAX 1024
#define KEYHASH_LEN 32

/* Keeps the secret's HMAC schedule (the text is borrowed; from the settings, where
 * TALLY_KEY_HMAC_SECRET_FILE may name a file holding it). False with err
 * (which never quotes it) when it is shorter than KEYHASH_SECRET_MIN or
 * longer than KEYHASH_SECRET_MAX bytes. */
bool keyhash_init(const char *secret, char *err, size_t err_size);
/* The stored form of a key value. */
void keyhash_of_value(const char *value, size_t len, uint8_t out[KEYHASH_LEN]);
/* The stored form of a row still holding SHA-256(value). */
void keyhash_of_legacy(const uint8_t sha256[KEYHASH_LEN], uint8_t out[KEYHASH_LEN]);
/* The stored form of the request's x-api-key into `stored`, and when
 * `legacy` is not NULL its SHA-256 (to find a row not yet converted).
 * False after replying 401 when the header is missing, empty or longer
 * than any stored value. */
bool keyhash_from_request(api_request *req, uint8_t stored[KEYHASH_LEN],
                          uint8_t legacy[KEYHASH_LEN]);
/* Converts every row still in the SHA-256 form, in one transaction on
 * `conn` (borrowed): safe when two apis start at once (rows are locked,
 * and only rows still in the old form change) and when run again (nothing
 * is left to do). *converted is the count this call changed;
 * *duplicates the rows left in the old form because a key in the new form
 * already has their value (two keys, one secret: only written by hand).
 * False with err when the database refuses. */
bool keyhash_convert_legacy(PGconn *conn, long *converted, long *duplicates, char *err,
                            size_t err_size);

#endif
