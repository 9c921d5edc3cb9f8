#!/usr/bin/env python3
"""The nginx + rsyslog gateway recipe end to end (deploy/gateway/, issue #11).

Real nginx (auth_request) with the shipped configuration, real rsyslog
(imfile -> omkafka) with the shipped configuration, the stack, tally-api and
tally-collector. Checks what a client sees through the gateway (allowed,
401, 403, 429 with Retry-After and X-RateLimit-*, api down closed and open)
and that every allowed request is counted exactly once per key and route
after rsyslog is killed (-9) and the broker goes away during traffic, while
denied requests are not counted; and after a clean stop of rsyslog
during a broker outage.

usage: tests/gateway/run.py [--bin build/asan/bin] [--keep TMPDIR]
Run time: about 50 s (a clean rsyslog stop during an outage takes 11)."""

import argparse
import collections
import datetime
import json
import os
import re
import shutil
import signal
import sys
import tempfile
import threading
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gwstack as gw  # noqa: E402
from gwstack import Failure, check  # noqa: E402

import lib  # noqa: E402  (tests/integration, put on the path by gwstack)


class Suite:
    def __init__(self, args, tmp):
        self.args, self.tmp = args, tmp
        self.registry = lib.Registry()
        self.stack = None
        # Every answer the gateway sent from the upstream, by (key id, route
        # template): what the collector must end up counting.
        self.allowed = collections.Counter()
        self.units = {"/items": 1, "/items/{id}": 1, "/reports": 5}

    def up(self):
        self.stack = gw.Stack(self.tmp)
        self.api = gw.Api(self.registry, self.tmp, self.args.bin, self.stack.db_url)
        self.collector = gw.Collector(self.registry, self.tmp, self.args.bin, self.stack)
        self.nginx = gw.Nginx(self.registry, self.tmp, "nginx", self.api.port)
        self.nginx_open = gw.Nginx(self.registry, self.tmp, "nginx-open", self.api.port,
                                   extra_server_lines=["set $tally_when_api_down open;"])
        self.rsyslog = gw.Rsyslog(self.registry, self.tmp, self.nginx.usage_log,
                                  self.stack.brokers)
        self.client = gw.Client(self.nginx.port)
        plan = self.api.plan(name="Gateway", throttle={"rateLimit": 100000, "burstLimit": 100000})
        self.key_a = self.api.key(plan, customerId="cust a/1")
        self.key_b = self.api.key(plan, customerId="cust_b")

    def request(self, path, key, route, client=None):
        """A request through the gateway; a 2xx is noted as usage of route."""
        r = (client or self.client).get(path, key=key["value"] if isinstance(key, dict) else key)
        if 200 <= r.status < 300 and isinstance(key, dict):
            self.allowed[(key["id"], route)] += 1
        return r

    def down(self):
        self.registry.stop_all()
        if self.stack is not None:
            self.stack.down()


def rate_headers(r):
    return tuple(r.header(h) for h in ("X-RateLimit-Limit", "X-RateLimit-Remaining",
                                       "X-RateLimit-Reset"))


def refused(r, status, code):
    check(r.status == status, "want %d, got %r" % (status, r))
    check(r.header("Content-Type") == "application/json", "not JSON: %r" % r)
    check(r.json()["error"]["code"] == code, "want code %s: %r" % (code, r))


TESTS = []


def test(fn):
    TESTS.append(fn)
    return fn


@test
def allowed_reaches_upstream_with_key_id(s):
    r = s.request("/items", s.key_a, "/items")
    check(r.status == 200, repr(r))
    echoed = r.json()
    # The upstream sees who is calling, never the secret.
    check(echoed["keyId"] == s.key_a["id"] and echoed["customerId"] == "cust%20a%2F1" and
          echoed["apiKey"] == "", "upstream saw %r" % echoed)
    # The plan's throttle (no quota): its burst, the tokens left, seconds to full.
    check(rate_headers(r)[:2] == ("100000", "99999") and r.header("X-RateLimit-Reset"),
          "rate headers on an allowed answer: %r" % r)
    # A client cannot pose as another key or customer upstream.
    r = s.client.get("/items/42", key=s.key_b["value"],
                     headers={"X-Tally-Key-Id": "spoofed", "X-Tally-Customer-Id": "spoofed"})
    s.allowed[(s.key_b["id"], "/items/{id}")] += 1
    check(r.status == 200 and r.json()["keyId"] == s.key_b["id"] and
          r.json()["customerId"] == "cust_b", repr(r))
    # The usage event as nginx wrote it (the collector's parser takes it:
    # the exactly-once test below finds no rejected event).
    time.sleep(0.2)
    event = json.loads(s.nginx.usage_lines()[-1])
    check(event["specversion"] == "1.0" and len(event["id"]) == 32 and
          event["source"] == gw.SOURCE and event["type"] == "api.request" and
          event["subject"] == s.key_b["id"], "event %r" % event)
    check(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}(Z|[+-]\d\d:\d\d)",
                       event["time"]), "time %r" % event["time"])
    check(event["data"] == {"method": "GET", "endpoint": "/items/{id}", "status": 200,
                            "bytes": len(r.body.encode()), "units": 1}, "data %r" % event)


