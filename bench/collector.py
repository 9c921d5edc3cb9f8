"""The collector benchmark (bench/run.py --only collector): ~1,000,000 usage
events (10% duplicates, 1,000 keys, UUID ids) published to the dev broker,
then timed from tally-collector's first fetch to the commit of the batch
that completes the count; the yardstick is PostgreSQL's COPY of the same
distinct events into a bare table. usage_hourly must then hold exactly
tally-loadgen's per key/hour totals.
"""

import datetime
import json
import os
import re
import shutil
import subprocess
import time

from common import (BenchError, Figures, background_cpu, clean_env, free_port, log,
                    postgres_cpu_seconds, proc_cpu_seconds, proc_status_kb, scrape,
                    stop_process, tail)

TOPIC = "usage-events"
KEY_COUNT = 1000
DUP_RATIO = 0.1
SEED = 20261123
TARGET_EVENTS_PER_S = 100_000
TARGET_RATIO = 0.8
RUNS = 3               # collector + COPY pairs; the figures are the median run
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


def run_collector(ctx, summary, timeout_s, group="tally-bench-0", wrap=()):
    """Starts the collector (under the `wrap` command, if any) on the
    already published topic as consumer `group` and waits until it has
    consumed and committed every message. Returns measurements."""
    sent, unique = summary["sent"], summary["unique"]
    port = free_port()
    log_path = ctx.path("logs", f"{group}.log")
    env = clean_env({"TALLY_DATABASE_URL": ctx.database_url,
                     "TALLY_KAFKA_BROKERS": ctx.brokers})
    cmd = [*wrap, ctx.bin("tally-collector"), "--metrics-addr", f"127.0.0.1:{port}",
           "--kafka-topic", TOPIC, "--kafka-group", group, "--session-timeout-ms", "6000"]
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
    stop_process("tally-collector", proc, timeout=300 if wrap else 15)
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


def reset_counts(ctx):
    """Empties what a collector run writes, so the next run counts every
    event again (it consumes the topic under a new group)."""
    ctx.psql("TRUNCATE event_ids, usage_hourly, usage_counters")


def check_run(ctx, res, summary):
    """The problems of one collector run: every message consumed, every
    distinct event counted once, rollups equal to loadgen's totals."""
    sent, unique = summary["sent"], summary["unique"]
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
    res["total"] = total
    return problems + rollup_problems


