#!/usr/bin/env python3
"""The AWS API Gateway usage-plan API (issue #13) driven by AWS's own
clients: Debian's aws CLI v2 (/usr/bin/aws) and python3-boto3.

    python3 tests/aws/run.py [--bin build/bin] [--asan-bin build/asan/bin] [--keep-logs DIR]

Starts its own throwaway stack (tools/stack.sh up DIR --fast, migrations),
tally-api with TALLY_AWS_ADDR on free ports (the sanitized build when
--asan-bin is given) and a tally-collector. The clients get credentials
and a region through AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY /
AWS_DEFAULT_REGION only, with a temporary HOME and AWS_CONFIG_FILE, so
nothing of the machine's AWS setup leaks in. In order:

  1. the workload's CLI commands (docs/AWS-USAGE-PLANS.md §5), unchanged but
     for --endpoint-url and the ids the create calls returned;
  2. real events for those keys through Kafka (kcat) and the collector, then
     the workload's boto3 dashboard script, unchanged but for endpoint_url=
     and the plan id: its printed totals must be what was produced;
  3. every operation through boto3: each patch path, paginators over several
     pages (and the CLI's auto-pagination), UpdateUsage then authorize
     honouring the new remaining quota, ImportApiKeys;
  4. errors as the CLI shows them (exit code and message): an unknown plan
     id, a bad patch path, a bad signature, an expired date (faketime);
  5. refusals: unsigned, wrong secret, tampered body, a request signed 16
     minutes ago, another region, an unknown access key; a second credential
     pair works (rotation);
  6. the api stops cleanly with no sanitizer report.

Runs under Debian's /usr/bin/python3 (re-executing itself there), whose boto3
is the python3-boto3 package. Prints one line per step, then
"N passed, N failed"; exits 1 if any failed. ~60-90 s."""

import os
import sys

DEBIAN_PYTHON = "/usr/bin/python3"
if (os.path.exists(DEBIAN_PYTHON) and os.path.realpath(sys.executable) != os.path.realpath(DEBIAN_PYTHON)
        and os.environ.get("AWS_SUITE_REEXEC") != "1"):
    os.environ["AWS_SUITE_REEXEC"] = "1"
    os.execv(DEBIAN_PYTHON, [DEBIAN_PYTHON] + sys.argv)

import argparse  # noqa: E402
import datetime  # noqa: E402
import http.client  # noqa: E402
import json  # noqa: E402
import re  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
import uuid  # noqa: E402
from unittest import mock  # noqa: E402

import boto3  # noqa: E402
import botocore.auth  # noqa: E402
import botocore.awsrequest  # noqa: E402
import botocore.credentials  # noqa: E402
import botocore.exceptions  # noqa: E402
from botocore.config import Config  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(REPO, "tests", "integration"))
from lib import (Failure, Proc, Registry, check, clean_env, free_port,  # noqa: E402
                 kcat_produce_lines, sanitizer_report, wait_until)

AWS = "/usr/bin/aws"
ADMIN_TOKEN = "aws-suite-admin-token-71c3e9"
KEY_HMAC_SECRET = "aws-suite-key-hmac-secret-0b5d2a94e7"
REGION = "eu-west-1"
ACCESS_KEY, SECRET = "AKIATALLYSUITE1", "suite-secret-one-9f8e7d6c5b"
ACCESS_KEY_2, SECRET_2 = "AKIATALLYSUITE2", "suite-secret-two-1a2b3c4d5e"
WORKLOAD = os.path.join(REPO, "docs", "AWS-USAGE-PLANS.md")


