"""Helpers for Tally's integration tests: processes, the stack, the database,
the dev broker, the collector's metrics, kcat, and the loadgen summaries.

Python 3 standard library only. Every process is started through a Registry
so that the runner can always stop it (by its own pid), whatever happens."""

import datetime
import http.client
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import zlib

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class Failure(Exception):
    """A test assertion failed; the message says what and why."""


def check(condition, message):
    if not condition:
        raise Failure(message)


def free_port():
    """A free loopback TCP port (bound and released at once)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def clean_env(extra=None):
    """The environment for Tally programs: no stray TALLY_* variables (the
    programs refuse unknown ones), sanitizers set to report and stop."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TALLY_")}
    env.setdefault("ASAN_OPTIONS", "detect_leaks=1:halt_on_error=1:abort_on_error=0")
    env.setdefault("UBSAN_OPTIONS", "print_stacktrace=1:halt_on_error=1")
    env.setdefault("LSAN_OPTIONS", "")
    if extra:
        env.update(extra)
    return env


SANITIZER_PATTERNS = (
    "ERROR: AddressSanitizer",
    "ERROR: LeakSanitizer",
    "runtime error:",
    "SUMMARY: UndefinedBehaviorSanitizer",
    "SUMMARY: AddressSanitizer",
    "WARNING: ThreadSanitizer",
)


