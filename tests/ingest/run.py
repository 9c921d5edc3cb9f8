#!/usr/bin/env python3
"""tally-ingest's suite: POST /v1/events against the real stack (PostgreSQL
and a dev broker, tools/stack.sh), a tally-collector and tally-ingest from
the sanitized build.

    python3 tests/ingest/run.py [--bin build/bin] [--asan-bin build/asan/bin]
        [--only NAME[,NAME...]] [--keep-logs DIR]

Cases: the token (401), the content type (415), the size limits (413),
structured mode, batch mode with bad events answered per event with the
DLQ's codes, a batch of bad events only (400), a retried batch counted
once, and a broker outage mid-traffic: 503 with Retry-After while it lasts,
and every event answered 202, or re-sent after a 503 until it was, counted
exactly once; a frozen broker (SIGSTOP): 503 after the produce timeout,
the events perhaps in Kafka all the same, the re-send counted once. At the end the collector's totals must equal the accepted
events, with nothing dead-lettered, and both programs must stop cleanly on
SIGTERM with no sanitizer report. Prints one line per case and
"N passed, N failed"; runs in 25 to 40 s.

Python 3 standard library only."""

import argparse
import http.client
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import urllib.request

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(REPO, "tests", "integration"))
sys.dont_write_bytecode = True
import lib  # noqa: E402
from lib import Failure, check, clean_env, free_port, wait_until  # noqa: E402

TOKEN = "it-ingest-token-5b7e21c9d0a4"
KEY = "key_ingest_suite"
STRUCTURED = "application/cloudevents+json"
BATCH = "application/cloudevents-batch+json"
MAX_BATCH = 200
MAX_BODY = 65536


def now_rfc3339():
    return lib.rfc3339_ms(time.time())


def event(source, event_id, **changes):
    ev = {"specversion": "1.0", "id": event_id, "source": source, "type": "api.request",
          "subject": KEY, "time": now_rfc3339(),
          "data": {"method": "GET", "endpoint": "/items", "status": 200, "units": 1,
                   "bytes": 100}}
    ev.update(changes)
    return ev


