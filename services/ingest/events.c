/* POST /v1/events: the CloudEvents HTTP binding in front of the events
 * topic (docs/CONTRACT.md §3.7). A request is checked in this order, each
 * refusal before the body is read where it can be: route (404, 405),
 * ingest token (401), Content-Type (415), announced size (413), Kafka known
 * unreachable (503); then the body: its size (413), a batch's shape (400)
 * and count (413), each event by event_parse, the collector's own parser.
 * The accepted events are produced, keyed by subject, and the answer waits
 * for the broker's acknowledgement of every one: 202 only then; 503 with
 * Retry-After when any was not acknowledged or could not be queued (the
 * client re-sends the whole request; the collector counts a (source, id)
 * once). */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "ingest.h"
#include "ingestbody.h"
#include "log.h"
#include "timeutil.h"

#define EVENTS_PATH "/v1/events"
#define HEALTH_PATH "/healthz"

struct ingest_request {
    bool answered;   /* refused at the headers: the body is skipped */
    bool too_large;  /* the body passed max_body_bytes */
    buf body;
};

/* What became of one event of the request. */
typedef struct {
    event_error code;
    char message[200];                 /* the refusal's reason, one line */
    char id[EVENT_MAX_ID_LEN + 1];     /* an accepted event's id */
} event_outcome;

static const unsigned statuses[] = {
#define INGEST_STATUS_VALUE(code) code,
    INGEST_STATUSES(INGEST_STATUS_VALUE)
#undef INGEST_STATUS_VALUE
};

int events_status_index(unsigned status)
{
    for (int i = 0; i < INGEST_STATUS_COUNT; i++) {
        if (statuses[i] == status)
            return i;
    }
    return -1;
}

/* Sends `body` (stolen; NULL for none) as JSON with `status`. */
static enum MHD_Result send_json(ingest_context *ctx, struct MHD_Connection *conn,
                                 unsigned status, json_t *body, const char *extra_header,
                                 const char *extra_value)
{
    char *text = body ? json_dumps(body, JSON_COMPACT) : NULL;
    json_decref(body);
    if (body != NULL && text == NULL) {
        status = 500;
        text = strdup("{\"error\":{\"code\":\"internal\",\"message\":\"the answer could not be "
                      "built\"}}");
    }
    int index = events_status_index(status);
    if (index >= 0)
        metrics_add(ctx->m.requests[index], 1);
    struct MHD_Response *response = MHD_create_response_from_buffer(
        text ? strlen(text) : 0, text ? text : (void *)"",
        text ? MHD_RESPMEM_MUST_FREE : MHD_RESPMEM_PERSISTENT);
    if (response == NULL) {
        free(text);
        return MHD_NO;
    }
    if (text != NULL)
        MHD_add_response_header(response, MHD_HTTP_HEADER_CONTENT_TYPE, "application/json");
    if (extra_header != NULL)
        MHD_add_response_header(response, extra_header, extra_value);
    enum MHD_Result ret = MHD_queue_response(conn, status, response);
    MHD_destroy_response(response);
    return ret;
}

static enum MHD_Result send_error(ingest_context *ctx, struct MHD_Connection *conn,
                                  unsigned status, const char *code, const char *message,
                                  const char *extra_header, const char *extra_value)
{
    json_t *body = json_pack("{s:{s:s,s:s}}", "error", "code", code, "message", message);
    return send_json(ctx, conn, status, body, extra_header, extra_value);
}

static enum MHD_Result send_unavailable(ingest_context *ctx, struct MHD_Connection *conn,
                                        const char *message)
{
    char retry[16];
    snprintf(retry, sizeof retry, "%d", INGEST_RETRY_AFTER_S);
    return send_error(ctx, conn, 503, "kafka_unavailable", message, MHD_HTTP_HEADER_RETRY_AFTER,
                      retry);
}

static bool equal_constant_time(const uint8_t *a, const uint8_t *b, size_t len)
{
    volatile uint8_t diff = 0;
    for (size_t i = 0; i < len; i++)
        diff |= (uint8_t)(a[i] ^ b[i]);
    return diff == 0;
}

/* The ingest token, compared as SHA-256 digests in constant time (neither
 * its content nor its length leaks through timing). */
static bool token_valid(const ingest_context *ctx, struct MHD_Connection *conn)
{
    const char *header =
        MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_AUTHORIZATION);
    static const char scheme[] = "Bearer ";
    if (header == NULL || strncasecmp(header, scheme, sizeof scheme - 1) != 0)
        return false;
    const char *token = header + sizeof scheme - 1;
    uint8_t digest[DIGEST_SHA256_LEN];
    digest_sha256(token, strlen(token), digest);
    return equal_constant_time(digest, ctx->token_digest, sizeof digest);
}

