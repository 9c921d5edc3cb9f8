"""tally-api request semantics and key storage (review items: per-method
throttles escaped by respelling the path, "?from" without '=', rateLimit
-0.0, a rate of 1e-300 with a huge burst, grouped usage fetched whole,
unknown keys costing a query each, key values stored as a plain SHA-256).

Registered by tests/api/run.py (register), which passes itself in: the
helpers (expect, make_plan, authorize, ExtraApi ...) are the suite's own.
Each test is self-contained and runs before the OpenAPI coverage check,
so every answer it records through s.call is checked against the document.
"""
import hashlib
import hmac
import os
import re
import secrets
import subprocess
import threading
import time

R = None  # the suite's module (tests/api/run.py), set by register()


def register(run_module):
    """Adds these tests to the suite's list, before its last test (the
    OpenAPI coverage check, which must see their answers)."""
    global R
    R = run_module
    tail = [fn for fn in R.TESTS if fn.__name__ == "openapi_covers_every_answer"]
    head = [fn for fn in R.TESTS if fn not in tail]
    R.TESTS[:] = head + CASES + tail


CASES = []


def case(fn):
    CASES.append(fn)
    return fn


def stored_hash(secret, value):
    """value_hash as tally-api stores it: HMAC-SHA-256(secret, SHA-256(value))."""
    return hmac.new(secret.encode(), hashlib.sha256(value.encode()).digest(),
                    hashlib.sha256).hexdigest()


def check(condition, message):
    R.check(condition, message)


# ---- 1. one canonical form for per-method throttles -----------------------

# Every spelling the review found escaping a /items throttle, and more that a
# router sends to the same resource.
ITEMS_SPELLINGS = [
    ("GET", "/ITEMS"), ("GET", "/items;x"), ("GET", "/items%2F"), ("GET", "/items%20"),
    ("GET", "/items."), ("GET", "http://host/items"), ("GET", "/items\\"), ("HEAD", "/items"),
    ("GET", "/Items/"), ("GET", "/items/."), ("GET", "/x/../items"), ("GET", "/%69tems"),
    ("GET", "//items?page=2"), ("GET", "/items%5C"), ("GET", "/items;jsessionid=1/"),
    ("GET", "HTTPS://host:8443/ITEMS#top"), ("head", "/items.."), ("GET", "/items%2e"),
    ("GET", "/%2Fitems"),
]


@case
def method_throttles_every_spelling(s):
    plan = R.make_plan(s, name="Canonical", throttle={"rateLimit": 0.01, "burstLimit": 100},
                       methodThrottles={"/items/GET": {"rateLimit": 0.01, "burstLimit": 1}})
    k = R.make_key(s, planId=plan["id"])
    R.expect(R.authorize(s, k["value"], "GET", "/items"), 204)
    R.expect(R.authorize(s, k["value"], "GET", "/items"), 429, "throttled")
    escaped = []
    for method, uri in ITEMS_SPELLINGS:
        r = R.authorize(s, k["value"], method, uri)
        if r.status != 429 or r.error_code() != "throttled":
            escaped.append("%s %s -> %d" % (method, uri, r.status))
    check(not escaped, "spellings of /items that escaped its throttle: " + "; ".join(escaped))
    # Other resources and methods keep the plan's own throttle.
    for method, uri in (("POST", "/items"), ("GET", "/items2"), ("GET", "/items/1"),
                        ("GET", "/item"), ("DELETE", "/ITEMS")):
        R.expect(R.authorize(s, k["value"], method, uri), 204)


@case
def exact_method_wins_over_any_method(s):
    # jsonb keeps shorter keys first: "/items/*" came before "/items/GET".
    plan = R.make_plan(s, name="ExactFirst",
                       methodThrottles={"/items/*": {"rateLimit": 0.01, "burstLimit": 100},
                                        "/items/GET": {"rateLimit": 0.01, "burstLimit": 1}})
    k = R.make_key(s, planId=plan["id"])
    R.expect(R.authorize(s, k["value"], "GET", "/items"), 204)
    R.expect(R.authorize(s, k["value"], "HEAD", "/Items"), 429, "throttled")
    r = R.expect(R.authorize(s, k["value"], "POST", "/items"), 204)
    check(R.rate_headers(r)[:2] == ("100", "99"), repr(r.headers))