class Suite:
    """The stack, one collector, one tally-ingest, and what was accepted."""

    def __init__(self, args, tmp):
        self.args = args
        self.tmp = tmp
        self.bin_dir = os.path.abspath(args.bin)
        self.asan_dir = os.path.abspath(args.asan_bin)
        self.stack_dir = os.path.join(tmp, "stack")
        self.registry = lib.Registry()
        self.collectors = []
        self._ids = 0
        self.accepted = set()  # (source, id) of every event answered as accepted
        self.statuses = set()  # every status POST /v1/events answered
        self.ingest = None

    # what lib.Broker and lib.Collector expect of a scope
    def next_id(self):
        self._ids += 1
        return self._ids

    def path(self, name):
        return os.path.join(self.tmp, name)

    def bin(self, name):
        return os.path.join(self.bin_dir, name)

    def asan_bin(self, name):
        return os.path.join(self.asan_dir, name)

    @property
    def ctx(self):
        return self

    def up(self):
        env = clean_env({"TALLY_BIN_DIR": self.bin_dir})
        for argv in ([os.path.join(REPO, "tools", "stack.sh"), "up", self.stack_dir, "--fast"],):
            cp = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
                                stdin=subprocess.DEVNULL, timeout=180, start_new_session=True)
            check(cp.returncode == 0, "stack.sh up: %s" % cp.stdout.decode()[-1500:])
        with open(os.path.join(self.stack_dir, "env")) as f:
            for line in f:
                if line.startswith("export TALLY_DATABASE_URL="):
                    self.db_url = line.strip().split("=", 1)[1].strip("'")
        cp = subprocess.run([os.path.join(REPO, "tools", "migrate.sh")],
                            env=clean_env({"TALLY_DATABASE_URL": self.db_url}),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, timeout=120)
        check(cp.returncode == 0, "migrate.sh: %s" % cp.stdout.decode()[-1500:])
        self.db = lib.DB(self.db_url)
        self.db.add_keys([KEY])
        # A broker of its own, whose outage this suite controls (SIGUSR1/2).
        self.broker = lib.Broker(self, partitions=4)
        self.collector = lib.Collector(self, self.broker, "ingest-suite",
                                       args=["--batch-max-wait-ms", "20"])
        # The group's first assignment before any outage: one interrupted
        # by the broker going down can take the mock a minute to redo.
        wait_until("the collector's first assignment",
                   lambda: "assigned" in self.collector.proc.log_text(), 60)
        self.start_ingest()

    def start_ingest(self):
        for attempt in range(3):
            self.port, self.metrics_port = free_port(), free_port()
            token_file = self.path("ingest-token")
            with open(token_file, "w") as f:
                f.write(TOKEN + "\n")
            # The token from a file (TALLY_INGEST_TOKEN_FILE), as a secret should be.
            env = clean_env({"TALLY_INGEST_TOKEN_FILE": token_file,
                             "TALLY_KAFKA_BROKERS": self.broker.bootstrap})
            argv = [self.asan_bin("tally-ingest"),
                    "--ingest-addr", "127.0.0.1:%d" % self.port,
                    "--metrics-addr", "127.0.0.1:%d" % self.metrics_port,
                    "--max-batch-events", str(MAX_BATCH), "--max-body-bytes", str(MAX_BODY),
                    "--produce-timeout-ms", "3000"]
            self.ingest = lib.Proc(self.registry, "ingest", argv,
                                   self.path("ingest-%d.log" % attempt), env=env)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and self.ingest.alive():
                try:
                    if self.get("/healthz")[0] == 200:
                        return
                except OSError:
                    pass
                time.sleep(0.1)
            if self.ingest.alive():
                raise Failure("tally-ingest did not answer in 30 s: %s" % self.ingest.log_tail())
            if "address in use" not in self.ingest.log_text() or attempt == 2:
                raise Failure("tally-ingest exited at start: %s" % self.ingest.log_tail())

    def get(self, path):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            conn.request("GET", path)
            r = conn.getresponse()
            return r.status, r.read()
        finally:
            conn.close()

    def post(self, body, content_type=BATCH, token=TOKEN, timeout=30):
        """(status, headers, parsed JSON or None) of POST /v1/events."""
        if not isinstance(body, (bytes, str)):
            body = json.dumps(body)
        if isinstance(body, str):
            body = body.encode()
        headers = {"Content-Type": content_type} if content_type else {}
        if token is not None:
            headers["Authorization"] = "Bearer " + token
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request("POST", "/v1/events", body=body, headers=headers)
            r = conn.getresponse()
            raw = r.read()
            self.statuses.add(r.status)
            try:
                doc = json.loads(raw) if raw else None
            except ValueError:
                doc = None
            return r.status, dict(r.getheaders()), doc
        finally:
            conn.close()

    def post_until_accepted(self, events, deadline_s=60):
        """Re-sends the whole batch after each 503, as a client should."""
        deadline = time.monotonic() + deadline_s
        while True:
            status, headers, doc = self.post(events)
            if status == 202:
                self.note_accepted(events, doc)
                return
            check(status == 503, "expected 202 or 503, got %d %r" % (status, doc))
            check("Retry-After" in headers, "a 503 without Retry-After")
            check(time.monotonic() < deadline, "still 503 after %ds" % deadline_s)
            time.sleep(0.2)

    def note_accepted(self, events, doc):
        for ev, result in zip(events, doc["results"]):
            if result["status"] == "accepted":
                self.accepted.add((ev["source"], ev["id"]))

    def metrics(self):
        with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % self.metrics_port,
                                    timeout=10) as r:
            return lib.parse_metrics(r.read().decode())

    def broker_signal(self, sig):
        self.broker.proc.send(sig)


TESTS = []


def test(fn):
    TESTS.append(fn)
    return fn


@test
def token_required(s):
    ev = event("t-token", "1")
    for token in (None, "wrong-token", TOKEN + "x", ""):
        status, headers, doc = s.post(ev, STRUCTURED, token=token)
        check(status == 401, "token %r: %d" % (token, status))
        check(doc["error"]["code"] == "unauthorized", "code %r" % doc)
        check("WWW-Authenticate" in headers, "401 without WWW-Authenticate")


