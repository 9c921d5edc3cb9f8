"""The gateway benchmark (bench/run.py --only gateway): the shipped nginx
recipe (deploy/gateway/) in front of a demo upstream that nginx serves
itself, with tally-api, tally-collector and rsyslog running as deployed.

- gateway_rps / gateway_p99_ms: wrk (2 threads, 64 connections, keep-alive,
  100 keys rotated, bench/gateway.lua) through the gateway: auth_request to
  tally-api, the usage log line, rsyslog -> Kafka -> collector behind it.
- gateway_plain_rps / gateway_plain_p99_ms: the same wrk against the same
  nginx proxying the same upstream with no auth and no usage log.
- gateway_auth_ratio: gateway_rps / gateway_plain_rps (goal >= 0.5).
- gateway_rps_pipeline_paused: gateway_rps again with rsyslog stopped
  (SIGSTOP), so that rsyslog, the collector and PostgreSQL do not share the
  machine meanwhile: what the edge alone costs.
- freshness_p99_ms: at a steady ~5,000 requests/s through the gateway
  (wrk, 64 connections each waiting 10 ms between requests: with answers
  of 2-3 ms about 5,000 a second; the rate reached is reported), a probe key
  sends one request every 100 ms; for each, the time from its answer at the
  gateway to the moment GET /v1/keys/{id}/quota on a second tally-api
  replica (default TALLY_KEY_REFRESH_MS, 1 s) shows its unit. The replica
  is used because the gateway's own api counts an allowed request at once
  (docs/CONTRACT.md §4.6): only another replica sees the pipeline's delay
  (nginx log -> rsyslog -> Kafka -> collector -> PostgreSQL -> cache).
  Goal < 1,500 ms. freshness_refresh100_p99_ms: the same probes seen by a
  third replica reloading every 100 ms (the setting's minimum): the pipeline
  with the reload interval mostly taken out.

Correctness checks: no non-2xx answer, every request the gateway answered is
counted by the collector (requests in usage_hourly = lines in the usage log).
"""

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import types
import urllib.request

from common import REPO, BenchError, Figures, background_cpu, find_tool, log

sys.path.insert(0, os.path.join(REPO, "tests", "gateway"))
import gwstack as gw  # noqa: E402
import lib  # noqa: E402  (tests/integration, put on the path by gwstack)

REQUIRES = ("tally-api", "tally-collector", "tally-devbroker")
WRK_SCRIPT = os.path.join(REPO, "bench", "gateway.lua")
KEYS = 100
RPS_SECONDS = 10
FRESHNESS_SECONDS = 20
FRESHNESS_CONNECTIONS = 64
FRESHNESS_DELAY_MS = 10
PROBE_INTERVAL_S = 0.1
STEADY_MIN_RPS = 4500
WRK_UNIT = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0, "h": 3600000.0}


def wrk(url, keys_file, seconds, connections=64, delay_ms=0):
    tool = find_tool("wrk")
    if not tool:
        raise BenchError("wrk not found (apt-get install wrk)")
    cmd = [tool, "-t2", "-c%d" % connections, "-d%ds" % seconds, "--latency", "-s", WRK_SCRIPT,
           url, "--", keys_file, str(delay_ms)]
    r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           text=True, timeout=seconds + 60)
    out = r.stdout
    rps = re.search(r"^Requests/sec:\s+([\d.]+)", out, re.M)
    p99 = re.search(r"^\s+99%\s+([\d.]+)(us|ms|s|m|h)", out, re.M)
    total = re.search(r"^\s+(\d+) requests in", out, re.M)
    if r.returncode != 0 or not rps or not p99 or not total:
        raise BenchError("wrk failed (exit %d):\n%s" % (r.returncode, out))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: (.*)", out)
    return {"rps": float(rps.group(1)), "p99_ms": float(p99.group(1)) * WRK_UNIT[p99.group(2)],
            "requests": int(total.group(1)), "non2xx": int(non2xx.group(1)) if non2xx else 0,
            "errors": errors.group(1) if errors else None}


def quota_used(port, key_id):
    req = urllib.request.Request("http://127.0.0.1:%d/v1/keys/%s/quota" % (port, key_id),
                                 headers={"Authorization": "Bearer " + gw.ADMIN_TOKEN})
    with urllib.request.urlopen(req, timeout=5) as r:
        return json.loads(r.read())["used"]