class Suite:
    def __init__(self, args):
        self.args = args
        self.tmp = tempfile.mkdtemp(prefix="tally-aws-")
        os.chmod(self.tmp, 0o755)  # the stack's PostgreSQL may run as another user
        self.stack_dir = os.path.join(self.tmp, "stack")
        self.registry = Registry()
        self.ids = {}        # workload names -> ids the create calls returned
        self.values = {}     # key id -> secret value (from the create answers)
        self.expected = {}   # key id -> {date: units produced}
        self.cli_calls = 0

    # ---- the stack and the programs ----

    def up(self):
        env = clean_env({"TALLY_BIN_DIR": os.path.abspath(self.args.bin)})
        cp = subprocess.run([os.path.join(REPO, "tools", "stack.sh"), "up", self.stack_dir, "--fast"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
                            stdin=subprocess.DEVNULL, timeout=180, start_new_session=True)
        check(cp.returncode == 0, "stack up: " + cp.stdout.decode()[-1500:])
        settings = {}
        with open(os.path.join(self.stack_dir, "env")) as f:
            for line in f:
                m = re.match(r"export (\w+)='(.*)'", line.strip())
                if m:
                    settings[m.group(1)] = m.group(2)
        self.db_url = settings["TALLY_DATABASE_URL"]
        self.brokers = settings["TALLY_KAFKA_BROKERS"]
        cp = subprocess.run([os.path.join(REPO, "tools", "migrate.sh")],
                            env=clean_env({"TALLY_DATABASE_URL": self.db_url}),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=120)
        check(cp.returncode == 0, "migrate: " + cp.stdout.decode()[-1500:])
        self.start_api()
        self.start_collector()

    def start_api(self):
        api_bin = os.path.join(self.args.asan_bin or self.args.bin, "tally-api")
        for attempt in range(3):
            self.port, self.aws_port, self.metrics_port = free_port(), free_port(), free_port()
            creds = os.path.join(self.tmp, "aws-credentials")
            with open(creds, "w") as f:
                f.write("# rotated pairs\n%s:%s\n%s:%s\n" % (ACCESS_KEY, SECRET, ACCESS_KEY_2, SECRET_2))
            env = clean_env({"TALLY_DATABASE_URL": self.db_url, "TALLY_ADMIN_TOKEN": ADMIN_TOKEN,
                             "TALLY_KEY_HMAC_SECRET": KEY_HMAC_SECRET,
                             "TALLY_AWS_ADDR": "127.0.0.1:%d" % self.aws_port,
                             "TALLY_AWS_CREDENTIALS_FILE": creds, "TALLY_AWS_REGION": REGION})
            self.api = Proc(self.registry, "api", [api_bin, "--http-addr", "127.0.0.1:%d" % self.port,
                                                   "--metrics-addr", "127.0.0.1:%d" % self.metrics_port,
                                                   "--key-refresh-ms", "500", "--log-level", "debug"],
                            os.path.join(self.tmp, "api-%d.log" % attempt), env=env)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and self.api.alive():
                try:
                    if self.admin("GET", "/readyz")[0] == 200:
                        return
                except OSError:
                    pass
                time.sleep(0.1)
            check("cannot listen" in self.api.log_text() and attempt < 2,
                  "tally-api did not start: " + self.api.log_tail())
            self.api.terminate(5)

    def start_collector(self):
        self.collector_metrics = free_port()
        self.collector = Proc(self.registry, "collector", [
            os.path.join(self.args.bin, "tally-collector"), "--database-url", self.db_url,
            "--kafka-brokers", self.brokers, "--kafka-group", "aws-suite",
            "--metrics-addr", "127.0.0.1:%d" % self.collector_metrics],
            os.path.join(self.tmp, "collector.log"))

    def down(self):
        self.registry.stop_all()
        subprocess.run([os.path.join(REPO, "tools", "stack.sh"), "down", self.stack_dir],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                       env=clean_env(), timeout=120, start_new_session=True)
        if self.args.keep_logs:
            os.makedirs(self.args.keep_logs, exist_ok=True)
            for name in os.listdir(self.tmp):
                if name.endswith(".log"):
                    shutil.copy(os.path.join(self.tmp, name), self.args.keep_logs)
        shutil.rmtree(self.tmp, ignore_errors=True)

    def psql(self, sql):
        cp = subprocess.run(["psql", self.db_url, "-X", "-q", "-t", "-A", "-v", "ON_ERROR_STOP=1",
                             "-c", sql], stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60)
        check(cp.returncode == 0, "psql: " + cp.stderr.decode())
        return cp.stdout.decode().strip()

    # ---- clients ----

    @property
    def endpoint(self):
        return "http://127.0.0.1:%d" % self.aws_port

    def client_env(self, access_key=ACCESS_KEY, secret=SECRET):
        """The environment of the aws CLI: credentials and region from
        variables only, and a HOME and config of the suite's own."""
        home = os.path.join(self.tmp, "home")
        os.makedirs(home, exist_ok=True)
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("AWS_", "TALLY_", "BOTO_")) and k != "AWS_SUITE_REEXEC"}
        env.update({"HOME": home, "AWS_CONFIG_FILE": os.path.join(home, "config"),
                    "AWS_SHARED_CREDENTIALS_FILE": os.path.join(home, "credentials"),
                    "AWS_ACCESS_KEY_ID": access_key, "AWS_SECRET_ACCESS_KEY": secret,
                    "AWS_DEFAULT_REGION": REGION, "AWS_EC2_METADATA_DISABLED": "true",
                    "AWS_PAGER": "", "TZ": "UTC"})
        return env

    def cli(self, args, rc=0, env=None, prefix=()):
        """One aws CLI run with --endpoint-url added; returns (rc, parsed stdout, stderr)."""
        self.cli_calls += 1
        argv = list(prefix) + [AWS, "apigateway"] + args + ["--endpoint-url", self.endpoint]
        cp = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=120,
                            env=env or self.client_env(), stdin=subprocess.DEVNULL)
        out, err = cp.stdout.decode(), cp.stderr.decode()
        check(cp.returncode == rc, "aws %s: exit %d (expected %d): %s %s"
              % (" ".join(args[:2]), cp.returncode, rc, err.strip()[-600:], out[-300:]))
        return cp.returncode, (json.loads(out) if out.strip() else None), err

    def boto(self, access_key=ACCESS_KEY, secret=SECRET, region=REGION):
        session = boto3.session.Session(aws_access_key_id=access_key, aws_secret_access_key=secret,
                                        region_name=region)
        return session.client("apigateway", endpoint_url=self.endpoint,
                              config=Config(retries={"max_attempts": 1}))

    def admin(self, method, path, body=None):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        headers = {"Authorization": "Bearer " + ADMIN_TOKEN}
        if body is not None:
            headers["Content-Type"] = "application/json"
        conn.request(method, path, body=json.dumps(body) if body is not None else None, headers=headers)
        res = conn.getresponse()
        data = res.read().decode()
        conn.close()
        return res.status, (json.loads(data) if data else None)

    def authorize(self, key_value, uri="/items"):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        conn.request("GET", "/v1/authorize", headers={"x-api-key": key_value,
                                                      "X-Original-Method": "GET",
                                                      "X-Original-URI": uri})
        res = conn.getresponse()
        res.read()
        conn.close()
        return res.status

    def raw(self, method, path, body=b"", headers=None):
        conn = http.client.HTTPConnection("127.0.0.1", self.aws_port, timeout=30)
        conn.request(method, path, body=body or None, headers=headers or {})
        res = conn.getresponse()
        data = res.read().decode()
        conn.close()
        return res.status, res.getheader("x-amzn-ErrorType"), (json.loads(data) if data else None)

    def signed(self, method, path, body=b"", secret=SECRET, region=REGION, minutes_ago=0):
        """Headers of a request signed by botocore's own SigV4 signer, its
        clock `minutes_ago` behind."""
        request = botocore.awsrequest.AWSRequest(method=method, url=self.endpoint + path, data=body,
                                                 headers={"Content-Type": "application/json"})
        signer = botocore.auth.SigV4Auth(botocore.credentials.Credentials(ACCESS_KEY, secret),
                                         "apigateway", region)
        real = datetime.datetime

        class Slow(real):
            @classmethod
            def utcnow(cls):
                return real.utcnow() - datetime.timedelta(minutes=minutes_ago)

        with mock.patch.object(botocore.auth.datetime, "datetime", Slow):
            signer.add_auth(request)
        return dict(request.headers.items())