@case
def method_throttle_keys_are_stored_canonical(s):
    plan = R.make_plan(s, name="CanonicalKeys",
                       methodThrottles={"/V1/Items;v=2/./HEAD": {"rateLimit": 1, "burstLimit": 2},
                                        "/a%2Fb//POST": {"rateLimit": 2, "burstLimit": 3}})
    check(set(plan["methodThrottles"]) == {"/v1/items/GET", "/a/b/POST"}, repr(plan))
    got = R.expect(s.call("GET", "/v1/plans/{id}", ids={"id": plan["id"]}, admin=True), 200).json
    check(got["methodThrottles"] == plan["methodThrottles"], repr(got))
    # Two spellings of one path and method cannot both be given.
    r = R.expect(s.call("POST", "/v1/plans", admin=True, body={
        "name": "x", "methodThrottles": {"/items/GET": {"rateLimit": 1, "burstLimit": 1},
                                         "/ITEMS/HEAD": {"rateLimit": 1, "burstLimit": 1}}}),
        400, "invalid_field")
    check("same path and method" in r.json["error"]["message"], repr(r))
    # A row stored before keys were canonical (written straight into the
    # database) is matched in its canonical form too.
    raw = R.make_plan(s, name="RawKeys", throttle={"rateLimit": 0.01, "burstLimit": 100})
    s.psql("UPDATE plans SET method_throttles = '{\"/Items./GET\": {\"rateLimit\": 0.01, "
           "\"burstLimit\": 1}}', updated_at = now() WHERE id = '%s'" % raw["id"])
    k = R.make_key(s, planId=raw["id"])
    R.wait_cache_reloads(s, 2)
    R.expect(R.authorize(s, k["value"], "GET", "/items"), 204)
    R.expect(R.authorize(s, k["value"], "HEAD", "/ITEMS/"), 429, "throttled")


# ---- 2. a query parameter without '=' -------------------------------------

@case
def bare_query_parameters_are_refused(s):
    k = R.make_key(s, name="bare")
    for route, ids, query, headers in (
            ("/v1/me/usage", None, "?from", {"x-api-key": k["value"]}),
            ("/v1/me/usage", None, "?from=2026-03-01&to", {"x-api-key": k["value"]}),
            ("/v1/me/usage", None, "?granularity&from=2026-03-01", {"x-api-key": k["value"]}),
            ("/v1/keys/{id}/usage", {"id": k["id"]}, "?groupBy", None),
            ("/v1/keys", None, "?limit", None),
            ("/v1/keys", None, "?customerId", None),
            ("/v1/plans", None, "?position", None)):
        admin = headers is None
        r = R.expect(s.call("GET", route, ids=ids, query=query, admin=admin, headers=headers),
                     400, "invalid_parameter")
        check("has no value" in r.json["error"]["message"], "%s%s: %r" % (route, query, r))
    # Written with '=' they are the route's to judge, as before.
    R.expect(s.call("GET", "/v1/me/usage", query="?from=2026-03-01&to=2026-03-01",
                    key=k["value"]), 200)
    R.expect(s.call("GET", "/v1/keys", query="?limit=5", admin=True), 200)
    # An empty value is judged by the route: refused where it means nothing.
    for query in ("?from=", "?to=", "?granularity=", "?groupBy="):
        R.expect(s.call("GET", "/v1/me/usage", query=query, key=k["value"]), 400)
    R.expect(s.call("GET", "/v1/keys", query="?limit=", admin=True), 400, "invalid_parameter")
    R.expect(s.call("GET", "/v1/keys", query="?planId=", admin=True), 400, "invalid_parameter")


# ---- 3. -0.0 ----------------------------------------------------------------