def freshness(nginx_port, reader_ports, probe, seconds):
    """Per probe request and per reader replica: ms from its answer at the
    gateway to its unit in that replica's quota answer. Returns ({port:
    [ms, ...]}, probes sent)."""
    answered = []  # monotonic time of the i-th allowed probe answer
    seen = {port: {} for port in reader_ports}  # port -> {i: first seen}
    stop = threading.Event()
    stop_at = [0.0]

    def poll(port):
        base = quota_used(port, probe["id"])
        last = base
        while not stop.is_set() or last - base < len(answered):
            used = quota_used(port, probe["id"])
            now = time.monotonic()
            for n in range(last + 1, used + 1):
                seen[port][n - base] = now
            last = max(last, used)
            if stop.is_set() and time.monotonic() > stop_at[0] + 30:
                break
            time.sleep(0.01)

    pollers = [threading.Thread(target=poll, args=(port,), daemon=True) for port in reader_ports]
    for poller in pollers:
        poller.start()
    client = gw.Client(nginx_port)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        t = time.monotonic()
        r = client.get("/items", key=probe["value"])
        if r.status != 200:
            raise BenchError("probe request answered %r" % r)
        answered.append(time.monotonic())
        time.sleep(max(0.0, PROBE_INTERVAL_S - (time.monotonic() - t)))
    stop_at[0] = time.monotonic()
    stop.set()
    for poller in pollers:
        poller.join(45)
    client.close()
    delays = {port: [(seen[port][i + 1] - t) * 1000 for i, t in enumerate(answered)
                     if i + 1 in seen[port]] for port in reader_ports}
    return delays, len(answered)


def percentile(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100.0 * (len(values) - 1))))]


