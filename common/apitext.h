/* Text handling for tally-api's requests and answers, kept pure (no
 * allocation, no globals) so that the unit tests drive it directly:
 * percent-decoding of the request line, the normalized form of a gateway's
 * X-Original-URI path, and making an error message valid UTF-8. */
#ifndef TALLY_APITEXT_H
#define TALLY_APITEXT_H

#include <stdbool.h>
#include <stddef.h>

/* libmicrohttpd's unescape step (MHD_OPTION_UNESCAPE_CALLBACK), in place:
 * decodes every %XX except %00 and %2F (either case), which stay the three
 * literal characters, so a decoded path never gains a NUL that cuts it nor
 * a '/' that adds a segment, and query values never hold a NUL. Invalid
 * escapes stay as they are. Returns the new length. */
size_t apitext_unescape(char *s);

/* The normalized path of a request target, into out (NUL-terminated):
 * the text up to '?' or '#'; %XX of unreserved characters (A-Z a-z 0-9
 * - . _ ~) decoded and the hex of other escapes upper-cased; repeated '/'
 * collapsed; "." and ".." segments resolved (never above the root); no
 * trailing '/' except for the root "/". A target that does not start with
 * '/' is read as if it did. `len` bytes of `uri` are read (it need not be
 * NUL-terminated). False when out is too small: len + 2 bytes always do. */
bool apitext_normalize_path(const char *uri, size_t len, char *out, size_t out_size);

/* Makes s valid UTF-8 in place: every byte that does not belong to a
 * well-formed sequence (including a sequence cut short) becomes '?'. */
void apitext_utf8_sanitize(char *s);

/* How many bytes of s (at most max) to keep so that no UTF-8 character is
 * cut in two: max itself unless that would split a multi-byte sequence. */
size_t apitext_utf8_prefix(const char *s, size_t max);

#endif
