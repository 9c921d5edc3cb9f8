/* See webhookmodel.h. */
#include "webhookmodel.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "apitext.h"

static const char *const event_types[] = {
#define WEBHOOK_EVENT_TYPE_NAME(name, summary) name,
    WEBHOOK_EVENT_TYPES(WEBHOOK_EVENT_TYPE_NAME)
#undef WEBHOOK_EVENT_TYPE_NAME
};
#define EVENT_TYPE_COUNT (sizeof event_types / sizeof event_types[0])

void webhookmodel_init(webhook_endpoint *endpoint)
{
    memset(endpoint, 0, sizeof *endpoint);
    endpoint->enabled = true;
}

const char *webhookmodel_event_type(const char *name)
{
    for (size_t i = 0; i < EVENT_TYPE_COUNT; i++) {
        if (strcmp(event_types[i], name) == 0)
            return event_types[i];
    }
    return NULL;
}

/* The scheme's length ("http://" or "https://", any case), or 0. */
static size_t scheme_length(const char *url)
{
    if (strncasecmp(url, "http://", 7) == 0)
        return 7;
    if (strncasecmp(url, "https://", 8) == 0)
        return 8;
    return 0;
}

bool webhookmodel_url_valid(const char *url, apimodel_error *err)
{
    size_t len = strlen(url);
    if (len == 0 || len > WEBHOOK_URL_MAX)
        return apimodel_fail(err, "invalid_field", "url must be 1 to %d bytes long",
                             WEBHOOK_URL_MAX);
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)url[i];
        if (c <= 0x20 || c == 0x7f)
            return apimodel_fail(err, "invalid_field",
                                 "url contains a space or a control character");
    }
    size_t scheme = scheme_length(url);
    if (scheme == 0)
        return apimodel_fail(err, "invalid_field", "url must start with http:// or https://");
    const char *authority = url + scheme;
    size_t authority_len = strcspn(authority, "/?#");
    if (authority_len == 0)
        return apimodel_fail(err, "invalid_field", "url has no host");
    /* Credentials in the URL would be answered by every GET. */
    if (memchr(authority, '@', authority_len) != NULL)
        return apimodel_fail(err, "invalid_field",
                    "url must not carry credentials (user@host); the deliveries are signed");
    if (authority[0] == ':')
        return apimodel_fail(err, "invalid_field", "url has no host");
    return true;
}

static bool apply_event_types(webhook_endpoint *endpoint, const json_t *value,
                              apimodel_error *err)
{
    if (!json_is_array(value) || json_array_size(value) == 0 ||
        json_array_size(value) > WEBHOOK_EVENT_TYPES_MAX)
        return apimodel_fail(err, "invalid_field",
                             "eventTypes must be an array of 1 to %d event types",
                             WEBHOOK_EVENT_TYPES_MAX);
    webhook_endpoint next = *endpoint;
    next.event_type_count = 0;
    size_t i;
    json_t *member;
    json_array_foreach(value, i, member) {
        const char *known = json_is_string(member)
                                ? webhookmodel_event_type(json_string_value(member))
                                : NULL;
        if (known == NULL)
            return apimodel_fail(err, "invalid_field",
                        "eventTypes[%zu] is not a known event type (quota.threshold_reached, "
                        "quota.exhausted)",
                        i);
        for (int j = 0; j < next.event_type_count; j++) {
            if (next.event_types[j] == known)
                return apimodel_fail(err, "invalid_field", "eventTypes names %s twice", known);
        }
        next.event_types[next.event_type_count++] = known;
    }
    *endpoint = next;
    return true;
}

