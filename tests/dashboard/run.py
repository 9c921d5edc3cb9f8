#!/usr/bin/env python3
"""The dashboards (issue #14) in a real browser, against a running system.

    python3 tests/dashboard/run.py [--bin build/bin] [--artefacts DIR] [--only NAME ...]

Starts PostgreSQL and the dev broker (tools/stack.sh, a temporary
directory), migrates, starts tally-collector and tally-api (free ports),
creates a plan and two keys through the api and counts events for both
with tally-loadgen (some of them hours and days old). Then Debian's
chromium, headless, with no network beyond loopback, driven over the
DevTools protocol on a pipe (--remote-debugging-pipe: no extra package):

  customer_page      a dashboard link opens the page; its gauge, totals and
                     both charts' data equal what the api answers; screenshot
  link_refusals      an expired link (signed here, independently of the C
                     code) and a link altered to name another key: the api
                     answers 401 and the page says why; a valid link of the
                     other key shows that key, not the first
  api_unreachable    the page says so when the api does not answer
  admin_page         a wrong token typed into the form is refused; the right
                     one shows figures equal to /v1/status, /v1/usage/top and
                     /v1/quotas/nearest, each linked to its route; screenshot
  cors_headers       preflights and actual requests from an allowed and a
                     refused origin (raw HTTP), admin routes never open
  cors_in_browser    a page served from another origin calls /v1/me/quota
                     in chromium: allowed from the listed origin, blocked from
                     an unlisted one (the browser's own CORS check)
  page_headers       CSP without inline scripts, no-store, nosniff

Screenshots go to --artefacts (default: a temporary directory, printed).
Python 3 standard library only. About 40 s on an idle 2-core machine."""

import argparse
import base64
import fcntl
import hashlib
import hmac
import http.client
import http.server
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import urllib.parse

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(REPO, "tests", "integration"))
from lib import (Failure, Proc, Registry, check, clean_env, free_port,  # noqa: E402
                 sanitizer_report, wait_until)

ADMIN_TOKEN = "dashboard-test-admin-token-0123"
HMAC_SECRET = "dashboard-test-hmac-secret-0123456789abcdef"
KEY_A_VALUE = "dash-key-a-secret-value-0123456789"
KEY_B_VALUE = "dash-key-b-secret-value-0123456789"
QUOTA = 5000
TESTS = []


def test(fn):
    TESTS.append(fn)
    return fn


# ---- dashboard links, written here from docs (not from the C code) ---------


def sign_link(key_id, expires_s, secret=HMAC_SECRET):
    """A link token as README "Dashboards" describes it."""
    link_key = hmac.new(secret.encode(), b"tally dashboard-link signing key v1",
                        hashlib.sha256).digest()
    message = b"tally-dashboard-link-v1\n%d\n%s" % (expires_s, key_id.encode())
    mac = hmac.new(link_key, message, hashlib.sha256).hexdigest()
    return "tdl1.%d.%s.%s" % (expires_s, mac, key_id)


# ---- chromium over the DevTools protocol (a pipe) -------------------------


