#!/usr/bin/env python3
"""Webhook delivery (issue #12), end to end: tally-reporter's webhook thread
and tally-api's delivery log and resend, against a real PostgreSQL
(tools/stack.sh, in a temporary directory) and local receivers (Python
http.server) with faults.

    python3 tests/webhooks/run.py --bin build/asan/bin [--keep-logs DIR]

Endpoints and alerts are written with SQL (the admin routes that create
endpoints and the collector's threshold detection are other parts of the
issue); each case gets event types of its own, so the migration's fan-out
trigger gives each endpoint only its case's alerts. Checks: signatures
verified with the README's own Python and shell recipes (both signatures
during a secret's overlap), faults (500, a timeout, refused connections, a
slow answer in time, 410), parked after a short retry window and resent
through the api, a dead endpoint not delaying a healthy one (and holding at
most its per-endpoint bound), kill -9 of the reporter mid-delivery (sent
again with the same id, never lost), link-local / metadata refused,
loopback refused without the setting and allowed with it, the metrics, and
no sanitizer report in any log. About 60 s."""

import argparse
import http.server
import json
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import urllib.error
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(REPO, "tests", "integration"))
sys.dont_write_bytecode = True

import lib  # noqa: E402
from lib import check, Failure  # noqa: E402

# Short schedule for the tests: attempts time out after 1.5 s; retries after
# 0.3, 0.6, 1, 1, 1 ... s; parked once the delays pass 3 s (attempt 5).
TIMEOUT_MS = 1500
REPORTER_ARGS = ["--webhook-timeout-ms", str(TIMEOUT_MS), "--webhook-retry-base-ms", "300",
                 "--webhook-retry-max-delay-ms", "1000", "--webhook-retry-window-s", "3",
                 "--webhook-poll-ms", "50", "--webhook-endpoint-concurrency", "2",
                 "--webhook-concurrency", "4",
                 "--report-interval-s", "3600", "--log-level", "debug"]


# ---- the README's recipes ---------------------------------------------------------


def readme_block(marker, language):
    """The fenced block of `language` that follows `marker` in README.md."""
    with open(os.path.join(REPO, "README.md")) as f:
        text = f.read()
    at = text.find(marker)
    check(at >= 0, "README.md has no %s" % marker)
    m = re.compile(r"```%s\n(.*?)```" % language, re.S).search(text, at)
    check(m is not None, "no ```%s block after %s in README.md" % (language, marker))
    return m.group(1)


def readme_python_verifier():
    namespace = {}
    exec(compile(readme_block("webhook-verify-python", "python"), "README.md", "exec"),
         namespace)
    return namespace["verify_tally_signature"]


def readme_shell_verifies(tmp, secret, signature, body):
    """Runs the README's shell recipe; True when it printed `verified`."""
    path = os.path.join(tmp, "body.json")
    with open(path, "wb") as f:
        f.write(body)
    cp = subprocess.run(["bash", "-c", readme_block("webhook-verify-shell", "sh")], cwd=tmp,
                        env=dict(os.environ, SIG=signature, SECRET=secret),
                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=30)
    return cp.returncode == 0 and cp.stdout.decode().strip() == "verified"


# ---- receivers ----------------------------------------------------------------------


class QuietServer(http.server.ThreadingHTTPServer):
    """A threading HTTP server that does not print the tracebacks of
    connections the sender closed on purpose (timeouts, cut answers)."""

    daemon_threads = True

    def handle_error(self, request, client_address):
        pass


