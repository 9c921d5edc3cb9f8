"""The gateway recipe (deploy/gateway/) under test and under benchmark: the
stack, tally-api, tally-collector, nginx with the shipped configuration
(only its ports changed) and rsyslog with the shipped configuration, each
on free ports with its own directories under one temporary directory.

Python 3 standard library only; processes go through lib.Registry so that
every one is stopped by its own pid whatever happens."""

import http.client
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "integration"))
import lib  # noqa: E402
from lib import REPO, Failure, check, clean_env, free_port  # noqa: E402

GATEWAY_DIR = os.path.join(REPO, "deploy", "gateway")
ADMIN_TOKEN = "gw-admin-token-5b1e9d7c3a"
KEY_HMAC_SECRET = "gw-key-hmac-secret-2c8f4a6e0d9b1735"
SOURCE = "gw-test"
# The example's addresses, replaced by free ports (deploy/gateway/nginx/nginx.conf).
EXAMPLE_API = "127.0.0.1:8080"
EXAMPLE_GATEWAY = "127.0.0.1:8000"
EXAMPLE_APP = "127.0.0.1:8001"


class Stack:
    """PostgreSQL and the dev broker (tools/stack.sh, --fast), migrated."""

    def __init__(self, tmp):
        self.dir = os.path.join(tmp, "stack")
        self._run("up")
        env = {}
        with open(os.path.join(self.dir, "env")) as f:
            for line in f:
                m = re.match(r"export (\w+)=(.*)$", line.strip())
                if m:
                    env[m.group(1)] = m.group(2).strip("'\"")
        self.db_url = env["TALLY_DATABASE_URL"]
        self.brokers = env["TALLY_KAFKA_BROKERS"]
        lib.run([os.path.join(REPO, "tools", "migrate.sh")],
                env=clean_env({"TALLY_DATABASE_URL": self.db_url}))
        self.db = lib.DB(self.db_url)

    def _run(self, command):
        env = clean_env({"TALLY_BIN_DIR": os.path.join(REPO, "build", "bin")})
        argv = [os.path.join(REPO, "tools", "stack.sh"), command, self.dir]
        cp = subprocess.run(argv + (["--fast"] if command == "up" else []),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
                            stdin=subprocess.DEVNULL, timeout=180, start_new_session=True)
        if cp.returncode != 0:
            raise Failure("tools/stack.sh %s: %s" % (command, cp.stdout.decode()[-1500:]))

    def broker_signal(self, sig):
        """SIGUSR1: every broker down; SIGUSR2: back (tally-devbroker)."""
        with open(os.path.join(self.dir, "devbroker.pid")) as f:
            os.kill(int(f.read().split()[0]), sig)

    def down(self):
        self._run("down")


def wait_http(url, proc, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        check(proc.alive(), "%s exited: %s" % (proc.name, proc.log_tail()))
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.1)
    raise Failure("%s did not answer %s within %d s" % (proc.name, url, timeout))


