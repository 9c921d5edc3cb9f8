#!/usr/bin/env python3
"""End-to-end test of `make run`'s system, driven the way a user would.

    python3 tests/e2e/run.py [--bin build/bin] [--keep-logs DIR]

Starts tools/run.sh (what `make run` runs after building) with its state in a
temporary directory, reads the addresses and the admin token it prints, then:
creates a plan and a key through the api; publishes events with tally-loadgen
and with kcat (a Kafka client we did not write), a re-sent one included;
checks the key's usage, its quota, the authorize answers at the quota's edge
and the Stripe stand-in's ledger; stops everything as Ctrl-C does and checks
that no process or port is left; and starts it a second time over the same
state, which must come up and stop cleanly again. Then the ways a run ends
without Ctrl-C: its terminal closed (a pty hung up: SIGHUP, then EIO on every
write), its reader gone (`make run | tee` whose tee died: SIGPIPE/EPIPE),
and the script SIGKILLed, leaving its programs behind for the next run to
find and stop (its reporter must then call Stripe). Prints "N passed, N
failed"; --only runs some of them.

Python 3 standard library only."""

import argparse
import fcntl
import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import termios
import time
import urllib.request

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(REPO, "tests", "integration"))
from lib import Failure, check, clean_env, wait_until  # noqa: E402


class Demo:
    """One tools/run.sh in its own session, as a terminal would run it. Its
    output goes to a file (output="file"), to a pseudo-terminal that is its
    controlling terminal ("pty"), or to a pipe ("pipe"); the test reads the
    last two into the log file as it polls."""

    def __init__(self, state, bin_dir, log_path, output="file"):
        self.state = state
        self.log_path = log_path
        self.log = open(log_path, "ab")
        self.reader = None  # our end of the pty or pipe
        env = clean_env({"TALLY_STATE_DIR": state, "TALLY_BIN_DIR": bin_dir})
        argv, kwargs = [os.path.join(REPO, "tools", "run.sh")], {}
        if output == "pty":
            self.reader, child_end = os.openpty()
            kwargs = {"stdin": child_end, "stdout": child_end, "stderr": child_end,
                      # the pty becomes the session's controlling terminal
                      "preexec_fn": lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0)}
        elif output == "pipe":
            self.reader, child_end = os.pipe()
            kwargs = {"stdout": child_end, "stderr": subprocess.STDOUT,
                      "stdin": subprocess.DEVNULL}
        else:
            kwargs = {"stdout": self.log, "stderr": subprocess.STDOUT,
                      "stdin": subprocess.DEVNULL}
        self.proc = subprocess.Popen(argv, cwd=REPO, env=env, start_new_session=True, **kwargs)
        if self.reader is not None:
            os.close(child_end)
            os.set_blocking(self.reader, False)
        self.info = wait_until("tools/run.sh to print where things are", self._parse, 240,
                               interval=0.5, on_timeout=self.tail)

    def pump(self):
        """Copies what the pty or pipe holds into the log file."""
        while self.reader is not None:
            try:
                data = os.read(self.reader, 65536)
            except (BlockingIOError, OSError):
                return
            if not data:
                return
            self.log.write(data)
            self.log.flush()

    def close_reader(self):
        """Closes our end: a hung-up terminal (pty) or a dead reader (pipe)."""
        self.pump()
        os.close(self.reader)
        self.reader = None

    def text(self):
        with open(self.log_path, encoding="utf-8", errors="replace") as f:
            return f.read()

    def tail(self, n=25):
        return "\n".join(self.text().splitlines()[-n:])

    def _parse(self):
        self.pump()
        check(self.proc.poll() is None, "tools/run.sh exited %s:\n%s"
              % (self.proc.returncode, self.tail()))
        text = self.text()
        api = re.search(r"api\s+http://(\S+)\s+admin token: (\S+)", text)
        stripe = re.search(r"Stripe stand-in\s+(http://\S+) \(test key (\w+);", text)
        reporter = re.search(r"reporter metrics\s+http://(\S+)/metrics", text)
        collector = re.search(r"collector metrics\s+http://(\S+)/metrics", text)
        gateway = re.search(r"gateway \(nginx\)\s+http://(\S+)", text)
        if not (api and stripe and reporter and collector and gateway):
            return None
        STANDIN_KEYS.add(stripe.group(2))
        env = {}
        with open(os.path.join(self.state, "env")) as f:
            for line in f:
                m = re.match(r"(?:export )?(TALLY_\w+)=['\"]?([^'\"\n]*)", line)
                if m:
                    env[m.group(1)] = m.group(2)
        return {"api": api.group(1), "token": api.group(2), "stripe": stripe.group(1),
                "reporter": reporter.group(1), "collector": collector.group(1),
                "gateway": gateway.group(1),
                "brokers": env["TALLY_KAFKA_BROKERS"], "db": env["TALLY_DATABASE_URL"]}

    def ports(self):
        """Every loopback port the system listens on (api, metrics, stand-in,
        PostgreSQL, the broker)."""
        out = set()
        for addr in (self.info["api"], self.info["reporter"], self.info["collector"],
                     self.info["stripe"].split("//")[1], self.info["gateway"]):
            out.add(int(addr.rsplit(":", 1)[1]))
        out.add(int(self.info["brokers"].split(",")[0].rsplit(":", 1)[1]))
        m = re.search(r"port=(\d+)|:(\d+)/", self.info["db"])
        if m:
            out.add(int(m.group(1) or m.group(2)))
        return out

    def ctrl_c(self, timeout=90):
        """SIGINT to the process group, as a terminal's Ctrl-C."""
        os.killpg(self.proc.pid, signal.SIGINT)
        return self.wait_exit(timeout, "Ctrl-C")

    def wait_exit(self, timeout, after):
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            raise Failure("tools/run.sh still running %ds after %s:\n%s"
                          % (timeout, after, self.tail()))
        finally:
            if self.reader is not None:
                self.close_reader()
            self.log.close()
        return rc


