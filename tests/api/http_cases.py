"""The api's HTTP layer against hostile clients, its internal metrics
address and HTTPS: tests registered into tests/api/run.py (imported from
there; the helpers are run.py's own). Raw sockets wherever a well-behaved
client library would not send the bytes."""

import os
import resource
import select
import socket
import subprocess
import threading
import time

from __main__ import (ADMIN_TOKEN, SANITIZER_PATTERNS, Answer, ExtraApi, check,  # noqa: E402
                      expect, free_port, make_key, make_plan, terminate, test)


def raw_exchange(port, data, timeout=5.0, source=None):
    """Sends `data` on a new connection to 127.0.0.1:port and reads until the
    server closes it or `timeout` passes. Returns (Answer or None, seconds);
    None when the server sent nothing before closing or the time ran out."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    t0 = time.monotonic()
    received = b""
    try:
        if source:
            sock.bind((source, 0))
        sock.connect(("127.0.0.1", port))
        sock.sendall(data)
        deadline = t0 + timeout
        while time.monotonic() < deadline:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            received += chunk
            if answer_complete(received):
                break
    except (socket.timeout, ConnectionError):
        pass
    finally:
        sock.close()
    return parse_answer(received), time.monotonic() - t0


def answer_complete(data):
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        return False
    if head.split(b" ", 2)[1:2] == [b"204"]:
        return True  # no body
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(body) >= int(value.strip())
    return False


def parse_answer(data):
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep or not head.startswith(b"HTTP/1."):
        return None
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = [tuple(part.strip() for part in line.split(":", 1)) for line in lines[1:]
               if ":" in line]
    return Answer(status, headers, body.decode("utf-8", "replace"))


def request_bytes(method, path, headers, body=b"", line_end=b"\r\n"):
    lines = [("%s %s HTTP/1.1" % (method, path)).encode()]
    lines += [name.encode() + b": " + (value if isinstance(value, bytes) else value.encode())
              for name, value in headers]
    return line_end.join(lines) + line_end + line_end + body


def expect_raw(port, data, status, code=None, timeout=5.0):
    """The answer to `data`: `status` (and `code`, JSON error shape) within
    `timeout` seconds."""
    answer, seconds = raw_exchange(port, data, timeout)
    check(answer is not None, "no answer within %.1fs to %r" % (seconds, data[:120]))
    return expect(answer, status, code)


def authorize_key(s, name):
    plan = make_plan(s, name=name)
    return make_key(s, name=name, planId=plan["id"])["value"]


# ---- hostile clients --------------------------------------------------------

def authorize_latencies(port, key, count, source="127.0.0.2", timeout=2.0, give_up_after=5):
    """`count` authorizes from `source`, each on a new connection (a new
    client). Returns (sorted seconds of the answered, number unanswered)."""
    data = request_bytes("GET", "/v1/authorize", [("Host", "t"), ("x-api-key", key),
                                                  ("X-Original-Method", "GET"),
                                                  ("X-Original-URI", "/items"),
                                                  ("Connection", "close")])
    times, failed = [], 0
    for _ in range(count):
        answer, seconds = raw_exchange(port, data, timeout, source=source)
        if answer is None or answer.status != 204:
            failed += 1
            if failed >= give_up_after:
                break
        else:
            times.append(seconds)
    return sorted(times), failed


def p99(times):
    return times[min(len(times) - 1, int(len(times) * 0.99))]


def raise_open_files(wanted):
    """Raises this process's open-file limit (the apis it starts inherit it)
    to `wanted` or the hard limit; returns the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


# A p99 of a millisecond or two is the third-slowest of 300 exchanges: one
# scheduling hiccup on a shared two-core machine triples it (CI saw 0.51 ms
# idle, 1.52 ms held, all answered; ASan here 2.01 and 5.66 ms). What the
# test guards against shows as unanswered requests or waits of seconds, so
# the bound has an absolute slack.
HELD_SLACK_S = 0.005