@case
def negative_zero_rate_is_zero(s):
    body = {"name": "NegZero", "throttle": {"rateLimit": -0.0, "burstLimit": 1},
            "methodThrottles": {"/a/GET": {"rateLimit": -0.0, "burstLimit": 1}}}
    created = R.expect(s.call("POST", "/v1/plans", admin=True, body=body), 201)
    check("-0" not in created.raw, "-0.0 echoed: %r" % created.raw)
    pid = created.json["id"]
    patched = R.expect(s.call("PATCH", "/v1/plans/{id}", ids={"id": pid}, admin=True,
                              body={"throttle": {"rateLimit": -0.0}}), 200)
    got = R.expect(s.call("GET", "/v1/plans/{id}", ids={"id": pid}, admin=True), 200)
    for answer in (patched, got):
        check("-0" not in answer.raw, "-0.0 echoed: %r" % answer.raw)
        check(answer.json["throttle"]["rateLimit"] == 0, repr(answer))
    stored = s.psql("SELECT throttle_rate_limit::text || ' ' || method_throttles::text "
                    "FROM plans WHERE id = '%s'" % pid)
    check("-0" not in stored, "-0 stored: %r" % stored)


# ---- 4. a rate of 1e-300 with a huge burst ----------------------------------

@case
def tiny_rate_and_huge_burst_stay_in_range(s):
    plan = R.make_plan(s, name="Tiny", throttle={"rateLimit": 1e-300, "burstLimit": 2147483647},
                       methodThrottles={"/one/GET": {"rateLimit": 1e-300, "burstLimit": 1}})
    k = R.make_key(s, planId=plan["id"])
    r = R.expect(R.authorize(s, k["value"], "GET", "/items"), 204)
    limit, remaining, reset, _ = R.rate_headers(r)
    check(limit == "2147483647" and remaining == "2147483646" and int(reset) >= 0,
          repr(r.headers))
    R.expect(R.authorize(s, k["value"], "GET", "/one"), 204)
    r = R.expect(R.authorize(s, k["value"], "GET", "/one"), 429, "throttled")
    # No token will come in any useful time: the longest Retry-After there is
    # (a negative wait, cast from an overflowing double, gave 1 second).
    check(int(r.header("Retry-After")) >= 60, repr(r.headers))
    check(int(R.rate_headers(r)[2]) >= 0, repr(r.headers))


# ---- 5. grouped usage stops at the item limit in SQL -----------------------

