/* tally-healthcheck: the container healthcheck. `tally-healthcheck
 * http://127.0.0.1:9101/healthz` sends one GET and exits 0 when the answer's
 * status is 2xx, 1 for anything else (refused, timed out, 503, garbage).
 *
 * Docker and podman run it directly (the CMD form: no shell, no curl in the
 * image), and its one line of output lands in `inspect`'s health log. Exit 2
 * is never used: Docker reserves it. Plain HTTP only, which is what the
 * services' internal /healthz listeners speak. */
#include <errno.h>
#include <netdb.h>
#include <poll.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define HEALTHCHECK_DEFAULT_TIMEOUT_MS 3000
#define HEALTHCHECK_MAX_TIMEOUT_MS 60000
/* Bounds of what a URL or an answer can make us hold. */
#define HEALTHCHECK_MAX_HOST 256
#define HEALTHCHECK_MAX_PATH 1024
#define HEALTHCHECK_MAX_STATUS_LINE 512

typedef struct {
    char host[HEALTHCHECK_MAX_HOST];
    char port[8];
    char path[HEALTHCHECK_MAX_PATH];
} healthcheck_url;

/* Splits "http://host[:port][/path]" ("[v6]" hosts too); false when it is
 * not that shape or a part is too long. */
static bool healthcheck_parse_url(const char *text, healthcheck_url *url)
{
    static const char scheme[] = "http://";
    if (strncmp(text, scheme, sizeof scheme - 1) != 0)
        return false;
    const char *host = text + sizeof scheme - 1;
    const char *path = strchr(host, '/');
    if (path == NULL)
        path = host + strlen(host);
    const char *host_end = path;
    const char *port = NULL;
    if (*host == '[') {
        const char *close = memchr(host, ']', (size_t)(path - host));
        if (close == NULL)
            return false;
        if (close + 1 < path && close[1] == ':')
            port = close + 2;
        else if (close + 1 != path)
            return false;
        host++;
        host_end = close;
    } else {
        const char *colon = memchr(host, ':', (size_t)(path - host));
        if (colon != NULL) {
            port = colon + 1;
            host_end = colon;
        }
    }
    size_t host_len = (size_t)(host_end - host);
    size_t port_len = port ? (size_t)(path - port) : 0;
    if (host_len == 0 || host_len >= sizeof url->host || port_len >= sizeof url->port ||
        (port != NULL && port_len == 0) || strlen(path) >= sizeof url->path)
        return false;
    long port_number = 0;
    for (size_t i = 0; i < port_len; i++) {
        if (port[i] < '0' || port[i] > '9')
            return false;
        port_number = port_number * 10 + (port[i] - '0');
    }
    if (port != NULL && (port_number < 1 || port_number > 65535))
        return false;
    for (const char *p = path; *p; p++) {
        if (*p <= ' ' || *p == 0x7f) /* a request line holds no spaces or controls */
            return false;
    }
    memcpy(url->host, host, host_len);
    url->host[host_len] = '\0';
    if (port_len == 0)
        snprintf(url->port, sizeof url->port, "80");
    else
        snprintf(url->port, sizeof url->port, "%.*s", (int)port_len, port);
    snprintf(url->path, sizeof url->path, "%s", *path ? path : "/");
    return true;
}

static long long healthcheck_now_ms(void)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (long long)now.tv_sec * 1000 + now.tv_nsec / 1000000;
}

/* Waits for `events` on fd until the deadline; true when they came. */
static bool healthcheck_wait(int fd, short events, long long deadline_ms)
{
    for (;;) {
        long long left = deadline_ms - healthcheck_now_ms();
        if (left <= 0)
            return false;
        struct pollfd pfd = {.fd = fd, .events = events};
        int n = poll(&pfd, 1, (int)left);
        if (n > 0)
            return true;
        if (n < 0 && errno != EINTR)
            return false;
    }
}

/* A non-blocking connect to the first address that answers before the
 * deadline; the socket (the caller closes it) or -1 with why in err. */
static int healthcheck_connect(const healthcheck_url *url, long long deadline_ms, char *err,
                               size_t err_size)
{
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
    struct addrinfo *addresses = NULL;
    int rc = getaddrinfo(url->host, url->port, &hints, &addresses);
    if (rc != 0) {
        snprintf(err, err_size, "resolving %s: %s", url->host, gai_strerror(rc));
        return -1;
    }
    int fd = -1;
    snprintf(err, err_size, "no address for %s", url->host);
    for (struct addrinfo *a = addresses; a != NULL && fd < 0; a = a->ai_next) {
        fd = socket(a->ai_family, a->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, a->ai_protocol);
        if (fd < 0) {
            snprintf(err, err_size, "socket: %s", strerror(errno));
            continue;
        }
        int error = 0;
        if (connect(fd, a->ai_addr, a->ai_addrlen) != 0) {
            error = errno;
            if (error == EINPROGRESS) {
                socklen_t len = sizeof error;
                if (!healthcheck_wait(fd, POLLOUT, deadline_ms))
                    error = ETIMEDOUT;
                else if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &error, &len) != 0)
                    error = errno;
            }
        }
        if (error != 0) {
            snprintf(err, err_size, "connecting to %s:%s: %s", url->host, url->port,
                     strerror(error));
            close(fd);
            fd = -1;
        }
    }
    freeaddrinfo(addresses);
    return fd;
}

