"""The alert latency benchmark (bench/run.py --only alerts): how long from
producing, to Kafka, the usage event that takes a key past a quota threshold
to the signed webhook arriving at a local receiver, while tally-loadgen
publishes 20,000 events/s of background traffic for other keys.

The chain measured: tally-collector counts the event and, in the same
transaction, writes the quota_alerts row (threshold detection, issue #12's
collector part); the migration's trigger fans it out to webhook_deliveries;
tally-reporter's webhook thread claims it (polling every
TALLY_WEBHOOK_POLL_MS, default 250 ms) and POSTs it. Each probe is a key of
its own on a plan of 1,000 units a month, and one event of 800 units: its
80 % threshold. t0 is taken just before the probe's line is written to a
kcat producer that was started beforehand (linger 0), so the producer's own
time counts against us; t1 when the receiver has read the body. Probes are
spread evenly over the load. Every probe's webhook must arrive, with a valid
signature, and be for that key's 80 % threshold (correctness checks);
p99 < 2,000 ms is the target.

BENCH_ALERTS_DIRECT=1 (environment) replaces each probe's Kafka event by an
INSERT of its quota_alerts row (through a psql started beforehand): it then
measures the webhook half alone (outbox row -> arrival) under the same
background traffic, reported as webhook_delivery_latency_p99_ms; for a
build without the collector's detection.
"""

import hashlib
import hmac
import http.server
import json
import os
import subprocess
import threading
import time

from common import (BenchError, Figures, background_cpu, clean_env, find_tool, free_port,
                    log, stop_process, tail, wait_until_ready)

TOPIC = "usage-events"
BACKGROUND_RATE = 20_000      # events/s
BACKGROUND_KEYS = 1000
PROBES = 120
PROBE_INTERVAL_S = 0.25
WARMUP_S = 5
PROBE_LIMIT = 1000            # units a month on the probes' plan
PROBE_UNITS = 800             # one event: 80 %
ARRIVAL_TIMEOUT_S = 30        # after the last probe
TARGET_P99_MS = 2000
SECRET = "whsec_bench_alerts"


def seed(ctx, probe_keys):
    ctx.psql(None, args=["-f", "-"], stdin=f"""
BEGIN;
INSERT INTO plans (id, name, quota_limit, quota_period, alert_thresholds)
VALUES ('bench_bg', 'background', 1000000000000, 'MONTH', '{{}}'),
       ('bench_probe', 'probes', {PROBE_LIMIT}, 'MONTH', '{{80,100,120}}');
INSERT INTO api_keys (id, value_hash, name, customer_id, plan_id)
SELECT 'bench_bg_' || lpad(i::text, 4, '0'), sha256(convert_to('bench-bg-' || i, 'UTF8')),
       'bg ' || i, 'cust_bg_' || i, 'bench_bg'
  FROM generate_series(0, {BACKGROUND_KEYS - 1}) AS i;
INSERT INTO api_keys (id, value_hash, name, customer_id, plan_id)
SELECT k, sha256(convert_to('secret-' || k, 'UTF8')), k, 'cust_' || k, 'bench_probe'
  FROM unnest(ARRAY[{", ".join("'%s'" % k for k in probe_keys)}]) AS k;
COMMIT;
""")


class QuietServer(http.server.ThreadingHTTPServer):
    """A threading HTTP server that does not print the tracebacks of
    connections the sender closed on purpose (timeouts, cut answers)."""

    daemon_threads = True

    def handle_error(self, request, client_address):
        pass


class Receiver:
    """Records the arrival time and body of every POST."""

    def __init__(self):
        self.lock = threading.Lock()
        self.arrivals = []  # (t1 wall clock, body bytes, signature header)
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                t1 = time.time()
                with owner.lock:
                    owner.arrivals.append((t1, body, self.headers.get("Tally-Signature", "")))
                self.send_response(204)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = QuietServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def snapshot(self):
        with self.lock:
            return list(self.arrivals)

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def signature_ok(header, body):
    fields = [p.split("=", 1) for p in header.split(",") if "=" in p]
    stamps = [v for k, v in fields if k == "t"]
    if len(stamps) != 1:
        return False
    mac = hmac.new(SECRET.encode(), stamps[0].encode() + b"." + body, hashlib.sha256).hexdigest()
    return any(hmac.compare_digest(mac, v) for k, v in fields if k == "v1")