class Api:
    def __init__(self, registry, tmp, bin_dir, db_url, refresh_ms=200, name="api"):
        self.registry, self.tmp, self.bin_dir, self.db_url = registry, tmp, bin_dir, db_url
        self.name = name
        self.refresh_ms = refresh_ms
        self.port = free_port()
        self.metrics_port = free_port()
        self.proc = None
        self.conn = None
        self.start()

    def start(self):
        env = clean_env({"TALLY_DATABASE_URL": self.db_url, "TALLY_ADMIN_TOKEN": ADMIN_TOKEN,
                         "TALLY_KEY_HMAC_SECRET": KEY_HMAC_SECRET,
                         "TALLY_HTTP_ADDR": "127.0.0.1:%d" % self.port,
                         "TALLY_METRICS_ADDR": "127.0.0.1:%d" % self.metrics_port,
                         "TALLY_KEY_REFRESH_MS": str(self.refresh_ms)})
        self.proc = lib.Proc(self.registry, self.name,
                             [os.path.join(self.bin_dir, "tally-api")],
                             os.path.join(self.tmp, self.name + ".log"), env=env)
        wait_http("http://127.0.0.1:%d/healthz" % self.port, self.proc)

    def stop(self):
        rc, _, killed = self.proc.terminate(15)
        check(not killed and rc == 0, "tally-api exit %r: %s" % (rc, self.proc.log_tail()))
        report = lib.sanitizer_report(self.proc.log_text())
        check(report is None, "tally-api: sanitizer report:\n%s" % report)

    def admin(self, method, path, body=None):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            conn.request(method, path, body=json.dumps(body) if body is not None else None,
                         headers={"Authorization": "Bearer " + ADMIN_TOKEN,
                                  "Content-Type": "application/json"})
            r = conn.getresponse()
            text = r.read().decode()
            check(r.status < 300, "%s %s: %d %s" % (method, path, r.status, text))
            return json.loads(text) if text else None
        finally:
            conn.close()

    def plan(self, **fields):
        fields.setdefault("name", "gateway test plan")
        return self.admin("POST", "/v1/plans", fields)

    def key(self, plan, **fields):
        fields["planId"] = plan["id"]
        return self.admin("POST", "/v1/keys", fields)


class Collector:
    def __init__(self, registry, tmp, bin_dir, stack):
        self.port = free_port()
        env = clean_env({"TALLY_DATABASE_URL": stack.db_url, "TALLY_KAFKA_BROKERS": stack.brokers,
                         "TALLY_METRICS_ADDR": "127.0.0.1:%d" % self.port})
        self.proc = lib.Proc(registry, "collector", [os.path.join(bin_dir, "tally-collector")],
                             os.path.join(tmp, "collector.log"), env=env)
        wait_http("http://127.0.0.1:%d/healthz" % self.port, self.proc, timeout=60)

    def metrics(self):
        with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % self.port, timeout=5) as r:
            return lib.Metrics(lib.parse_metrics(r.read().decode()))


def nginx_conf_dir(tmp, name, api_port, extra_server_lines=(), extra_http=""):
    """A copy of deploy/gateway/nginx/ in tmp/name/conf with the example's
    addresses replaced by free ports; returns (prefix, conf file, ports)."""
    prefix = os.path.join(tmp, name)
    conf_dir = os.path.join(prefix, "conf")
    os.makedirs(os.path.join(prefix, "logs"))
    os.makedirs(os.path.join(prefix, "temp"))
    shutil.copytree(os.path.join(GATEWAY_DIR, "nginx"), conf_dir)
    ports = {"gateway": free_port(), "app": free_port()}
    path = os.path.join(conf_dir, "nginx.conf")
    with open(path) as f:
        text = f.read()
    for old, new in ((EXAMPLE_API, "127.0.0.1:%d" % api_port),
                     (EXAMPLE_GATEWAY, "127.0.0.1:%d" % ports["gateway"]),
                     (EXAMPLE_APP, "127.0.0.1:%d" % ports["app"])):
        check(old in text, "the example nginx.conf no longer names %s" % old)
        text = text.replace(old, new)
    text = text.replace('set $tally_source "gw-demo";', 'set $tally_source "%s";' % SOURCE)
    lines = "".join("        %s\n" % line for line in extra_server_lines)
    text = text.replace('        set $tally_source', lines + '        set $tally_source', 1)
    if extra_http:
        text = text.replace("    include tally-http.conf;\n",
                            "    include tally-http.conf;\n" + extra_http, 1)
    with open(path, "w") as f:
        f.write(text)
    return prefix, path, ports