class Browser:
    """Headless chromium driven over --remote-debugging-pipe: JSON messages
    separated by NUL bytes, ours on its fd 3, its answers on its fd 4."""

    def __init__(self, tmp, log_path):
        self.profile = tempfile.mkdtemp(prefix="chromium-", dir=tmp)
        to_chrome_r, self.to_chrome = os.pipe()
        self.from_chrome, from_chrome_w = os.pipe()

        def wire_fds():
            # Out of the way first, so that neither end is clobbered when
            # it already sits on 3 or 4; the fds 3 and 4 are kept open
            # (pass_fds), the rest closed after this runs.
            read_end = fcntl.fcntl(to_chrome_r, fcntl.F_DUPFD, 10)
            write_end = fcntl.fcntl(from_chrome_w, fcntl.F_DUPFD, 10)
            os.dup2(read_end, 3)
            os.dup2(write_end, 4)

        self.log = open(log_path, "ab")
        self.proc = subprocess.Popen(
            ["chromium", "--headless", "--no-sandbox", "--disable-gpu",
             "--remote-debugging-pipe", "--user-data-dir=" + self.profile,
             "--no-first-run", "--no-default-browser-check", "--disable-extensions",
             "--disable-background-networking", "--disable-component-update",
             "--disable-sync", "--metrics-recording-only", "--mute-audio",
             # loopback only: any other host fails to resolve
             "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost, EXCLUDE 127.0.0.1",
             "--window-size=1200,900", "about:blank"],
            stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT,
            preexec_fn=wire_fds, pass_fds=(3, 4), start_new_session=True)
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        self.buffer = b""
        self.next_id = 0
        self.session = None
        self.console = []

    def _send(self, method, params=None, session=True):
        self.next_id += 1
        message = {"id": self.next_id, "method": method, "params": params or {}}
        if session and self.session:
            message["sessionId"] = self.session
        os.write(self.to_chrome, json.dumps(message).encode() + b"\0")
        return self.next_id

    def _read_message(self, deadline):
        while b"\0" not in self.buffer:
            if time.monotonic() > deadline:
                raise Failure("chromium did not answer in time")
            chunk = os.read(self.from_chrome, 65536)
            if not chunk:
                raise Failure("chromium closed its DevTools pipe")
            self.buffer += chunk
        raw, self.buffer = self.buffer.split(b"\0", 1)
        return json.loads(raw)

    def call(self, method, params=None, session=True, timeout=30):
        wanted = self._send(method, params, session)
        deadline = time.monotonic() + timeout
        while True:
            message = self._read_message(deadline)
            if message.get("method") == "Fetch.requestPaused":
                self._send("Fetch.failRequest", {"requestId": message["params"]["requestId"],
                                                 "errorReason": "ConnectionRefused"})
            elif message.get("method") == "Runtime.consoleAPICalled":
                self.console.append(" ".join(str(a.get("value", a.get("description", "")))
                                             for a in message["params"]["args"]))
            elif message.get("method") == "Log.entryAdded":
                self.console.append(message["params"]["entry"].get("text", ""))
            if message.get("id") == wanted:
                if "error" in message:
                    raise Failure("%s: %s" % (method, message["error"]))
                return message.get("result", {})

    def open_tab(self):
        target = self.call("Target.createTarget", {"url": "about:blank"}, session=False)
        attached = self.call("Target.attachToTarget",
                             {"targetId": target["targetId"], "flatten": True}, session=False)
        self.session = attached["sessionId"]
        self.call("Page.enable")
        self.call("Runtime.enable")
        self.call("Log.enable")
        self.console = []
        return target["targetId"]

    def close_tab(self, target_id):
        self.call("Target.closeTarget", {"targetId": target_id}, session=False)
        self.session = None

    def fail_requests(self, pattern):
        """Every request of this tab matching `pattern` fails to connect."""
        self.call("Fetch.enable", {"patterns": [{"urlPattern": pattern}]})

    def navigate(self, url):
        self.call("Page.navigate", {"url": url})

    def evaluate(self, expression):
        result = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                                "awaitPromise": True})
        if "exceptionDetails" in result:
            raise Failure("page script failed: %s" % result["exceptionDetails"])
        return result["result"].get("value")

    def wait_for(self, what, expression, timeout=20):
        # Until the page has loaded, its elements may not exist yet: "not yet".
        guarded = "(() => { try { return (%s); } catch (e) { return false; } })()" % expression
        return wait_until(what, lambda: self.evaluate(guarded), timeout, interval=0.1,
                          on_timeout=lambda: "page status: %r; console: %r" % (
                              self.evaluate("(document.getElementById('status')||{}).textContent"),
                              self.console[-5:]))

    def type_text(self, selector, text):
        self.evaluate("document.querySelector(%s).focus()" % json.dumps(selector))
        self.call("Input.insertText", {"text": text})

    def press_enter(self):
        for kind in ("keyDown", "keyUp"):
            self.call("Input.dispatchKeyEvent", {"type": kind, "key": "Enter", "code": "Enter",
                                                 "windowsVirtualKeyCode": 13, "text": "\r"})

    def screenshot(self, path):
        height = self.evaluate("Math.ceil(document.documentElement.scrollHeight)") or 900
        self.call("Emulation.setDeviceMetricsOverride",
                  {"width": 1200, "height": min(int(height), 4000), "deviceScaleFactor": 1,
                   "mobile": False})
        shot = self.call("Page.captureScreenshot", {"format": "png"})
        with open(path, "wb") as f:
            f.write(base64.b64decode(shot["data"]))
        self.call("Emulation.clearDeviceMetricsOverride")

    def close(self):
        try:
            self.call("Browser.close", session=False, timeout=5)
        except Exception:  # noqa: BLE001 - it may be gone already
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self.to_chrome)
        os.close(self.from_chrome)
        self.log.close()


