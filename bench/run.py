#!/usr/bin/env python3
"""Tally benchmarks (`make bench`).

Each benchmark is a function registered in BENCHMARKS; it gets a Context
(a throwaway stack: PostgreSQL 15 with fsync on, the dev broker, a temporary
directory) and returns Figures. The runner prints a human report, then one
line per figure, as CONTRACT.md section 1 pins:

    BENCH <name> <value> <unit>

Exit status: 0 when every selected benchmark ran and its correctness checks
passed (performance targets are reported, not asserted), 1 otherwise, 2 for
bad arguments.

    python3 bench/run.py --bin build/bin [--events N] [--only collector,api,reporter] [--keep]

Benchmarks: collector (dev broker -> committed rollups, against PostgreSQL's
COPY), api (GET /v1/authorize against nginx's limit_req, and
GET /v1/keys/{id}/quota, under wrk; bench/api.lua, bench/nginx-yardstick.conf)
and reporter (one `tally-reporter --once` cycle: 10,000 customers x 24 hours
of usage to the Stripe stand-in, tests/stripe/standin.py, at 1,000 calls/s).

BENCH_API_ARGS (environment) adds flags to the measured tally-api, e.g.
BENCH_API_ARGS="--threads 4" to compare thread counts.

Python 3 standard library only.
"""

import argparse
import collections
import concurrent.futures
import datetime
import http.client
import json
import os
import re
import resource
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOPIC = "usage-events"


class BenchError(Exception):
    """The run itself failed or a correctness check did not hold."""


def log(msg):
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# --- figures -------------------------------------------------------------


class Figures:
    """BENCH lines, report lines and target verdicts of one benchmark."""

    def __init__(self, title):
        self.title = title
        self.bench = []    # (name, formatted value, unit)
        self.report = []   # free text lines
        self.targets = []  # (description, met)

    def add(self, name, value, unit):
        self.bench.append((name, value, unit))

    def note(self, line):
        self.report.append(line)

    def target(self, description, met):
        self.targets.append((description, met))


# --- the throwaway stack ---------------------------------------------------


def clean_env(extra=None):
    """The environment without any TALLY_* variable (Tally programs refuse
    ones they do not know), plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TALLY_")}
    env.update(extra or {})
    return env


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def find_psql():
    found = shutil.which("psql")
    if found:
        return found
    for candidate in ("/usr/lib/postgresql/15/bin/psql",):
        if os.access(candidate, os.X_OK):
            return candidate
    raise BenchError("psql not found (install postgresql-client)")


class Context:
    """A temporary directory holding a stack started by tools/stack.sh."""

    def __init__(self, bin_dir, keep, partitions):
        self.bin_dir = bin_dir
        self.keep = keep
        self.partitions = partitions
        self.dir = tempfile.mkdtemp(prefix="tally-bench-")
        self.stack_started = False
        self.procs = []  # (name, Popen) of long-running processes we started
        self.psql_bin = find_psql()
        self.database_url = None
        self.brokers = None

    # stack

    def _stack(self, command):
        env = clean_env({"TALLY_BIN_DIR": self.bin_dir,
                         "TALLY_DEVBROKER_PARTITIONS": str(self.partitions)})
        return subprocess.run([os.path.join(REPO, "tools", "stack.sh"), command, self.dir],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True)

    def up(self):
        log(f"starting PostgreSQL (fsync on) and the dev broker ({self.partitions} partitions) "
            f"in {self.dir}")
        self.stack_started = True
        r = self._stack("up")
        if r.returncode != 0:
            raise BenchError(f"tools/stack.sh up failed:\n{r.stdout}")
        settings = self.read_env()
        self.database_url = settings["TALLY_DATABASE_URL"]
        self.brokers = settings["TALLY_KAFKA_BROKERS"]
        fsync = self.psql("SHOW fsync").strip()
        if fsync != "on":
            raise BenchError(f"PostgreSQL runs with fsync={fsync}; benchmarks need it on")
        r = subprocess.run([os.path.join(REPO, "tools", "migrate.sh")],
                           env=clean_env({"TALLY_DATABASE_URL": self.database_url}),
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if r.returncode != 0:
            raise BenchError(f"tools/migrate.sh failed:\n{r.stdout}")

    def read_env(self):
        """DIR/env is a shell file; let a shell evaluate it."""
        out = subprocess.run(
            ["bash", "-c", '. "$1" && printf "%s\\0%s\\0" "$TALLY_DATABASE_URL" '
             '"$TALLY_KAFKA_BROKERS"', "bash", os.path.join(self.dir, "env")],
            env=clean_env(), stdout=subprocess.PIPE, check=True, text=True).stdout
        url, brokers = out.split("\0")[:2]
        return {"TALLY_DATABASE_URL": url, "TALLY_KAFKA_BROKERS": brokers}

    def teardown(self):
        for name, proc in reversed(self.procs):
            stop_process(name, proc)
        self.procs.clear()
        if self.stack_started:
            r = self._stack("down")
            if r.returncode != 0:
                log(f"warning: tools/stack.sh down failed:\n{r.stdout}")
            self.stack_started = False
        if self.keep:
            log(f"--keep: state, logs and data files stay in {self.dir}")
        else:
            shutil.rmtree(self.dir, ignore_errors=True)

    # helpers

    def path(self, *parts):
        return os.path.join(self.dir, *parts)

    def bin(self, name):
        return os.path.join(self.bin_dir, name)

    def psql(self, sql=None, args=(), stdin=None):
        """Runs psql (ON_ERROR_STOP, tuples only, unaligned); returns stdout."""
        cmd = [self.psql_bin, self.database_url, "-X", "-q", "-t", "-A",
               "-v", "ON_ERROR_STOP=1"] + list(args)
        if sql is not None:
            cmd += ["-c", sql]
        r = subprocess.run(cmd, input=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True, env=clean_env())
        if r.returncode != 0:
            raise BenchError(f"psql failed ({sql or args}): {r.stderr.strip()}")
        return r.stdout

    def spawn(self, name, cmd, env, log_path):
        logf = open(log_path, "ab")
        proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=logf,
                                stderr=subprocess.STDOUT, start_new_session=True)
        logf.close()
        self.procs.append((name, proc))
        return proc

    def forget(self, proc):
        self.procs = [(n, p) for n, p in self.procs if p is not proc]


def stop_process(name, proc, timeout=15):
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        log(f"{name} (pid {proc.pid}) ignored SIGTERM for {timeout}s; killing it")
        proc.kill()
        proc.wait()


def tail(path, lines=25):
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-lines:])
    except OSError:
        return "(no log)"


# --- /metrics and /proc ----------------------------------------------------

METRIC_LINE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)")


def scrape(port):
    """{name: value} from Prometheus text, labelled series summed by name."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
        text = r.read().decode()
    values = {}
    for line in text.splitlines():
        m = METRIC_LINE.match(line)
        if m:
            values[m.group(1)] = values.get(m.group(1), 0.0) + float(m.group(3))
    return values


def proc_status_kb(pid):
    """(VmRSS, VmHWM) in kB, or None when the process is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            fields = dict(line.split(":", 1) for line in f if ":" in line)
        return int(fields["VmRSS"].split()[0]), int(fields["VmHWM"].split()[0])
    except (OSError, KeyError, ValueError):
        return None


def proc_cpu_seconds(pid):
    """User + system CPU seconds of a process so far (0 when unknown)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def background_cpu(seconds=1.0):
    """Fraction of all CPUs busy over `seconds` while the benchmark itself
    idles: what other programs on the machine are using."""
    def sample():
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        idle = v[3] + (v[4] if len(v) > 4 else 0)
        return sum(v[:8]), idle
    try:
        t0, i0 = sample()
        time.sleep(seconds)
        t1, i1 = sample()
    except (OSError, ValueError):
        return 0.0
    return 1.0 - (i1 - i0) / max(1, t1 - t0)


def postgres_cpu_by_pid(ctx):
    """{pid: CPU seconds} of the stack's postmaster and its live children."""
    try:
        with open(ctx.path("pg", "data", "postmaster.pid")) as f:
            postmaster = int(f.readline())
    except (OSError, ValueError):
        return {}
    cpu = {postmaster: proc_cpu_seconds(postmaster)}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            if ppid == postmaster:
                cpu[int(entry)] = proc_cpu_seconds(int(entry))
    return cpu


def postgres_cpu_seconds(ctx):
    """CPU seconds used so far by the stack's PostgreSQL: the postmaster and
    its live children (exited backends are not counted)."""
    return sum(postgres_cpu_by_pid(ctx).values())


def broker_pid(ctx):
    try:
        with open(ctx.path("devbroker.pid")) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return -1


LOG_STAMP = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?Z)")


def parse_rfc3339(stamp):
    return datetime.datetime.strptime(stamp.replace("Z", "+0000"),
                                      "%Y-%m-%dT%H:%M:%S.%f%z" if "." in stamp
                                      else "%Y-%m-%dT%H:%M:%S%z").timestamp()


def first_log_time(path, pattern):
    """Wall-clock time (epoch s) of the first log line matching pattern."""
    regex = re.compile(pattern)
    try:
        with open(path, errors="replace") as f:
            for line in f:
                if regex.search(line):
                    m = LOG_STAMP.match(line)
                    if m:
                        return parse_rfc3339(m.group(1))
    except OSError:
        pass
    return None


# --- collector benchmark -----------------------------------------------------

KEY_COUNT = 1000
DUP_RATIO = 0.1
SEED = 20261123
TARGET_EVENTS_PER_S = 100_000
TARGET_RATIO = 0.6
COPY_RUNS = 3          # the COPY baseline is the best of this many runs
TARGET_RSS_MB = 100.0