class Nginx:
    """nginx with its own prefix, conf, pid and temp directories. Started as
    root its workers run as nobody (the example sets no `user`), so the
    directories they read are made world-readable."""

    def __init__(self, registry, tmp, name, api_port, extra_server_lines=(), extra_http=""):
        self.prefix, self.conf, ports = nginx_conf_dir(tmp, name, api_port, extra_server_lines,
                                                       extra_http)
        self.port, self.app_port = ports["gateway"], ports["app"]
        self.usage_log = os.path.join(self.prefix, "logs", "tally-usage.log")
        lib.run(["nginx", "-t", "-q", "-p", self.prefix, "-c", self.conf])
        self.proc = lib.Proc(registry, name, ["nginx", "-p", self.prefix, "-c", self.conf,
                                              "-g", "daemon off;"],
                             os.path.join(self.prefix, "logs", "stdout.log"))
        wait_http("http://127.0.0.1:%d/health" % self.port, self.proc)

    def error_log(self):
        try:
            with open(os.path.join(self.prefix, "logs", "error.log")) as f:
                return f.read()
        except OSError:
            return ""

    def usage_lines(self):
        try:
            with open(self.usage_log) as f:
                return f.read().splitlines()
        except OSError:
            return []

    def stop(self):
        self.proc.terminate(10)


class Rsyslog:
    """A separate rsyslogd on the shipped configuration: its own -f, pid
    file and work directory; never the system's."""

    def __init__(self, registry, tmp, usage_log, brokers, topic="usage-events"):
        self.registry = registry
        self.dir = os.path.join(tmp, "rsyslog")
        os.makedirs(os.path.join(self.dir, "work"), exist_ok=True)
        self.env = clean_env({"GATEWAY_USAGE_LOG": usage_log,
                              "GATEWAY_RSYSLOG_WORK_DIR": os.path.join(self.dir, "work"),
                              "GATEWAY_KAFKA_BROKERS": brokers, "GATEWAY_KAFKA_TOPIC": topic})
        self.conf = os.path.join(GATEWAY_DIR, "rsyslog", "tally.conf")
        self.proc = None
        self.start()

    def start(self):
        pid_file = os.path.join(self.dir, "rsyslogd.pid")
        if os.path.exists(pid_file):
            os.unlink(pid_file)  # left by a killed instance
        self.proc = lib.Proc(self.registry, "rsyslogd",
                             ["rsyslogd", "-n", "-f", self.conf, "-i", pid_file],
                             os.path.join(self.dir, "rsyslogd.log"), env=self.env)
        time.sleep(0.3)
        check(self.proc.alive(), "rsyslogd exited: %s" % self.proc.log_tail())

    def kill9(self):
        self.proc.kill()

    def stop(self):
        self.proc.terminate(20)


class Answer:
    def __init__(self, status, headers, body):
        self.status, self.headers, self.body = status, headers, body

    def header(self, name):
        return self.headers.get(name.lower())

    def json(self):
        return json.loads(self.body)

    def __repr__(self):
        return "HTTP %d %r %s" % (self.status, self.headers, self.body[:200])


class Client:
    """Keep-alive requests to one port."""

    def __init__(self, port, timeout=30):
        self.port, self.timeout, self.conn = port, timeout, None

    def get(self, path, key=None, method="GET", headers=None):
        headers = dict(headers or {})
        if key is not None:
            headers["x-api-key"] = key
        for attempt in range(2):
            if self.conn is None:
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port,
                                                       timeout=self.timeout)
            try:
                self.conn.request(method, path, headers=headers)
                r = self.conn.getresponse()
                body = r.read().decode("utf-8", "replace")
                answer = Answer(r.status, {k.lower(): v for k, v in r.getheaders()}, body)
                if r.getheader("Connection", "").lower() == "close":
                    self.close()
                return answer
            except (http.client.HTTPException, OSError):
                self.close()
                if attempt == 1:
                    raise
        raise AssertionError("unreachable")

    def close(self):
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def usage_by_key_endpoint(db):
    """{(key id, endpoint): (requests, units)} as the collector counted."""
    rows = db.query("SELECT key_id, endpoint, sum(requests), sum(units) FROM usage_hourly "
                    "GROUP BY 1, 2")
    return {(r[0], r[1]): (int(r[2]), int(r[3])) for r in rows}


def stop_signal_name(sig):
    return signal.Signals(sig).name
