/* A one-pass scanner for plain events: no tree, no allocation. */
#include "eventscan.h"

#include <string.h>

const char *const eventscan_top_names[TOP__COUNT] = {
    [TOP_SPECVERSION] = "specversion", [TOP_ID] = "id",           [TOP_SOURCE] = "source",
    [TOP_TYPE] = "type",               [TOP_SUBJECT] = "subject", [TOP_TIME] = "time",
    [TOP_DATA] = "data",
};

const char *const eventscan_data_names[DATA__COUNT] = {
    [DATA_UNITS] = "units",   [DATA_BYTES] = "bytes",       [DATA_STATUS] = "status",
    [DATA_METHOD] = "method", [DATA_ENDPOINT] = "endpoint",
};

/* Bounds beyond which the scanner gives up and leaves the input to jansson:
 * none is reached by a real event. */
#define MAX_DEPTH 16          /* nested objects and arrays (jansson allows 2048) */
#define MAX_MEMBERS 32        /* per object: the duplicate check compares each pair */
#define MAX_INTEGER_DIGITS 18 /* so any such integer fits an int64, as for strtoll */

typedef struct {
    const char *at;
    const char *end;
} scanner;

typedef struct {
    const char *text;
    size_t len;
} member_name;

/* The members of one object that are reported, and the one among them (if
 * any) whose object value has members reported in turn. */
typedef struct member_table {
    const char *const *names;
    int count;
    event_field *fields;
    int nested_member; /* -1 for none */
    const struct member_table *nested;
} member_table;

static bool scan_value(scanner *s, int depth, event_field *field, const member_table *inner);

/* JSON's whitespace, the four characters jansson skips. */
static void skip_space(scanner *s)
{
    while (s->at < s->end &&
           (*s->at == ' ' || *s->at == '\t' || *s->at == '\n' || *s->at == '\r'))
        s->at++;
}

static bool at_char(const scanner *s, char c)
{
    return s->at < s->end && *s->at == c;
}

/* A string of printable ASCII without escapes, from the opening quote at
 * s->at: its bytes are then its value. Control characters are invalid JSON;
 * escapes and other bytes are left to jansson (decoding and UTF-8). */
static bool scan_string(scanner *s, const char **text, size_t *len)
{
    const char *start = ++s->at;
    for (; s->at < s->end; s->at++) {
        unsigned char c = (unsigned char)*s->at;
        if (c == '"') {
            *text = start;
            *len = (size_t)(s->at - start);
            s->at++;
            return true;
        }
        if (c < 0x20 || c >= 0x80 || c == '\\')
            return false;
    }
    return false;
}

static bool is_digit(char c)
{
    return c >= '0' && c <= '9';
}

/* -?(0|[1-9][0-9]*) with at most MAX_INTEGER_DIGITS digits; a fraction or
 * an exponent (a real number for jansson) is left to jansson. */
static bool scan_integer(scanner *s, int64_t *value)
{
    bool negative = at_char(s, '-');
    if (negative)
        s->at++;
    const char *digits = s->at;
    int64_t magnitude = 0;
    for (; s->at < s->end && is_digit(*s->at); s->at++) {
        if (s->at - digits == MAX_INTEGER_DIGITS)
            return false;
        magnitude = magnitude * 10 + (*s->at - '0');
    }
    size_t count = (size_t)(s->at - digits);
    if (count == 0 || (count > 1 && digits[0] == '0'))
        return false;
    if (at_char(s, '.') || at_char(s, 'e') || at_char(s, 'E'))
        return false;
    *value = negative ? -magnitude : magnitude;
    return true;
}

/* `word` exactly; what follows it is judged by the caller, which accepts
 * only a delimiter (so "truex" and "null1" are left to jansson). */
static bool scan_literal(scanner *s, const char *word)
{
    size_t n = strlen(word);
    if ((size_t)(s->end - s->at) < n || memcmp(s->at, word, n) != 0)
        return false;
    s->at += n;
    return true;
}

