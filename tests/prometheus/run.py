#!/usr/bin/env python3
"""A real Prometheus against a running Tally: deploy/prometheus/ end to end.

    python3 tests/prometheus/run.py [--bin build/bin] [--keep-logs DIR]

Starts a throwaway stack (tools/stack.sh up DIR --fast: PostgreSQL and the dev
broker), applies the migrations, then tally-collector, tally-api,
tally-reporter (against the Stripe stand-in, tests/stripe/standin.py) and
Debian's /usr/bin/prometheus, each on free loopback ports. Prometheus runs a
test configuration built from the shipped deploy/prometheus/prometheus.yml:
the same jobs with the targets replaced by this run's metrics addresses and
the scrape interval shortened to 2 s and the evaluation interval to 1 s.
Its rules are a test-only copy of the shipped deploy/prometheus/rules.yml
in which every `for:` is shortened to 5 s; expressions, labels and
annotations are the shipped ones, unchanged.

Checks, through Prometheus's HTTP API:
  1. /api/v1/targets: the three jobs' targets are health "up" with no
     lastError, and /api/v1/query finds each service's own metrics;
  2. /api/v1/rules: every rule evaluates without error against real data;
  3. every tally_* metric the rules name is scraped (a renamed metric would
     leave its rule silently empty);
  4. /api/v1/alerts: no alert is pending or firing on the healthy system;
  5. after SIGTERM to the collector: TallyCollectorDown and TallyTargetDown
     (for the collector's instance) fire, and no api or reporter alert does;
  6. the collector started again on the same address: every alert clears.

Prints "N passed, N failed"; 25 to 35 s. Python 3 standard
library only."""

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
import types
import urllib.error
import urllib.parse
import urllib.request

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(REPO, "tests", "integration"))
import lib  # noqa: E402
from lib import Failure, Proc, Registry, check, clean_env, free_port, wait_until  # noqa: E402

SHIPPED = os.path.join(REPO, "deploy", "prometheus")
PROMETHEUS = "/usr/bin/prometheus"
# Every rule's `for:` in the test copy of rules.yml: longer than two scrape
# intervals, so one scrape slowed past its timeout on a busy machine fires
# nothing.
TEST_FOR_S = 5
SCRAPE_S = 2
JOBS = ("tally-api", "tally-collector", "tally-reporter")
# The shipped config's targets: each program's default TALLY_METRICS_ADDR.
DEFAULT_TARGETS = {"tally-api": "127.0.0.1:9100", "tally-collector": "127.0.0.1:9101",
                   "tally-reporter": "127.0.0.1:9102"}


def replace_once(text, old, new, what):
    """`text` with its one occurrence of `old` replaced: the shipped file
    changing shape fails the test instead of silently testing something else."""
    check(text.count(old) == 1, "%s: expected exactly one %r in the shipped file, found %d"
          % (what, old, text.count(old)))
    return text.replace(old, new)


def test_config(targets, rules_path):
    """The shipped prometheus.yml with this run's targets and short intervals."""
    with open(os.path.join(SHIPPED, "prometheus.yml")) as f:
        text = f.read()
    text = replace_once(text, "scrape_interval: 15s", "scrape_interval: %ds" % SCRAPE_S,
                        "prometheus.yml")
    text = replace_once(text, "scrape_timeout: 10s", "scrape_timeout: %ds" % SCRAPE_S,
                        "prometheus.yml")
    text = replace_once(text, "evaluation_interval: 15s", "evaluation_interval: 1s",
                        "prometheus.yml")
    text = replace_once(text, "  - rules.yml\n", "  - %s\n" % rules_path, "prometheus.yml")
    for job, default in DEFAULT_TARGETS.items():
        text = replace_once(text, "['%s']" % default, "['%s']" % targets[job], "prometheus.yml")
    return text


def test_rules():
    """The shipped rules.yml with every `for:` shortened to TEST_FOR_S."""
    with open(os.path.join(SHIPPED, "rules.yml")) as f:
        text = f.read()
    text, count = re.subn(r"(?m)^(\s+for: )\S+$", r"\g<1>%ds" % TEST_FOR_S, text)
    alerts = len(re.findall(r"(?m)^\s+- alert: ", text))
    check(count == alerts and alerts > 0,
          "rules.yml: %d alerts but %d `for:` lines" % (alerts, count))
    return text


