"""tally-reporter against the Stripe stand-in (tests/stripe/standin.py) and the
suite's real PostgreSQL; usage comes from the real collector where the path
matters (late events), otherwise straight into usage_hourly."""

import time

import lib
from lib import Failure, check, wait_until

ALL_FAULTS = ["500_before", "500_after", "drop_after", "429_retry", "429_plain", "429_lock",
              "slow", "409"]


def uid(s, what):
    return "%s-%s-%d" % (s.name.replace("_", "")[:12], what, s.seed % 100000)


def billing_setup(s, customers, meter="api_calls", plan_item=None, key_items=None):
    """A plan (with the meter, and a subscription item when given) and one key
    per customer. Returns (plan id, [key ids])."""
    plan = uid(s, "plan")
    s.db.execute("INSERT INTO plans (id, name, stripe_meter_event_name, stripe_subscription_item_id)"
                 " VALUES (%s, 'billing', %s, %s)"
                 % (lib.sql_literal(plan), lib.sql_literal(meter) if meter else "NULL",
                    lib.sql_literal(plan_item) if plan_item else "NULL"))
    keys = []
    for i, cus in enumerate(customers):
        key = "%s-k%d" % (uid(s, "key"), i)
        item = (key_items or {}).get(cus)
        s.db.execute("INSERT INTO api_keys (id, value_hash, plan_id, stripe_customer_id,"
                     " stripe_subscription_item_id) VALUES (%s, sha256(%s::bytea), %s, %s, %s)"
                     % (lib.sql_literal(key), lib.sql_literal(key + "-secret"), lib.sql_literal(plan),
                        lib.sql_literal(cus), lib.sql_literal(item) if item else "NULL"))
        keys.append(key)
    return plan, keys


def add_usage(s, plan, key, hours_ago, units):
    """Adds units to key's bucket `hours_ago` full hours back (as the collector would)."""
    s.db.execute(
        "INSERT INTO usage_hourly (key_id, hour, plan_id, method, endpoint, requests, units, bytes)"
        " VALUES (%s, date_trunc('hour', now()) - make_interval(hours => %d), %s, 'GET', '/v1/x',"
        " %d, %d, 0) ON CONFLICT (key_id, hour, plan_id, method, endpoint) DO UPDATE"
        " SET units = usage_hourly.units + EXCLUDED.units,"
        " requests = usage_hourly.requests + EXCLUDED.requests, updated_at = now()"
        % (lib.sql_literal(key), hours_ago, lib.sql_literal(plan), units, units))


def counted_by_customer(s, plan):
    rows = s.db.query("SELECT k.stripe_customer_id, sum(u.units) FROM usage_hourly u"
                      " JOIN api_keys k ON k.id = u.key_id WHERE u.plan_id = %s GROUP BY 1"
                      % lib.sql_literal(plan))
    return {r[0]: int(r[1]) for r in rows}


def ledger_by_customer(standin, meter="api_calls"):
    return {cus: m.get(meter, 0) for cus, m in standin.ledger()["meter_events"].items()}


def outbox(s, where="true"):
    return s.db.query("SELECT status, count(*), coalesce(sum(quantity), 0) FROM stripe_reports"
                      " WHERE %s GROUP BY 1" % where)


def all_delivered(s, plan):
    """Every counted unit of the plan is in an accepted report, nothing else left."""
    row = s.db.query(
        "SELECT (SELECT coalesce(sum(units), 0) FROM usage_hourly WHERE plan_id = %s),"
        " (SELECT coalesce(sum(quantity), 0) FROM stripe_reports WHERE plan_id = %s"
        "   AND status = 'accepted'),"
        " (SELECT count(*) FROM stripe_reports WHERE plan_id = %s AND status <> 'accepted')"
        % ((lib.sql_literal(plan),) * 3))[0]
    return int(row[0]) == int(row[1]) and int(row[2]) == 0