def listening(port):
    s = socket.socket()
    s.settimeout(0.5)
    try:
        s.connect(("127.0.0.1", port))
        return True
    except OSError:
        return False
    finally:
        s.close()


# The test key of every Stripe stand-in our demos started: each run makes a
# fresh one, so it tells our stand-ins from those of other test suites.
STANDIN_KEYS = set()


def our_standin(pid):
    try:
        with open("/proc/%d/environ" % pid, "rb") as f:
            environ = f.read().split(b"\0")
    except OSError:
        return False
    return any(b"STRIPE_STANDIN_API_KEY=" + key.encode() in environ for key in STANDIN_KEYS)


def demo_like_processes(state, bin_dir):
    """{pid: args} of running processes that look like the demo's: Tally
    binaries, our Stripe stand-ins, and PostgreSQL, the gateway's nginx and
    rsyslog and its demo traffic on the state directory."""
    out = subprocess.run(["ps", "-eo", "pid=,args="], stdout=subprocess.PIPE,
                         universal_newlines=True).stdout
    found = {}
    for line in out.splitlines():
        pid, _, args = line.strip().partition(" ")
        if (os.path.join(bin_dir, "tally-") in args
                or ("tests/stripe/standin.py" in args and our_standin(int(pid)))
                or (state in args and any(name in args for name in (
                    "postgres", "nginx", "rsyslogd", "demo-traffic.sh")))):
            found[int(pid)] = args
    return found


def leftovers(state, bin_dir, before):
    """Demo-like processes that were not running before the demo started."""
    return sorted("%d %s" % (pid, args) for pid, args in demo_like_processes(state, bin_dir).items()
                  if pid not in before)


class Api:
    def __init__(self, addr, token):
        host, port = addr.rsplit(":", 1)
        self.host, self.port, self.token = host, int(port), token

    def call(self, method, path, body=None, admin=True, headers=None):
        conn = http.client.HTTPConnection(self.host, self.port, timeout=10)
        h = dict(headers or {})
        if admin:
            h["Authorization"] = "Bearer " + self.token
        data = None
        if body is not None:
            data = json.dumps(body)
            h["Content-Type"] = "application/json"
        conn.request(method, path, body=data, headers=h)
        r = conn.getresponse()
        text = r.read().decode("utf-8", "replace")
        conn.close()
        return r.status, (json.loads(text) if text and text[0] in "{[" else None), r


def get_json(url):
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read().decode())


def kcat_events(brokers, events, tmp):
    """Publishes one message per event (kcat -l: one message per line)."""
    path = os.path.join(tmp, "kcat-events.jsonl")
    with open(path, "w") as f:
        for ev in events:
            f.write(json.dumps(ev, separators=(",", ":")) + "\n")
    cp = subprocess.run(["kcat", "-P", "-b", brokers, "-t", "usage-events", "-l", path],
                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60)
    check(cp.returncode == 0, "kcat failed: %s" % cp.stderr.decode("utf-8", "replace"))