def key_ids():
    return [f"bench_key_{i:04d}" for i in range(KEY_COUNT)]


def seed_keys(ctx):
    ctx.psql(None, args=["-f", "-"], stdin=f"""
BEGIN;
INSERT INTO plans (id, name, quota_limit, quota_period, stripe_meter_event_name)
VALUES ('bench_plan', 'Benchmark plan', 100000000, 'MONTH', 'api_requests');
INSERT INTO api_keys (id, value_hash, name, customer_id, plan_id)
SELECT 'bench_key_' || lpad(i::text, 4, '0'),
       sha256(convert_to('bench-secret-' || i, 'UTF8')),
       'bench key ' || i, 'cust_' || i, 'bench_plan'
  FROM generate_series(0, {KEY_COUNT - 1}) AS i;
COMMIT;
""")
    n = int(ctx.psql("SELECT count(*) FROM api_keys").strip())
    if n != KEY_COUNT:
        raise BenchError(f"expected {KEY_COUNT} API keys, found {n}")


def publish(ctx, events):
    """Publishes ~events messages (10% duplicates); returns loadgen's summary."""
    unique = max(1, round(events * (1 - DUP_RATIO)))
    base = datetime.datetime.now(datetime.timezone.utc).replace(second=0, microsecond=0) \
        - datetime.timedelta(minutes=3)
    base_time = base.strftime("%Y-%m-%dT%H:%M:%SZ")
    summary_path = ctx.path("loadgen-summary.json")
    cmd = [ctx.bin("tally-loadgen"), "--brokers", ctx.brokers, "--topic", TOPIC,
           "--keys", ",".join(key_ids()), "--count", str(unique),
           "--dup-ratio", str(DUP_RATIO), "--uuid-ids", "--seed", str(SEED),
           "--base-time", base_time, "--summary", summary_path, "--log-level", "warn"]
    log(f"publishing {unique} unique events + ~{DUP_RATIO:.0%} duplicates "
        f"(seed {SEED}, base time {base_time}, {KEY_COUNT} keys, UUID ids)")
    t0 = time.monotonic()
    r = subprocess.run(cmd, env=clean_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       text=True)
    took = time.monotonic() - t0
    if r.returncode != 0:
        raise BenchError(f"tally-loadgen failed (exit {r.returncode}):\n{r.stdout}")
    with open(summary_path) as f:
        summary = json.load(f)
    if summary.get("failed", 0) != 0:
        raise BenchError(f"tally-loadgen reports {summary['failed']} failed deliveries")
    log(f"published {summary['sent']} messages ({summary['unique']} unique, "
        f"{summary['duplicates']} duplicates) in {took:.1f} s")
    return summary


def run_collector(ctx, summary, timeout_s):
    """Starts the collector on the already published topic and waits until
    it has consumed and committed every message. Returns measurements."""
    sent, unique = summary["sent"], summary["unique"]
    port = free_port()
    log_path = ctx.path("logs", "collector.log")
    env = clean_env({"TALLY_DATABASE_URL": ctx.database_url,
                     "TALLY_KAFKA_BROKERS": ctx.brokers})
    cmd = [ctx.bin("tally-collector"), "--metrics-addr", f"127.0.0.1:{port}",
           "--kafka-topic", TOPIC, "--session-timeout-ms", "6000"]
    ctx.psql("CHECKPOINT")  # start from a clean slate: no checkpoint debt
    log(f"starting tally-collector (metrics on 127.0.0.1:{port}, log {log_path})")
    pg_cpu0 = postgres_cpu_seconds(ctx)
    broker_cpu0 = proc_cpu_seconds(broker_pid(ctx))
    started = time.time()
    proc = ctx.spawn("tally-collector", cmd, env, log_path)

    peak_rss_kb = hwm_kb = 0
    first_seen = None        # wall time of the first poll showing consumption
    last_zero_poll = started  # wall time of the last poll before that
    last_progress = (0, time.monotonic())
    metrics = {}
    polls = 0
    deadline = time.monotonic() + timeout_s
    while True:
        if proc.poll() is not None:
            raise BenchError(f"tally-collector exited with status {proc.returncode}; "
                             f"last lines of its log:\n{tail(log_path)}")
        status = proc_status_kb(proc.pid)
        if status:
            peak_rss_kb = max(peak_rss_kb, status[0])
            hwm_kb = max(hwm_kb, status[1])
        now = time.time()
        try:
            metrics = scrape(port)
            polls += 1
        except OSError:  # not listening yet, or a slow answer: try again
            if time.monotonic() > deadline:
                raise BenchError(f"no /metrics from the collector within {timeout_s} s")
            time.sleep(0.1)
            continue
        consumed = int(metrics.get("tally_collector_events_consumed_total", 0))
        counted = int(metrics.get("tally_collector_events_counted_total", 0))
        if consumed == 0:
            last_zero_poll = now
        elif first_seen is None:
            first_seen = now
        if consumed >= sent and counted == unique:
            done_poll = now
            break
        if consumed > sent or counted > unique:
            raise BenchError(f"collector consumed {consumed} (sent {sent}), counted {counted} "
                             f"(unique {unique}): more than was published")
        if consumed != last_progress[0]:
            last_progress = (consumed, time.monotonic())
        elif time.monotonic() - last_progress[1] > 90:
            raise BenchError(f"no progress for 90 s: consumed {consumed} of {sent}, counted "
                             f"{counted} of {unique}; last lines of the collector log:\n"
                             f"{tail(log_path)}")
        if time.monotonic() > deadline:
            raise BenchError(f"timed out after {timeout_s} s: consumed {consumed} of {sent}")
        time.sleep(0.1)

    status = proc_status_kb(proc.pid)
    if status:
        peak_rss_kb = max(peak_rss_kb, status[0])
        hwm_kb = max(hwm_kb, status[1])
    cpu_s = proc_cpu_seconds(proc.pid)
    pg_cpu_s = postgres_cpu_seconds(ctx) - pg_cpu0
    broker_cpu_s = proc_cpu_seconds(broker_pid(ctx)) - broker_cpu0

    # Start: the collector logs "assigned N partition(s)" right before it
    # starts fetching, so its timestamp is when consumption begins (a few ms
    # early at most, which only lowers the figure). End: the commit time of
    # the batch that completed the count, from the collector's own gauge.
    # Both are the collector's wall clock. Fallbacks: the polls.
    start = first_log_time(log_path, r"assigned \d+ partition")
    start_how = "collector log 'assigned N partition(s)'"
    if start is None:
        start, start_how = last_zero_poll, "last /metrics poll before any commit"
    end = metrics.get("tally_collector_last_commit_timestamp_seconds")
    end_how = "tally_collector_last_commit_timestamp_seconds"
    if not end or end < start:
        end, end_how = done_poll, "first /metrics poll showing completion"
    elapsed = end - start

    result = {
        "consumed": int(metrics["tally_collector_events_consumed_total"]),
        "counted": int(metrics["tally_collector_events_counted_total"]),
        "duplicates": int(metrics.get("tally_collector_events_duplicate_total", 0)),
        "rejected": int(metrics.get("tally_collector_events_rejected_total", 0)),
        "batches": int(metrics.get("tally_collector_batches_total", 0)),
        "db_errors": int(metrics.get("tally_collector_db_errors_total", 0)),
        "elapsed": elapsed, "start_how": start_how, "end_how": end_how,
        "poll_elapsed": done_poll - (first_seen and last_zero_poll or started),
        "startup": start - started,
        "peak_rss_mb": max(hwm_kb, peak_rss_kb) / 1024.0,
        "polls": polls,
        "write_s": metrics.get("tally_collector_batch_commit_seconds_sum", 0.0), "cpu_s": cpu_s, "pg_cpu_s": pg_cpu_s, "broker_cpu_s": broker_cpu_s,
    }
    log("collector done; stopping it")
    stop_process("tally-collector", proc)
    ctx.forget(proc)
    if proc.returncode not in (0, None):
        log(f"warning: tally-collector exited with status {proc.returncode} on SIGTERM")
    return result


def verify_rollups(ctx, summary):
    """usage_hourly must hold exactly the summary's per key/hour totals."""
    rows = ctx.psql("SELECT key_id, to_char(hour AT TIME ZONE 'UTC', "
                    "'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"'), sum(requests), sum(units), sum(bytes) "
                    "FROM usage_hourly GROUP BY 1, 2")
    got = {}
    for line in rows.splitlines():
        if line:
            key, hour, req, units, nbytes = line.split("|")
            got[f"{key}|{hour}"] = {"requests": int(req), "units": int(units),
                                   "bytes": int(nbytes)}
    total = sum(v["requests"] for v in got.values())
    problems = []
    if total != summary["unique"]:
        problems.append(f"sum(requests) in usage_hourly is {total}, expected {summary['unique']}")
    want = summary.get("hours")
    if want is not None:
        wrong = [k for k in set(want) | set(got) if want.get(k) != got.get(k)]
        if wrong:
            k = sorted(wrong)[0]
            problems.append(f"{len(wrong)} (key, hour) rollups differ from loadgen's summary, "
                            f"e.g. {k}: got {got.get(k)}, expected {want.get(k)}")
    return total, problems