def percentile(sorted_values, q):
    """Nearest-rank percentile of an ascending list."""
    rank = max(1, -(-len(sorted_values) * q // 100))
    return sorted_values[int(rank) - 1]


def start_services(ctx, receiver_port):
    ctx.psql(f"INSERT INTO webhook_endpoints (id, url, event_types, secret) VALUES "
             f"('bench', 'http://127.0.0.1:{receiver_port}/hook', "
             f"ARRAY['quota.threshold_reached', 'quota.exhausted'], '{SECRET}')")
    env = clean_env({"TALLY_DATABASE_URL": ctx.database_url,
                     "TALLY_KAFKA_BROKERS": ctx.brokers})
    collector_port, reporter_port = free_port(), free_port()
    collector_log, reporter_log = ctx.path("collector.log"), ctx.path("reporter.log")
    collector = ctx.spawn("tally-collector", [ctx.bin("tally-collector"), "--metrics-addr",
                                              f"127.0.0.1:{collector_port}", "--kafka-topic",
                                              TOPIC], env, collector_log)
    reporter_env = clean_env({"TALLY_DATABASE_URL": ctx.database_url,
                              "TALLY_STRIPE_API_KEY": "sk_test_bench_alerts"})
    # Stripe goes nowhere (no usage is settled within the run); webhooks to
    # the loopback receiver, on the default poll interval.
    reporter = ctx.spawn("tally-reporter", [
        ctx.bin("tally-reporter"), "--metrics-addr", f"127.0.0.1:{reporter_port}",
        "--stripe-api-base", f"http://127.0.0.1:{free_port()}", "--report-interval-s", "3600",
        "--webhook-allow-networks", "loopback"], reporter_env, reporter_log)
    wait_until_ready("tally-reporter", reporter, [reporter_log],
                     lambda: "holds the webhook sender lock" in tail(reporter_log, 50), 30)
    wait_until_ready("tally-collector", collector, [collector_log],
                     lambda: "assigned" in tail(collector_log, 50).lower()
                     or "partitions" in tail(collector_log, 50).lower(), 60)
    return collector, reporter, collector_log, reporter_log


def start_background(ctx, seconds):
    keys = ",".join(f"bench_bg_{i:04d}" for i in range(BACKGROUND_KEYS))
    summary = ctx.path("loadgen-summary.json")
    cmd = [ctx.bin("tally-loadgen"), "--brokers", ctx.brokers, "--topic", TOPIC, "--keys", keys,
           "--rate", str(BACKGROUND_RATE), "--duration", str(seconds), "--uuid-ids",
           "--summary", summary, "--log-level", "warn"]
    proc = ctx.spawn("tally-loadgen", cmd, clean_env(), ctx.path("loadgen.log"))
    return proc, summary


class ProbeWriter:
    """A producer started before the measurement: kcat (Kafka) or psql
    (BENCH_ALERTS_DIRECT), each probe one line on its stdin."""

    def __init__(self, ctx, direct):
        self.direct = direct
        if direct:
            cmd = [ctx.psql_bin, ctx.database_url, "-X", "-q", "-v", "ON_ERROR_STOP=1"]
        else:
            kcat = find_tool("kcat", "/usr/bin/kcat", "/usr/bin/kafkacat")
            if kcat is None:
                raise BenchError("kcat not found (install kcat)")
            cmd = [kcat, "-P", "-b", ctx.brokers, "-t", TOPIC, "-K", "\t",
                   "-X", "linger.ms=0", "-X", "queue.buffering.max.ms=0"]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                     stderr=open(ctx.path("probe-writer.log"), "ab"),
                                     env=clean_env())

    def send(self, key, index):
        if self.direct:
            line = ("INSERT INTO quota_alerts (type, key_id, customer_id, plan_id, period, "
                    "period_start, period_end, threshold, quota_limit, used, enforcement) "
                    f"VALUES ('quota.threshold_reached', '{key}', 'cust_{key}', 'bench_probe', "
                    "'MONTH', date_trunc('month', now()), date_trunc('month', now()) + "
                    f"interval '1 month', 80, {PROBE_LIMIT}, {PROBE_UNITS}, 'hard');\n")
        else:
            event = {"specversion": "1.0", "id": f"probe-{index}-{time.time_ns()}",
                     "source": "bench-alerts", "type": "api.request", "subject": key,
                     "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                     "data": {"method": "GET", "endpoint": "/probe", "status": 200,
                              "units": PROBE_UNITS, "bytes": 0}}
            line = f"{key}\t{json.dumps(event, separators=(',', ':'))}\n"
        t0 = time.time()
        self.proc.stdin.write(line.encode())
        self.proc.stdin.flush()
        return t0

    def close(self):
        try:
            self.proc.stdin.close()
            self.proc.wait(30)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()