def sanitizer_report(text):
    """The first lines of a sanitizer report in `text`, or None."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if any(p in line for p in SANITIZER_PATTERNS):
            return "\n".join(lines[i:i + 12])
    return None


# ---- processes ----------------------------------------------------------------


class Proc:
    def __init__(self, registry, name, argv, log_path, env=None, cwd=None):
        self.name = name
        self.argv = argv
        self.log_path = log_path
        self._log = open(log_path, "ab")
        self.started_at = time.monotonic()
        self.popen = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
            env=env if env is not None else clean_env(), cwd=cwd, start_new_session=True)
        self.pid = self.popen.pid
        registry.add(self)

    def alive(self):
        return self.popen.poll() is None

    @property
    def returncode(self):
        return self.popen.poll()

    def send(self, sig):
        if self.alive():
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass

    def wait(self, timeout):
        """The exit status, or None if still running after `timeout` s."""
        try:
            return self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def kill(self):
        """SIGKILL and reap."""
        self.send(signal.SIGKILL)
        self.popen.wait()
        self._close_log()

    def terminate(self, timeout=15.0):
        """SIGTERM; SIGKILL after `timeout`. Returns (status, seconds, killed)."""
        t0 = time.monotonic()
        if not self.alive():
            self._close_log()
            return self.popen.returncode, 0.0, False
        self.send(signal.SIGTERM)
        rc = self.wait(timeout)
        elapsed = time.monotonic() - t0
        if rc is None:
            self.kill()
            return self.popen.returncode, elapsed, True
        self._close_log()
        return rc, elapsed, False

    def _close_log(self):
        if not self._log.closed:
            self._log.close()

    def log_text(self):
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def log_tail(self, n=15):
        return "\n".join(self.log_text().splitlines()[-n:])


class Registry:
    """Every process the suite started, so that cleanup can stop each one."""

    def __init__(self):
        self.procs = []

    def add(self, proc):
        self.procs.append(proc)

    def stop_all(self, grace=5.0):
        alive = [p for p in self.procs if p.alive()]
        for p in alive:
            p.send(signal.SIGTERM)
        deadline = time.monotonic() + grace
        for p in alive:
            p.wait(max(0.0, deadline - time.monotonic()))
        for p in alive:
            if p.alive():
                p.kill()
            else:
                p._close_log()
        self.procs = []


def run(argv, timeout=120, env=None, check_rc=True, input_bytes=None):
    """Runs a short command; returns CompletedProcess (bytes)."""
    try:
        cp = subprocess.run(argv, input=input_bytes, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, timeout=timeout,
                            env=env if env is not None else clean_env(),
                            stdin=None if input_bytes is not None else subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise Failure("%s timed out after %ss" % (" ".join(argv[:3]), timeout))
    if check_rc and cp.returncode != 0:
        raise Failure("%s exited %d: %s" % (" ".join(argv[:3]), cp.returncode,
                                             cp.stderr.decode("utf-8", "replace").strip()[-800:]))
    return cp


# ---- the database ---------------------------------------------------------------


class DB:
    def __init__(self, url):
        self.url = url

    def query(self, sql, timeout=60):
        """Rows of tab-separated text values."""
        cp = run(["psql", "-X", "-q", "-t", "-A", "-F", "\t", "-v", "ON_ERROR_STOP=1",
                  "-d", self.url, "-c", sql], timeout=timeout, check_rc=False)
        if cp.returncode != 0:
            raise Failure("psql failed (%s): %s" % (sql[:80], cp.stderr.decode("utf-8", "replace").strip()))
        out = cp.stdout.decode("utf-8")
        return [line.split("\t") for line in out.splitlines() if line != ""]

    def scalar(self, sql):
        rows = self.query(sql)
        return rows[0][0] if rows else None

    def execute(self, sql):
        self.query(sql)

    def total_requests(self):
        return int(self.scalar("SELECT coalesce(sum(requests), 0) FROM usage_hourly"))

    def reset_usage(self):
        """Empties the rollups and the deduplication record between tests."""
        tables = ["usage_hourly", "usage_counters"]
        if self.scalar("SELECT to_regclass('event_ids') IS NOT NULL") == "t":
            tables.append("event_ids")
        if self.scalar("SELECT to_regclass('stripe_reports') IS NOT NULL") == "t":
            tables.append("stripe_reports")
        self.execute("TRUNCATE " + ", ".join(tables))

    def add_plan(self, plan_id):
        self.execute("INSERT INTO plans (id, name, quota_limit, quota_period) "
                     "VALUES ('%s', 'plan %s', 1000000, 'MONTH')" % (plan_id, plan_id))

    def add_keys(self, key_ids, plan_id=None):
        if not key_ids:
            return
        values = ", ".join("('%s', sha256('%s-secret'::bytea), %s)"
                           % (k, k, "'%s'" % plan_id if plan_id else "NULL") for k in key_ids)
        self.execute("INSERT INTO api_keys (id, value_hash, plan_id) VALUES " + values)

    def hourly_by_key_hour(self):
        rows = self.query("SELECT key_id, extract(epoch FROM hour)::bigint, sum(requests), "
                          "sum(units), sum(bytes) FROM usage_hourly GROUP BY 1, 2")
        return {(r[0], int(r[1])): (int(r[2]), int(r[3]), int(r[4])) for r in rows}

    def hourly_by_key(self):
        rows = self.query("SELECT key_id, sum(requests), sum(units), sum(bytes) "
                          "FROM usage_hourly GROUP BY 1")
        return {r[0]: (int(r[1]), int(r[2]), int(r[3])) for r in rows}

    def counters(self):
        rows = self.query("SELECT key_id, period, extract(epoch FROM period_start)::bigint, "
                          "requests, units, bytes FROM usage_counters")
        return {(r[0], r[1], int(r[2])): (int(r[3]), int(r[4]), int(r[5])) for r in rows}


# ---- expected totals --------------------------------------------------------------


def sql_literal(text):
    """A SQL string literal (standard_conforming_strings is on)."""
    return "'" + text.replace("'", "''") + "'"


def parse_rfc3339(text):
    return int(datetime.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp())


def rfc3339(epoch_s):
    return datetime.datetime.fromtimestamp(epoch_s, datetime.timezone.utc).strftime(
        "%Y-%m-%dT%H:%M:%SZ")


def rfc3339_ms(epoch_s):
    return datetime.datetime.fromtimestamp(epoch_s, datetime.timezone.utc).strftime(
        "%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def period_starts(hour_epoch):
    """(DAY, WEEK, MONTH) starts, UTC, ISO weeks from Monday, as epoch seconds."""
    d = datetime.datetime.fromtimestamp(hour_epoch, datetime.timezone.utc)
    day = d.replace(hour=0, minute=0, second=0, microsecond=0)
    week = day - datetime.timedelta(days=day.weekday())
    month = day.replace(day=1)
    return {"DAY": int(day.timestamp()), "WEEK": int(week.timestamp()),
            "MONTH": int(month.timestamp())}


class Expected:
    """Exact totals a test expects: per (key, hour) -> (requests, units, bytes)."""

    def __init__(self):
        self.hours = {}

    def add(self, key, hour_epoch, requests, units, nbytes):
        check(hour_epoch % 3600 == 0, "internal: hour %d not aligned" % hour_epoch)
        r, u, b = self.hours.get((key, hour_epoch), (0, 0, 0))
        self.hours[(key, hour_epoch)] = (r + requests, u + units, b + nbytes)

    def add_event(self, key, time_epoch, units, nbytes):
        self.add(key, int(time_epoch) // 3600 * 3600, 1, units, nbytes)

    def add_summary(self, summary):
        check(not summary.get("hoursDropped"), "loadgen summary dropped hour rows")
        for name, t in summary["hours"].items():
            key, hour = name.rsplit("|", 1)
            self.add(key, parse_rfc3339(hour), t["requests"], t["units"], t["bytes"])
        # The per-key totals of the summary must agree with its hours.
        per_key = self.by_key()
        for key, t in summary["keys"].items():
            check(per_key.get(key) == (t["requests"], t["units"], t["bytes"]),
                  "internal: loadgen summary keys/hours disagree for %s" % key)

    def by_key(self):
        out = {}
        for (key, _), (r, u, b) in self.hours.items():
            r0, u0, b0 = out.get(key, (0, 0, 0))
            out[key] = (r0 + r, u0 + u, b0 + b)
        return out

    def counters(self):
        out = {}
        for (key, hour), (r, u, b) in self.hours.items():
            for period, start in period_starts(hour).items():
                r0, u0, b0 = out.get((key, period, start), (0, 0, 0))
                out[(key, period, start)] = (r0 + r, u0 + u, b0 + b)
        return out

    def requests(self):
        return sum(r for r, _, _ in self.hours.values())


def diff_maps(what, expected, actual, limit=6):
    """A short description of how two {key: value} maps differ, or None."""
    if expected == actual:
        return None
    lines = []
    for k in sorted(set(expected) | set(actual), key=str):
        e, a = expected.get(k), actual.get(k)
        if e != a:
            lines.append("%s: expected %s, got %s" % (k, e, a))
    more = "" if len(lines) <= limit else " (+%d more)" % (len(lines) - limit)
    return "%s differ in %d entries: %s%s" % (what, len(lines), "; ".join(lines[:limit]), more)


def verify_totals(db, expected, plans=None):
    """Compares usage_hourly (per key, per key+hour) and usage_counters
    (DAY/WEEK/MONTH per key) with `expected`, exactly. plans: key -> plan id
    expected in usage_hourly.plan_id ('' for none)."""
    problems = []
    actual_keys = db.hourly_by_key()
    d = diff_maps("per-key totals (requests, units, bytes)", expected.by_key(), actual_keys)
    if d:
        problems.append(d)
    d = diff_maps("per-key-hour totals", expected.hours, db.hourly_by_key_hour())
    if d:
        problems.append(d)
    d = diff_maps("usage_counters", expected.counters(), db.counters())
    if d:
        problems.append(d)
    if plans is not None:
        rows = db.query("SELECT DISTINCT key_id, plan_id FROM usage_hourly")
        wrong = [(k, p) for k, p in rows if plans.get(k, "") != p]
        if wrong:
            problems.append("usage_hourly.plan_id wrong for %s" % wrong[:5])
    if problems:
        raise Failure(" | ".join(problems))


# ---- keys spread over partitions ------------------------------------------------


def keys_on_distinct_partitions(prefix, count, partitions):
    """`count` key ids whose messages (CRC-32 of the key, as loadgen and
    librdkafka's default partitioner place them) land on distinct partitions
    when count <= partitions, so no partition overflows the dev broker's
    bounded retention."""
    keys, used, i = [], set(), 0
    while len(keys) < count:
        name = "%s%d" % (prefix, i)
        p = zlib.crc32(name.encode()) % partitions
        if p not in used or len(used) >= partitions:
            keys.append(name)
            used.add(p)
        i += 1
    return keys


def collector_lane(key_id, lanes):
    """The writer lane (one batch per lane in each round) tally-collector
    puts a key's events in: FNV-1a of the key id, as lane_of in
    services/collector/batch.c."""
    h = 14695981039346656037
    for byte in key_id.encode():
        h = ((h ^ byte) * 1099511628211) % 2 ** 64
    return h % lanes


# ---- the dev broker and kcat ----------------------------------------------------


class Broker:
    def __init__(self, scope, partitions, dlq_partitions=4):
        self.dir = scope.path("broker-%d" % scope.next_id())
        os.makedirs(self.dir)
        bootstrap_file = os.path.join(self.dir, "bootstrap")
        self.proc = Proc(scope.registry, "devbroker",
                         [scope.bin("tally-devbroker"), "--partitions", str(partitions),
                          "--dlq-partitions", str(dlq_partitions),
                          "--bootstrap-file", bootstrap_file],
                         os.path.join(self.dir, "devbroker.log"))
        deadline = time.monotonic() + 20
        while not (os.path.exists(bootstrap_file) and os.path.getsize(bootstrap_file) > 0):
            check(self.proc.alive(), "tally-devbroker exited: %s" % self.proc.log_tail())
            check(time.monotonic() < deadline, "tally-devbroker wrote no bootstrap file in 20 s")
            time.sleep(0.05)
        with open(bootstrap_file) as f:
            self.bootstrap = f.read().strip()
        self.partitions = partitions

    def stop(self):
        self.proc.terminate(10)


def kcat_produce(broker, topic, value, key=None, partition=None, tmpdir="/tmp"):
    """Publishes one message whose value is exactly `value` (bytes; b"" for an
    empty value, None for a NULL value)."""
    base = ["kcat", "-P", "-b", broker, "-t", topic, "-X", "message.max.bytes=10000000"]
    if partition is not None:
        base += ["-p", str(partition)]
    if value is None or value == b"":
        # kcat skips empty files; a key-delimited line gives an empty value,
        # and -Z turns it into NULL.
        check(key is not None and "\t" not in key, "internal: empty values need a key")
        argv = base + ["-K", "\t"] + (["-Z"] if value is None else [])
        run(argv, timeout=30, input_bytes=key.encode() + b"\t\n")
        return
    path = os.path.join(tmpdir, "kcat-msg-%d" % random.getrandbits(48))
    with open(path, "wb") as f:
        f.write(value)
    try:
        run(base + (["-k", key] if key is not None else []) + [path], timeout=30)
    finally:
        os.unlink(path)


def kcat_produce_lines(broker, topic, keyed_values, partition=None):
    """Publishes many (key, value) messages in one kcat run (values must not
    contain newlines, keys no tabs), in order."""
    data = b"".join(k.encode() + b"\t" + v + b"\n" for k, v in keyed_values)
    argv = ["kcat", "-P", "-b", broker, "-t", topic, "-K", "\t"]
    if partition is not None:
        argv += ["-p", str(partition)]
    run(argv, timeout=60, input_bytes=data)


def kcat_consume_all(broker, topic):
    """Every message of `topic` now: list of dicts with partition, offset,
    value (bytes, or None for NULL) and headers (dict)."""
    cp = run(["kcat", "-C", "-b", broker, "-t", topic, "-o", "beginning", "-e", "-q",
              "-f", "%p\t%o\t%S\t%h\n%s"], timeout=60)
    data, pos, out = cp.stdout, 0, []
    while pos < len(data):
        nl = data.index(b"\n", pos)
        fields = data[pos:nl].decode("utf-8", "replace").split("\t", 3)
        check(len(fields) == 4, "cannot parse kcat output line %r" % data[pos:nl][:200])
        size = int(fields[2])
        pos = nl + 1
        value = None if size < 0 else data[pos:pos + size]
        pos += max(size, 0)
        out.append({"partition": int(fields[0]), "offset": int(fields[1]),
                    "value": value, "headers": parse_headers(fields[3])})
    return out


def parse_headers(text):
    """kcat's %h ("n=v,n=v") for Tally's headers, whose names all start with
    tally- (values may contain commas)."""
    headers = {}
    if not text:
        return headers
    for part in re.split(r",(?=tally-[a-z-]+=)", text):
        name, _, value = part.partition("=")
        headers[name] = value
    return headers


# ---- the collector --------------------------------------------------------------


def parse_metrics(text):
    values = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name, _, value = line.rpartition(" ")
        try:
            values[name] = float(value)
        except ValueError:
            pass
    return values


class Metrics:
    def __init__(self, values):
        self.values = values

    def get(self, name, default=0.0):
        return self.values.get(name, default)

    @property
    def consumed(self):
        return int(self.get("tally_collector_events_consumed_total"))

    @property
    def counted(self):
        return int(self.get("tally_collector_events_counted_total"))

    @property
    def duplicates(self):
        return int(self.get("tally_collector_events_duplicate_total"))

    def rejected_by_code(self):
        out = {}
        for name, v in self.values.items():
            m = re.match(r'tally_collector_events_rejected_total\{code="([^"]*)"\}$', name)
            if m and v:
                out[m.group(1)] = int(v)
        return out

    @property
    def rejected(self):
        return sum(self.rejected_by_code().values())

    @property
    def lag(self):
        return int(self.get("tally_collector_consumer_lag"))

    @property
    def paused(self):
        return int(self.get("tally_collector_paused"))

    @property
    def db_errors(self):
        return int(self.get("tally_collector_db_errors_total"))

    def balanced(self):
        """consumed = counted + duplicates + rejected"""
        return self.consumed == self.counted + self.duplicates + self.rejected

    def brief(self):
        return ("consumed=%d counted=%d duplicates=%d rejected=%d lag=%d paused=%d db_errors=%d"
                % (self.consumed, self.counted, self.duplicates, self.rejected, self.lag,
                   self.paused, self.db_errors))


class Collector:
    """One tally-collector (from the sanitized build) under test."""

    def __init__(self, scope, broker, group, name="collector", topic="usage-events",
                 dlq_topic="usage-events-dlq", args=(), session_timeout_ms=3000):
        self.scope = scope
        self.name = "%s-%d" % (name, scope.next_id())
        for attempt in range(3):
            self.port = free_port()
            argv = [scope.asan_bin("tally-collector"),
                    "--database-url", scope.ctx.db_url,
                    "--kafka-brokers", broker.bootstrap,
                    "--kafka-topic", topic, "--kafka-dlq-topic", dlq_topic,
                    "--kafka-group", group,
                    "--metrics-addr", "127.0.0.1:%d" % self.port,
                    "--session-timeout-ms", str(session_timeout_ms)] + list(args)
            self.proc = Proc(scope.registry, self.name, argv, scope.path(self.name + ".log"))
            scope.collectors.append(self)
            if self._wait_metrics_up():
                return
            if "TALLY_METRICS_ADDR" not in self.proc.log_text() or attempt == 2:
                raise Failure("%s exited at start (status %s): %s"
                              % (self.name, self.proc.returncode, self.proc.log_tail()))
            # Lost the port to someone else: try another one.
            self.name += "r"

    def _wait_metrics_up(self, timeout=30):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.proc.alive():
                return False
            if self.metrics(required=False) is not None:
                return True
            time.sleep(0.1)
        raise Failure("%s: /metrics did not answer within %ds" % (self.name, timeout))

    def metrics(self, required=True):
        try:
            with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % self.port,
                                        timeout=5) as r:
                return Metrics(parse_metrics(r.read().decode("utf-8", "replace")))
        except (urllib.error.URLError, OSError, ConnectionError):
            if required:
                self.assert_alive()
                raise Failure("%s: GET /metrics failed" % self.name)
            return None

    def alive(self):
        return self.proc.alive()

    def assert_alive(self):
        if not self.proc.alive():
            raise Failure("%s exited unexpectedly (status %s); log tail:\n%s"
                          % (self.name, self.proc.returncode, self.proc.log_tail()))

    def sigkill(self):
        self.proc.kill()

    def stop(self, timeout=15):
        """SIGTERM; the collector must exit 0 within `timeout` s. Returns seconds taken."""
        rc, elapsed, killed = self.proc.terminate(timeout)
        check(not killed, "%s did not exit within %ss of SIGTERM" % (self.name, timeout))
        self.check_sanitizers()
        check(rc == 0, "%s exited %s after SIGTERM; log tail:\n%s"
              % (self.name, rc, self.proc.log_tail()))
        return elapsed

    def check_sanitizers(self):
        report = sanitizer_report(self.proc.log_text())
        check(report is None, "%s: sanitizer report:\n%s" % (self.name, report))


# ---- the api -----------------------------------------------------------------------


ADMIN_TOKEN = "it-admin-token-3f9c51d2a7b8"
KEY_HMAC_SECRET = "it-key-hmac-secret-8d2e6f0a4c7b1935"  # tally-api: TALLY_KEY_HMAC_SECRET


def keepalive_request(owner, port, method, path, body, headers, timeout):
    """One request on owner.conn, a kept-alive connection to 127.0.0.1:port
    (opened when None; reopened once when the server had closed it; dropped
    when the answer closes it). Returns (status, headers, body text)."""
    for attempt in range(2):
        if owner.conn is None:
            owner.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        try:
            owner.conn.request(method, path, body=body, headers=headers)
            res = owner.conn.getresponse()
            data = res.read()
            if res.will_close:  # Connection: close, or HTTP/1.0
                owner.conn.close()
                owner.conn = None
            return res.status, res.getheaders(), data.decode("utf-8", "replace")
        except (http.client.HTTPException, ConnectionError):
            owner.conn.close()
            owner.conn = None
            if attempt == 1:
                raise


class Answer:
    """One HTTP answer: status, headers (names lower-cased), body text."""

    def __init__(self, status, headers, body):
        self.status = status
        self.headers = {k.lower(): v for k, v in headers}
        self.body = body

    def header(self, name):
        return self.headers.get(name.lower())

    @property
    def json(self):
        return json.loads(self.body) if self.body else None

    def error_code(self):
        try:
            return self.json["error"]["code"]
        except (ValueError, TypeError, KeyError):
            return None

    def __repr__(self):
        return "%d %s %s" % (self.status, self.headers, self.body[:300])


class Api:
    """One tally-api (from the sanitized build) under test, on a free
    loopback port, against the suite's database."""

    def __init__(self, scope, name="api", refresh_ms=None, args=()):
        self.scope = scope
        self.name = "%s-%d" % (name, scope.next_id())
        self.conn = None
        for attempt in range(3):
            self.port = free_port()
            self.metrics_port = free_port()  # /metrics is on the internal address
            argv = [scope.asan_bin("tally-api"), "--http-addr", "127.0.0.1:%d" % self.port,
                    "--metrics-addr", "127.0.0.1:%d" % self.metrics_port, "--log-level", "debug"]
            if refresh_ms is not None:
                argv += ["--key-refresh-ms", str(refresh_ms)]
            argv += list(args)
            env = clean_env({"TALLY_DATABASE_URL": scope.ctx.db_url,
                             "TALLY_ADMIN_TOKEN": ADMIN_TOKEN,
                             "TALLY_KEY_HMAC_SECRET": KEY_HMAC_SECRET})
            self.proc = Proc(scope.registry, self.name, argv, scope.path(self.name + ".log"),
                             env=env)
            scope.apis.append(self)
            if self._wait_up():
                return
            if "cannot listen" not in self.proc.log_text() or attempt == 2:
                raise Failure("%s exited at start (status %s): %s"
                              % (self.name, self.proc.returncode, self.proc.log_tail()))
            self.name += "r"  # lost the port to someone else: try another one

    def _wait_up(self, timeout=30):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.proc.alive():
                return False
            try:
                if self.request("GET", "/readyz").status == 200:
                    return True
            except (OSError, http.client.HTTPException):
                pass
            time.sleep(0.1)
        raise Failure("%s: /readyz did not answer 200 within %ds" % (self.name, timeout))

    def request(self, method, path, headers=None, body=None, admin=False, key=None):
        """One request on a kept-alive connection (reopened once if the
        server closed it). body: a dict/list (sent as JSON), str or bytes."""
        hdrs = dict(headers or {})
        if admin:
            hdrs["Authorization"] = "Bearer " + ADMIN_TOKEN
        if key is not None:
            hdrs["x-api-key"] = key
        if isinstance(body, (dict, list)):
            body = json.dumps(body)
            hdrs.setdefault("Content-Type", "application/json")
        if isinstance(body, str):
            body = body.encode()
        return Answer(*keepalive_request(self, self.port, method, path, body, hdrs, 15))

    def call(self, method, path, status, **kw):
        """request() that must answer `status`; returns the Answer."""
        try:
            answer = self.request(method, path, **kw)
        except (OSError, http.client.HTTPException) as e:
            self.assert_alive()
            raise Failure("%s: %s %s failed: %s" % (self.name, method, path, e))
        check(answer.status == status, "%s %s: expected %d, got %r"
              % (method, path, status, answer))
        return answer

    def authorize(self, key_value, method="GET", uri="/items"):
        return self.request("GET", "/v1/authorize", key=key_value,
                            headers={"X-Original-Method": method, "X-Original-URI": uri})

    def metrics(self):
        with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % self.metrics_port,
                                    timeout=15) as r:
            return Metrics(parse_metrics(r.read().decode("utf-8", "replace")))

    def refreshes(self):
        """tally_api_key_cache_refreshes_total: completed reloads of the
        authorize cache."""
        return int(self.metrics().get("tally_api_key_cache_refreshes_total"))

    def wait_fresh_cache(self, timeout=15):
        """Returns just after the authorize cache completed a reload that
        started after this call (so it saw every commit made before the
        call). Two completions are needed: the first may be a reload that
        was already running. Polls often, so that the caller acts early in
        the quiet time before the next periodic reload."""
        start = self.refreshes()
        wait_until("%s's authorize cache to reload twice" % self.name,
                   lambda: self.refreshes() >= start + 2, timeout, interval=0.01)

    def alive(self):
        return self.proc.alive()

    def assert_alive(self):
        if not self.proc.alive():
            raise Failure("%s exited unexpectedly (status %s); log tail:\n%s"
                          % (self.name, self.proc.returncode, self.proc.log_tail()))

    def stop(self, timeout=15):
        """SIGTERM; the api must exit 0 within `timeout` s, with no sanitizer report."""
        if self.conn is not None:
            self.conn.close()
            self.conn = None
        rc, elapsed, killed = self.proc.terminate(timeout)
        check(not killed, "%s did not exit within %ss of SIGTERM" % (self.name, timeout))
        self.check_sanitizers()
        check(rc == 0, "%s exited %s after SIGTERM; log tail:\n%s"
              % (self.name, rc, self.proc.log_tail()))
        return elapsed

    def check_sanitizers(self):
        report = sanitizer_report(self.proc.log_text())
        check(report is None, "%s: sanitizer report:\n%s" % (self.name, report))