@test
def one_client_cannot_take_every_connection(s):
    """One address (127.0.0.1) holds more half-open requests than the api's
    8,192-connection limit: a client from another address (127.0.0.2),
    opening a connection per request as a new client does, still gets every
    authorize answered, its p99 within 2x the one it saw before plus
    HELD_SLACK_S (the per-address limit, 1,024 by default, turns the rest
    away). Without that limit some of its connections get no answer."""
    key = authorize_key(s, "many-sockets")
    wanted = 8300
    limit = raise_open_files(wanted + 600)
    count = min(wanted, limit - 600)
    with ExtraApi(s, "api-many-sockets", []) as api:
        authorize_latencies(api.port, key, 20)  # warm up
        # Two rounds at most: the machine is shared, and one slow burst
        # elsewhere can double a p99 of a few milliseconds.
        for round_number in (1, 2):
            idle, attacked, failed = idle_then_held(api.port, key, count)
            ratio = p99(attacked) / p99(idle) if attacked else float("inf")
            print("      round %d: %d half-open from 127.0.0.1: authorize p99 %.2f ms idle, "
                  "%.2f ms held (%.2fx, %d unanswered)"
                  % (round_number, count, 1000 * p99(idle),
                     1000 * p99(attacked) if attacked else -1, ratio, failed), flush=True)
            check(failed == 0, "%d of the other client's authorizes got no answer while %d "
                  "connections were held" % (failed, count))
            if p99(attacked) <= 2 * p99(idle) + HELD_SLACK_S:
                return
        check(False, "authorize p99 %.2f ms while held, more than 2 x %.2f ms idle + %.0f ms"
              % (1000 * p99(attacked), 1000 * p99(idle), 1000 * HELD_SLACK_S))


def wait_connected(socks, timeout):
    """Waits until every non-blocking connect has finished (or failed), so
    that SYNs retried after a full backlog do not land in the measurement."""
    poller = select.poll()
    pending = {sock.fileno(): sock for sock in socks}
    for fd in pending:
        poller.register(fd, select.POLLOUT)
    deadline = time.monotonic() + timeout
    while pending and time.monotonic() < deadline:
        for fd, _ in poller.poll(100):
            poller.unregister(fd)
            del pending[fd]


def idle_then_held(port, key, count):
    """Authorize p99 from 127.0.0.2, first idle, then while 127.0.0.1 holds
    `count` connections with an unfinished request each: (idle seconds,
    held seconds, unanswered while held)."""
    idle, failed = authorize_latencies(port, key, 300)
    check(failed == 0, "%d authorizes failed before any attack" % failed)
    held = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setblocking(False)
            sock.connect_ex(("127.0.0.1", port))
            held.append(sock)
        wait_connected(held, 10)
        partial = b"GET /v1/authorize HTTP/1.1\r\nHost: t\r\nx-api-key: "
        for sock in held:
            try:
                sock.send(partial)
            except OSError:
                pass  # turned away already
        time.sleep(0.5)
        attacked, failed = authorize_latencies(port, key, 300)
    finally:
        for sock in held:
            sock.close()
    return idle, attacked, failed


