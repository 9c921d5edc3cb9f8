"""The ingestion benchmark (bench/run.py --only ingest): POST /v1/events,
batches of 100 new events, from wrk (bench/ingest.lua, keep-alive) to
tally-ingest, which produces them to the dev broker with acks=all and
answers each request once every event of it is acknowledged. The figure
ingest_events_per_s is the events tally-ingest counted as accepted during
the timed run (tally_ingest_events_accepted_total) divided by its wall
time. Then tally-collector reads the topic: every accepted event must be
counted, exactly once (usage_hourly's requests = accepted, nothing
rejected), or the run fails.
"""

import datetime
import os
import re
import resource
import subprocess
import threading
import time
import urllib.request

from common import (REPO, BenchError, Figures, background_cpu, clean_env, events_the_broker_keeps,
                    find_tool, free_ports, log, proc_cpu_seconds, scrape, stop_process, tail,
                    wait_until_ready)

REQUIRES = ("tally-ingest", "tally-collector", "tally-devbroker")
TOPIC = "usage-events"
# Kafka's partitioner puts all of a key's events on one partition, and the
# dev broker drops a partition's oldest records past ~5 MB: with 100 keys a
# few partitions took several keys each and lost their first events before
# the collector read them. About 80 keys a partition (10,000 on the default
# 128) spread the load within ~1.3x of even, which the broker's budget
# (half its retention) covers; more partitions (--events) get more keys.
KEYS_PER_PARTITION = 80
MIN_KEYS = 10_000
BATCH = 100
TOKEN = "bench-ingest-token-6c1d9e"
WRK_THREADS = 2
WRK_CONNECTIONS = 64
WARMUP_SECONDS = 3
RUN_SECONDS = 15
# Of the events the broker keeps, the share the warm-up may send; the timed
# run may send the rest. Both end early when their share is answered, so a
# fast machine cannot push out of the broker events the collector must count.
WARMUP_SHARE = 0.1
TARGET_EVENTS_PER_S = 50_000
WRK_SCRIPT = os.path.join(REPO, "bench", "ingest.lua")


def key_count(partitions):
    return max(MIN_KEYS, KEYS_PER_PARTITION * partitions)


def seed_keys(ctx):
    keys = key_count(ctx.partitions)
    ctx.psql(None, args=["-f", "-"], stdin=f"""
INSERT INTO api_keys (id, value_hash, name)
SELECT 'ingest_key_' || lpad(i::text, 6, '0'),
       sha256(convert_to('ingest-secret-' || i, 'UTF8')), 'ingest key ' || i
  FROM generate_series(0, {keys - 1}) AS i;
""")
    path = ctx.path("ingest-keys.txt")
    with open(path, "w") as f:
        for i in range(keys):
            f.write(f"ingest_key_{i:06d}\n")
    return path


def start_ingest(ctx):
    port, metrics_port = free_ports(2)
    log_path = ctx.path("logs", "ingest.log")
    os.makedirs(os.path.dirname(log_path), exist_ok=True)
    env = clean_env({"TALLY_KAFKA_BROKERS": ctx.brokers, "TALLY_INGEST_TOKEN": TOKEN})
    cmd = [ctx.bin("tally-ingest"), "--ingest-addr", f"127.0.0.1:{port}",
           "--metrics-addr", f"127.0.0.1:{metrics_port}", "--kafka-topic", TOPIC,
           "--log-level", "warn"] + os.environ.get("BENCH_INGEST_ARGS", "").split()
    proc = ctx.spawn("tally-ingest", cmd, env, log_path)

    def ready():
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False
    wait_until_ready("tally-ingest", proc, [log_path], ready, 30)
    return proc, port, metrics_port


def accepted(metrics_port):
    return int(scrape(metrics_port).get("tally_ingest_events_accepted_total", 0))


def settled_accepted(metrics_port):
    """The accepted count once the requests wrk left in flight when it
    stopped are answered (the count holds still for a second)."""
    last = accepted(metrics_port)
    while True:
        time.sleep(1.0)
        now = accepted(metrics_port)
        if now == last:
            return now
        last = now