def peak_rss_kib(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise R.Failure("no VmHWM for pid %d" % pid)


@case
def grouped_usage_is_bounded_in_sql(s):
    """200,000 endpoints in one hour: more than 20,000 items, refused. The
    database sends at most 20,001 rows, so the api's peak memory barely
    moves (fetching them all took ~30 MiB more)."""
    k = R.make_key(s, name="wide")
    s.psql("INSERT INTO usage_hourly (key_id, hour, method, endpoint, requests, units, bytes) "
           "SELECT '%s', '2026-03-02T05:00:00Z', 'GET', '/e/' || i, 1, 1, 1 "
           "FROM generate_series(1, 200000) i" % k["id"])
    try:
        before = peak_rss_kib(s.api.pid)
        r = R.expect(s.call("GET", "/v1/keys/{id}/usage", ids={"id": k["id"]}, admin=True,
                            query="?from=2026-03-02T05:00:00Z&to=2026-03-02T06:00:00Z"
                                  "&granularity=hour&groupBy=endpoint"), 400, "too_many_points")
        grown = peak_rss_kib(s.api.pid) - before
        check(grown < 12 * 1024, "peak memory grew %d KiB for a refused series: %r" % (grown, r))
        s.psql("DELETE FROM usage_hourly WHERE key_id = '%s' AND endpoint <> '/e/1'" % k["id"])
        r = R.expect(s.call("GET", "/v1/keys/{id}/usage", ids={"id": k["id"]}, admin=True,
                            query="?from=2026-03-02T05:00:00Z&to=2026-03-02T06:00:00Z"
                                  "&granularity=hour&groupBy=endpoint"), 200)
        check(len(r.json["items"]) == 1 and r.json["items"][0]["endpoint"] == "/e/1", repr(r))
    finally:
        s.psql("DELETE FROM usage_hourly WHERE key_id = '%s'" % k["id"])


# ---- 6. unknown keys on /v1/me cost no queries -----------------------------

def unknown_lookups(s):
    """tally_api_unknown_key_lookups_total by result, from /metrics."""
    text = R.expect(s.ops("/metrics"), 200).raw
    found = dict(re.findall(r'^tally_api_unknown_key_lookups_total\{result="(\w+)"\} (\S+)$',
                            text, re.M))
    check(set(found) == {"queried", "refused"}, "no tally_api_unknown_key_lookups_total")
    return {k: float(v) for k, v in found.items()}


def commits(s):
    return int(s.psql("SELECT xact_commit FROM pg_stat_database "
                      "WHERE datname = current_database()"))


@case
def unknown_keys_cost_no_queries(s):
    plan = R.make_plan(s, name="Flood", quota={"limit": 100, "period": "DAY"})
    time.sleep(1.5)  # backends publish their counts at most once a second
    before = commits(s)
    lookups_before = unknown_lookups(s)
    t0 = time.monotonic()
    wrong = []
    for i in range(2000):
        route = "/v1/me/usage" if i % 2 else "/v1/me/quota"
        r = s.request("GET", route, key="random-" + secrets.token_hex(16), record=False)
        if r.status != 401:
            wrong.append(r)
    flood = time.monotonic() - t0
    check(not wrong, "random keys not refused 401: %r" % wrong[:3])
    lookups = {k: v - lookups_before[k] for k, v in unknown_lookups(s).items()}
    # The api's own count, exact: 10 at once, then 10 a second.
    check(lookups["queried"] <= 10 + 10 * flood + 1 and
          lookups["queried"] + lookups["refused"] == 2000, "unknown-key look-ups: %r" % lookups)
    # The database's count, coarse (a backend may publish its last second
    # late): each query was a transaction of its own before.
    time.sleep(2.5)
    spent = commits(s) - before
    # Reloads every REFRESH_MS, at most 10 look-ups a second of unknown keys
    # (and 10 at once), this test's own statements: far below one a key.
    bound = 10 + 10 * flood + (flood + 4) / (R.REFRESH_MS / 1000.0) + 20
    print("    2000 random keys in %.1f s: %d queried, %d refused; %d transactions (bound %d)"
          % (flood, lookups["queried"], lookups["refused"], spent, bound), flush=True)
    check(spent <= bound, "2000 random keys cost %d transactions (bound %d)" % (spent, bound))
    # A key created through this api a moment ago works at once; one written
    # by another process (straight into the database) within a reload.
    k = R.make_key(s, planId=plan["id"])
    R.expect(s.call("GET", "/v1/me/usage", key=k["value"]), 200)
    for route in ("/v1/me/quota", "/v1/me/usage"):
        value = "fresh-" + secrets.token_hex(16)
        key_id = "key_fresh_" + route.rsplit("/", 1)[1]
        s.psql("INSERT INTO api_keys (id, value_hash, value_hash_form, plan_id) VALUES "
               "('%s', decode('%s', 'hex'), 'hmac-sha256', '%s')"
               % (key_id, stored_hash(R.KEY_HMAC_SECRET, value), plan["id"]))
        t1 = time.monotonic()
        r = R.eventually(lambda: s.request("GET", route, key=value, record=False),
                         lambda r: r.status == 200, timeout=3)
        delay = time.monotonic() - t1
        check(r.status == 200 and r.json["keyId"] == key_id, repr(r))
        check(delay <= R.REFRESH_MS / 1000.0 + 1.0, "a new key took %.2f s to be seen" % delay)


# ---- 7. key values stored as an HMAC under the server secret ---------------

@case
def key_values_are_stored_as_hmac(s):
    k = R.make_key(s, name="hmac", value="hmac-supplied-secret-value-0001")
    row = s.psql("SELECT encode(value_hash, 'hex') || ' ' || value_hash_form FROM api_keys "
                 "WHERE id = '%s'" % k["id"]).split()
    check(row[0] != hashlib.sha256(k["value"].encode()).hexdigest(),
          "value_hash is the unsalted SHA-256 of the value")
    check(row == [stored_hash(R.KEY_HMAC_SECRET, k["value"]), "hmac-sha256"], repr(row))
    check(R.KEY_HMAC_SECRET not in s.log_text(), "the HMAC secret appears in the log")


def insert_legacy_key(s, key_id, value, plan_id):
    """A row as version 1 wrote it: SHA-256(value), no form given."""
    s.psql("INSERT INTO api_keys (id, value_hash, plan_id) VALUES ('%s', sha256('%s'::bytea), "
           "'%s')" % (key_id, value, plan_id))


@case
def legacy_keys_are_converted_at_start(s):
    """Keys stored as SHA-256 before the upgrade still authenticate: two apis
    started at once convert each row once, in place."""
    plan = R.make_plan(s, name="Legacy", quota={"limit": 100, "period": "DAY"})
    legacy = {"key_legacy_%d" % i: "legacy-secret-value-%d-0123456789" % i for i in range(3)}
    for key_id, value in legacy.items():
        insert_legacy_key(s, key_id, value, plan["id"])
    # Before any restart, the running api reads the old form as if converted.
    first = next(iter(legacy))
    R.eventually(lambda: R.authorize(s, legacy[first]), lambda r: r.status == 204)
    R.expect(R.authorize(s, legacy[first]), 204)
    R.expect(s.call("GET", "/v1/me/usage", key=legacy[first]), 200)
    apis = [R.ExtraApi(s, "api-convert-%d" % i, []) for i in range(2)]
    errors = []

    def start(api):
        try:
            api.__enter__()
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=start, args=(api,)) for api in apis]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        check(not errors, "an api did not start: %r" % errors)
        rows = dict(line.split("|", 1) for line in s.psql(
            "SELECT id, encode(value_hash, 'hex') || ' ' || value_hash_form FROM api_keys "
            "WHERE id LIKE 'key_legacy_%'").splitlines())
        for key_id, value in legacy.items():
            check(rows[key_id] == stored_hash(R.KEY_HMAC_SECRET, value) + " hmac-sha256",
                  "%s not converted exactly once: %r" % (key_id, rows[key_id]))
        # One api converted them (and any other old-form row the suite left);
        # the other, waiting on the row locks, found nothing left to do.
        counts = [[int(n) for n in re.findall(r"converted (\d+) key hashes", a.log_text())]
                  for a in apis]
        check(sorted(len(c) for c in counts) == [0, 1] and sum(map(sum, counts)) >= 3,
              "conversions logged: %r" % counts)
        for api in apis:
            for value in legacy.values():
                r, _ = api.get("/v1/authorize", {"x-api-key": value})
                R.expect(r, 204)
                r, _ = api.get("/v1/me/quota", {"x-api-key": value})
                R.expect(r, 200)
    finally:
        for api in apis:
            if api.api is not None:
                api.__exit__(None, None, None)
    for value in legacy.values():  # and the suite's api, on its next reload
        R.eventually(lambda: R.authorize(s, value), lambda r: r.status == 204)
        R.expect(R.authorize(s, value), 204)