class Stack:
    """tools/stack.sh's PostgreSQL and dev broker, migrated."""

    def __init__(self, tmp, bin_dir):
        self.dir = os.path.join(tmp, "stack")
        self.bin_dir = bin_dir
        self.db_url = self.brokers = None

    def up(self):
        self._run("up", "--fast")
        env = {}
        with open(os.path.join(self.dir, "env")) as f:
            for line in f:
                m = re.match(r"export (TALLY_\w+)=(.*)$", line.strip())
                if m:
                    env[m.group(1)] = m.group(2).strip("'\"")
        self.db_url = env["TALLY_DATABASE_URL"]
        self.brokers = env["TALLY_KAFKA_BROKERS"]

    def migrate(self):
        cp = subprocess.run([os.path.join(REPO, "tools", "migrate.sh")],
                            env=clean_env({"TALLY_DATABASE_URL": self.db_url}),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=120)
        check(cp.returncode == 0, "migrate: " + cp.stdout.decode()[-1500:])

    def _run(self, command, *extra):
        cp = subprocess.run([os.path.join(REPO, "tools", "stack.sh"), command, self.dir]
                            + list(extra), env=clean_env({"TALLY_BIN_DIR": self.bin_dir}),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, timeout=180, start_new_session=True)
        check(cp.returncode == 0, "tools/stack.sh %s: %s" % (command, cp.stdout.decode()[-1500:]))

    def down(self):
        try:
            self._run("down")
        except Exception as e:  # noqa: BLE001 - teardown goes on
            print("warning: stack down: %s" % e)


class Scope:
    """What tests/integration/lib.py's Collector, Api, Standin and Reporter
    expect of a test: its registry, files, binaries and database."""

    def __init__(self, tmp, bin_dir, db_url):
        self.dir = tmp
        self.registry = Registry()
        self.ctx = types.SimpleNamespace(db_url=db_url)
        self.collectors, self.apis = [], []
        self._bin_dir = bin_dir
        self._ids = 0

    def next_id(self):
        self._ids += 1
        return self._ids

    def path(self, name):
        return os.path.join(self.dir, name)

    def bin(self, name):
        return os.path.join(self._bin_dir, name)

    asan_bin = bin  # lib's classes ask for the sanitized build; --bin chooses


class Prometheus:
    """Debian's prometheus on a free port, its TSDB in the test's directory."""

    def __init__(self, scope, config_path):
        self.scope = scope
        for attempt in range(3):
            self.port = free_port()
            argv = [PROMETHEUS, "--config.file", config_path,
                    "--storage.tsdb.path", scope.path("tsdb-%d" % scope.next_id()),
                    "--web.listen-address", "127.0.0.1:%d" % self.port,
                    "--log.level", "info"]
            self.proc = Proc(scope.registry, "prometheus", argv, scope.path("prometheus.log"))
            try:
                wait_until("prometheus /-/ready", self._ready, 60, interval=0.2)
                return
            except Failure:
                if self.proc.alive() or attempt == 2:
                    raise Failure("prometheus did not become ready: %s" % self.proc.log_tail())
                self.proc.kill()  # lost the port: try another one

    def _ready(self):
        check(self.proc.alive(), "prometheus exited: %s" % self.proc.log_tail())
        try:
            with urllib.request.urlopen("http://127.0.0.1:%d/-/ready" % self.port,
                                        timeout=5) as r:
                return r.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def api(self, path, **params):
        url = "http://127.0.0.1:%d/api/v1/%s" % (self.port, path)
        if params:
            url += "?" + urllib.parse.urlencode(params)
        with urllib.request.urlopen(url, timeout=10) as r:
            body = json.loads(r.read().decode())
        check(body.get("status") == "success", "%s: %s" % (path, body))
        return body["data"]

    def query(self, expr):
        return self.api("query", query=expr)["result"]

    def targets(self):
        return {(t["labels"]["job"]): t for t in self.api("targets", state="active")
                ["activeTargets"]}

    def alerts(self, state=None):
        return [a for a in self.api("alerts")["alerts"]
                if state is None or a["state"] == state]


def brief(alerts):
    return ", ".join("%s%s(%s)" % (a["labels"]["alertname"],
                                   "@" + a["labels"]["instance"] if "instance" in a["labels"]
                                   else "", a["state"]) for a in alerts) or "none"


# ---- the checks -----------------------------------------------------------------------