def closed_within(port, data, timeout):
    """Sends `data` (may be empty) on a new connection and waits for the
    server to close it: (what it sent before closing, seconds), or (None,
    seconds) when it kept the connection open `timeout` seconds."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    t0 = time.monotonic()
    got = b""
    try:
        if data:
            sock.sendall(data)
        while True:
            chunk = sock.recv(4096)
            if not chunk:
                break
            got += chunk
    except ConnectionResetError:
        pass
    except socket.timeout:
        got = None
    finally:
        sock.close()
    return got, time.monotonic() - t0


@test
def slow_requests_time_out_kept_alive_connections_stay(s):
    """A request whose headers or body stop coming, and a connection that
    sends nothing, are closed after the request timeout (default 10 s, once
    the one 60 s idle timeout); a kept-alive connection idle longer than
    that, below the idle timeout, still serves its next request."""
    default = {}
    unfinished = b"GET /v1/authorize HTTP/1.1\r\nHost: t\r\nx-api-"
    waiter = threading.Thread(target=lambda: default.update(
        result=closed_within(s.port, unfinished, 16)))
    waiter.start()
    try:
        with ExtraApi(s, "api-timeouts", ["--request-timeout", "1", "--idle-timeout", "30"]) as api:
            partial_body = request_bytes("POST", "/v1/plans", [
                ("Host", "t"), ("Authorization", "Bearer " + ADMIN_TOKEN),
                ("Content-Length", "100")], b'{"name":')
            for data in (unfinished, partial_body, b""):
                got, seconds = closed_within(api.port, data, 10)
                check(got is not None and seconds < 4, "an unfinished request (%r) held its "
                      "connection %.1fs (got %r)" % (data[:40], seconds, got))
            conn = socket.create_connection(("127.0.0.1", api.port), timeout=10)
            try:
                ping = request_bytes("GET", "/healthz", [("Host", "t")])
                for attempt in range(2):
                    conn.sendall(ping)
                    got = conn.recv(4096)
                    check(got.startswith(b"HTTP/1.1 200"), "kept-alive request %d: %r"
                          % (attempt + 1, got[:80]))
                    if attempt == 0:
                        time.sleep(2.5)
            finally:
                conn.close()
    finally:
        waiter.join()
    got, seconds = default["result"]
    check(got is not None and 9 <= seconds < 13, "with the default settings an unfinished "
          "request held its connection %.1fs (got %r)" % (seconds, got))


@test
def oversized_requests_are_answered_promptly(s):
    """Too many query arguments (once ~460 got no answer for 60 s), a long
    URI, too many or too large headers: each answered at once with 400, 414
    or 431 in the contract's error shape; far past the connection's memory,
    libmicrohttpd's own 414/431, still at once."""
    key = authorize_key(s, "oversized")
    many = "&".join("a%d=1" % i for i in range(500))
    expect_raw(s.port, request_bytes("GET", "/v1/authorize?" + many,
                                     [("Host", "t"), ("x-api-key", key)]),
               400, "too_many_parameters")
    expect_raw(s.port, request_bytes("GET", "/v1/plans?" + "&".join(["limit=1"] * 40),
                                     [("Host", "t"), ("Authorization", "Bearer " + ADMIN_TOKEN)]),
               400, "too_many_parameters")
    # Within the limit, the routes' own rules apply as before.
    expect_raw(s.port, request_bytes("GET", "/v1/plans?limit=1&limit=2",
                                     [("Host", "t"), ("Authorization", "Bearer " + ADMIN_TOKEN)]),
               400, "invalid_parameter")
    expect_raw(s.port, request_bytes("GET", "/v1/plans/" + "x" * 5000, [("Host", "t")]),
               414, "uri_too_long")
    expect_raw(s.port, request_bytes("GET", "/healthz", [("Host", "t")] +
                                     [("X-Filler-%d" % i, "x") for i in range(100)]),
               431, "headers_too_large")
    expect_raw(s.port, request_bytes("GET", "/healthz", [("Host", "t"), ("X-Big", "x" * 20000)]),
               431, "headers_too_large")
    # libmicrohttpd indexes cookies before the api sees the request: past
    # ~1,300 pairs it answers 431 itself (no Tally client sends cookies).
    cookies = "; ".join("c%d=1" % i for i in range(3000))
    for data, status in ((request_bytes("GET", "/" + "x" * 200000, [("Host", "t")]), 414),
                         (request_bytes("GET", "/healthz", [("Host", "t"),
                                                            ("X-Big", "x" * 200000)]), 431),
                         (request_bytes("GET", "/healthz", [("Host", "t"),
                                                            ("Cookie", cookies)]), 431)):
        answer, seconds = raw_exchange(s.port, data, 5)
        check(answer is not None and answer.status == status,
              "%d KB request: %r after %.1fs" % (len(data) // 1000, answer, seconds))
    expect(s.call("GET", "/healthz"), 200)


@test
def smuggling_prone_framing_is_refused(s):
    """Two Content-Length headers, Content-Length with Transfer-Encoding, or
    a Transfer-Encoding other than one "chunked", are answered 400 before
    the body is read (a proxy in front may frame the body otherwise)."""
    body = b'{"name":"smuggled"}'
    admin = [("Host", "t"), ("Authorization", "Bearer " + ADMIN_TOKEN),
             ("Content-Type", "application/json")]
    for framing in ([("Content-Length", str(len(body))), ("Content-Length", "5")],
                    [("Content-Length", str(len(body))), ("content-length", str(len(body)))],
                    [("Content-Length", str(len(body))), ("Transfer-Encoding", "chunked")],
                    [("Transfer-Encoding", "chunked"), ("Content-Length", str(len(body)))],
                    [("Transfer-Encoding", "chunked"), ("Transfer-Encoding", "chunked")],
                    [("Transfer-Encoding", "gzip, chunked")],
                    [("Transfer-Encoding", "xchunked")]):
        chunked = any(name == "Transfer-Encoding" for name, _ in framing)
        payload = (b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)) if chunked else body
        expect_raw(s.port, request_bytes("POST", "/v1/plans", admin + framing, payload),
                   400, "invalid_header")
    check(s.psql("SELECT count(*) FROM plans WHERE name = 'smuggled'") == "0",
          "a smuggled plan was stored")
    # One Content-Length alone still works.
    expect_raw(s.port, request_bytes("POST", "/v1/plans", admin + [
        ("Content-Length", str(len(body)))], body), 201)


@test
def nul_bytes_in_credentials_are_refused(s):
    """A NUL inside a header value once cut it short, so "Bearer <token>\\0x"
    and "<key>\\0x" authenticated. Refused with 400 wherever the header
    stands; well-formed requests, with CRLF or bare LF line ends, still pass."""
    key = authorize_key(s, "nul-bytes")
    orig = [("X-Original-Method", "GET"), ("X-Original-URI", "/items")]
    cases = [
        ("GET", "/v1/plans", [("Host", "t"), ("Authorization", b"Bearer " + ADMIN_TOKEN.encode()
                                               + b"\0junk")]),
        ("GET", "/v1/plans", [("Authorization", b"Bearer " + ADMIN_TOKEN.encode() + b"\0junk"),
                              ("Host", "t")]),
        ("GET", "/v1/plans", [("Host", "t"), ("Authorization", b"Bearer " + ADMIN_TOKEN.encode()
                                               + b"\0\0junk")]),
        ("GET", "/v1/authorize", [("Host", "t")] + orig + [("x-api-key", key.encode() + b"\0x")]),
        ("GET", "/v1/authorize", [("Host", "t"), ("x-api-key", key.encode() + b"\0x")] + orig),
        ("GET", "/v1/authorize", [("Host", "t")] + orig + [("x-api-key", key.encode() + b"\0\0x")]),
    ]
    for method, path, headers in cases:
        expect_raw(s.port, request_bytes(method, path, headers), 400, "invalid_header")
    # A NUL in the request line cut the path short the same way.
    expect_raw(s.port, b"GET /v1/plans\0junk HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer "
               + ADMIN_TOKEN.encode() + b"\r\n\r\n", 400, "invalid_uri")
    # No URI, or nothing but spaces: an answer or a close, never a crash.
    for line in (b"GET\r\n\r\n", b"GET  \r\n\r\n", b"GET  HTTP/1.1\r\nHost: t\r\n\r\n"):
        answer, _ = raw_exchange(s.port, line, 5)
        check(answer is None or 400 <= answer.status < 500, "%r: %r" % (line, answer))
    folded = request_bytes("GET", "/v1/authorize", [("Host", "t"), ("x-api-key", key),
                                                    ("X-Folded", "a\r\n b")] + orig)
    expect_raw(s.port, folded, 400, "invalid_header")
    # Two requests in one packet: each header block is judged on its own.
    twice = request_bytes("GET", "/healthz", [("Host", "t"), ("X-A", "1")]) * 2
    sock = socket.create_connection(("127.0.0.1", s.port), timeout=5)
    try:
        sock.sendall(twice)
        got = b""
        while got.count(b"HTTP/1.1 200") < 2:
            chunk = sock.recv(4096)
            check(chunk, "pipelined requests: %r" % got)
            got += chunk
    finally:
        sock.close()
    good_admin = [("Host", "t"), ("X-Padded", "a   "), ("X-Empty", ""),
                  ("Authorization", "Bearer " + ADMIN_TOKEN), ("X-Tab", "\tb")]
    good_key = [("Host", "t")] + orig + [("X-Empty", ""), ("x-api-key", key)]
    for line_end in (b"\r\n", b"\n"):
        expect_raw(s.port, request_bytes("GET", "/v1/plans?limit=1", good_admin,
                                         line_end=line_end), 200)
        expect_raw(s.port, request_bytes("GET", "/v1/authorize", good_key, line_end=line_end),
                   204)


# ---- the internal address ---------------------------------------------------

@test
def metrics_only_on_the_internal_address(s):
    """/metrics and /openapi.json answer 404 on the public port and are
    served, with /healthz, on TALLY_METRICS_ADDR; --public-metrics serves
    them on the public port as well."""
    expect(s.call("GET", "/metrics"), 404, "not_found")
    expect(s.call("GET", "/openapi.json"), 404, "not_found")
    expect(s.call("GET", "/healthz"), 200)
    r = expect(s.ops("/metrics"), 200)
    check("tally_api_requests_total" in r.raw and "tally_api_key_cache_keys" in r.raw, r.raw[:300])
    check(expect(s.ops("/openapi.json"), 200).json.get("openapi", "").startswith("3."),
          "no OpenAPI document on the internal address")
    expect(s.ops("/healthz"), 200)
    with ExtraApi(s, "api-public-metrics", ["--public-metrics"]) as api:
        r, _ = api.get("/metrics", route="/metrics")
        check(r.status == 200 and "tally_api_requests_total" in r.raw, repr(r))


# ---- HTTPS ------------------------------------------------------------------

def openssl(*args, cwd):
    cp = subprocess.run(["openssl"] + list(args), cwd=cwd, stdout=subprocess.PIPE,
                        stderr=subprocess.STDOUT, timeout=60)
    check(cp.returncode == 0, "openssl %s: %s" % (args[0], cp.stdout.decode()[-500:]))


def self_signed(directory, name):
    """A self-signed certificate for 127.0.0.1 and localhost: (cert, key)."""
    cert, key = os.path.join(directory, name + ".crt"), os.path.join(directory, name + ".key")
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-days", "2", "-subj", "/CN=localhost", "-keyout", key, "-out", cert,
            "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost", cwd=directory)
    return cert, key


