#include "apitext.h"

#include <stdint.h>
#include <string.h>

#include "utf8.h"

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

static bool is_space(char c)
{
    return c == ' ' || c == '\t' || c == '\r' || c == '\n' || c == '\v' || c == '\f';
}

static bool is_alpha(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

/* Where the path of uri[start, end) begins: after "scheme://authority" when
 * the target is in absolute form (RFC 9112 3.2.2), else at start. */
static size_t skip_absolute_form(const char *uri, size_t start, size_t end)
{
    size_t i = start;
    if (i >= end || !is_alpha(uri[i]))
        return start;
    while (i < end && (is_alpha(uri[i]) || (uri[i] >= '0' && uri[i] <= '9') || uri[i] == '+' ||
                       uri[i] == '-' || uri[i] == '.'))
        i++;
    if (end - i < 3 || uri[i] != ':' || uri[i + 1] != '/' || uri[i + 2] != '/')
        return start;
    i += 3;
    while (i < end && uri[i] != '/' && uri[i] != '\\')
        i++;
    return i;
}

/* The byte at uri[*i], an escape decoded, advancing *i past it. */
static char next_decoded(const char *uri, size_t *i, size_t end)
{
    size_t at = *i;
    if (uri[at] == '%' && at + 2 < end && hex_value(uri[at + 1]) >= 0 &&
        hex_value(uri[at + 2]) >= 0) {
        *i = at + 3;
        return (char)(hex_value(uri[at + 1]) * 16 + hex_value(uri[at + 2]));
    }
    *i = at + 1;
    return uri[at];
}

/* Bytes written as themselves in a canonical path (upper-case letters never
 * reach this: they are folded first). */
static bool literal_in_path(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
           (c != '\0' && strchr("-._~!$&'()*+,=:@", c) != NULL);
}

/* Percent-encodes out[text, text + n) in place (it grows, so the copy runs
 * from the end). Returns the new length, or 0 when it would not leave room
 * for a NUL within out_size. */
static size_t encode_in_place(char *out, size_t text, size_t n, size_t out_size)
{
    static const char hex[] = "0123456789ABCDEF";
    size_t escaped = 0;
    for (size_t k = 0; k < n; k++)
        escaped += !literal_in_path(out[text + k]);
    size_t grown = n + 2 * escaped;
    if (text + grown + 1 > out_size)
        return 0;
    size_t w = text + grown;
    for (size_t k = n; k-- > 0;) {
        unsigned char c = (unsigned char)out[text + k];
        if (literal_in_path((char)c)) {
            out[--w] = (char)c;
        } else {
            out[--w] = hex[c & 15];
            out[--w] = hex[c >> 4];
            out[--w] = '%';
        }
    }
    return grown;
}

size_t apitext_canonical_path(const char *uri, size_t len, char *out, size_t out_size)
{
    size_t start = 0, end = 0;
    while (end < len && uri[end] != '?' && uri[end] != '#')
        end++;
    while (start < end && is_space(uri[start]))
        start++;
    while (end > start && is_space(uri[end - 1]))
        end--;
    if (out_size < 2)
        return 0;
    size_t w = 0; /* out[0, w) is "" or "/segment/segment..." */
    size_t i = skip_absolute_form(uri, start, end);
    while (i < end) {
        size_t segment_start = w;
        if (w + 1 >= out_size)
            return 0;
        out[w++] = '/';
        size_t text = w;
        bool in_matrix_parameter = false;
        while (i < end) {
            char c = next_decoded(uri, &i, end);
            if (c == '/' || c == '\\')
                break;
            in_matrix_parameter = in_matrix_parameter || c == ';';
            if (in_matrix_parameter)
                continue;
            if (w + 1 >= out_size)
                return 0;
            out[w++] = (c >= 'A' && c <= 'Z') ? (char)(c - 'A' + 'a') : c;
        }
        size_t n = w - text;
        while (n > 0 && is_space(out[text + n - 1]))
            n--;
        w = segment_start;
        if (n == 2 && out[text] == '.' && out[text + 1] == '.') {
            /* "..": the segment before goes too, never above the root. */
            while (w > 0 && out[w - 1] != '/')
                w--;
            if (w > 0)
                w--;
            continue;
        }
        while (n > 0 && (out[text + n - 1] == '.' || is_space(out[text + n - 1])))
            n--; /* also "." itself */
        if (n == 0)
            continue;
        size_t written = encode_in_place(out, text, n, out_size);
        if (written == 0)
            return 0;
        w = text + written;
    }
    if (w == 0)
        out[w++] = '/';
    out[w] = '\0';
    return w;
}

size_t apitext_canonical_method(const char *method, size_t len, char *out, size_t out_size)
{
    size_t start = 0, end = len;
    while (start < end && is_space(method[start]))
        start++;
    while (end > start && is_space(method[end - 1]))
        end--;
    size_t n = end - start;
    if (n == 0 || n + 1 > out_size)
        return 0;
    for (size_t k = 0; k < n; k++) {
        char c = method[start + k];
        out[k] = (c >= 'a' && c <= 'z') ? (char)(c - 'a' + 'A') : c;
    }
    out[n] = '\0';
    if (strcmp(out, "HEAD") == 0) {
        memcpy(out, "GET", 4); /* out holds 5 bytes: "GET" fits */
        n = 3;
    }
    return n;
}

void apitext_utf8_sanitize(char *s)
{
    size_t len = strlen(s);
    for (size_t i = 0; i < len;) {
        size_t n = utf8_sequence(s + i, len - i);
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