def targets_up(system):
    prom = system.prom

    def all_up():
        targets = prom.targets()
        if set(targets) != set(JOBS):
            return None
        if all(t["health"] == "up" and t["lastError"] == "" for t in targets.values()):
            return targets
        return None

    wait_until("every target health up with no lastError", all_up, 30,
               on_timeout=lambda: json.dumps({j: (t["health"], t["lastError"], t["scrapeUrl"])
                                              for j, t in prom.targets().items()}))
    for job in JOBS:
        up = prom.query('up{job="%s"}' % job)
        check(len(up) == 1 and up[0]["value"][1] == "1", "up{job=%s}: %s" % (job, up))
    # Each service's own metrics were ingested, not only `up`.
    for job, metric in (("tally-collector", "tally_collector_consumer_lag"),
                        ("tally-collector", "tally_collector_pause_reason"),
                        ("tally-api", "tally_api_request_duration_seconds_bucket"),
                        ("tally-api", "tally_api_requests_total"),
                        ("tally-reporter", "tally_reporter_standby"),
                        ("tally-reporter", "tally_reporter_parked_reports")):
        found = wait_until("%s from %s" % (metric, job),
                           lambda: prom.query('%s{job="%s"}' % (metric, job)), 15)
        check(found, "%s{job=%s} missing" % (metric, job))


def rules_evaluate(system):
    def evaluated():
        groups = system.prom.api("rules")["groups"]
        rules = [r for g in groups for r in g["rules"]]
        if not rules or any(r.get("lastEvaluation", "").startswith("0001") for r in rules):
            return None
        return rules

    rules = wait_until("every rule evaluated once", evaluated, 20)
    with open(os.path.join(SHIPPED, "rules.yml")) as f:
        shipped = len(re.findall(r"(?m)^\s+- alert: ", f.read()))
    check(len(rules) == shipped, "prometheus loaded %d rules, rules.yml has %d"
          % (len(rules), shipped))
    bad = ["%s: %s" % (r["name"], r.get("lastError")) for r in rules if r["health"] != "ok"]
    check(not bad, "rules failing to evaluate: %s" % bad)


def rules_metrics_exist(system):
    """Every metric the shipped rules name is scraped from the running
    services: a renamed metric would leave its rule silently empty. The
    webhook sender's tally_webhook_* metrics are required once the reporter
    exports any of them (the sender is built in a parallel branch)."""
    with open(os.path.join(SHIPPED, "rules.yml")) as f:
        named = set(re.findall(r"\btally_[a-z0-9_]+", f.read()))
    present = {r["metric"]["__name__"] for r in
               system.prom.query('group by (__name__) ({__name__=~"tally_.+"})')}
    if not any(n.startswith("tally_webhook_") for n in present):
        skipped = sorted(n for n in named if n.startswith("tally_webhook_"))
        print("     (no tally_webhook_* metric exported yet; not checked: %s)"
              % ", ".join(skipped))
        named -= set(skipped)
    missing = sorted(named - present)
    check(not missing, "metrics named in rules.yml but not scraped: %s" % missing)


def healthy_system_is_quiet(system):
    # With every `for:` at a few seconds, a rule that is wrong on a healthy
    # idle system fires within seconds; TallyCollectorDown and the like may be
    # pending from before the first scrape, and must clear.
    wait_until("no pending or firing alert on the healthy system",
               lambda: not system.prom.alerts(), 30,
               on_timeout=lambda: brief(system.prom.alerts()))
    time.sleep(TEST_FOR_S + 2 * SCRAPE_S)  # past a `for:`: nothing comes back
    check(not system.prom.alerts(), "alerts on the healthy system: %s"
          % brief(system.prom.alerts()))


def stopped_collector_fires(system):
    system.collector.stop()
    instance = system.targets["tally-collector"]

    def fired():
        firing = system.prom.alerts("firing")
        names = {(a["labels"]["alertname"], a["labels"].get("instance")) for a in firing}
        if ("TallyCollectorDown", None) in names and ("TallyTargetDown", instance) in names:
            return firing
        return None

    firing = wait_until("TallyCollectorDown and TallyTargetDown firing", fired, 30,
                        on_timeout=lambda: brief(system.prom.alerts()))
    down = [a for a in firing if a["labels"]["alertname"] == "TallyCollectorDown"][0]
    check(down["labels"].get("severity") == "critical"
          and "not being counted" in down["annotations"].get("summary", ""),
          "TallyCollectorDown: %s" % down)
    others = [a for a in system.prom.alerts()
              if a["labels"].get("job") in ("tally-api", "tally-reporter")
              or a["labels"]["alertname"].startswith(("TallyApi", "TallyReport"))]
    check(not others, "alerts for the running api/reporter: %s" % brief(others))


