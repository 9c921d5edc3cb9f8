/* AWS Signature Version 4 verification, pure (sigv4.h). */
#include "sigv4.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "digest.h"
#include "timeutil.h"

#define SCOPE_TERMINATOR "aws4_request"
/* A query holds at most this many arguments to sort (the api refuses more
 * than 32 before a request is routed). */
#define QUERY_ARGUMENTS_MAX 64
#define QUERY_PART_MAX 4096

static void set_err(char *err, size_t err_size, const char *message)
{
    snprintf(err, err_size, "%s", message);
}

/* Copies [start, start + len) into out (size bytes); false when it does not fit. */
static bool copy_part(const char *start, size_t len, char *out, size_t size)
{
    if (len + 1 > size)
        return false;
    memcpy(out, start, len);
    out[len] = '\0';
    return true;
}

static bool is_lower_hex(const char *text, size_t len)
{
    for (size_t i = 0; i < len; i++) {
        char c = text[i];
        if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f')))
            return false;
    }
    return true;
}

/* "akid/yyyymmdd/region/service/aws4_request" into out. */
static bool parse_credential(const char *text, size_t len, sigv4_authorization *out)
{
    const char *parts[5];
    size_t lens[5];
    size_t count = 0;
    const char *start = text, *end = text + len;
    while (count < 5) {
        const char *slash = memchr(start, '/', (size_t)(end - start));
        const char *stop = slash ? slash : end;
        parts[count] = start;
        lens[count] = (size_t)(stop - start);
        count++;
        if (slash == NULL)
            break;
        start = slash + 1;
    }
    if (count != 5 || parts[4] + lens[4] != end || lens[0] == 0 || lens[1] != 8 ||
        lens[2] == 0 || lens[3] == 0 || lens[4] != strlen(SCOPE_TERMINATOR) ||
        memcmp(parts[4], SCOPE_TERMINATOR, lens[4]) != 0)
        return false;
    for (size_t i = 0; i < 8; i++) {
        if (parts[1][i] < '0' || parts[1][i] > '9')
            return false;
    }
    return copy_part(parts[0], lens[0], out->access_key, sizeof out->access_key) &&
           copy_part(parts[1], lens[1], out->date, sizeof out->date) &&
           copy_part(parts[2], lens[2], out->region, sizeof out->region) &&
           copy_part(parts[3], lens[3], out->service, sizeof out->service);
}

bool sigv4_header_signed(const char *signed_headers, const char *name)
{
    size_t n = strlen(name);
    for (const char *p = signed_headers; *p != '\0';) {
        size_t len = strcspn(p, ";");
        if (len == n && strncmp(p, name, n) == 0)
            return true;
        p += len;
        if (*p == ';')
            p++;
    }
    return false;
}