@test
def short_token_refused_at_start(s):
    cp = subprocess.run([s.asan_bin("tally-ingest")], stdout=subprocess.PIPE,
                        stderr=subprocess.STDOUT, timeout=30,
                        env=clean_env({"TALLY_INGEST_TOKEN": "too-short",
                                       "TALLY_KAFKA_BROKERS": s.broker.bootstrap}))
    out = cp.stdout.decode("utf-8", "replace")
    check(cp.returncode == 2 and "at least 16 characters" in out, "%d %r" % (cp.returncode, out))
    check("too-short" not in out, "the token was echoed")


@test
def content_type_checked(s):
    for ctype in ("application/json", "text/plain", None, "application/cloudevents"):
        status, _, doc = s.post(event("t-type", "1"), ctype)
        check(status == 415, "Content-Type %r: %d" % (ctype, status))
        check(doc["error"]["code"] == "unsupported_media_type", "code %r" % doc)


@test
def limits_answer_413(s):
    big = [event("t-big", str(i), data={"endpoint": "/" + "x" * 200}) for i in range(400)]
    body = json.dumps(big).encode()
    check(len(body) > MAX_BODY, "the test body must pass the limit")
    status, _, doc = s.post(body)
    check(status == 413 and doc["error"]["code"] == "body_too_large", "%d %r" % (status, doc))
    many = [event("t-many", str(i)) for i in range(MAX_BATCH + 1)]
    status, _, doc = s.post(many)
    check(status == 413 and doc["error"]["code"] == "too_many_events", "%d %r" % (status, doc))
    check(str(MAX_BATCH) in doc["error"]["message"], "the limit is named: %r" % doc)
    status, _, doc = s.post(many[:MAX_BATCH])
    check(status == 202 and doc["accepted"] == MAX_BATCH, "%d %r" % (status, doc))
    s.note_accepted(many[:MAX_BATCH], doc)


@test
def structured_mode(s):
    ev = event("t-structured", "only-one")
    status, _, doc = s.post(ev, STRUCTURED + "; charset=utf-8")
    check(status == 202, "%d %r" % (status, doc))
    check(doc["accepted"] == 1 and doc["refused"] == 0, "%r" % doc)
    check(doc["results"] == [{"status": "accepted", "id": "only-one"}], "%r" % doc)
    s.note_accepted([ev], doc)
    status, _, doc = s.post(event("t-structured", "bad", specversion="0.3"), STRUCTURED)
    check(status == 400 and doc["error"]["code"] == "no_valid_event", "%d %r" % (status, doc))
    check(doc["results"][0]["code"] == "unsupported_specversion", "%r" % doc)


@test
def batch_answers_per_event(s):
    src = "t-batch"
    good = [event(src, "g%d" % i) for i in range(50)]
    old = lib.rfc3339_ms(time.time() - 40 * 86400)
    bad = [
        (event(src, "b1", id=None), "missing_field"),
        (event(src, "b2", specversion="2.0"), "unsupported_specversion"),
        (event(src, "b3", time=old), "too_late"),
        (event(src, "b4", data={"units": 1.5}), "invalid_field"),
        (event(src, "b5", time="yesterday"), "invalid_time"),
        (event(src, "b6", subject=""), "invalid_field"),
    ]
    # Raw elements: broken JSON and a non-object are refused alone too.
    items = [json.dumps(e) for e in good[:25]] + [json.dumps(e) for e, _ in bad] + \
        ['{"specversion":"1.0","id":}', "17"] + [json.dumps(e) for e in good[25:]]
    codes = [None] * 25 + [c for _, c in bad] + ["invalid_json", "not_object"] + [None] * 25
    body = "[\n " + ",\n ".join(items) + "\n]"
    before = s.metrics()
    status, _, doc = s.post(body)
    check(status == 202, "%d %r" % (status, doc))
    check(doc["accepted"] == 50 and doc["refused"] == 8, "%r" % {k: doc[k] for k in
                                                               ("accepted", "refused")})
    got = [None if r["status"] == "accepted" else r["code"] for r in doc["results"]]
    check(got == codes, "per-event codes %r, expected %r" % (got, codes))
    for r in doc["results"]:
        check(r["status"] == "accepted" or r["message"], "a refusal without a message: %r" % r)
    s.note_accepted(good[:25] + [e for e, _ in bad] + [{}, {}] + good[25:], doc)
    after = s.metrics()
    key = 'tally_ingest_events_refused_total{code="missing_field"}'
    check(after.get(key, 0) - before.get(key, 0) == 1, "refused metric: %r" % after.get(key))
    # A batch of refusals only is a 400 that still says why for each.
    status, _, doc = s.post([e for e, _ in bad])
    check(status == 400 and doc["error"]["code"] == "no_valid_event", "%d %r" % (status, doc))
    check([r["code"] for r in doc["results"]] == [c for _, c in bad], "%r" % doc)
    # A body that is not an array, or broken at its top level.
    for body in ("{}", "[{}", "[1,,2]", "[] x"):
        status, _, doc = s.post(body)
        check(status == 400 and doc["error"]["code"] == "invalid_batch",
              "%r: %d %r" % (body, status, doc))
    status, _, doc = s.post("[]")
    check(status == 202 and doc["accepted"] == 0, "empty batch: %d %r" % (status, doc))


