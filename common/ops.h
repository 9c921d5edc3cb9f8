/* The operations endpoint of the collector and the reporter: GET /metrics
 * (Prometheus text) and GET /healthz, served by libmicrohttpd on its own
 * thread at TALLY_METRICS_ADDR. */
#ifndef TALLY_OPS_H
#define TALLY_OPS_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/socket.h>

/* Fills `detail` (a short text) and returns true when the process is healthy. */
typedef bool (*ops_health_fn)(char *detail, size_t detail_size);

typedef struct ops_server ops_server;

/* Parses "host:port" or "[v6]:port" (numeric hosts and "localhost") into a
 * socket address. False with err filled in when malformed. */
bool ops_parse_listen_addr(const char *text, struct sockaddr_storage *out, socklen_t *out_len,
                           char *err, size_t err_size);
/* Starts serving; returns a new server (destroy with ops_stop) or NULL with
 * err filled in. `health` is borrowed and called from the server thread. */
ops_server *ops_start(const char *listen_addr, ops_health_fn health, char *err, size_t err_size);
void ops_stop(ops_server *server);

#endif