def scenario(demo, tmp, bin_dir):
    info = demo.info
    api = Api(info["api"], info["token"])
    wait_until("the api to be ready", lambda: api.call("GET", "/readyz", admin=False)[0] == 200,
               60)
    tag = "%x" % int(time.time())
    customer = "cus_e2e_" + tag
    st, plan, _ = api.call("POST", "/v1/plans", {
        "name": "E2E " + tag, "quota": {"limit": 1000000, "period": "DAY"},
        "throttle": {"rateLimit": 1000, "burstLimit": 1000}, "stripeMeterEventName": "api_calls"})
    check(st == 201, "create plan: %s %s" % (st, plan))
    st, key, _ = api.call("POST", "/v1/keys", {"name": "e2e", "stripeCustomerId": customer})
    check(st == 201 and key.get("value"), "create key: %s %s" % (st, key))
    st, body, _ = api.call("PUT", "/v1/keys/%s/plan" % key["id"], {"planId": plan["id"]})
    check(st == 200, "attach: %s %s" % (st, body))

    # 300 events from tally-loadgen, 20 from kcat (2 units each) and one of
    # those re-sent, 5 requests through the gateway: 325 requests counted.
    summary_path = os.path.join(tmp, "loadgen.json")
    cp = subprocess.run([os.path.join(bin_dir, "tally-loadgen"), "--brokers", info["brokers"],
                         "--keys", key["id"], "--count", "300", "--seed", "7", "--source",
                         "e2e-loadgen-" + tag, "--summary", summary_path],
                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=120)
    check(cp.returncode == 0, "loadgen: %s" % cp.stdout.decode("utf-8", "replace")[-500:])
    with open(summary_path) as f:
        loadgen_units = json.load(f)["keys"][key["id"]]["units"]
    now = time.time() - 30
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))
    events = [{"specversion": "1.0", "id": "kcat-%s-%d" % (tag, i), "source": "e2e-kcat",
               "type": "api.request", "subject": key["id"], "time": stamp,
               "data": {"method": "GET", "endpoint": "/v1/e2e", "units": 2}} for i in range(20)]
    kcat_events(info["brokers"], [dict(ev) for ev in events] + [events[3]], tmp)
    # And 5 requests through the gateway (nginx auth_request -> usage log ->
    # rsyslog -> Kafka), one unit each.
    for _ in range(5):
        req = urllib.request.Request("http://%s/items" % info["gateway"],
                                     headers={"x-api-key": key["value"]})
        with urllib.request.urlopen(req, timeout=10) as r:
            check(r.status == 200, "gateway answered %d" % r.status)
    expected_requests, expected_units = 325, loadgen_units + 45

    def usage():
        st, body, _ = api.call("GET", "/v1/keys/%s/usage?granularity=day" % key["id"])
        check(st == 200, "usage: %s %s" % (st, body))
        return sum(i["requests"] for i in body["items"]), sum(i["units"] for i in body["items"])

    wait_until("the collector to count 325 requests", lambda: usage() == (
        expected_requests, expected_units), 60, interval=0.5,
        on_timeout=lambda: "usage %s" % (usage(),))

    # Quotas count units. Set the limit 80 above what was counted; the
    # customer's own view must show it (the api reloads its cache every
    # second).
    quota = expected_units + 80
    st, body, _ = api.call("PATCH", "/v1/plans/%s" % plan["id"],
                           {"quota": {"limit": quota, "period": "DAY"}})
    check(st == 200, "patch plan: %s %s" % (st, body))

    def me_quota():
        st, me, _ = api.call("GET", "/v1/me/quota", admin=False,
                             headers={"x-api-key": key["value"]})
        check(st == 200, "me/quota: %s %s" % (st, me))
        return me

    wait_until("/v1/me/quota to show the new limit", lambda: me_quota()["limit"] == quota, 10,
               interval=0.3)
    me = me_quota()
    check(me["used"] == expected_units and me["remaining"] == 80, "me/quota: %s" % me)

    # authorize: 80 units left (one per request), then 429
    time.sleep(1.5)
    left = 80
    statuses = [api.call("GET", "/v1/authorize", admin=False, headers={
        "x-api-key": key["value"], "X-Original-Method": "GET",
        "X-Original-URI": "/v1/x"})[0] for _ in range(left + 5)]
    check(statuses == [204] * left + [429] * 5,
          "authorize at the quota's edge (%d left): %s" % (left, statuses))
    st, _, _ = api.call("GET", "/v1/authorize", admin=False, headers={
        "x-api-key": "not-a-key-0123456789", "X-Original-Method": "GET", "X-Original-URI": "/"})
    check(st == 401, "unknown key: %s" % st)

    # Stripe: the reporter (every 5 s, no settle time) delivers the units
    def ledger():
        return get_json(info["stripe"] + "/_standin/ledger")["meter_events"].get(
            customer, {}).get("api_calls", 0)

    wait_until("the Stripe stand-in's ledger to hold %d units for %s" % (expected_units, customer),
               lambda: ledger() == expected_units, 90, interval=1.0,
               on_timeout=lambda: "ledger %d" % ledger())
    with urllib.request.urlopen("http://%s/metrics" % info["reporter"], timeout=5) as r:
        metrics = r.read().decode()
    check("tally_reporter_reports_accepted_total" in metrics, "reporter metrics missing")
    return "%d requests, %d units in Stripe's ledger" % (expected_requests, expected_units)