/* The refusals due before the body is read; MHD_YES/MHD_NO after queueing
 * one, -1 to go on reading the body. */
static int refuse_at_headers(ingest_context *ctx, struct MHD_Connection *conn, const char *url,
                             const char *method)
{
    if (strcmp(url, HEALTH_PATH) == 0 &&
        (strcmp(method, "GET") == 0 || strcmp(method, "HEAD") == 0))
        return send_json(ctx, conn, 200, json_pack("{s:s}", "status", "ok"), NULL, NULL);
    if (strcmp(url, EVENTS_PATH) != 0)
        return send_error(ctx, conn, 404, "not_found", "tally-ingest serves POST /v1/events",
                          NULL, NULL);
    if (strcmp(method, "POST") != 0)
        return send_error(ctx, conn, 405, "method_not_allowed", "/v1/events takes POST only",
                          "Allow", "POST");
    if (!token_valid(ctx, conn))
        return send_error(ctx, conn, 401, "unauthorized",
                          "POST /v1/events needs Authorization: Bearer <ingest token>",
                          "WWW-Authenticate", "Bearer realm=\"tally-ingest\"");
    const char *type =
        MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_TYPE);
    if (ingestbody_mode_of(type) == INGESTBODY_UNSUPPORTED)
        return send_error(ctx, conn, 415, "unsupported_media_type",
                          "send application/cloudevents+json (one event) or "
                          "application/cloudevents-batch+json (a JSON array of events)",
                          NULL, NULL);
    const char *length =
        MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
    if (length != NULL && strtoull(length, NULL, 10) > ctx->max_body_bytes) {
        char message[120];
        snprintf(message, sizeof message, "request bodies are limited to %zu bytes",
                 ctx->max_body_bytes);
        return send_error(ctx, conn, 413, "body_too_large", message, NULL, NULL);
    }
    if (!producer_reachable(ctx->kafka))
        return send_unavailable(ctx, conn, "Kafka is unreachable; nothing was accepted");
    return -1;
}

/* Validates each span with event_parse and queues the accepted ones.
 * Returns false when one could not be queued (the rest are not sent);
 * *sent counts those that were. */
static bool validate_and_send(ingest_context *ctx, const char *body, const ingestbody_span *spans,
                              size_t count, event_outcome *outcomes, delivery *d, size_t *sent,
                              char *err, size_t err_size)
{
    event_limits limits = {.now_usec = time_now_usec(),
                           .lateness_usec = ctx->lateness_usec,
                           .max_bytes = ctx->max_event_bytes};
    for (size_t i = 0; i < count; i++) {
        const char *value = body + spans[i].offset;
        usage_event ev;
        event_outcome *o = &outcomes[i];
        o->code = event_parse(value, spans[i].len, &limits, &ev, o->message, sizeof o->message);
        if (o->code != EVENT_OK)
            continue;
        memcpy(o->id, ev.id, sizeof o->id);
        /* Keyed by subject, as the collector's producers are (§3.4). */
        produce_result r = producer_send(ctx->kafka, d, ev.subject, strlen(ev.subject), value,
                                         spans[i].len, err, err_size);
        if (r != PRODUCE_QUEUED)
            return false;
        (*sent)++;
    }
    return true;
}

/* The per-event answer: {accepted, refused, results: [...]}, in body order. */
static json_t *outcome_json(const event_outcome *outcomes, size_t count, size_t *accepted)
{
    json_t *results = json_array();
    *accepted = 0;
    for (size_t i = 0; i < count; i++) {
        const event_outcome *o = &outcomes[i];
        json_t *item;
        if (o->code == EVENT_OK) {
            item = json_pack("{s:s,s:s}", "status", "accepted", "id", o->id);
            (*accepted)++;
        } else {
            item = json_pack("{s:s,s:s,s:s}", "status", "refused", "code",
                             event_error_code(o->code), "message", o->message);
        }
        json_array_append_new(results, item);
    }
    return json_pack("{s:I,s:I,s:o}", "accepted", (json_int_t)*accepted, "refused",
                     (json_int_t)(count - *accepted), "results", results);
}

