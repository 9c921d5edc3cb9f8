#!/usr/bin/env python3
"""Several tally-api replicas enforcing one quota and one rate per key
(issue #15; services/api/leases.c, migration 009, README "Several api
replicas").

Three replicas with TALLY_API_REPLICAS_SHARED on behind a real nginx
`upstream` (round robin), wrk's many connections on one key:
- quota 10,000, requests as fast as the machine allows while the collector
  is stopped (SIGSTOP); one replica killed with -9 while it holds a lease
  (stopped, its lease row read, then killed), one added a second later
  (nginx reloaded with it). Allowed (2xx) in total must
  be <= 10,000 + B (B = replicas dead x slice = 1 x 50), and >= 10,000
  once the dead replica's TTL has passed (nothing stranded). The allowed
  requests are then published as usage events and the collector resumed
  (SIGCONT): once it has counted them every replica refuses the key.
- rate 100/s burst 100 across the three live replicas for 20 s: allowed
  within the stated tolerance, <= 100 x T + 100 + (N - 1) and >= 90 % of
  100 x T.
- a replica stopped with SIGTERM holds nothing and is dead to the others at
  once (the others count one fewer within a heartbeat).

usage: tests/replicas/run.py [--bin build/asan/bin] [--keep]
Run time: about 70 s (the stack, five processes, 20 s of rate)."""

import argparse
import datetime
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import uuid

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "gateway"))
import gwstack as gw  # noqa: E402
from gwstack import Failure, check  # noqa: E402

import lib  # noqa: E402  (tests/integration, put on the path by gwstack)

