"""Counter freshness in tally-api (issue #16): the collector's commit
announces the keys whose counters it changed (NOTIFY tally_counters, ids
comma-separated, or "*"), and the api reads those keys' counters at once;
a notice lost must only delay a change to the next full reload, never lose
it. Here psql plays the collector (the integration suite has the real one:
tests/integration/freshness_cases.py).

The api under test reloads its cache once a minute, so a change seen with
no full reload in between was brought by a notice, and a full reload in
between was asked for (the listener reconnected, too many keys, "*"). The
observer is authorize, which answers from the cache alone (the quota routes
ask the database about a key the cache cannot answer for):
X-RateLimit-Remaining falls below limit - counter once the cache holds the
counter. Each poll is an allowed request, which the cache counts too, so the
counters written grow by far more than the polls can add.

Registered by tests/api/run.py (register), which passes itself in."""
import datetime
import http.client
import re
import subprocess
import time

R = None  # the suite's module (tests/api/run.py), set by register()

CHANNEL = "tally_counters"
LIMIT = 1_000_000
SEEN_TIMEOUT_S = 20


def register(run_module):
    """Adds these tests before the suite's last one (the OpenAPI coverage
    check)."""
    global R
    R = run_module
    tail = [fn for fn in R.TESTS if fn.__name__ == "openapi_covers_every_answer"]
    head = [fn for fn in R.TESTS if fn not in tail]
    R.TESTS[:] = head + CASES + tail


CASES = []


def case(fn):
    CASES.append(fn)
    return fn


def month_start():
    return R.iso(R.day_start().replace(day=1))


def metric(port, name):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode()
    finally:
        conn.close()
    m = re.search(r"^%s(?:\{\})? (\S+)$" % re.escape(name), text, re.M)
    R.check(m is not None, "no %s in /metrics" % name)
    return float(m.group(1))


def write_counter(s, key_id, units, notices=(), sends=""):
    """The key's MONTH counter set to `units`, with the NOTIFY payloads of
    `notices` (SQL expressions) and the statements `sends` in the same
    transaction, as the collector's commit does."""
    sends += "".join("SELECT pg_notify('%s', %s); " % (CHANNEL, n) for n in notices)
    s.psql("BEGIN; INSERT INTO usage_counters (key_id, period, period_start, requests, units, "
           "bytes) VALUES ('%s', 'MONTH', '%s', %d, %d, 0) ON CONFLICT (key_id, period, "
           "period_start) DO UPDATE SET units = EXCLUDED.units, requests = EXCLUDED.requests, "
           "updated_at = now(); %sCOMMIT" % (key_id, month_start(), units, units, sends))