def curl(args, timeout=20):
    return subprocess.run(["curl", "-sS", "--max-time", "10"] + args, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, timeout=timeout)


def api_start_error(s, env_extra):
    """(exit status, output) of an api that should refuse to start. When
    GnuTLS refuses a certificate, libmicrohttpd 0.9.75 does not free what
    GnuTLS allocated before it exits: those leaks (in the two libraries
    only) are suppressed, any other still fails."""
    suppressions = os.path.join(s.tmp, "lsan-tls.supp")
    with open(suppressions, "w") as f:
        f.write("leak:libgnutls.so\nleak:libmicrohttpd.so\n")
    env = s.api_env(env_extra)
    env["LSAN_OPTIONS"] = "suppressions=" + suppressions
    binary = os.path.join(os.path.abspath(s.args.asan_bin), "tally-api")
    cp = subprocess.run([binary], env=env, stdout=subprocess.PIPE,
                        stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, timeout=30)
    return cp.returncode, cp.stdout.decode("utf-8", "replace")


@test
def https_with_a_certificate(s):
    """TALLY_TLS_CERT_FILE and TALLY_TLS_KEY_FILE: curl --cacert reaches
    /healthz and authorize over HTTPS; plain HTTP to that port gets no
    answer. One without the other, an unreadable or invalid file, or a key
    of another certificate stops the api at start with a message naming the
    setting."""
    tls_dir = os.path.join(s.tmp, "tls")
    os.makedirs(tls_dir, exist_ok=True)
    cert, key_file = self_signed(tls_dir, "api")
    other_cert, other_key = self_signed(tls_dir, "other")
    garbage = os.path.join(tls_dir, "garbage.pem")
    with open(garbage, "w") as f:
        f.write("-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n")
    bad = [
        ({"TALLY_TLS_CERT_FILE": cert}, "TALLY_TLS_KEY_FILE"),
        ({"TALLY_TLS_KEY_FILE": key_file}, "TALLY_TLS_CERT_FILE"),
        ({"TALLY_TLS_CERT_FILE": cert, "TALLY_TLS_KEY_FILE": os.path.join(tls_dir, "none")},
         "TALLY_TLS_KEY_FILE"),
        ({"TALLY_TLS_CERT_FILE": garbage, "TALLY_TLS_KEY_FILE": key_file}, "TALLY_TLS_CERT_FILE"),
        ({"TALLY_TLS_CERT_FILE": cert, "TALLY_TLS_KEY_FILE": cert}, "TALLY_TLS_KEY_FILE"),
        ({"TALLY_TLS_CERT_FILE": cert, "TALLY_TLS_KEY_FILE": other_key}, "TALLY_TLS_CERT_FILE"),
    ]
    for extra, needle in bad:
        rc, out = api_start_error(s, extra)
        check(rc == 2 and needle in out, "%r: exit %r, %r" % (extra, rc, out[-400:]))

    key = authorize_key(s, "https")
    port = free_port()
    log_path = os.path.join(s.tmp, "api-https.log")
    log = open(log_path, "ab")
    binary = os.path.join(os.path.abspath(s.args.asan_bin), "tally-api")
    api = subprocess.Popen([binary], env=s.api_env({
        "TALLY_HTTP_ADDR": "127.0.0.1:%d" % port, "TALLY_TLS_CERT_FILE": cert,
        "TALLY_TLS_KEY_FILE": key_file}), stdout=log, stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL, start_new_session=True)
    base = "https://127.0.0.1:%d" % port
    try:
        deadline = time.monotonic() + 20
        while True:
            cp = curl(["--cacert", cert, "-o", "/dev/null", "-w", "%{http_code}",
                       base + "/healthz"])
            if cp.stdout == b"200":
                break
            check(api.poll() is None, "the https api exited: %r"
                  % open(log_path, "rb").read()[-800:])
            check(time.monotonic() < deadline, "the https api did not answer: %r" % cp.stderr)
            time.sleep(0.2)
        cp = curl(["--cacert", cert, "-o", "/dev/null", "-w", "%{http_code}",
                   "-H", "x-api-key: " + key, "-H", "X-Original-Method: GET",
                   "-H", "X-Original-URI: /items", base + "/v1/authorize"])
        check(cp.stdout == b"204", "authorize over https: %r %r" % (cp.stdout, cp.stderr))
        cp = curl(["-o", "/dev/null", "-w", "%{http_code}", base + "/healthz"])
        check(cp.returncode != 0, "an unknown certificate was accepted: %r" % cp.stdout)
        cp = curl(["-o", "/dev/null", "-w", "%{http_code}", "http://127.0.0.1:%d/healthz" % port])
        check(cp.returncode != 0 or cp.stdout != b"200", "plain HTTP answered: %r" % cp.stdout)
    finally:
        rc = terminate(api)
        log.close()
    text = open(log_path, "rb").read().decode("utf-8", "replace")
    check(rc == 0, "the https api exited %r on SIGTERM: %s" % (rc, text[-800:]))
    for p in SANITIZER_PATTERNS:
        check(p not in text, "sanitizer report in the https api's log: " + text[-1500:])


@test
def http_settings_are_checked(s):
    """The new settings refuse nonsense at start, naming the setting."""
    for extra, needle in (({"TALLY_HTTP_PER_IP_LIMIT": "-1"}, "TALLY_HTTP_PER_IP_LIMIT"),
                          ({"TALLY_HTTP_REQUEST_TIMEOUT_S": "0"}, "TALLY_HTTP_REQUEST_TIMEOUT_S"),
                          ({"TALLY_HTTP_IDLE_TIMEOUT_S": "x"}, "TALLY_HTTP_IDLE_TIMEOUT_S"),
                          ({"TALLY_METRICS_ADDR": "nowhere"}, "TALLY_METRICS_ADDR"),
                          ({"TALLY_PUBLIC_METRICS": "maybe"}, "TALLY_PUBLIC_METRICS")):
        rc, out = api_start_error(s, extra)
        check(rc == 2 and needle in out, "%r: exit %r, %r" % (extra, rc, out[-400:]))