HEARTBEAT_MS = 250
TTL_MS = 1500
LEASE_MAX = 1000
QUOTA = 10000
SLICE = max(10, min(LEASE_MAX, QUOTA // 200))  # leases_slice(): 50
RATE, BURST, RATE_SECONDS = 100, 100, 20


class Replica(gw.Api):
    """tally-api with the replica settings (gwstack's Api plus the env)."""

    def __init__(self, registry, tmp, bin_dir, db_url, name, shared=True):
        self.extra_env = {"TALLY_API_REPLICAS_SHARED": "true" if shared else "false",
                          "TALLY_API_REPLICA_HEARTBEAT_MS": str(HEARTBEAT_MS),
                          "TALLY_API_REPLICA_TTL_MS": str(TTL_MS),
                          "TALLY_API_QUOTA_LEASE_MAX": str(LEASE_MAX)}
        super().__init__(registry, tmp, bin_dir, db_url, refresh_ms=200, name=name)

    def start(self):
        env = lib.clean_env(dict(self.extra_env, **{
            "TALLY_DATABASE_URL": self.db_url, "TALLY_ADMIN_TOKEN": gw.ADMIN_TOKEN,
            "TALLY_KEY_HMAC_SECRET": gw.KEY_HMAC_SECRET,
            "TALLY_HTTP_ADDR": "127.0.0.1:%d" % self.port,
            "TALLY_METRICS_ADDR": "127.0.0.1:%d" % self.metrics_port,
            "TALLY_KEY_REFRESH_MS": str(self.refresh_ms)}))
        self.proc = lib.Proc(self.registry, self.name, [os.path.join(self.bin_dir, "tally-api")],
                             os.path.join(self.tmp, self.name + ".log"), env=env)
        gw.wait_http("http://127.0.0.1:%d/healthz" % self.port, self.proc)

    def authorize(self, key_value):
        """The status of one GET /v1/authorize straight to this replica."""
        import http.client
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            conn.request("GET", "/v1/authorize", headers={"x-api-key": key_value})
            r = conn.getresponse()
            r.read()
            return r.status
        finally:
            conn.close()

    def metric(self, name):
        import urllib.request
        with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % self.metrics_port,
                                    timeout=5) as r:
            return lib.parse_metrics(r.read().decode()).get(name, 0.0)


class Balancer:
    """nginx with an `upstream` of the given replicas (round robin, the
    default), proxying /v1/authorize to them; reload() changes the list."""

    def __init__(self, registry, tmp, replicas):
        self.prefix = os.path.join(tmp, "nginx")
        for d in ("logs", "temp", "conf"):
            os.makedirs(os.path.join(self.prefix, d))
        os.chmod(os.path.join(self.prefix, "temp"), 0o777)
        self.conf = os.path.join(self.prefix, "conf", "nginx.conf")
        self.port = gw.free_port()
        self.write(replicas)
        lib.run(["nginx", "-t", "-q", "-p", self.prefix, "-c", self.conf])
        self.proc = lib.Proc(registry, "nginx", ["nginx", "-p", self.prefix, "-c", self.conf,
                                                 "-g", "daemon off;"],
                             os.path.join(self.prefix, "logs", "stdout.log"))
        gw.wait_http("http://127.0.0.1:%d/health" % self.port, self.proc)

    def write(self, replicas):
        servers = "".join("        server 127.0.0.1:%d max_fails=1 fail_timeout=5s;\n" % r.port
                          for r in replicas)
        temp = os.path.join(self.prefix, "temp")
        text = """worker_processes 2;
error_log logs/error.log warn;
pid logs/nginx.pid;
events { worker_connections 1024; }
http {
    access_log off;
    client_body_temp_path %(temp)s/body;
    proxy_temp_path %(temp)s/proxy;
    fastcgi_temp_path %(temp)s/fastcgi;
    uwsgi_temp_path %(temp)s/uwsgi;
    scgi_temp_path %(temp)s/scgi;
    upstream tally_api {
%(servers)s        keepalive 64;
    }
    server {
        listen 127.0.0.1:%(port)d;
        location = /v1/authorize {
            proxy_pass http://tally_api;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_next_upstream error timeout;
            proxy_connect_timeout 1s;
        }
        location = /health { return 200 "ok"; }
    }
}
""" % {"temp": temp, "servers": servers, "port": self.port}
        with open(self.conf, "w") as f:
            f.write(text)

    def reload(self, replicas):
        self.write(replicas)
        lib.run(["nginx", "-t", "-q", "-p", self.prefix, "-c", self.conf])
        self.proc.send(signal.SIGHUP)
        time.sleep(0.5)  # the new workers take over


def wrk(port, key, seconds, connections=32, summary=None):
    """Runs wrk on /v1/authorize with the key; (allowed 2xx, refused,
    elapsed seconds) from its summary (its whole text into `summary`, a
    list, when given)."""
    url = "http://127.0.0.1:%d/v1/authorize" % port
    cp = lib.run(["wrk", "-t", "2", "-c", str(connections), "-d", "%ds" % seconds,
                  "--timeout", "5s", "-H", "x-api-key: " + key, url], timeout=seconds + 60)
    out = cp.stdout.decode()
    if summary is not None:
        summary.append(out)
    m = re.search(r"(\d+) requests in ([\d.]+)(m?s)", out)
    check(m is not None, "cannot read wrk's summary: %s" % out)
    total = int(m.group(1))
    elapsed = float(m.group(2)) / (1000.0 if m.group(3) == "ms" else 1.0)
    n = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    refused = int(n.group(1)) if n else 0
    return total - refused, refused, elapsed


def event(key_id, at):
    return json.dumps({"specversion": "1.0", "id": str(uuid.uuid4()), "source": "replicas-test",
                       "type": "api.request", "subject": key_id, "time": at,
                       "data": {"method": "GET", "endpoint": "/items", "status": 200,
                                "units": 1, "bytes": 10}}).encode()


class Suite:
    def __init__(self, args, tmp):
        self.args, self.tmp = args, tmp
        self.registry = lib.Registry()
        self.stack = None
        self.figures = {}

    def up(self):
        self.stack = gw.Stack(self.tmp)
        self.collector = gw.Collector(self.registry, self.tmp, self.args.bin, self.stack)
        self.replicas = [Replica(self.registry, self.tmp, self.args.bin, self.stack.db_url,
                                 "api%d" % i) for i in (1, 2, 3)]
        self.nginx = Balancer(self.registry, self.tmp, self.replicas)

    def wait_live(self, count, replicas):
        lib.wait_until("%d live replicas seen by every replica" % count,
                       lambda: all(r.metric("tally_api_replicas_live") == count
                                   for r in replicas), 20)

    def wait_key(self, key):
        """Waits until every live replica's cache holds the key (authorize
        answers 2xx); returns how many probes were allowed (they count)."""
        pending = [r for r in self.replicas if r.proc.alive()]
        allowed = 0
        deadline = time.monotonic() + 20
        while pending:
            check(time.monotonic() < deadline, "replicas never knew the key: %s"
                  % [r.name for r in pending])
            status = pending[0].authorize(key["value"])
            if 200 <= status < 300:
                allowed += 1
                pending.pop(0)
            else:
                time.sleep(0.1)
        return allowed

    def test_quota(self):
        admin = self.replicas[0]
        plan = admin.plan(name="Replicas quota", quota={"limit": QUOTA, "period": "MONTH"})
        key = admin.key(plan)
        self.collector.proc.send(signal.SIGSTOP)
        self.wait_live(3, self.replicas)
        allowed = self.wait_key(key)  # the probes count too
        victim = self.replicas[2]
        events = {}

        def outstanding():
            """What the victim holds unspent, as its row in quota_leases says."""
            return int(self.stack.db.scalar(
                "SELECT coalesce(sum(l.granted - l.spent), 0) FROM quota_leases l "
                "WHERE l.key_id = %s AND l.replica_id LIKE '%%-%d-%%'"
                % (lib.sql_literal(key["id"]), victim.proc.pid)))

        def kill_and_add():
            # Killed while it holds a lease: stopped first (it reports
            # nothing more), its row read, then killed; or let go on and
            # tried again a moment later.
            time.sleep(0.3)
            deadline = time.monotonic() + 8
            while time.monotonic() < deadline:
                victim.proc.send(signal.SIGSTOP)
                if outstanding() > 0:
                    break
                victim.proc.send(signal.SIGCONT)
                time.sleep(0.05)
            victim.proc.kill()
            events["killed_at"] = time.monotonic() - started
            time.sleep(1.0)
            added = Replica(self.registry, self.tmp, self.args.bin, self.stack.db_url, "api4")
            self.replicas.append(added)
            self.nginx.reload([r for r in self.replicas if r is not victim])
            events["added_at"] = time.monotonic()

        timer = threading.Thread(target=kill_and_add)
        started = time.monotonic()
        timer.start()
        a, refused, elapsed = wrk(self.nginx.port, key["value"], 10)
        timer.join()
        allowed += a
        held = outstanding()
        check(held > 0, "the killed replica held no lease")
        print("  quota: %d allowed, %d refused in %.1f s (replica %d killed -9 at +%.1f s, "
              "holding %d unspent as last reported; api4 added at +%.1f s)"
              % (a, refused, elapsed, victim.proc.pid, events["killed_at"], held,
                 events["added_at"] - started))
        # The dead replica's unspent lease returns after its TTL: drain what is left.
        time.sleep(TTL_MS / 1000.0 + 2 * HEARTBEAT_MS / 1000.0)
        for _ in range(10):
            a, _, _ = wrk(self.nginx.port, key["value"], 2, connections=8)
            allowed += a
            if a == 0:
                break
        bound = QUOTA + 1 * SLICE
        self.figures.update(quota_allowed=allowed, quota_overshoot=allowed - QUOTA, B=1 * SLICE)
        print("  quota: %d allowed in all (quota %d, B = 1 dead x slice %d = %d)"
              % (allowed, QUOTA, SLICE, SLICE))
        check(allowed <= bound, "%d allowed > quota + B = %d" % (allowed, bound))
        check(allowed >= QUOTA, "only %d of %d allowed %.1f s after the kill: quota stranded"
              % (allowed, QUOTA, time.monotonic() - started - events["killed_at"]))
        # The collector catches up on every allowed request: the truth.
        now = datetime.datetime.now(datetime.timezone.utc)
        at = now.strftime("%Y-%m-%dT%H:%M:%S.") + "%03dZ" % (now.microsecond // 1000)
        lib.kcat_produce_lines(self.stack.brokers, "usage-events",
                               [(key["id"], event(key["id"], at)) for _ in range(allowed)])
        self.collector.proc.send(signal.SIGCONT)
        lib.wait_until("the collector to count %d requests" % allowed,
                       lambda: self.stack.db.scalar(
                           "SELECT coalesce(sum(units), 0) FROM usage_counters WHERE key_id = %s "
                           "AND period = 'MONTH'" % lib.sql_literal(key["id"])) == str(allowed),
                       90)
        a, refused, _ = wrk(self.nginx.port, key["value"], 2, connections=8)
        check(a == 0 and refused > 0, "after the collector counted the quota: %d allowed" % a)

    def test_rate(self):
        live = [r for r in self.replicas if r.proc.alive()]
        check(len(live) == 3, "want 3 live replicas, have %d" % len(live))
        self.wait_live(3, live)
        admin = live[0]
        plan = admin.plan(name="Replicas rate", throttle={"rateLimit": RATE, "burstLimit": BURST})
        key = admin.key(plan)
        self.wait_key(key)
        time.sleep(BURST / RATE + 0.5)  # the probes' tokens are back: full buckets
        allowed, refused, elapsed = wrk(self.nginx.port, key["value"], RATE_SECONDS,
                                        connections=16)
        # Each replica's bucket holds ceil(burst / N) and refills at rate / N
        # (leases_rate_share); wrk prints its duration to 10 ms.
        upper = RATE * (elapsed + 0.01) + BURST + (len(live) - 1)
        lower = 0.9 * RATE * elapsed
        self.figures.update(rate_allowed=allowed, rate_seconds=round(elapsed, 2),
                            rate_nominal=round(RATE * elapsed + BURST))
        print("  rate: %d allowed, %d refused in %.2f s; nominal %d, tolerance [%d, %d]"
              % (allowed, refused, elapsed, RATE * elapsed + BURST, lower, upper))
        check(refused > allowed, "the load did not exceed the rate (%d refused)" % refused)
        check(allowed <= upper, "%d allowed > %d" % (allowed, upper))
        check(allowed >= lower, "%d allowed < %d" % (allowed, lower))

    def test_clean_stop_returns_leases(self):
        """SIGTERM: the replica gives every lease back and is dead to the
        others at once (a rolling deploy strands nothing)."""
        leaving = [r for r in self.replicas if r.proc.alive()][0]
        leaving.stop()
        pattern = "'%%-%d-%%'" % leaving.proc.pid
        held = self.stack.db.scalar("SELECT coalesce(sum(granted - spent), -1) FROM quota_leases "
                                    "WHERE replica_id LIKE %s" % pattern)
        beat = self.stack.db.scalar("SELECT stopped FROM api_replicas WHERE id LIKE %s"
                                    % pattern)
        print("  stop: %s left with %s units held, stopped: %s" % (leaving.name, held, beat))
        check(held == "0", "%s kept %s units after SIGTERM" % (leaving.name, held))
        check(beat == "t", "%s is not dead to the others after SIGTERM" % leaving.name)
        others = [r for r in self.replicas if r.proc.alive()]
        self.wait_live(len(others), others)

    def down(self):
        problems = []
        for r in getattr(self, "replicas", []):
            if r.proc.alive():
                rc, _, killed = r.proc.terminate(15)
                if killed or rc != 0:
                    problems.append("%s exit %r" % (r.name, rc))
            report = lib.sanitizer_report(r.proc.log_text())
            if report:
                problems.append("%s: sanitizer report:\n%s" % (r.name, report))
        if getattr(self, "collector", None) is not None:
            self.collector.proc.send(signal.SIGCONT)
        self.registry.stop_all()
        if self.stack is not None:
            self.stack.down()
        return problems


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bin", default=os.path.join(lib.REPO, "build", "bin"))
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args()
    args.bin = os.path.abspath(args.bin)
    tmp = tempfile.mkdtemp(prefix="tally-replicas-")
    os.chmod(tmp, 0o755)
    suite = Suite(args, tmp)
    failed = False
    t0 = time.monotonic()
    try:
        suite.up()
        for name in ("test_quota", "test_rate", "test_clean_stop_returns_leases"):
            t = time.monotonic()
            getattr(suite, name)()
            print("ok   %s (%.1f s)" % (name, time.monotonic() - t))
    except Exception as e:  # noqa: BLE001 - report any failure, then clean up
        failed = True
        print("FAIL: %s" % e)
        if not isinstance(e, Failure):
            traceback.print_exc()
    finally:
        problems = suite.down()
    for p in problems:
        failed = True
        print("FAIL: %s" % p)
    print("figures: %s" % json.dumps(suite.figures, sort_keys=True))
    print("%s in %.1f s" % ("FAILED" if failed else "passed", time.monotonic() - t0))
    if failed or args.keep:
        print("logs kept in %s" % tmp)
    else:
        shutil.rmtree(tmp, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