class Receiver:
    """A local HTTP server; each endpoint is a path /<name> with a script of
    answers, one per request, the last repeated: "ok" (200), "500", "410",
    "sleep:S" (200 after S seconds), "hold" (200 once `hold` is set),
    "big:STATUS" (STATUS with a 1 MiB body), "302" (to /redirected), "never"
    (no answer; the request is held until the sender closes it).
    Records every request with the number in flight to its path."""

    def __init__(self, port=None):
        self.lock = threading.Lock()
        self.scripts = {}
        self.requests = {}
        self.in_flight = {}
        self.max_in_flight = {}
        self.hold = threading.Event()
        self.arrived = threading.Event()
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_POST(self):
                receiver.handle(self)

        self.server = QuietServer(("127.0.0.1", port or 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def url(self, name):
        return "http://127.0.0.1:%d/%s" % (self.port, name)

    def script(self, name, answers):
        with self.lock:
            self.scripts[name] = list(answers)
            self.requests.setdefault(name, [])

    def handle(self, h):
        name = h.path.strip("/")
        length = int(h.headers.get("Content-Length", "0"))
        body = h.rfile.read(length)
        with self.lock:
            seen = self.requests.setdefault(name, [])
            script = self.scripts.get(name, ["ok"])
            answer = script[min(len(seen), len(script) - 1)]
            seen.append({"at": time.monotonic(), "headers": dict(h.headers.items()),
                         "body": body})
            self.in_flight[name] = self.in_flight.get(name, 0) + 1
            self.max_in_flight[name] = max(self.max_in_flight.get(name, 0),
                                           self.in_flight[name])
        try:
            status = 200
            reply = b'{"received":true}'
            headers = {"Content-Type": "application/json"}
            if answer == "hold":
                self.arrived.set()
                self.hold.wait(30)
            elif answer.startswith("sleep:"):
                time.sleep(float(answer[6:]))
            elif answer == "never":
                # Keep the request open until the sender gives up and closes
                # it: the count in flight is then the sender's own.
                deadline = time.monotonic() + 30
                while time.monotonic() < deadline and not select.select([h.connection], [], [],
                                                                       0.05)[0]:
                    pass
                return
            elif answer.startswith("big:"):
                status, reply = int(answer[4:]), b"x" * (1 << 20)
            elif answer == "302":
                status = 302
                headers["Location"] = self.url("redirected")
            elif answer != "ok":
                status = int(answer)
            h.send_response(status)
            for name_, value in headers.items():
                h.send_header(name_, value)
            h.send_header("Content-Length", str(len(reply)))
            h.end_headers()
            h.wfile.write(reply)
        except OSError:
            pass  # the sender gave up (timeout, or killed)
        finally:
            with self.lock:
                self.in_flight[name] -= 1

    def got(self, name):
        with self.lock:
            return list(self.requests.get(name, []))

    def close(self):
        self.hold.set()
        self.server.shutdown()
        self.server.server_close()


# ---- the system ---------------------------------------------------------------------


class System:
    def __init__(self, args, tmp):
        self.args = args
        self.tmp = tmp
        self.bin = os.path.abspath(args.bin)
        self.registry = lib.Registry()
        self.stack_dir = os.path.join(tmp, "stack")
        self.db = None
        self.reporter = None
        self.reporter_metrics_port = None
        self.api_port = None
        self.logs = []
        self._n = 0

    def stack(self, command):
        cp = subprocess.run([os.path.join(REPO, "tools", "stack.sh"), command, self.stack_dir]
                            + (["--fast"] if command == "up" else []),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env=lib.clean_env({"TALLY_BIN_DIR": self.bin}),
                            stdin=subprocess.DEVNULL, timeout=180, start_new_session=True)
        if cp.returncode != 0:
            raise Failure("tools/stack.sh %s: %s" % (command, cp.stdout.decode()[-1500:]))

    def up(self):
        self.stack("up")
        env = {}
        with open(os.path.join(self.stack_dir, "env")) as f:
            for line in f:
                if line.startswith("export "):
                    name, _, value = line[len("export "):].strip().partition("=")
                    env[name] = value.strip("'")
        self.db_url = env["TALLY_DATABASE_URL"]
        lib.run([os.path.join(REPO, "tools", "migrate.sh")],
                env=lib.clean_env({"TALLY_DATABASE_URL": self.db_url}))
        self.db = lib.DB(self.db_url)

    def start_reporter(self, allow):
        self._n += 1
        self.reporter_metrics_port = lib.free_port()
        argv = [os.path.join(self.bin, "tally-reporter"), "--metrics-addr",
                "127.0.0.1:%d" % self.reporter_metrics_port,
                "--stripe-api-base", "http://127.0.0.1:%d" % lib.free_port(),
                "--webhook-allow-networks", allow] + REPORTER_ARGS
        env = lib.clean_env({"TALLY_DATABASE_URL": self.db_url,
                             "TALLY_STRIPE_API_KEY": "sk_test_webhooks_suite"})
        log = os.path.join(self.tmp, "reporter-%d.log" % self._n)
        self.logs.append(log)
        self.reporter = lib.Proc(self.registry, "reporter-%d" % self._n, argv, log, env=env)
        lib.wait_until("the reporter's webhook lock",
                       lambda: "holds the webhook sender lock" in self.reporter.log_text()
                       or not self.reporter.alive(), 30)
        check(self.reporter.alive(), "reporter exited: %s" % self.reporter.log_tail())

    def stop_reporter(self):
        rc, seconds, killed = self.reporter.terminate(timeout=20)
        check(not killed and rc == 0, "reporter stop: status %s after %.1fs (killed: %s): %s"
              % (rc, seconds, killed, self.reporter.log_tail()))

    def start_api(self):
        self.api_port = lib.free_port()
        argv = [os.path.join(self.bin, "tally-api"), "--http-addr",
                "127.0.0.1:%d" % self.api_port, "--metrics-addr",
                "127.0.0.1:%d" % lib.free_port()]
        env = lib.clean_env({"TALLY_DATABASE_URL": self.db_url,
                             "TALLY_ADMIN_TOKEN": lib.ADMIN_TOKEN,
                             "TALLY_KEY_HMAC_SECRET": lib.KEY_HMAC_SECRET})
        log = os.path.join(self.tmp, "api.log")
        self.logs.append(log)
        self.api = lib.Proc(self.registry, "api", argv, log, env=env)
        lib.wait_until("tally-api /readyz", lambda: self.api_call("GET", "/readyz")[0] == 200
                       if self.api.alive() else True, 30)
        check(self.api.alive(), "api exited: %s" % self.api.log_tail())

    def api_call(self, method, path, body=None, admin=True):
        data = json.dumps(body).encode() if isinstance(body, dict) else body
        req = urllib.request.Request("http://127.0.0.1:%d%s" % (self.api_port, path),
                                     data=data, method=method)
        if admin:
            req.add_header("Authorization", "Bearer " + lib.ADMIN_TOKEN)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=15) as r:
                return r.status, json.loads(r.read() or b"null")
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"null")
        except OSError:
            return 0, None

    def metrics(self):
        with urllib.request.urlopen("http://127.0.0.1:%d/metrics"
                                    % self.reporter_metrics_port, timeout=10) as r:
            return lib.parse_metrics(r.read().decode())

    # ---- rows ----

    def endpoint(self, name, url, types, secret=None, previous=None, previous_valid_s=None):
        prev_expiry = ("now() + make_interval(secs => %d)" % previous_valid_s
                       if previous_valid_s is not None else "NULL")
        self.db.execute(
            "INSERT INTO webhook_endpoints (id, url, event_types, secret, previous_secret, "
            "previous_secret_expires_at) VALUES (%s, %s, ARRAY[%s], %s, %s, %s)"
            % (lib.sql_literal(name), lib.sql_literal(url),
               ", ".join(lib.sql_literal(t) for t in types),
               lib.sql_literal(secret or "whsec_" + name),
               lib.sql_literal(previous) if previous else "NULL", prev_expiry))

    def alert(self, key, type_, threshold=80, used=800, limit=1000):
        return self.db.scalar(
            "INSERT INTO quota_alerts (type, key_id, customer_id, plan_id, period, "
            "period_start, period_end, threshold, quota_limit, used, enforcement) VALUES "
            "(%s, %s, 'cust_' || %s, 'pro', 'MONTH', '2026-11-01T00:00:00Z', "
            "'2026-12-01T00:00:00Z', %d, %d, %d, 'hard') RETURNING event_id"
            % (lib.sql_literal(type_), lib.sql_literal(key), lib.sql_literal(key), threshold,
               limit, used))

    def alerts(self, prefix, type_, count):
        """`count` alerts in one statement; their event ids in id order."""
        rows = self.db.query(
            "WITH new AS (INSERT INTO quota_alerts (type, key_id, customer_id, plan_id, period, "
            "period_start, period_end, threshold, quota_limit, used, enforcement) "
            "SELECT %s, %s || i, NULL, 'pro', 'MONTH', '2026-11-01T00:00:00Z', "
            "'2026-12-01T00:00:00Z', 80, 1000, 800, 'hard' FROM generate_series(0, %d) AS i "
            "RETURNING id, event_id) SELECT event_id FROM new ORDER BY id"
            % (lib.sql_literal(type_), lib.sql_literal(prefix), count - 1))
        return [r[0] for r in rows]

    def delivery(self, endpoint, event_id):
        rows = self.db.query(
            "SELECT d.status, d.attempts, coalesce(d.last_http_status, 0), "
            "coalesce(d.last_error, '') FROM webhook_deliveries d JOIN quota_alerts a "
            "ON a.id = d.alert_id WHERE d.endpoint_id = %s AND a.event_id = %s"
            % (lib.sql_literal(endpoint), lib.sql_literal(event_id)))
        check(len(rows) == 1, "no delivery of %s to %s" % (event_id, endpoint))
        r = rows[0]
        return {"status": r[0], "attempts": int(r[1]), "http": int(r[2]), "error": r[3]}

    def attempt_errors(self, endpoint):
        return [r[0] for r in self.db.query(
            "SELECT coalesce(error, '-') FROM webhook_attempts WHERE endpoint_id = %s ORDER BY id"
            % lib.sql_literal(endpoint))]

    def wait_status(self, endpoint, event_id, status, timeout):
        return lib.wait_until(
            "%s to %s %s" % (event_id, endpoint, status),
            lambda: self.delivery(endpoint, event_id)["status"] == status, timeout,
            on_timeout=lambda: "delivery %s; reporter: %s"
            % (self.delivery(endpoint, event_id), self.reporter.log_tail(8)))

    def check_sanitizers(self):
        for log in self.logs:
            with open(log, "rb") as f:
                report = lib.sanitizer_report(f.read().decode("utf-8", "replace"))
            check(report is None, "%s: %s" % (os.path.basename(log), report))

    def check_no_secrets_logged(self):
        """Every endpoint's signing secrets start with whsec_: none in any log."""
        for log in self.logs:
            with open(log, "rb") as f:
                check(b"whsec_" not in f.read(), "%s shows a signing secret"
                      % os.path.basename(log))