static bool apply_member(webhook_endpoint *endpoint, const char *name, const json_t *value,
                         apimodel_error *err)
{
    if (strcmp(name, "url") == 0) {
        char url[WEBHOOK_URL_MAX + 1];
        if (!apimodel_take_string(value, "url", 1, WEBHOOK_URL_MAX, false, url, err) ||
            !webhookmodel_url_valid(url, err))
            return false;
        memcpy(endpoint->url, url, strlen(url) + 1);
        return true;
    }
    if (strcmp(name, "eventTypes") == 0)
        return apply_event_types(endpoint, value, err);
    if (strcmp(name, "description") == 0)
        return apimodel_apply_description(value, endpoint->description, err);
    if (strcmp(name, "enabled") == 0) {
        if (!json_is_boolean(value))
            return apimodel_fail(err, "invalid_field", "enabled must be true or false");
        endpoint->enabled = json_is_true(value);
        return true;
    }
    if (strcmp(name, "secret") == 0)
        return apimodel_fail(err, "read_only_field",
                    "the secret is generated; POST /v1/webhooks/{id}/rotate-secret replaces it");
    if (strcmp(name, "id") == 0 || strcmp(name, "createdAt") == 0 ||
        strcmp(name, "updatedAt") == 0 || strcmp(name, "previousSecretExpiresAt") == 0)
        return apimodel_fail(err, "read_only_field", "%s is set by the server", name);
    return apimodel_fail(err, "unknown_field", "webhook endpoints have no member \"%.*s\"",
                (int)apitext_utf8_prefix(name, 60), name);
}

bool webhookmodel_apply(webhook_endpoint *endpoint, const json_t *body, bool creating,
                        apimodel_error *err)
{
    if (!json_is_object(body))
        return apimodel_fail(err, "invalid_body", "the body must be a JSON object");
    const char *name;
    json_t *value;
    json_object_foreach((json_t *)body, name, value) {
        if (!apply_member(endpoint, name, value, err))
            return false;
    }
    if (creating && json_object_get(body, "url") == NULL)
        return apimodel_fail(err, "missing_field", "url is required");
    if (creating && json_object_get(body, "eventTypes") == NULL)
        return apimodel_fail(err, "missing_field",
                    "eventTypes is required (quota.threshold_reached, quota.exhausted)");
    return true;
}

void webhookmodel_event_types_text(const webhook_endpoint *endpoint, char *out, size_t size)
{
    size_t len = (size_t)snprintf(out, size, "{");
    for (int i = 0; i < endpoint->event_type_count && len < size; i++)
        len += (size_t)snprintf(out + len, size - len, "%s\"%s\"", i > 0 ? "," : "",
                                endpoint->event_types[i]);
    if (len < size)
        snprintf(out + len, size - len, "}");
}

bool webhookmodel_event_types_parse(const char *text, webhook_endpoint *endpoint)
{
    /* As PostgreSQL writes a text[] of these names: {a,b} (no quoting is
     * needed for names of letters, dots and underscores). */
    int count = 0;
    if (text == NULL || *text++ != '{')
        return false;
    while (*text != '}' && *text != '\0') {
        if (count > 0 && *text++ != ',')
            return false;
        size_t len = strcspn(text, ",}");
        char name[80];
        if (len == 0 || len >= sizeof name || count == WEBHOOK_EVENT_TYPES_MAX)
            return false;
        memcpy(name, text, len);
        name[len] = '\0';
        const char *known = webhookmodel_event_type(name);
        if (known == NULL)
            return false;
        endpoint->event_types[count++] = known;
        text += len;
    }
    if (text[0] != '}' || text[1] != '\0')
        return false;
    endpoint->event_type_count = count;
    return true;
}

bool webhookmodel_rotation_parse(const json_t *body, int64_t *expires_in_seconds,
                                 apimodel_error *err)
{
    *expires_in_seconds = WEBHOOK_ROTATION_DEFAULT_SECONDS;
    if (body == NULL)
        return true;
    if (!json_is_object(body))
        return apimodel_fail(err, "invalid_body", "the body must be a JSON object");
    const char *name;
    json_t *value;
    json_object_foreach((json_t *)body, name, value) {
        if (strcmp(name, "expiresInSeconds") != 0)
            return apimodel_fail(err, "unknown_field", "rotate-secret takes only expiresInSeconds");
        if (!json_is_integer(value) || json_integer_value(value) < 0 ||
            json_integer_value(value) > WEBHOOK_ROTATION_MAX_SECONDS)
            return apimodel_fail(err, "invalid_field",
                        "expiresInSeconds must be a whole number from 0 to %d",
                        WEBHOOK_ROTATION_MAX_SECONDS);
        *expires_in_seconds = json_integer_value(value);
    }
    return true;
}
