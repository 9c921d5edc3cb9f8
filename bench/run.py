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

    python3 bench/run.py --bin build/bin [--events N] [--only collector] [--keep]

Python 3 standard library only.
"""

import argparse
import datetime
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
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


# Benchmarks in run order: name -> function(ctx, opts) -> Figures. Add the
# API and reporter benchmarks here; each gets its own fresh stack.
BENCHMARKS = {
    "collector": bench_collector,
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
    for name in ("tally-collector", "tally-loadgen", "tally-devbroker"):
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