def check_standin_rules(standin):
    st = standin.stats()
    check(st["concurrency_violations"] == 0,
          "two calls in flight for one customer and meter: %s" % st.get("concurrency_violation_keys"))
    check(st["action_set"] == 0, "a usage record was sent with action=set")
    check(st["auth_failures"] == 0, "the stand-in refused the key %d times" % st["auth_failures"])
    return st


def run_with_kills(s, reporter, kills, between=(0.3, 1.5), during=None):
    """Starts the daemon, SIGKILLs it `kills` times at random moments while it
    works (calling during(i) after each kill), and starts it again."""
    reporter.start()
    for i in range(kills):
        time.sleep(s.rng.uniform(*between))
        check(reporter.proc.alive(), "reporter died: %s" % reporter.proc.log_tail())
        reporter.sigkill()
        if during:
            during(i)
        reporter.start()


# ---- meter events: 30% faults of every kind and SIGKILLs ---------------------------


def test_reporter_faults_and_kills(s):
    partitions = 16
    broker = s.broker(partitions)
    customers = ["cus_f%d" % i for i in range(12)]
    plan, keys = billing_setup(s, customers)
    # the keys must hash to distinct partitions (the dev broker's retention)
    s.db.execute("DELETE FROM api_keys WHERE plan_id = %s" % lib.sql_literal(plan))
    keys = lib.keys_on_distinct_partitions(uid(s, "key") + "-", len(customers), partitions)
    for key, cus in zip(keys, customers):
        s.db.execute("INSERT INTO api_keys (id, value_hash, plan_id, stripe_customer_id) VALUES"
                     " (%s, sha256(%s::bytea), %s, %s)" % (lib.sql_literal(key),
                                                            lib.sql_literal(key + "x"),
                                                            lib.sql_literal(plan),
                                                            lib.sql_literal(cus)))
    collector = s.collector(broker, "it-reporter-faults")
    base = lib.rfc3339(int(time.time()) - 600)
    first = s.loadgen(broker, keys, count=2500, seed=s.rng.randrange(1, 2 ** 31), base_time=base,
                      source="it-rep-1", late_ratio=0.7).finish()
    lib.wait_for_totals(s.db, first["unique"], [collector], 120)

    standin = lib.Standin(s, customers, seed=s.seed)
    standin.configure(faults={"rate": 0.3, "kinds": ALL_FAULTS, "slow_s": 1.0})
    reporter = lib.Reporter(s, standin, args=[
        "--report-interval-s", "1", "--report-settle-s", "0", "--stripe-timeout-ms", "500",
        "--report-rate-limit", "1000", "--report-concurrency", "6"])
    waves = []

    def late_wave(i):
        # Late events raise hours that were (partly) reported already.
        if i % 2 == 0:
            summary = s.loadgen(broker, keys, count=500, seed=s.rng.randrange(1, 2 ** 31),
                                base_time=base, source="it-rep-w%d" % i, late_ratio=0.7).finish()
            waves.append(summary["unique"])

    run_with_kills(s, reporter, 5, during=late_wave)
    lib.wait_for_totals(s.db, first["unique"] + sum(waves), [collector], 120)
    # 429s (a tenth of the calls here) keep halving the rate towards its
    # floor, a tenth of the ceiling, as they should: this takes a while.
    wait_until("every counted unit accepted by the stand-in", lambda: all_delivered(s, plan), 300,
               interval=1.0, on_timeout=lambda: "outbox %s, ledger %s" % (
                   outbox(s), ledger_by_customer(standin)))
    reporter.stop()
    counted = counted_by_customer(s, plan)
    ledger = ledger_by_customer(standin)
    check(ledger == counted, "Stripe's ledger %s != counted %s" % (ledger, counted))
    st = check_standin_rules(standin)
    faults = sum(st["faults"].values())
    check(faults > 20, "only %d faults were injected" % faults)
    increments = int(s.db.scalar("SELECT count(*) FROM stripe_reports WHERE plan_id = %s AND seq > 0"
                                 % lib.sql_literal(plan)))
    rc, text = reporter.reconcile()
    check(rc == 0, "reconcile exited %d:\n%s" % (rc, text))
    s.note("%d units for %d customers; %d faults injected, %d duplicate identifiers, %d replays, "
           "%d increments of reported hours; max %.0f calls/s"
           % (sum(counted.values()), len(counted), faults, st["duplicate_identifiers"],
              st["replays"], increments, st["max_rps"]))