def dump_topic_tsv(ctx, sent):
    """Reads every message back with kcat, drops duplicate (source, id) pairs
    and writes the COPY file. Returns (path, rows)."""
    jsonl = ctx.path("events.jsonl")
    tsv = ctx.path("events.tsv")
    kcat = shutil.which("kcat") or shutil.which("kafkacat")
    if not kcat:
        raise BenchError("kcat not found (apt-get install kcat)")
    log("dumping the topic with kcat")
    with open(jsonl, "wb") as out:
        r = subprocess.run([kcat, "-C", "-b", ctx.brokers, "-t", TOPIC, "-o", "beginning",
                            "-e", "-q", "-f", "%s\\n"], stdout=out, stderr=subprocess.PIPE)
    if r.returncode != 0:
        raise BenchError(f"kcat failed: {r.stderr.decode(errors='replace')}")
    seen = set()
    messages = rows = 0

    def clean(value):
        return str(value).replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n") \
            .replace("\r", "\\r")

    with open(jsonl, encoding="utf-8") as f, open(tsv, "w", encoding="utf-8") as out:
        for line in f:
            if not line.strip():
                continue
            messages += 1
            ev = json.loads(line)
            pair = (ev["source"], ev["id"])
            if pair in seen:
                continue
            seen.add(pair)
            data = ev.get("data") or {}
            out.write("\t".join(clean(v) for v in (
                ev["source"], ev["id"], ev["subject"], ev["time"], data.get("method", ""),
                data.get("endpoint", ""), data.get("units", 1), data.get("bytes", 0))) + "\n")
            rows += 1
    os.unlink(jsonl)
    if messages != sent:
        raise BenchError(f"kcat read {messages} messages back, loadgen sent {sent} (the dev "
                         f"broker keeps ~5 MB per partition: raise --partitions)")
    return tsv, rows