@case
def one_value_one_key_across_forms(s):
    """A row not converted yet holds SHA-256(value), which the unique index
    cannot compare with an HMAC: creating a key with that value is refused
    by the statement itself, and a hand-written duplicate does not stop the
    conversion (nor the api's start)."""
    plan = R.make_plan(s, name="Duplicates")
    value = "duplicate-secret-value-0123456789"
    insert_legacy_key(s, "key_dup_legacy", value, plan["id"])
    R.expect(s.call("POST", "/v1/keys", admin=True, body={"value": value}), 409, "value_in_use")
    s.psql("DELETE FROM api_keys WHERE id = 'key_dup_legacy'")
    k = R.make_key(s, value=value, planId=plan["id"])
    insert_legacy_key(s, "key_dup_legacy", value, plan["id"])  # by hand, behind its back
    try:
        with R.ExtraApi(s, "api-duplicates", []) as api:
            R.expect(api.get("/v1/authorize", {"x-api-key": value})[0], 204)
        check("1 keys stored as SHA-256 have the value of another key"
              in open(os.path.join(s.tmp, "api-duplicates.log")).read(), "no warning logged")
        check(s.psql("SELECT value_hash_form FROM api_keys WHERE id = 'key_dup_legacy'")
              == "sha256", "the duplicate was converted")
    finally:
        s.psql("DELETE FROM api_keys WHERE id = 'key_dup_legacy'")
    R.expect(R.authorize(s, value), 204)
    check(k["value"] == value, repr(k))


