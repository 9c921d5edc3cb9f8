#!/usr/bin/env python3
"""The container image, built and run the way a user would (issue #17).

    python3 tests/image/run.py [--keep-logs DIR] [--no-build]

Builds tally:local with `deploy/image.sh build` and tally-gateway:local with
`deploy/image.sh gateway` (podman here; the Debian base image is made once with debootstrap and then reused, as is podman's layer
cache, from deploy/image.sh's state directory), checks its runtime layers
stay within 40 MB over the base, then runs from the image, with
`podman run --network host`, against a throwaway local stack
(tools/stack.sh) and the Stripe stand-in (tests/stripe/standin.py):

- tally-migrate twice: the first applies every file of migrations/, the
  second nothing;
- tally-collector, tally-api and tally-reporter, read-only, no capabilities,
  secrets as mounted files; their processes must run as uid 10001;
- events produced with kcat (one re-sent) must be counted, the quota answered
  from them, and the stand-in's ledger must match;
- tally-healthcheck, through `podman healthcheck run`, passes against each
  running service and fails against a port nobody serves, a non-2xx answer
  and a service that was stopped;
- `podman stop` of each ends it by SIGTERM with exit status 0;
- the gateway image (tally-gateway:local, `deploy/image.sh gateway`), run
  like docker-compose.yml's `gateway` service (read-only with only its tmpfs
  /tmp and state volume writable, no capabilities, its limits) against that
  api and the dev broker: healthy by its own healthcheck, nginx and rsyslogd
  as uid 10002; requests with a key answered 200 by the demo upstream, an
  unknown key 401, one over the plan's quota 429 with Retry-After; exactly
  the allowed requests in the topic, from its source, and counted;
  `podman stop` exits 0 with rsyslog's read position saved.

Runs as root on a fresh machine after tools/install-deps.sh (podman, runc,
debootstrap, kcat). Python 3 standard library only. Prints "N passed, N
failed" like the other suites."""

import argparse
import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(REPO, "tests", "integration"))
import lib  # noqa: E402
from lib import Failure, check, clean_env, free_port, wait_until  # noqa: E402

IMAGE = "tally:local"
GATEWAY_IMAGE = "tally-gateway:local"
GATEWAY_UID = 10002
GATEWAY_SOURCE = "gw-image-test"
GATEWAY_REQUESTS = 20
RUNTIME_LAYERS_MAX_BYTES = 40 * 1000 * 1000
TALLY_UID = 10001
STRIPE_KEY = "sk_test_image_5d1c7e0b9a2f"
ADMIN_TOKEN = "image-test-admin-token-0123456789"


def podman_env():
    """Our environment plus the podman settings deploy/image.sh uses."""
    cp = subprocess.run([os.path.join(REPO, "deploy", "image.sh"), "env"], env=clean_env(),
                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=30, check=True)
    env = clean_env()
    for line in cp.stdout.decode().splitlines():
        name, _, value = line[len("export "):].partition("=")
        env[name] = value.strip("'")
    return env


class Podman:
    """Runs podman with the image scripts' settings; remembers every
    container it started, by name, so that cleanup removes exactly those."""

    def __init__(self, tag):
        self.env = podman_env()
        self.tag = tag
        self.names = []
        self.volumes = []

    def run(self, *args, timeout=120, check_rc=True):
        cp = subprocess.run(["podman"] + list(args), env=self.env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, timeout=timeout)
        out, err = cp.stdout.decode("utf-8", "replace"), cp.stderr.decode("utf-8", "replace")
        if check_rc and cp.returncode != 0:
            raise Failure("podman %s exited %d: %s" % (" ".join(args[:2]), cp.returncode,
                                                        (err or out).strip()[-1500:]))
        return cp.returncode, out, err

    def name(self, what):
        name = "tally-image-test-%s-%s" % (self.tag, what)
        self.names.append(name)
        return name

    def volume(self, what):
        """A new named volume, removed by remove_all: like compose's, it
        starts with the ownership of the image's directory it is mounted on."""
        name = "tally-image-test-%s-%s" % (self.tag, what)
        self.run("volume", "create", name)
        self.volumes.append(name)
        return name

    def logs(self, name):
        _, out, err = self.run("logs", name, check_rc=False)
        return "\n".join((out + err).splitlines()[-20:])

    def remove_all(self):
        for name in self.names:
            self.run("rm", "-f", "-t", "5", name, check_rc=False)
        for name in self.volumes:
            self.run("volume", "rm", "-f", name, check_rc=False)