def event_ids(requests):
    return [json.loads(r["body"])["id"] for r in requests]


# ---- phases ---------------------------------------------------------------------------


def phase_addresses_refused(sys_, rx, cases):
    """Without TALLY_WEBHOOK_ALLOW_NETWORKS: the loopback receiver and the
    metadata address are both refused, nothing reaches the receiver."""
    rx.script("loop", ["ok"])
    sys_.endpoint("loop", rx.url("loop"), ["test.loop"])
    sys_.endpoint("meta", "http://169.254.169.254/latest/meta-data/", ["test.meta"])
    cases["loop"] = sys_.alert("k-loop", "test.loop")
    cases["meta"] = sys_.alert("k-meta", "test.meta")
    sys_.start_reporter(allow="")
    for name, word in (("loop", "loopback"), ("meta", "metadata")):
        lib.wait_until("a refused attempt to %s" % name,
                       lambda: any("refused: %s" % word in e
                                   for e in sys_.attempt_errors(name)), 20,
                       on_timeout=lambda: str(sys_.attempt_errors(name)))
    check(rx.got("loop") == [], "the loopback receiver was reached without the setting")
    sys_.stop_reporter()


def phase_setup(sys_, rx, cases):
    """Endpoints and alerts of every case of the main phase."""
    scripts = {"sig": ["ok"], "flaky": ["500", "500", "ok"],
               "late": ["sleep:%.1f" % (TIMEOUT_MS / 1000 + 1.5), "ok"],
               "slow": ["sleep:0.8"], "gone": ["410"], "rot": ["ok"], "rotx": ["ok"],
               "dead": ["never"], "healthy": ["ok"], "big": ["big:500", "ok"],
               "moved": ["302", "ok"]}
    for name, script in scripts.items():
        rx.script(name, script)
    sys_.endpoint("sig", rx.url("sig"), ["quota.threshold_reached"], secret="whsec_sig")
    for name in ("flaky", "late", "slow", "gone", "big", "moved"):
        sys_.endpoint(name, rx.url(name), ["test." + name])
    sys_.endpoint("rot", rx.url("rot"), ["test.rot"], secret="whsec_new",
                  previous="whsec_old", previous_valid_s=3600)
    sys_.endpoint("rotx", rx.url("rotx"), ["test.rotx"], secret="whsec_newx",
                  previous="whsec_oldx", previous_valid_s=-60)
    # Nothing listens on this port (bound and released): connections refused.
    cases["refused_port"] = lib.free_port()
    sys_.endpoint("refused", "http://127.0.0.1:%d/hook" % cases["refused_port"],
                  ["test.refused"])
    sys_.endpoint("dead", rx.url("dead"), ["test.dead"])
    sys_.endpoint("healthy", rx.url("healthy"), ["test.burst"])
    cases["sig"] = sys_.alert("k-sig", "quota.threshold_reached", threshold=80, used=801)
    for name in ("flaky", "late", "slow", "gone", "big", "moved", "rot", "rotx", "refused"):
        cases[name] = sys_.alert("k-" + name, "test." + name)


