"""The freshness benchmark (bench/run.py --only freshness): how long a counted
event takes to show in the quota answer, issue #16.

One probe: read GET /v1/keys/{id}/quota of a probe key (its `used`), publish
one event of 1 unit for that key with kcat (-P, linger 0; kcat exits once
the broker acknowledged the message), then poll the quota route every
POLL_INTERVAL_S until `used` has grown. The figure is the time from kcat's
exit to the first answer showing the unit. kcat exits a little after the
broker's acknowledgement (its delivery report, then its teardown), so the
figure errs low by that; the report also gives the time from kcat's start
(an upper bound, which adds kcat's start and connection), and splits the
time at the answer's asOf (the counter's updated_at: the start of the
collector's transaction that counted the event): before it, the event
waited in Kafka and in the collector's batch; after it, the transaction, the
notice and the api's refresh (plus up to one poll).

SAMPLES probes run with nothing else going on (event_freshness_idle_*), then
SAMPLES more while tally-loadgen publishes BACKGROUND_RATE events/s for
BACKGROUND_KEY_COUNT other keys (event_freshness_*). One tally-collector and
one tally-api with default settings (BENCH_COLLECTOR_ARGS, in the
environment, adds flags to the collector, e.g. "--fetch-wait-ms 500" to see
librdkafka's default); the probe keys rotate.
"""

import calendar
import http.client
import json
import os
import signal
import statistics
import subprocess
import time

import api as api_bench
from common import BenchError, Figures, clean_env, find_tool, free_port, log, scrape

TOPIC = "usage-events"
SAMPLES = 200
PROBE_KEY_COUNT = 8
BACKGROUND_KEY_COUNT = 1000
BACKGROUND_RATE = 20_000       # events/s on the background keys
POLL_INTERVAL_S = 0.002
PROBE_TIMEOUT_S = 10.0         # a probe not visible by then fails the benchmark
TARGET_P99_MS = 500
TARGET_IDLE_P99_MS = 250


def seed(ctx):
    """The plan, the probe keys and the background keys, straight into the
    database (the api's first load reads them)."""
    ctx.psql(None, args=["-f", "-"], stdin=f"""
BEGIN;
INSERT INTO plans (id, name, quota_limit, quota_period)
VALUES ('fresh_plan', 'Freshness plan', 1000000000000, 'MONTH');
INSERT INTO api_keys (id, value_hash, name, customer_id, plan_id)
SELECT 'probe_key_' || i, sha256(convert_to('probe-secret-' || i, 'UTF8')),
       'probe key ' || i, 'cust_probe_' || i, 'fresh_plan'
  FROM generate_series(0, {PROBE_KEY_COUNT - 1}) AS i;
INSERT INTO api_keys (id, value_hash, name, customer_id, plan_id)
SELECT 'bg_key_' || lpad(i::text, 4, '0'), sha256(convert_to('bg-secret-' || i, 'UTF8')),
       'background key ' || i, 'cust_bg_' || i, 'fresh_plan'
  FROM generate_series(0, {BACKGROUND_KEY_COUNT - 1}) AS i;
COMMIT;
""")


def start_collector(ctx):
    port = free_port()
    log_path = ctx.path("logs", "collector.log")
    env = clean_env({"TALLY_DATABASE_URL": ctx.database_url,
                     "TALLY_KAFKA_BROKERS": ctx.brokers})
    cmd = [ctx.bin("tally-collector"), "--metrics-addr", f"127.0.0.1:{port}",
           "--kafka-topic", TOPIC, "--session-timeout-ms", "6000"]
    cmd += os.environ.get("BENCH_COLLECTOR_ARGS", "").split()
    log(f"starting tally-collector (metrics on 127.0.0.1:{port}, log {log_path}; "
        f"{' '.join(cmd[7:]) or 'default settings'})")
    proc = ctx.spawn("tally-collector", cmd, env, log_path)
    return proc, port