def run_copy(ctx, tsv, rows):
    """Times psql's \\copy of the file into a fresh table; returns seconds."""
    ctx.psql("DROP TABLE IF EXISTS bare")
    ctx.psql("CREATE TABLE bare (source text, id text, subject text, time timestamptz, "
             "method text, endpoint text, units bigint, bytes bigint, "
             "PRIMARY KEY (source, id))")
    ctx.psql("CHECKPOINT")
    quoted = tsv.replace("'", "''")
    log(f"COPY baseline: \\copy {rows} rows into bare")
    t0 = time.monotonic()
    out = subprocess.run([ctx.psql_bin, ctx.database_url, "-X", "-v", "ON_ERROR_STOP=1",
                          "-c", "\\timing on", "-c", f"\\copy bare FROM '{quoted}'"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env=clean_env())
    wall = time.monotonic() - t0
    if out.returncode != 0:
        raise BenchError(f"\\copy failed: {out.stderr.strip()}")
    m = re.search(r"COPY (\d+)", out.stdout)
    if not m or int(m.group(1)) != rows:
        raise BenchError(f"\\copy loaded {m and m.group(1)} rows, expected {rows}: {out.stdout}")
    t = re.search(r"Time: ([\d.]+) ms", out.stdout)
    seconds = float(t.group(1)) / 1000 if t else wall
    n = int(ctx.psql("SELECT count(*) FROM bare").strip())
    if n != rows:
        raise BenchError(f"bare holds {n} rows after \\copy, expected {rows}")
    ctx.psql("DROP TABLE bare")
    return seconds, wall


def bench_collector(ctx, opts):
    fig = Figures("collector: dev broker -> committed rollups")
    seed_keys(ctx)
    summary = publish(ctx, opts.events)
    sent, unique = summary["sent"], summary["unique"]

    # The COPY file is made before the collector runs: the measurements then
    # follow each other closely, and a broker that dropped messages fails
    # the run before anything is measured.
    tsv, rows = dump_topic_tsv(ctx, sent)
    load_collector = background_cpu()
    res = run_collector(ctx, summary, opts.timeout)
    rate = res["consumed"] / res["elapsed"]

    problems = []
    if res["consumed"] != sent:
        problems.append(f"consumed {res['consumed']}, sent {sent}")
    if res["counted"] != unique:
        problems.append(f"counted {res['counted']}, unique {unique}")
    if res["duplicates"] != sent - unique:
        problems.append(f"duplicates {res['duplicates']}, expected {sent - unique}")
    if res["rejected"] != 0:
        problems.append(f"{res['rejected']} events rejected to the DLQ")
    total, rollup_problems = verify_rollups(ctx, summary)
    problems += rollup_problems

    if rows != unique:
        problems.append(f"the topic holds {rows} distinct (source, id), loadgen says {unique}")
    load_copy = background_cpu()
    # COPY's rate varies run to run on this machine (checkpoints, page cache):
    # the best of three is the database's limit, the stricter yardstick.
    copies = [run_copy(ctx, tsv, rows) for _ in range(COPY_RUNS)]
    copy_s, copy_wall = min(copies)
    os.unlink(tsv)
    copy_rate = rows / copy_s
    ratio = rate / copy_rate

    fig.note(f"messages        {sent} ({unique} unique, {sent - unique} duplicates), "
             f"{KEY_COUNT} keys, {ctx.partitions} partitions, UUID ids")
    fig.note(f"collector       {res['consumed']} messages in {res['elapsed']:.2f} s "
             f"= {rate:,.0f} events/s ({res['batches']} batches, {res['db_errors']} db errors)")
    fig.note(f"  clock         start: {res['start_how']}; end: {res['end_how']}")
    fig.note(f"  cross-check   by /metrics polls alone: {res['poll_elapsed']:.2f} s; "
             f"group join etc. before the first fetch: {res['startup']:.2f} s (not counted)")
    fig.note(f"  batch writes  {res['write_s']:.2f} s in total "
             f"(tally_collector_batch_commit_seconds_sum), {res['write_s'] / res['elapsed']:.0%} "
             f"of the measured time")
    fig.note(f"  peak RSS      {res['peak_rss_mb']:.1f} MB (VmHWM)")
    fig.note(f"  CPU           collector {res['cpu_s']:.2f} s, PostgreSQL {res['pg_cpu_s']:.2f} s, "
             f"dev broker {res['broker_cpu_s']:.2f} s "
             f"(including the 3 s of startup; {res['elapsed']:.2f} s measured)")
    fig.note(f"  correctness   counted {res['counted']} == unique {unique}, "
             f"sum(usage_hourly.requests) {total}: "
             + ("OK" if not problems else "FAILED"))
    fig.note(f"COPY baseline   {rows} rows in {copy_s:.2f} s (psql \\timing; {copy_wall:.2f} s "
             f"around psql) = {copy_rate:,.0f} rows/s, the best of "
             + ", ".join(f"{c[0]:.2f}" for c in copies) + " s")
    fig.note(f"ratio           collector / COPY = {ratio:.2f}")
    fig.note(f"other load      {load_collector:.0%} of the machine's CPU busy just before the "
             f"collector, {load_copy:.0%} before COPY ({os.cpu_count()} CPUs; the benchmark idle)")
    if max(load_collector, load_copy) > 0.2:
        fig.note("WARNING         other programs kept the machine busy: figures are noisy")

    fig.add("collector_events_per_s", f"{rate:.0f}", "events/s")
    fig.add("copy_events_per_s", f"{copy_rate:.0f}", "events/s")
    fig.add("collector_copy_ratio", f"{ratio:.2f}", "ratio")
    fig.add("collector_peak_rss_mb", f"{res['peak_rss_mb']:.1f}", "MB")
    fig.target(f"collector >= {TARGET_EVENTS_PER_S:,} events/s", rate >= TARGET_EVENTS_PER_S)
    fig.target(f"collector/COPY ratio >= {TARGET_RATIO}", ratio >= TARGET_RATIO)
    fig.target(f"collector peak RSS < {TARGET_RSS_MB:.0f} MB", res["peak_rss_mb"] < TARGET_RSS_MB)
    if problems:
        fig.problems = problems
    return fig


# --- API benchmark ------------------------------------------------------------
#
# tally-api's GET /v1/authorize (the allow path: a plan with a huge quota and
# throttle, so every answer is 204) and GET /v1/keys/{id}/quota under wrk,
# keep-alive, 64 connections, 10,000 keys; the yardstick is nginx-light's own
# limit_req answering 204 (one worker) under the same wrk command and script.

API_KEY_COUNT = 10_000
API_CREATE_WORKERS = 32       # parallel admin clients creating the keys
# The keys are created through a setup instance of tally-api with a larger
# database pool (each creation is a commit, fsync on: parallel commits group);
# the measured instance is a fresh one with the default settings.
API_SETUP_ARGS = ["--db-pool-size", "16", "--threads", "16"]
WRK_THREADS = 2
WRK_CONNECTIONS = 64
WRK_SECONDS = 10
WRK_WARMUP_SECONDS = 2
API_PLAN_QUOTA = 1_000_000_000_000   # never reached: the benchmark measures the allow path
API_PLAN_RATE = 1_000_000_000.0      # req/s per key, never reached either
API_PLAN_BURST = 2_000_000_000
TARGET_AUTHORIZE_RPS = 30_000
TARGET_NGINX_RATIO = 0.5
TARGET_P99_NGINX_RATIO = 1.5
TARGET_QUOTA_RPS = 15_000
TARGET_API_RSS_MB = 100.0
WRK_SCRIPT = os.path.join(REPO, "bench", "api.lua")
NGINX_TEMPLATE = os.path.join(REPO, "bench", "nginx-yardstick.conf")


def find_tool(name, *fallbacks):
    found = shutil.which(name)
    if found:
        return found
    for candidate in fallbacks:
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def scrape_labelled(port, name):
    """{labels: value} of one metric family from /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    values = {}
    for line in text.splitlines():
        m = METRIC_LINE.match(line)
        if m and m.group(1) == name:
            labels = m.group(2) or ""
            values[labels] = values.get(labels, 0.0) + float(m.group(3))
    return values


def delta(after, before):
    return {k: v - before.get(k, 0.0) for k, v in after.items() if v - before.get(k, 0.0)}


def http_status(port, path, headers=None, timeout=2):
    """(status, body) of a GET; (None, error text) when nothing answers."""
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except OSError as e:
        return None, str(e)


class AdminClient:
    """One keep-alive connection to the admin API."""

    def __init__(self, port, token):
        self.port, self.token = port, token
        self.conn = None

    def call(self, method, path, body=None):
        payload = json.dumps(body).encode() if body is not None else None
        headers = {"Authorization": f"Bearer {self.token}"}
        if payload is not None:
            headers["Content-Type"] = "application/json"
        for attempt in (1, 2):  # one retry on a connection the server closed
            if self.conn is None:
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
            try:
                self.conn.request(method, path, body=payload, headers=headers)
                resp = self.conn.getresponse()
                data = resp.read()
                break
            except (http.client.HTTPException, ConnectionError):
                self.conn.close()
                self.conn = None
                if attempt == 2:
                    raise
        try:
            doc = json.loads(data) if data else None
        except ValueError:
            doc = None
        return resp.status, doc, data

    def close(self):
        if self.conn is not None:
            self.conn.close()


def start_api(ctx, token, log_name, args=()):
    port = free_port()
    log_path = ctx.path("logs", log_name)
    env = clean_env({"TALLY_DATABASE_URL": ctx.database_url, "TALLY_ADMIN_TOKEN": token,
                     "TALLY_HTTP_ADDR": f"127.0.0.1:{port}"})
    log(f"starting tally-api on 127.0.0.1:{port} "
        f"({' '.join(args) or 'default settings'}; log {log_path})")
    proc = ctx.spawn("tally-api", [ctx.bin("tally-api")] + list(args), env, log_path)
    deadline = time.monotonic() + 20
    while True:
        if proc.poll() is not None:
            raise BenchError(f"tally-api exited with status {proc.returncode}; last lines of "
                             f"its log:\n{tail(log_path)}")
        status, _ = http_status(port, "/readyz")
        if status == 200:
            return proc, port, log_path
        if time.monotonic() > deadline:
            raise BenchError(f"tally-api not ready within 20 s (last /readyz: {status}); "
                             f"log:\n{tail(log_path)}")
        time.sleep(0.1)


def create_plan_and_keys(port, token):
    """Creates the plan and API_KEY_COUNT keys attached to it (planId at
    creation), API_CREATE_WORKERS at a time. Returns (plan id, [(key id,
    secret)], seconds)."""
    admin = AdminClient(port, token)
    status, doc, raw = admin.call("POST", "/v1/plans", {
        "name": "bench allow path",
        "description": "quota and throttle far above what the benchmark sends",
        "quota": {"limit": API_PLAN_QUOTA, "period": "MONTH"},
        "throttle": {"rateLimit": API_PLAN_RATE, "burstLimit": API_PLAN_BURST},
    })
    admin.close()
    if status != 201 or not doc or "id" not in doc:
        raise BenchError(f"POST /v1/plans answered {status}: {raw[:300]!r}")
    plan_id = doc["id"]

    local = threading.local()
    clients = []
    lock = threading.Lock()

    def create(i):
        client = getattr(local, "client", None)
        if client is None:
            client = local.client = AdminClient(port, token)
            with lock:
                clients.append(client)
        secret = f"bench-{i:05d}-{secrets.token_hex(16)}"
        status, doc, raw = client.call("POST", "/v1/keys", {
            "name": f"bench key {i}", "customerId": f"cust_bench_{i}",
            "value": secret, "planId": plan_id})
        if status != 201 or not doc:
            raise BenchError(f"POST /v1/keys answered {status}: {raw[:300]!r}")
        if doc.get("value") != secret or doc.get("planId") != plan_id or not doc.get("id"):
            raise BenchError(f"POST /v1/keys returned an unexpected key: {raw[:300]!r}")
        return doc["id"], secret

    log(f"creating {API_KEY_COUNT} keys through POST /v1/keys ({API_CREATE_WORKERS} clients, "
        f"planId {plan_id})")
    t0 = time.monotonic()
    try:
        with concurrent.futures.ThreadPoolExecutor(API_CREATE_WORKERS) as pool:
            keys = list(pool.map(create, range(API_KEY_COUNT)))
    finally:
        for client in clients:
            client.close()
    took = time.monotonic() - t0
    if len({k for k, _ in keys}) != API_KEY_COUNT:
        raise BenchError("POST /v1/keys returned duplicate key ids")
    log(f"created {API_KEY_COUNT} keys in {took:.1f} s ({API_KEY_COUNT / took:,.0f}/s)")
    return plan_id, keys, took


def wait_for_key_cache(port, keys, timeout_s=30):
    """Waits until the authorize cache holds every key, then checks that a
    sample of them (and the last one created) is allowed with 204."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            cached = scrape(port).get("tally_api_key_cache_keys", 0)
        except OSError:
            cached = 0
        if cached >= len(keys):
            break
        if time.monotonic() > deadline:
            raise BenchError(f"the authorize cache holds {cached:.0f} keys {timeout_s} s after "
                             f"creating {len(keys)}")
        time.sleep(0.2)
    sample = keys[::max(1, len(keys) // 200)] + [keys[-1]]
    for key_id, secret in sample:
        status, body = http_status(port, "/v1/authorize", {
            "x-api-key": secret, "X-Original-Method": "GET", "X-Original-URI": "/v1/widgets/1"})
        if status != 204:
            raise BenchError(f"authorize of key {key_id} answered {status} before the run "
                             f"(expected 204): {body[:200]!r}")


def start_nginx(ctx):
    nginx = find_tool("nginx", "/usr/sbin/nginx")
    if not nginx:
        raise BenchError("nginx not found (apt-get install nginx-light)")
    ndir = ctx.path("nginx")
    os.makedirs(os.path.join(ndir, "empty"), exist_ok=True)
    port = free_port()
    with open(NGINX_TEMPLATE) as f:
        conf = f.read().replace("@DIR@", ndir).replace("@PORT@", str(port))
    conf_path = os.path.join(ndir, "nginx.conf")
    with open(conf_path, "w") as f:
        f.write(conf)
    log_path = os.path.join(ndir, "error.log")
    log(f"starting nginx (one worker, limit_req + 204) on 127.0.0.1:{port} (conf {conf_path})")
    proc = ctx.spawn("nginx", [nginx, "-p", ndir, "-c", conf_path, "-e", log_path],
                     clean_env(), ctx.path("logs", "nginx.log"))
    deadline = time.monotonic() + 10
    while True:
        if proc.poll() is not None:
            raise BenchError(f"nginx exited with status {proc.returncode}:\n"
                             f"{tail(ctx.path('logs', 'nginx.log'))}{tail(log_path)}")
        status, _ = http_status(port, "/v1/authorize", {"x-api-key": "probe"})
        if status == 204:
            break
        if time.monotonic() > deadline:
            raise BenchError(f"nginx not answering 204 within 10 s (last: {status}):\n"
                             f"{tail(log_path)}")
        time.sleep(0.1)
    # limit_req must really run in this setup: a 1 r/m zone refuses the second.
    first = http_status(port, "/probe", {"x-api-key": "probe"})[0]
    second = http_status(port, "/probe", {"x-api-key": "probe"})[0]
    if (first, second) != (204, 503):
        raise BenchError(f"nginx's limit_req probe answered {first}, {second}; expected 204, 503")
    return proc, port


def child_pids(pid):
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(p) for p in f.read().split()]
    except (OSError, ValueError):
        return []


WRK_UNIT = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}


def wrk_latency_ms(text):
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", text)
    if not m:
        raise BenchError(f"cannot read wrk latency {text!r}")
    return float(m.group(1)) * WRK_UNIT[m.group(2)]


def run_wrk(url, script_args, seconds, label, cpu_pids=()):
    """Runs wrk with bench/api.lua; returns its figures, and the CPU seconds
    the processes in cpu_pids used meanwhile."""
    wrk = find_tool("wrk")
    if not wrk:
        raise BenchError("wrk not found (apt-get install wrk)")
    cmd = [wrk, f"-t{WRK_THREADS}", f"-c{WRK_CONNECTIONS}", f"-d{seconds}s", "--latency",
           "-s", WRK_SCRIPT, url, "--"] + list(script_args)
    cpu0 = [proc_cpu_seconds(p) for p in cpu_pids]
    wall0 = time.monotonic()
    try:
        r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           timeout=seconds + 60, env=clean_env())
    except subprocess.TimeoutExpired:
        raise BenchError(f"wrk ({label}) did not finish within {seconds + 60} s")
    wall = time.monotonic() - wall0
    cpu = sum(proc_cpu_seconds(p) for p in cpu_pids) - sum(cpu0)
    out = r.stdout
    rps = re.search(r"^Requests/sec:\s+([\d.]+)", out, re.M)
    p99 = re.search(r"^\s+99%\s+(\S+)", out, re.M)
    total = re.search(r"^\s+(\d+) requests in ([\d.]+)(\w+)", out, re.M)
    if r.returncode != 0 or not rps or not p99 or not total:
        raise BenchError(f"wrk ({label}) failed (exit {r.returncode}):\n{out}")
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    pcts = dict(re.findall(r"^\s+(\d+)%\s+(\S+)", out, re.M))
    return {
        "rps": float(rps.group(1)),
        "p99_ms": wrk_latency_ms(p99.group(1)),
        "p50_ms": wrk_latency_ms(pcts["50"]) if "50" in pcts else float("nan"),
        "requests": int(total.group(1)),
        "socket_errors": dict(zip(("connect", "read", "write", "timeout"),
                                  map(int, sock.groups()))) if sock else {},
        "non2xx": int(non2xx.group(1)) if non2xx else 0,
        "cpu_cores": cpu / wall if wall > 0 else 0.0,
        "output": out,
    }