def restarted_collector_resolves(system):
    # The same command line: the same metrics address, the target Prometheus knows.
    old = system.collector.proc
    proc = Proc(system.scope.registry, "collector-again", old.argv,
                system.scope.path("collector-again.log"))
    wait_until("no alert once the collector runs again", lambda: not system.prom.alerts(), 30,
               on_timeout=lambda: "%s; collector alive: %s; %s"
               % (brief(system.prom.alerts()), proc.alive(), proc.log_tail(5)))


TESTS = [targets_up, rules_evaluate, rules_metrics_exist, healthy_system_is_quiet,
         stopped_collector_fires, restarted_collector_resolves]


def start_system(system, tmp, bin_dir):
    """Fills `system` as it goes, so that a failed start is still cleaned up."""
    system.stack = Stack(tmp, bin_dir)
    system.stack.up()
    system.stack.migrate()
    scope = Scope(tmp, bin_dir, system.stack.db_url)
    system.scope = scope
    broker = types.SimpleNamespace(bootstrap=system.stack.brokers)
    system.collector = lib.Collector(scope, broker, "prom-test")
    system.api = lib.Api(scope)
    standin = lib.Standin(scope, customers=[])
    system.reporter = lib.Reporter(scope, standin).start()
    # A few answers so the api's request counters and histograms have series.
    for _ in range(3):
        system.api.request("GET", "/readyz")
        system.api.authorize("no-such-key")
    system.targets = {"tally-api": "127.0.0.1:%d" % system.api.metrics_port,
                      "tally-collector": "127.0.0.1:%d" % system.collector.port,
                      "tally-reporter": "127.0.0.1:%d" % system.reporter.port}
    rules_path = scope.path("rules-test.yml")
    with open(rules_path, "w") as f:
        f.write(test_rules())
    config_path = scope.path("prometheus-test.yml")
    with open(config_path, "w") as f:
        f.write(test_config(system.targets, rules_path))
    cp = subprocess.run(["promtool", "check", "config", config_path], stdout=subprocess.PIPE,
                        stderr=subprocess.STDOUT, timeout=60)
    check(cp.returncode == 0, "promtool check config (test copy): %s" % cp.stdout.decode())
    system.prom = Prometheus(scope, config_path)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bin", default=os.path.join(REPO, "build", "bin"),
                    help="where tally-collector, tally-api, tally-reporter and tally-devbroker are")
    ap.add_argument("--keep-logs", help="copy the logs and generated files here")
    args = ap.parse_args()
    bin_dir = os.path.abspath(args.bin)
    if not os.access(PROMETHEUS, os.X_OK):
        print("FAIL: %s not found (Debian package prometheus; tools/install-deps.sh)"
              % PROMETHEUS)
        return 1
    started = time.monotonic()
    tmp = tempfile.mkdtemp(prefix="tally-prom-")
    passed = failed = 0
    system = types.SimpleNamespace(stack=None, scope=None)
    try:
        try:
            start_system(system, tmp, bin_dir)
            tests = TESTS
        except Exception as e:  # noqa: BLE001 - reported as a failure
            print("FAIL start: %s" % e)
            if not isinstance(e, Failure):
                traceback.print_exc()
            failed += 1
            tests = []
        for t in tests:
            t0 = time.monotonic()
            try:
                t(system)
                passed += 1
                print("ok   %-26s %.1fs" % (t.__name__, time.monotonic() - t0))
            except Exception as e:  # noqa: BLE001 - every failure is reported
                failed += 1
                print("FAIL %-26s %s" % (t.__name__, e))
                if not isinstance(e, Failure):
                    traceback.print_exc()
                break  # the checks build on each other
    finally:
        if system.scope is not None:
            system.scope.registry.stop_all()
        if system.stack is not None:
            system.stack.down()
        if args.keep_logs:
            shutil.copytree(tmp, args.keep_logs, dirs_exist_ok=True,
                            ignore=shutil.ignore_patterns("tsdb-*", "pg", "kafka"))
        shutil.rmtree(tmp, ignore_errors=True)
    print("%d passed, %d failed (%.0f s)" % (passed, failed, time.monotonic() - started))
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
