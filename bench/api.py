"""The api benchmark (bench/run.py --only api): tally-api's GET /v1/authorize
(the allow path: a plan with a huge quota and throttle, so every answer is
204) and GET /v1/keys/{id}/quota under wrk, keep-alive, 64 connections,
10,000 keys (bench/api.lua); the yardstick is nginx-light's own limit_req
answering 204 (one worker) under the same wrk command and script
(bench/nginx-yardstick.conf).

Every tally-api here gets the benchmark's admin token, one generated
TALLY_KEY_HMAC_SECRET (the setup instance stores the keys under it, the
measured one must find them) and its own free TALLY_METRICS_ADDR, where its
/metrics is read (the default, 127.0.0.1:9100, may be taken).

BENCH_API_ARGS (environment) adds flags to the measured tally-api, e.g.
BENCH_API_ARGS="--threads 4" to compare thread counts.
"""

import collections
import concurrent.futures
import http.client
import json
import os
import re
import secrets
import subprocess
import threading
import time
import urllib.error
import urllib.request

from common import (REPO, BenchError, Figures, background_cpu, clean_env, find_tool,
                    free_port, free_ports, log, proc_cpu_seconds, proc_status_kb, scrape,
                    stop_process, tail, wait_until_ready)

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
AUTHORIZE_OUTCOMES = "tally_api_authorize_total"   # labelled by outcome
WRK_SCRIPT = os.path.join(REPO, "bench", "api.lua")
NGINX_TEMPLATE = os.path.join(REPO, "bench", "nginx-yardstick.conf")


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


# A started tally-api: its process, its HTTP port, the port of its internal
# address (TALLY_METRICS_ADDR: /metrics) and its log.
ApiProcess = collections.namedtuple("ApiProcess", "proc port metrics_port log_path")


def api_credentials():
    """(admin token, key HMAC secret) for one benchmark's tally-apis: the
    secret is 64 characters (tally-api takes 32 to 1024 bytes)."""
    return secrets.token_urlsafe(24), secrets.token_hex(32)


def start_api(ctx, credentials, log_name, args=()):
    """Starts tally-api on free loopback ports and waits for /readyz 200."""
    token, hmac_secret = credentials
    port, metrics_port = free_ports(2)
    log_path = ctx.path("logs", log_name)
    env = clean_env({"TALLY_DATABASE_URL": ctx.database_url, "TALLY_ADMIN_TOKEN": token,
                     "TALLY_KEY_HMAC_SECRET": hmac_secret,
                     "TALLY_HTTP_ADDR": f"127.0.0.1:{port}",
                     "TALLY_METRICS_ADDR": f"127.0.0.1:{metrics_port}"})
    log(f"starting tally-api on 127.0.0.1:{port}, /metrics on 127.0.0.1:{metrics_port} "
        f"({' '.join(args) or 'default settings'}; log {log_path})")
    proc = ctx.spawn("tally-api", [ctx.bin("tally-api")] + list(args), env, log_path)
    wait_until_ready("tally-api", proc, [log_path],
                     lambda: http_status(port, "/readyz")[0] == 200, 20)
    return ApiProcess(proc, port, metrics_port, log_path)


def stop_api(ctx, api, name):
    """Stops a tally-api; returns (its peak RSS in MB (VmHWM, read just
    before), its exit status)."""
    status = proc_status_kb(api.proc.pid)
    stop_process(name, api.proc)
    ctx.forget(api.proc)
    return (status[1] if status else 0) / 1024.0, api.proc.returncode


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


def wait_for_key_cache(api, keys, timeout_s=30):
    """Waits until the authorize cache holds every key (its /metrics), then
    checks that a sample of them (and the last one created) is allowed with
    204."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            cached = scrape(api.metrics_port).get("tally_api_key_cache_keys", 0)
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
        status, body = http_status(api.port, "/v1/authorize", {
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
    output_path = ctx.path("logs", "nginx.log")
    proc = ctx.spawn("nginx", [nginx, "-p", ndir, "-c", conf_path, "-e", log_path],
                     clean_env(), output_path)
    wait_until_ready("nginx", proc, [output_path, log_path],
                     lambda: http_status(port, "/v1/authorize", {"x-api-key": "probe"})[0] == 204,
                     10)
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


def run(ctx, opts):
    fig = Figures("api: GET /v1/authorize (allow path) and GET /v1/keys/{id}/quota under wrk")
    started = time.monotonic()
    credentials = api_credentials()
    token = credentials[0]
    setup_api = start_api(ctx, credentials, "api-setup.log", API_SETUP_ARGS)
    plan_id, keys, create_s = create_plan_and_keys(setup_api.port, token)
    setup_rss_mb = stop_api(ctx, setup_api, "tally-api (setup)")[0]

    api = start_api(ctx, credentials, "api.log", os.environ.get("BENCH_API_ARGS", "").split())
    port = api.port
    t0 = time.monotonic()
    wait_for_key_cache(api, keys)
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
    outcomes0 = scrape(api.metrics_port, AUTHORIZE_OUTCOMES, timeout=5)
    log(f"measuring GET /v1/authorize on tally-api: wrk -t{WRK_THREADS} -c{WRK_CONNECTIONS} "
        f"-d{WRK_SECONDS}s --latency, {API_KEY_COUNT} keys")
    authz = run_wrk(api_url, ["authorize", secrets_path], WRK_SECONDS, "api authorize",
                    [api.proc.pid])
    outcomes = delta(scrape(api.metrics_port, AUTHORIZE_OUTCOMES, timeout=5), outcomes0)
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
                    "api quota", [api.proc.pid])
    problems += wrk_problems("quota", quota)

    if api.proc.poll() is not None:
        raise BenchError(f"tally-api exited with status {api.proc.returncode} during the run; "
                         f"log:\n{tail(api.log_path)}")
    run_rss_mb, returncode = stop_api(ctx, api, "tally-api")
    peak_rss_mb = max(run_rss_mb, setup_rss_mb)
    if returncode not in (0, None):
        problems.append(f"tally-api exited with status {returncode} on SIGTERM")

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
    fig.note_other_load(f"{load:.0%} of the machine's CPU busy before the runs", load)
    fig.note("correctness     " + ("OK (every answer 2xx; authorize all 204)" if not problems
                                   else "FAILED"))
    fig.note_duration(started, "setup")

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
    fig.problems += problems
    return fig


# Programs this benchmark needs in --bin.
REQUIRES = ("tally-api", "tally-devbroker")