@test
def retried_batch_counted_once(s):
    events = [event("t-retry", "r%d" % i) for i in range(30)]
    for attempt in range(3):  # a client that never saw the first answers
        status, _, doc = s.post(events)
        check(status == 202 and doc["accepted"] == 30, "attempt %d: %d %r" % (attempt, status, doc))
    s.note_accepted(events, doc)


@test
def broker_outage_then_back(s):
    """A sender keeps posting batches of new events; the broker goes down,
    then comes back. While it is down answers are 503 with Retry-After,
    fast; each refused batch is re-sent until it is accepted."""
    stop = threading.Event()
    seen = {"503": 0, "202": 0}
    errors = []
    lock = threading.Lock()

    def sender(worker):
        n = 0
        try:
            while not stop.is_set():
                events = [event("t-outage-%d" % worker, "o%d-%d" % (n, i)) for i in range(20)]
                n += 1
                deadline = time.monotonic() + 90
                while True:
                    status, headers, doc = s.post(events, timeout=30)
                    with lock:
                        seen[str(status)] = seen.get(str(status), 0) + 1
                    if status == 202:
                        with lock:
                            s.note_accepted(events, doc)
                        break
                    if status != 503 or "Retry-After" not in headers:
                        errors.append("unexpected %d %r" % (status, doc))
                        return
                    if time.monotonic() > deadline:
                        errors.append("503 for 90 s")
                        return
                    time.sleep(0.1)
        except Exception as e:  # noqa: BLE001 - reported by the test
            errors.append(repr(e))

    threads = [threading.Thread(target=sender, args=(w,)) for w in range(3)]
    for t in threads:
        t.start()
    try:
        wait_until("accepted batches before the outage", lambda: seen["202"] >= 5, 30)
        s.broker_signal(signal.SIGUSR1)
        wait_until("503 answers during the outage", lambda: seen["503"] >= 3, 30)
        t0 = time.monotonic()
        status, headers, doc = s.post([event("t-outage-probe", "p1")])
        check(status == 503 and headers.get("Retry-After") == "2", "%d %r" % (status, headers))
        check(time.monotonic() - t0 < 2, "a 503 while Kafka is known down must be immediate")
        mx = s.metrics()
        check(mx.get("tally_ingest_kafka_reachable") == 0, "reachable gauge during the outage")
        s.broker_signal(signal.SIGUSR2)
        after = seen["202"]
        wait_until("accepted batches after the outage", lambda: seen["202"] >= after + 5, 60)
    finally:
        stop.set()
        for t in threads:
            t.join(120)
    check(not errors, "senders: %r" % errors[:3])


@test
def broker_stalled_answers_503(s):
    """The broker frozen (SIGSTOP): connections stay up, so the events are
    sent, but no acknowledgement comes. After the produce timeout (3 s) the
    answer is 503, never 202; once the broker runs again the events may be
    in Kafka after all, and the client's re-send is counted once."""
    events = [event("t-stalled", "s%d" % i) for i in range(20)]
    before = s.metrics().get("tally_ingest_events_unacknowledged_total", 0)
    s.broker_signal(signal.SIGSTOP)
    try:
        t0 = time.monotonic()
        status, headers, doc = s.post(events, timeout=60)
        took = time.monotonic() - t0
    finally:
        s.broker_signal(signal.SIGCONT)
    check(status == 503 and doc["error"]["code"] == "kafka_unavailable",
          "a stalled broker: %d %r" % (status, doc))
    check("Retry-After" in headers, "503 without Retry-After")
    check(took >= 2.5, "answered after %.1f s, before the produce timeout" % took)
    after = s.metrics().get("tally_ingest_events_unacknowledged_total", 0)
    check(after - before == 20, "unacknowledged metric moved by %r" % (after - before))
    s.post_until_accepted(events)