# The hardening docker-compose.yml applies to every Tally container.
HARDENED = ["--network", "host", "--read-only", "--cap-drop", "ALL",
            "--security-opt", "no-new-privileges"]

# docker-compose.yml's gateway service on top of that: its tmpfs /tmp as the
# only writable place besides its state volume (podman's --read-only alone
# would also mount tmpfs on /run and /var/tmp, which compose does not, and
# hide a write there), its memory and process limits.
GATEWAY_FLAGS = ["--read-only-tmpfs=false", "--tmpfs", "/tmp:size=16m", "--memory", "256m",
                 "--pids-limit", "64"]


class Service:
    """One program in its own container, detached, with a podman healthcheck
    that runs `health_cmd` (by default tally-healthcheck against
    `health_url`); `extra` are more podman run flags."""

    def __init__(self, podman, what, argv, env, secrets, health_url, image=IMAGE,
                 health_cmd=None, extra=()):
        self.podman = podman
        self.name = podman.name(what)
        self.health_url = health_url
        args = ["run", "-d", "--name", self.name] + HARDENED + list(extra)
        for key, value in env.items():
            args += ["-e", "%s=%s" % (key, value)]
        for path, target in secrets:
            args += ["-v", "%s:%s:ro" % (path, target)]
        args += ["--health-cmd", json.dumps(health_cmd or ["tally-healthcheck", health_url]),
                 "--health-interval", "disable", image] + argv
        podman.run(*args)

    def state(self, field):
        _, out, _ = self.podman.run("inspect", "-f", "{{.State.%s}}" % field, self.name)
        return out.strip()

    def healthcheck(self):
        """podman's own healthcheck run: (exit status, output)."""
        rc, out, err = self.podman.run("healthcheck", "run", self.name, check_rc=False,
                                       timeout=30)
        return rc, (out + err).strip()

    def wait_healthy(self, timeout=60):
        def healthy():
            check(self.state("Running") == "true",
                  "%s exited: %s" % (self.name, self.podman.logs(self.name)))
            return self.healthcheck()[0] == 0
        wait_until("%s to be healthy" % self.name, healthy, timeout, interval=0.5,
                   on_timeout=lambda: "%s; logs:\n%s" % (self.healthcheck(),
                                                         self.podman.logs(self.name)))

    def processes(self):
        """{program name: set of real uids} of every process in the
        container, read from the host's /proc."""
        _, out, _ = self.podman.run("top", self.name, "hpid")
        found = {}
        for pid in out.split()[1:]:
            try:
                with open("/proc/%s/comm" % pid) as f:
                    comm = f.read().strip()
                with open("/proc/%s/status" % pid) as f:
                    uid = [int(line.split()[1]) for line in f if line.startswith("Uid:")][0]
            except FileNotFoundError:
                continue  # ended between podman top and now
            found.setdefault(comm, set()).add(uid)
        check(found, "no process found in %s: %r" % (self.name, out))
        return found

    def stop(self):
        """podman stop (SIGTERM, SIGKILL after 30 s); fails unless the
        program exited 0 on its own."""
        t0 = time.monotonic()
        rc, _, err = self.podman.run("stop", "-t", "30", self.name, check_rc=False, timeout=90)
        took = time.monotonic() - t0
        check(rc == 0, "podman stop %s exited %d: %s" % (self.name, rc, err.strip()))
        code = int(self.state("ExitCode"))
        check(code == 0, "%s exited %d after SIGTERM (%.1f s; 137 = killed): %s"
              % (self.name, code, took, self.podman.logs(self.name)))
        return took


def one_shot_healthcheck(podman, url):
    """tally-healthcheck in a throwaway container: (exit status, output)."""
    rc, out, err = podman.run("run", "--rm", *HARDENED, IMAGE, "tally-healthcheck", url,
                              check_rc=False, timeout=60)
    return rc, (out + err).strip()


