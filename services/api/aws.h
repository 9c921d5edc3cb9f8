/* The AWS API Gateway usage-plan API (docs/AWS-USAGE-PLANS.md): a second
 * wire format over the same plans, keys and usage, served on a listener of
 * its own (TALLY_AWS_ADDR) so that its paths and SigV4 never mix with /v1
 * and its bearer token. Every request there is SigV4-verified first
 * (aws.c, with sigv4.c); its operations (awskeys.c, awsplans.c,
 * awsusage.c) translate AWS shapes into calls of the ordinary /v1
 * handlers where one exists (plans.c, keys.c: one validation, one SQL),
 * and answer with AWS's shapes and errors (x-amzn-ErrorType, {"message"}). */
#ifndef TALLY_API_AWS_H
#define TALLY_API_AWS_H

#include "api.h"

/* The AWS listener's routes: one table, as routes.h is the /v1 one.
 * Every row needs a SigV4 signature (checked before the handler) and runs
 * on a database worker. "{id}" is the usage plan's or the API key's id,
 * "{keyId}" the key's within a plan (req->key_id). X(method, path, handler). */
/* clang-format off */
#define AWS_ROUTES(X)                                                                      \
    X("POST",   "/apikeys",                            aws_create_api_key)                 \
    X("GET",    "/apikeys",                            aws_get_api_keys)                   \
    X("GET",    "/apikeys/{id}",                       aws_get_api_key)                    \
    X("PATCH",  "/apikeys/{id}",                       aws_update_api_key)                 \
    X("DELETE", "/apikeys/{id}",                       aws_delete_api_key)                 \
    X("POST",   "/usageplans",                         aws_create_usage_plan)              \
    X("GET",    "/usageplans",                         aws_get_usage_plans)                \
    X("GET",    "/usageplans/{id}",                    aws_get_usage_plan)                 \
    X("PATCH",  "/usageplans/{id}",                    aws_update_usage_plan)              \
    X("DELETE", "/usageplans/{id}",                    aws_delete_usage_plan)              \
    X("POST",   "/usageplans/{id}/keys",               aws_create_usage_plan_key)          \
    X("GET",    "/usageplans/{id}/keys",               aws_get_usage_plan_keys)            \
    X("GET",    "/usageplans/{id}/keys/{keyId}",       aws_get_usage_plan_key)             \
    X("DELETE", "/usageplans/{id}/keys/{keyId}",       aws_delete_usage_plan_key)          \
    X("GET",    "/usageplans/{id}/usage",              aws_get_usage)                      \
    X("PATCH",  "/usageplans/{id}/keys/{keyId}/usage", aws_update_usage)
/* clang-format on */

#define AWS_ROUTE_DECLARE(method, path, handler) void handler(struct api_request *req);
AWS_ROUTES(AWS_ROUTE_DECLARE)
#undef AWS_ROUTE_DECLARE

enum {
#define AWS_ROUTE_ONE(method, path, handler) +1
    AWS_ROUTE_COUNT = 0 AWS_ROUTES(AWS_ROUTE_ONE)
#undef AWS_ROUTE_ONE
};

extern const apiroute aws_routes[AWS_ROUTE_COUNT];

/* How far X-Amz-Date may be from the server's clock, either way (AWS's own). */
#define AWS_CLOCK_SKEW_USEC (15 * 60 * INT64_C(1000000))
#define AWS_CREDENTIALS_MAX 16
#define AWS_SECRET_MAX 256

/* Reads the credential pairs, one "ACCESS_KEY_ID:SECRET" per line (or
 * separated by ','; blank lines and '#' comments skipped; at most
 * AWS_CREDENTIALS_MAX, ids unique) and the region requests must be signed
 * for. `text` is copied. False with err (never quoting a secret). */
bool aws_init(const char *text, const char *region, char *err, size_t err_size);
void aws_free(void);

/* Matches a request on the AWS listener, as apiroute_find does (405 with
 * `allow` for a known path), with a second id: "{keyId}" into key_id. */