@case
def wrong_secret_fails_authentication(s):
    plan = R.make_plan(s, name="WrongSecret")
    k = R.make_key(s, planId=plan["id"])
    R.expect(R.authorize(s, k["value"]), 204)
    other = "another-secret-of-at-least-32-bytes-0000"
    with R.ExtraApi(s, "api-wrong-secret", ["--key-hmac-secret", other]) as api:
        for route in ("/v1/authorize", "/v1/me/quota", "/v1/me/usage"):
            r, _ = api.get(route, {"x-api-key": k["value"]})
            R.expect(r, 401)
    check(other not in open(os.path.join(s.tmp, "api-wrong-secret.log")).read(),
          "the secret appears in the log")


@case
def the_secret_is_required(s):
    binary = os.path.join(os.path.abspath(s.args.asan_bin), "tally-api")
    env = s.api_env()
    for drop, extra, want in (
            (["TALLY_KEY_HMAC_SECRET"], {}, "TALLY_KEY_HMAC_SECRET"),
            ([], {"TALLY_KEY_HMAC_SECRET": "short-secret"}, "TALLY_KEY_HMAC_SECRET"),
            ([], {"TALLY_KEY_HMAC_SECRET_FILE": "/nonexistent/secret"}, "both"),
            (["TALLY_KEY_HMAC_SECRET"], {"TALLY_KEY_HMAC_SECRET_FILE": "/nonexistent/secret"},
             "/nonexistent/secret")):
        run_env = {k: v for k, v in env.items() if k not in drop}
        run_env.update(extra)
        cp = subprocess.run([binary], env=run_env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, timeout=30)
        out = cp.stdout.decode("utf-8", "replace")
        check(cp.returncode == 2 and want in out, "%r: exit %d, %r" % (extra, cp.returncode, out))
        check("short-secret" not in out and R.KEY_HMAC_SECRET not in out,
              "the secret is quoted: %r" % out)
    # The secret from a file (one trailing newline dropped) is the same secret.
    path = os.path.join(s.tmp, "key-hmac-secret")
    with open(path, "w") as f:
        f.write(R.KEY_HMAC_SECRET + "\n")
    os.chmod(path, 0o600)
    k = R.make_key(s, planId=R.make_plan(s, name="FromFile")["id"])
    with ExtraApiEnv(s, "api-secret-file", {"TALLY_KEY_HMAC_SECRET_FILE": path}) as api:
        R.expect(api.get("/v1/authorize", {"x-api-key": k["value"]})[0], 204)


class ExtraApiEnv:
    """The suite's ExtraApi with the secret given by `env` (the suite's own
    TALLY_KEY_HMAC_SECRET left out) instead of flags."""

    def __init__(self, s, name, env):
        self.inner = R.ExtraApi(s, name, [])
        self.env = env

    def __enter__(self):
        s = self.inner.s
        original = s.api_env

        def api_env(extra=None):
            env = {k: v for k, v in original(extra).items() if k != "TALLY_KEY_HMAC_SECRET"}
            env.update(self.env)
            return env

        s.api_env = api_env
        try:
            return self.inner.__enter__()
        finally:
            del s.api_env  # the class's method again

    def __exit__(self, *exc):
        return self.inner.__exit__(*exc)