class Context:
    def __init__(self, tmp, podman):
        self.tmp = tmp
        self.podman = podman
        self.registry = lib.Registry()
        self.stack_dir = os.path.join(tmp, "stack")
        self.stack_up = False

    def start_stack(self):
        cp = subprocess.run([os.path.join(REPO, "tools", "stack.sh"), "up", self.stack_dir,
                             "--fast"], env=clean_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, timeout=180)
        self.stack_up = True
        check(cp.returncode == 0, "tools/stack.sh up: %s" % cp.stdout.decode()[-1500:])
        env = {}
        with open(os.path.join(self.stack_dir, "env")) as f:
            for line in f:
                if line.startswith("export "):
                    name, _, value = line.strip()[len("export "):].partition("=")
                    env[name] = value.strip("'")
        self.db_url = env["TALLY_DATABASE_URL"]
        self.brokers = env["TALLY_KAFKA_BROKERS"]
        self.db = lib.DB(self.db_url)

    def secret_file(self, name, text):
        """A secret as a file the container's uid 10001 can read (mounted
        on its own, so this directory's mode does not matter)."""
        path = os.path.join(self.tmp, "secrets", name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(text + "\n")
        os.chmod(path, 0o444)
        return path

    def start_standin(self):
        self.standin_port = free_port()
        env = clean_env({"STRIPE_STANDIN_API_KEY": STRIPE_KEY})
        self.standin = lib.Proc(self.registry, "standin",
                                [sys.executable, os.path.join(REPO, "tests", "stripe", "standin.py"),
                                 "--port", str(self.standin_port), "--customers", "*",
                                 "--meters", "api_calls"],
                                os.path.join(self.tmp, "standin.log"), env=env)
        self.stripe_url = "http://127.0.0.1:%d" % self.standin_port
        wait_until("the Stripe stand-in", lambda: "listening on" in self.standin.log_text()
                   or not self.standin.alive(), 20)
        check(self.standin.alive(), "stand-in exited: %s" % self.standin.log_tail())

    def clean_up(self):
        self.podman.remove_all()
        self.registry.stop_all()
        if self.stack_up:
            subprocess.run([os.path.join(REPO, "tools", "stack.sh"), "down", self.stack_dir],
                           env=clean_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           timeout=120)


# ---- steps -------------------------------------------------------------------------


def build(ctx, log_dir, command="build", tag=IMAGE):
    """`deploy/image.sh build` (tally:local) or `gateway` (tally-gateway:local)."""
    t0 = time.monotonic()
    log_path = os.path.join(log_dir, "%s.log" % command)
    with open(log_path, "wb") as log:
        cp = subprocess.run([os.path.join(REPO, "deploy", "image.sh"), command],
                            env=clean_env({"IMAGE_TAG": IMAGE, "IMAGE_GATEWAY_TAG": GATEWAY_IMAGE,
                                           "IMAGE_ENGINE": "podman"}), stdout=log,
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, timeout=900)
    with open(log_path, encoding="utf-8", errors="replace") as f:
        tail = "\n".join(f.read().splitlines()[-25:])
    check(cp.returncode == 0, "deploy/image.sh %s exited %d:\n%s" % (command, cp.returncode, tail))
    ctx.podman.run("image", "inspect", tag)
    return "%s built in %.0f s" % (tag, time.monotonic() - t0)


def image_shape(ctx):
    _, out, _ = ctx.podman.run("image", "inspect", IMAGE)
    image = json.loads(out)[0]
    config = image.get("Config", {})
    check(config.get("User") == "tally:tally", "image user: %r" % config.get("User"))
    health = image.get("Healthcheck") or config.get("Healthcheck") or {}
    check(health.get("Test", [])[:2] == ["CMD", "tally-healthcheck"],
          "image healthcheck: %r" % health)
    base = open(os.path.join(REPO, "deploy", "Dockerfile")).read().split("FROM ", 1)[1].split()[0]
    _, out, _ = ctx.podman.run("image", "inspect", "-f", "{{.Size}}", base)
    base_size = int(out.strip())
    extra = int(image["Size"]) - base_size
    check(extra <= RUNTIME_LAYERS_MAX_BYTES,
          "the runtime layers add %.1f MB over %s (at most %.0f MB)"
          % (extra / 1e6, base, RUNTIME_LAYERS_MAX_BYTES / 1e6))
    # perl-base is part of every Debian base (essential); psql's client
    # tools and curl must not come on top of it.
    for program in ("psql", "pg_isready", "curl"):
        rc, _, _ = ctx.podman.run("run", "--rm", "--network", "none", IMAGE, "sh", "-c",
                                  "command -v " + program, check_rc=False)
        check(rc != 0, "%s is in the image" % program)
    return "runtime layers %.1f MB over %s (%.1f MB)" % (extra / 1e6, base, base_size / 1e6)


def migrations_twice(ctx):
    url_file = ctx.secret_file("database_url", ctx.db_url)
    argv = ["run", "--rm"] + HARDENED + ["-e", "TALLY_DATABASE_URL_FILE=/run/secrets/database_url",
                                        "-v", url_file + ":/run/secrets/database_url:ro",
                                        IMAGE, "tally-migrate"]
    expected = sorted(name[:-4] for name in os.listdir(os.path.join(REPO, "migrations"))
                      if name[:3].isdigit() and name[3] == "_" and name.endswith(".sql"))
    _, first, _ = ctx.podman.run(*argv)
    applied = [line.split()[1] for line in first.splitlines() if line.startswith("applying ")]
    check(applied == expected, "first run applied %s, expected %s" % (applied, expected))
    _, second, err = ctx.podman.run(*argv)
    check(second.strip() == "", "second run was not a no-op: %r %r" % (second, err))
    recorded = [row[0] for row in ctx.db.query("SELECT version FROM schema_migrations ORDER BY 1")]
    check(recorded == expected, "schema_migrations holds %s" % recorded)
    return "%d migrations, then none" % len(expected)


def start_services(ctx):
    url_file = ctx.secret_file("database_url", ctx.db_url)
    db_secret = [(url_file, "/run/secrets/database_url")]
    db_env = {"TALLY_DATABASE_URL_FILE": "/run/secrets/database_url", "TALLY_LOG_LEVEL": "info"}
    ports = {name: free_port() for name in ("collector", "api", "api_metrics", "reporter")}
    ctx.ports = ports
    ctx.collector = Service(ctx.podman, "collector", ["tally-collector"], dict(
        db_env, TALLY_KAFKA_BROKERS=ctx.brokers,
        TALLY_METRICS_ADDR="127.0.0.1:%d" % ports["collector"]),
        db_secret, "http://127.0.0.1:%d/healthz" % ports["collector"])
    ctx.api = Service(ctx.podman, "api", ["tally-api"], dict(
        db_env, TALLY_ADMIN_TOKEN_FILE="/run/secrets/admin_token",
        TALLY_KEY_HMAC_SECRET_FILE="/run/secrets/key_hmac_secret",
        TALLY_HTTP_ADDR="127.0.0.1:%d" % ports["api"],
        TALLY_METRICS_ADDR="127.0.0.1:%d" % ports["api_metrics"]),
        db_secret + [(ctx.secret_file("admin_token", ADMIN_TOKEN), "/run/secrets/admin_token"),
                     (ctx.secret_file("key_hmac_secret", "image-test-hmac-secret-9f8e7d6c5b4a"),
                      "/run/secrets/key_hmac_secret")],
        "http://127.0.0.1:%d/readyz" % ports["api"])
    ctx.reporter = Service(ctx.podman, "reporter", [
        "tally-reporter", "--report-interval-s", "2", "--report-settle-s", "0"], dict(
        db_env, TALLY_STRIPE_API_KEY_FILE="/run/secrets/stripe_api_key",
        TALLY_STRIPE_API_BASE=ctx.stripe_url,
        TALLY_METRICS_ADDR="127.0.0.1:%d" % ports["reporter"]),
        db_secret + [(ctx.secret_file("stripe_api_key", STRIPE_KEY),
                      "/run/secrets/stripe_api_key")],
        "http://127.0.0.1:%d/healthz" % ports["reporter"])
    for service in (ctx.collector, ctx.api, ctx.reporter):
        service.wait_healthy()
    for service in (ctx.collector, ctx.api, ctx.reporter):
        found = service.processes()
        check(all(uids == {TALLY_UID} for uids in found.values()),
              "%s's processes run as %s, not uid %d" % (service.name, found, TALLY_UID))
    return "three services healthy, each as uid %d" % TALLY_UID


def api_call(ctx, method, path, body=None, admin=True, headers=None):
    conn = http.client.HTTPConnection("127.0.0.1", ctx.ports["api"], timeout=10)
    h = dict(headers or {})
    if admin:
        h["Authorization"] = "Bearer " + ADMIN_TOKEN
    data = None
    if body is not None:
        data = json.dumps(body)
        h["Content-Type"] = "application/json"
    conn.request(method, path, body=data, headers=h)
    r = conn.getresponse()
    text = r.read().decode("utf-8", "replace")
    conn.close()
    return r.status, (json.loads(text) if text and text[0] in "{[" else None)


def count_answer_report(ctx):
    tag = "%x" % int(time.time())
    customer = "cus_image_" + tag
    st, plan = api_call(ctx, "POST", "/v1/plans", {
        "name": "Image " + tag, "quota": {"limit": 100000, "period": "DAY"},
        "stripeMeterEventName": "api_calls"})
    check(st == 201, "create plan: %s %s" % (st, plan))
    st, key = api_call(ctx, "POST", "/v1/keys", {"name": "image", "stripeCustomerId": customer})
    check(st == 201 and key.get("value"), "create key: %s %s" % (st, key))
    st, body = api_call(ctx, "PUT", "/v1/keys/%s/plan" % key["id"], {"planId": plan["id"]})
    check(st == 200, "attach plan: %s %s" % (st, body))

    # 120 events of 1 to 3 units, and one of them sent twice: 120 requests.
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 30))
    events = [{"specversion": "1.0", "id": "image-%s-%d" % (tag, i), "source": "image-test",
               "type": "api.request", "subject": key["id"], "time": stamp,
               "data": {"method": "GET", "endpoint": "/v1/image", "units": 1 + i % 3}}
              for i in range(120)]
    path = os.path.join(ctx.tmp, "events.jsonl")
    with open(path, "w") as f:
        for event in events + [events[7]]:
            f.write(json.dumps(event, separators=(",", ":")) + "\n")
    lib.run(["kcat", "-P", "-b", ctx.brokers, "-t", "usage-events", "-l", path], timeout=60)
    requests, units = len(events), sum(e["data"]["units"] for e in events)

    def usage():
        st, body = api_call(ctx, "GET", "/v1/keys/%s/usage?granularity=day" % key["id"])
        check(st == 200, "usage: %s %s" % (st, body))
        return (sum(i["requests"] for i in body["items"]), sum(i["units"] for i in body["items"]))
    wait_until("the collector to count %d requests" % requests,
               lambda: usage() == (requests, units), 90, interval=0.5,
               on_timeout=lambda: "usage %s; collector:\n%s" % (usage(), ctx.podman.logs(
                   ctx.collector.name)))

    def me_quota():
        st, me = api_call(ctx, "GET", "/v1/me/quota", admin=False,
                          headers={"x-api-key": key["value"]})
        check(st == 200, "me/quota: %s %s" % (st, me))
        return me
    wait_until("the quota to answer %d units used" % units, lambda: me_quota()["used"] == units,
               30, interval=0.5, on_timeout=lambda: "me/quota %s" % me_quota())
    st, _ = api_call(ctx, "GET", "/v1/authorize", admin=False, headers={
        "x-api-key": key["value"], "X-Original-Method": "GET", "X-Original-URI": "/v1/x"})
    check(st == 204, "authorize within the quota: %s" % st)

    def ledger():
        with urllib.request.urlopen(ctx.stripe_url + "/_standin/ledger", timeout=10) as r:
            body = json.loads(r.read().decode())
        return body["meter_events"].get(customer, {}).get("api_calls", 0)
    wait_until("the stand-in's ledger to hold %d units" % units, lambda: ledger() == units, 90,
               interval=1.0, on_timeout=lambda: "ledger %d; reporter:\n%s" % (
                   ledger(), ctx.podman.logs(ctx.reporter.name)))
    return "%d requests, %d units counted, answered and in the ledger" % (requests, units)


