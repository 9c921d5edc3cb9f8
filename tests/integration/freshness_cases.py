"""Counter freshness end to end (issue #16): the collector's commit
announces the keys it counted (NOTIFY tally_counters) and tally-api reads
their counters at once, between its full reloads; an api that was not
running when a notice went out reads the counter at its start. The api
suite (tests/api/counter_notice_cases.py) covers the notices that get lost."""

import time

import lib
from cases import TOPIC, enc, event
from lib import check, wait_until

LIMIT = 1000


def quota_used(api, key_id):
    return api.call("GET", "/v1/keys/%s/quota" % key_id, 200, admin=True).json["used"]


def counter_refreshes(api):
    return int(api.metrics().get("tally_api_key_cache_counter_refreshes_total"))


def test_counted_events_reach_the_api_at_once(s):
    """With the api's full reload once a minute, three counted events show
    in GET /v1/keys/{id}/quota, /v1/me/quota and authorize with no full
    reload in between; two more counted while no api runs show in a new
    api's first answer."""
    broker = s.broker(4)
    api = s.api(refresh_ms=60000)
    plan = api.call("POST", "/v1/plans", 201, admin=True, body={
        "name": "it-fresh", "quota": {"limit": LIMIT, "period": "MONTH"}}).json
    key = api.call("POST", "/v1/keys", 201, admin=True,
                   body={"name": "it-fresh", "planId": plan["id"]}).json
    kid = key["id"]
    collector = s.collector(broker, "it-fresh")
    reloads, refreshes = api.refreshes(), counter_refreshes(api)
    t = time.time()
    lib.kcat_produce_lines(broker.bootstrap, TOPIC,
                           [(kid, enc(event("fresh-%d" % i, kid, "it-fresh", t)))
                            for i in range(3)])
    wait_until("the api to show 3 units counted", lambda: quota_used(api, kid) == 3, 60,
               interval=0.05, on_timeout=lambda: collector.metrics().brief())
    check(api.refreshes() == reloads,
          "a full reload happened: the collector's notice was not what brought the count")
    check(counter_refreshes(api) > refreshes, "no targeted counter refresh counted")
    me = api.call("GET", "/v1/me/quota", 200, key=key["value"]).json
    check(me["used"] == 3, "/v1/me/quota: %s" % me)
    allowed = api.authorize(key["value"])
    check(allowed.status == 204 and allowed.header("X-RateLimit-Remaining") == str(LIMIT - 4),
          "authorize after 3 counted: %r" % allowed)
    api.stop()

    # Counted while no api listens: the notice is lost, the first load reads it.
    lib.kcat_produce_lines(broker.bootstrap, TOPIC,
                           [(kid, enc(event("fresh-late-%d" % i, kid, "it-fresh", t)))
                            for i in range(2)])
    wait_until("the collector to count 5 events", lambda: collector.metrics().counted == 5, 60,
               on_timeout=lambda: collector.metrics().brief())
    again = s.api(refresh_ms=60000)
    check(quota_used(again, kid) == 5, "a restarted api misses what was counted meanwhile")


TESTS = [
    ("counted_events_reach_the_api_at_once", test_counted_events_reach_the_api_at_once),
]