class AcceptedClock:
    """Samples tally-ingest's accepted count every 50 ms while wrk runs.
    wrk stops sending once its budget is answered but only exits after its
    full -d, so its own wall time and rate are too low; the rate is taken
    from these samples instead: events accepted from wrk's start until the
    count stopped growing."""

    INTERVAL_S = 0.05

    def __init__(self, metrics_port):
        self.metrics_port = metrics_port
        self.samples = []  # (monotonic time, accepted count)
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self):
        while not self.done.is_set():
            try:
                count = accepted(self.metrics_port)
            except OSError:  # a slow answer: the next sample will do
                self.done.wait(self.INTERVAL_S)
                continue
            # the time after the scrape: the count is then never newer
            # than its time, which would make the rate look higher
            self.samples.append((time.monotonic(), count))
            self.done.wait(self.INTERVAL_S)

    def __enter__(self):
        self.started = time.monotonic()
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.done.set()
        self.thread.join()

    def busy(self):
        """(seconds, count): from wrk's start to the first sample showing
        the last count sampled, and that count."""
        if not self.samples:
            raise BenchError("no /metrics sample from tally-ingest during the run")
        last = self.samples[-1][1]
        for t, count in self.samples:
            if count >= last:
                return t - self.started, count


def run_wrk(url, args, seconds, label, max_events):
    wrk = find_tool("wrk")
    if not wrk:
        raise BenchError("wrk not found (apt-get install wrk)")
    # Each thread stops after its share of answers; what is in flight then
    # (at most one batch a connection) is still within the budget's margin.
    answers_per_thread = max(1, max_events // BATCH // WRK_THREADS)
    cmd = [wrk, f"-t{WRK_THREADS}", f"-c{WRK_CONNECTIONS}", f"-d{seconds}s", "--latency",
           "--timeout", "10s", "-s", WRK_SCRIPT, url, "--"] + args + [str(BATCH),
                                                                     str(answers_per_thread)]
    t0 = time.monotonic()
    children0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                       timeout=seconds + 60, env=clean_env())
    wall = time.monotonic() - t0
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    wrk_cpu = (children.ru_utime - children0.ru_utime) + (children.ru_stime - children0.ru_stime)
    out = r.stdout
    rps = re.search(r"^Requests/sec:\s+([\d.]+)", out, re.M)
    pcts = dict(re.findall(r"^\s+(\d+)%\s+(\S+)", out, re.M))
    if r.returncode != 0 or not rps or "99" not in pcts:
        raise BenchError(f"wrk ({label}) failed (exit {r.returncode}):\n{out}")
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sock = re.search(r"Socket errors: (.*)", out)
    return {"rps": float(rps.group(1)), "p50": pcts.get("50"), "p99": pcts["99"], "wall": wall,
            "wrk_cpu": wrk_cpu,
            "non2xx": int(non2xx.group(1)) if non2xx else 0,
            "socket_errors": sock.group(1) if sock else None}


def broker_pid(ctx):
    try:
        with open(ctx.path("devbroker.pid")) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return -1


def wait_counted(ctx, expected, timeout_s=300):
    """Runs the collector until usage_hourly holds `expected` requests."""
    (metrics_port,) = free_ports(1)
    log_path = ctx.path("logs", "collector.log")
    env = clean_env({"TALLY_DATABASE_URL": ctx.database_url, "TALLY_KAFKA_BROKERS": ctx.brokers})
    cmd = [ctx.bin("tally-collector"), "--metrics-addr", f"127.0.0.1:{metrics_port}",
           "--kafka-topic", TOPIC, "--session-timeout-ms", "6000"]
    proc = ctx.spawn("tally-collector", cmd, env, log_path)
    t0 = time.monotonic()
    while True:
        if proc.poll() is not None:
            raise BenchError(f"tally-collector exited ({proc.returncode}):\n{tail(log_path)}")
        try:
            m = scrape(metrics_port)
        except OSError:
            m = {}
        counted = int(m.get("tally_collector_events_counted_total", 0))
        if counted >= expected:
            time.sleep(1.0)  # a double count would show now
            m = scrape(metrics_port)
            break
        if time.monotonic() - t0 > timeout_s:
            raise BenchError(f"the collector counted {counted} of {expected} in {timeout_s} s")
        time.sleep(0.2)
    stop_process("tally-collector", proc)
    ctx.forget(proc)
    return m, time.monotonic() - t0