def scripted_server(answers):
    """A loopback server giving each connection the next of `answers`
    (bytes; None closes without a word); returns its port."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()

    def serve():
        with server:
            for answer in answers:
                conn, _ = server.accept()
                with conn:
                    conn.settimeout(10)
                    conn.recv(4096)
                    if answer is not None:
                        conn.sendall(answer)
    threading.Thread(target=serve, daemon=True).start()
    return server.getsockname()[1]


def healthchecks_fail_honestly(ctx):
    # Against a port nobody serves, and a 404.
    rc, out = one_shot_healthcheck(ctx.podman, "http://127.0.0.1:%d/healthz" % free_port())
    check(rc == 1 and "unhealthy" in out, "no listener: exit %d, %r" % (rc, out))
    rc, out = one_shot_healthcheck(ctx.podman, ctx.stripe_url + "/no-such-route")
    check(rc == 1 and "unhealthy" in out, "a 404: exit %d, %r" % (rc, out))
    # A 503, something that is not HTTP, a connection closed at once, a 204.
    answers = [b"HTTP/1.1 503 Service Unavailable\r\n\r\n", b"SSH-2.0-x\r\n", None,
               b"HTTP/1.0 204 No Content\r\n\r\n"]
    port = scripted_server(answers)
    got = [one_shot_healthcheck(ctx.podman, "http://127.0.0.1:%d/healthz" % port)[0]
           for _ in answers]
    check(got == [1, 1, 1, 0], "503, not HTTP, closed, 204: exit statuses %s" % got)
    rc, out = one_shot_healthcheck(ctx.podman, "http://127.0.0.1:%d/healthz"
                                   % ctx.ports["collector"])
    check(rc == 0 and "healthy" in out, "running collector: exit %d, %r" % (rc, out))
    return "refused, 404, 503, not HTTP and closed fail; 204 and a running collector pass"


def start_gateway(ctx):
    """The gateway image run as docker-compose.yml's `gateway` service, its
    addresses on this host: tally-api and the dev broker of this test."""
    port, demo_port = free_port(), free_port()
    check(port != demo_port, "free_port gave %d twice" % port)
    ctx.gateway_port = port
    volume = ctx.gateway_volume = ctx.podman.volume("gateway-state")
    ctx.gateway = Service(ctx.podman, "gateway", [], {
        "GATEWAY_TALLY_API": "127.0.0.1:%d" % ctx.ports["api"],
        "GATEWAY_LISTEN": "127.0.0.1:%d" % port,
        "GATEWAY_DEMO_LISTEN": "127.0.0.1:%d" % demo_port,
        "GATEWAY_SOURCE": GATEWAY_SOURCE,
        "GATEWAY_KAFKA_BROKERS": ctx.brokers,
        "GATEWAY_KAFKA_TOPIC": "usage-events"}, [],
        "http://127.0.0.1:%d/health" % port, image=GATEWAY_IMAGE,
        health_cmd=["tally-gateway-healthcheck"],
        extra=GATEWAY_FLAGS + ["-v", volume + ":/var/lib/tally-gateway"])
    ctx.gateway.wait_healthy(timeout=30)
    found = ctx.gateway.processes()
    check({"nginx", "rsyslogd"} <= set(found), "gateway processes: %s" % found)
    check(all(uids == {GATEWAY_UID} for uids in found.values()),
          "the gateway's processes run as %s, not uid %d" % (found, GATEWAY_UID))
    status, _, _ = gateway_get(ctx, "/health")
    check(status == 200, "GET /health: %d" % status)
    return "healthy (its healthcheck and /health 200); %s, all as uid %d" % (
        ", ".join(sorted(found)), GATEWAY_UID)


def gateway_get(ctx, path, api_key=None):
    """GET through the gateway: (status, headers, body text)."""
    conn = http.client.HTTPConnection("127.0.0.1", ctx.gateway_port, timeout=10)
    conn.request("GET", path, headers={"x-api-key": api_key} if api_key else {})
    r = conn.getresponse()
    body = r.read().decode("utf-8", "replace")
    conn.close()
    return r.status, r, body


def gateway_key(ctx, quota):
    """A new key on a plan of `quota` requests a day: (key id, value)."""
    tag = "%x" % int(time.time() * 1000)
    st, plan = api_call(ctx, "POST", "/v1/plans", {
        "name": "Gateway " + tag, "quota": {"limit": quota, "period": "DAY"}})
    check(st == 201, "create plan: %s %s" % (st, plan))
    st, key = api_call(ctx, "POST", "/v1/keys", {"name": "gateway-" + tag})
    check(st == 201 and key.get("value"), "create key: %s %s" % (st, key))
    st, body = api_call(ctx, "PUT", "/v1/keys/%s/plan" % key["id"], {"planId": plan["id"]})
    check(st == 200, "attach plan: %s %s" % (st, body))
    return key["id"], key["value"]


def gateway_enforces(ctx):
    """N requests allowed up to the plan's quota of N, then 429; an unknown
    key 401. Remembers the key for gateway_counts."""
    key_id, value = gateway_key(ctx, GATEWAY_REQUESTS)
    ctx.gateway_key_id = key_id
    status, _, body = gateway_get(ctx, "/items/1", "unknown-key-0123456789abcdef")
    check(status == 401 and '"unauthorized"' in body, "unknown key: %d %s" % (status, body))
    for i in range(GATEWAY_REQUESTS):
        status, _, body = gateway_get(ctx, "/items/%d" % i, value)
        check(status == 200, "request %d: %d %s" % (i + 1, status, body))
        # The demo upstream echoes what nginx passed it: the key's id, never the key.
        upstream = json.loads(body)
        check(upstream["keyId"] == key_id and upstream["apiKey"] == "",
              "the upstream saw %s" % upstream)
    status, r, body = gateway_get(ctx, "/items/over", value)
    check(status == 429 and '"quota_exceeded"' in body, "over the quota: %d %s" % (status, body))
    retry_after = r.getheader("Retry-After") or ""
    check(retry_after.isdigit() and int(retry_after) >= 1, "Retry-After %r" % retry_after)
    return "%d x 200 from the demo upstream (key id passed, key not), unknown key 401, " \
        "over the quota 429 (Retry-After %s s)" % (GATEWAY_REQUESTS, retry_after)


def gateway_counts(ctx):
    """The collector counts exactly the allowed requests, each produced once
    by the container's rsyslog with its source; the refusals not at all."""
    key_id = ctx.gateway_key_id

    def usage():
        st, body = api_call(ctx, "GET", "/v1/keys/%s/usage?granularity=day" % key_id)
        check(st == 200, "usage: %s %s" % (st, body))
        return sum(i["requests"] for i in body["items"])
    wait_until("the collector to count %d gateway requests" % GATEWAY_REQUESTS,
               lambda: usage() >= GATEWAY_REQUESTS, 60, interval=0.5,
               on_timeout=lambda: "usage %d; gateway:\n%s" % (
                   usage(), ctx.podman.logs(ctx.gateway.name)))
    # A refusal logged by mistake would come right after the last allowed
    # request: give it a second to reach the collector.
    time.sleep(1.0)
    check(usage() == GATEWAY_REQUESTS, "usage %d, not %d" % (usage(), GATEWAY_REQUESTS))
    # Every event from the container's source, whatever its subject: a
    # logged refusal (the 401 has no key id, the 429 has this key's) would
    # make 21 or more.
    events = [json.loads(m["value"]) for m in lib.kcat_consume_all(ctx.brokers, "usage-events")
              if m["value"] and json.loads(m["value"]).get("source") == GATEWAY_SOURCE]
    check(len(events) == GATEWAY_REQUESTS, "%d events from %s in the topic"
          % (len(events), GATEWAY_SOURCE))
    check({e.get("subject") for e in events} == {key_id},
          "subjects %s" % {e.get("subject") for e in events})
    ids = {e["id"] for e in events}
    check(len(ids) == GATEWAY_REQUESTS and all(i.isalnum() for i in ids), "ids %s" % ids)
    # The collector recorded each (source, id) pair: the deduplication rows.
    pairs = ", ".join("tally_event_hash('%s', '%s')" % (GATEWAY_SOURCE, i) for i in sorted(ids))
    recorded = int(ctx.db.scalar("SELECT count(*) FROM event_ids WHERE event_hash IN (%s)"
                                 % pairs))
    check(recorded == GATEWAY_REQUESTS, "%d of the events' (source, id) recorded" % recorded)
    return "%d counted, %d events in the topic from source %s, none for the refusals" % (
        GATEWAY_REQUESTS, len(events), GATEWAY_SOURCE)


