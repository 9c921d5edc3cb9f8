/* A growable byte buffer with a hard maximum size (curl's dynbuf idea): no
 * input can grow memory past `max`. Appends that would pass it fail and
 * leave the buffer as it was. The contents are always NUL-terminated. */
#ifndef TALLY_BUF_H
#define TALLY_BUF_H

#include <stdbool.h>
#include <stddef.h>

typedef struct {
    char *data;   /* owned; NULL until the first append */
    size_t len;
    size_t cap;
    size_t max;   /* the most bytes len may reach */
} buf;

void buf_init(buf *b, size_t max);
void buf_free(buf *b);
/* Empties the buffer, keeping its memory. */
void buf_reset(buf *b);
bool buf_append(buf *b, const void *data, size_t len) __attribute__((warn_unused_result));
bool buf_append_str(buf *b, const char *text) __attribute__((warn_unused_result));
bool buf_appendf(buf *b, const char *fmt, ...)
    __attribute__((format(printf, 2, 3), warn_unused_result));

#endif