apiroute_result aws_route_find(const char *method, const char *path, apiroute_match *out,
                               char key_id[APIROUTE_ID_MAX + 1]);

/* Verifies the request's SigV4 signature over `target` (the request line's
 * target as sent, still percent-encoded) and its body; true when it is
 * signed by a configured credential, for the configured region and the
 * "apigateway" service, within AWS_CLOCK_SKEW_USEC. Otherwise replies with
 * AWS's error (403 IncompleteSignatureException, InvalidSignatureException,
 * UnrecognizedClientException; 400 for a missing X-Amz-Date) and returns
 * false. Never logs a secret or a signature. */
bool aws_authenticate(api_request *req, const char *target);

/* The x-amzn-ErrorType of a status: 400 BadRequestException, 401
 * UnauthorizedException, 403 AccessDeniedException, 404
 * NotFoundException, 409 ConflictException, 413 BadRequestException, 429
 * TooManyRequestsException, 5xx ServiceUnavailableException. */
const char *aws_error_type(unsigned status);
/* AWS's error answer: header x-amzn-ErrorType: <type>, body {"message"}. */
void aws_reply_error(api_request *req, unsigned status, const char *type, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* Runs a /v1 handler (plans.c, keys.c) on this request as if it had come
 * with the path id `id` and the JSON `body` (borrowed; NULL: no body).
 * Success (2xx): returns its status with *answer its parsed JSON (new
 * reference, or NULL for an empty body) and the request unanswered again.
 * Failure: returns the status with the handler's error left as the answer
 * (AWS-shaped, as every error on this listener is) and *answer NULL. */
unsigned aws_call(api_request *req, apiroute_handler handler, const char *id, json_t *body,
                  json_t **answer);

/* Reads the body as a JSON object for an AWS operation; an empty body is
 * an empty object (the CLI sends none when no member is given). NULL after
 * replying 400. New reference. */
json_t *aws_parse_body(api_request *req);

/* A patch operation of patchOperations: "op", "path", "value" (borrowed
 * from the body). */
typedef struct {
    const char *op, *path, *value; /* value NULL when absent */
} aws_patch;
/* The body's patchOperations, checked for shape (each an object with
 * string op and path, value a string when present, at most 64): the
 * operations into ops (count in *count), or false after replying 400. */
#define AWS_PATCH_MAX 64
bool aws_read_patch(api_request *req, const json_t *body, aws_patch *ops, size_t *count);
/* One patch operation into the /v1 merge patch (values copied); false
 * after replying BadRequestException. */
typedef bool aws_patch_member(api_request *req, const aws_patch *op, json_t *merge);
/* The request body's patchOperations as one /v1 merge patch, each through
 * `member`; NULL after replying (bad body, bad operation). */
json_t *aws_patch_merge(api_request *req, aws_patch_member *member);

/* Epoch seconds of an RFC 3339 member of a /v1 answer (createdAt...), as
 * AWS's dates are on the wire; 0 when absent. */
json_t *aws_epoch_json(const json_t *object, const char *member);

/* The position query of an AWS list: ?position (an opaque cursor this
 * listener gave) and ?limit (1..500, default 25), checked along with the
 * allowed names. False after replying 400. */
#define AWS_LIST_LIMIT_DEFAULT 25
typedef struct {
    int limit;
    char after[APIMODEL_ID_MAX + 1]; /* "" for the first page */
    char fetch[16];                  /* limit + 1 */
} aws_page;
bool aws_read_page(api_request *req, const char *const *allowed, aws_page *page);
/* {"item": [...], "position"?}: the first `limit` rows of res converted by
 * row_json, position the cursor after the last shown id (column
 * id_column) when more rows followed. */
void aws_reply_page(api_request *req, const PGresult *res, const aws_page *page, int id_column,
                    json_t *(*row_json)(const PGresult *res, int row));

/* AWS's ApiKey from a /v1 key answer (borrowed); new object. */
json_t *aws_api_key_json(const json_t *key);

#endif
