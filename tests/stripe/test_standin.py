#!/usr/bin/env python3
"""Self-test of the Stripe stand-in: starts it as a subprocess on a free port
and checks its behaviour with http.client. Prints `N passed, N failed` and
exits non-zero on failure.

    python3 tests/stripe/test_standin.py [-v]
"""

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
import urllib.parse

HERE = os.path.dirname(os.path.abspath(__file__))
STANDIN = os.path.join(HERE, "standin.py")
API_KEY = "sk_test_51SelfTestKeyQ7w2"
UA = "tally-reporter-selftest/1.0"
VERBOSE = "-v" in sys.argv

PORT = None
PROC = None
results = {"passed": 0, "failed": 0}
_counter = [0]


def uniq(prefix="id"):
    _counter[0] += 1
    return "%s-%d-%d" % (prefix, os.getpid(), _counter[0])


class Fail(Exception):
    pass


def check(cond, msg):
    if not cond:
        raise Fail(msg)


def eq(got, want, what=""):
    if got != want:
        raise Fail("%s: got %r, want %r" % (what, got, want))


def start(*extra):
    p = subprocess.Popen([sys.executable, STANDIN, "--port", "0", "--api-key", API_KEY] + list(extra),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = p.stdout.readline()
    if not line.startswith("stripe-standin listening on http://127.0.0.1:"):
        p.kill()
        raise RuntimeError("bad start line %r; stderr: %s" % (line, p.stderr.read()))
    return p, line, int(line.rsplit(":", 1)[1])


class Resp:
    def __init__(self, status, headers, raw):
        self.status = status
        self.headers = headers
        self.raw = raw
        try:
            self.json = json.loads(raw) if raw else None
        except ValueError:
            self.json = None

    @property
    def err(self):
        return (self.json or {}).get("error") or {}

    def h(self, name):
        return self.headers.get(name.lower())

    def __repr__(self):
        return "<%d %s %r>" % (self.status, self.headers, self.raw[:300])


def request(method, path, body=None, headers=None, auth=True, conn=None, timeout=10, port=None,
            ctype="application/x-www-form-urlencoded"):
    own = conn is None
    if own:
        conn = http.client.HTTPConnection("127.0.0.1", port or PORT, timeout=timeout)
    h = {"User-Agent": UA}
    if auth:
        h["Authorization"] = "Bearer " + (auth if isinstance(auth, str) else API_KEY)
    if body is not None:
        if isinstance(body, (list, dict)):
            body = urllib.parse.urlencode(body)
        if isinstance(body, str):
            body = body.encode()
        if ctype:
            h["Content-Type"] = ctype
    h.update(headers or {})
    try:
        conn.request(method, path, body=body, headers=h)
        r = conn.getresponse()
        raw = r.read()
        resp = Resp(r.status, {k.lower(): v for k, v in r.getheaders()}, raw)
    finally:
        if own:
            conn.close()
    if not path.startswith("/_standin/"):
        rid = resp.h("Request-Id") or ""
        check(rid.startswith("req_"), "no Request-Id header on %s %s: %r" % (method, path, resp))
        check((resp.h("Content-Type") or "").startswith("application/json"), "not JSON: %r" % resp)
    return resp


def ctl(method, route, obj=None):
    body = json.dumps(obj).encode() if obj is not None else None
    r = request(method, "/_standin/" + route, body=body, auth=False, ctype="application/json")
    check(r.status == 200, "control %s %s: %r" % (method, route, r))
    return r.json


def reset(**cfg):
    ctl("POST", "reset", {"config": True})
    if cfg:
        ctl("POST", "config", cfg)


def meter(value=1, cus="cus_a", name="api_calls", ident=None, key=None, ts=None, extra=None, headers=None,
          **kw):
    p = [("event_name", name), ("payload[stripe_customer_id]", cus), ("payload[value]", str(value))]
    if ident is not False:
        p.append(("identifier", uniq() if ident is None else ident))
    if ts is not None:
        p.append(("timestamp", str(ts)))
    p += extra or []
    h = dict(headers or {})
    if key:
        h["Idempotency-Key"] = key
    return request("POST", "/v1/billing/meter_events", p, h, **kw)


def usage(si="si_1", qty=1, action=None, key=None, version=None, ts=None, **kw):
    p = [("quantity", str(qty))]
    if ts is not None:
        p.append(("timestamp", str(ts)))
    if action:
        p.append(("action", action))
    h = {}
    if key:
        h["Idempotency-Key"] = key
    if version:
        h["Stripe-Version"] = version
    return request("POST", "/v1/subscription_items/%s/usage_records" % si, p, h, **kw)


def is_err(r, status, etype, code=None, param=None, msg=None):
    check(r.status == status, "status: want %d, got %r" % (status, r))
    eq(r.err.get("type"), etype, "error.type")
    if code is not None:
        eq(r.err.get("code"), code, "error.code")
    if param is not None:
        eq(r.err.get("param"), param, "error.param")
    if msg is not None:
        check(msg in (r.err.get("message") or ""), "message %r lacks %r" % (r.err.get("message"), msg))


TESTS = []


def test(fn):
    TESTS.append(fn)
    return fn


# ---------------------------------------------------------------------------
@test
def auth():
    reset()
    r = meter(auth=False)
    is_err(r, 401, "invalid_request_error", msg="did not provide an API key")
    r = meter(auth="sk_test_51WrongKeyXYZ9876")
    is_err(r, 401, "invalid_request_error", msg="Invalid API Key provided: sk_test_****9876")
    check("sk_test_51WrongKeyXYZ9876" not in r.raw.decode(), "full key echoed")
    r = request("POST", "/v1/billing/meter_events", "a=1", {"Authorization": "Basic " + API_KEY}, auth=False)
    eq(r.status, 401, "basic auth")
    eq(ctl("GET", "stats")["auth_failures"], 3, "auth_failures")
    eq(ctl("GET", "ledger")["accepted"], 0, "nothing accepted")


@test
def content_type_and_strict_form():
    reset()
    r = request("POST", "/v1/billing/meter_events", '{"event_name":"api_calls"}', ctype="application/json")
    is_err(r, 400, "invalid_request_error", msg="Content-Type")
    for bad in ("event_name=api_calls&&payload[value]=1", "event_name", "a=%ff"):
        r = request("POST", "/v1/billing/meter_events", bad)
        is_err(r, 400, "invalid_request_error", msg="parse")
    r = meter(extra=[("payload[other]", "x")])
    is_err(r, 400, "invalid_request_error", code="parameter_unknown", param="payload[other]",
           msg="Received unknown parameter: payload[other]")
    r = meter(extra=[("foo", "1")])
    is_err(r, 400, "invalid_request_error", param="foo", msg="Received unknown parameter: foo")
    r = meter(extra=[("event_name", "api_calls")])
    is_err(r, 400, "invalid_request_error", param="event_name", msg="duplicate")
    r = meter(ident="")
    is_err(r, 400, "invalid_request_error", param="identifier", code="parameter_invalid_empty")
    check(ctl("GET", "stats")["bad_requests"] >= 7, "bad_requests counted")


@test
def meter_event_success():
    reset()
    now = int(time.time())
    r = meter(value=25, ident="evt-1", key="key-1", ts=now - 60)
    eq(r.status, 200, "status")
    j = r.json
    eq(j["object"], "billing.meter_event", "object")
    eq(j["event_name"], "api_calls", "event_name")
    eq(j["identifier"], "evt-1", "identifier")
    eq(j["payload"], {"stripe_customer_id": "cus_a", "value": "25"}, "payload")
    eq(j["timestamp"], now - 60, "timestamp")
    eq(j["livemode"], False, "livemode")
    check(abs(j["created"] - now) <= 2, "created")
    r = meter(value=5, cus="cus_b", name="other")
    eq(r.status, 200, "second")
    r = meter(value=0, ident=False)  # no identifier: generated; no timestamp: now
    eq(r.status, 200, "generated identifier")
    check(r.json["identifier"], "identifier generated")
    check(abs(r.json["timestamp"] - time.time()) < 3, "default timestamp")
    led = ctl("GET", "ledger")
    eq(led["meter_events"], {"cus_a": {"api_calls": 25}, "cus_b": {"other": 5}}, "ledger")
    eq(led["accepted"], 3, "accepted")
    eq(led["identifiers"], 3, "identifiers")
    ev = ctl("GET", "events")
    eq(len(ev), 3, "events")
    e = ev[0]
    for k, v in (("kind", "meter_event"), ("identifier", "evt-1"), ("customer", "cus_a"),
                 ("event_name", "api_calls"), ("value", 25), ("timestamp", now - 60),
                 ("idempotency_key", "key-1")):
        eq(e.get(k), v, "event " + k)


@test
def meter_event_validation():
    reset()
    for missing in ("event_name", "payload[stripe_customer_id]", "payload[value]"):
        p = [("event_name", "api_calls"), ("payload[stripe_customer_id]", "cus_a"), ("payload[value]", "1")]
        p = [x for x in p if x[0] != missing]
        r = request("POST", "/v1/billing/meter_events", p)
        is_err(r, 400, "invalid_request_error", code="parameter_missing", param=missing)
    r = meter(name="x" * 101)
    is_err(r, 400, "invalid_request_error", param="event_name")
    r = meter(name="not_a_meter")
    is_err(r, 400, "invalid_request_error", param="event_name")
    r = meter(cus="cus_zzz")
    is_err(r, 400, "invalid_request_error", code="resource_missing", msg="No such customer: 'cus_zzz'")
    for v in ("-1", "1.5", "abc", " 1", "1e3"):
        r = meter(value=v)
        is_err(r, 400, "invalid_request_error", param="payload[value]")
    r = meter(ident="i" * 101)
    is_err(r, 400, "invalid_request_error", param="identifier")
    eq(meter(ident="i" * 100).status, 200, "100-char identifier")
    eq(meter(name="n" * 100).status, 400, "100-char unknown meter")  # length ok, meter unknown
    now = int(time.time())
    r = meter(ts=now - 36 * 86400)
    is_err(r, 400, "invalid_request_error", code="timestamp_too_far_in_past", param="timestamp")
    r = meter(ts=now + 600)
    is_err(r, 400, "invalid_request_error", code="timestamp_in_future", param="timestamp")
    r = meter(ts="soon")
    is_err(r, 400, "invalid_request_error", param="timestamp")
    eq(meter(ts=now - 34 * 86400).status, 200, "34 days old")
    eq(meter(ts=now + 240).status, 200, "4 minutes ahead")
    eq(ctl("GET", "ledger")["accepted"], 3, "accepted")


@test
def duplicate_identifier():
    reset()
    eq(meter(value=7, ident="dup-1", key="k-a").status, 200, "first")
    r = meter(value=7, ident="dup-1", key="k-b")
    is_err(r, 400, "invalid_request_error", msg="An event already exists with identifier dup-1.")
    eq(r.h("Stripe-Should-Retry"), "false", "Stripe-Should-Retry")
    r = meter(value=7, ident="dup-1")  # no key at all
    eq(r.status, 400, "dup without key")
    st = ctl("GET", "stats")
    eq(st["duplicate_identifiers"], 2, "duplicate_identifiers")
    eq(ctl("GET", "ledger")["meter_events"], {"cus_a": {"api_calls": 7}}, "counted once")


@test
def usage_records():
    reset()
    r = usage(qty=3, key="u-1")
    eq(r.status, 200, "status")
    j = r.json
    check(j["id"].startswith("mbur_"), "id")
    eq(j["object"], "usage_record", "object")
    eq(j["livemode"], False, "livemode")
    eq(j["quantity"], 3, "quantity")
    eq(j["subscription_item"], "si_1", "subscription_item")
    check(abs(j["timestamp"] - time.time()) < 3, "timestamp")
    eq(usage(qty=4, action="increment").status, 200, "increment")
    eq(usage(si="si_2", qty=10, ts=int(time.time()) - 3600).status, 200, "si_2")
    eq(ctl("GET", "ledger")["usage_records"], {"si_1": 7, "si_2": 10}, "increments add")
    eq(ctl("GET", "stats")["action_set"], 0, "no set yet")
    eq(usage(qty=2, action="set").status, 200, "set")
    eq(ctl("GET", "ledger")["usage_records"]["si_1"], 2, "set replaces")
    eq(ctl("GET", "stats")["action_set"], 1, "action_set counted")
    is_err(usage(action="decrement"), 400, "invalid_request_error", param="action")
    is_err(usage(qty="-2"), 400, "invalid_request_error", param="quantity")
    is_err(usage(ts=int(time.time()) - 40 * 86400), 400, "invalid_request_error", code="timestamp_too_far_in_past")
    r = request("POST", "/v1/subscription_items/si_1/usage_records", [("quantity", "1"), ("foo", "x")])
    is_err(r, 400, "invalid_request_error", param="foo", msg="Received unknown parameter: foo")
    r = usage(si="si_nope")
    is_err(r, 404, "invalid_request_error", code="resource_missing", msg="No such subscription item: 'si_nope'")
    # API versions
    for v in ("2025-03-31.basil", "2025-06-30.basil", "2026-01-28.clover"):
        is_err(usage(version=v), 400, "invalid_request_error", msg="removed")
    eq(usage(version="2025-02-24.acacia").status, 200, "acacia header")
    eq(usage(version="2024-06-20").status, 200, "older header")
    is_err(usage(version="bogus"), 400, "invalid_request_error", msg="Invalid Stripe API version")
    ctl("POST", "config", {"account_version": "2025-03-31.basil"})
    is_err(usage(), 400, "invalid_request_error", msg="removed")
    eq(usage(version="2025-02-24.acacia").status, 200, "header overrides account version")
    ev = [e for e in ctl("GET", "events") if e["kind"] == "usage_record"]
    eq(ev[0]["idempotency_key"], "u-1", "event idempotency key")
    eq(ev[0]["customer"], "cus_a", "event customer")
    eq(ev[0]["value"], 3, "event value")
    check("2025-03-31.basil" in ctl("GET", "stats")["stripe_versions"], "stripe_versions")


@test
def idempotency():
    reset()
    r1 = meter(value=3, ident="idem-1", key="K1")
    eq(r1.status, 200, "first")
    check(r1.h("Idempotent-Replayed") is None, "first not replayed")
    r2 = meter(value=3, ident="idem-1", key="K1")
    eq(r2.status, 200, "replay status")
    eq(r2.h("Idempotent-Replayed"), "true", "replay header")
    eq(r2.json, r1.json, "replay body")
    eq(r2.h("Request-Id"), r1.h("Request-Id"), "replayed Request-Id")
    r3 = meter(value=4, ident="idem-1", key="K1")
    is_err(r3, 400, "idempotency_error", msg="same parameters")
    r4 = usage(key="K1")  # other path, same key
    is_err(r4, 400, "idempotency_error")
    is_err(meter(key="x" * 256), 400, "invalid_request_error", msg="Idempotency-Key")
    eq(meter(key="x" * 255).status, 200, "255-char key")
    # validation errors are not stored: the same bad request is answered afresh
    r = meter(cus="cus_a", value="bad", ident="v-1", key="K2")
    eq(r.status, 400, "bad value")
    r = meter(cus="cus_a", value="bad", ident="v-1", key="K2")
    check(r.h("Idempotent-Replayed") is None, "validation error replayed")
    # resource errors are stored (the request executed)
    r = meter(cus="cus_gone", ident="v-2", key="K3")
    eq(r.status, 400, "unknown customer")
    r = meter(cus="cus_gone", ident="v-2", key="K3")
    eq(r.h("Idempotent-Replayed"), "true", "resource_missing replayed")
    st = ctl("GET", "stats")
    eq(st["replays"], 2, "replays")
    eq(st["idempotency_conflicts"], 2, "conflicts")
    eq(ctl("GET", "ledger")["meter_events"]["cus_a"]["api_calls"], 4, "ledger")


@test
def routes():
    reset()
    r = request("POST", "/v1/charges", "amount=1")
    is_err(r, 404, "invalid_request_error", msg="Unrecognized request URL (POST: /v1/charges)")
    r = request("GET", "/v1/billing/meter_events")
    is_err(r, 404, "invalid_request_error", msg="Unrecognized request URL (GET: /v1/billing/meter_events)")
    r = request("DELETE", "/v1/subscription_items/si_1/usage_records")
    eq(r.status, 404, "delete")
    r = request("POST", "/v1/charges", "amount=1", auth=False)
    eq(r.status, 401, "auth before routing")


@test
def body_limit():
    reset()
    big = "event_name=api_calls&identifier=" + "a" * (65 * 1024)
    r = request("POST", "/v1/billing/meter_events", big)
    is_err(r, 413, "invalid_request_error", msg="too large")
    ok = "event_name=api_calls&payload[stripe_customer_id]=cus_a&payload[value]=1&timestamp=" + "0" * 60000
    r = request("POST", "/v1/billing/meter_events", ok)
    check(r.status == 400 and r.err.get("param") == "timestamp", "60 KB body parsed: %r" % r)


@test
def keep_alive():
    reset()
    conn = http.client.HTTPConnection("127.0.0.1", PORT, timeout=10)
    conn.connect()
    sock = conn.sock
    for i in range(30):
        r = meter(ident="ka-%d" % i, conn=conn)
        eq(r.status, 200, "keep-alive %d" % i)
    r = meter(value="bad", conn=conn)
    eq(r.status, 400, "error keeps connection")
    r = meter(auth="sk_test_nopenopenope1", conn=conn)
    eq(r.status, 401, "401 keeps connection")
    eq(meter(conn=conn).status, 200, "after errors")
    check(conn.sock is sock, "connection was reused")
    conn.close()
    eq(ctl("GET", "ledger")["accepted"], 31, "accepted")


def seq(*kinds, **faults):
    cfg = {"fault_sequence": list(kinds)}
    if faults:
        cfg["faults"] = faults
    ctl("POST", "config", cfg)


@test
def fault_500_before():
    reset()
    seq("500_before")
    r = meter(value=9, ident="f5b", key="f5b-g0")
    is_err(r, 500, "api_error")
    eq(ctl("GET", "ledger")["accepted"], 0, "not processed")
    for _ in range(3):
        r = meter(value=9, ident="f5b", key="f5b-g0")
        eq(r.status, 500, "replayed 500")
        eq(r.h("Idempotent-Replayed"), "true", "replay header")
    r = meter(value=9, ident="f5b", key="f5b-g1")  # new key, same identifier
    eq(r.status, 200, "new key")
    eq(ctl("GET", "ledger")["meter_events"], {"cus_a": {"api_calls": 9}}, "counted once")
    eq(ctl("GET", "stats")["faults"], {"500_before": 1}, "fault counted")


@test
def fault_500_after():
    reset()
    seq("500_after")
    r = meter(value=6, ident="f5a", key="f5a-g0")
    is_err(r, 500, "api_error")
    eq(ctl("GET", "ledger")["meter_events"], {"cus_a": {"api_calls": 6}}, "processed")
    r = meter(value=6, ident="f5a", key="f5a-g0")
    eq((r.status, r.h("Idempotent-Replayed")), (500, "true"), "replayed 500")
    r = meter(value=6, ident="f5a", key="f5a-g1")
    is_err(r, 400, "invalid_request_error", msg="An event already exists with identifier f5a.")
    eq(r.h("Stripe-Should-Retry"), "false", "should retry false")
    eq(ctl("GET", "ledger")["meter_events"], {"cus_a": {"api_calls": 6}}, "counted once")
    # usage records: 500_after processes too
    seq("500_after")
    eq(usage(qty=2, key="u5a").status, 500, "usage 500_after")
    eq(usage(qty=2, key="u5a").h("Idempotent-Replayed"), "true", "usage replay")
    eq(ctl("GET", "ledger")["usage_records"], {"si_1": 2}, "usage counted once")


@test
def fault_drop_after():
    reset()
    seq("drop_after")
    try:
        r = meter(value=4, ident="fd", key="fd-g0")
        raise Fail("expected a connection error, got %r" % r)
    except (http.client.RemoteDisconnected, ConnectionError, http.client.BadStatusLine):
        pass
    eq(ctl("GET", "ledger")["meter_events"], {"cus_a": {"api_calls": 4}}, "processed")
    r = meter(value=4, ident="fd", key="fd-g0")
    eq((r.status, r.h("Idempotent-Replayed")), (200, "true"), "success stored and replayed")
    eq(r.json["identifier"], "fd", "replayed body")
    st = ctl("GET", "stats")
    eq(st["dropped"], 1, "dropped")
    eq(st["faults"], {"drop_after": 1}, "fault counted")


@test
def fault_429s():
    reset()
    seq("429_retry", "429_plain", "429_lock")
    r = meter(ident="f429", key="f429")
    is_err(r, 429, "invalid_request_error", code="rate_limit")
    eq(r.h("Stripe-Should-Retry"), "true", "429_retry header")
    r = meter(ident="f429", key="f429")
    is_err(r, 429, "invalid_request_error", code="rate_limit")
    eq(r.h("Stripe-Should-Retry"), None, "429_plain header")
    r = meter(ident="f429", key="f429")
    is_err(r, 429, "invalid_request_error", code="lock_timeout")
    eq(ctl("GET", "ledger")["accepted"], 0, "nothing processed")
    r = meter(ident="f429", key="f429")
    eq((r.status, r.h("Idempotent-Replayed")), (200, None), "429s not stored")
    eq(ctl("GET", "stats")["faults"], {"429_retry": 1, "429_plain": 1, "429_lock": 1}, "faults")


@test
def fault_409():
    reset()
    seq("409")
    r = meter(ident="f409", key="f409")
    is_err(r, 409, "idempotency_error")
    eq(ctl("GET", "ledger")["accepted"], 0, "not processed")
    r = meter(ident="f409", key="f409")
    eq((r.status, r.h("Idempotent-Replayed")), (200, None), "409 not stored")


@test
def fault_slow():
    reset()
    seq("slow", slow_s=1.2)
    t0 = time.time()
    try:
        r = meter(value=8, ident="fs", key="fs", timeout=0.3)
        raise Fail("expected a timeout, got %r" % r)
    except socket.timeout:
        pass
    check(time.time() - t0 < 1.0, "timed out early")
    eq(ctl("GET", "ledger")["meter_events"], {"cus_a": {"api_calls": 8}}, "processed before the hold")
    r = meter(value=8, ident="fs", key="fs")
    is_err(r, 409, "idempotency_error", code="idempotency_key_in_use")
    time.sleep(max(0, 1.4 - (time.time() - t0)))
    r = meter(value=8, ident="fs", key="fs")
    eq((r.status, r.h("Idempotent-Replayed")), (200, "true"), "stored after the hold")
    st = ctl("GET", "stats")
    eq(st["idempotency_in_progress"], 1, "in progress counted")
    eq(st["concurrency_violations"], 0, "a held answer is not in flight")
    # a patient client gets the answer
    seq("slow", slow_s=0.3)
    t0 = time.time()
    eq(meter(ident="fs2").status, 200, "slow answer")
    check(time.time() - t0 >= 0.25, "held")


@test
def fault_sequence_and_ok():
    reset()
    seq("ok", "500_before", "ok", "429_plain")
    eq(meter().status, 200, "ok")
    eq(meter().status, 500, "500_before")
    eq(meter().status, 200, "ok")
    eq(meter().status, 429, "429_plain")
    eq(meter().status, 200, "sequence done")
    eq(ctl("GET", "config")["fault_sequence"], [], "sequence consumed")
    # processing faults wait for a request that is processed: a replay does not use them up
    eq(meter(ident="rp", key="rp").status, 200, "stored")
    seq("500_before")
    eq(meter(ident="rp", key="rp").h("Idempotent-Replayed"), "true", "replay unaffected")
    eq(meter().status, 500, "next processed request gets it")
    # faults never hit the control routes
    seq("500_before", "429_plain", "drop_after")
    ctl("GET", "stats")
    ctl("POST", "config", {})
    eq(len(ctl("GET", "config")["fault_sequence"]), 3, "control routes do not consume faults")


@test
def random_faults_seeded():
    reset()
    ctl("POST", "config", {"faults": {"rate": 1.0, "kinds": ["500_before"]}})
    check(all(meter().status == 500 for _ in range(5)), "rate 1.0")

    def run():
        reset(faults={"rate": 0.5, "kinds": ["500_before", "429_plain", "409"], "seed": 42})
        return [meter().status for _ in range(40)]
    a, b = run(), run()
    eq(a, b, "seeded runs")
    check(len(set(a)) >= 3, "a mix of answers: %r" % a)
    st = ctl("GET", "stats")
    eq(sum(st["faults"].values()), sum(1 for s in b if s != 200), "faults counted")
    reset(faults={"rate": 0.0, "kinds": ["500_before"]})
    check(all(meter().status == 200 for _ in range(5)), "rate 0")


@test
def rate_limit():
    reset(rate_limit_per_s=5)
    statuses = [meter(ident="rl-%d" % i, key="rl-%d" % i).status for i in range(10)]
    eq(statuses[:5], [200] * 5, "under the limit")
    check(statuses.count(429) >= 4, "limited: %r" % statuses)
    r = meter(ident="rl-9", key="rl-9")
    is_err(r, 429, "invalid_request_error", code="rate_limit")
    check(ctl("GET", "stats")["rate_limited"] >= 5, "rate_limited")
    ctl("POST", "config", {"rate_limit_per_s": None})
    r = meter(ident="rl-9", key="rl-9")
    eq((r.status, r.h("Idempotent-Replayed")), (200, None), "429 never stored")


@test
def concurrency_tracking():
    reset(latency_s=0.3)

    def both(fn_a, fn_b):
        out = []
        ts = [threading.Thread(target=lambda f=f: out.append(f())) for f in (fn_a, fn_b)]
        [t.start() for t in ts]
        [t.join() for t in ts]
        return out

    both(lambda: meter(cus="cus_a"), lambda: meter(cus="cus_b"))
    both(lambda: meter(cus="cus_a", name="api_calls"), lambda: meter(cus="cus_a", name="other"))
    both(lambda: usage(si="si_1"), lambda: usage(si="si_2"))
    st = ctl("GET", "stats")
    eq(st["concurrency_violations"], 0, "different keys")
    eq(st["max_concurrent"], 1, "max_concurrent")
    check(st["max_concurrent_total"] >= 2, "max_concurrent_total")
    rs = both(lambda: meter(cus="cus_a"), lambda: meter(cus="cus_a"))
    check(all(r.status == 200 for r in rs), "violations are not rejected")
    both(lambda: usage(si="si_1"), lambda: usage(si="si_1"))
    st = ctl("GET", "stats")
    eq(st["concurrency_violations"], 2, "violations")
    eq(st["max_concurrent"], 2, "max_concurrent")
    eq(sorted(st["concurrency_violation_keys"]), ["cus_a/api_calls", "si_1"], "violation keys")
    # sequential requests on many connections never count
    ctl("POST", "config", {"latency_s": 0})
    for i in range(30):
        meter(cus="cus_a")
    eq(ctl("GET", "stats")["concurrency_violations"], 2, "sequential")


@test
def stats_and_control():
    reset()
    for i in range(5):
        meter(headers={"Stripe-Version": "2025-02-24.acacia"})
    st = ctl("GET", "stats")
    for k in ("requests", "by_status", "faults", "replays", "duplicate_identifiers", "idempotency_conflicts",
              "auth_failures", "bad_requests", "max_rps", "max_concurrent", "concurrency_violations",
              "action_set", "user_agents", "stripe_versions"):
        check(k in st, "stats lacks " + k)
    eq(st["requests"], 5, "requests")
    eq(st["by_status"], {"200": 5}, "by_status")
    check(st["max_rps"] >= 5, "max_rps")
    eq(st["user_agents"], [UA], "user_agents")
    eq(st["stripe_versions"], ["2025-02-24.acacia"], "stripe_versions")
    cfg = ctl("POST", "config", {"customers": ["cus_new"], "meters": ["m1"],
                                 "subscription_items": {"si_9": "cus_new"}})
    eq(cfg["customers"], ["cus_new"], "customers replaced")
    eq(cfg["meters"], ["m1"], "meters replaced")
    eq(cfg["subscription_items"], {"si_9": "cus_new"}, "items replaced")
    for k in ("faults", "fault_sequence", "rate_limit_per_s", "account_version"):
        check(k in cfg, "config lacks " + k)
    check("api_key" not in json.dumps(cfg) and API_KEY not in json.dumps(cfg), "key in config")
    eq(meter(cus="cus_new", name="m1").status, 200, "new config used")
    eq(meter(cus="cus_a").status, 400, "old meter gone")
    for bad in ({"faults": {"kinds": ["nope"]}}, {"fault_sequence": ["boom"]}, {"whatever": 1},
                {"faults": {"rate": 2}}, {"account_version": "x"}):
        r = request("POST", "/_standin/config", json.dumps(bad), auth=False, ctype="application/json")
        eq(r.status, 400, "bad config %r" % bad)
    eq(request("GET", "/_standin/nope", auth=False).status, 404, "unknown control route")
    # reset keeps config, reset {"config": true} restores the start-up config
    r = ctl("POST", "reset", {})
    eq(r["config"]["customers"], ["cus_new"], "config kept")
    eq(ctl("GET", "ledger"), {"meter_events": {}, "usage_records": {}, "identifiers": 0, "accepted": 0}, "cleared")
    eq(ctl("GET", "stats")["requests"], 0, "stats cleared")
    eq(ctl("GET", "events"), [], "events cleared")
    r = ctl("POST", "reset", {"config": True})
    eq(r["config"]["customers"], ["cus_a", "cus_b"], "config restored")
    # stored keys are cleared by reset
    eq(meter(ident="rs", key="rs").status, 200, "stored")
    ctl("POST", "reset", {})
    eq(meter(ident="rs", key="rs").h("Idempotent-Replayed"), None, "keys cleared")


@test
def throughput():
    reset(customers=["*"])
    n_conns, duration = 16, 2.0
    counts = [0] * n_conns
    errors = []
    stop_at = time.time() + duration

    def worker(i):
        conn = http.client.HTTPConnection("127.0.0.1", PORT, timeout=10)
        hdr = {"Authorization": "Bearer " + API_KEY, "Content-Type": "application/x-www-form-urlencoded"}
        n = 0
        try:
            while time.time() < stop_at:
                n += 1
                body = ("event_name=api_calls&payload%%5Bstripe_customer_id%%5D=cus_t%d"
                        "&payload%%5Bvalue%%5D=1&identifier=tp-%d-%d" % (i, i, n))
                hdr["Idempotency-Key"] = "tp-%d-%d" % (i, n)
                conn.request("POST", "/v1/billing/meter_events", body, hdr)
                r = conn.getresponse()
                r.read()
                if r.status != 200:
                    errors.append(r.status)
                    return
                counts[i] += 1
        except Exception as e:  # noqa
            errors.append(repr(e))
        finally:
            conn.close()
    t0 = time.time()
    ts = [threading.Thread(target=worker, args=(i,)) for i in range(n_conns)]
    [t.start() for t in ts]
    [t.join() for t in ts]
    el = time.time() - t0
    total = sum(counts)
    rps = total / el
    st = ctl("GET", "stats")
    print("  throughput: %d requests in %.2f s over %d keep-alive connections = %.0f req/s "
          "(server max_rps %d; client is Python http.client in one process)" % (total, el, n_conns, rps,
                                                                                st["max_rps"]))
    eq(errors, [], "errors")
    eq(ctl("GET", "ledger")["accepted"], total, "all accepted")
    eq(st["concurrency_violations"], 0, "one customer per connection")
    check(rps > 1000, "throughput %.0f req/s" % rps)


def _signal_exit(sig):
    p, _, port = start("--customers", "cus_a")
    r = meter(port=port)
    eq(r.status, 200, "alive")
    p.send_signal(sig)
    try:
        rc = p.wait(timeout=5)
    except subprocess.TimeoutExpired:
        p.kill()
        raise Fail("did not exit on signal %d" % sig)
    out, err = p.stdout.read(), p.stderr.read()
    eq(rc, 0, "exit code")
    check(API_KEY not in out + err, "key printed")
    check("Traceback" not in err, "traceback on exit: " + err)


@test
def sigterm():
    _signal_exit(signal.SIGTERM)


@test
def sigint():
    _signal_exit(signal.SIGINT)


@test
def importable():
    sys.path.insert(0, HERE)
    import standin
    s = standin.StandIn(api_key=API_KEY, customers=["cus_a"])
    host, port = s.start()
    try:
        eq(meter(port=port, ident="imp").status, 200, "in-process")
        eq(s.ledger()["accepted"], 1, "ledger method")
        eq(s.stats()["requests"], 1, "stats method")
        s.configure({"fault_sequence": ["500_before"]})
        eq(meter(port=port).status, 500, "configure method")
        s.reset()
        eq(s.events(), [], "reset method")
        eq(s.url, "http://127.0.0.1:%d" % port, "url")
    finally:
        s.stop()


def main():
    global PROC, PORT
    t0 = time.time()
    PROC, line, PORT = start("--customers", "cus_a,cus_b", "--meters", "api_calls,other",
                             "--subscription-items", "si_1=cus_a,si_2=cus_b",
                             "--account-version", "2025-02-24.acacia", "--seed", "1")
    only = [a for a in sys.argv[1:] if not a.startswith("-")]
    try:
        for fn in TESTS:
            if only and fn.__name__ not in only:
                continue
            t = time.time()
            try:
                fn()
                results["passed"] += 1
                if VERBOSE:
                    print("ok   %s (%.2fs)" % (fn.__name__, time.time() - t))
            except Exception as e:  # noqa
                results["failed"] += 1
                print("FAIL %s: %s" % (fn.__name__, e))
                if VERBOSE or not isinstance(e, Fail):
                    traceback.print_exc()
    finally:
        PROC.send_signal(signal.SIGTERM)
        try:
            PROC.wait(timeout=5)
        except subprocess.TimeoutExpired:
            PROC.kill()
            results["failed"] += 1
            print("FAIL stand-in did not exit on SIGTERM")
        err = PROC.stderr.read()
        if err.strip():
            print("stand-in stderr:\n" + err)
    print("%d passed, %d failed (%.1fs)" % (results["passed"], results["failed"], time.time() - t0))
    return 1 if results["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
