/* UTF-8 well-formedness (RFC 3629): no overlong forms, no surrogates,
 * nothing above U+10FFFF. Events, API keys and values, throttle paths and
 * DLQ headers all take outside text that must be valid UTF-8, so the checks
 * live here, apart from any one of those users. */
#ifndef TALLY_UTF8_H
#define TALLY_UTF8_H

#include <stdbool.h>
#include <stddef.h>

/* True when the `len` bytes are well-formed UTF-8. */
bool utf8_valid(const char *text, size_t len);
/* The length (1 to 4) of the well-formed UTF-8 sequence that starts `text`,
 * which has `len` bytes left; 0 when it is malformed or cut short. */
size_t utf8_sequence(const char *text, size_t len);
/* The length of the longest well-formed UTF-8 prefix of the `len` bytes:
 * where to cut a text that snprintf may have split mid-character. */
size_t utf8_valid_prefix(const char *text, size_t len);

#endif
