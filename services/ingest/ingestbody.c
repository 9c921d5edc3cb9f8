/* The CloudEvents HTTP binding's body: content types and batch splitting
 * (ingestbody.h). */
#include "ingestbody.h"

#include <stdio.h>
#include <string.h>
#include <strings.h>

/* The media type's length: up to a ';' or whitespace before it. */
static size_t media_type_len(const char *content_type)
{
    size_t len = strcspn(content_type, "; \t");
    return len;
}

/* True when only optional whitespace, then nothing or a ';' and
 * parameters, follow the media type. */
static bool rest_is_parameters(const char *rest)
{
    rest += strspn(rest, " \t");
    return *rest == '\0' || *rest == ';';
}

ingestbody_mode ingestbody_mode_of(const char *content_type)
{
    static const char structured[] = "application/cloudevents+json";
    static const char batch[] = "application/cloudevents-batch+json";
    if (content_type == NULL)
        return INGESTBODY_UNSUPPORTED;
    content_type += strspn(content_type, " \t");
    size_t len = media_type_len(content_type);
    if (!rest_is_parameters(content_type + len))
        return INGESTBODY_UNSUPPORTED;
    if (len == sizeof structured - 1 && strncasecmp(content_type, structured, len) == 0)
        return INGESTBODY_STRUCTURED;
    if (len == sizeof batch - 1 && strncasecmp(content_type, batch, len) == 0)
        return INGESTBODY_BATCH;
    return INGESTBODY_UNSUPPORTED;
}

static bool is_json_space(char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

static size_t skip_space(const char *body, size_t len, size_t pos)
{
    while (pos < len && is_json_space(body[pos]))
        pos++;
    return pos;
}

/* Scans one element from `pos` to the ',' or ']' that ends it at the
 * array's level. Returns that delimiter's position, or len when the body
 * ends first. */
static size_t element_end(const char *body, size_t len, size_t pos)
{
    size_t depth = 0;
    bool in_string = false;
    for (; pos < len; pos++) {
        char c = body[pos];
        if (in_string) {
            if (c == '\\')
                pos++; /* the escaped character cannot end the string */
            else if (c == '"')
                in_string = false;
            continue;
        }
        if (c == '"') {
            in_string = true;
        } else if (c == '[' || c == '{') {
            depth++;
        } else if (c == ']' || c == '}') {
            if (depth > 0)
                depth--;
            else if (c == ']')
                return pos; /* the array's own end */
            /* a stray '}' at the array's level is the element's problem:
             * event_parse calls it invalid JSON */
        } else if (c == ',' && depth == 0) {
            return pos;
        }
    }
    return len;
}

ingestbody_result ingestbody_split_batch(const char *body, size_t len, ingestbody_span *spans,
                                         size_t max_spans, size_t *count, char *err,
                                         size_t err_size)
{
    size_t pos = skip_space(body, len, 0);
    if (pos == len || body[pos] != '[') {
        snprintf(err, err_size, "a batch is a JSON array of events");
        return INGESTBODY_NOT_ARRAY;
    }
    pos = skip_space(body, len, pos + 1);
    size_t found = 0;
    if (pos < len && body[pos] == ']') {
        pos++; /* an empty batch */
    } else {
        for (;;) {
            size_t start = skip_space(body, len, pos);
            size_t end = element_end(body, len, start);
            if (end == len) {
                snprintf(err, err_size, "the batch's array is not terminated");
                return INGESTBODY_MALFORMED;
            }
            size_t stop = end;
            while (stop > start && is_json_space(body[stop - 1]))
                stop--;
            if (stop == start) {
                snprintf(err, err_size, "element %zu of the batch is empty", found);
                return INGESTBODY_MALFORMED;
            }
            if (found == max_spans) {
                snprintf(err, err_size, "a batch holds at most %zu events", max_spans);
                return INGESTBODY_TOO_MANY;
            }
            spans[found++] = (ingestbody_span){start, stop - start};
            pos = end + 1;
            if (body[end] == ']')
                break;
        }
    }
    if (skip_space(body, len, pos) != len) {
        snprintf(err, err_size, "bytes follow the batch's array");
        return INGESTBODY_MALFORMED;
    }
    *count = found;
    return INGESTBODY_OK;
}
