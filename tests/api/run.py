#!/usr/bin/env python3
"""Integration tests of tally-api against a real PostgreSQL.

    python3 tests/api/run.py [--asan-bin build/asan/bin] [--only NAME[,NAME...]] [--keep-logs DIR]

Starts its own throwaway stack (tools/stack.sh up DIR --fast, tools/migrate.sh),
runs the sanitized tally-api on a free port, drives every route and error
(including isolation cases, as an attacker would try them), writes usage rows
directly with psql for the usage, quota and authorize tests, and checks that
every answer the server gave is documented in docs/openapi.json. Prints one
line per test and then "N passed, N failed"; exits 1 if any failed. Whatever
happens, the api and the stack are stopped and the temporary directory removed.

Python 3 standard library only."""

import argparse
import datetime
import hashlib
import http.client
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ADMIN_TOKEN = "test-admin-token-5d1c9a0e7f"
KEY_HMAC_SECRET = "test-key-hmac-secret-3b9e51c07da24f68"  # TALLY_KEY_HMAC_SECRET
REFRESH_MS = 300
# The process, port and sanitizer helpers are the integration suite's.
sys.path.insert(0, os.path.join(REPO, "tests", "integration"))
from lib import (SANITIZER_PATTERNS, Failure, check, clean_env, free_port,  # noqa: E402
                 keepalive_request)


def utc(text):
    return datetime.datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(
        tzinfo=datetime.timezone.utc)


