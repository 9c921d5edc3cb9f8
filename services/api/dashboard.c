/* The dashboards' pages and assets, dashboard links, and link tokens on
 * the /v1/me routes (dashboard.h). */
#include "dashboard.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "dashassets.h"
#include "dashlink.h"
#include "query.h"
#include "timeutil.h"

/* Every page and asset: scripts and styles from Tally only (no inline
 * script), data from the same origin, never framed. */
#define PAGE_CSP                                                                          \
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "    \
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
#define PUBLIC_URL_MAX 200

static const char *public_url = "";

void dashboard_init(const char *url)
{
    public_url = url != NULL ? url : "";
}

static const dashassets_file *find_file(const char *name)
{
    for (size_t i = 0; i < dashassets_count; i++) {
        if (strcmp(dashassets_files[i].name, name) == 0)
            return &dashassets_files[i];
    }
    return NULL;
}

/* Answers with the embedded file `name`, or 404. */
static void serve_file(api_request *req, const char *name)
{
    const dashassets_file *file = find_file(name);
    if (file == NULL) {
        api_reply_error(req, 404, "not_found", "no dashboard file \"%s\"", name);
        return;
    }
    char *copy = malloc(file->len > 0 ? file->len : 1);
    if (copy == NULL) {
        api_reply_error(req, 500, "internal", "out of memory");
        return;
    }
    memcpy(copy, file->data, file->len);
    api_reply_empty(req, 200);
    req->response.body = copy;
    req->response.body_len = file->len;
    req->response.content_type = file->content_type;
    api_add_header(req, "Content-Security-Policy", "%s", PAGE_CSP);
    api_add_header(req, "X-Content-Type-Options", "nosniff");
    api_add_header(req, "Referrer-Policy", "no-referrer");
    /* Pages are small and read links from the fragment: never cached, so a
     * new build's pages and assets always match. */
    api_add_header(req, "Cache-Control", "no-store");
}

void dashboard_customer_page(api_request *req)
{
    serve_file(req, "index.html");
}

void dashboard_admin_page(api_request *req)
{
    serve_file(req, "admin.html");
}

/* GET /dashboard/assets/{id} and /dashboard/vendor/{id}: `folder` + id. */
static void serve_from(api_request *req, const char *folder)
{
    char name[64 + APIROUTE_ID_MAX];
    snprintf(name, sizeof name, "%s/%s", folder, req->id);
    serve_file(req, name);
}

void dashboard_asset(api_request *req)
{
    serve_from(req, "assets");
}

/* Vendored libraries keep their own folder (name and version, with their
 * licence): a file is served by its name, the folder being the only one
 * under vendor/ that has it. */
void dashboard_vendor(api_request *req)
{
    size_t id_len = strlen(req->id);
    for (size_t i = 0; i < dashassets_count; i++) {
        const char *name = dashassets_files[i].name;
        const char *base = strrchr(name, '/');
        if (strncmp(name, "vendor/", 7) == 0 && base != NULL && strlen(base + 1) == id_len &&
            strcmp(base + 1, req->id) == 0) {
            serve_file(req, name);
            return;
        }
    }
    api_reply_error(req, 404, "not_found", "no dashboard file \"%s\"", req->id);
}

bool dashboard_me_token(api_request *req, bool *by_token)
{
    *by_token = false;
    const char *header =
        MHD_lookup_connection_value(req->conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_AUTHORIZATION);
    static const char scheme[] = "Bearer ";
    if (header == NULL)
        return true;
    if (strncasecmp(header, scheme, sizeof scheme - 1) != 0) {
        api_reply_error(req, 401, "unauthorized",
                        "/v1/me takes x-api-key or Authorization: Bearer <dashboard link token>");
        return false;
    }
    const char *token = header + sizeof scheme - 1;
    char key_id[APIROUTE_ID_MAX + 1];
    int64_t expires;
    dashlink_verdict verdict = dashlink_verify(token, strnlen(token, DASHLINK_TOKEN_MAX),
                                               time_now_usec() / USEC_PER_SEC, key_id, &expires);
    if (verdict != DASHLINK_VALID) {
        api_add_header(req, "WWW-Authenticate", "Bearer realm=\"tally\", error=\"invalid_token\"");
        api_reply_error(req, 401, verdict == DASHLINK_EXPIRED ? "link_expired" : "unauthorized",
                        "%s", dashlink_verdict_message(verdict));
        return false;
    }
    memcpy(req->id, key_id, sizeof req->id);
    *by_token = true;
    return true;
}