def wrk_problems(label, res):
    problems = []
    if res["non2xx"]:
        problems.append(f"{label}: wrk counted {res['non2xx']} non-2xx/3xx answers")
    errors = {k: v for k, v in res["socket_errors"].items() if v}
    if errors:
        problems.append(f"{label}: wrk socket errors {errors}")
    return problems


def bench_api(ctx, opts):
    fig = Figures("api: GET /v1/authorize (allow path) and GET /v1/keys/{id}/quota under wrk")
    started = time.monotonic()
    token = secrets.token_urlsafe(24)
    setup_api, setup_port, _ = start_api(ctx, token, "api-setup.log", API_SETUP_ARGS)
    plan_id, keys, create_s = create_plan_and_keys(setup_port, token)
    status = proc_status_kb(setup_api.pid)
    setup_rss_mb = (status[1] if status else 0) / 1024.0
    stop_process("tally-api (setup)", setup_api)
    ctx.forget(setup_api)

    api, port, api_log = start_api(ctx, token, "api.log",
                                   os.environ.get("BENCH_API_ARGS", "").split())
    t0 = time.monotonic()
    wait_for_key_cache(port, keys)
    cache_s = time.monotonic() - t0
    secrets_path = ctx.path("bench-key-secrets.txt")
    ids_path = ctx.path("bench-key-ids.txt")
    with open(secrets_path, "w") as f:
        f.write("".join(secret + "\n" for _, secret in keys))
    with open(ids_path, "w") as f:
        f.write("".join(key_id + "\n" for key_id, _ in keys))
    nginx, nginx_port = start_nginx(ctx)
    nginx_pids = [nginx.pid] + child_pids(nginx.pid)

    api_url = f"http://127.0.0.1:{port}/v1/authorize"
    nginx_url = f"http://127.0.0.1:{nginx_port}/v1/authorize"
    problems = []
    load = background_cpu()

    # authorize against tally-api
    log(f"warming up: wrk {WRK_WARMUP_SECONDS} s on tally-api and on nginx")
    run_wrk(api_url, ["authorize", secrets_path], WRK_WARMUP_SECONDS, "api warm-up")
    run_wrk(nginx_url, ["authorize", secrets_path], WRK_WARMUP_SECONDS, "nginx warm-up")
    outcomes0 = scrape_labelled(port, "tally_api_authorize_total")
    log(f"measuring GET /v1/authorize on tally-api: wrk -t{WRK_THREADS} -c{WRK_CONNECTIONS} "
        f"-d{WRK_SECONDS}s --latency, {API_KEY_COUNT} keys")
    authz = run_wrk(api_url, ["authorize", secrets_path], WRK_SECONDS, "api authorize",
                    [api.pid])
    outcomes = delta(scrape_labelled(port, "tally_api_authorize_total"), outcomes0)
    problems += wrk_problems("authorize", authz)
    allowed = sum(v for k, v in outcomes.items() if 'outcome="allowed"' in k)
    refused = {k: int(v) for k, v in outcomes.items() if 'outcome="allowed"' not in k}
    if refused:
        problems.append(f"authorize answered other than 204 during the run: {refused}")
    if allowed < authz["requests"]:
        problems.append(f"tally_api_authorize_total{{outcome=\"allowed\"}} rose by {allowed:.0f}, "
                        f"wrk completed {authz['requests']} requests")

    # the nginx yardstick
    log("measuring the nginx yardstick (limit_req + 204, one worker), same wrk command")
    ngx = run_wrk(nginx_url, ["authorize", secrets_path], WRK_SECONDS, "nginx", nginx_pids)
    problems += wrk_problems("nginx", ngx)

    # quota
    run_wrk(f"http://127.0.0.1:{port}/", ["quota", ids_path, token], WRK_WARMUP_SECONDS,
            "quota warm-up")
    log(f"measuring GET /v1/keys/{{id}}/quota on tally-api (admin token), {API_KEY_COUNT} keys")
    quota = run_wrk(f"http://127.0.0.1:{port}/", ["quota", ids_path, token], WRK_SECONDS,
                    "api quota", [api.pid])
    problems += wrk_problems("quota", quota)

    if api.poll() is not None:
        raise BenchError(f"tally-api exited with status {api.returncode} during the run; "
                         f"log:\n{tail(api_log)}")
    status = proc_status_kb(api.pid)
    run_rss_mb = (status[1] if status else 0) / 1024.0
    peak_rss_mb = max(run_rss_mb, setup_rss_mb)
    stop_process("tally-api", api)
    ctx.forget(api)
    if api.returncode not in (0, None):
        problems.append(f"tally-api exited with status {api.returncode} on SIGTERM")

    ratio = authz["rps"] / ngx["rps"]
    p99_ratio = authz["p99_ms"] / ngx["p99_ms"]
    fig.note(f"setup           {API_KEY_COUNT} keys created through POST /v1/keys with planId "
             f"in {create_s:.1f} s ({API_CREATE_WORKERS} clients, a setup tally-api with "
             f"{' '.join(API_SETUP_ARGS)}); the measured tally-api, default settings, started "
             f"afterwards, had them all in its authorize cache {cache_s:.1f} s after starting "
             f"to answer; plan quota "
             f"{API_PLAN_QUOTA:.0e}/month, throttle {API_PLAN_RATE:.0e} r/s burst "
             f"{API_PLAN_BURST:.0e}")
    fig.note("                the plan is meant to allow every authorize (204): this measures "
             "the allow path, not throttling or quota refusals")
    fig.note(f"load            wrk -t{WRK_THREADS} -c{WRK_CONNECTIONS} -d{WRK_SECONDS}s --latency "
             f"-s bench/api.lua (keep-alive, x-api-key rotating over {API_KEY_COUNT} keys), "
             f"after a {WRK_WARMUP_SECONDS} s warm-up; wrk shares the {os.cpu_count()} CPUs")
    for label, res, who in (("authorize api", authz, "tally-api"),
                            ("authorize nginx", ngx, "nginx"),
                            ("quota api", quota, "tally-api")):
        fig.note(f"{label:<15} {res['rps']:>9,.0f} req/s, p50 {res['p50_ms']:.2f} ms, "
                 f"p99 {res['p99_ms']:.2f} ms, {res['requests']} requests, "
                 f"{who} CPU {res['cpu_cores']:.2f} cores")
    fig.note("  outcomes      tally_api_authorize_total during the run: "
             + ", ".join(f"{k.strip('{}')} +{v:.0f}" for k, v in sorted(outcomes.items())))
    fig.note(f"ratios          api/nginx rate {ratio:.2f}, p99 api/nginx {p99_ratio:.2f}")
    fig.note(f"memory          tally-api peak RSS (VmHWM) {run_rss_mb:.1f} MB in the measured "
             f"run, {setup_rss_mb:.1f} MB in the setup instance; BENCH reports the larger")
    fig.note("yardstick       nginx-light 1 worker, limit_req zone on $http_x_api_key (1M r/s), "
             "204 from try_files (see bench/nginx-yardstick.conf)")
    fig.note(f"other load      {load:.0%} of the machine's CPU busy before the runs")
    if load > 0.2:
        fig.note("WARNING         other programs kept the machine busy: figures are noisy")
    fig.note("correctness     " + ("OK (every answer 2xx; authorize all 204)" if not problems
                                   else "FAILED"))
    fig.note(f"duration        {time.monotonic() - started:.0f} s (setup included, stack start "
             f"excluded)")

    fig.add("authorize_rps", f"{authz['rps']:.0f}", "req/s")
    fig.add("authorize_p99_ms", f"{authz['p99_ms']:.2f}", "ms")
    fig.add("authorize_nginx_ratio", f"{ratio:.2f}", "ratio")
    fig.add("authorize_p99_nginx_ratio", f"{p99_ratio:.2f}", "ratio")
    fig.add("quota_rps", f"{quota['rps']:.0f}", "req/s")
    fig.add("api_peak_rss_mb", f"{peak_rss_mb:.1f}", "MB")
    fig.target(f"authorize >= {TARGET_AUTHORIZE_RPS:,} req/s", authz["rps"] >= TARGET_AUTHORIZE_RPS)
    fig.target(f"authorize rate >= {TARGET_NGINX_RATIO} x nginx's", ratio >= TARGET_NGINX_RATIO)
    fig.target(f"authorize p99 <= {TARGET_P99_NGINX_RATIO} x nginx's",
               p99_ratio <= TARGET_P99_NGINX_RATIO)
    fig.target(f"quota >= {TARGET_QUOTA_RPS:,} req/s", quota["rps"] >= TARGET_QUOTA_RPS)
    fig.target(f"api peak RSS < {TARGET_API_RSS_MB:.0f} MB", peak_rss_mb < TARGET_API_RSS_MB)
    if problems:
        fig.problems = problems
    return fig


# --- reporter benchmark --------------------------------------------------------
#
# One `tally-reporter --once` cycle delivering a day of hourly usage for
# 10,000 customers (240,000 meter events) to the Stripe stand-in
# (tests/stripe/standin.py) at a 1,000 calls/s ceiling: how long the cycle
# takes, and how close the achieved call rate comes to the ceiling. The usage
# is inserted into usage_hourly with SQL (the collector is not involved);
# the stand-in's ledger must then hold exactly the inserted units.

REPORTER_KEYS = 10_000
REPORTER_HOURS = 24
REPORTER_RATE_LIMIT = 1000
REPORTER_CONCURRENCY = 16
REPORTER_METER = "api_calls"
REPORTER_SEED = 0.20261123    # setseed(): the same units every run
REPORTER_TIMEOUT_S = 1800
TARGET_REPORTER_RATIO = 0.9   # achieved calls/s over the ceiling
TARGET_REPORTER_RSS_MB = 100.0
REPORTER_MAX_IN_MEMORY = 20_000   # services/reporter/main.c MAX_IN_MEMORY
STANDIN = os.path.join(REPO, "tests", "stripe", "standin.py")