class QuotaReader:
    """GET /v1/keys/{id}/quota on one keep-alive connection."""

    def __init__(self, port, token):
        self.port, self.token = port, token
        self.conn = None

    def used(self, key_id):
        return self.quota(key_id)["used"]

    def quota(self, key_id):
        for attempt in (1, 2):
            if self.conn is None:
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
            try:
                self.conn.request("GET", f"/v1/keys/{key_id}/quota",
                                  headers={"Authorization": f"Bearer {self.token}"})
                resp = self.conn.getresponse()
                body = resp.read()
                break
            except (http.client.HTTPException, ConnectionError):
                self.conn.close()
                self.conn = None
                if attempt == 2:
                    raise
        if resp.status != 200:
            raise BenchError(f"GET /v1/keys/{key_id}/quota answered {resp.status}: {body[:200]!r}")
        return json.loads(body)

    def close(self):
        if self.conn is not None:
            self.conn.close()


def probe_event(key_id, n):
    now = time.time()
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + ".%03dZ" % int(now % 1 * 1000)
    return json.dumps({"specversion": "1.0", "id": f"fresh-{os.getpid()}-{n}",
                       "source": "freshness-bench", "type": "api.request",
                       "subject": key_id, "time": stamp, "data": {"units": 1}},
                      separators=(",", ":")).encode()


def publish(ctx, kcat, key_id, value):
    """Publishes one message; returns (monotonic time kcat started, exited)."""
    started = time.monotonic()
    r = subprocess.run([kcat, "-P", "-b", ctx.brokers, "-t", TOPIC, "-k", key_id,
                        "-X", "linger.ms=0", "-X", "acks=all"],
                       input=value, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       env=clean_env(), timeout=30)
    acked = time.monotonic()
    if r.returncode != 0:
        raise BenchError(f"kcat failed (exit {r.returncode}): {r.stdout[-300:]!r}")
    return started, acked


def epoch_of(rfc3339):
    """Seconds since the epoch of the api's "YYYY-MM-DDTHH:MM:SS.mmmZ"."""
    whole, _, fraction = rfc3339.rstrip("Z").partition(".")
    return calendar.timegm(time.strptime(whole, "%Y-%m-%dT%H:%M:%S")) + float("0." + fraction)


def probe(ctx, kcat, reader, key_id, n):
    """One sample: ms from kcat's exit to visible, ms from kcat's start, and
    that time split at the counter's asOf (the start of the collector's
    transaction that counted it): ms before, ms after."""
    before = reader.used(key_id)
    started, acked = publish(ctx, kcat, key_id, probe_event(key_id, n))
    acked_wall = time.time()
    deadline = acked + PROBE_TIMEOUT_S
    while True:
        now, now_wall = time.monotonic(), time.time()
        q = reader.quota(key_id)
        if q["used"] > before:
            as_of = epoch_of(q["asOf"])
            return ((now - acked) * 1000, (now - started) * 1000,
                    (as_of - acked_wall) * 1000, (now_wall - as_of) * 1000)
        if now > deadline:
            raise BenchError(f"probe {n}: 1 unit for {key_id} not visible in the quota "
                             f"answer {PROBE_TIMEOUT_S:.0f} s after its acknowledgement")
        time.sleep(POLL_INTERVAL_S)


def percentile(values, fraction):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(fraction * (len(ordered) - 1))))]


def run_probes(ctx, kcat, reader, label, offset):
    log(f"freshness ({label}): {SAMPLES} probes")
    samples = [probe(ctx, kcat, reader, f"probe_key_{n % PROBE_KEY_COUNT}", offset + n)
               for n in range(SAMPLES)]
    return [list(column) for column in zip(*samples)]


def split_note(label, before, after):
    return ("%-15s split at the counter's asOf (its transaction's start): before p50 %.0f / "
            "p99 %.0f ms, after p50 %.0f / p99 %.0f ms"
            % (label, percentile(before, 0.5), percentile(before, 0.99),
               percentile(after, 0.5), percentile(after, 0.99)))


def start_background(ctx):
    keys = ",".join(f"bg_key_{i:04d}" for i in range(BACKGROUND_KEY_COUNT))
    log_path = ctx.path("logs", "loadgen.log")
    cmd = [ctx.bin("tally-loadgen"), "--brokers", ctx.brokers, "--topic", TOPIC,
           "--keys", keys, "--rate", str(BACKGROUND_RATE), "--duration", "3600",
           "--source", "freshness-background"]
    log(f"background: tally-loadgen at {BACKGROUND_RATE} events/s on {BACKGROUND_KEY_COUNT} keys")
    return ctx.spawn("tally-loadgen", cmd, clean_env(), log_path)