# ---- loadgen --------------------------------------------------------------------


class Loadgen:
    """One tally-loadgen run (foreground or background)."""

    def __init__(self, scope, broker, keys, count, seed, base_time, source, topic="usage-events",
                 rate=None, dup_ratio=0.0, dup_other_partition=0.5, late_ratio=0.0,
                 replay=None):
        self.scope = scope
        n = scope.next_id()
        self.summary_path = scope.path("loadgen-%d.json" % n)
        argv = [scope.bin("tally-loadgen"), "--brokers", broker.bootstrap, "--topic", topic,
                "--keys", ",".join(keys), "--count", str(count), "--seed", str(seed),
                "--base-time", base_time, "--source", source,
                "--dup-ratio", str(dup_ratio), "--dup-other-partition", str(dup_other_partition),
                "--late-ratio", str(late_ratio), "--summary", self.summary_path]
        if rate:
            argv += ["--rate", str(rate)]
        if replay is not None:
            argv += ["--replay", str(replay)]
        self.proc = Proc(scope.registry, "loadgen-%d" % n, argv, scope.path("loadgen-%d.log" % n))

    def stop(self, timeout=90):
        """Stops an open-ended run (SIGTERM: it stops sending, waits for its
        deliveries and writes the summary); returns the summary."""
        check(self.proc.alive(), "tally-loadgen ended before it was stopped: %s"
              % self.proc.log_tail(3))
        self.proc.send(signal.SIGTERM)
        return self.finish(timeout)

    def finish(self, timeout=120):
        """Waits for the run; returns its summary (checked: exit 0, nothing failed)."""
        rc = self.proc.wait(timeout)
        check(rc is not None, "tally-loadgen still running after %ss" % timeout)
        check(rc == 0, "tally-loadgen exited %s: %s" % (rc, self.proc.log_tail(5)))
        with open(self.summary_path) as f:
            summary = json.load(f)
        check(summary["failed"] == 0, "tally-loadgen: %d deliveries failed" % summary["failed"])
        return summary