class Locked:
    """Holds an exclusive lock on `table` in a psql session of its own
    until the block ends."""

    def __init__(self, s, table):
        self.s, self.table = s, table

    def __enter__(self):
        self.proc = subprocess.Popen(
            ["psql", self.s.db_url, "-X", "-q", "-v", "ON_ERROR_STOP=1"],
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.proc.stdin.write(b"BEGIN; LOCK TABLE %s IN ACCESS EXCLUSIVE MODE;\n"
                              % self.table.encode())
        self.proc.stdin.flush()
        deadline = time.monotonic() + 30
        while self.s.psql("SELECT count(*) FROM pg_locks WHERE granted AND mode = "
                          "'AccessExclusiveLock' AND relation = '%s'::regclass"
                          % self.table) != "1":
            R.check(self.proc.poll() is None and time.monotonic() < deadline,
                    "could not lock %s" % self.table)
            time.sleep(0.05)
        return self

    def __exit__(self, *exc):
        self.proc.communicate(b"COMMIT;\n", timeout=60)
        return False


class Watched:
    """The api under test, seen through authorize and its /metrics."""

    def __init__(self, api, metrics_port, key):
        self.api, self.metrics_port, self.key = api, metrics_port, key

    def reloads(self):
        return metric(self.metrics_port, "tally_api_key_cache_refreshes_total")

    def counter_refreshes(self):
        return metric(self.metrics_port, "tally_api_key_cache_counter_refreshes_total")

    def remaining(self):
        answer, _ = self.api.get("/v1/authorize", {
            "x-api-key": self.key["value"], "X-Original-Method": "GET",
            "X-Original-URI": "/items"})
        R.check(answer.status == 204, "authorize answered %r" % answer)
        return int(answer.header("X-RateLimit-Remaining"))

    def wait_seen(self, units, what):
        """Until authorize counts at least `units` used."""
        deadline = time.monotonic() + SEEN_TIMEOUT_S
        while self.remaining() > LIMIT - units:
            R.check(time.monotonic() < deadline,
                    "%s: a counter of %d not in the cache after %d s"
                    % (what, units, SEEN_TIMEOUT_S))
            time.sleep(0.05)


@case
def counter_notices_and_lost_ones(s):
    plan = R.make_plan(s, name="Fresh", quota={"limit": LIMIT, "period": "MONTH"})
    k = R.make_key(s, name="fresh", planId=plan["id"])
    other = R.make_key(s, name="fresh-other", planId=plan["id"])
    metrics_port = R.free_port()
    with R.ExtraApi(s, "api-fresh", ["--key-refresh-ms", "60000",
                                     "--metrics-addr", "127.0.0.1:%d" % metrics_port]) as api:
        w = Watched(api, metrics_port, k)
        R.check(w.remaining() == LIMIT - 1, "a fresh key already counts usage")

        # A notice naming the key (among others): its counter at once.
        reloads, refreshes = w.reloads(), w.counter_refreshes()
        write_counter(s, k["id"], 100_000, ["'%s,%s,key_nowhere'" % (other["id"], k["id"])])
        w.wait_seen(100_000, "a notice")
        R.check(w.reloads() == reloads, "a full reload happened: the notice was not what counted")
        R.check(w.counter_refreshes() > refreshes, "no targeted refresh counted")

        # A change whose notice is lost (none sent), then the listening
        # connection dropped: the reconnection's full reload brings it.
        write_counter(s, k["id"], 200_000)
        s.psql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
               "WHERE application_name = 'tally-api-keynotify'")
        w.wait_seen(200_000, "a lost notice, the listener reconnected")
        R.check(w.reloads() > reloads, "seen without a full reload?")
        # Listening again: the next notice is heard.
        reloads = w.reloads()
        write_counter(s, k["id"], 300_000, ["'%s'" % k["id"]])
        w.wait_seen(300_000, "a notice after the reconnection")
        R.check(w.reloads() == reloads, "a full reload happened after the reconnection")

        # More keys at once than the api queues (10,000): a full reload.
        # With the counters locked, the refresh thread waits in a targeted
        # refresh of a first notice while a second commit announces 10,500
        # keys, the changed one first: the queue overflows and drops it, so
        # only the full reload asked for instead can bring it.
        reloads = w.reloads()
        write_counter(s, k["id"], 400_000)
        with Locked(s, "usage_counters"):
            refreshes = w.counter_refreshes()
            s.psql("SELECT pg_notify('%s', 'key_first')" % CHANNEL)
            time.sleep(0.5)  # the thread takes it and waits for the lock
            s.psql("BEGIN; SELECT pg_notify('%s', '%s'); SELECT pg_notify('%s', "
                   "string_agg('key_many_' || i, ',')) FROM generate_series(1, 10500) AS i "
                   "GROUP BY i / 500; COMMIT" % (CHANNEL, k["id"], CHANNEL))
            time.sleep(0.5)
            R.check(w.counter_refreshes() == refreshes, "the counters were not locked")
        w.wait_seen(400_000, "more than 10,000 keys announced")
        R.check(w.reloads() > reloads, "no full reload for 10,500 keys")

        # "*": every key.
        reloads = w.reloads()
        write_counter(s, k["id"], 500_000, ["'*'"])
        w.wait_seen(500_000, "a notice of every key")
        R.check(w.reloads() > reloads, "no full reload for '*'")
        # The quota routes answer from the same cache.
        q, _ = api.get("/v1/me/quota", {"x-api-key": k["value"]}, route="/v1/me/quota")
        R.expect(q, 200)
        R.check(q.json["used"] >= 500_000, repr(q))

    # An api that was not running heard nothing: its first load reads it.
    write_counter(s, k["id"], 600_000, ["'%s'" % k["id"]])
    with R.ExtraApi(s, "api-fresh-again", ["--key-refresh-ms", "60000",
                                           "--metrics-addr", "127.0.0.1:%d" % metrics_port]) as api:
        w = Watched(api, metrics_port, k)
        R.check(w.remaining() < LIMIT - 600_000, "a restarted api misses the counter")

    # The suite's api reloads every REFRESH_MS: a change with no notice at
    # all shows with the next periodic reload.
    write_counter(s, other["id"], 700_000)
    q = R.eventually(lambda: R.expect(s.call("GET", "/v1/keys/{id}/quota", ids={"id": other["id"]},
                                             admin=True), 200).json,
                     lambda q: q["used"] == 700_000, timeout=5)
    R.check(q["used"] == 700_000, "a change with no notice not seen by the next reload: %r" % q)