def run(ctx, opts):
    fig = Figures("ingest: POST /v1/events, batches of 100, into the dev broker (acks=all)")
    started = time.monotonic()
    keys_path = seed_keys(ctx)
    proc, port, metrics_port = start_ingest(ctx)
    url = f"http://127.0.0.1:{port}"
    event_time = datetime.datetime.now(datetime.timezone.utc).strftime(
        "%Y-%m-%dT%H:%M:%S.000Z")
    budget = events_the_broker_keeps(ctx.partitions)
    warm_budget = int(budget * WARMUP_SHARE)
    run_budget = budget - warm_budget - 2 * WRK_CONNECTIONS * BATCH
    log(f"warming up: wrk {WARMUP_SECONDS} s or {warm_budget} events")
    warm = run_wrk(url, [TOKEN, event_time, keys_path, "warm"], WARMUP_SECONDS, "warm-up",
                   warm_budget)
    before = settled_accepted(metrics_port)
    load_before = background_cpu()
    cpu0 = proc_cpu_seconds(proc.pid)
    broker0 = proc_cpu_seconds(broker_pid(ctx))
    log(f"measuring: wrk -t{WRK_THREADS} -c{WRK_CONNECTIONS} -d{RUN_SECONDS}s or {run_budget} "
        f"events")
    with AcceptedClock(metrics_port) as clock:
        res = run_wrk(url, [TOKEN, event_time, keys_path, "run"], RUN_SECONDS, "run",
                      run_budget)
    ingest_cpu = proc_cpu_seconds(proc.pid) - cpu0
    broker_cpu = proc_cpu_seconds(broker_pid(ctx)) - broker0
    # Only what was answered while wrk ran counts for the figure; what it
    # left in flight is counted by the collector's check below.
    busy, after = clock.busy()
    total = settled_accepted(metrics_port)
    events_per_s = (after - before) / busy
    statuses = scrape(metrics_port, "tally_ingest_requests_total")
    log(f"accepted {after - before} events in {busy:.1f} s; now counting them")
    stop_process("tally-ingest", proc)
    ctx.forget(proc)

    m, took = wait_counted(ctx, total)
    counted_db = int(ctx.psql("SELECT coalesce(sum(requests), 0) FROM usage_hourly").strip())
    rejected = int(m.get("tally_collector_events_rejected_total", 0))
    duplicates = int(m.get("tally_collector_events_duplicate_total", 0))

    fig.add("ingest_events_per_s", f"{events_per_s:.0f}", "events/s")
    fig.note(f"accepted        {after - before} events in {busy:.1f} s of wrk's {res['wall']:.1f} "
             f"(it stops at {run_budget} events: the broker's budget)")
    fig.note(f"latency         p50 {res['p50']}, p99 {res['p99']} per request of {BATCH} events "
             f"(answered after the broker's acknowledgement)")
    fig.note(f"CPU             tally-ingest {ingest_cpu / busy:.2f} cores, dev broker "
             f"{broker_cpu / busy:.2f}, wrk {res['wrk_cpu'] / busy:.2f} while sending")
    fig.note(f"answers         {statuses}")
    fig.note(f"counted         {counted_db} by the collector of {total} accepted in all "
             f"(duplicates {duplicates}, rejected {rejected}; caught up in {took:.0f} s)")
    fig.note_other_load(f"{load_before:.2f} cores busy before the run", load_before)
    fig.target(f"ingest_events_per_s >= {TARGET_EVENTS_PER_S:,}",
               events_per_s >= TARGET_EVENTS_PER_S)
    if res["non2xx"] or warm["non2xx"]:
        fig.problems.append(f"wrk saw {res['non2xx'] + warm['non2xx']} answers other than 2xx")
    if counted_db != total or rejected:
        fig.problems.append(f"the collector counted {counted_db} of {total} accepted events "
                            f"({rejected} rejected): every accepted event must count once")
    fig.note_duration(started, "warm-up, run and the collector's catch-up")
    return fig