def check_signature_case(sys_, rx, cases, verify):
    sys_.wait_status("sig", cases["sig"], "delivered", 20)
    got = rx.got("sig")
    check(len(got) == 1, "sig: %d requests, want 1" % len(got))
    r = got[0]
    body = json.loads(r["body"])
    check(body["id"] == cases["sig"] and r["headers"].get("Tally-Event-Id") == cases["sig"],
          "sig: id %s / header %s, want %s" % (body["id"], r["headers"].get("Tally-Event-Id"),
                                                cases["sig"]))
    want = {"keyId": "k-sig", "customerId": "cust_k-sig", "planId": "pro", "period": "MONTH",
            "periodStart": "2026-11-01T00:00:00Z", "periodEnd": "2026-12-01T00:00:00Z",
            "threshold": 80, "used": 801, "limit": 1000, "percent": 80.1,
            "enforcement": "hard"}
    check(body["type"] == "quota.threshold_reached" and body["data"] == want
          and isinstance(body["created"], int),
          "sig: body %s" % r["body"][:400])
    header = r["headers"].get("Tally-Signature", "")
    check(verify("whsec_sig", header, r["body"]), "sig: README python recipe refused %s" % header)
    check(not verify("whsec_other", header, r["body"]), "sig: a wrong secret verified")
    check(not verify("whsec_sig", header, r["body"] + b" "), "sig: a changed body verified")
    t = int(header.split(",")[0][2:])
    check(not verify("whsec_sig", header, r["body"], now=t + 301),
          "sig: verified past the 5-minute tolerance")
    check(readme_shell_verifies(sys_.tmp, "whsec_sig", header, r["body"]),
          "sig: README shell recipe refused %s" % header)
    check(not readme_shell_verifies(sys_.tmp, "whsec_other", header, r["body"]),
          "sig: README shell recipe took a wrong secret")