def check_all_gone(demo, bin_dir, before, ports, after):
    wait_until("every process of the demo to exit after %s" % after,
               lambda: not leftovers(demo.state, bin_dir, before), 15,
               on_timeout=lambda: "left: %s" % leftovers(demo.state, bin_dir, before))
    open_ports = sorted(p for p in ports if listening(p))
    check(not open_ports, "ports still listening after %s: %s" % (after, open_ports))


def stop_and_check(demo, bin_dir, before):
    ports = demo.ports()
    rc = demo.ctrl_c()
    check(rc == 0, "tools/run.sh exited %s after Ctrl-C:\n%s" % (rc, demo.tail()))
    check("run: stopped" in demo.text(), "no clean stop message:\n%s" % demo.tail())
    check_all_gone(demo, bin_dir, before, ports, "Ctrl-C")


def metric(addr, name):
    """A counter's value from a /metrics page (0 when absent or unreachable)."""
    try:
        with urllib.request.urlopen("http://%s/metrics" % addr, timeout=3) as r:
            text = r.read().decode()
    except OSError:
        return 0
    return sum(float(line.split()[-1]) for line in text.splitlines()
               if line.startswith(name + " ") or line.startswith(name + "{"))


class Context:
    """What one test needs: where things are, the processes that ran before
    the suite (not ours to judge), and every demo started (to clean up)."""

    def __init__(self, tmp, state, bin_dir):
        self.tmp, self.state, self.bin_dir = tmp, state, bin_dir
        self.before = demo_like_processes(state, bin_dir)
        self.demos = []

    def start(self, name, output="file"):
        demo = Demo(self.state, self.bin_dir, os.path.join(self.tmp, "run-%s.log" % name), output)
        self.demos.append(demo)
        return demo

    def clean_up(self):
        """Stops whatever a failed test left: demos still running, then any
        process of theirs (SIGKILL), so the next test starts clean."""
        for demo in self.demos:
            if demo.proc.poll() is None:
                try:
                    demo.ctrl_c(60)
                except Failure:
                    pass
        self.demos = []
        subprocess.run([os.path.join(REPO, "tools", "stack.sh"), "down", self.state],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for line in leftovers(self.state, self.bin_dir, self.before):
            try:
                os.kill(int(line.split()[0]), signal.SIGKILL)
            except OSError:
                pass


def end_to_end(ctx):
    demo = ctx.start("end_to_end")
    note = scenario(demo, ctx.tmp, ctx.bin_dir)
    stop_and_check(demo, ctx.bin_dir, ctx.before)
    return note


def again_over_the_same_state(ctx):
    stop_and_check(ctx.start("again"), ctx.bin_dir, ctx.before)
    return "came up again"


def terminal_closed(ctx):
    """The terminal goes away (its window closed, ssh dropped): the kernel
    hangs the pty up, SIGHUP reaches the script and every later write to the
    terminal fails with EIO. Everything must stop as on Ctrl-C."""
    demo = ctx.start("terminal_closed", output="pty")
    ports = demo.ports()
    demo.close_reader()
    demo.wait_exit(60, "the hang-up")
    check_all_gone(demo, ctx.bin_dir, ctx.before, ports, "the terminal closed")
    check("run: stopped" in open(os.path.join(ctx.state, "logs", "run.log")).read(),
          "run.log has no clean stop message")
    return "stopped after SIGHUP"


def reader_gone(ctx):
    """`make run | tee x` and tee dies: the script's next write gets SIGPIPE
    (EPIPE where SIGPIPE is ignored). Everything must stop as on Ctrl-C."""
    demo = ctx.start("reader_gone", output="pipe")
    ports = demo.ports()
    demo.close_reader()
    demo.wait_exit(60, "its reader went away")
    check_all_gone(demo, ctx.bin_dir, ctx.before, ports, "the reader went away")
    return "stopped after its reader went away"


def orphans_of_a_killed_run(ctx):
    """The script is SIGKILLed (or, before it handled SIGHUP, died with its
    terminal): its programs live on, their own sessions untouched. The next
    run must say so and stop them, or its reporter stands by behind the old
    one's lock (Stripe: 0 calls) and two load generators run."""
    first = ctx.start("orphans_first")
    first.proc.kill()
    first.wait_exit(10, "SIGKILL")
    orphans = {pid: args for pid, args in demo_like_processes(ctx.state, ctx.bin_dir).items()
               if pid not in ctx.before and "devbroker" not in args and "postgres" not in args}
    check(any("tally-reporter" in args for args in orphans.values()),
          "SIGKILL left no reporter behind: %s" % orphans)
    second = ctx.start("orphans_second")
    alive = demo_like_processes(ctx.state, ctx.bin_dir)
    check(not [pid for pid in orphans if pid in alive],
          "the earlier run's programs still run beside the new ones: %s"
          % sorted(args for pid, args in orphans.items() if pid in alive))
    check("left running by an earlier make run" in second.text(),
          "the new run did not say it stopped the earlier one's programs:\n%s" % second.tail())
    wait_until("the new reporter to call the Stripe stand-in",
               lambda: metric(second.info["reporter"], "tally_reporter_calls_total") > 0, 30,
               interval=0.5, on_timeout=second.tail)
    stop_and_check(second, ctx.bin_dir, ctx.before)
    return "%d orphans stopped, the new reporter calls Stripe" % len(orphans)


TESTS = (
    ("make_run_end_to_end", end_to_end),
    ("make_run_again_over_the_same_state", again_over_the_same_state),
    ("make_run_stops_when_its_terminal_closes", terminal_closed),
    ("make_run_stops_when_its_reader_dies", reader_gone),
    ("make_run_stops_an_earlier_runs_orphans", orphans_of_a_killed_run),
)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bin", default=os.path.join(REPO, "build", "bin"))
    ap.add_argument("--keep-logs", help="copy the logs here before removing the temp dir")
    ap.add_argument("--only", help="comma-separated test names (or substrings) to run")
    args = ap.parse_args()
    bin_dir = os.path.abspath(args.bin)
    tmp = tempfile.mkdtemp(prefix="tally-e2e-")
    os.chmod(tmp, 0o755)  # the PostgreSQL cluster runs as an unprivileged user
    state = os.path.join(tmp, "state")
    wanted = args.only.split(",") if args.only else None
    passed = failed = 0
    ctx = Context(tmp, state, bin_dir)
    try:
        for name, run in TESTS:
            if wanted and not any(w in name for w in wanted):
                continue
            t0 = time.monotonic()
            try:
                note = run(ctx)
                ctx.demos = []
                print("PASS %s %.1fs  (%s)" % (name, time.monotonic() - t0, note), flush=True)
                passed += 1
            except Failure as e:
                print("FAIL %s %.1fs %s" % (name, time.monotonic() - t0, e), flush=True)
                failed += 1
                ctx.clean_up()
                if run is end_to_end:
                    break  # the others would fail the same way
    finally:
        ctx.clean_up()
        if args.keep_logs:
            shutil.copytree(tmp, args.keep_logs, dirs_exist_ok=True,
                            ignore=shutil.ignore_patterns("pg", "*.sock*"))
        subprocess.run([os.path.join(REPO, "tools", "stack.sh"), "down", state],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        shutil.rmtree(tmp, ignore_errors=True)
    print("%d passed, %d failed" % (passed, failed))
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