def collector_totals(collector_port):
    """(events counted, batches committed, seconds spent committing them)."""
    m = scrape(collector_port)
    return (m.get("tally_collector_events_counted_total", 0.0),
            m.get("tally_collector_batches_total", 0.0),
            m.get("tally_collector_batch_commit_seconds_sum", 0.0))


def run(ctx, opts):
    fig = Figures("freshness: event acknowledged -> visible in GET /v1/keys/{id}/quota")
    kcat = find_tool("kcat", "/usr/bin/kcat")
    if not kcat:
        raise BenchError("kcat not found")
    seed(ctx)
    credentials = api_bench.api_credentials()
    api = api_bench.start_api(ctx, credentials, "api.log")
    collector, collector_port = start_collector(ctx)
    reader = QuotaReader(api.port, credentials[0])
    try:
        # Warm up: the collector joins its group and counts a first event.
        probe_deadline = time.monotonic() + 60
        while True:
            try:
                probe(ctx, kcat, reader, "probe_key_0", -1)
                break
            except BenchError:
                if time.monotonic() > probe_deadline:
                    raise
        idle, idle_started, idle_before, idle_after = run_probes(ctx, kcat, reader, "idle", 0)

        loadgen = start_background(ctx)
        time.sleep(5)  # a steady state: the collector caught up with the backlog
        (c0, b0, s0), t0 = collector_totals(collector_port), time.monotonic()
        loaded, loaded_started, loaded_before, loaded_after = run_probes(
            ctx, kcat, reader, "background load", SAMPLES)
        (c1, b1, s1), t1 = collector_totals(collector_port), time.monotonic()
        if loadgen.poll() is not None:
            raise BenchError(f"tally-loadgen exited early ({loadgen.returncode})")
        loadgen.send_signal(signal.SIGINT)
        loadgen.wait(90)
        ctx.forget(loadgen)
    finally:
        reader.close()
    background_rate = (c1 - c0) / (t1 - t0)

    p50, p99 = percentile(loaded, 0.5), percentile(loaded, 0.99)
    ip50, ip99 = percentile(idle, 0.5), percentile(idle, 0.99)
    fig.add("event_freshness_p99_ms", "%.0f" % p99, "ms")
    fig.add("event_freshness_p50_ms", "%.0f" % p50, "ms")
    fig.add("event_freshness_idle_p99_ms", "%.0f" % ip99, "ms")
    fig.add("event_freshness_idle_p50_ms", "%.0f" % ip50, "ms")
    fig.note("idle            %d probes: p50 %.0f ms, p99 %.0f ms, max %.0f ms, mean %.0f ms"
             % (len(idle), ip50, ip99, max(idle), statistics.mean(idle)))
    fig.note("background      %d probes: p50 %.0f ms, p99 %.0f ms, max %.0f ms, mean %.0f ms"
             % (len(loaded), p50, p99, max(loaded), statistics.mean(loaded)))
    fig.note("background load %.0f events/s counted by the collector during the probes "
             "(tally-loadgen asked for %d on %d keys)"
             % (background_rate, BACKGROUND_RATE, BACKGROUND_KEY_COUNT))
    if b1 > b0:
        fig.note("collector       %.0f batches committed during the probes under load, "
                 "%.0f events and %.0f ms of commit each on average"
                 % (b1 - b0, (c1 - c0) / (b1 - b0), (s1 - s0) / (b1 - b0) * 1000))
    fig.note(split_note("idle", idle_before, idle_after))
    fig.note(split_note("background", loaded_before, loaded_after))
    fig.note("from kcat's start (adds its start and connection): idle p99 %.0f ms, "
             "background p99 %.0f ms"
             % (percentile(idle_started, 0.99), percentile(loaded_started, 0.99)))
    fig.target(f"event_freshness_p99_ms < {TARGET_P99_MS}", p99 < TARGET_P99_MS)
    fig.target(f"event_freshness_idle_p99_ms < {TARGET_IDLE_P99_MS}", ip99 < TARGET_IDLE_P99_MS)
    if background_rate < 0.9 * BACKGROUND_RATE:
        fig.note(f"the background ran below {BACKGROUND_RATE} events/s: this machine "
                 "could not publish or count that many")
    return fig


REQUIRES = ("tally-api", "tally-collector", "tally-loadgen", "tally-devbroker")