# ---- 1. the workload's CLI commands ---------------------------------------------------


def workload_commands():
    """The CLI commands of the workload, from the repository's copy of it
    (docs/AWS-USAGE-PLANS.md §5), as argv lists."""
    import shlex
    with open(WORKLOAD) as f:
        text = f.read()
    block = text.split("<!-- workload-cli -->", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    block = block.replace("\\\n", " ")
    commands, current = [], ""
    for line in block.splitlines():
        if line.strip().startswith("#") and not current:
            continue
        current += line + "\n"
        try:
            argv = shlex.split(current, comments=True)
        except ValueError:
            continue  # an open quote: the command goes on
        if argv:
            commands.append(argv)
        current = ""
    return commands


def test_workload_cli(s):
    commands = workload_commands()
    check(len(commands) == 10, "the workload has 10 CLI commands, found %d" % len(commands))
    names = {"Partner-Acme-Corp": "key-acme-456", "Partner-Widget-Inc": "key-widget-012",
             "Legacy-Client": "key-legacy", "Free Tier": "plan123", "Premium Tier": "plan789",
             "Enterprise Tier": "plan-enterprise", "Custom Plan": "plan-custom"}
    custom_throttle = None
    for argv in commands:
        check(argv[:2] == ["aws", "apigateway"], "not an aws apigateway command: %r" % argv)
        args = [s.ids.get(a, a) for a in argv[2:]]  # the ids the create calls returned
        _, out, _ = s.cli(args)
        op = argv[2]
        if op in ("create-api-key", "create-usage-plan"):
            s.ids[names[out["name"]]] = out["id"]
        if op == "create-api-key":
            check(out["enabled"] is True and len(out["value"]) >= 20, "create-api-key: %r" % out)
            s.values[out["id"]] = out["value"]
        if op == "create-usage-plan":
            check(out["apiStages"][0]["apiId"] == "abc123api" and out["apiStages"][0]["stage"] == "prod",
                  "apiStages not answered back: %r" % out)
            if out["name"] == "Custom Plan":
                custom_throttle = json.loads(argv[argv.index("--api-stages") + 1])[0]["throttle"]
                check(out["apiStages"][0]["throttle"] == custom_throttle,
                      "per-method throttles do not round-trip: %r" % out["apiStages"])
                check(out["throttle"] == {"burstLimit": 50, "rateLimit": 25.0}
                      and out["quota"] == {"limit": 5000, "offset": 0, "period": "DAY"},
                      "throttle/quota: %r" % out)
        if op == "create-usage-plan-key":
            check(out["type"] == "API_KEY" and out["id"] == args[args.index("--key-id") + 1],
                  "create-usage-plan-key: %r" % out)
        if op == "get-usage":
            days = out["items"][s.ids["key-acme-456"]]
            check(out["startDate"] == "2026-02-01" and out["endDate"] == "2026-02-12"
                  and days == [[0, 100]] * 12, "get-usage: %r" % out)
    # What AWS created is an ordinary Tally plan: per-method throttles enforced by authorize.
    status, plan = s.admin("GET", "/v1/plans/" + s.ids["plan-custom"])
    check(status == 200 and plan["methodThrottles"] == custom_throttle
          and plan["quota"]["limit"] == 5000, "/v1/plans: %r" % plan)
    status, key = s.admin("GET", "/v1/keys/" + s.ids["key-acme-456"])
    check(status == 200 and key["planId"] == s.ids["plan123"], "/v1/keys: %r" % key)
    return "%d CLI commands" % len(commands)


# ---- 2. events, then the dashboard script -------------------------------------------------


def event(key_id, at, units=1):
    return json.dumps({"specversion": "1.0", "id": str(uuid.uuid4()), "source": "aws-suite",
                       "type": "api.request", "subject": key_id,
                       "time": at.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
                       "data": {"method": "GET", "endpoint": "/items", "status": 200,
                                "units": units, "bytes": 10}}).encode()


def test_events_and_dashboard(s):
    acme, legacy = s.ids["key-acme-456"], s.ids["key-legacy"]
    # Legacy-Client joins the Free Tier too, so the dashboard has two keys to sort.
    s.boto().create_usage_plan_key(usagePlanId=s.ids["plan123"], keyId=legacy, keyType="API_KEY")
    now = datetime.datetime.utcnow().replace(microsecond=0)
    produced = {acme: [(0, 3), (1, 2), (3, 1), (10, 4)], legacy: [(0, 2), (2, 1)],
                s.ids["key-widget-012"]: [(0, 7)]}
    messages = []
    for key, spans in produced.items():
        for days_ago, count in spans:
            at = now - datetime.timedelta(days=days_ago, minutes=1)
            for _ in range(count):
                messages.append((key, event(key, at)))
                day = at.date().isoformat()
                s.expected.setdefault(key, {})[day] = s.expected.get(key, {}).get(day, 0) + 1
    kcat_produce_lines(s.brokers, "usage-events", messages)
    total = len(messages)
    wait_until("the collector to count %d events" % total,
               lambda: s.psql("SELECT coalesce(sum(requests), 0) FROM usage_hourly") == str(total), 60)

    with open(WORKLOAD) as f:
        script = f.read().split("<!-- workload-boto3 -->", 1)[1].split("```python", 1)[1].split("```", 1)[0]
    check('boto3.client("apigateway")' in script and '"plan123"' in script,
          "the dashboard script changed shape")
    script = script.replace('boto3.client("apigateway")',
                            'boto3.client("apigateway", endpoint_url=%r)' % s.endpoint)
    script = script.replace('"plan123"', '"%s"' % s.ids["plan123"])

    def run_script(text, name):
        path = os.path.join(s.tmp, name)
        with open(path, "w") as f:
            f.write(text)
        return subprocess.run([DEBIAN_PYTHON, path], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              env=s.client_env(), timeout=120)
    # As written, the script sums day_usage[0] over usage["items"].values():
    # each value is a key's LIST of [used, remaining] pairs (botocore's
    # model: map of key id to list of list of long), so day_usage[0] is the
    # first day's pair and sum() fails on it, against AWS as against Tally.
    # It is run as written first (that failure, and nothing else), then with
    # that one line mended (docs/AWS-USAGE-PLANS.md §5).
    cp = run_script(script, "dashboard-as-written.py")
    check(cp.returncode != 0 and "TypeError: unsupported operand type(s) for +: 'int' and 'list'"
          in cp.stderr.decode(), "the script as written: rc %d, %s" % (cp.returncode, cp.stderr.decode()[-300:]))
    buggy = 'total_used = sum(day_usage[0] for day_usage in usage["items"].values())'
    mended = ('total_used = sum(day_usage[0] for key_days in usage["items"].values() '
              'for day_usage in key_days)')
    check(buggy in script, "the dashboard's summing line changed")
    cp = run_script(script.replace(buggy, mended), "dashboard.py")
    check(cp.returncode == 0, "dashboard script: " + cp.stderr.decode()[-800:])
    # Its window: from 7 days before now to today, whole days (the script's own dates).
    today = datetime.datetime.utcnow().date()
    window = [(today - datetime.timedelta(days=d)).isoformat() for d in range(8)]

    def in_window(key):
        return sum(n for day, n in s.expected[key].items() if day in window)
    expected = "Partner-Acme-Corp: %d requests\nLegacy-Client: %d requests\n" % (in_window(acme), in_window(legacy))
    check(in_window(acme) > in_window(legacy), "the suite's data should sort Acme first")
    check(cp.stdout.decode() == expected, "dashboard printed %r, expected %r" % (cp.stdout.decode(), expected))

    # The per-day pairs: [used, remaining] with the Free Tier's 100 a DAY.
    usage = s.boto().get_usage(usagePlanId=s.ids["plan123"], keyId=acme,
                               startDate=window[-1], endDate=window[0])
    pairs = usage["items"][acme]
    wanted = [[s.expected[acme].get(day, 0), 100 - s.expected[acme].get(day, 0)] for day in reversed(window)]
    check(pairs == wanted, "get_usage pairs %r, expected %r" % (pairs, wanted))
    # Without keyId: every key of the plan.
    every = s.boto().get_usage(usagePlanId=s.ids["plan123"], startDate=window[0], endDate=window[0])
    check(sorted(every["items"]) == sorted([acme, legacy]), "get_usage of the plan: %r" % every["items"])
    return "%d events; dashboard printed %r" % (total, cp.stdout.decode().strip())


# ---- 3. every operation through boto3 ----------------------------------------------------------


def expect_error(call, code, text=None):
    try:
        call()
    except botocore.exceptions.ClientError as e:
        err = e.response["Error"]
        check(err["Code"] == code, "expected %s, got %s: %s" % (code, err["Code"], err.get("Message")))
        check(text is None or text in err.get("Message", ""), "message %r lacks %r" % (err.get("Message"), text))
        return err
    raise Failure("expected %s, the call succeeded" % code)


def test_key_operations(s):
    c = s.boto()
    key = c.create_api_key(name="ops-key", description="d0", customerId="cust-0", enabled=False)
    check(key["enabled"] is False and key["customerId"] == "cust-0", "create: %r" % key)
    got = c.get_api_key(apiKey=key["id"], includeValue=True)
    check(got["name"] == "ops-key" and "value" not in got, "get: %r" % got)
    patched = c.update_api_key(apiKey=key["id"], patchOperations=[
        {"op": "replace", "path": "/name", "value": "ops-key-2"},
        {"op": "replace", "path": "/description", "value": "d1"},
        {"op": "replace", "path": "/customerId", "value": "cust-1"},
        {"op": "replace", "path": "/enabled", "value": "true"}])
    check(patched["name"] == "ops-key-2" and patched["description"] == "d1"
          and patched["customerId"] == "cust-1" and patched["enabled"] is True, "patch: %r" % patched)
    status, tally = s.admin("GET", "/v1/keys/" + key["id"])
    check(tally["name"] == "ops-key-2" and tally["customerId"] == "cust-1" and tally["enabled"] is True,
          "/v1 sees %r" % tally)
    expect_error(lambda: c.update_api_key(apiKey=key["id"], patchOperations=[
        {"op": "replace", "path": "/stages", "value": "x"}]), "BadRequestException", "Invalid patch path")
    expect_error(lambda: c.update_api_key(apiKey=key["id"], patchOperations=[
        {"op": "replace", "path": "/enabled", "value": "maybe"}]), "BadRequestException")
    listed = c.get_api_keys(nameQuery="ops-key", customerId="cust-1")["items"]
    check([k["id"] for k in listed] == [key["id"]], "get_api_keys filters: %r" % listed)
    c.delete_api_key(apiKey=key["id"])
    expect_error(lambda: c.get_api_key(apiKey=key["id"]), "NotFoundException",
                 "Invalid API Key identifier specified")
    return "create/get/update (4 paths)/list/delete"


def test_plan_operations(s):
    c = s.boto()
    plan = c.create_usage_plan(name="ops-plan", description="p0",
                               throttle={"burstLimit": 5, "rateLimit": 2.0},
                               quota={"limit": 10, "offset": 1, "period": "WEEK"},
                               apiStages=[{"apiId": "api1", "stage": "beta"}])
    pid = plan["id"]
    check(plan["quota"] == {"limit": 10, "offset": 1, "period": "WEEK"}, "create: %r" % plan)
    steps = [
        ({"op": "replace", "path": "/name", "value": "ops-plan-2"}, lambda p: p["name"] == "ops-plan-2"),
        ({"op": "replace", "path": "/description", "value": "p1"}, lambda p: p["description"] == "p1"),
        ({"op": "replace", "path": "/throttle/rateLimit", "value": "7.5"},
         lambda p: p["throttle"]["rateLimit"] == 7.5),
        ({"op": "replace", "path": "/throttle/burstLimit", "value": "9"},
         lambda p: p["throttle"]["burstLimit"] == 9),
        ({"op": "replace", "path": "/quota/limit", "value": "20"}, lambda p: p["quota"]["limit"] == 20),
        ({"op": "replace", "path": "/quota/offset", "value": "3"}, lambda p: p["quota"]["offset"] == 3),
        ({"op": "replace", "path": "/quota/period", "value": "MONTH"},
         lambda p: p["quota"]["period"] == "MONTH"),
        ({"op": "remove", "path": "/throttle"}, lambda p: "throttle" not in p),
        ({"op": "remove", "path": "/quota"}, lambda p: "quota" not in p),
    ]
    for op, ok in steps:
        answer = c.update_usage_plan(usagePlanId=pid, patchOperations=[op])
        check(ok(answer), "%s %s: %r" % (op["op"], op["path"], answer))
        check(ok(c.get_usage_plan(usagePlanId=pid)), "%s not stored" % op["path"])
    status, tally = s.admin("GET", "/v1/plans/" + pid)
    check(tally["name"] == "ops-plan-2" and tally["quota"] is None and tally["throttle"] is None,
          "/v1 sees %r" % tally)
    expect_error(lambda: c.update_usage_plan(usagePlanId=pid, patchOperations=[
        {"op": "replace", "path": "/quota/limit", "value": "ten"}]), "BadRequestException")
    expect_error(lambda: c.update_usage_plan(usagePlanId=pid, patchOperations=[
        {"op": "replace", "path": "/quota/period", "value": "YEAR"}]), "BadRequestException")
    # The plan's keys, and a key of another plan.
    key = c.create_api_key(name="ops-plan-key", enabled=True)
    c.create_usage_plan_key(usagePlanId=pid, keyId=key["id"], keyType="API_KEY")
    check(c.get_usage_plan_key(usagePlanId=pid, keyId=key["id"])["name"] == "ops-plan-key", "get key")
    check([p["id"] for p in c.get_usage_plans(keyId=key["id"])["items"]] == [pid], "get_usage_plans keyId")
    expect_error(lambda: c.create_usage_plan_key(usagePlanId=s.ids["plan789"], keyId=key["id"],
                                                 keyType="API_KEY"), "ConflictException")
    expect_error(lambda: c.get_usage_plan_key(usagePlanId=s.ids["plan789"], keyId=key["id"]),
                 "NotFoundException", "Invalid API Key identifier specified")
    expect_error(lambda: c.delete_usage_plan(usagePlanId=pid), "ConflictException")
    c.delete_usage_plan_key(usagePlanId=pid, keyId=key["id"])
    check(c.get_usage_plan_keys(usagePlanId=pid)["items"] == [], "key not removed")
    c.delete_usage_plan(usagePlanId=pid)
    expect_error(lambda: c.get_usage_plan(usagePlanId=pid), "NotFoundException",
                 "Invalid Usage Plan ID specified")
    c.delete_api_key(apiKey=key["id"])
    return "create/get/list/update (9 paths)/delete, plan keys"


def test_pagination(s):
    c = s.boto()
    plan = c.create_usage_plan(name="paging")
    for i in range(7):
        key = c.create_api_key(name="page-%d" % i, enabled=True)
        if i < 5:
            c.create_usage_plan_key(usagePlanId=plan["id"], keyId=key["id"], keyType="API_KEY")
    for i in range(3):
        c.create_usage_plan(name="paging-%d" % i)
    summary = []
    for op, kwargs, table_sql, size in [
            ("get_api_keys", {}, "SELECT id FROM api_keys", 3),
            ("get_usage_plans", {}, "SELECT id FROM plans", 2),
            ("get_usage_plan_keys", {"usagePlanId": plan["id"]},
             "SELECT id FROM api_keys WHERE plan_id = '%s'" % plan["id"], 2)]:
        pages = list(c.get_paginator(op).paginate(PaginationConfig={"PageSize": size}, **kwargs))
        ids = [item["id"] for page in pages for item in page["items"]]
        stored = sorted(s.psql(table_sql).split())
        check(len(pages) > 1, "%s: one page only" % op)
        check(len(ids) == len(set(ids)), "%s: an item repeated" % op)
        check(sorted(ids) == stored, "%s: %d items, stored %d" % (op, len(ids), len(stored)))
        summary.append("%s %d items in %d pages" % (op, len(ids), len(pages)))
    # The CLI walks the pages by itself.
    _, out, _ = s.cli(["get-api-keys", "--page-size", "4"])
    check(sorted(k["id"] for k in out["items"]) == sorted(s.psql("SELECT id FROM api_keys").split()),
          "CLI auto-pagination: %r" % out)
    return "; ".join(summary) + "; CLI get-api-keys --page-size 4 complete"


def test_update_usage_then_authorize(s):
    acme = s.ids["key-acme-456"]
    value = s.values[acme]
    used_today = s.expected[acme].get(datetime.datetime.utcnow().date().isoformat(), 0)
    check(s.authorize(value) == 204, "authorize before UpdateUsage")
    answer = s.boto().update_usage(usagePlanId=s.ids["plan123"], keyId=acme,
                                   patchOperations=[{"op": "replace", "path": "/remaining", "value": "2"}])
    check(answer["items"][acme][0][1] == 2, "update_usage answered %r" % answer["items"])
    status, quota = s.admin("GET", "/v1/keys/%s/quota" % acme)
    check(status == 200 and quota["remaining"] == 2 and quota["limit"] == 2 + used_today,
          "/v1/keys/{id}/quota after UpdateUsage: %r" % quota)
    conn = http.client.HTTPConnection("127.0.0.1", s.port, timeout=30)
    conn.request("GET", "/v1/me/quota", headers={"x-api-key": value})
    me = json.loads(conn.getresponse().read().decode())
    conn.close()
    check(me["remaining"] == 2, "/v1/me/quota after UpdateUsage: %r" % me)
    results = [s.authorize(value) for _ in range(3)]
    check(results == [204, 204, 429], "authorize after remaining=2: %r" % results)
    s.boto().update_usage(usagePlanId=s.ids["plan123"], keyId=acme,
                          patchOperations=[{"op": "replace", "path": "/remaining", "value": "50"}])
    check(s.authorize(value) == 204, "authorize after remaining=50")
    expect_error(lambda: s.boto().update_usage(usagePlanId=s.ids["plan123"], keyId=acme, patchOperations=[
        {"op": "replace", "path": "/used", "value": "1"}]), "BadRequestException")
    expect_error(lambda: s.boto().update_usage(usagePlanId=s.ids["plan789"], keyId=acme, patchOperations=[
        {"op": "replace", "path": "/remaining", "value": "1"}]), "NotFoundException")
    return "remaining=2: authorize %r; remaining=50: allowed again" % results


def test_import_api_keys(s):
    c = s.boto()
    before = s.psql("SELECT count(*) FROM api_keys")
    bad = ("Name,Key,Description,Enabled,UsagePlanIds\n"
           "imp-a,imported-value-aaaaaaaaaaaa,first,true,%s\n"
           "imp-b,short,second,true,\n" % s.ids["plan789"]).encode()
    expect_error(lambda: c.import_api_keys(body=bad, format="csv", failOnWarnings=True),
                 "BadRequestException", "line 3")
    check(s.psql("SELECT count(*) FROM api_keys") == before, "failonwarnings created keys")
    answer = c.import_api_keys(body=bad, format="csv", failOnWarnings=False)
    check(len(answer["ids"]) == 1 and len(answer["warnings"]) == 1, "import: %r" % answer)
    status, key = s.admin("GET", "/v1/keys/" + answer["ids"][0])
    check(key["name"] == "imp-a" and key["planId"] == s.ids["plan789"] and key["enabled"] is True,
          "imported key: %r" % key)
    check(s.authorize("imported-value-aaaaaaaaaaaa") == 204, "the imported value authorizes")
    return "failonwarnings refused whole; without it 1 key, 1 warning"


# ---- 4. errors as the CLI shows them ------------------------------------------------------------


def test_cli_errors(s):
    def shows(args, text, env=None, prefix=()):
        rc, _, err = s.cli(args, rc=254, env=env, prefix=prefix)
        check(text in err, "aws %s: stderr %r lacks %r" % (args[0], err, text))
        return err.strip()
    shown = [
        shows(["get-usage-plan", "--usage-plan-id", "pln_doesnotexist"],
              "An error occurred (NotFoundException) when calling the GetUsagePlan operation: "
              "Invalid Usage Plan ID specified"),
        shows(["update-usage-plan", "--usage-plan-id", s.ids["plan123"], "--patch-operations",
               "op=replace,path=/bogus,value=1"],
              "An error occurred (BadRequestException) when calling the UpdateUsagePlan operation: "
              "Invalid patch path '/bogus'"),
        shows(["get-usage-plans"], "An error occurred (InvalidSignatureException) when calling the "
              "GetUsagePlans operation: The request signature we calculated does not match",
              env=s.client_env(secret="not-the-secret-at-all")),
        shows(["get-usage-plans"], "An error occurred (InvalidSignatureException) when calling the "
              "GetUsagePlans operation: Signature expired:", prefix=("faketime", "-f", "-20m")),
    ]
    return "exit 254: " + " | ".join(line.split(": ", 1)[1][:40] for line in shown)


# ---- 5. refusals of the signature ---------------------------------------------------------------


def test_signature_refusals(s):
    body = json.dumps({"name": "tampered", "enabled": True}).encode()
    count = s.psql("SELECT count(*) FROM api_keys")
    status, kind, _ = s.raw("GET", "/usageplans")
    check(status == 403 and kind == "MissingAuthenticationTokenException", "unsigned: %s %s" % (status, kind))
    status, kind, _ = s.raw("GET", "/v1/plans")
    check(status == 403 and kind == "MissingAuthenticationTokenException",
          "unsigned, unknown path: %s %s" % (status, kind))
    status, kind, msg = s.raw("GET", "/v1/plans", b"", s.signed("GET", "/v1/plans"))
    check(status == 404 and kind == "NotFoundException" and set(msg) == {"message"},
          "signed, unknown path: %s %s %s" % (status, kind, msg))
    headers = s.signed("POST", "/apikeys", body)
    status, kind, msg = s.raw("POST", "/apikeys", body.replace(b"tampered", b"tampereD"), headers)
    check(status == 403 and kind == "InvalidSignatureException", "tampered body: %s %s %s" % (status, kind, msg))
    status, kind, _ = s.raw("POST", "/apikeys", body, s.signed("POST", "/apikeys", body, secret="wrong-secret-x"))
    check(status == 403 and kind == "InvalidSignatureException", "wrong secret: %s %s" % (status, kind))
    old = s.signed("POST", "/apikeys", body, minutes_ago=16)
    status, kind, msg = s.raw("POST", "/apikeys", body, old)
    check(status == 403 and kind == "InvalidSignatureException" and "Signature expired" in msg["message"],
          "replayed 16 minutes later: %s %s %s" % (status, kind, msg))
    status, kind, msg = s.raw("GET", "/usageplans", b"", s.signed("GET", "/usageplans", region="us-west-2"))
    check(status == 403 and "region" in msg["message"], "other region: %s %s" % (status, msg))
    expect_error(lambda: s.boto(access_key="AKIAUNKNOWN0000")  # an unknown access key
                 .get_usage_plans(), "UnrecognizedClientException")
    check(s.psql("SELECT count(*) FROM api_keys") == count, "a refused request created a key")
    # The untouched request is served, and the second (rotated-in) pair works.
    status, kind, created = s.raw("POST", "/apikeys", body, s.signed("POST", "/apikeys", body))
    check(status == 201 and created["name"] == "tampered", "the signed original: %s %s" % (status, kind))
    s.boto(access_key=ACCESS_KEY_2, secret=SECRET_2).get_usage_plans()
    return "unsigned, tampered, wrong secret, 16 min old, other region, unknown id refused; 2nd pair ok"


def test_clean_stop(s):
    rc, elapsed, killed = s.api.terminate(20)
    check(not killed and rc == 0, "tally-api exited %s after SIGTERM" % rc)
    report = sanitizer_report(s.api.log_text())
    check(report is None, "sanitizer report:\n%s" % report)
    leaked = [line for line in s.api.log_text().splitlines()
              if SECRET in line or SECRET_2 in line]
    check(not leaked, "a secret reached the log: %r" % leaked[:1])
    return "exit 0 in %.1f s, no sanitizer report, no secret in the log" % elapsed


TESTS = [test_workload_cli, test_events_and_dashboard, test_key_operations, test_plan_operations,
         test_pagination, test_update_usage_then_authorize, test_import_api_keys, test_cli_errors,
         test_signature_refusals, test_clean_stop]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--bin", default=os.path.join(REPO, "build", "bin"))
    parser.add_argument("--asan-bin")
    parser.add_argument("--keep-logs")
    args = parser.parse_args()
    for tool in (AWS, "faketime", "kcat"):
        if shutil.which(tool) is None:
            print("aws suite: %s is missing (tools/install-deps.sh installs it)" % tool)
            return 1
    suite = Suite(args)
    passed = failed = 0
    started = time.monotonic()
    try:
        suite.up()
        for test in TESTS:
            t0 = time.monotonic()
            try:
                detail = test(suite)
                passed += 1
                print("PASS %s (%.1f s): %s" % (test.__name__, time.monotonic() - t0, detail), flush=True)
            except Exception as e:  # noqa: BLE001 - every test reports
                failed += 1
                print("FAIL %s (%.1f s): %s" % (test.__name__, time.monotonic() - t0,
                                                e if isinstance(e, Failure) else traceback.format_exc()),
                      flush=True)
    except Exception:  # noqa: BLE001
        failed += 1
        print("FAIL setup: %s" % traceback.format_exc())
        print("api log tail:\n%s" % suite.api.log_tail() if hasattr(suite, "api") else "")
    finally:
        suite.down()
    print("%d passed, %d failed (%d aws CLI runs, %.0f s)"
          % (passed, failed, suite.cli_calls, time.monotonic() - started))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