@test
def every_accepted_event_counted_once(s):
    """Last: the collector's totals equal the distinct accepted events;
    nothing was dead-lettered (ingest refused the bad events itself)."""
    expected = len(s.accepted)
    wait_until("the collector to count %d events" % expected,
               lambda: s.db.total_requests() >= expected, 90, interval=0.5,
               on_timeout=lambda: "counted %d" % s.db.total_requests())
    time.sleep(1.5)  # anything more would be a double count
    counted = s.db.total_requests()
    check(counted == expected, "counted %d, accepted %d distinct events" % (counted, expected))
    m = s.collector.metrics()
    check(m.rejected == 0, "the collector dead-lettered %r" % m.rejected_by_code())
    check(m.duplicates > 0, "the retried batches reached the collector as duplicates")


@test
def openapi_documents_the_route(s):
    """docs/openapi.json marks POST /v1/events as tally-ingest's and
    documents every status this suite saw it answer."""
    with open(os.path.join(REPO, "docs", "openapi.json")) as f:
        doc = json.load(f)
    ours = {(m, p) for p, item in doc["paths"].items() for m in item
            if m in ("get", "post", "put", "patch", "delete")
            and item.get("x-tally-program") == "tally-ingest"}
    check(ours == {("post", "/v1/events")}, "tally-ingest's operations: %r" % ours)
    documented = {int(c) for c in doc["paths"]["/v1/events"]["post"]["responses"]}
    check(s.statuses <= documented, "undocumented answers: %r" % (s.statuses - documented))
    check({202, 400, 401, 413, 415, 503} <= s.statuses, "the suite saw only %r" % s.statuses)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bin", default=os.path.join(REPO, "build", "bin"))
    p.add_argument("--asan-bin", default=os.path.join(REPO, "build", "asan", "bin"))
    p.add_argument("--only", default="")
    p.add_argument("--keep-logs", default=None)
    args = p.parse_args()
    only = set(filter(None, args.only.split(",")))
    tmp = tempfile.mkdtemp(prefix="tally-ingest-tests-")
    s = Suite(args, tmp)
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    passed = failed = 0
    t_start = time.monotonic()
    try:
        s.up()
        print("stack, collector and ingest up in %.1fs" % (time.monotonic() - t_start), flush=True)
        for fn in TESTS:
            if only and fn.__name__ not in only and fn is not every_accepted_event_counted_once:
                continue
            t0 = time.monotonic()
            try:
                fn(s)
                passed += 1
                print("PASS %-36s %6.2fs" % (fn.__name__, time.monotonic() - t0), flush=True)
            except Exception as e:  # noqa: BLE001 - report and go on
                failed += 1
                reason = str(e) if isinstance(e, Failure) else traceback.format_exc()
                print("FAIL %-36s %6.2fs %s" % (fn.__name__, time.monotonic() - t0, reason),
                      flush=True)
        # Both stop cleanly on SIGTERM, without a sanitizer report.
        rc, _, killed = s.ingest.terminate(20)
        report = lib.sanitizer_report(s.ingest.log_text())
        if killed or rc != 0 or report:
            failed += 1
            print("FAIL ingest_stops_cleanly: status %s killed %s %s\n%s"
                  % (rc, killed, report or "", s.ingest.log_tail()), flush=True)
        else:
            passed += 1
            print("PASS ingest_stops_cleanly", flush=True)
        s.collector.stop()
    except Failure as e:
        failed += 1
        print("FAIL setup: %s" % e, flush=True)
    finally:
        s.registry.stop_all()
        subprocess.run([os.path.join(REPO, "tools", "stack.sh"), "down", s.stack_dir],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                       env=clean_env({"TALLY_BIN_DIR": s.bin_dir}), timeout=120)
        if args.keep_logs:
            shutil.copytree(tmp, args.keep_logs, dirs_exist_ok=True,
                            ignore=shutil.ignore_patterns("stack"))
        shutil.rmtree(tmp, ignore_errors=True)
    print("%d passed, %d failed (%.0f s)" % (passed, failed, time.monotonic() - t_start))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
