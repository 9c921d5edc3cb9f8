/* Text handling for tally-api's requests and answers, kept pure (no
 * allocation, no globals) so that the unit tests drive it directly:
 * percent-decoding of the request line, the canonical form of a gateway's
 * X-Original-URI path and method, and making an error message valid UTF-8. */
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

/* The canonical form of a gateway's request target (X-Original-URI), the
 * one form per-method throttles are keyed and matched by, so that every
 * spelling a router sends to the same resource meets the same throttle.
 * Applied in this order:
 *   1. leading and trailing whitespace is dropped, then everything from the
 *      first '?' or '#' (query and fragment);
 *   2. the absolute form "scheme://authority/path" is reduced to its path;
 *   3. %XX escapes are decoded, once (so %2F is a '/' and %25 a '%');
 *      an escape that is not two hex digits is a literal '%';
 *   4. '\' separates segments as '/' does; empty segments are dropped
 *      (repeated and trailing '/');
 *   5. in each segment: ASCII letters folded to lower case (/ITEMS is
 *      /items), a matrix parameter (';' and what follows) dropped, trailing
 *      whitespace dropped; then "." is dropped and ".." drops the segment
 *      before it (never above the root); then trailing dots and
 *      whitespace are dropped ("items." is "items", "..." nothing) and a
 *      segment left empty is dropped;
 *   6. the result is "/" and the segments joined by '/', each byte that is
 *      not unreserved (a-z 0-9 - . _ ~), a sub-delimiter (!$&'()*+,=) or
 *      ':' '@' written as %XX (upper-case hex).
 * This folds together more than some routers do (case, trailing dots):
 * a throttle then covers a little more, never less. `len` bytes of `uri`
 * are read (NUL is a byte like another). Returns the length written into
 * out (NUL-terminated), at least 1 ("/"); 0 when out is too small:
 * APITEXT_CANONICAL_SIZE(len) bytes always do. */
#define APITEXT_CANONICAL_SIZE(len) (3 * (size_t)(len) + 2)
size_t apitext_canonical_path(const char *uri, size_t len, char *out, size_t out_size);

/* The canonical form of a request method: ASCII letters upper-cased,
 * surrounding whitespace dropped, and HEAD counted as GET (a router
 * answers HEAD with the GET handler). Returns the length written into out
 * (NUL-terminated); 0 when the method is empty or out is too small
 * (len + 1 bytes always do). */
size_t apitext_canonical_method(const char *method, size_t len, char *out, size_t out_size);

/* Makes s valid UTF-8 in place: every byte that does not belong to a
 * well-formed sequence (including a sequence cut short) becomes '?'. */
void apitext_utf8_sanitize(char *s);

/* How many bytes of s (at most max) to keep so that no UTF-8 character is
 * cut in two: max itself unless that would split a multi-byte sequence. */
size_t apitext_utf8_prefix(const char *s, size_t max);

#endif