def iso(dt):
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + "%03dZ" % (dt.microsecond // 1000)


def terminate(proc, timeout=15):
    """SIGTERM, then SIGKILL after `timeout` s; returns the exit status."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


class Answer:
    def __init__(self, status, headers, body):
        self.status = status
        self.headers = headers
        self.raw = body
        try:
            self.json = json.loads(body) if body else None
        except ValueError:
            self.json = None

    def header(self, name):
        for k, v in self.headers:
            if k.lower() == name.lower():
                return v
        return None

    def error_code(self):
        if isinstance(self.json, dict) and isinstance(self.json.get("error"), dict):
            return self.json["error"].get("code")
        return None

    def __repr__(self):
        return "HTTP %d %s" % (self.status, self.raw[:300])


class Suite:
    def __init__(self, args, tmp):
        self.args = args
        self.tmp = tmp
        self.stack_dir = os.path.join(tmp, "stack")
        self.db_url = None
        self.api = None
        self.api_log = os.path.join(tmp, "api.log")
        self.port = None
        self.metrics_port = None  # the api's internal address (TALLY_METRICS_ADDR)
        self.conn = None
        self.seen = set()  # (method, route template, status) answered by the server

    # ---- stack ----

    def stack(self, command):
        env = clean_env({"TALLY_BIN_DIR": os.path.join(REPO, "build", "bin")})
        cp = subprocess.run([os.path.join(REPO, "tools", "stack.sh"), command, self.stack_dir]
                            + (["--fast"] if command == "up" else []),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
                            stdin=subprocess.DEVNULL, timeout=180, start_new_session=True)
        if cp.returncode != 0:
            raise Failure("tools/stack.sh %s: %s" % (command, cp.stdout.decode()[-1500:]))

    def up(self):
        self.stack("up")
        with open(os.path.join(self.stack_dir, "env")) as f:
            for line in f:
                if line.startswith("export TALLY_DATABASE_URL="):
                    self.db_url = line.split("=", 1)[1].strip().strip("'")
        cp = subprocess.run([os.path.join(REPO, "tools", "migrate.sh")],
                            env=clean_env({"TALLY_DATABASE_URL": self.db_url}),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=120)
        if cp.returncode != 0:
            raise Failure("migrate: " + cp.stdout.decode()[-1500:])

    def down(self):
        try:
            self.stack("down")
        except Exception as e:  # noqa: BLE001 - teardown must go on
            print("warning: stack down: %s" % e)

    def psql(self, sql):
        cp = subprocess.run(["psql", self.db_url, "-X", "-q", "-t", "-A", "-v", "ON_ERROR_STOP=1",
                             "-c", sql], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            timeout=60)
        if cp.returncode != 0:
            raise Failure("psql: %s" % cp.stderr.decode())
        return cp.stdout.decode().strip()

    # ---- the api ----

    def api_env(self, extra=None):
        """Each api gets its own free metrics port unless `extra` names one."""
        env = clean_env({"TALLY_DATABASE_URL": self.db_url, "TALLY_ADMIN_TOKEN": ADMIN_TOKEN,
                         "TALLY_KEY_HMAC_SECRET": KEY_HMAC_SECRET,
                         "TALLY_HTTP_ADDR": "127.0.0.1:%d" % self.port,
                         "TALLY_METRICS_ADDR": "127.0.0.1:%d" % free_port(),
                         "TALLY_LOG_LEVEL": "debug"})
        if extra:
            env.update(extra)
        return env

    def start_api(self):
        self.port = free_port()
        self.metrics_port = free_port()
        binary = os.path.join(os.path.abspath(self.args.asan_bin), "tally-api")
        self._log = open(self.api_log, "ab")
        self.api = subprocess.Popen(
            [binary, "--key-refresh-ms", str(REFRESH_MS), "--openapi-file",
             os.path.join(REPO, "docs", "openapi.json")],
            env=self.api_env({"TALLY_METRICS_ADDR": "127.0.0.1:%d" % self.metrics_port}),
            stdout=self._log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.api.poll() is not None:
                raise Failure("tally-api exited at start: " + self.log_text()[-2000:])
            try:
                if self.request("GET", "/healthz", record=False).status == 200:
                    return
            except OSError:
                time.sleep(0.1)
        raise Failure("tally-api did not answer /healthz within 20 s")

    def stop_api(self):
        """SIGTERM; returns (exit status, seconds)."""
        if self.api is None:
            return None, 0
        t0 = time.monotonic()
        rc = terminate(self.api)
        self._log.close()
        return rc, time.monotonic() - t0

    def log_text(self):
        try:
            with open(self.api_log, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def request(self, method, path, headers=None, body=None, admin=False, key=None, record=True,
                route=None):
        hdrs = dict(headers or {})
        if admin:
            hdrs["Authorization"] = "Bearer " + ADMIN_TOKEN
        if key is not None:
            hdrs["x-api-key"] = key
        if isinstance(body, (dict, list)):
            body = json.dumps(body)
        if isinstance(body, str):
            body = body.encode()
        answer = Answer(*keepalive_request(self, self.port, method, path, body, hdrs, 30))
        if record and route is not None:
            self.seen.add((method, route, answer.status))
        return answer

    def ops(self, path):
        """GET on the api's internal address (/metrics, /openapi.json, /healthz)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.metrics_port, timeout=30)
        try:
            conn.request("GET", path)
            res = conn.getresponse()
            return Answer(res.status, res.getheaders(), res.read().decode("utf-8", "replace"))
        finally:
            conn.close()

    # Route-aware shorthands, so that every answer is checked against the
    # OpenAPI document at the end.
    def call(self, method, route, ids=None, query="", **kw):
        path = route
        for name, value in (ids or {}).items():
            path = path.replace("{" + name + "}", value)
        return self.request(method, path + query, route=route, **kw)


def expect(answer, status, code=None):
    check(answer.status == status, "expected %d, got %r" % (status, answer))
    if code is not None:
        check(answer.error_code() == code, "expected error code %s, got %r" % (code, answer))
    if status >= 400 and answer.raw:
        check(answer.error_code() is not None and
              isinstance(answer.json["error"].get("message"), str),
              "error body not in the contract's shape: %r" % answer)
    return answer


# ---------------------------------------------------------------------------
# Tests. Each takes the suite; they run in this order and may build on
# earlier state only through `state`.

state = {}
TESTS = []


def test(fn):
    TESTS.append(fn)
    return fn


def make_plan(s, **fields):
    body = {"name": "plan"}
    body.update(fields)
    return expect(s.call("POST", "/v1/plans", admin=True, body=body), 201).json


def make_key(s, **fields):
    return expect(s.call("POST", "/v1/keys", admin=True, body=fields), 201).json


@test
def settings_and_help(s):
    binary = os.path.join(os.path.abspath(s.args.asan_bin), "tally-api")
    cp = subprocess.run([binary, "--help"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                        env=clean_env(), timeout=30)
    check(cp.returncode == 0 and b"TALLY_ADMIN_TOKEN" in cp.stdout, "--help: %r" % cp.stdout[:200])
    check(ADMIN_TOKEN.encode() not in cp.stdout, "--help shows the token")
    cases = [
        ({"TALLY_ADMIN_TOKEN": ""}, "TALLY_ADMIN_TOKEN"),
        ({"TALLY_ADMIN_TOKEN": "short"}, "TALLY_ADMIN_TOKEN"),
        ({"TALLY_ADMN_TOKEN": "x"}, "TALLY_ADMN_TOKEN"),
        ({"TALLY_HTTP_ADDR": "nonsense"}, "TALLY_HTTP_ADDR"),
        ({"TALLY_LOG_LEVEL": "loud"}, "TALLY_LOG_LEVEL"),
    ]
    for extra, needle in cases:
        env = s.api_env(extra)
        if extra.get("TALLY_ADMIN_TOKEN") == "":
            del env["TALLY_ADMIN_TOKEN"]
        cp = subprocess.run([binary], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
                            timeout=30)
        out = cp.stdout.decode()
        check(cp.returncode == 2 and needle in out, "%r: exit %d, %r" % (extra, cp.returncode, out))
        check(ADMIN_TOKEN not in out, "an error message shows the admin token")


@test
def operations_endpoints(s):
    expect(s.call("GET", "/healthz"), 200)
    r = expect(s.call("GET", "/readyz"), 200)
    check(r.json == {"status": "ok"}, repr(r))
    r = expect(s.ops("/metrics"), 200)
    check("tally_api_requests_total{route=\"GET /readyz\",status=\"200\"}" in r.raw, r.raw[:400])
    check("tally_api_request_duration_seconds_bucket" in r.raw, "no latency histogram")
    check("tally_api_key_cache_keys" in r.raw, "no cache metrics")
    r = expect(s.ops("/openapi.json"), 200)
    check(r.json.get("openapi", "").startswith("3."), "not an OpenAPI 3 document")


@test
def routing_errors(s):
    expect(s.call("GET", "/nope"), 404, "not_found")
    expect(s.request("GET", "/v1/plans/", admin=True), 404, "not_found")
    expect(s.request("GET", "/v1/plans//x", admin=True), 404, "not_found")
    expect(s.request("GET", "/v1/plans/a%20b", admin=True), 404, "not_found")
    expect(s.request("GET", "/v1/plans/" + "x" * 129, admin=True), 404, "not_found")
    r = expect(s.call("PUT", "/v1/plans", admin=True), 405, "method_not_allowed")
    check("POST" in (r.header("Allow") or ""), "no Allow header: %r" % r.headers)
    expect(s.call("POST", "/v1/authorize"), 405)
    expect(s.call("GET", "/v1/keys/{id}/plan", ids={"id": "key_x"}, admin=True), 405)
    expect(s.call("DELETE", "/healthz"), 405)


@test
def admin_authentication(s):
    bad = [
        {},
        {"Authorization": "Bearer"},
        {"Authorization": "Bearer "},
        {"Authorization": "Bearer wrong-token-of-some-length"},
        {"Authorization": "Bearer " + ADMIN_TOKEN + "x"},
        {"Authorization": "Bearer " + ADMIN_TOKEN[:-1]},
        {"Authorization": "Basic " + ADMIN_TOKEN},
        {"Authorization": ADMIN_TOKEN},
        {"x-api-key": ADMIN_TOKEN},
        {"Authorization": "Bearer " + "A" * 8000},
    ]
    for headers in bad:
        for method, route in (("GET", "/v1/plans"), ("POST", "/v1/keys"),
                              ("GET", "/v1/keys/{id}/usage")):
            r = s.call(method, route, ids={"id": "key_x"}, headers=headers, body={"name": "x"}
                       if method == "POST" else None)
            expect(r, 401, "unauthorized")
    r = s.request("GET", "/v1/plans", headers={"Authorization": "Bearer " + "A" * 40000})
    check(400 <= r.status < 500, "huge header: %r" % r)
    check(ADMIN_TOKEN not in s.log_text(), "the admin token appears in the log")


@test
def plan_create_and_read(s):
    p = make_plan(s, name="Pro", description="for pros", quota={"limit": 1000, "period": "MONTH",
                                                               "offset": 100},
                  throttle={"rateLimit": 12.5, "burstLimit": 20},
                  methodThrottles={"/items/GET": {"rateLimit": 1, "burstLimit": 2}},
                  stripeMeterEventName="api_requests")
    check(re.fullmatch(r"pln_[A-Za-z0-9]{20}", p["id"]), "id %r" % p["id"])
    check(p["quota"] == {"limit": 1000, "period": "MONTH", "offset": 100, "enforcement": "hard",
                         "ceilingPercent": None}, repr(p))
    check(p["throttle"] == {"rateLimit": 12.5, "burstLimit": 20}, repr(p))
    check(p["methodThrottles"] == {"/items/GET": {"rateLimit": 1, "burstLimit": 2}}, repr(p))
    utc(p["createdAt"]), utc(p["updatedAt"])
    got = expect(s.call("GET", "/v1/plans/{id}", ids={"id": p["id"]}, admin=True), 200).json
    check(got == p, "GET differs from POST: %r vs %r" % (got, p))
    minimal = make_plan(s, name="Minimal")
    check(minimal["quota"] is None and minimal["throttle"] is None and
          minimal["methodThrottles"] == {} and minimal["stripeMeterEventName"] is None,
          repr(minimal))
    expect(s.call("GET", "/v1/plans/{id}", ids={"id": "pln_nope"}, admin=True), 404, "not_found")
    state["plan_pro"] = p


@test
def plan_validation(s):
    bad = [
        ({}, "missing_field"),
        ({"name": ""}, "invalid_field"),
        ({"name": "x" * 257}, "invalid_field"),
        ({"name": 5}, "invalid_field"),
        ({"name": "a\u0001b"}, "invalid_field"),
        ({"name": "x", "color": "red"}, "unknown_field"),
        ({"name": "x", "id": "pln_mine"}, "read_only_field"),
        ({"name": "x", "quota": {"limit": -1, "period": "DAY"}}, "invalid_field"),
        ({"name": "x", "quota": {"limit": 1.5, "period": "DAY"}}, "invalid_field"),
        ({"name": "x", "quota": {"limit": "10", "period": "DAY"}}, "invalid_field"),
        ({"name": "x", "quota": {"limit": 10, "period": "YEAR"}}, "invalid_field"),
        ({"name": "x", "quota": {"limit": 10, "period": "day"}}, "invalid_field"),
        ({"name": "x", "quota": {"limit": 10}}, "missing_field"),
        ({"name": "x", "quota": {"limit": 10, "period": "DAY", "offset": -5}}, "invalid_field"),
        ({"name": "x", "quota": {"limit": 10, "period": "DAY", "extra": 1}}, "unknown_field"),
        ({"name": "x", "quota": [10, "DAY"]}, "invalid_field"),
        ({"name": "x", "throttle": {"rateLimit": -1, "burstLimit": 1}}, "invalid_field"),
        ({"name": "x", "throttle": {"rateLimit": "fast", "burstLimit": 1}}, "invalid_field"),
        ({"name": "x", "throttle": {"rateLimit": 1, "burstLimit": 1.5}}, "invalid_field"),
        ({"name": "x", "throttle": {"rateLimit": 1, "burstLimit": 2 ** 31}}, "invalid_field"),
        ({"name": "x", "throttle": {"rateLimit": 1}}, "missing_field"),
        ({"name": "x", "methodThrottles": {"items": {"rateLimit": 1, "burstLimit": 1}}},
         "invalid_field"),
        ({"name": "x", "methodThrottles": {"/items/get": {"rateLimit": 1, "burstLimit": 1}}},
         "invalid_field"),
        ({"name": "x", "methodThrottles": {"/items/GET": {"rateLimit": 1}}}, "missing_field"),
        ({"name": "x", "methodThrottles": []}, "invalid_field"),
        ({"name": "x", "stripeMeterEventName": ""}, "invalid_field"),
        ({"name": "x", "stripeMeterEventName": "m" * 101}, "invalid_field"),
        ({"name": "x", "description": "d" * 1025}, "invalid_field"),
    ]
    for body, code in bad:
        expect(s.call("POST", "/v1/plans", admin=True, body=body), 400, code)
    for raw, code in (("", "invalid_body"), ("{", "invalid_json"), ("[]", "invalid_body"),
                      ("null", "invalid_json"), ("5", "invalid_json"), ('{"name":"a","name":"b"}', "invalid_json"),
                      ('{"name":"a\\u0000"}', "invalid_json"), ("\xff\xfe", "invalid_json"),
                      ('{"name":"x","quota":{"limit":99999999999999999999999,"period":"DAY"}}',
                       "invalid_json"),
                      ("[" * 5000 + "]" * 5000, "invalid_json")):
        expect(s.call("POST", "/v1/plans", admin=True, body=raw,
                      headers={"Content-Type": "application/json"}), 400, code)
    big = json.dumps({"name": "x", "description": "d" * 70000})
    r = s.call("POST", "/v1/plans", admin=True, body=big)
    expect(r, 413, "body_too_large")
    # Chunked, without Content-Length: refused once past the limit too.
    conn = http.client.HTTPConnection("127.0.0.1", s.port, timeout=30)
    conn.putrequest("POST", "/v1/plans")
    conn.putheader("Authorization", "Bearer " + ADMIN_TOKEN)
    conn.putheader("Transfer-Encoding", "chunked")
    conn.endheaders()
    chunk = b"x" * 16384
    for _ in range(6):
        conn.send(b"%x\r\n%s\r\n" % (len(chunk), chunk))
    conn.send(b"0\r\n\r\n")
    res = conn.getresponse()
    check(res.status == 413, "chunked 96 KiB body: %d" % res.status)
    conn.close()
    s.seen.add(("POST", "/v1/plans", 413))
    check(s.psql("SELECT count(*) FROM plans WHERE name = 'x'") == "0", "a bad plan was stored")


@test
def plan_list_pagination(s):
    for i in range(5):
        make_plan(s, name="page-%d" % i)
    total = int(s.psql("SELECT count(*) FROM plans"))
    seen, position, positions = [], None, set()
    for _ in range(20):
        q = "?limit=2" + ("&position=" + position if position else "")
        page = expect(s.call("GET", "/v1/plans", admin=True, query=q), 200).json
        check(len(page["items"]) <= 2, "page too long")
        seen += [p["id"] for p in page["items"]]
        position = page.get("position")
        if not position:
            break
        check(position not in positions, "the same position twice")
        positions.add(position)
    check(len(seen) == total and len(set(seen)) == total, "paged %d of %d" % (len(seen), total))
    check(seen == sorted(seen), "pages out of order")
    for q in ("?limit=0", "?limit=501", "?limit=abc", "?limit=-1", "?position=%%%",
              "?position=AAAA", "?color=red"):
        r = s.call("GET", "/v1/plans", admin=True, query=q)
        expect(r, 400)


@test
def plan_update(s):
    p = state["plan_pro"]
    time.sleep(0.01)
    r = expect(s.call("PATCH", "/v1/plans/{id}", ids={"id": p["id"]}, admin=True,
                      body={"quota": {"limit": 2000}, "description": None}), 200).json
    check(r["quota"] == {"limit": 2000, "period": "MONTH", "offset": 100, "enforcement": "hard",
                         "ceilingPercent": None}, repr(r))
    check(r["description"] == "" and r["name"] == "Pro", repr(r))
    check(r["updatedAt"] > p["updatedAt"] and r["createdAt"] == p["createdAt"], repr(r))
    r = expect(s.call("PATCH", "/v1/plans/{id}", ids={"id": p["id"]}, admin=True,
                      body={"throttle": None, "stripeMeterEventName": None}), 200).json
    check(r["throttle"] is None and r["stripeMeterEventName"] is None, repr(r))
    expect(s.call("PATCH", "/v1/plans/{id}", ids={"id": p["id"]}, admin=True,
                  body={"name": None}), 400, "invalid_field")
    expect(s.call("PATCH", "/v1/plans/{id}", ids={"id": p["id"]}, admin=True,
                  body={"quota": {"period": "FORTNIGHT"}}), 400, "invalid_field")
    expect(s.call("PATCH", "/v1/plans/{id}", ids={"id": p["id"]}, admin=True,
                  body={"bogus": 1}), 400, "unknown_field")
    expect(s.call("PATCH", "/v1/plans/{id}", ids={"id": "pln_missing"}, admin=True,
                  body={"name": "y"}), 404, "not_found")
    after = expect(s.call("GET", "/v1/plans/{id}", ids={"id": p["id"]}, admin=True), 200).json
    check(after["quota"]["limit"] == 2000 and after["name"] == "Pro", "a refused patch changed it")


@test
def key_create_and_secret(s):
    plan = make_plan(s, name="Keys", quota={"limit": 100, "period": "DAY"})
    k = make_key(s, name="alice", customerId="cust_alice", stripeCustomerId="cus_123",
                 planId=plan["id"])
    check(re.fullmatch(r"key_[A-Za-z0-9]{20}", k["id"]), "id %r" % k["id"])
    check(len(k["value"]) >= 20 and re.fullmatch(r"[A-Za-z0-9]+", k["value"]), "value %r" % k["value"])
    check(k["enabled"] is True and k["planId"] == plan["id"] and k["customerId"] == "cust_alice",
          repr(k))
    digest = hashlib.sha256(k["value"].encode()).hexdigest()
    check(s.psql("SELECT encode(value_hash, 'hex') FROM api_keys WHERE id = '%s'" % k["id"])
          != digest, "value_hash is the unsalted SHA-256 of the value (semantics_cases: HMAC)")
    check(k["value"] not in s.psql("SELECT row_to_json(k)::text FROM api_keys k"),
          "the secret is stored in clear")
    got = expect(s.call("GET", "/v1/keys/{id}", ids={"id": k["id"]}, admin=True), 200).json
    check("value" not in got, "GET returns the secret")
    listed = expect(s.call("GET", "/v1/keys", admin=True), 200).json
    check(all("value" not in item for item in listed["items"]), "list returns secrets")
    check(k["value"] not in s.log_text(), "the secret appears in the log")
    supplied = make_key(s, name="bob", value="bob-supplied-secret-value-0001")
    check(supplied["value"] == "bob-supplied-secret-value-0001" and supplied["planId"] is None,
          repr(supplied))
    expect(s.call("POST", "/v1/keys", admin=True,
                  body={"value": "bob-supplied-secret-value-0001"}), 409, "value_in_use")
    for body, code in (({"value": "short-secret"}, "invalid_field"),
                       ({"value": "has space in the secret value"}, "invalid_field"),
                       ({"value": "v" * 257}, "invalid_field"),
                       ({"enabled": "yes"}, "invalid_field"),
                       ({"customerId": ""}, "invalid_field"),
                       ({"customerId": 12}, "invalid_field"),
                       ({"planId": "bad id"}, "invalid_field"),
                       ({"id": "key_mine"}, "read_only_field"),
                       ({"secret": "x"}, "unknown_field")):
        expect(s.call("POST", "/v1/keys", admin=True, body=body), 400, code)
    expect(s.call("POST", "/v1/keys", admin=True, body={"planId": "pln_missing"}), 404,
           "plan_not_found")
    empty = make_key(s)
    check(empty["name"] == "" and empty["enabled"] is True, repr(empty))
    state.update(key_alice=k, key_bob=supplied, plan_keys=plan)


@test
def key_update_list_delete(s):
    k = state["key_alice"]
    r = expect(s.call("PATCH", "/v1/keys/{id}", ids={"id": k["id"]}, admin=True,
                      body={"name": "Alice", "stripeCustomerId": None, "description": "d"}),
               200).json
    check(r["name"] == "Alice" and r["stripeCustomerId"] is None and r["customerId"] == "cust_alice"
          and r["planId"] == k["planId"], repr(r))
    for body, code in (({"value": "a-new-secret-value-123456"}, "read_only_field"),
                       ({"planId": "pln_x"}, "read_only_field"),
                       ({"enabled": 1}, "invalid_field"), ({"nope": 1}, "unknown_field")):
        expect(s.call("PATCH", "/v1/keys/{id}", ids={"id": k["id"]}, admin=True, body=body),
               400, code)
    expect(s.call("PATCH", "/v1/keys/{id}", ids={"id": "key_missing"}, admin=True,
                  body={"name": "x"}), 404)
    listed = expect(s.call("GET", "/v1/keys", admin=True, query="?customerId=cust_alice"),
                    200).json
    check([i["id"] for i in listed["items"]] == [k["id"]], repr(listed))
    listed = expect(s.call("GET", "/v1/keys", admin=True,
                           query="?planId=" + state["plan_keys"]["id"]), 200).json
    check([i["id"] for i in listed["items"]] == [k["id"]], repr(listed))
    for _ in range(3):
        make_key(s, name="filler")
    total = int(s.psql("SELECT count(*) FROM api_keys"))
    ids, position = [], None
    while True:
        page = expect(s.call("GET", "/v1/keys", admin=True,
                             query="?limit=2" + ("&position=" + position if position else "")),
                      200).json
        ids += [i["id"] for i in page["items"]]
        position = page.get("position")
        if not position:
            break
    check(len(ids) == total == len(set(ids)), "paged %d of %d keys" % (len(ids), total))
    victim = make_key(s, name="victim")
    expect(s.call("DELETE", "/v1/keys/{id}", ids={"id": victim["id"]}, admin=True), 204)
    expect(s.call("GET", "/v1/keys/{id}", ids={"id": victim["id"]}, admin=True), 404)
    expect(s.call("DELETE", "/v1/keys/{id}", ids={"id": victim["id"]}, admin=True), 404)
    expect(s.call("GET", "/v1/authorize", key=victim["value"]), 401, "unauthorized")


def schema_fields(name):
    with open(os.path.join(REPO, "docs", "openapi.json")) as f:
        return set(json.load(f)["components"]["schemas"][name]["required"])


@test
def stripe_subscription_item(s):
    """stripeSubscriptionItemId on plans and keys: created, read, listed,
    patched and cleared with null, validated like stripeMeterEventName, and
    every answer has exactly the fields docs/openapi.json requires."""
    plan = make_plan(s, name="Legacy", stripeSubscriptionItemId="si_plan_1")
    check(plan["stripeSubscriptionItemId"] == "si_plan_1", repr(plan))
    check(set(plan) == schema_fields("Plan"), "plan fields %r" % sorted(plan))
    got = expect(s.call("GET", "/v1/plans/{id}", ids={"id": plan["id"]}, admin=True), 200).json
    check(got == plan, "GET differs: %r" % got)
    check(s.psql("SELECT stripe_subscription_item_id FROM plans WHERE id = '%s'" % plan["id"])
          == "si_plan_1", "not stored in plans.stripe_subscription_item_id")
    listed = expect(s.call("GET", "/v1/plans", admin=True, query="?limit=500"), 200).json
    mine = [p for p in listed["items"] if p["id"] == plan["id"]]
    check(mine and mine[0]["stripeSubscriptionItemId"] == "si_plan_1", repr(mine))
    check(all(p["stripeSubscriptionItemId"] is None for p in listed["items"]
              if p["id"] != plan["id"]), "other plans got a subscription item")
    item100 = "si_" + "x" * 97
    r = expect(s.call("PATCH", "/v1/plans/{id}", ids={"id": plan["id"]}, admin=True,
                      body={"stripeSubscriptionItemId": item100}), 200).json
    check(r["stripeSubscriptionItemId"] == item100 and r["name"] == "Legacy", repr(r))
    r = expect(s.call("PATCH", "/v1/plans/{id}", ids={"id": plan["id"]}, admin=True,
                      body={"description": "kept"}), 200).json
    check(r["stripeSubscriptionItemId"] == item100, "a patch of another field cleared it")
    r = expect(s.call("PATCH", "/v1/plans/{id}", ids={"id": plan["id"]}, admin=True,
                      body={"stripeSubscriptionItemId": None}), 200).json
    check(r["stripeSubscriptionItemId"] is None, repr(r))
    check(s.psql("SELECT stripe_subscription_item_id IS NULL FROM plans WHERE id = '%s'"
                 % plan["id"]) == "t", "null did not clear the column")

    key = make_key(s, name="legacy", planId=plan["id"], stripeCustomerId="cus_legacy",
                   stripeSubscriptionItemId="si_key_1")
    check(key["stripeSubscriptionItemId"] == "si_key_1", repr(key))
    check(set(key) == schema_fields("Key") | {"value"}, "key fields %r" % sorted(key))
    got = expect(s.call("GET", "/v1/keys/{id}", ids={"id": key["id"]}, admin=True), 200).json
    check(got["stripeSubscriptionItemId"] == "si_key_1" and set(got) == schema_fields("Key"),
          repr(got))
    listed = expect(s.call("GET", "/v1/keys", admin=True, query="?planId=" + plan["id"]),
                    200).json
    check([i["stripeSubscriptionItemId"] for i in listed["items"]] == ["si_key_1"], repr(listed))
    r = expect(s.call("PATCH", "/v1/keys/{id}", ids={"id": key["id"]}, admin=True,
                      body={"stripeSubscriptionItemId": "si_key_2"}), 200).json
    check(r["stripeSubscriptionItemId"] == "si_key_2" and r["stripeCustomerId"] == "cus_legacy",
          repr(r))
    r = expect(s.call("PATCH", "/v1/keys/{id}", ids={"id": key["id"]}, admin=True,
                      body={"name": "renamed"}), 200).json
    check(r["stripeSubscriptionItemId"] == "si_key_2", "a patch of another field cleared it")
    # Attach / detach answers carry it too.
    r = expect(s.call("DELETE", "/v1/keys/{id}/plan", ids={"id": key["id"]}, admin=True), 200).json
    check(r["stripeSubscriptionItemId"] == "si_key_2", repr(r))
    r = expect(s.call("PATCH", "/v1/keys/{id}", ids={"id": key["id"]}, admin=True,
                      body={"stripeSubscriptionItemId": None}), 200).json
    check(r["stripeSubscriptionItemId"] is None and r["stripeCustomerId"] == "cus_legacy", repr(r))
    check(s.psql("SELECT stripe_subscription_item_id IS NULL FROM api_keys WHERE id = '%s'"
                 % key["id"]) == "t", "null did not clear the column")
    plain = make_key(s, name="no-item")
    check(plain["stripeSubscriptionItemId"] is None, repr(plain))

    bad = ("", "x" * 101, 5, True, ["si_1"], {"id": "si_1"}, "si\n1", "si\u00011")
    for value in bad:
        expect(s.call("POST", "/v1/plans", admin=True,
                      body={"name": "bad-item", "stripeSubscriptionItemId": value}),
               400, "invalid_field")
        expect(s.call("POST", "/v1/keys", admin=True,
                      body={"name": "bad-item", "stripeSubscriptionItemId": value}),
               400, "invalid_field")
        expect(s.call("PATCH", "/v1/plans/{id}", ids={"id": plan["id"]}, admin=True,
                      body={"stripeSubscriptionItemId": value}), 400, "invalid_field")
        expect(s.call("PATCH", "/v1/keys/{id}", ids={"id": key["id"]}, admin=True,
                      body={"stripeSubscriptionItemId": value}), 400, "invalid_field")
    check(s.psql("SELECT count(*) FROM plans WHERE name = 'bad-item'") == "0" and
          s.psql("SELECT count(*) FROM api_keys WHERE name = 'bad-item'") == "0",
          "a refused body was stored")
    # 100 multi-byte characters are more than 100 bytes: refused by the
    # api (bytes) rather than passed on to fail the column's CHECK as a 500.
    expect(s.call("POST", "/v1/keys", admin=True,
                  body={"stripeSubscriptionItemId": "\u00e9" * 51}), 400, "invalid_field")


@test
def attach_detach_and_plan_delete(s):
    plan = make_plan(s, name="Attach")
    k = state["key_bob"]
    r = expect(s.call("PUT", "/v1/keys/{id}/plan", ids={"id": k["id"]}, admin=True,
                      body={"planId": plan["id"]}), 200).json
    check(r["planId"] == plan["id"], repr(r))
    expect(s.call("DELETE", "/v1/plans/{id}", ids={"id": plan["id"]}, admin=True), 409,
           "plan_in_use")
    expect(s.call("PUT", "/v1/keys/{id}/plan", ids={"id": k["id"]}, admin=True,
                  body={"planId": "pln_missing"}), 404, "plan_not_found")
    expect(s.call("PUT", "/v1/keys/{id}/plan", ids={"id": "key_missing"}, admin=True,
                  body={"planId": plan["id"]}), 404, "not_found")
    for body in ({}, {"planId": 5}, {"planId": plan["id"], "x": 1}, {"planId": "a b"}):
        expect(s.call("PUT", "/v1/keys/{id}/plan", ids={"id": k["id"]}, admin=True, body=body),
               400, "invalid_body")
    r = expect(s.call("DELETE", "/v1/keys/{id}/plan", ids={"id": k["id"]}, admin=True), 200).json
    check(r["planId"] is None, repr(r))
    expect(s.call("DELETE", "/v1/keys/{id}/plan", ids={"id": "key_missing"}, admin=True), 404)
    expect(s.call("DELETE", "/v1/plans/{id}", ids={"id": plan["id"]}, admin=True), 204)
    expect(s.call("DELETE", "/v1/plans/{id}", ids={"id": plan["id"]}, admin=True), 404)


def put_counter(s, key_id, period, start, units, requests=None, updated_at=None):
    s.psql("INSERT INTO usage_counters (key_id, period, period_start, requests, units, bytes, "
           "updated_at) VALUES ('%s', '%s', '%s', %d, %d, 0, %s) "
           "ON CONFLICT (key_id, period, period_start) DO UPDATE SET units = EXCLUDED.units, "
           "requests = EXCLUDED.requests, updated_at = EXCLUDED.updated_at"
           % (key_id, period, start, requests if requests is not None else units, units,
              "'%s'" % updated_at if updated_at else "now()"))


def eventually(fetch, ok, timeout=1.5):
    """fetch() until ok(answer) or `timeout` seconds: a change written
    straight into the database shows in the api's cache within ~1.5 s."""
    deadline = time.monotonic() + timeout
    while True:
        answer = fetch()
        if ok(answer) or time.monotonic() > deadline:
            return answer
        time.sleep(0.05)


def day_start(now=None):
    now = now or datetime.datetime.now(datetime.timezone.utc)
    return now.replace(hour=0, minute=0, second=0, microsecond=0)


@test
def quota(s):
    plan = make_plan(s, name="Quota", quota={"limit": 50, "period": "DAY"})
    k = make_key(s, name="quota", planId=plan["id"])
    today = day_start()
    q = expect(s.call("GET", "/v1/keys/{id}/quota", ids={"id": k["id"]}, admin=True), 200).json
    check(q["used"] == 0 and q["remaining"] == 50 and q["limit"] == 50 and q["overage"] == 0 and
          q["period"] == "DAY" and q["planId"] == plan["id"] and q["keyId"] == k["id"], repr(q))
    check(utc(q["periodStart"]) == today and
          utc(q["periodEnd"]) == today + datetime.timedelta(days=1), repr(q))
    # No counter yet: nothing counted, as of the read.
    check(abs((utc(q["asOf"]) - datetime.datetime.now(datetime.timezone.utc)).total_seconds()) < 5,
          repr(q))
    # With a counter, asOf is when it was last written, not the request time.
    written = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=123000) - \
        datetime.timedelta(minutes=7)
    put_counter(s, k["id"], "DAY", iso(today), 42, updated_at=iso(written))
    put_counter(s, k["id"], "DAY", iso(today - datetime.timedelta(days=1)), 999)
    put_counter(s, k["id"], "MONTH", iso(today.replace(day=1)), 5000)

    def admin_quota(key_id):
        return expect(s.call("GET", "/v1/keys/{id}/quota", ids={"id": key_id}, admin=True),
                      200).json
    q = eventually(lambda: admin_quota(k["id"]), lambda q: q["used"] != 0)
    check(q["used"] == 42 and q["remaining"] == 8 and q["overage"] == 0, repr(q))
    check(utc(q["asOf"]) == written, "asOf %s, counter written %s" % (q["asOf"], iso(written)))
    put_counter(s, k["id"], "DAY", iso(today), 57)
    q = eventually(lambda: admin_quota(k["id"]), lambda q: q["used"] != 42)
    check(q["used"] == 57 and q["remaining"] == 0 and q["overage"] == 7, repr(q))
    me = expect(s.call("GET", "/v1/me/quota", key=k["value"]), 200).json
    check(me["keyId"] == k["id"] and me["used"] == 57, repr(me))
    # The offset applies in the quota's first period (the one it was set in).
    off = make_plan(s, name="Offset", quota={"limit": 100, "period": "WEEK", "offset": 30})
    ko = make_key(s, planId=off["id"])
    q = admin_quota(ko["id"])
    check(q["limit"] == 70 and q["period"] == "WEEK", repr(q))
    s.psql("UPDATE plans SET created_at = now() - interval '15 days', "
           "quota_set_at = now() - interval '15 days' WHERE id = '%s'" % off["id"])
    q = eventually(lambda: admin_quota(ko["id"]), lambda q: q["limit"] != 70)
    check(q["limit"] == 100, repr(q))
    # A PATCH that changes the quota starts its first period over; one that
    # changes something else does not.
    expect(s.call("PATCH", "/v1/plans/{id}", ids={"id": off["id"]}, admin=True,
                  body={"description": "renamed"}), 200)
    check(admin_quota(ko["id"])["limit"] == 100, "a description change restarted the offset")
    expect(s.call("PATCH", "/v1/plans/{id}", ids={"id": off["id"]}, admin=True,
                  body={"quota": {"offset": 40}}), 200)
    q = admin_quota(ko["id"])
    check(q["limit"] == 60, "offset changed today: %r" % q)
    # A quota added later by PATCH to a plan created long ago gets its offset,
    # in the quota answer and in authorize's X-RateLimit-Limit.
    late = make_plan(s, name="LateQuota")
    s.psql("UPDATE plans SET created_at = now() - interval '40 days', "
           "quota_set_at = now() - interval '40 days' WHERE id = '%s'" % late["id"])
    kl = make_key(s, planId=late["id"])
    expect(s.call("PATCH", "/v1/plans/{id}", ids={"id": late["id"]}, admin=True,
                  body={"quota": {"limit": 100, "period": "MONTH", "offset": 25}}), 200)
    q = admin_quota(kl["id"])
    check(q["limit"] == 75 and q["period"] == "MONTH", "quota added by PATCH: %r" % q)
    r = s.request("GET", "/v1/authorize", key=kl["value"])
    check(r.status == 204 and r.header("X-RateLimit-Limit") == "75", repr(r.headers))
    # The database answers for a key the cache has not loaded yet (created
    # straight in the database): same shape, same numbers.
    # Key and counter in one transaction: a cache reload between two
    # statements would hold the key with nothing counted until the next one.
    s.psql("BEGIN; INSERT INTO api_keys (id, value_hash, plan_id) VALUES "
           "('key_direct_quota', sha256('direct-quota-secret-0123456789'), '%s'); "
           "INSERT INTO usage_counters (key_id, period, period_start, requests, units, bytes, "
           "updated_at) VALUES ('key_direct_quota', 'DAY', '%s', 3, 3, 0, '%s'); COMMIT"
           % (plan["id"], iso(today), iso(written)))
    q = admin_quota("key_direct_quota")
    check(q["used"] == 3 and q["limit"] == 50 and utc(q["asOf"]) == written, repr(q))
    # A plan without a quota, and no plan.
    free = make_plan(s, name="NoQuota")
    kf = make_key(s, planId=free["id"])
    q = expect(s.call("GET", "/v1/keys/{id}/quota", ids={"id": kf["id"]}, admin=True), 200).json
    check(q["limit"] is None and q["remaining"] is None and q["planId"] == free["id"], repr(q))
    kn = make_key(s)
    expect(s.call("GET", "/v1/keys/{id}/quota", ids={"id": kn["id"]}, admin=True), 409, "no_plan")
    expect(s.call("GET", "/v1/keys/{id}/quota", ids={"id": "key_missing"}, admin=True), 404)
    expect(s.call("GET", "/v1/keys/{id}/quota", ids={"id": k["id"]}, admin=True,
                  query="?x=1"), 400, "unknown_parameter")
    state["key_quota"] = k


def put_hour(s, key_id, hour, requests, units, nbytes, method="GET", endpoint="/items"):
    s.psql("INSERT INTO usage_hourly (key_id, hour, plan_id, method, endpoint, requests, units, "
           "bytes) VALUES ('%s', '%s', '', '%s', '%s', %d, %d, %d)"
           % (key_id, hour, method, endpoint, requests, units, nbytes))


@test
def usage_series(s):
    k = make_key(s, name="usage")
    put_hour(s, k["id"], "2026-03-01T10:00:00Z", 3, 4, 100)
    put_hour(s, k["id"], "2026-03-01T10:00:00Z", 1, 1, 10, "POST", "/items")
    put_hour(s, k["id"], "2026-03-01T12:00:00Z", 2, 2, 20, "GET", "/users/{id}")
    put_hour(s, k["id"], "2026-03-02T00:00:00Z", 5, 5, 50)
    put_hour(s, k["id"], "2026-04-15T00:00:00Z", 7, 7, 70)
    other = make_key(s, name="other")
    put_hour(s, other["id"], "2026-03-01T10:00:00Z", 1000, 1000, 1000)
    r = expect(s.call("GET", "/v1/keys/{id}/usage", ids={"id": k["id"]}, admin=True,
                      query="?granularity=hour&from=2026-03-01T09:30:00Z&to=2026-03-01T13:00:00Z"),
               200).json
    check(r["keyId"] == k["id"] and r["granularity"] == "hour" and
          r["from"] == "2026-03-01T09:00:00.000Z" and r["to"] == "2026-03-01T13:00:00.000Z", repr(r))
    got = [(i["start"][11:16], i["requests"], i["units"], i["bytes"]) for i in r["items"]]
    check(got == [("09:00", 0, 0, 0), ("10:00", 4, 5, 110), ("11:00", 0, 0, 0),
                  ("12:00", 2, 2, 20)], repr(got))
    check(all(utc(i["end"]) - utc(i["start"]) == datetime.timedelta(hours=1) for i in r["items"]),
          "bucket ends")
    r = expect(s.call("GET", "/v1/keys/{id}/usage", ids={"id": k["id"]}, admin=True,
                      query="?granularity=day&from=2026-03-01&to=2026-03-03"), 200).json
    got = [(i["start"][:10], i["requests"]) for i in r["items"]]
    check(got == [("2026-03-01", 6), ("2026-03-02", 5), ("2026-03-03", 0)], repr(got))
    r = expect(s.call("GET", "/v1/keys/{id}/usage", ids={"id": k["id"]}, admin=True,
                      query="?granularity=month&from=2026-02-10&to=2026-04-30"), 200).json
    got = [(i["start"][:7], i["units"], i["end"][:10]) for i in r["items"]]
    check(got == [("2026-02", 0, "2026-03-01"), ("2026-03", 12, "2026-04-01"),
                  ("2026-04", 7, "2026-05-01")], repr(got))
    r = expect(s.call("GET", "/v1/keys/{id}/usage", ids={"id": k["id"]}, admin=True,
                      query="?granularity=day&from=2026-03-01&to=2026-03-02&groupBy=endpoint"),
               200).json
    got = [(i["start"][:10], i["method"], i["endpoint"], i["requests"]) for i in r["items"]]
    check(got == [("2026-03-01", "GET", "/items", 3), ("2026-03-01", "GET", "/users/{id}", 2),
                  ("2026-03-01", "POST", "/items", 1), ("2026-03-02", "GET", "/items", 5),
                  ("2026-03-02", "GET", "/users/{id}", 0), ("2026-03-02", "POST", "/items", 0)],
          repr(got))
    # Grouped by endpoint with no usage in the range: no (method, endpoint)
    # pair, so no items, as docs/openapi.json says (ungrouped: zero buckets).
    r = expect(s.call("GET", "/v1/keys/{id}/usage", ids={"id": k["id"]}, admin=True,
                      query="?granularity=day&from=2026-05-01&to=2026-05-03&groupBy=endpoint"),
               200).json
    check(r["items"] == [] and r["groupBy"] == "endpoint", repr(r))
    with open(os.path.join(REPO, "docs", "openapi.json")) as f:
        doc = json.load(f)
    check("items is []" in json.dumps(doc["components"]["schemas"]["Usage"]) and
          all("items is []" in p.get("description", "")
              for route in ("/v1/keys/{id}/usage", "/v1/me/usage")
              for p in doc["paths"][route]["get"]["parameters"] if p["name"] == "groupBy"),
          "docs/openapi.json does not say a grouped series without usage is []")
    r = expect(s.call("GET", "/v1/keys/{id}/usage", ids={"id": k["id"]}, admin=True,
                      query="?granularity=day&from=2026-05-01&to=2026-05-03"), 200).json
    check([i["requests"] for i in r["items"]] == [0, 0, 0], repr(r))
    # A date-time from inside a date to's day is not after it.
    r = expect(s.call("GET", "/v1/keys/{id}/usage", ids={"id": k["id"]}, admin=True,
                      query="?granularity=hour&from=2026-03-01T10:00:00Z&to=2026-03-01"), 200).json
    check(len(r["items"]) == 14 and r["items"][0]["requests"] == 4 and
          r["to"] == "2026-03-02T00:00:00.000Z", repr(r)[:300])
    expect(s.call("GET", "/v1/keys/{id}/usage", ids={"id": k["id"]}, admin=True,
                  query="?from=2026-03-02T00:00:00Z&to=2026-03-01"), 400, "invalid_range")
    # Defaults: the last 30 days by day, the last 24 hours by hour.
    r = expect(s.call("GET", "/v1/keys/{id}/usage", ids={"id": k["id"]}, admin=True), 200).json
    check(r["granularity"] == "day" and len(r["items"]) in (30, 31), "default: %d items"
          % len(r["items"]))
    r = expect(s.call("GET", "/v1/keys/{id}/usage", ids={"id": k["id"]}, admin=True,
                      query="?granularity=hour"), 200).json
    check(len(r["items"]) in (24, 25), "hour default: %d" % len(r["items"]))
    for q, code in (("?from=2026-03-05&to=2026-03-01", "invalid_range"),
                    ("?from=yesterday", "invalid_parameter"),
                    ("?to=2026-13-01", "invalid_parameter"),
                    ("?from=2026-02-30", "invalid_parameter"),
                    ("?granularity=week", "invalid_parameter"),
                    ("?groupBy=method", "invalid_parameter"),
                    ("?granularity=hour&from=2026-01-01&to=2026-03-01", "too_many_points"),
                    ("?granularity=day&from=2020-01-01&to=2026-01-01", "too_many_points"),
                    ("?from=0001-01-01T00:00:00Z&to=9998-01-01T00:00:00Z&granularity=month",
                     "too_many_points"),
                    ("?from=0000-01-01T00:00:00Z&granularity=month", "invalid_parameter"),
                    ("?to=9999-12-31T23:59:59Z", "invalid_parameter"),
                    ("?limit=5", "unknown_parameter")):
        expect(s.call("GET", "/v1/keys/{id}/usage", ids={"id": k["id"]}, admin=True, query=q),
               400, code)
    expect(s.call("GET", "/v1/keys/{id}/usage", ids={"id": "key_missing"}, admin=True), 404)
    me = expect(s.call("GET", "/v1/me/usage", key=k["value"],
                       query="?granularity=day&from=2026-03-01&to=2026-03-01"), 200).json
    check(me["keyId"] == k["id"] and [i["requests"] for i in me["items"]] == [6], repr(me))
    expect(s.call("GET", "/v1/me/usage", key=k["value"], query="?from=bad"), 400)
    state.update(key_usage=k, key_other=other)


@test
def isolation(s):
    k, other = state["key_usage"], state["key_other"]
    # A customer's key never opens the admin routes, whatever the header.
    for headers in ({"x-api-key": k["value"]}, {"Authorization": "Bearer " + k["value"]}):
        for route in ("/v1/keys/{id}/usage", "/v1/keys/{id}/quota", "/v1/keys/{id}"):
            for target in (k["id"], other["id"]):
                expect(s.call("GET", route, ids={"id": target}, headers=headers), 401)
        expect(s.call("GET", "/v1/keys", headers=headers), 401)
        expect(s.call("POST", "/v1/plans", headers=headers, body={"name": "x"}), 401)
    # /v1/me sees only the caller's own key; ids in the query are refused.
    me = expect(s.call("GET", "/v1/me/usage", key=k["value"],
                       query="?from=2026-03-01&to=2026-03-01"), 200).json
    check(me["keyId"] == k["id"] and me["items"][0]["requests"] == 6, repr(me))
    expect(s.call("GET", "/v1/me/usage", key=k["value"], query="?keyId=" + other["id"]), 400,
           "unknown_parameter")
    for key in ("", " ", "x", ADMIN_TOKEN, k["value"] + "x", k["value"][:-1], k["value"].upper(),
                "A" * 300, k["id"], hashlib.sha256(k["value"].encode()).hexdigest()):
        for route in ("/v1/me/usage", "/v1/me/quota"):
            r = s.call("GET", route, key=key)
            expect(r, 401)
    for route in ("/v1/me/usage", "/v1/me/quota"):
        expect(s.call("GET", route), 401)
        expect(s.call("GET", route, headers={"Authorization": "Bearer " + ADMIN_TOKEN}), 401)
        expect(s.call("GET", route, headers={"Authorization": "Bearer " + k["value"]}), 401)
    # The key's secret in the path is never accepted as an id.
    expect(s.request("GET", "/v1/me/usage/" + k["id"], key=k["value"]), 404)
    # A disabled key is refused everywhere.
    expect(s.call("PATCH", "/v1/keys/{id}", ids={"id": k["id"]}, admin=True,
                  body={"enabled": False}), 200)
    expect(s.call("GET", "/v1/me/usage", key=k["value"]), 403, "key_disabled")
    expect(s.call("GET", "/v1/me/quota", key=k["value"]), 403, "key_disabled")
    r = expect(s.call("GET", "/v1/authorize", key=k["value"]), 403, "key_disabled")
    check(r.header("X-Tally-Key-Id") == k["id"] and None not in rate_headers(r),
          repr(r.headers))
    expect(s.call("PATCH", "/v1/keys/{id}", ids={"id": k["id"]}, admin=True,
                  body={"enabled": True}), 200)
    expect(s.call("GET", "/v1/me/usage", key=k["value"]), 200)


def authorize(s, key, method="GET", uri="/items"):
    headers = {}
    if method is not None:
        headers["X-Original-Method"] = method
    if uri is not None:
        headers["X-Original-URI"] = uri
    return s.call("GET", "/v1/authorize", key=key, headers=headers)


def rate_headers(r):
    return tuple(r.header(h) for h in ("X-RateLimit-Limit", "X-RateLimit-Remaining",
                                       "X-RateLimit-Reset", "X-Tally-Key-Id"))


@test
def authorize_keys(s):
    r = expect(s.call("GET", "/v1/authorize"), 401)
    check(r.header("X-Tally-Key-Id") is None, "headers for no key")
    r = expect(authorize(s, "unknown-key-value-123456789"), 401)
    check(r.header("X-Tally-Key-Id") is None, "headers for an unknown key")
    expect(authorize(s, ""), 401)
    expect(authorize(s, "k" * 5000), 401)
    expect(s.call("GET", "/v1/authorize", headers={"Authorization": "Bearer " + ADMIN_TOKEN}), 401)
    nop = make_key(s)
    r = expect(authorize(s, nop["value"]), 403, "no_plan")
    # 403: the key is named; no limit is in force (the contract wants the
    # X-RateLimit-* headers on every answer for a known key: zeros).
    check(rate_headers(r) == ("0", "0", "0", nop["id"]), repr(r.headers))
    unlimited = make_plan(s, name="Unlimited")
    ku = make_key(s, planId=unlimited["id"])
    for _ in range(20):
        r = expect(authorize(s, ku["value"]), 204)
    check(rate_headers(r) == ("0", "0", "0", ku["id"]), repr(r.headers))
    # A change made by another process (straight in the database) shows
    # within the refresh interval.
    s.psql("UPDATE api_keys SET enabled = false WHERE id = '%s'" % ku["id"])
    deadline = time.monotonic() + 5
    while authorize(s, ku["value"]).status != 403:
        check(time.monotonic() < deadline, "a disabled key still passes after 5 s")
        time.sleep(0.05)
    waited = 5 - (deadline - time.monotonic())
    check(waited < 3 * REFRESH_MS / 1000 + 1, "took %.2f s" % waited)
    # A disabled key whose plan has a quota and a throttle: 403 still names
    # the key and carries the X-RateLimit-* headers.
    limited = make_plan(s, name="Limited", quota={"limit": 100, "period": "DAY"},
                        throttle={"rateLimit": 10, "burstLimit": 10})
    kd = make_key(s, planId=limited["id"])
    r = expect(authorize(s, kd["value"]), 204)
    check(rate_headers(r)[:2] == ("100", "99"), repr(r.headers))
    expect(s.call("PATCH", "/v1/keys/{id}", ids={"id": kd["id"]}, admin=True,
                  body={"enabled": False}), 200)
    r = expect(authorize(s, kd["value"]), 403, "key_disabled")
    check(rate_headers(r)[3] == kd["id"] and None not in rate_headers(r), repr(r.headers))


@test
def authorize_burst(s):
    plan = make_plan(s, name="Burst", throttle={"rateLimit": 0.01, "burstLimit": 5})
    k = make_key(s, planId=plan["id"])
    statuses = []
    for _ in range(7):
        r = authorize(s, k["value"])
        statuses.append(r.status)
    check(statuses == [204] * 5 + [429] * 2, "statuses %r" % statuses)
    check(r.error_code() == "throttled" and int(r.header("Retry-After")) >= 1, repr(r))
    check(rate_headers(r)[0] == "5" and rate_headers(r)[1] == "0", repr(r.headers))
    # A per-method throttle overrides the plan's for its path and method only.
    mplan = make_plan(s, name="Methods", throttle={"rateLimit": 0.01, "burstLimit": 100},
                      methodThrottles={"/items/POST": {"rateLimit": 0.01, "burstLimit": 2}})
    km = make_key(s, planId=mplan["id"])
    posts = [authorize(s, km["value"], "POST", "/items?page=2").status for _ in range(4)]
    check(posts == [204, 204, 429, 429], "POST /items: %r" % posts)
    gets = [authorize(s, km["value"], "GET", "/items").status for _ in range(4)]
    check(gets == [204] * 4, "GET /items: %r" % gets)
    other = [authorize(s, km["value"], "POST", "/orders").status for _ in range(3)]
    check(other == [204] * 3, "POST /orders: %r" % other)
    # Raising the burst through the API takes effect at once (fresh bucket).
    expect(s.call("PATCH", "/v1/plans/{id}", ids={"id": plan["id"]}, admin=True,
                  body={"throttle": {"burstLimit": 8}}), 200)
    statuses = [authorize(s, k["value"]).status for _ in range(9)]
    check(statuses == [204] * 8 + [429], "after the patch: %r" % statuses)


@test
def authorize_quota(s):
    plan = make_plan(s, name="Quota10", quota={"limit": 10, "period": "DAY"})
    k = make_key(s, planId=plan["id"])
    put_counter(s, k["id"], "DAY", iso(day_start()), 7)
    time.sleep(3 * REFRESH_MS / 1000)
    statuses = []
    for _ in range(5):
        r = authorize(s, k["value"])
        statuses.append((r.status, r.header("X-RateLimit-Remaining")))
    check(statuses == [(204, "2"), (204, "1"), (204, "0"), (429, "0"), (429, "0")],
          "statuses %r" % statuses)
    check(r.error_code() == "quota_exceeded", repr(r))
    retry = int(r.header("Retry-After"))
    to_midnight = (day_start() + datetime.timedelta(days=1) -
                   datetime.datetime.now(datetime.timezone.utc)).total_seconds()
    check(abs(retry - to_midnight) < 5, "Retry-After %d, midnight in %.0f" % (retry, to_midnight))
    check(int(r.header("X-RateLimit-Reset")) == retry or abs(int(r.header("X-RateLimit-Reset")) -
                                                              retry) <= 1, repr(r.headers))
    # The collector counts the three allowed requests: still exactly at the
    # quota after the next reload, not below nor above it.
    put_counter(s, k["id"], "DAY", iso(day_start()), 10)
    time.sleep(3 * REFRESH_MS / 1000)
    expect(authorize(s, k["value"]), 429, "quota_exceeded")
    # A higher limit opens it again.
    expect(s.call("PATCH", "/v1/plans/{id}", ids={"id": plan["id"]}, admin=True,
                  body={"quota": {"limit": 11}}), 200)
    statuses = [authorize(s, k["value"]).status for _ in range(3)]
    check(statuses == [204, 429, 429], "after raising the limit: %r" % statuses)


@test
def authorize_gateway_answer(s):
    """X-Tally-Gateway: nginx turns every refusal into a 403 (nginx's
    auth_request passes only 2xx, 401 and 403) with the real status and code
    in X-Tally-Status and X-Tally-Error; an allowed answer is unchanged."""
    gw = {"X-Tally-Gateway": "nginx", "X-Original-Method": "GET", "X-Original-URI": "/items"}

    def refused(r, status, code):
        check(r.status == 403 and r.header("X-Tally-Status") == str(status) and
              r.header("X-Tally-Error") == code, "want 403 carrying %d %s: %r %r"
              % (status, code, r, r.headers))

    refused(s.call("GET", "/v1/authorize", headers=gw), 401, "unauthorized")
    refused(s.call("GET", "/v1/authorize", key="unknown-key-value-123456789", headers=gw),
            401, "unauthorized")
    plan = make_plan(s, name="GatewayBurst", throttle={"rateLimit": 0.01, "burstLimit": 2})
    k = make_key(s, planId=plan["id"], customerId="acme corp/1")
    for want in (2, 1):
        r = expect(s.call("GET", "/v1/authorize", key=k["value"], headers=gw), 204)
        check(r.header("X-Tally-Status") is None and rate_headers(r) ==
              ("2", str(want - 1), r.header("X-RateLimit-Reset"), k["id"]), repr(r.headers))
        # The customer id, percent-encoded, only in the gateway answer.
        check(r.header("X-Tally-Customer-Id") == "acme%20corp%2F1", repr(r.headers))
    r = expect(authorize(s, make_key(s, planId=plan["id"], customerId="c")["value"]), 204)
    check(r.header("X-Tally-Customer-Id") is None, "plain answer changed: %r" % r.headers)
    r = s.call("GET", "/v1/authorize", key=k["value"], headers=gw)
    refused(r, 429, "throttled")
    check(int(r.header("Retry-After")) >= 1 and rate_headers(r)[:2] == ("2", "0") and
          r.header("X-Tally-Key-Id") == k["id"], repr(r.headers))
    # Without the header (or with another value) the same refusal is the plain 429.
    expect(authorize(s, k["value"]), 429, "throttled")
    r = s.call("GET", "/v1/authorize", key=k["value"], headers=dict(gw, **{"X-Tally-Gateway": "x"}))
    check(r.status == 429 and r.header("X-Tally-Status") is None, repr(r))
    expect(s.call("PATCH", "/v1/keys/{id}", ids={"id": k["id"]}, admin=True,
                  body={"enabled": False}), 200)
    refused(s.call("GET", "/v1/authorize", key=k["value"], headers=gw), 403, "key_disabled")


def cache_refreshes(s):
    r = expect(s.ops("/metrics"), 200)
    m = re.search(r"^tally_api_key_cache_refreshes_total(?:\{\})? (\S+)$", r.raw, re.M)
    check(m is not None, "no tally_api_key_cache_refreshes_total in /metrics")
    return float(m.group(1))


def wait_cache_reloads(s, count):
    start = cache_refreshes(s)
    deadline = time.monotonic() + count * REFRESH_MS / 1000 + 5
    while cache_refreshes(s) < start + count:
        check(time.monotonic() < deadline, "fewer than %d cache reloads in time" % count)
        time.sleep(REFRESH_MS / 4000)


@test
def authorize_quota_survives_reloads(s):
    # No collector counts anything (no events, no counter row): the
    # requests this process allowed still count after the cache reloads,
    # rather than the quota opening again at every reload.
    plan = make_plan(s, name="Quota3", quota={"limit": 3, "period": "DAY"})
    k = make_key(s, planId=plan["id"])
    statuses = []
    for _ in range(4):
        r = authorize(s, k["value"])
        statuses.append((r.status, r.header("X-RateLimit-Remaining")))
    check(statuses == [(204, "2"), (204, "1"), (204, "0"), (429, "0")], "statuses %r" % statuses)
    wait_cache_reloads(s, 2)
    r = expect(authorize(s, k["value"]), 429, "quota_exceeded")
    check(rate_headers(r)[:2] == ("3", "0"), repr(r.headers))
    wait_cache_reloads(s, 2)
    statuses = [authorize(s, k["value"]).status for _ in range(3)]
    check(statuses == [429] * 3, "after more reloads: %r" % statuses)
    # The collector catching up with fewer than were allowed changes nothing.
    put_counter(s, k["id"], "DAY", iso(day_start()), 2)
    wait_cache_reloads(s, 2)
    r = expect(authorize(s, k["value"]), 429, "quota_exceeded")
    check(rate_headers(r)[:2] == ("3", "0"), repr(r.headers))


@test
def escaped_paths_do_not_reroute(s):
    plan = make_plan(s, name="Escapes")
    k = make_key(s, name="escapes", planId=plan["id"])
    # %00 must not cut the path short (that deleted the key) nor %2F add a
    # segment (that reached the /plan route).
    expect(s.request("DELETE", "/v1/keys/%s%%00/plan" % k["id"], admin=True), 404, "not_found")
    expect(s.request("DELETE", "/v1/keys/%s%%00" % k["id"], admin=True), 404, "not_found")
    expect(s.request("DELETE", "/v1/keys/%s%%00/x" % k["id"], admin=True), 404, "not_found")
    expect(s.request("GET", "/v1/keys/%s%%2Fplan" % k["id"], admin=True), 404, "not_found")
    expect(s.request("DELETE", "/v1/keys/%s%%2fplan" % k["id"], admin=True), 404, "not_found")
    expect(s.request("GET", "/v1/plans/%s%%00" % plan["id"], admin=True), 404, "not_found")
    got = expect(s.call("GET", "/v1/keys/{id}", ids={"id": k["id"]}, admin=True), 200).json
    check(got["planId"] == plan["id"], "the key lost its plan: %r" % got)
    # Other escapes still decode: %5F is '_'.
    expect(s.request("GET", "/v1/keys/" + k["id"].replace("_", "%5F"), admin=True), 200)
    # A NUL in a query value stays the literal text: no 5xx, no match.
    r = expect(s.call("GET", "/v1/keys", admin=True, query="?customerId=a%00b"), 200)
    check(r.json["items"] == [], repr(r))


@test
def method_throttles_match_any_spelling(s):
    plan = make_plan(s, name="Spellings", throttle={"rateLimit": 0.01, "burstLimit": 100},
                     methodThrottles={"/x/GET": {"rateLimit": 0.01, "burstLimit": 1},
                                      "/a//b/./c/POST": {"rateLimit": 0.01, "burstLimit": 1}})
    k = make_key(s, planId=plan["id"])
    expect(authorize(s, k["value"], "GET", "/x"), 204)
    for method, uri in (("GET", "/x"), ("GET", "/%78"), ("GET", "/x/"), ("GET", "//x"),
                        ("GET", "/./x"), ("GET", "/y/../x"), ("GET", "/../x"), ("GET", "/%2e/x"),
                        ("GET", "/x?a=1"), ("GET", "/x/?a=1"), ("GET", "/x#f"), ("get", "/x"),
                        ("Get", "/%78/"), ("GET", "/%2Fx")):
        expect(authorize(s, k["value"], method, uri), 429, "throttled")
    # Other paths and methods keep the plan's throttle.
    for method, uri in (("POST", "/x"), ("GET", "/xy"), ("GET", "/x/y")):
        expect(authorize(s, k["value"], method, uri), 204)
    # A pattern written unnormalized matches its normalized path.
    expect(authorize(s, k["value"], "POST", "/a/b/c"), 204)
    expect(authorize(s, k["value"], "post", "/a/b/c/"), 429, "throttled")


@test
def client_mistakes_are_never_5xx(s):
    k = make_key(s, name="mistakes")
    # Invalid UTF-8 quoted back in an error message.
    expect(s.request("GET", "/%FF"), 404, "not_found")
    expect(s.request("GET", "/" + "a" * 199 + "%C3%A9"), 404, "not_found")
    expect(s.call("GET", "/v1/plans", admin=True, query="?%FF=1"), 400)
    expect(s.call("GET", "/v1/plans", admin=True, query="?" + "a" * 59 + "%C3%A9=1"), 400,
           "unknown_parameter")
    name = "a" * 59 + "\u00e9\u00e9"
    expect(s.call("POST", "/v1/plans", admin=True, body='{"name":"x","%s":1}' % name), 400,
           "unknown_field")
    expect(s.call("POST", "/v1/keys", admin=True, body='{"%s":1}' % name), 400, "unknown_field")
    expect(s.call("POST", "/v1/plans", admin=True,
                  body='{"name":"x","quota":{"limit":1,"period":"DAY","%s":1}}' % name), 400,
           "unknown_field")
    expect(s.call("POST", "/v1/plans", admin=True,
                  body='{"name":"x","throttle":{"rateLimit":1,"burstLimit":1,"%s":1}}' % name), 400,
           "unknown_field")
    # Query values that are not valid UTF-8 or not valid ids.
    expect(s.call("GET", "/v1/keys", admin=True, query="?customerId=%FF"), 400, "invalid_parameter")
    expect(s.call("GET", "/v1/keys", admin=True, query="?planId=%FF"), 400, "invalid_parameter")
    expect(s.call("GET", "/v1/keys", admin=True, query="?planId=a%20b"), 400, "invalid_parameter")
    expect(s.call("GET", "/v1/keys/{id}/usage", ids={"id": k["id"]}, admin=True,
                  query="?from=%FF"), 400, "invalid_parameter")
    # Repeated parameters are refused rather than one silently winning.
    expect(s.call("GET", "/v1/keys", admin=True, query="?limit=1&limit=2"), 400,
           "invalid_parameter")
    # A default `from` before year 1.
    for g in ("hour", "day", "month"):
        r = expect(s.call("GET", "/v1/keys/{id}/usage", ids={"id": k["id"]}, admin=True,
                          query="?to=0001-01-01&granularity=" + g), 200).json
        check(r["from"].startswith("0001-01-01"), repr(r))
    check("out of memory" not in s.log_text(), "a client's mistake logged out of memory")
    # The Bearer scheme is case-insensitive.
    for scheme in ("bearer", "BEARER", "BeArEr"):
        expect(s.call("GET", "/v1/plans", headers={"Authorization": scheme + " " + ADMIN_TOKEN},
                      query="?limit=1"), 200)
    expect(s.call("GET", "/v1/plans", headers={"Authorization": "bearer " + ADMIN_TOKEN.upper()}),
           401)
    # A JSON parse error tells where, without echoing the body's bytes.
    r = expect(s.call("POST", "/v1/plans", admin=True, body=b'{"name": "x", "q": \xff\xfe}'), 400,
               "invalid_json")
    check("line 1" in r.json["error"]["message"], repr(r))
    r = expect(s.call("POST", "/v1/plans", admin=True, body='{"name": secret-word}'), 400,
               "invalid_json")
    check("secret" not in r.raw and "line 1, column" in r.raw, repr(r))


@test
def database_waits_are_bounded(s):
    """A locked table holds each statement at most statement_timeout (5 s)
    and a request waits at most ~2 s for a pooled connection: both answer
    503 and the api keeps serving."""
    import threading
    port = free_port()
    binary = os.path.join(os.path.abspath(s.args.asan_bin), "tally-api")
    log = open(os.path.join(s.tmp, "api-pool.log"), "ab")
    env = s.api_env({"TALLY_HTTP_ADDR": "127.0.0.1:%d" % port})
    api = subprocess.Popen([binary, "--db-pool-size", "1", "--threads", "4"], env=env,
                           stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                           start_new_session=True)
    locker = None
    try:
        def get(path, headers=None):
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            try:
                t0 = time.monotonic()
                conn.request("GET", path, headers=headers or {})
                res = conn.getresponse()
                return Answer(res.status, res.getheaders(), res.read().decode()), \
                    time.monotonic() - t0
            finally:
                conn.close()
        deadline = time.monotonic() + 20
        while True:
            try:
                if get("/healthz")[0].status == 200:
                    break
            except OSError:
                pass
            check(time.monotonic() < deadline, "the second api did not start")
            time.sleep(0.1)
        locker = subprocess.Popen(["psql", s.db_url, "-X", "-q", "-c",
                                   "BEGIN; LOCK TABLE api_keys IN ACCESS EXCLUSIVE MODE; "
                                   "SELECT pg_sleep(9); COMMIT;"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.5)
        admin = {"Authorization": "Bearer " + ADMIN_TOKEN}
        results = []

        def one(first=False):
            results.append(get("/v1/keys", admin) + (first,))
        first = threading.Thread(target=one, args=(True,))
        first.start()
        time.sleep(0.3)  # the first request holds the only connection
        others = [threading.Thread(target=one) for _ in range(4)]
        for t in others:
            t.start()
        for t in [first] + others:
            t.join(timeout=30)
        check(len(results) == 5, "answers: %r" % results)
        # The first runs into statement_timeout; the others (each on a
        # database worker of its own) give up waiting for the connection
        # ~2 s after they arrived, or get it once the lock is gone.
        for answer, seconds, is_first in results:
            check(seconds < 12, "an answer took %.1f s" % seconds)
            if is_first:
                check(answer.status == 503 and answer.error_code() == "database_busy",
                      "first: %r after %.1f s; all: %r" % (answer, seconds, results))
                check(4 < seconds < 8, "the statement ran %.1f s" % seconds)
            elif answer.status != 200:
                expect(answer, 503, "database_busy")
        check(any(a.status == 503 and t < 3.5 and not f for a, t, f in results),
              "no request gave up waiting for a connection: %r" % results)
    finally:
        if locker is not None:
            locker.wait(timeout=30)
        if api.poll() is None:
            api.send_signal(signal.SIGTERM)
        try:
            api.wait(timeout=15)
        except subprocess.TimeoutExpired:
            api.kill()
            api.wait()
        log.close()
    text = open(os.path.join(s.tmp, "api-pool.log"), "rb").read().decode("utf-8", "replace")
    for p in SANITIZER_PATTERNS:
        check(p not in text, "sanitizer report in the second api's log: " + text[-1500:])


class ExtraApi:
    """A second sanitized tally-api on the same database, with its own
    flags, for the tests that need settings the suite's api does not have.
    Stopped with SIGTERM on exit; its log must hold no sanitizer report."""

    def __init__(self, s, name, flags):
        self.s = s
        self.port = free_port()
        self.log_path = os.path.join(s.tmp, name + ".log")
        self.flags = flags
        self.api = None

    def __enter__(self):
        binary = os.path.join(os.path.abspath(self.s.args.asan_bin), "tally-api")
        self.log = open(self.log_path, "ab")
        self.api = subprocess.Popen(
            [binary, "--openapi-file", os.path.join(REPO, "docs", "openapi.json")] + self.flags,
            env=self.s.api_env({"TALLY_HTTP_ADDR": "127.0.0.1:%d" % self.port}),
            stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True)
        deadline = time.monotonic() + 20
        while True:
            try:
                if self.get("/healthz")[0].status == 200:
                    return self
            except OSError:
                pass
            check(self.api.poll() is None, "the second api exited: " + self.log_text()[-1500:])
            check(time.monotonic() < deadline, "the second api did not start")
            time.sleep(0.1)

    def __exit__(self, *exc):
        rc = terminate(self.api)
        self.log.close()
        text = self.log_text()
        if exc[0] is None:
            for p in SANITIZER_PATTERNS:
                check(p not in text, "sanitizer report in the second api's log: " + text[-1500:])
            check(rc == 0, "the second api exited %r on SIGTERM: %s" % (rc, text[-1500:]))
        return False

    def log_text(self):
        with open(self.log_path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def get(self, path, headers=None, conn=None, route=None):
        """(Answer, seconds). On `conn` (kept open) or a new connection.
        With `route`, the answer counts for the OpenAPI coverage check."""
        own = conn is None
        if own:
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            t0 = time.monotonic()
            conn.request("GET", path, headers=headers or {})
            res = conn.getresponse()
            answer = Answer(res.status, res.getheaders(), res.read().decode("utf-8", "replace"))
            seconds = time.monotonic() - t0
        finally:
            if own:
                conn.close()
        if route is not None:
            self.s.seen.add(("GET", route, answer.status))
        return answer, seconds


@test
def me_quota_answers_from_the_cache(s):
    """GET /v1/me/quota takes the admin quota route's path: the key cache,
    found by the hash of x-api-key, with the database only for a key the
    cache does not know yet. An api whose cache reloads once a minute shows
    that: a counter written straight into the database after its load is
    not seen by either quota route (the database would see it at once), and
    both answer the same document."""
    plan = make_plan(s, name="MeCache", quota={"limit": 40, "period": "DAY"})
    k = make_key(s, name="me-cache", planId=plan["id"])
    off = make_key(s, name="me-cache-off", planId=plan["id"], enabled=False)
    nop = make_key(s, name="me-cache-noplan")
    today = iso(day_start())
    put_counter(s, k["id"], "DAY", today, 5)
    with ExtraApi(s, "api-me-cache", ["--key-refresh-ms", "60000"]) as api:
        admin = {"Authorization": "Bearer " + ADMIN_TOKEN}
        put_counter(s, k["id"], "DAY", today, 9)  # after the load: not in the cache
        me, _ = api.get("/v1/me/quota", {"x-api-key": k["value"]}, route="/v1/me/quota")
        by_id, _ = api.get("/v1/keys/%s/quota" % k["id"], admin, route="/v1/keys/{id}/quota")
        expect(me, 200)
        expect(by_id, 200)
        check(me.json["used"] == 5 and me.json["remaining"] == 35 and me.json["keyId"] == k["id"],
              "not answered from the cache: %r" % me)
        check(me.json == by_id.json, "/v1/me/quota %r differs from the admin route %r"
              % (me.json, by_id.json))
        # Refusals from the cache, as the database path gave them.
        expect(api.get("/v1/me/quota", {"x-api-key": off["value"]}, route="/v1/me/quota")[0],
               403, "key_disabled")
        expect(api.get("/v1/me/quota", {"x-api-key": nop["value"]}, route="/v1/me/quota")[0],
               409, "no_plan")
        expect(api.get("/v1/me/quota?x=1", {"x-api-key": k["value"]}, route="/v1/me/quota")[0],
               400, "unknown_parameter")
        for headers in ({}, {"x-api-key": ""}, {"x-api-key": "A" * 300},
                        {"x-api-key": "not-a-key-value-0123456789"},
                        {"x-api-key": k["id"]}, {"Authorization": "Bearer " + ADMIN_TOKEN}):
            expect(api.get("/v1/me/quota", headers, route="/v1/me/quota")[0], 401)
        # A key created after the load (straight in the database, as another
        # process would): the database answers, with the same shape.
        s.psql("INSERT INTO api_keys (id, value_hash, plan_id) VALUES ('key_me_late', "
               "sha256('me-late-secret-value-0123456789'), '%s')" % plan["id"])
        put_counter(s, "key_me_late", "DAY", today, 4)
        late, _ = api.get("/v1/me/quota", {"x-api-key": "me-late-secret-value-0123456789"},
                          route="/v1/me/quota")
        expect(late, 200)
        check(late.json["keyId"] == "key_me_late" and late.json["used"] == 4 and
              set(late.json) == set(me.json), repr(late))
        late_by_id, _ = api.get("/v1/keys/key_me_late/quota", admin, route="/v1/keys/{id}/quota")
        check(late_by_id.json == late.json or
              {k2: v for k2, v in late_by_id.json.items() if k2 != "asOf"} ==
              {k2: v for k2, v in late.json.items() if k2 != "asOf"},
              "database answers differ: %r vs %r" % (late_by_id.json, late.json))
        s.psql("UPDATE api_keys SET enabled = false WHERE id = 'key_me_late'")
        expect(api.get("/v1/me/quota", {"x-api-key": "me-late-secret-value-0123456789"},
                       route="/v1/me/quota")[0], 403, "key_disabled")
    # The suite's api (reloading every REFRESH_MS) sees the new counter soon.
    q = eventually(lambda: expect(s.call("GET", "/v1/me/quota", key=k["value"]), 200).json,
                   lambda q: q["used"] == 9)
    check(q["used"] == 9, repr(q))


@test
def authorize_never_waits_behind_the_database(s):
    """Review item I2: with usage_hourly locked, more usage requests than
    libmicrohttpd threads hang on the database (until statement_timeout),
    and authorize requests answered meanwhile, on new and on kept-alive
    connections, still take milliseconds: the database routes run on the
    workers, never on the threads that serve authorize."""
    import threading
    plan = make_plan(s, name="NoWait", throttle={"rateLimit": 1000, "burstLimit": 1000})
    k = make_key(s, name="no-wait", planId=plan["id"])
    victim = make_key(s, name="no-wait-usage")
    threads = 2  # libmicrohttpd's; 8 statements hang at once on 8 connections
    flags = ["--threads", str(threads), "--db-pool-size", "8", "--db-workers", "12",
             "--key-refresh-ms", "300"]
    with ExtraApi(s, "api-no-wait", flags) as api:
        gate = {"x-api-key": k["value"], "X-Original-Method": "GET", "X-Original-URI": "/x"}
        expect(api.get("/v1/authorize", gate)[0], 204)
        locker = subprocess.Popen(
            ["psql", s.db_url, "-X", "-q", "-c", "BEGIN; LOCK TABLE usage_hourly IN ACCESS "
             "EXCLUSIVE MODE; SELECT pg_sleep(7); COMMIT;"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 10
            while s.psql("SELECT count(*) FROM pg_locks WHERE granted AND mode = "
                         "'AccessExclusiveLock' AND relation = 'usage_hourly'::regclass") != "1":
                check(time.monotonic() < deadline, "the lock was not taken")
                time.sleep(0.05)
            admin = {"Authorization": "Bearer " + ADMIN_TOKEN}
            slow = []

            def usage():
                slow.append(api.get("/v1/keys/%s/usage" % victim["id"], admin,
                                    route="/v1/keys/{id}/usage"))
            hangers = [threading.Thread(target=usage) for _ in range(4 * threads + 4)]
            for t in hangers:
                t.start()
            time.sleep(0.5)  # they are in: each holds a connection to the api
            fast, kept = [], http.client.HTTPConnection("127.0.0.1", api.port, timeout=30)
            try:
                check(not slow, "usage answered despite the lock: %r" % slow)
                t_end = time.monotonic() + 3
                while time.monotonic() < t_end:
                    fast.append(("new", api.get("/v1/authorize", gate, route="/v1/authorize")))
                    fast.append(("kept", api.get("/v1/authorize", gate, conn=kept)))
                    fast.append(("quota", api.get("/v1/keys/%s/quota" % k["id"], admin)))
                    time.sleep(0.05)
                in_flight = len(hangers) - len(slow)
            finally:
                kept.close()
            for t in hangers:
                t.join(timeout=30)
        finally:
            locker.wait(timeout=30)
        for kind, (answer, seconds) in fast:
            check(answer.status in (204, 200), "%s: %r" % (kind, answer))
        times = sorted(sec for _, (_, sec) in fast)
        check(times[-1] < 0.5, "a request answered from memory took %.3f s while the database "
              "hung (median %.4f s)" % (times[-1], times[len(times) // 2]))
        check(len(times) >= 15, "only %d requests in the window" % len(times))
        # The usage requests really did hang on the lock meanwhile.
        check(in_flight > threads, "only %d usage requests were still waiting" % in_flight)
        check(len(slow) == len(hangers), "usage answers: %d" % len(slow))
        for answer, seconds in slow:
            check(answer.status == 503 and answer.error_code() == "database_busy" or
                  answer.status == 200, "usage: %r" % answer)
        check(max(sec for _, sec in slow) > 4, "no usage request waited on the lock: %r"
              % [round(sec, 2) for _, sec in slow])
        print("    %d authorize/quota answers while %d usage requests hung: median %.1f ms, "
              "max %.1f ms" % (len(times), in_flight, 1000 * times[len(times) // 2],
                               1000 * times[-1]), flush=True)


import http_cases  # noqa: E402,F401 - registers the HTTP-layer tests (tests/api/http_cases.py)


@test
def openapi_covers_every_answer(s):
    with open(os.path.join(REPO, "docs", "openapi.json")) as f:
        doc = json.load(f)
    paths = doc["paths"]
    missing = []
    for method, route, status in sorted(s.seen):
        # The router's own answers (unknown path, method not allowed) are
        # described once in info.description, not per operation.
        if status == 405 or (status == 404 and route not in paths):
            continue
        op = paths.get(route, {}).get(method.lower())
        if op is None:
            missing.append("%s %s (no operation)" % (method, route))
        elif str(status) not in op.get("responses", {}):
            missing.append("%s %s -> %d" % (method, route, status))
    check(not missing, "answers the OpenAPI document does not describe: " + "; ".join(missing))
    # The served routes are the api's own table (services/api/routes.h), as
    # `tally-api --list-routes` prints it: method, path, auth, where it runs.
    binary = os.path.join(os.path.abspath(s.args.asan_bin), "tally-api")
    listing = subprocess.run([binary, "--list-routes"], capture_output=True, text=True,
                             env=clean_env(), timeout=30)
    check(listing.returncode == 0, "tally-api --list-routes: %r" % listing.stderr[-500:])
    routes = set()
    for line in listing.stdout.splitlines():
        method, path = line.split("\t")[:2]
        routes.add((method.lower(), path))
    undocumented = [r for r in sorted(routes) if r[0] not in paths.get(r[1], {})]
    check(routes and not undocumented, "routes missing from the document: %r" % undocumented)
    # A path another program serves says so (x-tally-program, with its own
    # servers): POST /v1/events is tally-ingest's, checked by tests/ingest.
    ops = {(m, p) for p, item in paths.items() for m in item if m in
           ("get", "post", "put", "patch", "delete")
           and item.get("x-tally-program", "tally-api") == "tally-api"}
    check(ops <= routes, "documented but not served: %r" % sorted(ops - routes))


import semantics_cases  # noqa: E402 - request semantics and key storage (apisem)
semantics_cases.register(sys.modules[__name__])
import counter_notice_cases  # noqa: E402 - counter change notices (issue #16)
counter_notice_cases.register(sys.modules[__name__])


def run_tests(s, only):
    passed = failed = 0
    for fn in TESTS:
        if only and fn.__name__ not in only:
            continue
        t0 = time.monotonic()
        try:
            fn(s)
            passed += 1
            print("PASS %-32s %6.2fs" % (fn.__name__, time.monotonic() - t0), flush=True)
        except Exception as e:  # noqa: BLE001 - report and continue
            failed += 1
            reason = str(e) if isinstance(e, Failure) else traceback.format_exc()
            print("FAIL %-32s %6.2fs %s" % (fn.__name__, time.monotonic() - t0, reason),
                  flush=True)
    return passed, failed


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--asan-bin", default=os.path.join(REPO, "build", "asan", "bin"))
    parser.add_argument("--only", default="")
    parser.add_argument("--keep-logs", default=None)
    args = parser.parse_args()
    only = set(filter(None, args.only.split(",")))
    tmp = tempfile.mkdtemp(prefix="tally-api-tests-")
    s = Suite(args, tmp)
    passed = failed = 0
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        t0 = time.monotonic()
        s.up()
        s.start_api()
        print("stack and api up in %.1fs" % (time.monotonic() - t0), flush=True)
        passed, failed = run_tests(s, only)
        t1 = time.monotonic()
        if s.conn:
            s.conn.close()
        rc, seconds = s.stop_api()
        report = None
        text = s.log_text()
        for i, line in enumerate(text.splitlines()):
            if any(p in line for p in SANITIZER_PATTERNS):
                report = "\n".join(text.splitlines()[i:i + 15])
                break
        if rc == 0 and seconds < 10 and report is None and "stopped" in text:
            passed += 1
            print("PASS %-32s %6.2fs" % ("sigterm_clean_exit", time.monotonic() - t1))
        else:
            failed += 1
            print("FAIL %-32s %6.2fs exit %r after %.1fs; %s" % (
                "sigterm_clean_exit", time.monotonic() - t1, rc, seconds,
                report or text[-1500:]))
    except KeyboardInterrupt:
        failed += 1
        print("FAIL interrupted")
    except Exception as e:  # noqa: BLE001
        failed += 1
        print("FAIL setup: %s" % (e if isinstance(e, Failure) else traceback.format_exc()))
    finally:
        if s.api is not None and s.api.poll() is None:
            s.api.kill()
            s.api.wait()
        s.down()
        if args.keep_logs:
            os.makedirs(args.keep_logs, exist_ok=True)
            if os.path.exists(s.api_log):
                shutil.copy(s.api_log, args.keep_logs)
        shutil.rmtree(tmp, ignore_errors=True)
    print("%d passed, %d failed" % (passed, failed))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