static enum MHD_Result answer_events(ingest_context *ctx, struct MHD_Connection *conn,
                                     const char *body, const ingestbody_span *spans, size_t count)
{
    event_outcome *outcomes = calloc(count ? count : 1, sizeof *outcomes);
    delivery *d = delivery_new();
    if (outcomes == NULL || d == NULL) {
        free(outcomes);
        if (d)
            delivery_wait(d);
        return send_error(ctx, conn, 500, "internal", "out of memory", NULL, NULL);
    }
    char err[256] = "";
    size_t sent = 0;
    int64_t started = time_now_usec();
    bool queued = validate_and_send(ctx, body, spans, count, outcomes, d, &sent, err, sizeof err);
    size_t failed = delivery_wait(d);
    if (sent > 0)
        metrics_observe(ctx->m.produce_seconds, (double)(time_now_usec() - started) / 1e6);
    if (!queued || failed > 0) {
        free(outcomes);
        metrics_add(ctx->m.unacknowledged, failed);
        char message[400];
        if (!queued)
            snprintf(message, sizeof message,
                     "Kafka's local queue refused an event (%s); send the whole request again", err);
        else
            snprintf(message, sizeof message,
                     "%zu of %zu event(s) were not acknowledged by Kafka; send the whole "
                     "request again",
                     failed, sent);
        return send_unavailable(ctx, conn, message);
    }
    for (size_t i = 0; i < count; i++) {
        if (outcomes[i].code != EVENT_OK)
            metrics_add(ctx->m.refused[outcomes[i].code], 1);
    }
    metrics_add(ctx->m.accepted, sent);
    size_t accepted;
    json_t *answer = outcome_json(outcomes, count, &accepted);
    free(outcomes);
    if (answer != NULL && accepted == 0 && count > 0) {
        json_object_set_new(answer, "error",
                            json_pack("{s:s,s:s}", "code", "no_valid_event", "message",
                                      "every event was refused; see results"));
        return send_json(ctx, conn, 400, answer, NULL, NULL);
    }
    return send_json(ctx, conn, 202, answer, NULL, NULL);
}

static enum MHD_Result answer_body(ingest_context *ctx, struct MHD_Connection *conn,
                                   ingest_request *state)
{
    if (state->too_large) {
        char message[120];
        snprintf(message, sizeof message, "request bodies are limited to %zu bytes",
                 ctx->max_body_bytes);
        return send_error(ctx, conn, 413, "body_too_large", message, NULL, NULL);
    }
    const char *body = state->body.data ? state->body.data : "";
    size_t len = state->body.len;
    const char *type =
        MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_TYPE);
    if (ingestbody_mode_of(type) == INGESTBODY_STRUCTURED) {
        ingestbody_span whole = {0, len};
        return answer_events(ctx, conn, body, &whole, 1);
    }
    ingestbody_span *spans = malloc(ctx->max_batch_events * sizeof *spans);
    if (spans == NULL)
        return send_error(ctx, conn, 500, "internal", "out of memory", NULL, NULL);
    size_t count = 0;
    char err[160];
    ingestbody_result r =
        ingestbody_split_batch(body, len, spans, ctx->max_batch_events, &count, err, sizeof err);
    enum MHD_Result ret;
    if (r == INGESTBODY_TOO_MANY)
        ret = send_error(ctx, conn, 413, "too_many_events", err, NULL, NULL);
    else if (r != INGESTBODY_OK)
        ret = send_error(ctx, conn, 400, "invalid_batch", err, NULL, NULL);
    else
        ret = answer_events(ctx, conn, body, spans, count);
    free(spans);
    return ret;
}

enum MHD_Result events_handle(void *cls, struct MHD_Connection *conn, const char *url,
                              const char *method, const char *version, const char *upload_data,
                              size_t *upload_data_size, void **req_cls)
{
    (void)version;
    ingest_context *ctx = cls;
    ingest_request *state = *req_cls;
    if (state == NULL) {
        state = calloc(1, sizeof *state);
        if (state == NULL)
            return MHD_NO;
        *req_cls = state;
        buf_init(&state->body, ctx->max_body_bytes);
        int refused = refuse_at_headers(ctx, conn, url, method);
        if (refused >= 0) {
            state->answered = true;
            return (enum MHD_Result)refused;
        }
        return MHD_YES;
    }
    if (*upload_data_size != 0) {
        if (!state->answered && !state->too_large &&
            !buf_append(&state->body, upload_data, *upload_data_size))
            state->too_large = true;
        *upload_data_size = 0;
        return MHD_YES;
    }
    if (state->answered)
        return MHD_YES;
    state->answered = true;
    return answer_body(ctx, conn, state);
}

void events_completed(void *cls, struct MHD_Connection *conn, void **req_cls,
                      enum MHD_RequestTerminationCode code)
{
    (void)cls;
    (void)conn;
    (void)code;
    ingest_request *state = *req_cls;
    if (state == NULL)
        return;
    buf_free(&state->body);
    free(state);
    *req_cls = NULL;
}