/* "a;b;c": lower case, sorted, unique, and with host among them. */
static bool signed_headers_valid(const char *list)
{
    const char *previous = NULL;
    size_t previous_len = 0;
    bool has_host = false;
    for (const char *p = list;;) {
        size_t len = strcspn(p, ";");
        if (len == 0)
            return false;
        for (size_t i = 0; i < len; i++) {
            char c = p[i];
            bool ok = (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '_';
            if (!ok)
                return false;
        }
        if (previous != NULL) {
            size_t shorter = len < previous_len ? len : previous_len;
            int order = memcmp(previous, p, shorter);
            if (order > 0 || (order == 0 && previous_len >= len))
                return false;
        }
        has_host = has_host || (len == 4 && memcmp(p, "host", 4) == 0);
        previous = p;
        previous_len = len;
        if (p[len] == '\0')
            break;
        p += len + 1;
    }
    return has_host;
}

bool sigv4_parse_authorization(const char *header, sigv4_authorization *out, char *err,
                               size_t err_size)
{
    memset(out, 0, sizeof *out);
    size_t algorithm_len = strlen(SIGV4_ALGORITHM);
    if (header == NULL || strncmp(header, SIGV4_ALGORITHM, algorithm_len) != 0 ||
        header[algorithm_len] != ' ') {
        set_err(err, err_size, "Authorization header requires the AWS4-HMAC-SHA256 algorithm");
        return false;
    }
    bool have_credential = false, have_headers = false, have_signature = false;
    const char *p = header + algorithm_len;
    while (*p != '\0') {
        while (*p == ' ' || *p == ',')
            p++;
        if (*p == '\0')
            break;
        size_t len = strcspn(p, ",");
        while (len > 0 && p[len - 1] == ' ')
            len--;
        const char *eq = memchr(p, '=', len);
        if (eq == NULL) {
            set_err(err, err_size, "Authorization header has a part that is not name=value");
            return false;
        }
        size_t name_len = (size_t)(eq - p), value_len = len - name_len - 1;
        const char *value = eq + 1;
        bool ok = true;
        if (name_len == 10 && memcmp(p, "Credential", 10) == 0) {
            ok = !have_credential && parse_credential(value, value_len, out);
            have_credential = true;
        } else if (name_len == 13 && memcmp(p, "SignedHeaders", 13) == 0) {
            ok = !have_headers &&
                 copy_part(value, value_len, out->signed_headers, sizeof out->signed_headers) &&
                 signed_headers_valid(out->signed_headers);
            have_headers = true;
        } else if (name_len == 9 && memcmp(p, "Signature", 9) == 0) {
            ok = !have_signature && value_len == SIGV4_SIGNATURE_HEX &&
                 is_lower_hex(value, value_len) &&
                 copy_part(value, value_len, out->signature, sizeof out->signature);
            have_signature = true;
        } else {
            ok = false;
        }
        if (!ok) {
            snprintf(err, err_size, "Authorization header has a malformed or repeated %.*s",
                     (int)(name_len > 20 ? 20 : name_len), p);
            return false;
        }
        p += strcspn(p, ",");
    }
    if (!have_credential || !have_headers || !have_signature) {
        snprintf(err, err_size,
                 "Authorization header requires 'Credential', 'SignedHeaders' and 'Signature' "
                 "parameters (missing %s)",
                 !have_credential ? "Credential" : !have_headers ? "SignedHeaders" : "Signature");
        return false;
    }
    return true;
}

/* Reads `digits` decimal digits at text into *out. */
static bool read_digits(const char *text, int digits, int *out)
{
    int value = 0;
    for (int i = 0; i < digits; i++) {
        if (text[i] < '0' || text[i] > '9')
            return false;
        value = value * 10 + (text[i] - '0');
    }
    *out = value;
    return true;
}

bool sigv4_parse_amz_date(const char *text, int64_t *out)
{
    if (text == NULL || strlen(text) != SIGV4_AMZ_DATE_LEN || text[8] != 'T' || text[15] != 'Z')
        return false;
    civil_time ct;
    memset(&ct, 0, sizeof ct);
    int year, month, day, hour, minute, second;
    if (!read_digits(text, 4, &year) || !read_digits(text + 4, 2, &month) ||
        !read_digits(text + 6, 2, &day) || !read_digits(text + 9, 2, &hour) ||
        !read_digits(text + 11, 2, &minute) || !read_digits(text + 13, 2, &second))
        return false;
    if (month < 1 || month > 12 || day < 1 || day > time_days_in_month(year, month) ||
        hour > 23 || minute > 59 || second > 59)
        return false;
    ct.year = year;
    ct.month = month;
    ct.day = day;
    ct.hour = hour;
    ct.minute = minute;
    ct.second = second;
    *out = time_from_civil(&ct);
    return true;
}

static bool is_unreserved(unsigned char c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
           c == '-' || c == '_' || c == '.' || c == '~';
}

/* Appends `len` bytes of text, each byte that is not unreserved (nor '/'
 * when keep_slash) as %XX in upper-case hex. */
static bool append_encoded(buf *out, const char *text, size_t len, bool keep_slash)
{
    static const char hex[] = "0123456789ABCDEF";
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)text[i];
        bool ok = is_unreserved(c) || (keep_slash && c == '/')
                      ? buf_append(out, &text[i], 1)
                      : buf_append(out, (char[]){'%', hex[c >> 4], hex[c & 15]}, 3);
        if (!ok)
            return false;
    }
    return true;
}

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