def gateway_oneshot(ctx, program, *args, env=(), volume=None, workdir="/"):
    """A program of the gateway image in a throwaway container: (exit
    status, output)."""
    argv = ["run", "--rm", *HARDENED, *GATEWAY_FLAGS, "--entrypoint", program, "-w", workdir]
    for item in env:
        argv += ["-e", item]
    if volume:
        argv += ["-v", volume + ":/var/lib/tally-gateway"]
    rc, out, err = ctx.podman.run(*argv, GATEWAY_IMAGE, *args, check_rc=False, timeout=60)
    return rc, (out + err).strip()


# Values a hostile or careless environment could hand the entrypoint: each
# would change nginx's or rsyslog's configuration if pasted in as text.
HOSTILE_GATEWAY_VALUES = [
    ("GATEWAY_SOURCE", 'gw";auth_request off;#'),
    ("GATEWAY_SOURCE", "$host"),
    ("GATEWAY_SOURCE", "gw\nauth_request off;"),
    ("GATEWAY_TALLY_API", "api:8080; }"),
    ("GATEWAY_LISTEN", "8000 reuseport"),
    ("GATEWAY_DEMO_LISTEN", "127.0.0.1:8001;"),
    ("GATEWAY_KAFKA_TOPIC", "usage events"),
    ("GATEWAY_KAFKA_BROKERS", 'kafka:9092"]'),
]