@test
def unknown_or_missing_key_is_401(s):
    refused(s.request("/items", "not-a-key-value-1234567890", "/items"), 401, "unauthorized")
    refused(s.request("/items", None, "/items"), 401, "unauthorized")


@test
def disabled_key_is_403(s):
    plan = s.api.plan(name="Disabled")
    k = s.api.key(plan, enabled=False)
    r = s.request("/items", k, "/items")
    refused(r, 403, "key_disabled")
    check(rate_headers(r) == ("0", "0", "0"), repr(r))
    planless = s.api.admin("POST", "/v1/keys", {"name": "no plan"})
    refused(s.request("/items", planless, "/items"), 403, "no_plan")


@test
def over_burst_is_429_with_headers(s):
    plan = s.api.plan(name="Burst", throttle={"rateLimit": 0.01, "burstLimit": 3})
    k = s.api.key(plan)
    answers = [s.request("/items", k, "/items") for _ in range(5)]
    check([a.status for a in answers] == [200, 200, 200, 429, 429],
          "statuses %r" % [a.status for a in answers])
    check([a.header("X-RateLimit-Remaining") for a in answers[:3]] == ["2", "1", "0"],
          "remaining on allowed answers: %r" % [rate_headers(a) for a in answers[:3]])
    r = answers[3]
    refused(r, 429, "throttled")
    check(int(r.header("Retry-After")) >= 1 and rate_headers(r)[:2] == ("3", "0"), repr(r))


@test
def over_quota_is_429_until_the_period_ends(s):
    plan = s.api.plan(name="Quota", quota={"limit": 4, "period": "DAY"})
    k = s.api.key(plan)
    answers = [s.request("/reports", k, "/reports") for _ in range(6)]
    check([a.status for a in answers] == [200] * 4 + [429] * 2,
          "statuses %r" % [a.status for a in answers])
    check(rate_headers(answers[0])[:2] == ("4", "3"), repr(answers[0]))
    r = answers[-1]
    refused(r, 429, "quota_exceeded")
    now = datetime.datetime.now(datetime.timezone.utc)
    midnight = (now + datetime.timedelta(days=1)).replace(hour=0, minute=0, second=0,
                                                          microsecond=0)
    check(abs(int(r.header("Retry-After")) - (midnight - now).total_seconds()) < 10, repr(r))
    check(rate_headers(r)[:2] == ("4", "0"), repr(r))


def drive(s, stop, failures):
    """Traffic until `stop`: two keys over three routes, and refusals (an
    unknown key, a throttled key) that must not be counted."""
    client = gw.Client(s.nginx.port)
    plan = s.api.plan(name="Trickle", throttle={"rateLimit": 2, "burstLimit": 2})
    slow = s.api.key(plan)
    n = 0
    try:
        while not stop.is_set():
            n += 1
            key = s.key_a if n % 3 else s.key_b
            path, route = [("/items", "/items"), ("/items/%d" % n, "/items/{id}"),
                           ("/reports", "/reports")][n % 3]
            r = s.request(path, key, route, client)
            if r.status != 200:
                failures.append(repr(r))
            if n % 5 == 0:
                s.request("/items", "unknown-key-value-000000000", "/items", client)
                s.request("/items", slow, "/items", client)
    except Exception:  # noqa: BLE001
        failures.append(traceback.format_exc())
    finally:
        client.close()


def wait_counted(s, timeout):
    """Until the collector's rollups equal what the gateway allowed."""
    deadline = time.monotonic() + timeout
    while True:
        want = {k: (n, n * s.units[k[1]]) for k, n in s.allowed.items()}
        got = gw.usage_by_key_endpoint(s.stack.db)
        if got == want:
            return got
        if time.monotonic() > deadline:
            diff = lib.diff_maps("(key, route) -> (requests, units)", want, got)
            raise Failure("not counted exactly once after %d s: %s; collector %s"
                          % (timeout, diff, s.collector.metrics().brief()))
        time.sleep(0.5)