def seed_reporter_usage(ctx):
    """One plan with a meter, REPORTER_KEYS keys each with its own Stripe
    customer, and REPORTER_HOURS closed hours of usage per key (the hours
    ending at the last full hour). Returns ({customer: units}, total units)."""
    ctx.psql(None, args=["-f", "-"], stdin=f"""
BEGIN;
SELECT setseed({REPORTER_SEED});
INSERT INTO plans (id, name, quota_limit, quota_period, stripe_meter_event_name)
VALUES ('bench_plan', 'Reporter benchmark plan', 1000000000000, 'MONTH', '{REPORTER_METER}');
INSERT INTO api_keys (id, value_hash, name, customer_id, stripe_customer_id, plan_id)
SELECT 'rkey_' || lpad(i::text, 5, '0'),
       sha256(convert_to('reporter-bench-secret-' || i, 'UTF8')),
       'reporter bench key ' || i, 'cust_' || i, 'cus_bench' || lpad(i::text, 5, '0'),
       'bench_plan'
  FROM generate_series(0, {REPORTER_KEYS - 1}) AS i;
INSERT INTO usage_hourly (key_id, hour, plan_id, method, endpoint, requests, units, bytes)
SELECT k.id, date_trunc('hour', now()) - make_interval(hours => h), 'bench_plan', 'GET',
       '/items', u.units, u.units, u.units * 512
  FROM api_keys k
 CROSS JOIN generate_series(1, {REPORTER_HOURS}) AS h
 CROSS JOIN LATERAL (SELECT 1 + floor(random() * 1000)::bigint AS units
                      WHERE h IS NOT NULL) AS u;
COMMIT;
ANALYZE api_keys;
ANALYZE usage_hourly;
""")
    per_customer = {}
    for line in ctx.psql("SELECT k.stripe_customer_id, sum(u.units) FROM usage_hourly u "
                         "JOIN api_keys k ON k.id = u.key_id GROUP BY 1").splitlines():
        if line:
            customer, units = line.split("|")
            per_customer[customer] = int(units)
    rows = int(ctx.psql("SELECT count(*) FROM usage_hourly").strip())
    if len(per_customer) != REPORTER_KEYS or rows != REPORTER_KEYS * REPORTER_HOURS:
        raise BenchError(f"seeding: {len(per_customer)} customers and {rows} usage_hourly rows, "
                         f"expected {REPORTER_KEYS} and {REPORTER_KEYS * REPORTER_HOURS}")
    return per_customer, sum(per_customer.values())


def start_standin(ctx, api_key):
    """Starts the Stripe stand-in on a free loopback port; returns (proc, url)."""
    log_path = ctx.path("logs", "standin.log")
    os.makedirs(ctx.path("logs"), exist_ok=True)
    env = clean_env({"STRIPE_STANDIN_API_KEY": api_key})
    proc = ctx.spawn("stripe-standin", [sys.executable, STANDIN, "--port", "0", "--host",
                                        "127.0.0.1", "--customers", "*", "--meters",
                                        REPORTER_METER], env, log_path)
    deadline = time.monotonic() + 15
    while True:
        m = re.search(r"stripe-standin listening on (http://\S+)", tail(log_path, 5))
        if m:
            return proc, m.group(1)
        if proc.poll() is not None:
            raise BenchError(f"the Stripe stand-in exited with status {proc.returncode}:\n"
                             f"{tail(log_path)}")
        if time.monotonic() > deadline:
            raise BenchError(f"the Stripe stand-in did not start within 15 s:\n{tail(log_path)}")
        time.sleep(0.05)


def standin_get(url, route):
    with urllib.request.urlopen(f"{url}/_standin/{route}", timeout=30) as r:
        return json.loads(r.read())


def run_reporter_once(ctx, url, api_key, label):
    """Runs `tally-reporter --once` to completion. Returns its JSON summary,
    exit status, wall seconds, peak RSS (MB: the reporter's VmHWM, the larger
    of its own reading at the end of the cycle, the summary's peakRssKb, and
    /proc/<pid>/status polled every 0.2 s), its own CPU seconds and the CPU
    seconds of the stand-in and PostgreSQL meanwhile (PostgreSQL: sampled
    every 0.2 s per backend, so the reporter's backend's last moments may be
    missed).

    Not wait4's ru_maxrss: at exec, Linux keeps the high-water mark of the
    memory being replaced, and subprocess vforks, so that memory is this
    Python process's: ru_maxrss is at least this script's own peak so far
    (in `make bench`, the collector benchmark's set of a million (source, id)
    pairs in dump_topic_tsv: a few hundred MB). It is returned as
    wait4_maxrss_mb, for the report only."""
    log_path = ctx.path("logs", f"reporter-{label}.log")
    out_path = ctx.path(f"reporter-{label}.json")
    env = clean_env({"TALLY_DATABASE_URL": ctx.database_url, "TALLY_STRIPE_API_KEY": api_key})
    cmd = [ctx.bin("tally-reporter"), "--once", "--report-settle-s", "0",
           "--report-rate-limit", str(REPORTER_RATE_LIMIT),
           "--report-concurrency", str(REPORTER_CONCURRENCY),
           "--stripe-api-base", url, "--metrics-addr", "127.0.0.1:0"]
    standin_pid = next(p.pid for n, p in ctx.procs if n == "stripe-standin")
    standin_cpu0 = proc_cpu_seconds(standin_pid)
    machine0 = machine_cpu_ticks()
    pg_cpu0 = postgres_cpu_by_pid(ctx)
    pg_cpu_max = dict(pg_cpu0)
    log(f"running: {' '.join(cmd)}  (log {log_path})")
    with open(out_path, "wb") as out, open(log_path, "ab") as err:
        t0 = time.monotonic()
        proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                start_new_session=True)
    ctx.procs.append((f"tally-reporter ({label})", proc))
    deadline = t0 + REPORTER_TIMEOUT_S
    polled_hwm_kb = 0
    metrics_port = None
    in_flight = []      # tally_reporter_calls_in_flight samples while calls were made
    last_metrics, last_text = {}, ""
    # A probe: GET /_standin/health every 50 ms, to see the stand-in's own
    # pauses (Python's garbage collector, the GIL, the scheduler).
    probe_stop = threading.Event()
    probes = []

    def probe():
        while not probe_stop.is_set():
            t = time.monotonic()
            try:
                with urllib.request.urlopen(f"{url}/_standin/health", timeout=10) as r:
                    r.read()
                probes.append(time.monotonic() - t)
            except OSError:
                pass
            probe_stop.wait(0.05)

    prober = threading.Thread(target=probe, daemon=True)
    prober.start()
    try:
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid == proc.pid:
                wall = time.monotonic() - t0
                proc.returncode = os.waitstatus_to_exitcode(status)
                break
            mem = proc_status_kb(proc.pid)
            if mem:
                polled_hwm_kb = max(polled_hwm_kb, mem[1])
            for p, cpu in postgres_cpu_by_pid(ctx).items():
                pg_cpu_max[p] = max(pg_cpu_max.get(p, 0.0), cpu)
            if metrics_port is None:
                metrics_port = listening_port(proc.pid)
            if metrics_port:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics",
                                                timeout=2) as r:
                        text = r.read().decode()
                    m = {}
                    for line in text.splitlines():
                        mm = METRIC_LINE.match(line)
                        if mm:
                            m[mm.group(1)] = m.get(mm.group(1), 0.0) + float(mm.group(3))
                    if m.get("tally_reporter_calls_total", 0) > \
                            last_metrics.get("tally_reporter_calls_total", 0):
                        in_flight.append(m.get("tally_reporter_calls_in_flight", 0.0))
                    last_metrics, last_text = m, text
                except (OSError, ValueError):
                    pass
            if time.monotonic() > deadline:
                raise BenchError(f"tally-reporter --once ({label}) still running after "
                                 f"{REPORTER_TIMEOUT_S} s; log:\n{tail(log_path)}")
            time.sleep(0.2)
    finally:
        probe_stop.set()
        prober.join(15)
        if proc.returncode is None:
            stop_process("tally-reporter", proc)
        ctx.forget(proc)
    buckets = {}
    for le, n in re.findall(r'^tally_reporter_call_seconds_bucket\{le="([^"]+)"\}\s+(\S+)',
                            last_text, re.M):
        buckets[float("inf") if le == "+Inf" else float(le)] = float(n)
    machine1 = machine_cpu_ticks()
    for p, cpu in postgres_cpu_by_pid(ctx).items():
        pg_cpu_max[p] = max(pg_cpu_max.get(p, 0.0), cpu)
    pg_cpu = sum(cpu - pg_cpu0.get(p, 0.0) for p, cpu in pg_cpu_max.items())
    with open(out_path) as f:
        lines = [line for line in f.read().splitlines() if line.strip()]
    try:
        summary = json.loads(lines[-1])
    except (IndexError, ValueError):
        raise BenchError(f"tally-reporter --once ({label}) exited {proc.returncode} without a "
                         f"JSON summary on stdout; log:\n{tail(log_path)}")
    own_hwm_kb = summary.get("peakRssKb") or 0
    if not own_hwm_kb and not polled_hwm_kb:
        raise BenchError(f"tally-reporter --once ({label}): no VmHWM (no peakRssKb in its "
                         f"summary and /proc/{proc.pid}/status never read)")
    return {
        "summary": summary, "status": proc.returncode, "wall": wall,
        "peak_rss_mb": max(own_hwm_kb, polled_hwm_kb) / 1024.0,
        "own_hwm_mb": own_hwm_kb / 1024.0, "polled_hwm_mb": polled_hwm_kb / 1024.0,
        "wait4_maxrss_mb": usage.ru_maxrss / 1024.0,
        "bench_maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "standin_cpu_s": proc_cpu_seconds(standin_pid) - standin_cpu0,
        "pg_cpu_s": pg_cpu, "log": log_path,
        "machine_busy": 1.0 - (machine1[1] - machine0[1]) / max(1, machine1[0] - machine0[0]),
        "in_flight_mean": sum(in_flight) / len(in_flight) if in_flight else None,
        "in_flight_samples": len(in_flight),
        "call_s_sum": last_metrics.get("tally_reporter_call_seconds_sum"),
        "call_s_count": last_metrics.get("tally_reporter_call_seconds_count"),
        "buckets": buckets, "probes": probes,
    }