/* Percent-decodes len bytes of text into out (at least len + 1 bytes);
 * '+' stays a '+', as AWS's signers encode a space as %20. Returns the
 * decoded length. */
static size_t percent_decode(const char *text, size_t len, char *out)
{
    size_t n = 0;
    for (size_t i = 0; i < len; i++) {
        int high, low;
        if (text[i] == '%' && i + 2 < len && (high = hex_value(text[i + 1])) >= 0 &&
            (low = hex_value(text[i + 2])) >= 0) {
            out[n++] = (char)(high * 16 + low);
            i += 2;
        } else {
            out[n++] = text[i];
        }
    }
    out[n] = '\0';
    return n;
}

/* One query argument, encoded canonically, for sorting: offsets into a
 * storage buffer while it grows, then pointers into it. */
typedef struct {
    size_t name_at, value_at;
    const char *name, *value;
} query_argument;

static int compare_arguments(const void *a, const void *b)
{
    const query_argument *x = a, *y = b;
    int order = strcmp(x->name, y->name);
    return order != 0 ? order : strcmp(x->value, y->value);
}

/* Decodes len bytes of text, then appends them strictly encoded and a NUL
 * to storage; *at is where they start. */
static bool canonical_part(const char *text, size_t len, buf *storage, size_t *at)
{
    char decoded[QUERY_PART_MAX + 1];
    if (len > QUERY_PART_MAX)
        return false;
    size_t decoded_len = percent_decode(text, len, decoded);
    *at = storage->len;
    return append_encoded(storage, decoded, decoded_len, false) && buf_append(storage, "", 1);
}

static bool append_canonical_query(const char *query, buf *out)
{
    if (query == NULL || query[0] == '\0')
        return true;
    query_argument arguments[QUERY_ARGUMENTS_MAX];
    size_t count = 0;
    buf storage;
    buf_init(&storage, 3 * strlen(query) + 2 * QUERY_ARGUMENTS_MAX + 16);
    bool ok = true;
    for (const char *p = query; ok;) {
        size_t len = strcspn(p, "&");
        if (len > 0) {
            const char *eq = memchr(p, '=', len);
            size_t name_len = eq ? (size_t)(eq - p) : len;
            query_argument *argument = &arguments[count];
            ok = count < QUERY_ARGUMENTS_MAX &&
                 canonical_part(p, name_len, &storage, &argument->name_at) &&
                 canonical_part(eq ? eq + 1 : p + len, eq ? len - name_len - 1 : 0, &storage,
                                &argument->value_at);
            count += ok;
        }
        if (p[len] == '\0')
            break;
        p += len + 1;
    }
    for (size_t i = 0; ok && i < count; i++) {
        arguments[i].name = storage.data + arguments[i].name_at;
        arguments[i].value = storage.data + arguments[i].value_at;
    }
    if (ok)
        qsort(arguments, count, sizeof arguments[0], compare_arguments);
    for (size_t i = 0; ok && i < count; i++) {
        ok = (i == 0 || buf_append(out, "&", 1)) && buf_append_str(out, arguments[i].name) &&
             buf_append(out, "=", 1) && buf_append_str(out, arguments[i].value);
    }
    buf_free(&storage);
    return ok;
}

/* Appends a header value trimmed, each inner run of spaces or tabs as one space. */
static bool append_trimmed(buf *out, const char *value, size_t len)
{
    size_t start = 0, end = len;
    while (start < end && (value[start] == ' ' || value[start] == '\t'))
        start++;
    while (end > start && (value[end - 1] == ' ' || value[end - 1] == '\t'))
        end--;
    bool in_space = false;
    for (size_t i = start; i < end; i++) {
        bool space = value[i] == ' ' || value[i] == '\t';
        if (space && in_space)
            continue;
        in_space = space;
        if (!buf_append(out, space ? " " : &value[i], 1))
            return false;
    }
    return true;
}