def run(ctx, opts):
    fig = Figures("gateway: nginx auth_request to Tally vs plain nginx; usage freshness")
    started = time.monotonic()
    registry = lib.Registry()
    tmp = ctx.readable_dir("gateway")
    try:
        api = gw.Api(registry, tmp, opts.bin, ctx.database_url, refresh_ms=1000)
        reader = gw.Api(registry, tmp, opts.bin, ctx.database_url, refresh_ms=1000,
                        name="api-reader")
        fast_reader = gw.Api(registry, tmp, opts.bin, ctx.database_url, refresh_ms=100,
                             name="api-reader-100ms")
        stack = types.SimpleNamespace(db_url=ctx.database_url, brokers=ctx.brokers)
        collector = gw.Collector(registry, tmp, opts.bin, stack)
        plain_port = lib.free_port()
        plain = ("    server {\n        listen 127.0.0.1:%d;\n        access_log off;\n"
                 "        location / {\n            proxy_http_version 1.1;\n"
                 "            proxy_set_header Connection \"\";\n"
                 "            proxy_pass http://app;\n        }\n    }\n" % plain_port)
        nginx = gw.Nginx(registry, tmp, "nginx", api.port, extra_http=plain)
        rsyslog = gw.Rsyslog(registry, tmp, nginx.usage_log, ctx.brokers)
        plan = api.plan(name="Bench", throttle={"rateLimit": 10 ** 6, "burstLimit": 10 ** 6},
                        quota={"limit": 10 ** 9, "period": "MONTH"})
        keys = [api.key(plan) for _ in range(KEYS)]
        probe = api.key(plan)
        keys_file = os.path.join(tmp, "keys.txt")
        with open(keys_file, "w") as f:
            f.write("".join(k["value"] + "\n" for k in keys))
        log("gateway on :%d, plain on :%d, api :%d, reader api :%d"
            % (nginx.port, plain_port, api.port, reader.port))
        load = background_cpu()
        wrk("http://127.0.0.1:%d/items" % nginx.port, keys_file, 3)  # warm-up
        plain_res = wrk("http://127.0.0.1:%d/items" % plain_port, keys_file, RPS_SECONDS)
        gw_res = wrk("http://127.0.0.1:%d/items" % nginx.port, keys_file, RPS_SECONDS)
        # The same with rsyslog stopped (SIGSTOP; it reads the backlog
        # after SIGCONT): how much of the gap is the usage pipeline
        # (rsyslog, the collector, PostgreSQL) sharing the machine.
        rsyslog.proc.send(signal.SIGSTOP)
        try:
            paused_res = wrk("http://127.0.0.1:%d/items" % nginx.port, keys_file, RPS_SECONDS)
        finally:
            rsyslog.proc.send(signal.SIGCONT)
        for label, res in (("plain", plain_res), ("gateway", gw_res),
                           ("gateway, rsyslog stopped", paused_res)):
            if res["non2xx"] or res["errors"]:
                fig.problems.append("%s: %d non-2xx, socket errors %s"
                                    % (label, res["non2xx"], res["errors"]))
        ratio = gw_res["rps"] / plain_res["rps"]
        # Let the collector take in the rps runs' events before the
        # freshness run, so that it measures a steady state.
        wait_counted(ctx, nginx, collector, 300)
        log("freshness: %d connections through the gateway, %d ms between requests, for %d s"
            % (FRESHNESS_CONNECTIONS, FRESHNESS_DELAY_MS, FRESHNESS_SECONDS))
        steady = {}
        bg = threading.Thread(target=lambda: steady.update(wrk(
            "http://127.0.0.1:%d/items" % nginx.port, keys_file, FRESHNESS_SECONDS + 2,
            FRESHNESS_CONNECTIONS, FRESHNESS_DELAY_MS)))
        bg.start()
        time.sleep(1)
        by_reader, probes = freshness(nginx.port, [reader.port, fast_reader.port], probe,
                                      FRESHNESS_SECONDS)
        delays, fast_delays = by_reader[reader.port], by_reader[fast_reader.port]
        bg.join(FRESHNESS_SECONDS + 90)
        for label, values in (("1 s", delays), ("100 ms", fast_delays)):
            if len(values) < probes:
                fig.problems.append("%d of %d probe units never showed in the quota (%s reader)"
                                    % (probes - len(values), probes, label))
        counted = wait_counted(ctx, nginx, collector, 300)
        load_after = background_cpu()
        p99 = percentile(delays, 99) if delays else float("nan")
        fig.add("gateway_rps", "%.0f" % gw_res["rps"], "requests/s")
        fig.add("gateway_p99_ms", "%.2f" % gw_res["p99_ms"], "ms")
        fig.add("gateway_rps_pipeline_paused", "%.0f" % paused_res["rps"], "requests/s")
        fig.add("gateway_plain_rps", "%.0f" % plain_res["rps"], "requests/s")
        fig.add("gateway_plain_p99_ms", "%.2f" % plain_res["p99_ms"], "ms")
        fig.add("gateway_auth_ratio", "%.2f" % ratio, "ratio")
        fig.add("freshness_p99_ms", "%.0f" % p99, "ms")
        fast_p99 = percentile(fast_delays, 99) if fast_delays else float("nan")
        fig.add("freshness_refresh100_p99_ms", "%.0f" % fast_p99, "ms")
        fig.note("gateway         %.0f requests/s, p99 %.2f ms (%d requests)"
                 % (gw_res["rps"], gw_res["p99_ms"], gw_res["requests"]))
        fig.note("gateway         %.0f requests/s, p99 %.2f ms with rsyslog stopped (the usage "
                 "pipeline idle)" % (paused_res["rps"], paused_res["p99_ms"]))
        fig.note("plain nginx     %.0f requests/s, p99 %.2f ms (%d requests)"
                 % (plain_res["rps"], plain_res["p99_ms"], plain_res["requests"]))
        fig.note("steady load     %.0f requests/s through the gateway during the freshness run"
                 % steady.get("rps", float("nan")))
        fig.note("freshness       %d probes: p50 %.0f ms, p99 %.0f ms, max %.0f ms"
                 % (len(delays), percentile(delays, 50) if delays else float("nan"), p99,
                    max(delays) if delays else float("nan")))
        fig.note("freshness       with TALLY_KEY_REFRESH_MS=100 on the reader: p50 %.0f ms, "
                 "p99 %.0f ms" % (percentile(fast_delays, 50) if fast_delays else float("nan"),
                                  fast_p99))
        fig.note("counted         %d requests in usage_hourly = %d usage log lines"
                 % (counted, counted))
        fig.target("gateway_auth_ratio >= 0.5", ratio >= 0.5)
        fig.target("freshness_p99_ms < 1500", p99 < 1500)
        # The goal's figure holds at a steady 5,000 requests/s; a machine
        # that cannot carry that measures freshness under less load, which
        # this line says instead of hiding it.
        fig.target("steady load during freshness >= %d requests/s (5,000 less 10 %%)"
                   % STEADY_MIN_RPS, steady.get("rps", 0) >= STEADY_MIN_RPS)
        fig.note_other_load("%.0f%% of the CPUs before, %.0f%% after" % (load * 100,
                                                                          load_after * 100),
                            load, load_after)
        fig.note_duration(started, "key creation, 5 wrk runs, waits for the collector")
        return fig
    except lib.Failure as e:
        raise BenchError(str(e))
    finally:
        registry.stop_all()


def wait_counted(ctx, nginx, collector, timeout):
    """Until requests in usage_hourly equal the usage log's lines."""
    deadline = time.monotonic() + timeout
    db = lib.DB(ctx.database_url)
    while True:
        lines = len(nginx.usage_lines())
        counted = db.total_requests()
        if counted == lines:
            return counted
        if time.monotonic() > deadline:
            raise BenchError("collector counted %d requests, the gateway logged %d; %s"
                             % (counted, lines, collector.metrics().brief()))
        time.sleep(0.5)
