/* The operations endpoint of the collector, the reporter and the api:
 * GET /metrics (Prometheus text) and GET /healthz, and optionally one JSON
 * document (the api's /openapi.json), served by libmicrohttpd on its own
 * thread at TALLY_METRICS_ADDR, an internal address. */
#ifndef TALLY_OPS_H
#define TALLY_OPS_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/socket.h>

#include "buf.h"

/* Fills `detail` (a short text) and returns true when the process is healthy. */
typedef bool (*ops_health_fn)(char *detail, size_t detail_size);

typedef struct ops_server ops_server;

/* Appends the Prometheus text to `out`; false when it does not fit. */
typedef bool (*ops_metrics_fn)(buf *out);

/* What an operations endpoint serves beyond GET /healthz. Every pointer is
 * borrowed and must outlive the server; the functions are called from the
 * server's thread. */
typedef struct {
    ops_health_fn health;   /* NULL: always healthy */
    ops_metrics_fn metrics; /* NULL: metrics_render, the shared registry */
    const char *document_path; /* e.g. "/openapi.json"; NULL: none */
    const char *document;      /* served as application/json at document_path */
    size_t document_len;
} ops_routes;

/* Parses "host:port" or "[v6]:port" (numeric hosts and "localhost") into a
 * socket address. False with err filled in when malformed. */
bool ops_parse_listen_addr(const char *text, struct sockaddr_storage *out, socklen_t *out_len,
                           char *err, size_t err_size);
/* Starts serving; returns a new server (destroy with ops_stop) or NULL with
 * err filled in. `health` is borrowed and called from the server thread. */
ops_server *ops_start(const char *listen_addr, ops_health_fn health, char *err, size_t err_size);
/* The same with the routes spelled out (`routes` is copied). */
ops_server *ops_start_routes(const char *listen_addr, const ops_routes *routes, char *err,
                             size_t err_size);
void ops_stop(ops_server *server);

#endif