/* Sends all of `data` before the deadline. */
static bool healthcheck_send(int fd, const char *data, size_t length, long long deadline_ms)
{
    while (length > 0) {
        ssize_t n = send(fd, data, length, MSG_NOSIGNAL);
        if (n > 0) {
            data += n;
            length -= (size_t)n;
        } else if (n < 0 && (errno == EAGAIN || errno == EINTR)) {
            if (!healthcheck_wait(fd, POLLOUT, deadline_ms))
                return false;
        } else {
            return false;
        }
    }
    return true;
}

/* Reads the answer's first line into line (NUL-terminated, without CRLF);
 * false on a timeout, a closed connection before a line, or an overlong
 * line. */
static bool healthcheck_read_status_line(int fd, char *line, size_t size, long long deadline_ms)
{
    size_t used = 0;
    while (used + 1 < size) {
        ssize_t n = recv(fd, line + used, size - 1 - used, 0);
        if (n > 0) {
            used += (size_t)n;
            line[used] = '\0';
            char *end = strstr(line, "\r\n");
            if (end != NULL) {
                *end = '\0';
                return true;
            }
        } else if (n < 0 && (errno == EAGAIN || errno == EINTR)) {
            if (!healthcheck_wait(fd, POLLIN, deadline_ms))
                return false;
        } else {
            return false;
        }
    }
    return false;
}

/* The status code of "HTTP/1.x NNN ...", or -1. */
static int healthcheck_status_code(const char *line)
{
    if (strncmp(line, "HTTP/1.", 7) != 0 || line[7] < '0' || line[7] > '9' || line[8] != ' ')
        return -1;
    const char *code = line + 9;
    for (int i = 0; i < 3; i++) {
        if (code[i] < '0' || code[i] > '9')
            return -1;
    }
    if (code[3] != '\0' && code[3] != ' ')
        return -1;
    return (code[0] - '0') * 100 + (code[1] - '0') * 10 + (code[2] - '0');
}

/* One GET of url; 0 for a 2xx answer, 1 otherwise, with a line saying why. */
static int healthcheck_probe(const healthcheck_url *url, long long timeout_ms)
{
    long long deadline_ms = healthcheck_now_ms() + timeout_ms;
    char err[512];
    int fd = healthcheck_connect(url, deadline_ms, err, sizeof err);
    if (fd < 0) {
        printf("unhealthy: %s\n", err);
        return 1;
    }
    char request[HEALTHCHECK_MAX_PATH + HEALTHCHECK_MAX_HOST + 128];
    int length = snprintf(request, sizeof request,
                          "GET %s HTTP/1.0\r\nHost: %s\r\nUser-Agent: tally-healthcheck\r\n"
                          "Connection: close\r\n\r\n",
                          url->path, url->host);
    char line[HEALTHCHECK_MAX_STATUS_LINE];
    int result = 1;
    if (!healthcheck_send(fd, request, (size_t)length, deadline_ms)) {
        printf("unhealthy: sending the request failed or timed out\n");
    } else if (!healthcheck_read_status_line(fd, line, sizeof line, deadline_ms)) {
        printf("unhealthy: no HTTP status line (connection closed, or %lld ms passed)\n",
               timeout_ms);
    } else {
        int code = healthcheck_status_code(line);
        if (code >= 200 && code <= 299) {
            printf("healthy: %s\n", line);
            result = 0;
        } else {
            printf("unhealthy: %.200s\n", code < 0 ? "not an HTTP answer" : line);
        }
    }
    close(fd);
    return result;
}

static void healthcheck_usage(FILE *out)
{
    fprintf(out,
            "usage: tally-healthcheck [--timeout-ms N] http://HOST:PORT/PATH\n"
            "Sends GET PATH and exits 0 when the answer's status is 2xx, 1 otherwise\n"
            "(refused, timed out, non-2xx, not HTTP); prints one line saying which.\n"
            "--timeout-ms: for the whole check, 1 to %d (default %d).\n",
            HEALTHCHECK_MAX_TIMEOUT_MS, HEALTHCHECK_DEFAULT_TIMEOUT_MS);
}

int main(int argc, char **argv)
{
    long long timeout_ms = HEALTHCHECK_DEFAULT_TIMEOUT_MS;
    const char *url_text = NULL;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            healthcheck_usage(stdout);
            return 0;
        }
        if (strcmp(argv[i], "--timeout-ms") == 0 && i + 1 < argc) {
            char *end = NULL;
            errno = 0;
            timeout_ms = strtoll(argv[++i], &end, 10);
            if (errno != 0 || *end != '\0' || end == argv[i] || timeout_ms < 1 ||
                timeout_ms > HEALTHCHECK_MAX_TIMEOUT_MS) {
                fprintf(stderr, "tally-healthcheck: --timeout-ms must be 1 to %d\n",
                        HEALTHCHECK_MAX_TIMEOUT_MS);
                return 1;
            }
        } else if (url_text == NULL && argv[i][0] != '-') {
            url_text = argv[i];
        } else {
            healthcheck_usage(stderr);
            return 1;
        }
    }
    healthcheck_url url;
    if (url_text == NULL || !healthcheck_parse_url(url_text, &url)) {
        fprintf(stderr, "tally-healthcheck: expected a URL http://HOST:PORT/PATH\n");
        healthcheck_usage(stderr);
        return 1;
    }
    return healthcheck_probe(&url, timeout_ms);
}