void dashboard_decorate(api_request *req)
{
    if (req->route != NULL && req->route->auth == AUTH_API_KEY)
        api_add_header(req, "Cache-Control", "no-store");
}

/* ttlSeconds of the body (absent: the default); false after replying 400. */
static bool read_ttl(api_request *req, long long *ttl)
{
    *ttl = DASHLINK_TTL_DEFAULT_S;
    if (req->body_len == 0)
        return true;
    json_t *body = api_parse_body(req);
    if (body == NULL)
        return false;
    bool ok = true;
    const char *name;
    json_t *value;
    json_object_foreach(body, name, value)
    {
        if (strcmp(name, "ttlSeconds") != 0) {
            api_reply_error(req, 400, "unknown_field", "unknown field \"%.60s\"", name);
            ok = false;
            break;
        }
        if (!json_is_integer(value) || json_integer_value(value) < DASHLINK_TTL_MIN_S ||
            json_integer_value(value) > DASHLINK_TTL_MAX_S) {
            api_reply_error(req, 400, "invalid_field",
                            "ttlSeconds must be an integer from %d to %d (seconds)",
                            DASHLINK_TTL_MIN_S, DASHLINK_TTL_MAX_S);
            ok = false;
            break;
        }
        *ttl = json_integer_value(value);
    }
    json_decref(body);
    return ok;
}

/* Whether key req->id exists; false after replying 404 or the error. */
static bool key_exists(api_request *req)
{
    PGconn *conn = dbpool_acquire(req);
    if (conn == NULL)
        return false;
    const char *params[] = {req->id};
    PGresult *res = api_exec(conn, "SELECT 1 FROM api_keys WHERE id = $1", 1, params);
    bool found = api_ok(res) && PQntuples(res) == 1;
    if (!api_ok(res))
        api_reply_db_error(req, conn, res, "looking up a key");
    else if (!found)
        api_reply_error(req, 404, "not_found", "no key with id \"%s\"", req->id);
    PQclear(res);
    dbpool_release(conn);
    return found;
}

/* POST /v1/keys/{id}/dashboard-links {"ttlSeconds": n}: a link to the
 * customer page for this key's usage, the token in the URL's fragment so
 * that browsers never send it to a server (nor logs record it). */
void dashboard_links_create(api_request *req)
{
    long long ttl;
    snprintf(req->key_id, sizeof req->key_id, "%s", req->id);
    if (!query_validate(req, (const char *const[]){NULL}) || !read_ttl(req, &ttl) ||
        !key_exists(req))
        return;
    int64_t now_s = time_now_usec() / USEC_PER_SEC, expires = now_s + ttl;
    char token[DASHLINK_TOKEN_MAX], url[PUBLIC_URL_MAX + DASHLINK_TOKEN_MAX + 32];
    if (!dashlink_sign(req->id, expires, token, sizeof token)) {
        api_reply_error(req, 500, "internal", "the link could not be signed");
        return;
    }
    snprintf(url, sizeof url, "%s/dashboard#link=%s", public_url, token);
    json_t *answer = json_pack("{s:s,s:s,s:s,s:o,s:I}", "keyId", req->id, "url", url, "token",
                               token, "expiresAt", api_time_json(expires * USEC_PER_SEC),
                               "ttlSeconds", (json_int_t)ttl);
    api_add_header(req, "Cache-Control", "no-store");
    api_reply_json(req, 201, answer);
}
