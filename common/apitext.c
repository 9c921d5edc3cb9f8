#include "apitext.h"

#include <stdint.h>
#include <string.h>

#include "event.h"

static int hex_value(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

size_t apitext_unescape(char *s)
{
    char *w = s;
    const char *r = s;
    while (*r) {
        if (r[0] == '%') {
            int hi = hex_value(r[1]);
            int lo = hi >= 0 ? hex_value(r[2]) : -1;
            if (hi >= 0 && lo >= 0) {
                int byte = hi * 16 + lo;
                if (byte != 0 && byte != '/') {
                    *w++ = (char)byte;
                    r += 3;
                    continue;
                }
                /* Kept as the literal three characters. */
                *w++ = *r++;
                *w++ = *r++;
                *w++ = *r++;
                continue;
            }
        }
        *w++ = *r++;
    }
    *w = '\0';
    return (size_t)(w - s);
}

static bool unreserved(int c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
           c == '-' || c == '.' || c == '_' || c == '~';
}

bool apitext_normalize_path(const char *uri, size_t len, char *out, size_t out_size)
{
    static const char hex[] = "0123456789ABCDEF";
    size_t end = 0;
    while (end < len && uri[end] != '?' && uri[end] != '#' && uri[end] != '\0')
        end++;
    if (out_size < 2)
        return false;
    size_t w = 0;
    out[w++] = '/'; /* out always starts with '/'; each segment is "/<text>" */
    size_t i = 0;
    while (i < end) {
        while (i < end && uri[i] == '/')
            i++;
        if (i >= end)
            break;
        /* One segment, decoded into out after a '/' (unless out is "/"). */
        size_t seg_start = w;
        if (w > 1) {
            if (w + 1 > out_size - 1)
                return false;
            out[w++] = '/';
        }
        size_t text_start = w;
        while (i < end && uri[i] != '/') {
            char c = uri[i];
            if (c == '%' && i + 2 < end && hex_value(uri[i + 1]) >= 0 &&
                hex_value(uri[i + 2]) >= 0) {
                int byte = hex_value(uri[i + 1]) * 16 + hex_value(uri[i + 2]);
                if (unreserved(byte)) {
                    if (w + 1 > out_size - 1)
                        return false;
                    out[w++] = (char)byte;
                } else {
                    if (w + 3 > out_size - 1)
                        return false;
                    out[w++] = '%';
                    out[w++] = hex[byte >> 4];
                    out[w++] = hex[byte & 15];
                }
                i += 3;
            } else {
                if (w + 1 > out_size - 1)
                    return false;
                out[w++] = c;
                i++;
            }
        }
        size_t seg_len = w - text_start;
        if (seg_len == 1 && out[text_start] == '.') {
            w = seg_start; /* "." : nothing */
        } else if (seg_len == 2 && out[text_start] == '.' && out[text_start + 1] == '.') {
            /* "..": drop it and the segment before, never above the root. */
            w = seg_start;
            while (w > 1 && out[w - 1] != '/')
                w--;
            if (w > 1)
                w--; /* the '/' before the dropped segment */
        }
    }
    out[w] = '\0';
    return true;
}

void apitext_utf8_sanitize(char *s)
{
    size_t len = strlen(s);
    for (size_t i = 0; i < len;) {
        size_t n = event_utf8_sequence(s + i, len - i);
        if (n == 0)
            s[i++] = '?';
        else
            i += n;
    }
}

size_t apitext_utf8_prefix(const char *s, size_t max)
{
    size_t len = strnlen(s, max);
    if (len < max)
        return len;
    /* s has at least max bytes: back off over continuation bytes to the
     * start of the character at position max, if it is one. */
    if (((unsigned char)s[max] & 0xC0) != 0x80)
        return max; /* the next byte starts a character (or ends s) */
    size_t i = max;
    while (i > 0 && i + 3 > max && ((unsigned char)s[i] & 0xC0) == 0x80)
        i--;
    return ((unsigned char)s[i] & 0xC0) == 0xC0 ? i : max;
}