@test
def usage_counted_once_after_rsyslog_kill_and_broker_outage(s):
    stop = threading.Event()
    failures = []
    traffic = threading.Thread(target=drive, args=(s, stop, failures), daemon=True)
    traffic.start()
    try:
        time.sleep(2)
        s.rsyslog.kill9()
        time.sleep(1)
        s.rsyslog.start()
        time.sleep(2)
        s.stack.broker_signal(signal.SIGUSR1)
        time.sleep(4)
        s.stack.broker_signal(signal.SIGUSR2)
        time.sleep(2)
    finally:
        stop.set()
        traffic.join(60)
    check(not failures, "traffic failed: %s" % failures[:3])
    total = sum(s.allowed.values())
    lines = len(s.nginx.usage_lines())
    check(lines == total, "%d usage lines for %d allowed answers" % (lines, total))
    wait_counted(s, 90)
    m = s.collector.metrics()
    check(m.rejected == 0, "rejected events: %r" % m.rejected_by_code())
    # rsyslog read the log again from its start after the kill: the
    # repeats reached the collector and were dropped as duplicates.
    check(m.duplicates > 0, "no duplicate after kill -9 of rsyslog: %s" % m.brief())
    print("      %d allowed requests counted once each; %s" % (total, m.brief()))


@test
def usage_counted_once_after_clean_rsyslog_stop_during_outage(s):
    """A clean stop saves the read position: what was read but not yet in
    Kafka (the broker away) must survive it (queue saved, failed messages
    kept) and be sent after the restart."""
    s.stack.broker_signal(signal.SIGUSR1)
    try:
        for n in range(60):
            key = s.key_a if n % 2 else s.key_b
            check(s.request("/items/%d" % n, key, "/items/{id}").status == 200, "allowed")
        time.sleep(1)
        rc, seconds, killed = s.rsyslog.proc.terminate(60)
        check(not killed, "rsyslogd did not stop within 60 s of SIGTERM")
        print("      rsyslogd stopped cleanly in %.1f s during the outage" % seconds)
        s.rsyslog.start()
        for n in range(20):
            check(s.request("/reports", s.key_a, "/reports").status == 200, "allowed")
    finally:
        s.stack.broker_signal(signal.SIGUSR2)
    wait_counted(s, 90)


@test
def api_down_fails_closed_or_open(s):
    before = len(s.nginx_open.usage_lines())
    check(s.request("/items", s.key_a, "/items", gw.Client(s.nginx_open.port)).status == 200,
          "open gateway with the api up")
    s.api.stop()
    try:
        r = s.client.get("/items", key=s.key_a["value"])
        refused(r, 503, "authorization_unavailable")
        check(r.header("Retry-After") == "5", repr(r))
        # Fail open: the upstream answers, with no key id, and nothing is
        # logged as usage (there is no key to count it against).
        r = gw.Client(s.nginx_open.port).get("/items", key=s.key_a["value"])
        check(r.status == 200 and r.json()["keyId"] == "", repr(r))
        time.sleep(0.2)
        check(len(s.nginx_open.usage_lines()) == before + 1,
              "fail-open requests logged as usage: %r" % s.nginx_open.usage_lines()[-2:])
    finally:
        s.api.start()
    check(s.request("/items", s.key_a, "/items").status == 200, "after the api came back")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bin", default=os.path.join(gw.REPO, "build", "asan", "bin"))
    parser.add_argument("--keep", default=None, help="copy the logs here")
    args = parser.parse_args()
    for tool in ("nginx", "rsyslogd"):
        check(shutil.which(tool) is not None, "%s is not installed (tools/install-deps.sh)" % tool)
    tmp = tempfile.mkdtemp(prefix="tally-gateway-")
    os.chmod(tmp, 0o755)  # nginx's workers (nobody, when run as root) read under it
    s = Suite(args, tmp)
    passed = failed = 0
    t0 = time.monotonic()
    try:
        s.up()
        print("stack, api, collector, 2 nginx, rsyslog up in %.1fs" % (time.monotonic() - t0),
              flush=True)
        for fn in TESTS:
            t = time.monotonic()
            try:
                fn(s)
                passed += 1
                print("PASS %-58s %6.2fs" % (fn.__name__, time.monotonic() - t), flush=True)
            except Exception as e:  # noqa: BLE001
                failed += 1
                print("FAIL %-58s %6.2fs %s" % (fn.__name__, time.monotonic() - t,
                                                e if isinstance(e, Failure)
                                                else traceback.format_exc()), flush=True)
        for proc in (s.api.proc, s.collector.proc):
            report = lib.sanitizer_report(proc.log_text())
            if report:
                failed += 1
                print("FAIL sanitizer report in %s:\n%s" % (proc.name, report))
        for n in (s.nginx, s.nginx_open):
            if "[emerg]" in n.error_log() or "[alert]" in n.error_log():
                failed += 1
                print("FAIL nginx error log:\n%s" % n.error_log()[-1500:])
    except Exception as e:  # noqa: BLE001
        failed += 1
        print("FAIL setup: %s" % (e if isinstance(e, Failure) else traceback.format_exc()))
    finally:
        s.down()
        if args.keep:
            shutil.copytree(tmp, args.keep, dirs_exist_ok=True,
                            ignore=shutil.ignore_patterns("pg", "*.sock", "*.s.PGSQL*"))
        shutil.rmtree(tmp, ignore_errors=True)
    print("%d passed, %d failed in %.1fs" % (passed, failed, time.monotonic() - t0))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
