#!/usr/bin/env python3
"""Soft quotas and threshold alerts (issue #12): the collector raising
alerts in the transaction that moves the counters, exactly once per (key,
period, threshold) through batches, jumps, duplicates, replays, kill -9 and
two collectors; the api raising them when a limit, a plan or thresholds
change; authorize's soft limit and ceiling; the alert and webhook endpoint
routes.

    python3 tests/alerts/run.py --bin build/bin --asan-bin build/asan/bin
        [--only NAME[,NAME...]] [--seed N] [--keep-logs DIR] [--list]

The harness is the integration suite's (tests/integration/run.py and
lib.py: a throwaway PostgreSQL and dev broker, free ports, the sanitized
collector and api); this file only adds its tests."""

import json
import os
import sys
import time
import urllib.parse

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "integration"))
sys.dont_write_bytecode = True

import lib  # noqa: E402
import run as harness  # noqa: E402  (tests/integration/run.py)
from lib import check, wait_until  # noqa: E402

TOPIC = "usage-events"


# ---- helpers ----------------------------------------------------------------------


def event(ev_id, key, source, t, units=1):
    return {"specversion": "1.0", "id": ev_id, "source": source, "type": "api.request",
            "subject": key, "time": lib.rfc3339_ms(t), "data": {"units": units}}


def produce(broker, events):
    lib.kcat_produce_lines(broker.bootstrap, TOPIC,
                           [(e["subject"], json.dumps(e, separators=(",", ":")).encode())
                            for e in events])


def wait_units(s, key, period, units, collectors, timeout=60):
    """Waits until the key's counter of the current `period` holds `units`
    and every collector is idle (consumed = counted + duplicates +
    rejected)."""
    def done():
        for c in collectors:
            c.assert_alive()
        got = s.db.scalar("SELECT coalesce(sum(units), 0) FROM usage_counters WHERE key_id = '%s'"
                          " AND period = '%s' AND period_start = tally_period_start('%s', now())"
                          % (key, period, period))
        check(int(got) <= units, "%s over-counted: %s units, expected %d" % (key, got, units))
        return int(got) == units and all(c.metrics().balanced() for c in collectors)
    wait_until("%s to reach %d units" % (key, units), done, timeout, interval=0.2)


def alerts(s, key):
    """The key's alerts: [(period, period_start epoch, threshold, type, limit, used)]."""
    rows = s.db.query("SELECT period, extract(epoch FROM period_start)::bigint, threshold, type,"
                      " quota_limit, used FROM quota_alerts WHERE key_id = '%s'"
                      " ORDER BY period_start, threshold" % key)
    return [(r[0], int(r[1]), int(r[2]), r[3], int(r[4]), int(r[5])) for r in rows]


def current(s, period):
    return int(s.db.scalar("SELECT extract(epoch FROM tally_period_start('%s', now()))::bigint"
                           % period))


def add_plan(s, plan_id, limit, period="MONTH", thresholds="{80,100,120}"):
    # quota_set_at long ago: the offset (0 here anyway) is not in force.
    s.db.execute("INSERT INTO plans (id, name, quota_limit, quota_period, alert_thresholds,"
                 " quota_set_at) VALUES ('%s', 'plan %s', %d, '%s', '%s', now() - interval"
                 " '400 days')" % (plan_id, plan_id, limit, period, thresholds))


def expect_alerts(s, key, want):
    got = alerts(s, key)
    check(got == want, "%s: alerts\n  %s\nexpected\n  %s" % (key, got, want))


TYPES = {80: "quota.threshold_reached", 100: "quota.exhausted", 120: "quota.threshold_reached"}


# ---- the collector ----------------------------------------------------------------