def check_fault_cases(sys_, rx, cases):
    sys_.wait_status("flaky", cases["flaky"], "delivered", 20)
    got = rx.got("flaky")
    check(len(got) == 3 and set(event_ids(got)) == {cases["flaky"]},
          "flaky: %d requests with ids %s" % (len(got), set(event_ids(got))))
    d = sys_.delivery("flaky", cases["flaky"])
    check(d["attempts"] == 3 and d["http"] == 200, "flaky: %s" % d)
    errors = sys_.attempt_errors("flaky")
    check(errors == ['HTTP 500: {"received":true}'] * 2 + ["-"],
          "flaky: attempt errors %s" % errors)

    sys_.wait_status("late", cases["late"], "delivered", 25)
    errors = sys_.attempt_errors("late")
    check(len(errors) == 2 and "timed out" in errors[0].lower() and errors[1] == "-",
          "late: attempt errors %s" % errors)
    check(set(event_ids(rx.got("late"))) == {cases["late"]}, "late: ids changed")

    sys_.wait_status("slow", cases["slow"], "delivered", 20)
    d = sys_.delivery("slow", cases["slow"])
    check(d["attempts"] == 1, "slow but in time: %s" % d)

    # A 1 MiB answer: read no further than 64 KiB, 200 bytes of it logged.
    sys_.wait_status("big", cases["big"], "delivered", 20)
    errors = sys_.attempt_errors("big")
    check(len(errors) == 2 and errors[0] == "HTTP 500: " + "x" * 200 and errors[1] == "-",
          "big answer: attempt errors %s" % [e[:60] for e in errors])
    # A redirect is a failed attempt, never followed.
    sys_.wait_status("moved", cases["moved"], "delivered", 20)
    errors = sys_.attempt_errors("moved")
    check(len(errors) == 2 and errors[0].startswith("HTTP 302") and rx.got("redirected") == [],
          "redirect: attempt errors %s, followed %d times" % (errors, len(rx.got("redirected"))))

    sys_.wait_status("gone", cases["gone"], "parked", 20)
    d = sys_.delivery("gone", cases["gone"])
    check(d["attempts"] == 1 and d["http"] == 410, "410: %s" % d)
    check(len(rx.got("gone")) == 1, "410: retried")
    check(sys_.db.scalar("SELECT enabled FROM webhook_endpoints WHERE id = 'gone'") == "t",
          "410 disabled the endpoint")


