#include "ops.h"

#include <arpa/inet.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "buf.h"
#include "metrics.h"

#define OPS_METRICS_MAX_BYTES (4u << 20)

struct ops_server {
    struct MHD_Daemon *daemon;
    ops_routes routes;
};

bool ops_parse_listen_addr(const char *text, struct sockaddr_storage *out, socklen_t *out_len,
                           char *err, size_t err_size)
{
    char host[64];
    const char *port_text;
    if (text[0] == '[') {
        const char *close = strchr(text, ']');
        if (close == NULL || close[1] != ':' || (size_t)(close - text - 1) >= sizeof host)
            goto bad;
        memcpy(host, text + 1, (size_t)(close - text - 1));
        host[close - text - 1] = '\0';
        port_text = close + 2;
    } else {
        const char *colon = strrchr(text, ':');
        if (colon == NULL || (size_t)(colon - text) >= sizeof host)
            goto bad;
        memcpy(host, text, (size_t)(colon - text));
        host[colon - text] = '\0';
        port_text = colon + 1;
    }
    char *end = NULL;
    long port = strtol(port_text, &end, 10);
    if (port_text[0] == '\0' || *end != '\0' || port < 0 || port > 65535)
        goto bad;
    memset(out, 0, sizeof *out);
    if (strcmp(host, "localhost") == 0)
        snprintf(host, sizeof host, "127.0.0.1");
    struct sockaddr_in *v4 = (struct sockaddr_in *)out;
    struct sockaddr_in6 *v6 = (struct sockaddr_in6 *)out;
    if (inet_pton(AF_INET, host[0] ? host : "0.0.0.0", &v4->sin_addr) == 1) {
        v4->sin_family = AF_INET;
        v4->sin_port = htons((uint16_t)port);
        *out_len = sizeof *v4;
        return true;
    }
    if (inet_pton(AF_INET6, host, &v6->sin6_addr) == 1) {
        v6->sin6_family = AF_INET6;
        v6->sin6_port = htons((uint16_t)port);
        *out_len = sizeof *v6;
        return true;
    }
bad:
    snprintf(err, err_size, "\"%.80s\" is not a listen address of the form host:port or [v6]:port",
             text);
    return false;
}

static enum MHD_Result reply(struct MHD_Connection *conn, unsigned status, const char *type,
                             const char *body, size_t len)
{
    struct MHD_Response *res =
        MHD_create_response_from_buffer(len, (void *)body, MHD_RESPMEM_MUST_COPY);
    if (res == NULL)
        return MHD_NO;
    MHD_add_response_header(res, "Content-Type", type);
    enum MHD_Result ret = MHD_queue_response(conn, status, res);
    MHD_destroy_response(res);
    return ret;
}

static enum MHD_Result handle(void *cls, struct MHD_Connection *conn, const char *url,
                              const char *method, const char *version, const char *upload_data,
                              size_t *upload_data_size, void **req_cls)
{
    (void)version;
    (void)upload_data;
    ops_server *server = cls;
    if (*req_cls == NULL) { /* first call: headers only */
        *req_cls = server;
        return MHD_YES;
    }
    if (*upload_data_size != 0) {
        *upload_data_size = 0; /* ignore any body */
        return MHD_YES;
    }
    if (strcmp(method, "GET") != 0 && strcmp(method, "HEAD") != 0) {
        static const char msg[] =
            "{\"error\":{\"code\":\"method_not_allowed\",\"message\":\"only GET is served here\"}}";
        return reply(conn, MHD_HTTP_METHOD_NOT_ALLOWED, "application/json", msg, sizeof msg - 1);
    }
    if (strcmp(url, "/metrics") == 0) {
        buf out;
        buf_init(&out, OPS_METRICS_MAX_BYTES);
        bool ok = server->routes.metrics ? server->routes.metrics(&out) : metrics_render(&out);
        enum MHD_Result ret =
            ok ? reply(conn, MHD_HTTP_OK, "text/plain; version=0.0.4", out.data ? out.data : "",
                       out.len)
               : reply(conn, MHD_HTTP_INTERNAL_SERVER_ERROR, "text/plain", "metrics too large\n",
                       18);
        buf_free(&out);
        return ret;
    }
    /* /readyz answers the same: a collector or reporter that cannot make
     * progress should neither get traffic nor be left alone. */
    if (strcmp(url, "/healthz") == 0 || strcmp(url, "/readyz") == 0) {
        char detail[256] = "ok";
        bool healthy =
            server->routes.health ? server->routes.health(detail, sizeof detail) : true;
        char body[400];
        int n = snprintf(body, sizeof body, "{\"status\":\"%s\",\"detail\":\"%s\"}",
                         healthy ? "ok" : "unhealthy", detail);
        return reply(conn, healthy ? MHD_HTTP_OK : MHD_HTTP_SERVICE_UNAVAILABLE,
                     "application/json", body, (size_t)n);
    }
    if (server->routes.document_path != NULL && strcmp(url, server->routes.document_path) == 0)
        return reply(conn, MHD_HTTP_OK, "application/json", server->routes.document,
                     server->routes.document_len);
    static const char msg[] =
        "{\"error\":{\"code\":\"not_found\",\"message\":\"this port serves /metrics, /healthz and /readyz\"}}";
    return reply(conn, MHD_HTTP_NOT_FOUND, "application/json", msg, sizeof msg - 1);
}

ops_server *ops_start(const char *listen_addr, ops_health_fn health, char *err, size_t err_size)
{
    ops_routes routes = {.health = health};
    return ops_start_routes(listen_addr, &routes, err, err_size);
}

ops_server *ops_start_routes(const char *listen_addr, const ops_routes *routes, char *err,
                             size_t err_size)
{
    struct sockaddr_storage addr;
    socklen_t addr_len;
    if (!ops_parse_listen_addr(listen_addr, &addr, &addr_len, err, err_size))
        return NULL;
    ops_server *server = calloc(1, sizeof *server);
    if (server == NULL) {
        snprintf(err, err_size, "out of memory");
        return NULL;
    }
    server->routes = *routes;
    unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_EPOLL_INTERNAL_THREAD;
    if (addr.ss_family == AF_INET6)
        flags |= MHD_USE_IPv6;
    server->daemon = MHD_start_daemon(
        flags, 0, NULL, NULL, handle, server, MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&addr,
        MHD_OPTION_CONNECTION_LIMIT, 64u, MHD_OPTION_CONNECTION_TIMEOUT, 10u,
        MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)65536, MHD_OPTION_END);
    if (server->daemon == NULL) {
        snprintf(err, err_size, "cannot listen on %s for /metrics (address in use?)", listen_addr);
        free(server);
        return NULL;
    }
    return server;
}

void ops_stop(ops_server *server)
{
    if (server == NULL)
        return;
    MHD_stop_daemon(server->daemon);
    free(server);
}