def gateway_refuses_bad_values(ctx):
    """The entrypoint exits 2, naming the variable, before nginx or rsyslog
    reads anything, for every value that is not a plain address or name."""
    for name, value in HOSTILE_GATEWAY_VALUES:
        env = ["GATEWAY_KAFKA_BROKERS=127.0.0.1:9092", "%s=%s" % (name, value)]
        rc, out = gateway_oneshot(ctx, "/usr/local/bin/tally-gateway", env=env)
        check(rc == 2 and ("%s=" % name) in out and "is not valid" in out,
              "%s=%r: exit %d, %r" % (name, value, rc, out))
    return "%d hostile values refused with exit 2" % len(HOSTILE_GATEWAY_VALUES)


def stop_gateway(ctx):
    took = ctx.gateway.stop()
    # Its healthcheck, run again now that nobody answers on its port, fails.
    rc, out = gateway_oneshot(ctx, "tally-gateway-healthcheck",
                              env=["GATEWAY_LISTEN=127.0.0.1:%d" % ctx.gateway_port])
    check(rc == 1 and "unhealthy" in out, "stopped gateway's healthcheck: %d %r" % (rc, out))
    # rsyslog stopped cleanly: it saved its read position in the volume at
    # the end of the usage log (imfile may write the file earlier too, so
    # only the offset tells a clean stop).
    rc, out = gateway_oneshot(ctx, "bash", "-c", "stat -c %s logs/tally-usage.log; "
                              "cat rsyslog/imfile-state:*", volume=ctx.gateway_volume,
                              workdir="/var/lib/tally-gateway")
    size, _, state = out.partition("\n")
    check(rc == 0 and size.isdigit() and '"curr_offs": %s,' % size in state,
          "rsyslog's read position after the stop: %d %r" % (rc, out))
    return "exit 0 after SIGTERM in %.1f s (grace 30 s); its healthcheck then fails; " \
        "rsyslog's read position saved at the log's end" % took