def check_rotation(sys_, rx, cases, verify):
    for name, new, old, both in (("rot", "whsec_new", "whsec_old", True),
                                 ("rotx", "whsec_newx", "whsec_oldx", False)):
        sys_.wait_status(name, cases[name], "delivered", 20)
        r = rx.got(name)[0]
        header = r["headers"].get("Tally-Signature", "")
        check(header.count("v1=") == (2 if both else 1), "%s: signature %s" % (name, header))
        check(verify(new, header, r["body"]), "%s: the new secret did not verify" % name)
        check(verify(old, header, r["body"]) == both,
              "%s: the previous secret %s" % (name, "did not verify" if both
                                              else "verified after it expired"))


def check_refused_parked_and_resend(sys_, rx, cases):
    sys_.wait_status("refused", cases["refused"], "parked", 30)
    d = sys_.delivery("refused", cases["refused"])
    errors = sys_.attempt_errors("refused")
    # 0.3 + 0.6 + 1 + 1 = 2.9 s <= 3 s; + 1 = 3.9 s > 3 s: parked after attempt 5
    check(d["attempts"] == 5 and len(errors) == 5 and d["http"] == 0
          and all("connect" in e.lower() for e in errors),
          "refused: %s, attempt errors %s" % (d, errors))
    # The resend, through the api, once something listens there.
    late_rx = Receiver(port=cases["refused_port"])
    try:
        late_rx.script("hook", ["ok"])
        status, body = sys_.api_call("POST", "/v1/webhooks/refused/resend",
                                     {"eventId": cases["refused"]})
        check(status == 202 and body["status"] == "pending" and body["attempts"] == 0,
              "resend: %s %s" % (status, body))
        with open(os.path.join(REPO, "docs", "openapi.json")) as f:
            documented = json.load(f)["components"]["schemas"]["WebhookResendQueued"]
        check(set(body) == set(documented["properties"]) == set(documented["required"]),
              "resend answer fields %s" % sorted(body))
        sys_.wait_status("refused", cases["refused"], "delivered", 20)
        check(event_ids(late_rx.got("hook")) == [cases["refused"]],
              "resend: received %s" % event_ids(late_rx.got("hook")))
    finally:
        late_rx.close()
    status, body = sys_.api_call("POST", "/v1/webhooks/refused/resend", {"eventId": "evt_nope"})
    check(status == 404, "resend of an unknown event: %s %s" % (status, body))
    status, body = sys_.api_call("POST", "/v1/webhooks/refused/resend", {"event": "x"})
    check(status == 400 and body["error"]["code"] == "invalid_body",
          "resend with a bad body: %s %s" % (status, body))
    status, _ = sys_.api_call("POST", "/v1/webhooks/refused/resend",
                              {"eventId": cases["refused"]}, admin=False)
    check(status == 401, "resend without the admin token: %s" % status)


