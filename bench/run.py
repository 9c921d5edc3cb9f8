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

    python3 bench/run.py --bin build/bin [--events N] [--only collector,api] [--keep]

Benchmarks: collector (dev broker -> committed rollups, against PostgreSQL's
COPY) and api (GET /v1/authorize against nginx's limit_req, and
GET /v1/keys/{id}/quota, under wrk; bench/api.lua, bench/nginx-yardstick.conf).

Python 3 standard library only.
"""

import argparse
import concurrent.futures
import datetime
import http.client
import json
import os
import re
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


def postgres_cpu_seconds(ctx):
    """CPU seconds used so far by the stack's PostgreSQL: the postmaster and
    its live children (exited backends are not counted)."""
    try:
        with open(ctx.path("pg", "data", "postmaster.pid")) as f:
            postmaster = int(f.readline())
    except (OSError, ValueError):
        return 0.0
    total = proc_cpu_seconds(postmaster)
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            if ppid == postmaster:
                total += proc_cpu_seconds(int(entry))
    return total


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

    api, port, api_log = start_api(ctx, token, "api.log")
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


# Benchmarks in run order: name -> function(ctx, opts) -> Figures. Add the
# API and reporter benchmarks here; each gets its own fresh stack.
BENCHMARKS = {
    "collector": bench_collector,
    "api": bench_api,
}

# Programs each benchmark needs in --bin.
REQUIRES = {
    "collector": ("tally-collector", "tally-loadgen", "tally-devbroker"),
    "api": ("tally-api", "tally-devbroker"),
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