PG_DURATION = re.compile(r"duration: ([\d.]+) ms\s+(?:statement|parse|bind|execute)[^:]*: (.*)")
BURST_S = 0.05   # the reporter's token bucket holds 50 ms of calls


def statement_times(path, offset):
    """{kind: [seconds of each statement]} from PostgreSQL's duration log
    after `offset`; parse, bind and execute of one statement are added up."""
    kinds = {"load": "FROM stripe_reports WHERE status = 'pending' AND id >",
             "flush": "UPDATE stripe_reports s SET status",
             "plan": "WITH changed AS"}
    times = {k: [] for k in list(kinds) + ["other"]}
    last_kind, pending = None, 0.0
    try:
        with open(path, errors="replace") as f:
            f.seek(offset)
            for line in f:
                m = PG_DURATION.search(line)
                if not m:
                    continue
                kind = next((k for k, text in kinds.items() if text in m.group(2)), "other")
                ms = float(m.group(1))
                pending += ms / 1000
                if "execute" in line.split("ms", 1)[1][:12] or "statement:" in line:
                    times[kind].append(pending)
                    pending = 0.0
                last_kind = kind
    except OSError:
        pass
    if pending and last_kind:
        times[last_kind].append(pending)
    return times


def listening_port(pid):
    """The TCP port process `pid` listens on (its --metrics-addr 127.0.0.1:0),
    from ss; None when not (yet) known."""
    ss = shutil.which("ss")
    if not ss:
        return None
    out = subprocess.run([ss, "-Hltnp"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                         text=True).stdout
    for line in out.splitlines():
        if f"pid={pid}," in line:
            m = re.search(r"127\.0\.0\.1:(\d+)\s", line)
            if m:
                return int(m.group(1))
    return None


def machine_cpu_ticks():
    """(all ticks, idle ticks) of the whole machine from /proc/stat."""
    try:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return (0, 0)
    return sum(v[:8]), v[3] + (v[4] if len(v) > 4 else 0)


def per_second_counts(events):
    """Accepted meter events per whole second of the stand-in's clock (its
    `created`), the first and last (partial) seconds left out."""
    counts = collections.Counter(e["created"] for e in events if e.get("kind") == "meter_event")
    if len(counts) < 3:
        return []
    first, last = min(counts), max(counts)
    return [counts.get(t, 0) for t in range(first + 1, last)]


def bench_reporter(ctx, opts):
    fig = Figures(f"reporter: one --once cycle, {REPORTER_KEYS:,} customers x {REPORTER_HOURS} "
                  f"hours to the Stripe stand-in at {REPORTER_RATE_LIMIT:,} calls/s")
    started = time.monotonic()
    expected_calls = REPORTER_KEYS * REPORTER_HOURS
    log(f"seeding {REPORTER_KEYS} keys (one Stripe customer each) x {REPORTER_HOURS} hours "
        f"of usage")
    per_customer, total_units = seed_reporter_usage(ctx)
    api_key = "sk_test_bench_" + secrets.token_hex(16)
    standin, url = start_standin(ctx, api_key)
    log(f"Stripe stand-in at {url}")
    ctx.psql("CHECKPOINT")
    load = background_cpu()

    # Every statement's duration goes to PostgreSQL's log during the cycle:
    # the reporter is one thread, and no call starts while it waits for the
    # database, so this is where a shortfall from the ceiling would go.
    pg_log = ctx.path("logs", "postgres.log")
    ctx.psql("ALTER SYSTEM SET log_min_duration_statement = 0")
    ctx.psql("SELECT pg_reload_conf()")
    time.sleep(0.5)
    pg_log_offset = os.path.getsize(pg_log) if os.path.exists(pg_log) else 0
    res = run_reporter_once(ctx, url, api_key, "cycle")
    ctx.psql("ALTER SYSTEM RESET log_min_duration_statement")
    ctx.psql("SELECT pg_reload_conf()")
    db_time = statement_times(pg_log, pg_log_offset)
    s = res["summary"]
    ledger = standin_get(url, "ledger")
    stats = standin_get(url, "stats")
    per_s = sorted(per_second_counts(standin_get(url, "events")))
    standin_mem = proc_status_kb(standin.pid)
    # A second cycle must find nothing new: the outbox covers every bucket.
    again = run_reporter_once(ctx, url, api_key, "again")
    ledger_after = standin_get(url, "ledger")

    problems = []
    if res["status"] != 0:
        problems.append(f"tally-reporter --once exited {res['status']} (pending or parked "
                        f"reports left; log {res['log']}):\n{tail(res['log'], 10)}")
    for field, want in (("planned", expected_calls), ("plannedUnits", total_units),
                        ("accepted", expected_calls), ("unitsAccepted", total_units),
                        ("pendingLeft", 0), ("parkedTotal", 0), ("parked", 0), ("givenUp", 0)):
        if s.get(field) != want:
            problems.append(f"summary {field} = {s.get(field)}, expected {want}")
    got = {c: sum(m.values()) for c, m in ledger.get("meter_events", {}).items()}
    ledger_total = sum(got.values())
    if ledger_total != total_units:
        problems.append(f"the stand-in's ledger holds {ledger_total} units, "
                        f"{total_units} were inserted")
    wrong = [c for c in set(got) | set(per_customer) if got.get(c) != per_customer.get(c)]
    if wrong:
        c = sorted(wrong)[0]
        problems.append(f"{len(wrong)} customers' ledger totals differ from usage_hourly, e.g. "
                        f"{c}: ledger {got.get(c)}, usage {per_customer.get(c)}")
    if ledger.get("accepted") != expected_calls:
        problems.append(f"the stand-in accepted {ledger.get('accepted')} meter events, "
                        f"expected {expected_calls}")
    if stats.get("concurrency_violations"):
        problems.append(f"{stats['concurrency_violations']} concurrent calls for one customer "
                        f"and meter (the reporter must never do that)")
    accepted_rows = int(ctx.psql("SELECT count(*) FROM stripe_reports "
                                 "WHERE status = 'accepted'").strip())
    if accepted_rows != expected_calls:
        problems.append(f"stripe_reports holds {accepted_rows} accepted rows, expected "
                        f"{expected_calls}")
    a = again["summary"]
    if again["status"] != 0 or a.get("planned") != 0 or a.get("calls") != 0 \
            or ledger_after.get("meter_events") != ledger.get("meter_events"):
        problems.append(f"a second --once was not a no-op: exit {again['status']}, planned "
                        f"{a.get('planned')}, calls {a.get('calls')}")

    # The send phase: from the end of planning to the last answer (the
    # reporter's own sendSeconds).
    send_s = s.get("sendSeconds") or 0.0
    rps = s.get("calls", 0) / send_s if send_s > 0 else 0.0
    ratio = rps / REPORTER_RATE_LIMIT
    cycle_s = res["wall"]
    cpus = os.cpu_count()
    fig.note(f"setup           {REPORTER_KEYS:,} keys on one plan (meter '{REPORTER_METER}'), each "
             f"its own cus_...; {REPORTER_KEYS * REPORTER_HOURS:,} usage_hourly rows (the "
             f"{REPORTER_HOURS} hours before the current one, units 1..1000, "
             f"{total_units:,} in all), inserted with SQL")
    fig.note(f"command         tally-reporter --once --report-settle-s 0 --report-rate-limit "
             f"{REPORTER_RATE_LIMIT} --report-concurrency {REPORTER_CONCURRENCY} "
             f"--stripe-api-base {url}")
    fig.note(f"cycle           {cycle_s:.2f} s wall for the process (reporter's own: "
             f"{s.get('seconds', 0):.2f} s = plan {s.get('planSeconds', 0):.2f} s + send "
             f"{send_s:.2f} s)")
    fig.note(f"calls           {s.get('calls')} calls, {s.get('accepted')} accepted, "
             f"{s.get('duplicates')} duplicates, {s.get('retried')} retried, "
             f"{s.get('rateLimited')} rate-limited (429)")
    fig.note(f"rate            {rps:,.0f} calls/s over the send phase = {ratio:.2f} x the "
             f"{REPORTER_RATE_LIMIT:,}/s ceiling; stand-in's busiest "
             f"sliding 1-s window {stats.get('max_rps')} requests")
    if per_s:
        pct = lambda q: per_s[min(len(per_s) - 1, int(q * len(per_s)))]
        fig.note(f"  per second    accepted per whole second of the stand-in's clock over "
                 f"{len(per_s)} s: min {per_s[0]}, p10 {pct(0.1)}, median {pct(0.5)}, p90 "
                 f"{pct(0.9)}, max {per_s[-1]}; {sum(1 for c in per_s if c < 900)} s under 900, "
                 f"{sum(1 for c in per_s if c < 500)} s under 500")
    fig.note(f"  concurrency   stand-in saw at most {stats.get('max_concurrent_total')} requests "
             f"in flight ({REPORTER_CONCURRENCY} allowed), "
             f"{stats.get('concurrency_violations')} per-customer violations")
    busy = cycle_s * cpus
    fig.note(f"  CPU           reporter {res['cpu_s']:.1f} s, stand-in (Python) "
             f"{res['standin_cpu_s']:.1f} s, PostgreSQL {res['pg_cpu_s']:.1f} s, of "
             f"{busy:.0f} CPU-s available ({cpus} CPUs x {cycle_s:.1f} s): "
             f"{(res['cpu_s'] + res['standin_cpu_s'] + res['pg_cpu_s']) / busy:.0%} busy; "
             f"stand-in {res['standin_cpu_s'] / cycle_s:.2f} cores; the whole machine "
             f"{res['machine_busy']:.0%} busy during the cycle")
    if res["in_flight_mean"] is not None and res["call_s_count"]:
        latency_ms = res["call_s_sum"] / res["call_s_count"] * 1000
        fig.note(f"  in flight     {res['in_flight_mean']:.1f} calls on average "
                 f"({res['in_flight_samples']} samples of tally_reporter_calls_in_flight, "
                 f"{REPORTER_CONCURRENCY} allowed); mean call {latency_ms:.1f} ms "
                 f"(tally_reporter_call_seconds): at most {REPORTER_CONCURRENCY} / "
                 f"{latency_ms / 1000:.4f} s = "
                 f"{REPORTER_CONCURRENCY / (latency_ms / 1000):,.0f} calls/s with every slot busy")
    if any(db_time.values()):
        parts = []
        excess = 0.0
        for kind in ("plan", "load", "flush", "other"):
            t = db_time[kind]
            if t:
                parts.append(f"{kind} {len(t)} x {sum(t) / len(t) * 1000:.1f} ms = {sum(t):.2f} s"
                             f" (max {max(t) * 1000:.0f} ms)")
                if kind != "plan":
                    excess += sum(max(0.0, d - BURST_S) for d in t)
        fig.note("  database      statements of the cycle (PostgreSQL's duration log): "
                 + ", ".join(parts))
        lost = send_s - s.get("calls", 0) / REPORTER_RATE_LIMIT
        fig.note(f"  shortfall     {lost:.2f} s of the send phase above calls/ceiling; the "
                 f"reporter's waits on the database beyond the token bucket's "
                 f"{BURST_S * 1000:.0f} ms burst add up to {excess:.2f} s (load and flush "
                 f"block the single-threaded loop: no call starts meanwhile)")
    if res["buckets"]:
        total_calls = max(res["buckets"].values())
        slow = ", ".join(f"{total_calls - n:.0f} over {le * 1000:g} ms"
                         for le, n in sorted(res["buckets"].items())
                         if le in (0.01, 0.05, 0.1, 0.25, 0.5, 1.0))
        fig.note(f"  slow calls    of the last {total_calls:.0f} seen in /metrics: {slow}")
    if res["probes"]:
        p = sorted(res["probes"])
        stalls = [d for d in res["probes"] if d > BURST_S]
        fig.note(f"  stand-in      GET /_standin/health every 50 ms during the cycle: "
                 f"{len(p)} probes, median {p[len(p) // 2] * 1000:.1f} ms, max "
                 f"{p[-1] * 1000:.0f} ms; {len(stalls)} over {BURST_S * 1000:.0f} ms, "
                 f"adding up to {sum(stalls):.2f} s (pauses of the stand-in itself; it keeps "
                 f"every event, identifier and idempotency answer in memory, peak RSS "
                 f"{(standin_mem[1] if standin_mem else 0) / 1024:.0f} MB, so Python's full "
                 f"garbage collections grow with the run)")
    fig.note(f"  peak RSS      {res['peak_rss_mb']:.1f} MB: the reporter's VmHWM (its own reading "
             f"at the end of the cycle {res['own_hwm_mb']:.1f} MB, /proc/<pid>/status polled "
             f"every 0.2 s {res['polled_hwm_mb']:.1f} MB); at most "
             f"{REPORTER_MAX_IN_MEMORY:,} reports are held in memory. wait4's ru_maxrss said "
             f"{res['wait4_maxrss_mb']:.1f} MB: at exec Linux keeps the peak of the vforking "
             f"process, this script (its own peak: {res['bench_maxrss_mb']:.1f} MB)")
    fig.note(f"second --once   planned {a.get('planned')}, calls {a.get('calls')}, exit "
             f"{again['status']}, {again['wall']:.2f} s (nothing left to report)")
    fig.note(f"correctness     ledger {ledger_total:,} units == inserted {total_units:,}, per "
             f"customer too; accepted {s.get('accepted')} == {expected_calls}: "
             + ("OK" if not problems else "FAILED"))
    fig.note(f"other load      {load:.0%} of the machine's CPU busy before the run")
    if load > 0.2:
        fig.note("WARNING         other programs kept the machine busy: figures are noisy")
    fig.note(f"duration        {time.monotonic() - started:.0f} s (seeding included, stack "
             f"start excluded)")

    fig.add("reporter_cycle_s", f"{cycle_s:.2f}", "s")
    fig.add("reporter_rps", f"{rps:.0f}", "calls/s")
    fig.add("reporter_rate_ratio", f"{ratio:.2f}", "ratio")
    fig.add("reporter_peak_rss_mb", f"{res['peak_rss_mb']:.1f}", "MB")
    fig.target(f"reporter rate >= {TARGET_REPORTER_RATIO} x the {REPORTER_RATE_LIMIT:,}/s "
               f"ceiling", ratio >= TARGET_REPORTER_RATIO)
    fig.target(f"reporter peak RSS < {TARGET_REPORTER_RSS_MB:.0f} MB",
               res["peak_rss_mb"] < TARGET_REPORTER_RSS_MB)
    if problems:
        fig.problems = problems
    return fig


# Benchmarks in run order: name -> function(ctx, opts) -> Figures; each gets
# its own fresh stack.
BENCHMARKS = {
    "collector": bench_collector,
    "api": bench_api,
    "reporter": bench_reporter,
}

# Programs each benchmark needs in --bin.
REQUIRES = {
    "collector": ("tally-collector", "tally-loadgen", "tally-devbroker"),
    "api": ("tally-api", "tally-devbroker"),
    "reporter": ("tally-reporter", "tally-devbroker"),
}


# --- runner ---------------------------------------------------------------


def default_partitions(events):
    # The dev broker keeps ~5 MB per partition; a message is ~270 bytes.
    # Stay under half of that, and at 128 or more.
    needed = -(-events * 300 // 2_500_000)
    return max(128, needed)


def parse_args(argv):
    p = argparse.ArgumentParser(description="Tally benchmarks; prints BENCH <name> <value> "
                                "<unit> lines (CONTRACT.md section 1).")
    p.add_argument("--bin", default=os.path.join(REPO, "build", "bin"),
                   help="directory of the Tally binaries [build/bin]")
    p.add_argument("--events", type=int, default=1_000_000,
                   help="messages to publish for the collector benchmark [1000000]")
    p.add_argument("--only", default=",".join(BENCHMARKS),
                   help=f"comma-separated benchmarks to run [{','.join(BENCHMARKS)}]")
    p.add_argument("--partitions", type=int, default=None,
                   help="partitions of the events topic [max(128, enough for --events)]")
    p.add_argument("--timeout", type=int, default=420,
                   help="seconds the collector may take to catch up [420]")
    p.add_argument("--keep", action="store_true",
                   help="keep the temporary directory (stack state, logs) for debugging")
    opts = p.parse_args(argv)
    opts.only = [b.strip() for b in opts.only.split(",") if b.strip()]
    unknown = [b for b in opts.only if b not in BENCHMARKS]
    if unknown:
        p.error(f"unknown benchmark(s) {', '.join(unknown)}; known: {', '.join(BENCHMARKS)}")
    if opts.events < 1000:
        p.error("--events must be at least 1000")
    opts.bin = os.path.abspath(opts.bin)
    if opts.partitions is None:
        opts.partitions = default_partitions(opts.events)
    return opts


def on_sigterm(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv):
    opts = parse_args(argv)
    signal.signal(signal.SIGTERM, on_sigterm)
    needed = sorted({p for b in opts.only for p in REQUIRES.get(b, ())})
    for name in needed:
        if not os.access(os.path.join(opts.bin, name), os.X_OK):
            print(f"bench: {opts.bin}/{name} not found; run 'make' first", file=sys.stderr)
            return 1
    wall0 = time.monotonic()
    results, failures = [], []
    for name in opts.only:
        ctx = Context(opts.bin, opts.keep, opts.partitions)
        try:
            ctx.up()
            fig = BENCHMARKS[name](ctx, opts)
            results.append(fig)
            for problem in getattr(fig, "problems", []):
                failures.append(f"{name}: {problem}")
        except BenchError as e:
            failures.append(f"{name}: {e}")
        except KeyboardInterrupt:
            log("interrupted; tearing down")
            return 130
        finally:
            ctx.teardown()

    print()
    print(f"=== Tally benchmarks ({os.cpu_count()} CPUs, {time.monotonic() - wall0:.0f} s) ===")
    for fig in results:
        print(f"-- {fig.title}")
        for line in fig.report:
            print(f"   {line}")
        for description, met in fig.targets:
            print(f"   target {description}: {'met' if met else 'NOT met'}")
    for failure in failures:
        print(f"FAILED {failure}")
    print()
    for fig in results:
        for name, value, unit in fig.bench:
            print(f"BENCH {name} {value} {unit}")
    sys.stdout.flush()
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