# ---- late events: only the difference --------------------------------------------


def test_reporter_late_events_difference(s):
    partitions = 4
    broker = s.broker(partitions)
    key = lib.keys_on_distinct_partitions(uid(s, "key") + "-", 1, partitions)[0]
    plan, _ = billing_setup(s, [])
    s.db.execute("INSERT INTO api_keys (id, value_hash, plan_id, stripe_customer_id) VALUES"
                 " (%s, sha256('late'::bytea || %s::bytea), %s, 'cus_late')"
                 % (lib.sql_literal(key), lib.sql_literal(key), lib.sql_literal(plan)))
    collector = s.collector(broker, "it-reporter-late")
    # Two hours ago, minute 30: both waves land in the same hour bucket.
    base_epoch = (int(time.time()) // 3600 - 2) * 3600 + 1800
    base = lib.rfc3339(base_epoch)
    standin = lib.Standin(s, ["cus_late"])
    reporter = lib.Reporter(s, standin, args=["--report-settle-s", "0"])

    one = s.loadgen(broker, [key], count=300, seed=11, base_time=base, source="late-1").finish()
    lib.wait_for_totals(s.db, one["unique"], [collector], 60)
    rc, summary, log = reporter.once()
    check(rc == 0, "first --once exited %d: %s" % (rc, log[-800:]))
    first_units = counted_by_customer(s, plan)["cus_late"]
    check(ledger_by_customer(standin) == {"cus_late": first_units}, "after the first run: %s"
          % standin.ledger())

    two = s.loadgen(broker, [key], count=120, seed=12, base_time=base, source="late-2").finish()
    lib.wait_for_totals(s.db, one["unique"] + two["unique"], [collector], 60)
    rc, summary, log = reporter.once()
    check(rc == 0, "second --once exited %d: %s" % (rc, log[-800:]))
    total = counted_by_customer(s, plan)["cus_late"]
    check(ledger_by_customer(standin) == {"cus_late": total}, "after the late events: ledger %s,"
          " counted %d" % (standin.ledger(), total))
    events = standin.events()
    values = [e["value"] for e in events]
    identifiers = [e["identifier"] for e in events]
    check(len(set(identifiers)) == len(identifiers), "an identifier was reused: %s" % identifiers)
    check(sorted(int(v) for v in values) == sorted([first_units, total - first_units]),
          "expected one event of %d and one of the difference %d, got %s"
          % (first_units, total - first_units, values))
    check(summary["calls"] == 1 and summary["plannedUnits"] == total - first_units,
          "second run should send one increment of %d: %s" % (total - first_units, summary))
    # nothing new: a third run sends nothing
    rc, summary, _ = reporter.once()
    check(rc == 0 and summary["calls"] == 0, "a run without new usage made calls: %s" % summary)
    s.note("hour reported as %d then +%d" % (first_units, total - first_units))


# ---- unknown customer: parked, the rest delivered, requeue after the fix ----------


def test_reporter_unknown_customer_parks(s):
    plan, (good, ghost) = billing_setup(s, ["cus_good", "cus_ghost"])
    for h in range(1, 4):
        add_usage(s, plan, good, h, 10 * h)
        add_usage(s, plan, ghost, h, 7 * h)
    standin = lib.Standin(s, ["cus_good"])
    reporter = lib.Reporter(s, standin, args=["--report-settle-s", "0"])
    rc, summary, log = reporter.once()
    check(rc == 1, "--once with parked reports must exit 1, got %d" % rc)
    check(summary["parked"] == 3 and summary["accepted"] == 3, "summary %s" % summary)
    check(ledger_by_customer(standin) == {"cus_good": 60}, "ledger %s" % standin.ledger())
    check("No such customer" in log, "the parked reason is not in the log")
    rc, out, _ = reporter.command("parked")
    check(rc == 0 and sum(1 for line in out.splitlines() if line.startswith("#")) == 3
          and "No such customer" in out,
          "parked list:\n%s" % out)
    rc, text = reporter.reconcile()
    check(rc == 1 and "DIFFERS" in text and "cus_ghost" in text, "reconcile %d:\n%s" % (rc, text))
    # parked reports are never retried on their own
    before = standin.stats()["requests"]
    rc, summary, _ = reporter.once()
    check(summary["calls"] == 0 and standin.stats()["requests"] == before,
          "parked reports were sent again: %s" % summary)
    # the operator fixes the customer in Stripe and requeues
    standin.configure(customers=["cus_good", "cus_ghost"])
    rc, out, err = reporter.command("requeue", "--all", "--customer", "cus_ghost")
    check(rc == 0 and "3 report(s) requeued" in out, "requeue: %d %s %s" % (rc, out, err))
    rc, summary, log = reporter.once()
    check(rc == 0, "after requeue --once exited %d: %s" % (rc, log[-600:]))
    check(ledger_by_customer(standin) == {"cus_good": 60, "cus_ghost": 42},
          "ledger %s" % standin.ledger())
    rc, text = reporter.reconcile()
    check(rc == 0, "reconcile after the fix exited %d:\n%s" % (rc, text))


# ---- legacy usage records: faults and kills; a replayed failure parks -------------


def test_reporter_usage_records_mode(s):
    customers = ["cus_u%d" % i for i in range(4)]
    # items: on the plan for the first two keys, on the key (wins) for the others
    plan, keys = billing_setup(s, customers, plan_item="si_plan",
                               key_items={"cus_u2": "si_u2", "cus_u3": "si_u3"})
    for i, key in enumerate(keys):
        for h in range(1, 13):
            add_usage(s, plan, key, h, 1 + (i * 13 + h * 7) % 50)
    standin = lib.Standin(s, customers, items={"si_plan": "cus_u0", "si_u2": "cus_u2",
                                                "si_u3": "cus_u3"}, seed=s.seed)
    # A saved 500 (before or after processing) replayed to the same key cannot
    # be broken without an identifier: it parks for an operator (tested
    # below); here every other fault kind.
    standin.configure(faults={"rate": 0.3, "kinds": [k for k in ALL_FAULTS
                                                     if k not in ("500_before", "500_after")],
                              "slow_s": 1.5})
    reporter = lib.Reporter(s, standin, mode="usage_records", args=[
        "--report-interval-s", "1", "--report-settle-s", "0", "--stripe-timeout-ms", "700",
        "--report-rate-limit", "100", "--report-concurrency", "4"])

    def more(i):
        add_usage(s, plan, keys[i % 4], 2, 5)  # late usage in a reported hour

    run_with_kills(s, reporter, 3, between=(0.3, 1.0), during=more)
    wait_until("every unit accepted", lambda: all_delivered(s, plan), 120, interval=1.0,
               on_timeout=lambda: "outbox %s" % outbox(s))
    reporter.stop()
    per_item = {}
    for i, key in enumerate(keys):
        item = "si_plan" if i < 2 else "si_u%d" % i
        per_item[item] = per_item.get(item, 0) + int(s.db.scalar(
            "SELECT sum(units) FROM usage_hourly WHERE key_id = %s" % lib.sql_literal(key)))
    ledger = standin.ledger()["usage_records"]
    check(ledger == per_item, "usage records ledger %s != counted %s" % (ledger, per_item))
    st = check_standin_rules(standin)
    check("2025-02-24.acacia" in st["stripe_versions"], "Stripe-Version sent: %s"
          % st["stripe_versions"])

    # A saved failure replayed to the same key: parked, never looped, never doubled.
    standin.configure(faults={"rate": 0.0}, fault_sequence=["500_before"])
    add_usage(s, plan, keys[3], 20, 9)
    rc, summary, log = reporter.once()
    check(rc == 1 and summary["parked"] == 1, "replayed failure: rc %d %s" % (rc, summary))
    rc, out, _ = reporter.command("parked")
    check("replay" in out.lower() or "saved" in out.lower() or "500" in out, "parked: %s" % out)
    rc, out, _ = reporter.command("requeue", "--all")
    rc, summary, log = reporter.once()
    check(rc == 0, "after requeue: %d %s" % (rc, log[-500:]))
    check(standin.ledger()["usage_records"]["si_u3"] == per_item["si_u3"] + 9,
          "the requeued record was not counted exactly once: %s" % standin.ledger())
    # Processed, then a saved 500 replayed: parked as well; the operator sees
    # the record in Stripe and resolves it: counted once, nothing resent.
    standin.configure(fault_sequence=["500_after"])
    add_usage(s, plan, keys[2], 21, 4)
    rc, summary, log = reporter.once()
    check(rc == 1 and summary["parked"] == 1, "500 after processing: rc %d %s" % (rc, summary))
    check(standin.ledger()["usage_records"]["si_u2"] == per_item["si_u2"] + 4,
          "Stripe should hold the processed record: %s" % standin.ledger())
    parked_id = s.db.scalar("SELECT id FROM stripe_reports WHERE status = 'parked'")
    rc, out, err = reporter.command("resolve", "--id", parked_id)
    check(rc == 0 and "resolved" in out, "resolve: %d %s %s" % (rc, out, err))
    rc, out, _ = reporter.command("resolve", "--id", parked_id)
    check(rc == 1, "resolving twice should say nothing changed: %d %s" % (rc, out))
    rc, summary, _ = reporter.once()
    check(rc == 0 and summary["calls"] == 0, "after resolve: %d %s" % (rc, summary))
    check(standin.ledger()["usage_records"]["si_u2"] == per_item["si_u2"] + 4,
          "counted twice after resolve: %s" % standin.ledger())
    rc, text = reporter.reconcile()
    check(rc == 0, "reconcile after resolve exited %d:\n%s" % (rc, text))
    s.note("faults %s" % st["faults"])


# ---- meter events: a replayed failure gets a new key, same identifier -------------


def test_reporter_new_idempotency_key(s):
    plan, (key,) = billing_setup(s, ["cus_n"])
    add_usage(s, plan, key, 3, 17)
    standin = lib.Standin(s, ["cus_n"])
    standin.configure(fault_sequence=["500_before", "500_before"])
    reporter = lib.Reporter(s, standin, args=["--report-settle-s", "0"])
    rc, summary, log = reporter.once()
    check(rc == 0, "--once exited %d: %s" % (rc, log[-800:]))
    check(ledger_by_customer(standin) == {"cus_n": 17}, "ledger %s" % standin.ledger())
    check(summary["newKeys"] == 2, "expected two new idempotency keys: %s" % summary)
    gen = int(s.db.scalar("SELECT idempotency_generation FROM stripe_reports WHERE key_id = %s"
                          % lib.sql_literal(key)))
    check(gen == 2, "idempotency generation %d, expected 2" % gen)
    keys = {e["idempotency_key"] for e in standin.events()}
    check(len(keys) == 1 and next(iter(keys)).endswith("-g2"), "accepted under %s" % keys)
    check(standin.stats()["replays"] >= 2, "the stand-in replayed nothing")


# ---- daemon: settings, metrics, standby, SIGTERM -----------------------------------


def test_reporter_daemon_basics(s):
    plan, keys = billing_setup(s, ["cus_d0", "cus_d1"])
    standin = lib.Standin(s, ["cus_d0", "cus_d1"])
    bad = lib.Reporter(s, standin, env={"TALLY_STRIPE_API_KEY": ""})
    rc, _, log = bad.once(timeout=30)
    check(rc == 2 and "TALLY_STRIPE_API_KEY" in log, "no key: %d %s" % (rc, log[-300:]))
    rc, _, log = lib.Reporter(s, standin, args=["--stripe-mode", "usage_record"]).once(timeout=30)
    check(rc == 2 and "TALLY_STRIPE_MODE" in log, "bad mode: %d %s" % (rc, log[-300:]))
    keyfile = s.path("stripe.key")
    with open(keyfile, "w") as f:
        f.write(lib.STRIPE_KEY + "\n")
    both = lib.Reporter(s, standin, env={"TALLY_STRIPE_API_KEY_FILE": keyfile})
    rc, _, log = both.once(timeout=30)
    check(rc == 2 and "not both" in log, "key twice: %d %s" % (rc, log[-300:]))
    wrong = lib.Reporter(s, standin, env={"TALLY_STRIPE_API_KEY": "sk_test_wrong_key_123"},
                         args=["--report-settle-s", "0"])
    add_usage(s, plan, keys[0], 1, 5)
    rc, summary, log = wrong.once(timeout=60)
    check(rc == 1 and summary["parked"] == 0 and "refused the API key" in log,
          "a refused key must park nothing: %d %s" % (rc, summary))
    check("sk_test_wrong_key_123" not in log, "the wrong key was logged")

    # the key from a file; two daemons: one active, one standing by
    fromfile = lib.Reporter(s, standin, env={"TALLY_STRIPE_API_KEY": "",
                                              "TALLY_STRIPE_API_KEY_FILE": keyfile},
                            args=["--report-interval-s", "1", "--report-settle-s", "0"])
    a = fromfile.start("reporter-a")
    wait_until("the first reporter to deliver", lambda: all_delivered(s, plan), 30)
    b = lib.Reporter(s, standin, args=["--report-interval-s", "1", "--report-settle-s", "0"])
    b.start("reporter-b")
    wait_until("the second reporter to stand by", lambda: b.metrics().get(
        "tally_reporter_standby") == 1, 30)
    m = a.metrics()
    check(m.get("tally_reporter_reports_accepted_total") >= 1, "accepted metric %s"
          % m.get("tally_reporter_reports_accepted_total"))
    a.sigkill()
    add_usage(s, plan, keys[1], 2, 8)
    wait_until("the standby to take over and deliver", lambda: all_delivered(s, plan), 60,
               on_timeout=lambda: b.proc.log_tail())
    check(b.metrics().get("tally_reporter_standby") == 0, "standby gauge still 1")
    check(ledger_by_customer(standin) == {"cus_d0": 5, "cus_d1": 8}, "ledger %s"
          % standin.ledger())
    b.stop()


# ---- PostgreSQL stopped and started while reports are in flight ------------------


def test_reporter_postgres_restart(s):
    customers = ["cus_p%d" % i for i in range(5)]
    plan, keys = billing_setup(s, customers)
    for i, key in enumerate(keys):
        for h in range(1, 61):
            add_usage(s, plan, key, h, 1 + (h * 3 + i) % 40)
    standin = lib.Standin(s, customers)
    standin.configure(latency_s=0.02)  # a slower Stripe: the restart lands mid-run
    reporter = lib.Reporter(s, standin, args=[
        "--report-interval-s", "1", "--report-settle-s", "0", "--report-rate-limit", "40",
        "--report-concurrency", "4"]).start()
    wait_until("some reports accepted", lambda: standin.ledger()["accepted"] >= 40, 60)
    before = standin.ledger()["accepted"]
    s.pg("pg-stop")
    try:
        time.sleep(3)
        check(reporter.proc.alive(), "the reporter died without its database: %s"
              % reporter.proc.log_tail())
        during = standin.ledger()["accepted"]
    finally:
        s.pg("pg-start")
    add_usage(s, plan, keys[0], 2, 11)  # late usage after the restart
    wait_until("every unit accepted after the restart", lambda: all_delivered(s, plan), 120,
               interval=1.0, on_timeout=lambda: "outbox %s; %s" % (outbox(s),
                                                                     reporter.proc.log_tail()))
    reporter.stop()
    check(ledger_by_customer(standin) == counted_by_customer(s, plan),
          "ledger %s != counted %s" % (ledger_by_customer(standin), counted_by_customer(s, plan)))
    check_standin_rules(standin)
    s.note("PostgreSQL stopped after %d of 300 reports, %d after 3 s without it"
           % (before, during))


# ---- memory: unused lanes dropped, the --once summary's VmHWM ---------------------

IDLE_LANES_KEPT = 1024        # sender.c: unused lanes beyond twice the reports in memory
MEMORY_CUSTOMERS = 1100       # more lanes than that
PLAIN_PEAK_RSS_MB = 48        # the plain build's VmHWM for this run: about 13 MB


class PlainReporter(lib.Reporter):
    """The unsanitized build: AddressSanitizer's shadow memory and quarantine
    would swamp the figure the check is about."""

    def _argv(self, port):
        argv = lib.Reporter._argv(self, port)
        return [self.scope.bin("tally-reporter")] + argv[1:]


def seed_many_customers(s, plan, count, hours_ago):
    """One key per customer (cus_m<i>) on `plan`, usage in the hour `hours_ago`
    back for each: one statement each, not one per key."""
    prefix = uid(s, "mkey")
    s.db.execute(
        "INSERT INTO api_keys (id, value_hash, plan_id, stripe_customer_id)"
        " SELECT %s || i, sha256(convert_to(%s || i, 'UTF8')), %s, 'cus_m' || i"
        "   FROM generate_series(1, %d) AS i ON CONFLICT (id) DO NOTHING"
        % (lib.sql_literal(prefix), lib.sql_literal(prefix + "-secret-"), lib.sql_literal(plan),
           count))
    s.db.execute(
        "INSERT INTO usage_hourly (key_id, hour, plan_id, method, endpoint, requests, units,"
        " bytes) SELECT %s || i, date_trunc('hour', now()) - make_interval(hours => %d), %s,"
        " 'GET', '/v1/x', 1, i, 0 FROM generate_series(1, %d) AS i"
        % (lib.sql_literal(prefix), hours_ago, lib.sql_literal(plan), count))


def test_reporter_memory_bounds(s):
    plan, _ = billing_setup(s, [])
    standin = lib.Standin(s, ["*"])
    fast = ["--report-settle-s", "0", "--report-rate-limit", "2000",
            "--report-concurrency", "16"]
    # The daemon keeps one lane per customer and target while it has reports
    # for it; once the unused ones are more than IDLE_LANES_KEPT beyond twice
    # the reports in memory, they go (they used to stay forever). Which ones
    # are left depends on when the flushes fell: at most IDLE_LANES_KEPT.
    seed_many_customers(s, plan, MEMORY_CUSTOMERS, 1)
    daemon = lib.Reporter(s, standin, args=fast + ["--report-interval-s", "1"]).start()
    wait_until("the daemon to deliver %d customers' usage" % MEMORY_CUSTOMERS,
               lambda: all_delivered(s, plan), 90, on_timeout=lambda: daemon.proc.log_tail())
    last = {}

    def lanes_dropped():
        m = daemon.metrics()
        last.update(lanes=m.get("tally_reporter_lanes", None),
                    held=m.get("tally_reporter_reports_in_memory", None))
        check(None not in last.values(), "no tally_reporter_lanes or _reports_in_memory gauge")
        return last["lanes"] <= IDLE_LANES_KEPT and last["held"] == 0

    wait_until("the unused lanes to be dropped", lanes_dropped, 15,
               on_timeout=lambda: "lanes %s, reports in memory %s" % (last.get("lanes"),
                                                                      last.get("held")))
    daemon.stop()

    # --once reports its own VmHWM (not ru_maxrss, which counts the parent's)
    seed_many_customers(s, plan, MEMORY_CUSTOMERS, 2)
    rc, summary, log = PlainReporter(s, standin, args=fast).once(timeout=120)
    check(rc == 0 and summary["accepted"] == MEMORY_CUSTOMERS,
          "--once: exit %d, summary %s, log %s" % (rc, summary, log[-300:]))
    peak_mb = (summary.get("peakRssKb") or 0) / 1024.0
    check(0 < peak_mb < PLAIN_PEAK_RSS_MB, "--once peakRssKb %.1f MB, expected (0, %d) MB"
          % (peak_mb, PLAIN_PEAK_RSS_MB))
    check(ledger_by_customer(standin) == counted_by_customer(s, plan), "ledger differs")
    check_standin_rules(standin)
    s.note("%d of %d lanes left after delivery; --once VmHWM %.1f MB for %d reports"
           % (last["lanes"], MEMORY_CUSTOMERS, peak_mb, MEMORY_CUSTOMERS))


# ---- the 23-hour rule parks a report and keeps its last error ------------------------


def test_reporter_stale_park_keeps_last_error(s):
    """A report first sent almost 23 hours ago fails (HTTP 500) until it is
    parked; the parking message quotes the failure before it (it once
    formatted into the buffer it was quoting, and quoted its own start)."""
    plan, (key,) = billing_setup(s, ["cus_st"])
    s.db.execute(
        "INSERT INTO stripe_reports (key_id, plan_id, hour, seq, quantity, mode,"
        " stripe_customer_id, target, identifier, first_sent_at)"
        " VALUES (%s, %s, date_trunc('hour', now()) - interval '5 hours', 0, 7, 'meter_event',"
        " 'cus_st', 'api_calls', %s, now() - interval '23 hours' + interval '2.5 seconds')"
        % (lib.sql_literal(key), lib.sql_literal(plan), lib.sql_literal(uid(s, "stale"))))
    standin = lib.Standin(s, ["cus_st"])
    standin.configure(fault_sequence=["500_before"] * 40)
    rc, summary, log = lib.Reporter(s, standin, args=["--report-settle-s", "0"]).once()
    check(rc == 1 and summary["parked"] == 1, "expected one parked report: rc %d %s %s"
          % (rc, summary, log[-600:]))
    error = s.db.scalar("SELECT last_error FROM stripe_reports WHERE key_id = %s"
                        % lib.sql_literal(key))
    check(error.startswith("unconfirmed 23 hours after it was first sent")
          and "(last: HTTP 500" in error, "parking message: %r" % error)
    check(ledger_by_customer(standin) == {}, "ledger %s" % standin.ledger())


TESTS = [
    ("reporter_postgres_restart", test_reporter_postgres_restart),
    ("reporter_late_events_difference", test_reporter_late_events_difference),
    ("reporter_unknown_customer_parks", test_reporter_unknown_customer_parks),
    ("reporter_new_idempotency_key", test_reporter_new_idempotency_key),
    ("reporter_daemon_basics", test_reporter_daemon_basics),
    ("reporter_usage_records_mode", test_reporter_usage_records_mode),
    ("reporter_faults_and_kills", test_reporter_faults_and_kills),
    ("reporter_memory_bounds", test_reporter_memory_bounds),
    ("reporter_stale_park_keeps_last_error", test_reporter_stale_park_keeps_last_error),
]

__all__ = ["TESTS", "Failure"]