# ---- the system -------------------------------------------------------------


class System:
    def __init__(self, args):
        self.args = args
        self.tmp = tempfile.mkdtemp(prefix="tally-dashboard-")
        self.artefacts = args.artefacts or os.path.join(self.tmp, "artefacts")
        os.makedirs(self.artefacts, exist_ok=True)
        self.registry = Registry()
        self.stack = os.path.join(self.tmp, "stack")
        self.page_port = free_port()
        self.allowed_origin = "http://127.0.0.1:%d" % self.page_port
        self.refused_origin = "http://localhost:%d" % self.page_port

    def start(self):
        subprocess.run([os.path.join(REPO, "tools", "stack.sh"), "up", self.stack, "--fast"],
                       check=True, stdout=subprocess.DEVNULL, env=clean_env(), timeout=120)
        self.env = clean_env()
        with open(os.path.join(self.stack, "env")) as f:
            for line in f:
                if line.startswith("export "):
                    name, value = line[len("export "):].strip().split("=", 1)
                    self.env[name] = value.strip("'")
        self.env.pop("TALLY_STATE_DIR", None)
        subprocess.run([os.path.join(REPO, "tools", "migrate.sh")], check=True, env=self.env,
                       timeout=120)
        bin_dir = os.path.abspath(self.args.bin)
        self.api_port = free_port()
        self.api_url = "http://127.0.0.1:%d" % self.api_port
        env = dict(self.env, TALLY_ADMIN_TOKEN=ADMIN_TOKEN, TALLY_KEY_HMAC_SECRET=HMAC_SECRET)
        self.collector = Proc(self.registry, "collector",
                              [os.path.join(bin_dir, "tally-collector"), "--metrics-addr",
                               "127.0.0.1:%d" % free_port()],
                              os.path.join(self.tmp, "collector.log"), env=env)
        self.api = Proc(self.registry, "api",
                        [os.path.join(bin_dir, "tally-api"), "--http-addr",
                         "127.0.0.1:%d" % self.api_port, "--metrics-addr", "",
                         "--cors-origins", self.allowed_origin + ", https://other.example"],
                        os.path.join(self.tmp, "api.log"), env=env)
        wait_until("the api to answer", lambda: self.request("GET", "/healthz")[0] == 200, 30)
        self.seed(bin_dir)

    def request(self, method, path, headers=None, body=None):
        """(status, headers dict lower-cased, parsed JSON or None); status 0 when refused."""
        conn = http.client.HTTPConnection("127.0.0.1", self.api_port, timeout=30)
        try:
            conn.request(method, path, body=json.dumps(body) if body is not None else None,
                         headers=headers or {})
            r = conn.getresponse()
            raw = r.read()
            try:
                parsed = json.loads(raw) if raw else None
            except ValueError:
                parsed = raw
            return r.status, {k.lower(): v for k, v in r.getheaders()}, parsed
        except ConnectionError:
            return 0, {}, None
        finally:
            conn.close()

    def admin(self, method, path, body=None, expect=200):
        status, _, answer = self.request(method, path,
                                         {"Authorization": "Bearer " + ADMIN_TOKEN}, body)
        check(status == expect, "%s %s: %d %r" % (method, path, status, answer))
        return answer

    def seed(self, bin_dir):
        plan = self.admin("POST", "/v1/plans",
                          {"name": "Starter", "quota": {"limit": QUOTA, "period": "MONTH"}}, 201)
        self.key_a = self.admin("POST", "/v1/keys", {"name": "Acme production", "planId": plan["id"],
                                                     "value": KEY_A_VALUE}, 201)["id"]
        self.key_b = self.admin("POST", "/v1/keys", {"name": "Globex staging", "planId": plan["id"],
                                                     "value": KEY_B_VALUE}, 201)["id"]
        summary = os.path.join(self.tmp, "loadgen.json")
        # a third of the events 1..72 h old: the hourly and daily charts get history
        subprocess.run([os.path.join(bin_dir, "tally-loadgen"), "--brokers",
                        self.env["TALLY_KAFKA_BROKERS"], "--keys",
                        "%s:3,%s" % (self.key_a, self.key_b), "--count", "1200",
                        "--late-ratio", "0.33", "--summary", summary],
                       check=True, env=self.env, timeout=120, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
        with open(summary) as f:
            sent = json.load(f)
        expected = sum(k["units"] for k in sent["keys"].values()) if isinstance(
            sent.get("keys"), dict) else None

        since = time.strftime("%Y-%m-%d", time.gmtime(time.time() - 5 * 86400))

        def counted():
            total = sum(i["units"] for k in (self.key_a, self.key_b) for i in self.admin(
                "GET", "/v1/keys/%s/usage?granularity=day&from=%s" % (k, since))["items"])
            return total > 0 and (expected is None or total == expected)
        wait_until("the collector to count the events", counted, 60)

    def stop(self):
        self.registry.stop_all()
        subprocess.run([os.path.join(REPO, "tools", "stack.sh"), "down", self.stack],
                       env=clean_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                       timeout=120)
        reports = 0
        for proc in (getattr(self, "api", None), getattr(self, "collector", None)):
            report = sanitizer_report(proc.log_text()) if proc else None
            if report:
                reports += 1
                print("FAIL sanitizer report in %s:\n%s" % (proc.name, report))
        return reports


def me(s, path, key_value=None, token=None, origin=None):
    headers = {}
    if key_value:
        headers["x-api-key"] = key_value
    if token:
        headers["Authorization"] = "Bearer " + token
    if origin:
        headers["Origin"] = origin
    return s.request("GET", path, headers)


def open_customer_page(s, browser, token):
    tab = browser.open_tab()
    browser.navigate("%s/dashboard#link=%s" % (s.api_url, token))
    return tab


# ---- the tests ----------------------------------------------------------------


@test
def customer_page(s, browser):
    link = s.admin("POST", "/v1/keys/%s/dashboard-links" % s.key_a, {"ttlSeconds": 600}, 201)
    check(link["url"].startswith("/dashboard#link=") and link["keyId"] == s.key_a,
          "the link is not a fragment link to the page: %r" % link)
    tab = open_customer_page(s, browser, link["token"])
    browser.wait_for("the customer page to load", "document.body && document.body.dataset.loaded === 'true'")
    # From the navigation's start to the last figure drawn, as the page
    # measures it (performance.now()); printed, bounded loosely: the
    # machine is shared.
    elapsed = browser.evaluate("+document.body.dataset.loadedMs") / 1000.0
    check(elapsed < 5, "the page took %.2f s to show its figures" % elapsed)
    check(browser.evaluate("location.hash") == "", "the token stayed in the address bar")
    quota = s.admin("GET", "/v1/keys/%s/quota" % s.key_a)
    page = browser.evaluate("""({
        remaining: +document.getElementById('remaining').dataset.value,
        used: +document.getElementById('quota-used').dataset.value,
        limit: +document.getElementById('quota-limit').dataset.value,
        overage: +document.getElementById('quota-overage').dataset.value,
        resets: document.getElementById('quota-resets').dataset.value,
        key: document.getElementById('key-id').textContent})""")
    check(page["remaining"] == quota["remaining"] and page["used"] == quota["used"] and
          page["limit"] == quota["limit"] == QUOTA and page["overage"] == quota["overage"] and
          page["resets"] == quota["periodEnd"],
          "the gauge %r differs from GET /v1/keys/{id}/quota %r" % (page, quota))
    check(s.key_a in page["key"], "the page names another key: %r" % page["key"])
    for kind, granularity in (("hourly", "hour"), ("daily", "day")):
        chart = browser.evaluate("""(() => { const n = document.getElementById('%s-chart');
            return {from: n.dataset.from, to: n.dataset.to, data: n._plot.data,
                    total: +document.getElementById('%s-total').dataset.value}; })()""" % (kind, kind))
        query = urllib.parse.urlencode({"granularity": granularity, "from": chart["from"],
                                        "to": chart["to"]})
        status, _, usage = me(s, "/v1/me/usage?" + query, key_value=KEY_A_VALUE)
        check(status == 200, "GET /v1/me/usage: %d %r" % (status, usage))
        xs = [int(parse_time(i["start"])) for i in usage["items"]]
        units = [i["units"] for i in usage["items"]]
        check(chart["data"][0] == xs, "%s chart's times differ from the api's" % kind)
        check(chart["data"][1] == units, "%s chart's units %r differ from the api's %r"
              % (kind, chart["data"][1], units))
        check(chart["data"][3] == [QUOTA] * len(xs), "%s chart has no quota line" % kind)
        check(chart["total"] == sum(units), "%s total %r is not the api's %r"
              % (kind, chart["total"], sum(units)))
        check(sum(units) > 0, "%s chart is empty: no counted events in range" % kind)
    rows = browser.evaluate("document.querySelectorAll('#endpoints tbody tr').length")
    check(rows >= 2, "the endpoint breakdown has %r rows" % rows)
    path = os.path.join(s.artefacts, "dashboard-customer.png")
    browser.screenshot(path)
    print("  artefact: %s (loaded in %.2f s)" % (path, elapsed))
    browser.close_tab(tab)


@test
def link_refusals(s, browser):
    now = int(time.time())
    expired = sign_link(s.key_a, now - 5)
    status, headers, answer = me(s, "/v1/me/quota", token=expired)
    check(status == 401 and answer["error"]["code"] == "link_expired",
          "an expired link: %d %r" % (status, answer))
    check("invalid_token" in headers.get("www-authenticate", ""), "no WWW-Authenticate: %r" % headers)
    valid = sign_link(s.key_a, now + 600)
    check(me(s, "/v1/me/quota", token=valid)[0] == 200, "a link signed from the docs is refused")
    swapped = valid[: valid.rindex(".") + 1] + s.key_b  # key A's signature, key B's id
    status, _, answer = me(s, "/v1/me/usage", token=swapped)
    check(status == 401 and answer["error"]["code"] == "unauthorized", "a link altered to "
          "another key: %d %r" % (status, answer))
    other_secret = sign_link(s.key_a, now + 600, secret=HMAC_SECRET + "x")
    check(me(s, "/v1/me/quota", token=other_secret)[0] == 401, "a link from another secret")
    check(me(s, "/v1/me/quota", token=ADMIN_TOKEN)[0] == 401, "the admin token works on /v1/me")
    status, _, _ = s.request("GET", "/v1/keys", {"Authorization": "Bearer " + valid})
    check(status == 401, "a dashboard link opened an admin route: %d" % status)
    for token, words in ((expired, "expired"), (swapped, "not valid")):
        tab = open_customer_page(s, browser, token)
        browser.wait_for("the page to refuse the link",
                         "!document.getElementById('signin').hidden && "
                         "document.getElementById('status').textContent.includes(%s)" % json.dumps(words))
        check(browser.evaluate("document.getElementById('content').hidden"), "data shown anyway")
        browser.close_tab(tab)
    status, _, answer = s.request("POST", "/v1/keys/%s/dashboard-links" % s.key_a,
                                  {"Authorization": "Bearer " + ADMIN_TOKEN}, {"ttlSeconds": 10 ** 7})
    check(status == 400, "a link longer than the maximum: %d %r" % (status, answer))
    link_b = s.admin("POST", "/v1/keys/%s/dashboard-links" % s.key_b, None, 201)
    tab = open_customer_page(s, browser, link_b["token"])
    browser.wait_for("key B's page", "document.body && document.body.dataset.loaded === 'true'")
    used = browser.evaluate("+document.getElementById('quota-used').dataset.value")
    check(used == s.admin("GET", "/v1/keys/%s/quota" % s.key_b)["used"],
          "key B's link shows another key's usage")
    browser.close_tab(tab)


@test
def api_unreachable(s, browser):
    # The page and its assets load; every /v1 call fails as if the api
    # were down (the DevTools Fetch domain refuses the connection).
    tab = browser.open_tab()
    browser.fail_requests("*/v1/*")
    browser.navigate("%s/dashboard#link=%s" % (s.api_url, sign_link(s.key_a, int(time.time()) + 60)))
    browser.wait_for("the page to say the api is unreachable",
                     "document.getElementById('status').textContent.includes('cannot be reached')")
    check(browser.evaluate("document.getElementById('content').hidden"), "stale figures shown")
    browser.close_tab(tab)


@test
def admin_page(s, browser):
    tab = browser.open_tab()
    browser.navigate(s.api_url + "/dashboard/admin")
    browser.wait_for("the token form", "!document.getElementById('signin').hidden")
    browser.type_text("#token", "not-the-admin-token-at-all")
    browser.press_enter()
    browser.wait_for("the wrong token to be refused", "document.body && document.body.dataset.refused === 'true'")
    check(browser.evaluate("document.getElementById('content').hidden"), "figures shown anyway")
    check(browser.evaluate("sessionStorage.getItem('tally.admin')") is None,
          "a refused token stayed in sessionStorage")
    browser.type_text("#token", ADMIN_TOKEN)
    browser.press_enter()
    browser.wait_for("the overview", "document.body && document.body.dataset.loaded === 'true'")
    check(ADMIN_TOKEN not in browser.evaluate("location.href"), "the token is in the URL")
    status = s.admin("GET", "/v1/status")
    top = s.admin("GET", "/v1/usage/top?limit=10")
    page = browser.evaluate("""(() => { const v = (id) => document.getElementById(id).dataset.value;
        return {counted: v('collector-count'), lag: +v('lag'), pending: +v('reporter-pending'),
                webhooks: +v('webhooks-parked'),
                top: [...document.querySelectorAll('#top a[id^=top-units-]')].map(a => [a.id.slice(10), +a.dataset.value]),
                routes: [...new Set([...document.querySelectorAll('a[data-route]')].map(a => a.dataset.route))]}; })()""")
    check(int(page["counted"]) == len(status["collectors"]) >= 1, "collectors: %r vs %r"
          % (page["counted"], status["collectors"]))
    check(page["lag"] == status["lag"] and page["pending"] == status["reporter"]["pending"] and
          page["webhooks"] == status["webhooks"]["parked"], "figures differ: %r vs %r" % (page, status))
    check(page["top"] == [[k["keyId"], k["units"]] for k in top["items"]],
          "top keys %r differ from GET /v1/usage/top %r" % (page["top"], top["items"]))
    check(sorted(page["routes"]) == sorted(["/v1/status", "/v1/quotas/nearest?limit=10",
                                            "/v1/usage/top?limit=10"]),
          "figures link to %r" % page["routes"])
    check(status["collectors"][0]["eventsCounted"] >= 1200, "the collector's row counts %r"
          % status["collectors"][0])
    path = os.path.join(s.artefacts, "dashboard-admin.png")
    browser.screenshot(path)
    print("  artefact: %s" % path)
    browser.close_tab(tab)


@test
def cors_headers(s, browser):
    allowed, refused = s.allowed_origin, s.refused_origin
    for path in ("/v1/me/quota", "/v1/me/usage"):
        status, h, _ = s.request("OPTIONS", path, {"Origin": allowed,
                                                   "Access-Control-Request-Method": "GET",
                                                   "Access-Control-Request-Headers": "x-api-key"})
        check(status == 204 and h.get("access-control-allow-origin") == allowed,
              "preflight from the allowed origin: %d %r" % (status, h))
        check("x-api-key" in h.get("access-control-allow-headers", "") and
              "authorization" in h.get("access-control-allow-headers", ""),
              "allowed headers: %r" % h)
        check("Origin" in h.get("vary", ""), "no Vary: Origin on the preflight")
        status, h, _ = s.request("OPTIONS", path, {"Origin": refused,
                                                   "Access-Control-Request-Method": "GET"})
        check(status == 403 and "access-control-allow-origin" not in h,
              "preflight from a refused origin: %d %r" % (status, h))
    status, h, _ = me(s, "/v1/me/quota", key_value=KEY_A_VALUE, origin=allowed)
    check(status == 200 and h.get("access-control-allow-origin") == allowed and
          "X-RateLimit-Remaining" in h.get("access-control-expose-headers", "") and
          "Origin" in h.get("vary", "") and h.get("cache-control") == "no-store",
          "actual request from the allowed origin: %d %r" % (status, h))
    status, h, _ = me(s, "/v1/me/quota", key_value=KEY_A_VALUE, origin=refused)
    check(status == 200 and "access-control-allow-origin" not in h and "Origin" in h.get("vary", ""),
          "actual request from a refused origin: %d %r" % (status, h))
    for path in ("/v1/keys", "/v1/status", "/v1/keys/%s/quota" % s.key_a):
        status, h, _ = s.request("OPTIONS", path, {"Origin": allowed,
                                                   "Access-Control-Request-Method": "GET"})
        check(status == 405 and "access-control-allow-origin" not in h and "OPTIONS" not in h["allow"],
              "OPTIONS on admin route %s: %d %r" % (path, status, h))
        status, h, _ = s.request("GET", path, {"Origin": allowed,
                                               "Authorization": "Bearer " + ADMIN_TOKEN})
        check(status == 200 and not any(k.startswith("access-control-") for k in h),
              "admin route %s answered cross-origin: %r" % (path, h))
    status, h, _ = s.request("GET", "/v1/me/usage", {"Origin": "null"})
    check(status == 405 or "access-control-allow-origin" not in h, "Origin: null allowed")


@test
def cors_in_browser(s, browser):
    root = tempfile.mkdtemp(dir=s.tmp)
    with open(os.path.join(root, "call.html"), "w") as f:
        f.write("<!doctype html><title>calling</title><script src=\"call.js\"></script>")
    with open(os.path.join(root, "call.js"), "w") as f:
        f.write("fetch(%s, {headers: {'x-api-key': %s}}).then(r => r.json())"
                ".then(b => { document.title = 'ok ' + b.used; })"
                ".catch(e => { document.title = 'blocked ' + e.name; });"
                % (json.dumps(s.api_url + "/v1/me/quota"), json.dumps(KEY_A_VALUE)))
    server = serve_folder(root, s.page_port)
    try:
        used = s.admin("GET", "/v1/keys/%s/quota" % s.key_a)["used"]
        for origin, expect in ((s.allowed_origin, "ok %d" % used), (s.refused_origin, "blocked")):
            tab = browser.open_tab()
            browser.navigate(origin + "/call.html")
            title = browser.wait_for("the cross-origin call from " + origin,
                                     "document.title !== 'calling' && document.title")
            check(title.startswith(expect), "from %s the page got %r, not %r" % (origin, title, expect))
            browser.close_tab(tab)
    finally:
        server.shutdown()


@test
def page_headers(s, browser):
    for path in ("/dashboard", "/dashboard/admin", "/dashboard/assets/customer.js",
                 "/dashboard/vendor/uPlot.iife.min.js"):
        status, h, _ = s.request("GET", path)
        check(status == 200, "%s: %d" % (path, status))
        csp = h.get("content-security-policy", "")
        check("script-src 'self'" in csp and "unsafe-inline" not in csp and
              "frame-ancestors 'none'" in csp, "%s CSP: %r" % (path, csp))
        check(h.get("cache-control") == "no-store" and h.get("x-content-type-options") == "nosniff",
              "%s headers: %r" % (path, h))
    for name in ("index.html", "admin.html"):
        with open(os.path.join(REPO, "services", "api", "dashboard", name)) as f:
            text = f.read()
        check("<script>" not in text and "style=" not in text and "http://" not in text and
              "https://" not in text, "%s has inline script, inline style or an outside URL" % name)
    check(s.request("GET", "/dashboard/assets/nothing.js")[0] == 404, "unknown asset")
    status, h, _ = s.admin_raw_link()
    check(h.get("cache-control") == "no-store", "a link's answer may be cached: %r" % h)


def admin_raw_link(self):
    return self.request("POST", "/v1/keys/%s/dashboard-links" % self.key_a,
                        {"Authorization": "Bearer " + ADMIN_TOKEN})


System.admin_raw_link = admin_raw_link


# ---- helpers ------------------------------------------------------------------


def parse_time(text):
    from datetime import datetime
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def serve_folder(root, port):
    handler = lambda *a, **k: QuietHandler(*a, directory=root, **k)  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bin", default="build/bin")
    parser.add_argument("--artefacts", help="where screenshots go (default: a temporary directory)")
    parser.add_argument("--only", nargs="*")
    args = parser.parse_args()
    if shutil.which("chromium") is None:
        print("FAIL chromium is not installed (tools/install-deps.sh installs it)")
        return 1
    t_start = time.monotonic()
    s = System(args)
    passed = failed = 0
    browser = None
    try:
        s.start()
        browser = Browser(s.tmp, os.path.join(s.tmp, "chromium.log"))
        for fn in TESTS:
            if args.only and fn.__name__ not in args.only:
                continue
            t0 = time.monotonic()
            try:
                fn(s, browser)
                passed += 1
                print("PASS %-20s %6.2fs" % (fn.__name__, time.monotonic() - t0), flush=True)
            except Exception as e:  # noqa: BLE001 - report and continue
                failed += 1
                reason = str(e) if isinstance(e, Failure) else traceback.format_exc()
                print("FAIL %-20s %6.2fs %s" % (fn.__name__, time.monotonic() - t0, reason),
                      flush=True)
                browser.session = None
    except Exception:  # noqa: BLE001 - the system did not start
        failed += 1
        print("FAIL setup: %s" % traceback.format_exc())
    finally:
        if browser is not None:
            browser.close()
        failed += s.stop()  # a sanitized build's reports fail the run
    print("artefacts in %s" % s.artefacts)
    print("%d passed, %d failed (%.1f s)" % (passed, failed, time.monotonic() - t_start))
    if failed == 0 and not args.artefacts:
        for entry in os.listdir(s.tmp):
            if entry != "artefacts":
                shutil.rmtree(os.path.join(s.tmp, entry), ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