def check_delivery_log(sys_, cases):
    status, page = sys_.api_call("GET", "/v1/webhooks/flaky/deliveries")
    check(status == 200 and len(page["items"]) == 1 and "position" not in page,
          "log: %s %s" % (status, page))
    item = page["items"][0]
    check(item["eventId"] == cases["flaky"] and item["status"] == "delivered"
          and item["attempts"] == 3 and item["lastHttpStatus"] == 200
          and item["nextAttemptAt"] is None and item["deliveredAt"] is not None,
          "log item: %s" % item)
    check([a["httpStatus"] for a in item["attemptLog"]] == [200, 500, 500],
          "log attempts (newest first): %s" % item["attemptLog"])
    # The answers carry exactly what docs/openapi.json says.
    with open(os.path.join(REPO, "docs", "openapi.json")) as f:
        schemas = json.load(f)["components"]["schemas"]
    for name, value in (("WebhookDelivery", item), ("WebhookAttempt", item["attemptLog"][0])):
        check(set(value) == set(schemas[name]["properties"]) >= set(schemas[name]["required"]),
              "%s fields %s, documented %s" % (name, sorted(value),
                                               sorted(schemas[name]["properties"])))
    status, page = sys_.api_call("GET", "/v1/webhooks/refused/deliveries?status=delivered")
    check(status == 200 and [i["eventId"] for i in page["items"]] == [cases["refused"]],
          "log by status: %s %s" % (status, page))
    # paging over the burst's ten deliveries, newest first
    seen, path = [], "/v1/webhooks/healthy/deliveries?limit=4"
    for _ in range(5):
        status, page = sys_.api_call("GET", path)
        check(status == 200, "log page: %s %s" % (status, page))
        seen += [i["eventId"] for i in page["items"]]
        if "position" not in page:
            break
        path = "/v1/webhooks/healthy/deliveries?limit=4&position=" + page["position"]
    check(seen == list(reversed(cases["burst"])), "log pages: %s" % seen)
    status, _ = sys_.api_call("GET", "/v1/webhooks/nope/deliveries")
    check(status == 404, "log of an unknown endpoint: %s" % status)
    status, _ = sys_.api_call("GET", "/v1/webhooks/flaky/deliveries?status=lost")
    check(status == 400, "log with a bad status: %s" % status)
    status, _ = sys_.api_call("GET", "/v1/webhooks/flaky/deliveries", admin=False)
    check(status == 401, "log without the admin token: %s" % status)


def check_dead_does_not_delay_healthy(sys_, rx, cases):
    """Twelve alerts for a dead endpoint (it never answers; the sender gives
    up after the 1.5 s timeout), then ten for a healthy one. The sender has
    4 slots: were the dead endpoint allowed all of them, the healthy one
    would get nothing until each of the dead one's twelve older deliveries
    had been tried (three rounds of timeouts). With 2 per endpoint the
    healthy one is served at once: its first delivery arrives before the
    dead endpoint has had three more attempts than when the healthy alerts
    were written (it gets two per 1.5 s), and the dead one never has more
    than two connections open."""
    cases["dead"] = sys_.alerts("k-dead-", "test.dead", 12)
    lib.wait_until("the first attempts to the dead endpoint",
                   lambda: len(rx.got("dead")) >= 2, 20)
    t0 = time.monotonic()
    cases["burst"] = sys_.alerts("k-burst-", "test.burst", 10)
    dead_at_burst = len(rx.got("dead"))
    lib.wait_until("the healthy endpoint's ten deliveries",
                   lambda: len(set(event_ids(rx.got("healthy")))) == 10, 30)
    took = time.monotonic() - t0
    first_healthy = rx.got("healthy")[0]["at"]
    dead_before = sum(1 for r in rx.got("dead") if r["at"] < first_healthy)
    check(dead_before < dead_at_burst + 3, "the healthy endpoint's first delivery came after "
          "%d attempts to the dead one (%d when its alerts were written)"
          % (dead_before, dead_at_burst))
    lib.wait_until("more attempts to the dead endpoint", lambda: len(rx.got("dead")) >= 6, 20)
    check(rx.max_in_flight.get("dead", 0) <= 2,
          "the dead endpoint had %d connections open at once (bound 2)"
          % rx.max_in_flight["dead"])
    return took


def check_kill_mid_delivery(sys_, rx, cases):
    """kill -9 while the receiver holds the request: after the restart the
    same event id comes again and is delivered."""
    rx.script("kill", ["hold", "ok"])
    sys_.endpoint("kill", rx.url("kill"), ["test.kill"])
    cases["kill"] = sys_.alert("k-kill", "test.kill")
    check(rx.arrived.wait(20), "the held request never arrived")
    sys_.reporter.kill()
    rx.hold.set()
    check(sys_.delivery("kill", cases["kill"])["status"] == "pending",
          "kill: the delivery was recorded although the sender died first")
    sys_.start_reporter(allow="loopback")
    sys_.wait_status("kill", cases["kill"], "delivered", 20)
    ids = event_ids(rx.got("kill"))
    check(len(ids) == 2 and set(ids) == {cases["kill"]}, "kill: received %s" % ids)