# ---- waiting ----------------------------------------------------------------------


def wait_until(what, predicate, timeout, interval=0.2, on_timeout=None):
    """Polls predicate() (truthy = done) until `timeout` s; fails with `what`."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() >= deadline:
            detail = on_timeout() if on_timeout else ""
            raise Failure("timed out after %ss waiting for %s%s"
                          % (timeout, what, ("; " + detail) if detail else ""))
        time.sleep(interval)


def wait_for_totals(db, expected_requests, collectors, timeout, settle=2.0):
    """Waits until usage_hourly holds exactly `expected_requests` requests and
    every live collector is idle: consumed = counted + duplicates + rejected
    and its consumed count unchanged for `settle` s. Fails at once on
    over-counting or when one of `collectors` dies. (The lag gauge is not
    used here: see test_lag_zero_when_caught_up.)"""
    state = {"total": None, "since": None, "snap": None}

    def done():
        for c in collectors:
            c.assert_alive()
        total = db.total_requests()
        state["total"] = total
        check(total <= expected_requests,
              "over-counted: usage_hourly holds %d requests, expected %d"
              % (total, expected_requests))
        ms = [c.metrics() for c in collectors]
        snap = tuple(m.consumed for m in ms)
        if total == expected_requests and all(m.balanced() for m in ms):
            if state["snap"] == snap:
                return time.monotonic() - state["since"] >= settle
            state["snap"], state["since"] = snap, time.monotonic()
        else:
            state["snap"] = None
        return False

    def detail():
        parts = []
        for c in collectors:
            m = c.metrics(required=False)
            parts.append("%s: %s" % (c.name, m.brief() if m else "no metrics"))
        return "usage_hourly has %s of %d requests; %s" % (
            state["total"], expected_requests, "; ".join(parts))

    wait_until("the expected totals", done, timeout, interval=0.3, on_timeout=detail)


def copy_tree(src, dst):
    shutil.copytree(src, dst, dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns("data", "run", "*.pid", ".stack.lock"))


# ---- Stripe: the stand-in and the reporter -----------------------------------------

STRIPE_KEY = "sk_test_it_4c8e1f0a9b7d2e6f5a3c"


class Standin:
    """The Stripe stand-in (tests/stripe/standin.py) on a free loopback port,
    configured and read through its /_standin/ control routes."""

    def __init__(self, scope, customers, meters=("api_calls",), items=None, seed=None,
                 account_version=None):
        self.scope = scope
        self.name = "stripe-%d" % scope.next_id()
        for attempt in range(3):
            self.port = free_port()
            argv = [sys.executable, os.path.join(REPO, "tests", "stripe", "standin.py"),
                    "--port", str(self.port), "--api-key", STRIPE_KEY,
                    "--customers", ",".join(customers) or "none",
                    "--meters", ",".join(meters)]
            if items:
                argv += ["--subscription-items", ",".join("%s=%s" % kv for kv in items.items())]
            if seed is not None:
                argv += ["--seed", str(seed)]
            if account_version:
                argv += ["--account-version", account_version]
            self.proc = Proc(scope.registry, self.name, argv, scope.path(self.name + ".log"))
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline and self.proc.alive():
                if "listening on" in self.proc.log_text():
                    self.base = "http://127.0.0.1:%d" % self.port
                    return
                time.sleep(0.05)
            if attempt == 2:
                raise Failure("%s did not start: %s" % (self.name, self.proc.log_tail()))
            self.proc.kill()

    def control(self, method, route, body=None):
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.base + "/_standin/" + route, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.loads(r.read().decode())

    def configure(self, **config):
        return self.control("POST", "config", config)

    def ledger(self):
        return self.control("GET", "ledger")

    def events(self):
        return self.control("GET", "events")

    def stats(self):
        return self.control("GET", "stats")


class Reporter:
    """tally-reporter (sanitized build) against a stand-in: one --once run,
    or a daemon (start)."""

    def __init__(self, scope, standin, mode="meter_events", args=(), env=None):
        self.scope = scope
        self.standin = standin
        self.mode = mode
        self.args = list(args)
        self.env = dict(env or {})
        self.proc = None
        self.runs = 0

    def _argv(self, port):
        return [self.scope.asan_bin("tally-reporter"), "--stripe-api-base", self.standin.base,
                "--stripe-mode", self.mode, "--metrics-addr", "127.0.0.1:%d" % port,
                "--log-level", "debug"] + self.args

    def _env(self):
        e = {"TALLY_DATABASE_URL": self.scope.ctx.db_url, "TALLY_STRIPE_API_KEY": STRIPE_KEY}
        e.update(self.env)
        return clean_env(e)

    def once(self, timeout=240, extra=()):
        """One --once run; returns (exit status, summary dict or None, log text)."""
        self.runs += 1
        log_path = self.scope.path("reporter-once-%d.log" % self.scope.next_id())
        with open(log_path, "wb") as log:
            cp = subprocess.run(self._argv(free_port()) + ["--once"] + list(extra),
                                env=self._env(), stdout=subprocess.PIPE, stderr=log,
                                stdin=subprocess.DEVNULL, timeout=timeout)
        text = open(log_path, encoding="utf-8", errors="replace").read()
        self.check_log(text, log_path)
        out = cp.stdout.decode("utf-8", "replace").strip()
        summary = json.loads(out.splitlines()[-1]) if out else None
        return cp.returncode, summary, text

    def start(self, name="reporter"):
        self.port = free_port()
        self.name = "%s-%d" % (name, self.scope.next_id())
        self.proc = Proc(self.scope.registry, self.name, self._argv(self.port),
                         self.scope.path(self.name + ".log"), env=self._env())
        wait_until("%s /healthz" % self.name, lambda: self.healthz() or not self.proc.alive(),
                   30)
        check(self.proc.alive(), "%s exited at start: %s" % (self.name, self.proc.log_tail()))
        return self

    def healthz(self):
        try:
            with urllib.request.urlopen("http://127.0.0.1:%d/healthz" % self.port,
                                        timeout=5) as r:
                return r.status == 200
        except (urllib.error.URLError, OSError, ConnectionError):
            return False

    def metrics(self):
        with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % self.port, timeout=5) as r:
            return Metrics(parse_metrics(r.read().decode("utf-8", "replace")))

    def sigkill(self):
        self.proc.kill()
        self.check_log(self.proc.log_text(), self.name)

    def stop(self, timeout=30):
        rc, _, killed = self.proc.terminate(timeout)
        text = self.proc.log_text()
        self.check_log(text, self.name)
        check(not killed, "%s did not exit within %ss of SIGTERM" % (self.name, timeout))
        check(rc == 0, "%s exited %s after SIGTERM: %s" % (self.name, rc, self.proc.log_tail()))

    @staticmethod
    def check_log(text, what):
        check(STRIPE_KEY not in text, "%s: the Stripe key appears in the log" % what)
        report = sanitizer_report(text)
        check(report is None, "%s: sanitizer report:\n%s" % (what, report))

    def reconcile(self, *extra):
        cp = subprocess.run([self.scope.asan_bin("tally-reporter"), "reconcile", "--stripe-mode",
                             self.mode] + list(extra), env=self._env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60)
        self.check_log(cp.stderr.decode("utf-8", "replace"), "reconcile")
        return cp.returncode, cp.stdout.decode("utf-8", "replace")

    def command(self, *argv):
        cp = subprocess.run([self.scope.asan_bin("tally-reporter")] + list(argv),
                            env=self._env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            timeout=60)
        self.check_log(cp.stderr.decode("utf-8", "replace"), argv[0])
        return cp.returncode, cp.stdout.decode("utf-8", "replace"), cp.stderr.decode(
            "utf-8", "replace")