static int member_index(const member_table *table, const member_name *name)
{
    if (table == NULL)
        return -1;
    for (int i = 0; i < table->count; i++) {
        if (name->len > 0 && table->names[i][0] == name->text[0] &&
            strlen(table->names[i]) == name->len &&
            memcmp(table->names[i], name->text, name->len) == 0)
            return i;
    }
    return -1;
}

static bool repeats(const member_name *seen, size_t count, const member_name *name)
{
    for (size_t i = 0; i < count; i++) {
        if (seen[i].len == name->len && memcmp(seen[i].text, name->text, name->len) == 0)
            return true;
    }
    return false;
}

/* An object from its '{' at s->at; the members named in `table` (may be
 * NULL) are described in table->fields. A repeated member name is refused
 * (jansson's JSON_REJECT_DUPLICATES), here by giving up. */
static bool scan_object(scanner *s, int depth, const member_table *table)
{
    if (depth > MAX_DEPTH)
        return false;
    s->at++;
    skip_space(s);
    if (at_char(s, '}')) {
        s->at++;
        return true;
    }
    member_name seen[MAX_MEMBERS];
    for (size_t count = 0;; count++) {
        skip_space(s);
        if (count == MAX_MEMBERS || !at_char(s, '"') ||
            !scan_string(s, &seen[count].text, &seen[count].len) ||
            repeats(seen, count, &seen[count]))
            return false;
        skip_space(s);
        if (!at_char(s, ':'))
            return false;
        s->at++;
        skip_space(s);
        int known = member_index(table, &seen[count]);
        event_field *field = known >= 0 ? &table->fields[known] : NULL;
        const member_table *inner =
            known >= 0 && known == table->nested_member ? table->nested : NULL;
        if (!scan_value(s, depth, field, inner))
            return false;
        skip_space(s);
        if (at_char(s, '}')) {
            s->at++;
            return true;
        }
        if (!at_char(s, ','))
            return false;
        s->at++;
    }
}

static bool scan_array(scanner *s, int depth)
{
    if (depth > MAX_DEPTH)
        return false;
    s->at++;
    skip_space(s);
    if (at_char(s, ']')) {
        s->at++;
        return true;
    }
    for (;;) {
        skip_space(s);
        if (!scan_value(s, depth, NULL, NULL))
            return false;
        skip_space(s);
        if (at_char(s, ']')) {
            s->at++;
            return true;
        }
        if (!at_char(s, ','))
            return false;
        s->at++;
    }
}

/* One value at s->at (no space before it), described in *field unless
 * field is NULL; an object value's members go to `inner` (may be NULL). */
static bool scan_value(scanner *s, int depth, event_field *field, const member_table *inner)
{
    event_field unused;
    if (field == NULL)
        field = &unused;
    memset(field, 0, sizeof *field);
    if (s->at >= s->end)
        return false;
    switch (*s->at) {
    case '"':
        field->kind = FIELD_STRING;
        return scan_string(s, &field->text, &field->len);
    case '{':
        field->kind = FIELD_OBJECT;
        return scan_object(s, depth + 1, inner);
    case '[':
        field->kind = FIELD_OTHER;
        return scan_array(s, depth + 1);
    case 't':
        field->kind = FIELD_OTHER;
        return scan_literal(s, "true");
    case 'f':
        field->kind = FIELD_OTHER;
        return scan_literal(s, "false");
    case 'n':
        field->kind = FIELD_ABSENT;
        return scan_literal(s, "null");
    default:
        field->kind = FIELD_INTEGER;
        return (*s->at == '-' || is_digit(*s->at)) && scan_integer(s, &field->integer);
    }
}

bool eventscan_fields(const char *payload, size_t len, event_fields *out)
{
    memset(out, 0, sizeof *out);
    const member_table data_table = {eventscan_data_names, DATA__COUNT, out->data, -1, NULL};
    const member_table top_table = {eventscan_top_names, TOP__COUNT, out->top, TOP_DATA,
                                    &data_table};
    scanner s = {payload, payload + len};
    skip_space(&s);
    if (!at_char(&s, '{') || !scan_object(&s, 1, &top_table))
        return false;
    skip_space(&s);
    return s.at == s.end;
}