def check_metrics(sys_):
    m = lib.wait_until("the gauges", lambda: (lambda v: v if "tally_webhook_deliveries_parked"
                                                  in v else None)(sys_.metrics()), 10)
    delivered = m.get('tally_webhook_deliveries_total{result="delivered"}', 0)
    failed = m.get('tally_webhook_deliveries_total{result="failed"}', 0)
    count = m.get("tally_webhook_delivery_seconds_count", 0)
    check(delivered >= 1 and failed >= 1 and count >= delivered + failed
          and m.get("tally_webhook_sender_active") == 1
          and "tally_webhook_deliveries_pending" in m,
          "metrics: delivered %s failed %s count %s" % (delivered, failed, count))
    with urllib.request.urlopen("http://127.0.0.1:%d/healthz" % sys_.reporter_metrics_port,
                                timeout=10) as r:
        check(r.status == 200, "reporter /healthz: %d" % r.status)
    # the gauge is read every 5 s: wait for it to show the 410's parked delivery
    lib.wait_until("the parked gauge",
                   lambda: sys_.metrics().get("tally_webhook_deliveries_parked", 0) >= 1, 12)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bin", default=os.path.join(REPO, "build", "asan", "bin"))
    ap.add_argument("--keep-logs", help="copy the logs here")
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="tally-webhooks-")
    sys_ = System(args, tmp)
    rx = None
    t_start = time.monotonic()
    results = []

    def step(name, fn, *a):
        t0 = time.monotonic()
        try:
            out = fn(*a)
            results.append(("PASS", name, time.monotonic() - t0, ""))
            print("PASS %-36s %5.1fs" % (name, time.monotonic() - t0), flush=True)
            return out
        except Exception as e:  # noqa: BLE001 - every failure is reported
            detail = str(e) if isinstance(e, Failure) else traceback.format_exc()
            results.append(("FAIL", name, time.monotonic() - t0, detail))
            print("FAIL %-36s %5.1fs %s" % (name, time.monotonic() - t0, detail), flush=True)
            return None

    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        sys_.up()
        rx = Receiver()
        verify = readme_python_verifier()
        cases = {}
        step("addresses refused by default", phase_addresses_refused, sys_, rx, cases)
        phase_setup(sys_, rx, cases)
        sys_.start_reporter(allow="loopback")
        sys_.start_api()
        step("loopback allowed by the setting", lambda: (
            sys_.wait_status("loop", cases["loop"], "delivered", 20),
            check(set(event_ids(rx.got("loop"))) == {cases["loop"]}, "loop: wrong id")))
        step("metadata still refused", lambda: check(
            sys_.delivery("meta", cases["meta"])["status"] in ("pending", "parked")
            and all("refused: metadata" in e for e in sys_.attempt_errors("meta")),
            "meta: %s" % sys_.attempt_errors("meta")))
        step("signature and body", check_signature_case, sys_, rx, cases, verify)
        step("faults: 500, timeout, slow, big, 3xx, 410", check_fault_cases, sys_, rx, cases)
        step("rotation overlap", check_rotation, sys_, rx, cases, verify)
        took = step("dead endpoint delays no other", check_dead_does_not_delay_healthy, sys_,
                    rx, cases)
        step("parked, then resent", check_refused_parked_and_resend, sys_, rx, cases)
        step("delivery log", check_delivery_log, sys_, cases)
        step("metrics", check_metrics, sys_)
        step("kill -9 mid-delivery", check_kill_mid_delivery, sys_, rx, cases)
        step("clean stop", sys_.stop_reporter)
        sys_.api.terminate()
        step("no sanitizer report", sys_.check_sanitizers)
        step("no secret in a log", sys_.check_no_secrets_logged)
        if took is not None:
            print("healthy endpoint: 10 deliveries in %.2f s beside a dead one" % took)
    except KeyboardInterrupt:
        results.append(("FAIL", "interrupted", 0, ""))
    except Failure as e:
        results.append(("FAIL", "setup", 0, str(e)))
        print("FAIL setup: %s" % e)
    finally:
        sys_.registry.stop_all()
        if rx:
            rx.close()
        try:
            sys_.stack("down")
        except Exception as e:  # noqa: BLE001
            print("stack down: %s" % e)
        if args.keep_logs:
            os.makedirs(args.keep_logs, exist_ok=True)
            for log in sys_.logs:
                shutil.copy(log, args.keep_logs)
        shutil.rmtree(tmp, ignore_errors=True)
    failed = [r for r in results if r[0] == "FAIL"]
    print("%d passed, %d failed in %.0f s" % (len(results) - len(failed), len(failed),
                                            time.monotonic() - t_start))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