def median(values):
    ordered = sorted(values)
    return ordered[len(ordered) // 2]


def run_pair(ctx, opts, summary, tsv, rows, index):
    """One run: the collector from the topic's beginning (a new group), then
    COPY of the same distinct events. Returns the collector's measurements
    with the COPY figures and the ratio added."""
    if index > 0:
        reset_counts(ctx)
    res = run_collector(ctx, summary, opts.timeout, group=f"tally-bench-{index}")
    res["rate"] = res["consumed"] / res["elapsed"]
    res["problems"] = check_run(ctx, res, summary)
    res["load_copy"] = background_cpu()
    res["copy_s"], res["copy_wall"] = run_copy(ctx, tsv, rows)
    res["copy_rate"] = rows / res["copy_s"]
    res["ratio"] = res["rate"] / res["copy_rate"]
    log(f"run {index + 1} of {RUNS}: collector {res['rate']:,.0f} events/s, COPY "
        f"{res['copy_rate']:,.0f} rows/s, ratio {res['ratio']:.2f}")
    return res


def run(ctx, opts):
    fig = Figures("collector: dev broker -> committed rollups")
    seed_keys(ctx)
    summary = publish(ctx, opts.events)
    sent, unique = summary["sent"], summary["unique"]
    if getattr(opts, "collector_callgrind", None):
        return run_callgrind(ctx, opts, summary, fig)

    # The COPY file is made before the collector runs: the measurements then
    # follow each other closely, and a broker that dropped messages fails
    # the run before anything is measured.
    tsv, rows = dump_topic_tsv(ctx, sent)
    if rows != unique:
        fig.problems.append(f"the topic holds {rows} distinct (source, id), loadgen says {unique}")
    load_collector = background_cpu()
    # Both rates vary run to run on this shared machine (checkpoints, page
    # cache, other programs): each run pairs the collector with a COPY made
    # right after it, and the figures are the median run by ratio.
    runs = [run_pair(ctx, opts, summary, tsv, rows, i) for i in range(RUNS)]
    os.unlink(tsv)
    for i, r in enumerate(runs):
        fig.problems += [f"run {i + 1}: {p}" for p in r["problems"]]
    res = median_run = sorted(runs, key=lambda r: r["ratio"])[len(runs) // 2]
    rate = median([r["rate"] for r in runs])
    ratio = median_run["ratio"]
    peak_rss = max(r["peak_rss_mb"] for r in runs)

    fig.note(f"messages        {sent} ({unique} unique, {sent - unique} duplicates), "
             f"{KEY_COUNT} keys, {ctx.partitions} partitions, UUID ids")
    for i, r in enumerate(runs):
        fig.note(f"run {i + 1}           collector {r['consumed']} messages in {r['elapsed']:.2f} s "
                 f"= {r['rate']:,.0f} events/s; COPY {rows} rows in {r['copy_s']:.2f} s "
                 f"= {r['copy_rate']:,.0f} rows/s; ratio {r['ratio']:.2f}; "
                 f"peak RSS {r['peak_rss_mb']:.1f} MB; CPU collector {r['cpu_s']:.2f} s, "
                 f"PostgreSQL {r['pg_cpu_s']:.2f} s")
    fig.note(f"median run      {runs.index(median_run) + 1}: {median_run['batches']} batches, "
             f"{median_run['db_errors']} db errors")
    fig.note(f"  clock         start: {res['start_how']}; end: {res['end_how']}")
    fig.note(f"  cross-check   by /metrics polls alone: {res['poll_elapsed']:.2f} s; "
             f"group join etc. before the first fetch: {res['startup']:.2f} s (not counted)")
    fig.note(f"  batch writes  {res['write_s']:.2f} s in total "
             f"(tally_collector_batch_commit_seconds_sum), {res['write_s'] / res['elapsed']:.0%} "
             f"of the measured time")
    fig.note(f"  peak RSS      {peak_rss:.1f} MB (VmHWM, the highest of the runs)")
    fig.note(f"  CPU           collector {res['cpu_s']:.2f} s, PostgreSQL {res['pg_cpu_s']:.2f} s, "
             f"dev broker {res['broker_cpu_s']:.2f} s "
             f"(including the 3 s of startup; {res['elapsed']:.2f} s measured)")
    fig.note(f"  correctness   every run: counted == unique {unique}, sum(usage_hourly.requests) "
             f"{res['total']}, rollups as loadgen's: "
             + ("OK" if not fig.problems else "FAILED"))
    fig.note(f"COPY baseline   psql \\copy into a bare table after each collector run "
             f"(\\timing; {res['copy_wall']:.2f} s around psql in the median run)")
    fig.note(f"ratio           collector / COPY: the median of "
             + ", ".join(f"{r['ratio']:.2f}" for r in runs) + f" = {ratio:.2f}")
    fig.note_other_load(f"{load_collector:.0%} of the machine's CPU busy just before the "
                        f"first collector run, {res['load_copy']:.0%} before the median run's "
                        f"COPY ({os.cpu_count()} CPUs; the benchmark idle)",
                        load_collector, res["load_copy"])

    fig.add("collector_events_per_s", f"{rate:.0f}", "events/s")
    fig.add("copy_events_per_s", f"{median([r['copy_rate'] for r in runs]):.0f}", "events/s")
    fig.add("collector_copy_ratio", f"{ratio:.2f}", "ratio")
    fig.add("collector_peak_rss_mb", f"{peak_rss:.1f}", "MB")
    fig.target(f"collector >= {TARGET_EVENTS_PER_S:,} events/s", rate >= TARGET_EVENTS_PER_S)
    fig.target(f"collector/COPY ratio >= {TARGET_RATIO}", ratio >= TARGET_RATIO)
    fig.target(f"collector peak RSS < {TARGET_RSS_MB:.0f} MB", peak_rss < TARGET_RSS_MB)
    return fig


def run_callgrind(ctx, opts, summary, fig):
    """One collector run under valgrind --tool=callgrind: instruction counts
    of a fixed workload, repeatable on a busy machine where times are not.
    Writes the profile to opts.collector_callgrind; no rates, no targets."""
    out = os.path.abspath(opts.collector_callgrind)
    if not shutil.which("valgrind"):
        raise BenchError("valgrind not found (apt-get install valgrind)")
    wrap = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}"]
    res = run_collector(ctx, summary, opts.timeout, wrap=wrap)
    problems = check_run(ctx, res, summary)
    fig.problems += problems
    fig.note(f"messages        {summary['sent']} ({summary['unique']} unique) under callgrind")
    fig.note(f"profile         {out} (callgrind_annotate --inclusive=yes {out})")
    fig.note(f"  correctness   " + ("OK" if not problems else "FAILED"))
    return fig


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


# Programs this benchmark needs in --bin.
REQUIRES = ("tally-collector", "tally-loadgen", "tally-devbroker")