def test_thresholds_batches_jumps_periods_replays(s):
    """Crossings across batches, inside one batch, one event jumping two
    thresholds, a key's own thresholds, a period boundary (DAY plan:
    yesterday and today), then every event again (duplicates and a replay):
    nothing more."""
    broker = s.broker(4)
    add_plan(s, "al1-plan", 100)
    add_plan(s, "al1-day", 10, period="DAY")
    s.db.add_keys(["al1-a", "al1-b", "al1-c"], "al1-plan")
    s.db.add_keys(["al1-d"], "al1-day")
    s.db.execute("UPDATE api_keys SET alert_thresholds = '{50}' WHERE id = 'al1-c'")
    collector = s.collector(broker, "al1")
    t = time.time() - 30
    month = current(s, "MONTH")
    sent = []

    def send(events):
        sent.extend(events)
        produce(broker, events)

    # a: 79 (nothing), +1 = 80 (the 80 % threshold exactly), then one event
    # of 40 units: 120, past 100 and 120 at once.
    send([event("a-%d" % i, "al1-a", "al1", t) for i in range(79)])
    wait_units(s, "al1-a", "MONTH", 79, [collector])
    expect_alerts(s, "al1-a", [])
    send([event("a-79", "al1-a", "al1", t)])
    wait_units(s, "al1-a", "MONTH", 80, [collector])
    expect_alerts(s, "al1-a", [("MONTH", month, 80, TYPES[80], 100, 80)])
    send([event("a-big", "al1-a", "al1", t, units=40)])
    wait_units(s, "al1-a", "MONTH", 120, [collector])
    expect_alerts(s, "al1-a", [("MONTH", month, 80, TYPES[80], 100, 80),
                               ("MONTH", month, 100, TYPES[100], 100, 120),
                               ("MONTH", month, 120, TYPES[120], 100, 120)])
    # b: 130 events at once (one batch, or a few); c: its own threshold only.
    send([event("b-%d" % i, "al1-b", "al1", t) for i in range(130)] +
         [event("c-%d" % i, "al1-c", "al1", t) for i in range(60)])
    wait_units(s, "al1-b", "MONTH", 130, [collector])
    wait_units(s, "al1-c", "MONTH", 60, [collector])
    b = alerts(s, "al1-b")
    check([a[2] for a in b] == [80, 100, 120], "al1-b alerts %s" % b)
    check(all(80 <= a[5] <= 130 and a[5] >= a[2] for a in b), "al1-b used values %s" % b)
    c_alerts = alerts(s, "al1-c")
    check([a[2] for a in c_alerts] == [50] and 50 <= c_alerts[0][5] <= 60,
          "al1-c (own thresholds {50}) alerts %s" % c_alerts)
    # d: DAY plan of 10: 9 events yesterday + 9 today: nothing; 1 more each
    # day crosses 80 (8) in each period: two alerts, each of its own day.
    today = current(s, "DAY")
    yesterday = today - 86400
    send([event("d-y-%d" % i, "al1-d", "al1", yesterday + 3600) for i in range(7)] +
         [event("d-t-%d" % i, "al1-d", "al1", t) for i in range(7)])
    wait_units(s, "al1-d", "DAY", 7, [collector])
    expect_alerts(s, "al1-d", [])
    send([event("d-y-7", "al1-d", "al1", yesterday + 3600),
          event("d-t-7", "al1-d", "al1", t)])
    wait_units(s, "al1-d", "DAY", 8, [collector])
    wait_until("yesterday's counter", lambda: s.db.scalar(
        "SELECT units FROM usage_counters WHERE key_id = 'al1-d' AND period = 'DAY' AND "
        "period_start = to_timestamp(%d)" % yesterday) == "8", 30)
    expect_alerts(s, "al1-d", [("DAY", yesterday, 80, TYPES[80], 10, 8),
                               ("DAY", today, 80, TYPES[80], 10, 8)])
    # Every event again: duplicates, all deduplicated; nothing new raised.
    before = s.db.scalar("SELECT count(*) FROM quota_alerts WHERE key_id LIKE 'al1-%'")
    produce(broker, sent)
    wait_until("the replay to be read as duplicates",
               lambda: collector.metrics().duplicates >= len(sent), 60,
               on_timeout=lambda: collector.metrics().brief())
    after = s.db.scalar("SELECT count(*) FROM quota_alerts WHERE key_id LIKE 'al1-%'")
    check(before == after == "9", "alerts before the replay %s, after %s, expected 9"
          % (before, after))
    # Only the plan's period kind counts: no WEEK or DAY alert for a MONTH plan.
    others = s.db.scalar("SELECT count(*) FROM quota_alerts WHERE key_id IN "
                         "('al1-a', 'al1-b', 'al1-c') AND period <> 'MONTH'")
    check(others == "0", "%s alerts of another period kind than the plan's" % others)


