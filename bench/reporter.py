"""The reporter benchmark (bench/run.py --only reporter): one
`tally-reporter --once` cycle delivering a day of hourly usage for 10,000
customers (240,000 meter events) to the Stripe stand-in
(tests/stripe/standin.py) at a 1,000 calls/s ceiling: how long the cycle
takes, and how close the achieved call rate comes to the ceiling. The usage
is inserted into usage_hourly with SQL (the collector is not involved); the
stand-in's ledger must then hold exactly the inserted units.
"""

import collections
import json
import os
import re
import resource
import secrets
import shutil
import subprocess
import sys
import threading
import time
import urllib.request

from common import (REPO, BenchError, Figures, background_cpu, busy_fraction, clean_env,
                    fetch_metrics, log, machine_cpu_ticks, parse_metrics, postgres_cpu_by_pid,
                    proc_cpu_seconds, proc_status_kb, stop_process, tail, wait_until_ready)

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

    def listening_url():
        m = re.search(r"stripe-standin listening on (http://\S+)", tail(log_path, 5))
        return m and m.group(1)

    return proc, wait_until_ready("the Stripe stand-in", proc, [log_path], listening_url, 15,
                                  interval=0.05)


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
                    text = fetch_metrics(metrics_port)
                    m = parse_metrics(text)
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
        "machine_busy": busy_fraction(machine0, machine1),
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


def per_second_counts(events):
    """Accepted meter events per whole second of the stand-in's clock (its
    `created`), the first and last (partial) seconds left out."""
    counts = collections.Counter(e["created"] for e in events if e.get("kind") == "meter_event")
    if len(counts) < 3:
        return []
    first, last = min(counts), max(counts)
    return [counts.get(t, 0) for t in range(first + 1, last)]


def run(ctx, opts):
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
    fig.note_other_load(f"{load:.0%} of the machine's CPU busy before the run", load)
    fig.note_duration(started, "seeding")

    fig.add("reporter_cycle_s", f"{cycle_s:.2f}", "s")
    fig.add("reporter_rps", f"{rps:.0f}", "calls/s")
    fig.add("reporter_rate_ratio", f"{ratio:.2f}", "ratio")
    fig.add("reporter_peak_rss_mb", f"{res['peak_rss_mb']:.1f}", "MB")
    fig.target(f"reporter rate >= {TARGET_REPORTER_RATIO} x the {REPORTER_RATE_LIMIT:,}/s "
               f"ceiling", ratio >= TARGET_REPORTER_RATIO)
    fig.target(f"reporter peak RSS < {TARGET_REPORTER_RSS_MB:.0f} MB",
               res["peak_rss_mb"] < TARGET_REPORTER_RSS_MB)
    fig.problems += problems
    return fig


# Benchmarks in run order: name -> function(ctx, opts) -> Figures; each gets


# Programs this benchmark needs in --bin.
REQUIRES = ("tally-reporter", "tally-devbroker")