def run(ctx, opts):
    direct = os.environ.get("BENCH_ALERTS_DIRECT") == "1"
    name = "webhook_delivery_latency" if direct else "alert_latency"
    fig = Figures("alerts: threshold-crossing event -> webhook at a local receiver"
                  + (" (BENCH_ALERTS_DIRECT: outbox row -> webhook)" if direct else ""))
    probe_keys = [f"bench_probe_{i:04d}" for i in range(PROBES)]
    seed(ctx, probe_keys)
    receiver = Receiver()
    writer = None
    try:
        collector, reporter, collector_log, reporter_log = start_services(ctx, receiver.port)
        load_before = background_cpu()
        writer = ProbeWriter(ctx, direct)
        duration = WARMUP_S + PROBES * PROBE_INTERVAL_S + 5
        loadgen, summary_path = start_background(ctx, int(duration + 0.999))
        log(f"background: {BACKGROUND_RATE:,} events/s for {duration:.0f} s; {PROBES} probes "
            f"every {PROBE_INTERVAL_S} s after {WARMUP_S} s")
        time.sleep(WARMUP_S)
        sent_at = {}
        next_at = time.monotonic()
        for i, key in enumerate(probe_keys):
            next_at += PROBE_INTERVAL_S
            sent_at[key] = writer.send(key, i)
            if i == 9 and not direct:
                # Ten probes in: if none has arrived within 10 s of the first,
                # this build's collector raises no alerts.
                deadline = sent_at[probe_keys[0]] + 10
                while not receiver.snapshot() and time.time() < deadline:
                    time.sleep(0.1)
                if not receiver.snapshot():
                    n = ctx.psql("SELECT count(*) FROM quota_alerts").strip()
                    units = ctx.psql("SELECT coalesce(sum(units), 0) FROM usage_counters "
                                     "WHERE key_id LIKE 'bench_probe_%' AND period = "
                                     "'MONTH'").strip()
                    raise BenchError(
                        f"no webhook arrived 10 s after the first probe ({n} quota_alerts "
                        f"rows; the probes' units counted so far: {units}): this build's "
                        "collector writes no threshold alerts (issue #12's detection); "
                        "BENCH_ALERTS_DIRECT=1 measures the webhook half")
            time.sleep(max(0.0, next_at - time.monotonic()))
        deadline = time.time() + ARRIVAL_TIMEOUT_S
        while time.time() < deadline:
            got = {json.loads(b)["data"]["keyId"] for _, b, _ in receiver.snapshot()}
            if all(k in got for k in probe_keys):
                break
            time.sleep(0.1)
        loadgen.wait(timeout=duration + 60)
        ctx.forget(loadgen)
        with open(summary_path) as f:
            loadgen_summary = json.load(f)
        for proc, pname in ((reporter, "tally-reporter"), (collector, "tally-collector")):
            stop_process(pname, proc)
            ctx.forget(proc)
    finally:
        if writer:
            writer.close()
        receiver.close()

    first, problems, duplicates = {}, [], 0
    for t1, body, signature in receiver.snapshot():
        event = json.loads(body)
        key = event["data"]["keyId"]
        if not signature_ok(signature, body):
            problems.append(f"webhook for {key}: signature does not verify")
        if event["data"]["threshold"] != 80 or event["type"] != "quota.threshold_reached":
            problems.append(f"webhook for {key}: threshold {event['data']['threshold']}, "
                            f"type {event['type']} (want 80, quota.threshold_reached)")
        if key in first:
            duplicates += 1
        else:
            first[key] = t1
    missing = [k for k in probe_keys if k not in first]
    if missing:
        problems.append(f"{len(missing)} probes got no webhook within {ARRIVAL_TIMEOUT_S} s "
                        f"of the last: {missing[:5]}")
    latencies = sorted((first[k] - sent_at[k]) * 1000 for k in probe_keys if k in first)
    if not latencies:
        raise BenchError("no webhook arrived; " + "; ".join(problems))
    p50, p99 = percentile(latencies, 50), percentile(latencies, 99)
    rate = loadgen_summary["sent"] / duration
    fig.note(f"probes          {len(latencies)}/{PROBES} webhooks, {duplicates} re-sent "
             f"duplicates, signatures and thresholds checked")
    fig.note(f"latency         p50 {p50:.0f} ms, p99 {p99:.0f} ms, max {latencies[-1]:.0f} ms "
             f"(t0: probe written to {'psql' if direct else 'kcat'}; t1: body read by the "
             "receiver)")
    fig.note(f"background      {loadgen_summary['sent']:,} events in ~{duration:.0f} s "
             f"= {rate:,.0f} events/s asked {BACKGROUND_RATE:,} "
             f"({loadgen_summary.get('failed', 0)} failed)")
    fig.note_other_load(f"{load_before:.0%} of the machine's CPU busy before the run",
                        load_before)
    if rate < 0.9 * BACKGROUND_RATE:
        fig.note(f"warning: the background traffic reached {rate:,.0f} events/s only")
    fig.add(f"{name}_p99_ms", f"{p99:.0f}", "ms")
    fig.add(f"{name}_p50_ms", f"{p50:.0f}", "ms")
    fig.target(f"p99 < {TARGET_P99_MS:,} ms", p99 < TARGET_P99_MS)
    fig.problems += problems
    return fig


REQUIRES = ("tally-collector", "tally-reporter", "tally-loadgen", "tally-devbroker")