def stop_cleanly(ctx):
    took = {}
    for service in (ctx.reporter, ctx.collector, ctx.api):
        took[service.name.rsplit("-", 1)[1]] = service.stop()
        # The same check the container ran, now against the stopped
        # service's port: it must fail.
        rc, out = one_shot_healthcheck(ctx.podman, service.health_url)
        check(rc == 1, "%s stopped, yet its healthcheck exits %d: %r" % (service.name, rc, out))
    return "exit 0 after SIGTERM (%s); their healthchecks then fail" % ", ".join(
        "%s %.1f s" % kv for kv in took.items())


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--keep-logs", help="copy the logs here")
    parser.add_argument("--no-build", action="store_true",
                        help="use the tally:local already built")
    args = parser.parse_args()
    if shutil.which("podman") is None:
        print("podman not found: run tools/install-deps.sh", file=sys.stderr)
        return 1
    t0 = time.monotonic()
    tmp = tempfile.mkdtemp(prefix="tally-image-test-")
    ctx = Context(tmp, Podman("%x%04x" % (int(time.time()), os.getpid() & 0xffff)))
    steps = [("migrations_twice", migrations_twice), ("services_start", start_services),
             ("count_answer_report", count_answer_report),
             ("healthchecks_fail_honestly", healthchecks_fail_honestly),
             ("gateway_start", start_gateway), ("gateway_enforces", gateway_enforces),
             ("gateway_counts", gateway_counts), ("gateway_stop", stop_gateway),
             ("gateway_refuses_bad_values", gateway_refuses_bad_values),
             ("stop_cleanly", stop_cleanly)]
    if not args.no_build:
        steps.insert(0, ("build", lambda c: build(c, tmp)))
        steps.insert(1, ("build_gateway", lambda c: build(c, tmp, "gateway", GATEWAY_IMAGE)))
    steps.insert(2 if not args.no_build else 0, ("image_shape", image_shape))
    passed = failed = 0
    try:
        for i, (name, step) in enumerate(steps):
            if name == "migrations_twice":
                ctx.start_stack()
                ctx.start_standin()
            t1 = time.monotonic()
            try:
                detail = step(ctx)
                passed += 1
                print("PASS %s (%.1f s): %s" % (name, time.monotonic() - t1, detail), flush=True)
            except (Failure, subprocess.SubprocessError, OSError, KeyError, ValueError) as e:
                failed += 1
                print("FAIL %s (%.1f s): %s" % (name, time.monotonic() - t1, e), flush=True)
                # Each step needs the ones before it.
                for later, _ in steps[i + 1:]:
                    print("SKIP %s: %s failed" % (later, name))
                break
    finally:
        ctx.clean_up()
        if args.keep_logs:
            shutil.copytree(tmp, args.keep_logs, dirs_exist_ok=True,
                            ignore=shutil.ignore_patterns("data", "secrets"))
        shutil.rmtree(tmp, ignore_errors=True)
    print("%d passed, %d failed (%.0f s)" % (passed, failed, time.monotonic() - t0))
    return 0 if failed == 0 and passed == len(steps) else 1


if __name__ == "__main__":
    sys.exit(main())