static bool append_canonical_headers(const char *signed_headers, sigv4_header_fn header,
                                     void *ctx, buf *out, char *err, size_t err_size)
{
    char name[SIGV4_SIGNED_HEADERS_MAX + 1];
    buf value;
    buf_init(&value, 16384);
    bool ok = true;
    for (const char *p = signed_headers; ok && *p != '\0';) {
        size_t len = strcspn(p, ";");
        memcpy(name, p, len);
        name[len] = '\0';
        buf_reset(&value);
        if (!header(ctx, name, &value)) {
            snprintf(err, err_size, "a signed header is missing from the request: %.64s", name);
            ok = false;
            break;
        }
        ok = buf_append(out, name, len) && buf_append(out, ":", 1) &&
             append_trimmed(out, value.data ? value.data : "", value.len) &&
             buf_append(out, "\n", 1);
        p += len + (p[len] == ';');
    }
    buf_free(&value);
    if (!ok && err[0] == '\0')
        set_err(err, err_size, "the request is too large to sign");
    return ok;
}

bool sigv4_canonical_request(const char *method, const char *path, const char *query,
                             const char *signed_headers, sigv4_header_fn header, void *ctx,
                             const char *payload_hash_hex, buf *out, char *err, size_t err_size)
{
    buf_reset(out);
    err[0] = '\0';
    bool ok = buf_append_str(out, method) && buf_append(out, "\n", 1) &&
              append_encoded(out, path, strlen(path), true) && buf_append(out, "\n", 1);
    if (ok && !append_canonical_query(query, out)) {
        set_err(err, err_size, "the query string cannot be put in canonical form");
        return false;
    }
    ok = ok && buf_append(out, "\n", 1) &&
         append_canonical_headers(signed_headers, header, ctx, out, err, err_size) &&
         buf_append(out, "\n", 1) && buf_append_str(out, signed_headers) &&
         buf_append(out, "\n", 1) && buf_append_str(out, payload_hash_hex);
    if (!ok && err[0] == '\0')
        set_err(err, err_size, "the request is too large to sign");
    return ok;
}

bool sigv4_string_to_sign(const char *amz_date, const sigv4_authorization *auth,
                          const char *canonical_request, size_t canonical_len, buf *out)
{
    uint8_t hash[DIGEST_SHA256_LEN];
    char hex[2 * DIGEST_SHA256_LEN + 1];
    digest_sha256(canonical_request, canonical_len, hash);
    digest_to_hex(hash, sizeof hash, hex);
    buf_reset(out);
    return buf_appendf(out, "%s\n%s\n%s/%s/%s/%s\n%s", SIGV4_ALGORITHM, amz_date, auth->date,
                       auth->region, auth->service, SCOPE_TERMINATOR, hex);
}

void sigv4_signing_key(const char *secret, const char *date, const char *region,
                       const char *service, uint8_t out[32])
{
    size_t secret_len = strlen(secret);
    char first[4 + 1024];
    uint8_t k_date[32], k_region[32], k_service[32];
    if (secret_len > sizeof first - 4)
        secret_len = sizeof first - 4; /* configured secrets are far shorter (aws.c) */
    memcpy(first, "AWS4", 4);
    memcpy(first + 4, secret, secret_len);
    digest_hmac_sha256(first, 4 + secret_len, date, strlen(date), k_date);
    digest_hmac_sha256(k_date, 32, region, strlen(region), k_region);
    digest_hmac_sha256(k_region, 32, service, strlen(service), k_service);
    digest_hmac_sha256(k_service, 32, SCOPE_TERMINATOR, strlen(SCOPE_TERMINATOR), out);
    /* The secret's copy is not left on the stack. */
    volatile char *wipe = first;
    for (size_t i = 0; i < sizeof first; i++)
        wipe[i] = 0;
}

void sigv4_signature_hex(const uint8_t signing_key[32], const char *string_to_sign, size_t len,
                         char out[SIGV4_SIGNATURE_HEX + 1])
{
    uint8_t mac[32];
    digest_hmac_sha256(signing_key, 32, string_to_sign, len, mac);
    digest_to_hex(mac, sizeof mac, out);
}

bool sigv4_signature_equal(const char *a, const char *b)
{
    unsigned char diff = 0;
    for (size_t i = 0; i < SIGV4_SIGNATURE_HEX; i++)
        diff |= (unsigned char)(a[i] ^ b[i]);
    return diff == 0;
}
