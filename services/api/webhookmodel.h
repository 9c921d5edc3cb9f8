/* Webhook endpoints as they arrive in JSON bodies (POST and PATCH
 * /v1/webhooks): the URL, the event types (one table, below), the
 * description and the enabled flag, each validated; and the secret
 * rotation's overlap. Pure: no I/O, no logging; a refusal fills an
 * apimodel_error for the 400 answer. Where the deliveries may go (SSRF
 * rules) is decided when they are sent, not here. */
#ifndef TALLY_API_WEBHOOKMODEL_H
#define TALLY_API_WEBHOOKMODEL_H

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>

#include "apimodel.h"

#define WEBHOOK_URL_MAX 2048         /* webhook_endpoints.url CHECK */
#define WEBHOOK_EVENT_TYPES_MAX 16   /* webhook_endpoints.event_types CHECK */
#define WEBHOOK_ROTATION_DEFAULT_SECONDS 86400   /* the old secret signs 24 h more */
#define WEBHOOK_ROTATION_MAX_SECONDS (7 * 86400)

/* X(name, summary): every event type an endpoint may subscribe to. Adding
 * one is a row here (and whatever raises it). */
#define WEBHOOK_EVENT_TYPES(X)                                                        \
    X("quota.threshold_reached", "usage reached an alert threshold other than 100 %") \
    X("quota.exhausted", "usage reached 100 % of the quota")

typedef struct {
    char url[WEBHOOK_URL_MAX + 1];
    char description[APIMODEL_DESCRIPTION_MAX + 1];
    int event_type_count;
    const char *event_types[WEBHOOK_EVENT_TYPES_MAX]; /* static: rows of the table */
    bool enabled;
} webhook_endpoint;

/* Defaults: enabled, nothing else set. */
void webhookmodel_init(webhook_endpoint *endpoint);
/* Applies a body (borrowed). Creating: url and eventTypes are required.
 * Otherwise a merge patch: members present replace (description null
 * empties it). Unknown members, wrong types, a URL that is not absolute
 * http(s) without credentials, or an unknown or repeated event type are
 * refused. */
bool webhookmodel_apply(webhook_endpoint *endpoint, const json_t *body, bool creating,
                        apimodel_error *err) __attribute__((warn_unused_result));
/* The event types as PostgreSQL's text[] literal ({"a","b"}), and back;
 * parsing keeps only names of the table (false for anything else). */
#define WEBHOOK_EVENT_TYPES_TEXT_MAX (WEBHOOK_EVENT_TYPES_MAX * 70 + 3)
void webhookmodel_event_types_text(const webhook_endpoint *endpoint, char *out, size_t size);
bool webhookmodel_event_types_parse(const char *text, webhook_endpoint *endpoint);
/* The event type table's row named `name`, or NULL. */
const char *webhookmodel_event_type(const char *name);
/* True when `url` is an absolute http:// or https:// URL of at most
 * WEBHOOK_URL_MAX bytes with a host, no credentials, and no spaces or
 * control characters. */
bool webhookmodel_url_valid(const char *url, apimodel_error *err);
/* The rotate-secret body (borrowed; NULL or {} for the defaults):
 * {"expiresInSeconds": 0..WEBHOOK_ROTATION_MAX_SECONDS}, the time the
 * previous secret keeps signing. */
bool webhookmodel_rotation_parse(const json_t *body, int64_t *expires_in_seconds,
                                 apimodel_error *err) __attribute__((warn_unused_result));

#endif