def check_exactly_the_crossed(s, prefix, limit):
    """For every MONTH counter of the keys `prefix`*: exactly one alert per
    threshold its units reached, none for one not reached; each alert's used
    at least its threshold's units and at most the final count, in threshold
    order."""
    counters = s.db.query("SELECT key_id, extract(epoch FROM period_start)::bigint, units FROM"
                          " usage_counters WHERE key_id LIKE '%s%%' AND period = 'MONTH'" % prefix)
    check(counters, "no counters for %s*" % prefix)
    rows = s.db.query("SELECT key_id, extract(epoch FROM period_start)::bigint, threshold, used,"
                      " quota_limit FROM quota_alerts WHERE key_id LIKE '%s%%'" % prefix)
    got = {}
    for key, start, threshold, used, quota_limit in rows:
        got.setdefault((key, int(start)), []).append((int(threshold), int(used), int(quota_limit)))
    for key, start, units in counters:
        units = int(units)
        want = [t for t in (80, 100, 120) if -(-limit * t // 100) <= units]
        have = sorted(got.pop((key, int(start)), []))
        check([h[0] for h in have] == want, "%s: %d units of %d, alerts %s, expected thresholds %s"
              % (key, units, limit, have, want))
        for t, used, quota_limit in have:
            check(quota_limit == limit and -(-limit * t // 100) <= used <= units,
                  "%s: threshold %d raised with used %d limit %d (final %d)"
                  % (key, t, used, quota_limit, units))
        check([h[1] for h in have] == sorted(h[1] for h in have),
              "%s: used not in threshold order: %s" % (key, have))
    check(not got, "alerts without a counter: %s" % got)


def test_kill9_and_two_collectors(s):
    """Two collectors of one group share the traffic; one is killed -9 in
    the middle and a third takes its place: every key still has exactly the
    thresholds its count reached, once each."""
    partitions = 8
    broker = s.broker(partitions)
    limit = 500
    add_plan(s, "al2-plan", limit)
    keys = lib.keys_on_distinct_partitions("al2-key-", 16, partitions)
    s.db.add_keys(keys, "al2-plan")
    first = s.collector(broker, "al2", args=("--batch-max-events", "400"))
    second = s.collector(broker, "al2", args=("--batch-max-events", "400"))
    load = s.loadgen(broker, keys=keys, count=12000, rate=3000, seed=s.rng.randrange(1, 2 ** 31),
                     base_time=lib.rfc3339(int(time.time()) - 120), source="al2",
                     dup_ratio=0.1)
    wait_until("both collectors to count a part", lambda: first.metrics().counted > 1500 and
               second.metrics().counted > 1500, 90)
    first.sigkill()
    third = s.collector(broker, "al2", args=("--batch-max-events", "400"))
    summary = load.finish()
    lib.wait_for_totals(s.db, summary["unique"], [second, third], 120)
    check_exactly_the_crossed(s, "al2-key-", limit)
    s.note("%d events, %d alerts" % (summary["sent"], int(s.db.scalar(
        "SELECT count(*) FROM quota_alerts WHERE key_id LIKE 'al2-key-%'"))))


# ---- the api ----------------------------------------------------------------------


def create_key(api, plan_id, **extra):
    body = {"name": "k", "planId": plan_id}
    body.update(extra)
    return api.call("POST", "/v1/keys", 201, admin=True, body=body).json


def set_units(s, key, period, units):
    s.db.execute("INSERT INTO usage_counters (key_id, period, period_start, requests, units,"
                 " bytes) VALUES ('%s', '%s', tally_period_start('%s', now()), %d, %d, 0)"
                 " ON CONFLICT (key_id, period, period_start) DO UPDATE SET units = EXCLUDED.units"
                 % (key, period, period, units, units))


def test_lowered_limit_moved_key_new_thresholds(s):
    """A plan PATCH that lowers the limit under current usage, a key moved
    to a smaller plan and a key's lowered thresholds raise what is crossed,
    in the write's transaction; raising the limit raises nothing."""
    api = s.api()
    big = api.call("POST", "/v1/plans", 201, admin=True, body={
        "name": "big", "quota": {"limit": 1000, "period": "MONTH"}}).json
    small = api.call("POST", "/v1/plans", 201, admin=True, body={
        "name": "small", "quota": {"limit": 100, "period": "MONTH"},
        "alertThresholds": [100]}).json
    check(big["alertThresholds"] == [80, 100, 120] and small["alertThresholds"] == [100],
          "alertThresholds answered %s, %s" % (big["alertThresholds"], small["alertThresholds"]))
    one, two, three = (create_key(api, big["id"]) for _ in range(3))
    month = current(s, "MONTH")
    set_units(s, one["id"], "MONTH", 500)
    api.call("PATCH", "/v1/plans/" + big["id"], 200, admin=True,
             body={"quota": {"limit": 2000}})
    expect_alerts(s, one["id"], [])
    api.call("PATCH", "/v1/plans/" + big["id"], 200, admin=True,
             body={"quota": {"limit": 600}})  # 80 % = 480 <= 500
    expect_alerts(s, one["id"], [("MONTH", month, 80, TYPES[80], 600, 500)])
    api.call("PATCH", "/v1/plans/" + big["id"], 200, admin=True,
             body={"quota": {"limit": 450}})  # 100 % = 450, 120 % = 540
    expect_alerts(s, one["id"], [("MONTH", month, 80, TYPES[80], 600, 500),
                                 ("MONTH", month, 100, TYPES[100], 450, 500)])
    # two: 400 units (80 % of 450 = 360: raised by nobody yet, as the
    # counter was written behind the collector's back), moved to the small
    # plan (only 100 %): 100 % of 100 raised; three: own thresholds.
    set_units(s, two["id"], "MONTH", 400)
    set_units(s, three["id"], "MONTH", 500)
    api.call("PUT", "/v1/keys/%s/plan" % two["id"], 200, admin=True,
             body={"planId": small["id"]})
    expect_alerts(s, two["id"], [("MONTH", month, 100, TYPES[100], 100, 400)])
    got = api.call("PATCH", "/v1/keys/" + three["id"], 200, admin=True,
                   body={"alertThresholds": [10, 110]}).json
    check(got["alertThresholds"] == [10, 110], "key alertThresholds answered %s" % got)
    expect_alerts(s, three["id"], [("MONTH", month, 10, TYPES[80], 450, 500),
                                   ("MONTH", month, 110, TYPES[80], 450, 500)])
    back = api.call("PATCH", "/v1/keys/" + three["id"], 200, admin=True,
                    body={"alertThresholds": None}).json
    check(back["alertThresholds"] is None, "alertThresholds null answered %s" % back)
    # Validation: 400 with a clear message, nothing written.
    for body in ({"alertThresholds": [100, 80]}, {"alertThresholds": [0]},
                 {"alertThresholds": [80, 80]}, {"alertThresholds": list(range(1, 18))},
                 {"alertThresholds": "80"}, {"alertThresholds": [100001]},
                 {"quota": {"enforcement": "medium"}},
                 {"quota": {"ceilingPercent": 150}},  # needs soft
                 {"quota": {"enforcement": "soft", "ceilingPercent": 99}}):
        answer = api.call("PATCH", "/v1/plans/" + big["id"], 400, admin=True, body=body)
        check(answer.error_code() in ("invalid_field",), "%s answered %r" % (body, answer))
    # An empty list turns alerts off: a lower limit then raises nothing.
    api.call("PATCH", "/v1/plans/" + big["id"], 200, admin=True,
             body={"alertThresholds": [], "quota": {"limit": 10}})
    expect_alerts(s, one["id"], [("MONTH", month, 80, TYPES[80], 600, 500),
                                 ("MONTH", month, 100, TYPES[100], 450, 500)])


def test_soft_limit_and_ceiling(s):
    """A soft quota of 4 with a 150 % ceiling: 4 allowed plainly, 2 more
    with X-Tally-Quota: overage, then 429 like a hard quota; a hard quota of
    2 refuses the third; the plan routes answer enforcement and ceiling."""
    api = s.api()
    soft = api.call("POST", "/v1/plans", 201, admin=True, body={
        "name": "soft", "quota": {"limit": 4, "period": "DAY", "enforcement": "soft",
                                  "ceilingPercent": 150}}).json
    check(soft["quota"]["enforcement"] == "soft" and soft["quota"]["ceilingPercent"] == 150,
          "soft plan answered %s" % soft["quota"])
    uncapped = api.call("POST", "/v1/plans", 201, admin=True, body={
        "name": "uncapped", "quota": {"limit": 2, "period": "DAY", "enforcement": "soft"}}).json
    hard = api.call("POST", "/v1/plans", 201, admin=True, body={
        "name": "hard", "quota": {"limit": 2, "period": "DAY"}}).json
    check(hard["quota"]["enforcement"] == "hard" and hard["quota"]["ceilingPercent"] is None,
          "hard plan answered %s" % hard["quota"])
    keys = {p["id"]: create_key(api, p["id"])["value"] for p in (soft, uncapped, hard)}
    api.wait_fresh_cache()

    def outcomes(value, n):
        out = []
        for _ in range(n):
            a = api.authorize(value)
            out.append((a.status, a.header("X-Tally-Quota")))
        return out

    got = outcomes(keys[soft["id"]], 7)
    want = [(204, None)] * 4 + [(204, "overage")] * 2 + [(429, None)]
    check(got == want, "soft 4 / ceiling 150 %%: %s, expected %s" % (got, want))
    got = outcomes(keys[uncapped["id"]], 6)
    check(got == [(204, None)] * 2 + [(204, "overage")] * 4, "soft without ceiling: %s" % got)
    got = outcomes(keys[hard["id"]], 3)
    check(got == [(204, None)] * 2 + [(429, None)], "hard 2: %s" % got)
    # Made hard again: the ceiling goes with "soft" (a plan change restarts
    # the process's own counts, so authorize is not asked here).
    again = api.call("PATCH", "/v1/plans/" + soft["id"], 200, admin=True,
                     body={"quota": {"enforcement": "hard"}}).json
    check(again["quota"]["enforcement"] == "hard" and again["quota"]["ceilingPercent"] is None,
          "hard again answered %s" % again["quota"])


# ---- the routes -------------------------------------------------------------------


def test_alert_and_webhook_routes(s):
    api = s.api()
    plan = api.call("POST", "/v1/plans", 201, admin=True, body={
        "name": "routes", "quota": {"limit": 10, "period": "MONTH"}}).json
    # An endpoint first: alerts raised afterwards fan out to it.
    created = api.call("POST", "/v1/webhooks", 201, admin=True, body={
        "url": "https://hooks.example.com/tally?x=1", "eventTypes": ["quota.exhausted"],
        "description": "billing team"})
    hook = created.json
    secret = hook.get("secret", "")
    check(secret.startswith("whsec_") and len(secret) >= 38, "secret answered %r" % secret)
    check(created.header("Cache-Control") == "no-store", "no Cache-Control: no-store")
    check(hook["enabled"] is True and hook["eventTypes"] == ["quota.exhausted"]
          and hook["previousSecretExpiresAt"] is None, "endpoint answered %s" % hook)
    path = "/v1/webhooks/" + hook["id"]
    shown = api.call("GET", path, 200, admin=True).body
    listed = api.call("GET", "/v1/webhooks", 200, admin=True).body
    check(secret not in shown and secret not in listed and "secret" not in json.loads(shown),
          "a secret answered outside creation")
    for body, code in (({"eventTypes": ["quota.exhausted"]}, "missing_field"),
                       ({"url": "ftp://x.example.com/", "eventTypes": ["quota.exhausted"]},
                        "invalid_field"),
                       ({"url": "https://u:p@x.example.com/", "eventTypes": ["quota.exhausted"]},
                        "invalid_field"),
                       ({"url": "https://x.example.com/" + "a" * 2100,
                         "eventTypes": ["quota.exhausted"]}, "invalid_field"),
                       ({"url": "https://x.example.com/", "eventTypes": ["quota.nope"]},
                        "invalid_field"),
                       ({"url": "https://x.example.com/", "eventTypes": []}, "invalid_field"),
                       ({"url": "https://x.example.com/",
                         "eventTypes": ["quota.exhausted", "quota.exhausted"]}, "invalid_field"),
                       ({"url": "https://x.example.com/", "eventTypes": ["quota.exhausted"],
                         "secret": "whsec_mine"}, "read_only_field"),
                       ({"url": "https://x.example.com/", "eventTypes": ["quota.exhausted"],
                         "colour": "red"}, "unknown_field")):
        answer = api.call("POST", "/v1/webhooks", 400, admin=True, body=body)
        check(answer.error_code() == code, "%s answered %r" % (body, answer))
    patched = api.call("PATCH", path, 200, admin=True, body={
        "eventTypes": ["quota.exhausted", "quota.threshold_reached"], "enabled": True}).json
    check(patched["eventTypes"] == ["quota.exhausted", "quota.threshold_reached"]
          and "secret" not in patched, "PATCH answered %s" % patched)
    api.call("PATCH", path, 400, admin=True, body={"url": "javascript:alert(1)"})
    rotated = api.call("POST", path + "/rotate-secret", 200, admin=True,
                       body={"expiresInSeconds": 3600}).json
    check(rotated["secret"].startswith("whsec_") and rotated["secret"] != secret
          and rotated["previousSecretExpiresAt"] is not None, "rotation answered %s" % rotated)
    stored = s.db.query("SELECT secret, previous_secret, previous_secret_expires_at > now() + "
                        "interval '3500 seconds' FROM webhook_endpoints WHERE id = '%s'"
                        % hook["id"])[0]
    check(stored == [rotated["secret"], secret, "t"], "stored after rotation: %s" % stored[2:])
    api.call("POST", path + "/rotate-secret", 400, admin=True, body={"expiresInSeconds": -1})
    api.call("POST", "/v1/webhooks/whe_nope/rotate-secret", 404, admin=True)

    # Alerts: two keys past thresholds through a lowered limit.
    mine = create_key(api, plan["id"])
    other = create_key(api, plan["id"])
    set_units(s, mine["id"], "MONTH", 9)
    set_units(s, other["id"], "MONTH", 12)
    api.call("PATCH", "/v1/plans/" + plan["id"], 200, admin=True,
             body={"quota": {"limit": 8}})  # mine: 80, 100; other: 80, 100, 120
    deliveries = s.db.scalar("SELECT count(*) FROM webhook_deliveries WHERE endpoint_id = '%s'"
                             % hook["id"])
    check(deliveries == "5", "%s deliveries fanned out, expected 5 (every alert)" % deliveries)
    page = api.call("GET", "/v1/alerts?limit=2", 200, admin=True).json
    check(len(page["items"]) == 2 and "position" in page, "first page %s" % page)
    seen = [a["id"] for a in page["items"]]
    while "position" in page:
        page = api.call("GET", "/v1/alerts?limit=2&position=" + page["position"], 200,
                        admin=True).json
        seen += [a["id"] for a in page["items"]]
    check(len(seen) == len(set(seen)) >= 5, "paging returned %s" % seen)
    one = api.call("GET", "/v1/alerts?keyId=" + mine["id"], 200, admin=True).json["items"]
    check([(a["threshold"], a["type"], a["limit"], a["used"], a["keyId"]) for a in one] ==
          [(80, "quota.threshold_reached", 8, 9, mine["id"]),
           (100, "quota.exhausted", 8, 9, mine["id"])], "keyId filter answered %s" % one)
    check(one[0]["id"].startswith("evt_") and one[0]["period"] == "MONTH"
          and one[0]["enforcement"] == "hard", "alert shape %s" % one[0])
    future = urllib.parse.quote(lib.rfc3339(int(time.time()) + 3600))
    check(api.call("GET", "/v1/alerts?since=" + future, 200, admin=True).json["items"] == [],
          "since in the future answered alerts")
    for query in ("since=yesterday", "position=abc", "limit=0", "keyId=a%20b", "colour=red"):
        api.call("GET", "/v1/alerts?" + query, 400, admin=True)
    api.call("GET", "/v1/alerts", 401)
    own = api.call("GET", "/v1/me/alerts", 200, key=mine["value"]).json["items"]
    check([a["keyId"] for a in own] == [mine["id"]] * 2, "/v1/me/alerts answered %s" % own)
    api.call("GET", "/v1/me/alerts", 401, key="not-a-key-of-anyone-at-all")
    api.call("GET", "/v1/me/alerts", 401)
    api.call("DELETE", path, 204, admin=True)
    api.call("GET", path, 404, admin=True)
    log = api.proc.log_text()
    check(secret not in log and rotated["secret"] not in log, "a webhook secret was logged")


TESTS = [
    ("alerts_thresholds_batches_jumps_periods_replays",
     test_thresholds_batches_jumps_periods_replays),
    ("alerts_kill9_and_two_collectors", test_kill9_and_two_collectors),
    ("alerts_lowered_limit_moved_key_new_thresholds", test_lowered_limit_moved_key_new_thresholds),
    ("alerts_soft_limit_and_ceiling", test_soft_limit_and_ceiling),
    ("alerts_alert_and_webhook_routes", test_alert_and_webhook_routes),
]


if __name__ == "__main__":
    # The integration runner with this file's tests instead of its own.
    harness.cases.TESTS = TESTS
    harness.hardening_cases.TESTS = []
    harness.reporter_cases.TESTS = []
    sys.exit(harness.main())
