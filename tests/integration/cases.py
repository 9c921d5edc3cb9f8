"""The integration tests. Each takes a Scope (see run.py) and raises
lib.Failure when the collector does not do what the contract says.

Isolation: every test gets its own dev broker (fresh topics, fresh DLQ,
partition count to fit its volume), its own consumer group, key ids and
CloudEvents source; the rollups and the deduplication record are emptied
before each test."""

import json
import subprocess
import time
import zlib

import lib
from lib import Expected, check, wait_until, wait_for_totals

TOPIC = "usage-events"
DLQ = "usage-events-dlq"


def now():
    return time.time()


def base_time(minutes_ago=3):
    """A fixed RFC 3339 time a few minutes ago (loadgen --base-time)."""
    return lib.rfc3339(int(now()) - minutes_ago * 60)


def event(id, subject, source, t=None, data=None, **extra):
    """A CloudEvents 1.0 usage event as a dict (t: epoch seconds)."""
    ev = {"specversion": "1.0", "id": id, "source": source, "type": "api.request",
          "subject": subject, "time": lib.rfc3339_ms(now() - 60 if t is None else t)}
    if data is not None:
        ev["data"] = data
    ev.update(extra)
    return ev


def enc(obj):
    return json.dumps(obj, separators=(",", ":")).encode()


def expect_event(expected, ev):
    data = ev.get("data") or {}
    expected.add_event(ev["subject"], lib.parse_rfc3339(ev["time"]), data.get("units", 1),
                       data.get("bytes", 0))


# ---- 1. 100,000 events, 20% duplicates, replay minutes later ----------------------


def test_dedup_100k_with_replay(s):
    partitions = 32
    broker = s.broker(partitions)
    keys = lib.keys_on_distinct_partitions("t1-key-", 24, partitions)
    plan = "t1-plan"
    s.db.add_plan(plan)
    s.db.add_keys(keys[:12], plan)
    s.db.add_keys(keys[12:])
    plans = {k: (plan if i < 12 else "") for i, k in enumerate(keys)}
    weighted = [k + (":2" if i % 8 == 0 else "") for i, k in enumerate(keys)]
    seed = s.rng.randrange(1, 2 ** 31)
    common = dict(keys=weighted, count=100000, seed=seed, base_time=base_time(),
                  source="it-dedup", late_ratio=0.1)

    collector = s.collector(broker, "it-dedup")
    first = s.loadgen(broker, rate=25000, dup_ratio=0.2, dup_other_partition=0.5, **common)
    # The "minutes later" re-sends: once the collector has counted part of
    # the run, a second producer re-sends events 0..29999 byte for byte.
    wait_until("the collector to count a first part of the run",
               lambda: collector.metrics().counted >= 20000, 90,
               on_timeout=lambda: collector.metrics().brief())
    counted_before_replay = collector.metrics().counted
    replay = s.loadgen(broker, replay=30000, **common).finish()
    first = first.finish()
    check(first["unique"] == 100000, "loadgen sent %d unique events" % first["unique"])
    dup_share = first["duplicates"] / first["sent"]
    check(0.17 < dup_share < 0.23, "loadgen duplicate share %.3f, not about 20%%" % dup_share)
    check(first["late"] > 5000, "loadgen sent only %d late events" % first["late"])
    check(replay["sent"] == 30000 and replay["unique"] == 0, "replay summary: %s" % replay)

    sent = first["sent"] + replay["sent"]
    wait_until("consumed = %d (every message sent) and consumed = counted + duplicates + "
               "rejected" % sent,
               lambda: (lambda m: m.consumed == sent and m.balanced())(collector.metrics()),
               120, on_timeout=lambda: collector.metrics().brief()
               + " (a consumed count short of the sent count with lag 0 means the broker "
               "dropped messages: retention)")
    m = collector.metrics()
    check(m.counted == 100000 and m.duplicates == sent - 100000 and m.rejected == 0,
          "expected counted=100000 duplicates=%d rejected=0, got %s" % (sent - 100000, m.brief()))

    expected = Expected()
    expected.add_summary(first)
    check(len(expected.hours) > len(keys), "internal: expected hour rows span too few hours")
    wait_for_totals(s.db, 100000, [collector], 60)
    lib.verify_totals(s.db, expected, plans)
    s.note("%d messages, %d hour rows, %d counted before the replay"
           % (sent, len(expected.hours), counted_before_replay))


# ---- 2. SIGKILL at random moments ---------------------------------------------------


def kill_repeatedly(s, start, times, ready_what, ready, longest_pause):
    """Starts a collector with start(), then `times` times: waits until
    ready(collector), waits a random 0.2 s to `longest_pause` more, kill -9s
    it and starts the next. Returns (the last collector, "counted+duplicates"
    at each kill)."""
    collector, kills = start(), []
    for _ in range(times):
        wait_until("%s %s" % (collector.name, ready_what), lambda: ready(collector), 60,
                   on_timeout=lambda: collector.metrics().brief())
        time.sleep(s.rng.uniform(0.2, longest_pause))
        collector.assert_alive()
        m = collector.metrics()
        collector.sigkill()
        kills.append("%d+%d" % (m.counted, m.duplicates))
        collector = start()
    return collector, kills


def test_sigkill_restarts(s):
    partitions = 32
    broker = s.broker(partitions)
    keys = lib.keys_on_distinct_partitions("t2-key-", 16, partitions)
    s.db.add_keys(keys)
    group = "it-sigkill"
    # Open-ended traffic (stopped after the last kill): every kill below
    # happens while events arrive, however long the restarts take.
    run = s.loadgen(broker, keys, count=1000000, seed=s.rng.randrange(1, 2 ** 31),
                    base_time=base_time(), source="it-sigkill", rate=1500, dup_ratio=0.2,
                    dup_other_partition=0.5, late_ratio=0.1)
    # Each kill once the instance is at work (it has written a batch).
    collector, kills = kill_repeatedly(
        s, lambda: s.collector(broker, group), 5, "to count something",
        lambda c: c.metrics().counted > 0, 2.0)
    time.sleep(1)
    summary = run.stop()
    expected = Expected()
    expected.add_summary(summary)
    unique = summary["unique"]
    check(expected.requests() == unique, "internal: summary hours hold %d of %d events"
          % (expected.requests(), unique))
    wait_for_totals(s.db, unique, [collector], 120)
    lib.verify_totals(s.db, expected)
    s.note("%d events; killed after counted+duplicates %s" % (unique, ", ".join(kills)))


def test_sigkill_many_writers(s):
    """kill -9 while four writers have batches in flight at once: their
    transactions commit out of order, the offsets must not, and an event two
    batches hold (duplicates, a fifth of them on another partition) must be
    counted by exactly one. Small batches at a high rate keep every writer
    busy; each instance's debug log must show writer 3 committing, which
    happens only while writers 0 to 2 are all busy."""
    partitions = 32
    broker = s.broker(partitions)
    keys = lib.keys_on_distinct_partitions("t2w-key-", 16, partitions)
    s.db.add_keys(keys)
    group = "it-sigkill-writers"
    args = ["--writers", "4", "--batch-max-events", "300", "--log-level", "debug"]
    run = s.loadgen(broker, keys, count=1000000, seed=s.rng.randrange(1, 2 ** 31),
                    base_time=base_time(), source="it-sigkill-writers", rate=8000,
                    dup_ratio=0.2, dup_other_partition=0.5)
    collector, kills = kill_repeatedly(
        s, lambda: s.collector(broker, group, args=args), 3, "to have four batches in flight",
        lambda c: "batch written by writer 3" in c.proc.log_text(), 1.5)
    time.sleep(1)
    summary = run.stop()
    expected = Expected()
    expected.add_summary(summary)
    unique = summary["unique"]
    wait_for_totals(s.db, unique, [collector], 120)
    lib.verify_totals(s.db, expected)
    s.note("%d events; 4 writers killed after counted+duplicates %s"
           % (unique, ", ".join(kills)))


def test_kill_while_earlier_batch_blocked(s):
    """The out-of-order case made certain: one batch held up in PostgreSQL
    (a psql session has inserted, uncommitted, the digest of one of its
    events, so its INSERT waits) while the other batch of its round (lane
    0's, carrying the round's offsets) and later rounds commit on the other
    writers, until the offsets ring is full; then kill -9. The keys are in
    two lanes only, so a round needs two of the four writers and later
    rounds go on past the held batch. Committing a batch's offsets as it
    commits would skip the held batch's events after the restart; every
    event must still be counted once, the held one too."""
    partitions, writers = 16, 4
    broker = s.broker(partitions)
    keys, used, i = [], set(), 0
    while len(keys) < 8:  # lanes 0 and 1, distinct partitions
        name = "t2b-key-%d" % i
        p = zlib.crc32(name.encode()) % partitions
        if lib.collector_lane(name, writers) in (0, 1) and p not in used:
            keys.append(name)
            used.add(p)
        i += 1
    s.db.add_keys(keys)
    held_key = next(k for k in keys if lib.collector_lane(k, writers) == 1)
    group, source = "it-blocked-batch", "it-blocked-batch"
    args = ["--writers", str(writers), "--batch-max-events", "200"]
    # 1,000 events/s: rounds of about 100 (one per 100 ms), so the seven
    # later rounds the offsets ring (16 batches, two a round) lets past the
    # held batch take most of a second, longer than noticing the hold.
    run = s.loadgen(broker, keys, count=1000000, seed=s.rng.randrange(1, 2 ** 31),
                    base_time=base_time(), source=source, rate=1000, dup_ratio=0.1)
    collector = s.collector(broker, group, args=args)
    wait_until("%s to count something" % collector.name, lambda: collector.metrics().counted > 0,
               60, on_timeout=lambda: collector.metrics().brief())
    held = event("held-1", held_key, source)
    week = "date_trunc('week', %s::timestamptz AT TIME ZONE 'UTC')::date" % lib.sql_literal(
        held["time"])
    locker = subprocess.Popen(["psql", "-X", "-q", "-d", s.ctx.db_url], stdin=subprocess.PIPE,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        locker.stdin.write(("BEGIN; INSERT INTO event_ids (event_hash, event_week) VALUES "
                            "(tally_event_hash(%s, 'held-1'), %s);\n"
                            % (lib.sql_literal(source), week)).encode())
        locker.stdin.flush()
        wait_until("psql's uncommitted digest",
                   lambda: s.db.scalar("SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a "
                                       "USING (pid) WHERE a.application_name = 'psql' AND "
                                       "l.locktype = 'transactionid'") != "0", 10)
        lib.kcat_produce_lines(broker.bootstrap, TOPIC, [(held_key, enc(held))])
        waiting = ("SELECT count(*) FROM pg_stat_activity WHERE application_name = "
                   "'tally-collector' AND wait_event_type = 'Lock'")
        wait_until("the held event's batch to wait on psql's row",
                   lambda: s.db.scalar(waiting) != "0", 30)
        held_at = collector.metrics().counted
        # Later rounds commit until the ring is full: wait for the count to
        # stand still, which also gives an (asynchronous) offset commit
        # time to reach the broker.
        seen = [held_at, time.monotonic()]

        def standing_still():
            counted = collector.metrics().counted
            if counted != seen[0]:
                seen[:] = [counted, time.monotonic()]
            return time.monotonic() - seen[1] >= 1.5
        wait_until("the count to stand still behind the held batch", standing_still, 30,
                   on_timeout=lambda: collector.metrics().brief())
        check(s.db.scalar(waiting) != "0", "the held batch went through before the kill")
        later = collector.metrics().counted - held_at
        check(later >= 100, "only %d events of later rounds committed past the held batch"
              % later)
        collector.sigkill()
    finally:
        locker.stdin.close()  # psql ends; its transaction rolls back
        locker.wait(10)
    collector = s.collector(broker, group, args=args)
    time.sleep(1)
    summary = run.stop()
    expected = Expected()
    expected.add_summary(summary)
    expect_event(expected, held)
    wait_for_totals(s.db, summary["unique"] + 1, [collector], 60)
    lib.verify_totals(s.db, expected)
    s.note("%d events; killed with a batch held while %d later events were counted"
           % (summary["unique"] + 1, later))


# ---- 3. PostgreSQL stopped and restarted -------------------------------------------


def test_postgres_restart(s):
    partitions = 16
    broker = s.broker(partitions)
    keys = lib.keys_on_distinct_partitions("t3-key-", 12, partitions)
    s.db.add_keys(keys)
    # Open-ended traffic, stopped a few seconds after PostgreSQL is back.
    run = s.loadgen(broker, keys, count=1000000, seed=s.rng.randrange(1, 2 ** 31),
                    base_time=base_time(), source="it-pg", rate=2500, dup_ratio=0.2,
                    dup_other_partition=0.5, late_ratio=0.1)
    collector = s.collector(broker, "it-pg")
    pid = collector.proc.pid
    wait_until("the collector to count events", lambda: collector.metrics().counted > 2000, 60,
               on_timeout=lambda: collector.metrics().brief())
    s.pg("pg-stop")
    stopped_at = time.monotonic()
    seen = {"paused": False, "max_errors": 0}

    def outage_observed():
        collector.assert_alive()
        m = collector.metrics()
        seen["paused"] = seen["paused"] or m.paused == 1
        seen["max_errors"] = max(seen["max_errors"], m.db_errors)
        return seen["paused"] and time.monotonic() - stopped_at >= 5

    try:
        wait_until("tally_collector_paused to become 1 while PostgreSQL is down",
                   outage_observed, 30, on_timeout=lambda: collector.metrics().brief())
    finally:
        s.pg("pg-start")
    collector.assert_alive()
    time.sleep(3)
    summary = run.stop()
    expected = Expected()
    expected.add_summary(summary)
    wait_for_totals(s.db, summary["unique"], [collector], 120)
    lib.verify_totals(s.db, expected)
    check(collector.proc.pid == pid and collector.alive(), "the collector did not survive")
    wait_until("tally_collector_paused to return to 0",
               lambda: collector.metrics().paused == 0, 15)
    m = collector.metrics()
    check(m.db_errors > 0, "tally_collector_db_errors_total is 0 after a database outage")
    s.note("db_errors=%d" % m.db_errors)


# ---- 4. two instances, one killed --------------------------------------------------


def test_two_instances_one_killed(s):
    partitions = 32
    broker = s.broker(partitions)
    keys = lib.keys_on_distinct_partitions("t4-key-", 16, partitions)
    s.db.add_keys(keys)
    group = "it-two"
    run = s.loadgen(broker, keys, count=40000, seed=s.rng.randrange(1, 2 ** 31),
                    base_time=base_time(), source="it-two", rate=2500, dup_ratio=0.2,
                    dup_other_partition=0.5, late_ratio=0.1)
    pair = [s.collector(broker, group, name="collector-a"),
            s.collector(broker, group, name="collector-b")]
    wait_until("both instances to consume (partitions shared)",
               lambda: all(c.metrics().consumed > 0 for c in pair), 45,
               on_timeout=lambda: "; ".join(c.metrics().brief() for c in pair))
    time.sleep(s.rng.uniform(0.5, 2.5))
    victim = s.rng.choice(pair)
    survivor = pair[1 - pair.index(victim)]
    survivor.assert_alive()
    victim_counted = victim.metrics().counted
    victim.sigkill()
    summary = run.finish()
    expected = Expected()
    expected.add_summary(summary)
    wait_for_totals(s.db, 40000, [survivor], 120)
    lib.verify_totals(s.db, expected)
    s.note("killed %s after it counted %d" % (victim.name, victim_counted))


# ---- 5. the DLQ corpus -------------------------------------------------------------


def bad_event_corpus(key, source):
    """[(name, value bytes or None, expected tally-error-code)]"""
    t = now()
    n = [0]

    def ev(**changes):
        n[0] += 1
        e = event("bad-%d" % n[0], key, source, t - 30,
                  {"method": "GET", "endpoint": "/v1/items", "status": 200, "units": 1,
                   "bytes": 10})
        for k, v in changes.items():
            if v is DELETE:
                del e[k]
            else:
                e[k] = v
        return e

    def data(**d):
        base = {"method": "GET", "endpoint": "/v1/items", "status": 200, "units": 1, "bytes": 10}
        base.update(d)
        return base

    def raw(e, field, raw_value):
        """Encodes e with field's value replaced by raw bytes."""
        e[field] = "@@RAW@@"
        return enc(e).replace(b'"@@RAW@@"', raw_value)

    corpus = [
        ("empty value", b"", "empty"),
        ("null value", None, "empty"),
        ("huge payload", enc(ev(padding="x" * 70000)), "too_large"),
        ("invalid utf-8 byte", raw(ev(), "type", b'"api.\xffrequest"'), "invalid_utf8"),
        ("overlong utf-8", raw(ev(), "type", b'"api.\xc0\xafrequest"'), "invalid_utf8"),
        ("utf-8 surrogate", raw(ev(), "type", b'"api.\xed\xa0\x80request"'), "invalid_utf8"),
        ("truncated utf-8 at the end", enc(ev()) + b"\xe2\x82", "invalid_utf8"),
        ("truncated json", enc(ev())[:40], "invalid_json"),
        ("not json", b"hello, collector", "invalid_json"),
        ("trailing garbage", enc(ev()) + b" x", "invalid_json"),
        ("single quotes", b"{'specversion':'1.0'}", "invalid_json"),
        ("duplicate member", raw(ev(), "type", b'"api.request","id":"again"'), "invalid_json"),
        ("array", b'[{"specversion":"1.0"}]', "not_object"),
        ("string", b'"an event"', "not_object"),
        ("number", b"42", "not_object"),
        ("json null", b"null", "not_object"),
        ("boolean", b"true", "not_object"),
    ]
    for field in ("specversion", "id", "source", "type", "subject", "time"):
        corpus.append(("missing %s" % field, enc(ev(**{field: DELETE})), "missing_field"))
    corpus += [
        ("null id", enc(ev(id=None)), "missing_field"),
        ("id is a number", enc(ev(id=123)), "invalid_field"),
        ("empty id", enc(ev(id="")), "invalid_field"),
        ("id of 257 chars", enc(ev(id="i" * 257)), "invalid_field"),
        ("source is an array", enc(ev(source=["gw"])), "invalid_field"),
        ("type is an object", enc(ev(type={})), "invalid_field"),
        ("subject is a number", enc(ev(subject=7)), "invalid_field"),
        ("subject of 129 chars", enc(ev(subject="k" * 129)), "invalid_field"),
        ("data is a string", enc(ev(data="units=1")), "invalid_field"),
        ("units is a string", enc(ev(data=data(units="1"))), "invalid_field"),
        ("units negative", enc(ev(data=data(units=-1))), "invalid_field"),
        ("units fractional", enc(ev(data=data(units=1.5))), "invalid_field"),
        ("units too big", enc(ev(data=data(units=1000000001))), "invalid_field"),
        ("bytes negative", enc(ev(data=data(bytes=-5))), "invalid_field"),
        ("status out of range", enc(ev(data=data(status=99))), "invalid_field"),
        ("status is a string", enc(ev(data=data(status="200"))), "invalid_field"),
        ("method not letters", enc(ev(data=data(method="G3T"))), "invalid_field"),
        ("specversion 0.3", enc(ev(specversion="0.3")), "unsupported_specversion"),
        ("specversion 2.0", enc(ev(specversion="2.0")), "unsupported_specversion"),
        ("specversion a number", enc(ev(specversion=1.0)), "unsupported_specversion"),
        ("time not rfc 3339", enc(ev(time="yesterday")), "invalid_time"),
        ("time without offset", enc(ev(time=lib.rfc3339(t - 30)[:-1])), "invalid_time"),
        ("time month 13", enc(ev(time="2026-13-01T00:00:00Z")), "invalid_time"),
        ("time february 30", enc(ev(time=lib.rfc3339(t - 30)[:5] + "02-30T00:00:00Z")),
         "invalid_time"),
        ("time hour 25", enc(ev(time=lib.rfc3339(t - 30)[:11] + "25:00:00Z")), "invalid_time"),
        ("time a number", enc(ev(time=int(t))), "invalid_time"),
        ("time empty", enc(ev(time="")), "invalid_time"),
        ("time 36 days ago", enc(ev(time=lib.rfc3339(t - 36 * 86400))), "too_late"),
        ("time 10 minutes ahead", enc(ev(time=lib.rfc3339(t + 600))), "in_future"),
        ("time a day ahead", enc(ev(time=lib.rfc3339(t + 86400))), "in_future"),
        ("unknown key", enc(ev(subject=key + "-unknown")), "unknown_key"),
    ]
    return corpus


DELETE = object()


def test_dlq_corpus(s):
    partitions = 4
    broker = s.broker(partitions, dlq_partitions=4)
    key, source = "t5-key", "it-dlq"
    s.db.add_keys([key])
    collector = s.collector(broker, "it-dlq")
    expected = Expected()
    warm = event("warm-up", key, source, data={"units": 2, "bytes": 3})
    lib.kcat_produce(broker.bootstrap, TOPIC, enc(warm), key=key, partition=0,
                     tmpdir=s.dir)
    expect_event(expected, warm)
    wait_until("the collector to count the first event", lambda: collector.metrics().counted == 1,
               60, on_timeout=lambda: collector.metrics().brief())

    corpus = bad_event_corpus(key, source)
    next_offset = [1, 0, 0, 0]
    placed = {}  # (partition, offset) -> corpus entry
    for i, (name, value, code) in enumerate(corpus):
        p = i % partitions
        lib.kcat_produce(broker.bootstrap, TOPIC, value, key=key, partition=p, tmpdir=s.dir)
        placed[(p, next_offset[p])] = (name, value, code)
        next_offset[p] += 1

    # Valid events after the corpus, some at the edges of what is accepted.
    t = now()
    valid = [
        event("ok-1", key, source, t - 60, {"units": 3, "bytes": 100, "method": "get",
                                            "endpoint": "/v1/items", "status": 200}),
        event("ok-2", key, source, t - 34 * 86400, {"units": 1, "bytes": 1}),
        event("ok-3", key, source, t + 120, {"units": 2, "bytes": 0}),
        event("ok-4", key, source, t - 3600),
        dict(event("ok-5", key, source, t - 7200), data=None),
        event("ok-6", key, source, t - 60, {"units": 0, "bytes": 0}),
        event("ok-7", key, source, t - 60, {"units": 5}, padding="p" * 60000),
        event("ok-8", key, source, t - 60, {"units": 1, "bytes": 7, "extra": {"nested": [1]}}),
    ] + [event("ok-n%d" % i, key, source, t - 60 - i, {"units": 1 + i % 3, "bytes": i})
         for i in range(20)]
    lib.kcat_produce_lines(broker.bootstrap, TOPIC, [(key, enc(e)) for e in valid])
    for e in valid:
        expect_event(expected, e)

    total = 1 + len(corpus) + len(valid)
    wait_until("consumed = %d, rejected = %d, counted = %d" % (total, len(corpus), 1 + len(valid)),
               lambda: (lambda m: m.consumed == total and m.balanced()
                        and m.rejected == len(corpus))(collector.metrics()),
               60, on_timeout=lambda: "%s, rejected by code %s" % (
                   collector.metrics().brief(), collector.metrics().rejected_by_code()))
    m = collector.metrics()
    check(m.counted == 1 + len(valid) and m.duplicates == 0,
          "expected counted=%d duplicates=0, got %s" % (1 + len(valid), m.brief()))
    messages = wait_until("%d messages in the DLQ" % len(corpus),
                          lambda: (lambda ms: ms if len(ms) >= len(corpus) else None)(
                              lib.kcat_consume_all(broker.bootstrap, DLQ)), 30)
    problems = []
    seen = set()
    for msg in messages:
        h = msg["headers"]
        try:
            where = (int(h.get("tally-source-partition", "-1")),
                     int(h.get("tally-source-offset", "-1")))
        except ValueError:
            where = None
        entry = placed.get(where)
        if entry is None:
            problems.append("DLQ message with headers %s matches no corpus entry" % h)
            continue
        name, value, code = entry
        if where in seen:
            problems.append("%s: published to the DLQ twice" % name)
        seen.add(where)
        if h.get("tally-error-code") != code:
            problems.append("%s: code %r, expected %r (message %r)"
                            % (name, h.get("tally-error-code"), code,
                               h.get("tally-error-message")))
        if msg["value"] != value:
            problems.append("%s: DLQ value differs from the original (%r... vs %r...)"
                            % (name, (msg["value"] or b"")[:40], (value or b"")[:40])
                            if value is not None or msg["value"] is not None else name)
        if h.get("tally-source-topic") != TOPIC:
            problems.append("%s: tally-source-topic %r" % (name, h.get("tally-source-topic")))
        if not h.get("tally-error-message"):
            problems.append("%s: empty tally-error-message" % name)
    for where, (name, _, _) in placed.items():
        if where not in seen:
            problems.append("%s (partition %d offset %d) is not in the DLQ" % ((name,) + where))
    check(not problems, "%d DLQ problems: %s" % (len(problems), "; ".join(problems[:8])))
    by_code = {}
    for _, _, code in corpus:
        by_code[code] = by_code.get(code, 0) + 1
    check(m.rejected_by_code() == by_code, "rejected by code: expected %s, got %s"
          % (by_code, m.rejected_by_code()))


    collector.assert_alive()
    wait_for_totals(s.db, expected.requests(), [collector], 30)
    lib.verify_totals(s.db, expected, {key: ""})
    s.note("%d bad events, %d valid" % (len(corpus), len(valid) + 1))


# ---- 6. key created while running, SIGTERM, same (source, id) ----------------------


def test_key_created_while_running(s):
    broker = s.broker(4)
    known, fresh, later, source = "t6a-known", "t6a-new", "t6a-later", "it-newkey"
    s.db.add_keys([known])
    # No periodic reload during the test: only the miss look-up can find a key.
    collector = s.collector(broker, "it-newkey", args=["--key-refresh-ms", "3600000"])
    expected = Expected()
    warm = event("warm", known, source)
    lib.kcat_produce_lines(broker.bootstrap, TOPIC, [(known, enc(warm))])
    expect_event(expected, warm)
    wait_until("the collector to count the first event", lambda: collector.metrics().counted == 1,
               60, on_timeout=lambda: collector.metrics().brief())

    s.db.add_keys([fresh])  # after the collector loaded its key cache
    batch = [event("new-%d" % i, fresh, source, data={"units": i + 1, "bytes": 2 * i})
             for i in range(20)]
    lib.kcat_produce_lines(broker.bootstrap, TOPIC, [(fresh, enc(e)) for e in batch])
    for e in batch:
        expect_event(expected, e)
    wait_until("the new key's events to be consumed",
               lambda: (lambda m: m.consumed == 21 and m.balanced())(collector.metrics()), 60,
               on_timeout=lambda: collector.metrics().brief())
    m = collector.metrics()
    check(m.counted == 21 and m.rejected == 0,
          "a key created after the collector started was not counted: %s, rejected %s"
          % (m.brief(), m.rejected_by_code()))

    # A key unknown at its first event, created afterwards: the first is
    # rejected, the later ones are counted (no lasting negative cache).
    lib.kcat_produce_lines(broker.bootstrap, TOPIC, [(later, enc(event("early", later, source)))])
    wait_until("the event of a missing key to be rejected",
               lambda: collector.metrics().rejected_by_code().get("unknown_key") == 1, 60,
               on_timeout=lambda: collector.metrics().brief())
    s.db.add_keys([later])
    batch = [event("later-%d" % i, later, source) for i in range(5)]
    lib.kcat_produce_lines(broker.bootstrap, TOPIC, [(later, enc(e)) for e in batch])
    for e in batch:
        expect_event(expected, e)
    wait_until("the created key's events to be counted",
               lambda: (lambda m: m.consumed == 27 and m.balanced())(collector.metrics()), 60,
               on_timeout=lambda: collector.metrics().brief())
    m = collector.metrics()
    check(m.counted == 26 and m.rejected == 1,
          "after creating a key that was missing, expected counted=26 rejected=1, got %s"
          % m.brief())
    wait_for_totals(s.db, expected.requests(), [collector], 30)
    # The collector's status row (GET /v1/status) catches up once the
    # collector is idle, even after a batch that wrote no transaction of its
    # own (here one event of a missing key, dead-lettered).
    lib.kcat_produce_lines(broker.bootstrap, TOPIC,
                           [("t6a-missing", enc(event("missing", "t6a-missing", source)))])
    wait_until("the second event of a missing key to be rejected",
               lambda: collector.metrics().rejected_by_code().get("unknown_key") == 2, 60,
               on_timeout=lambda: collector.metrics().brief())
    status = ("SELECT events_counted, dlq_by_code->>'unknown_key' FROM collector_status"
              " WHERE kafka_group = 'it-newkey'")
    wait_until("the status row to show 26 counted and 2 unknown_key",
               lambda: s.db.query(status) == [["26", "2"]], 30,
               on_timeout=lambda: "status row %r" % s.db.query(status))
    lib.verify_totals(s.db, expected)


def test_sigterm_exits_cleanly(s):
    partitions = 16
    broker = s.broker(partitions)
    keys = lib.keys_on_distinct_partitions("t6b-key-", 8, partitions)
    s.db.add_keys(keys)
    group = "it-sigterm"
    total = 30000
    run = s.loadgen(broker, keys, count=total, seed=s.rng.randrange(1, 2 ** 31),
                    base_time=base_time(), source="it-sigterm", rate=5000, late_ratio=0.1)
    first = s.collector(broker, group)
    wait_until("the collector to count events", lambda: first.metrics().counted >= 5000, 60,
               on_timeout=lambda: first.metrics().brief())
    elapsed = first.stop(timeout=10)  # exit status 0, no sanitizer report
    in_db = s.db.total_requests()
    check(in_db >= 5000, "only %d events in the database after SIGTERM" % in_db)
    summary = run.finish()
    check(summary["duplicates"] == 0, "internal: loadgen sent duplicates")
    second = s.collector(broker, group)
    expected = Expected()
    expected.add_summary(summary)
    wait_for_totals(s.db, total, [second], 90)
    lib.verify_totals(s.db, expected)
    m = second.metrics()
    # A clean stop commits the offsets of everything it wrote: the next
    # instance re-reads nothing (the run has no duplicates of its own).
    check(m.duplicates == 0 and m.counted == total - in_db,
          "after a SIGTERM stop the next instance counted %d (expected %d) and saw %d "
          "duplicates (expected 0): offsets of written batches were not committed"
          % (m.counted, total - in_db, m.duplicates))
    s.note("exit after %.2fs with %d of %d written" % (elapsed, in_db, total))


def test_same_id_different_data(s):
    broker = s.broker(4)
    ka, kb, kc, kd, ke = ("t6c-a", "t6c-b", "t6c-c", "t6c-d", "t6c-e")
    s.db.add_keys([ka, kb, kc, kd, ke])
    src = "it-same"
    # Eight writers: t6c-a's lane (6) is then after t6c-b's (3), so the
    # first copy of "a" counting (not t6c-b's) shows that the copy consumed
    # first wins across lanes too, not the key's lane.
    collector = s.collector(broker, "it-same", args=["--writers", "8"])
    t = now() - 120
    expected = Expected()
    a1 = event("a", ka, src, t, {"units": 3, "bytes": 100, "endpoint": "/one", "method": "GET"})
    first_batch = [
        a1,
        # same (source, id), everything else different, in the same batch
        event("a", ka, src, t + 5, {"units": 7, "bytes": 999, "endpoint": "/two",
                                    "method": "POST"}),
        event("a", kb, src, t - 3600, {"units": 11, "bytes": 5}),
        event("a", ka, src + "-2", t, {"units": 4, "bytes": 1}),   # other source: counts
        event("c", kc, "ab", t, {"units": 1, "bytes": 0}),         # ("ab","c") and
        event("bc", kc, "a", t, {"units": 1, "bytes": 0}),         # ("a","bc") differ
        event("b", ka, src, t, {"units": 2, "bytes": 10}),
    ]
    lib.kcat_produce_lines(broker.bootstrap, TOPIC, [(ka, enc(e)) for e in first_batch],
                           partition=0)
    for e in (first_batch[0], first_batch[3], first_batch[4], first_batch[5], first_batch[6]):
        expect_event(expected, e)
    wait_until("7 events consumed",
               lambda: (lambda m: m.consumed == 7 and m.balanced())(collector.metrics()), 60,
               on_timeout=lambda: collector.metrics().brief())
    m = collector.metrics()
    check(m.counted == 5 and m.duplicates == 2, "expected counted=5 duplicates=2, got %s"
          % m.brief())

    # Re-sends after the originals were counted, on other partitions.
    lib.kcat_produce_lines(broker.bootstrap, TOPIC,
                           [(kb, enc(event("b", kb, src, t + 60, {"units": 9, "bytes": 9})))],
                           partition=1)
    lib.kcat_produce_lines(broker.bootstrap, TOPIC,
                           [(ka, enc(event("a", ka, src, t, {"units": 5, "bytes": 100})))],
                           partition=2)
    # One pair sent at once on two partitions: exactly one of them counts.
    lib.kcat_produce_lines(broker.bootstrap, TOPIC,
                           [(kd, enc(event("race", kd, src, t, {"units": 6, "bytes": 6})))],
                           partition=0)
    lib.kcat_produce_lines(broker.bootstrap, TOPIC,
                           [(ke, enc(event("race", ke, src, t, {"units": 6, "bytes": 6})))],
                           partition=3)
    wait_until("11 events consumed",
               lambda: (lambda m: m.consumed == 11 and m.balanced())(collector.metrics()), 60,
               on_timeout=lambda: collector.metrics().brief())
    m = collector.metrics()
    check(m.counted == 6 and m.duplicates == 5, "expected counted=6 duplicates=5, got %s"
          % m.brief())
    per_key = s.db.hourly_by_key()
    race = [k for k in (kd, ke) if k in per_key]
    check(len(race) == 1, "the pair sent on two partitions counted for %s" % race)
    expect_event(expected, event("race", race[0], src, t, {"units": 6, "bytes": 6}))
    wait_for_totals(s.db, expected.requests(), [collector], 30)
    lib.verify_totals(s.db, expected)


def test_lag_zero_when_caught_up(s):
    """tally_collector_consumer_lag is 0 once an instance has consumed all
    there is, also on partitions where it had nothing to consume since it
    started (everything committed by a previous instance)."""
    partitions = 8
    broker = s.broker(partitions)
    keys = lib.keys_on_distinct_partitions("t6d-key-", 8, partitions)
    s.db.add_keys(keys)
    group = "it-lag"
    first = s.collector(broker, group)
    s.loadgen(broker, keys, count=2000, seed=s.rng.randrange(1, 2 ** 31),
              base_time=base_time(), source="it-lag").finish()
    wait_until("the first instance to count 2000 events",
               lambda: first.metrics().counted == 2000, 60,
               on_timeout=lambda: first.metrics().brief())
    wait_until("the first instance's lag to be 0", lambda: first.metrics().lag == 0, 15,
               on_timeout=lambda: first.metrics().brief())
    first.stop()
    second = s.collector(broker, group)
    # New traffic on one partition only, to see the second instance at work.
    ev = event("after-restart", keys[0], "it-lag")
    lib.kcat_produce_lines(broker.bootstrap, TOPIC, [(keys[0], enc(ev))])
    wait_until("the second instance to count the new event",
               lambda: second.metrics().counted == 1, 60,
               on_timeout=lambda: second.metrics().brief())
    # The gauge is refreshed every 2 s: a value read 5 s after the instance
    # was seen at work was computed with its assignment in place.
    time.sleep(5)
    wait_until("tally_collector_consumer_lag to be 0 with nothing left to consume",
               lambda: second.metrics().lag == 0, 10,
               on_timeout=lambda: second.metrics().brief()
               + " (2000 events already committed by the previous instance; a lag near 2000 "
               "means partitions with no message since the assignment count from the low "
               "watermark)")


def test_broker_outage(s):
    """The dev broker goes away (SIGUSR1: every broker refuses and drops
    connections) while events flow, and comes back (SIGUSR2) with its data:
    the collector keeps running, rejoins its group and the totals are exact."""
    import signal as _signal
    partitions = 8
    broker = s.broker(partitions)
    keys = lib.keys_on_distinct_partitions("t7-key-", 8, partitions)
    s.db.add_keys(keys)
    collector = s.collector(broker, "it-outage")
    run = s.loadgen(broker, keys, count=1000000, seed=s.rng.randrange(1, 2 ** 31),
                    base_time=base_time(), source="it-outage", rate=1000, dup_ratio=0.1)
    wait_until("the collector to count something", lambda: collector.metrics().counted > 0, 60,
               on_timeout=lambda: collector.metrics().brief())
    broker.proc.send(_signal.SIGUSR1)
    time.sleep(8)  # longer than the collector's session timeout in these tests
    collector.assert_alive()
    broker.proc.send(_signal.SIGUSR2)
    time.sleep(3)
    summary = run.stop()
    expected = Expected()
    expected.add_summary(summary)
    wait_for_totals(s.db, summary["unique"], [collector], 120)
    lib.verify_totals(s.db, expected)
    collector.assert_alive()
    s.note("%d events across an 8 s broker outage" % summary["unique"])


def test_event_hash_matches_sql(s):
    """The digest the collector records for (source, id) is the one the SQL
    function tally_event_hash computes (operators rely on it to look an event
    up), including multi-byte and separator-like characters."""
    partitions = 4
    broker = s.broker(partitions)
    key = lib.keys_on_distinct_partitions("t8-key-", 1, partitions)[0]
    s.db.add_keys([key])
    collector = s.collector(broker, "it-hash")
    pairs = [("gw-1", "abc"), ("gateway \u00e9t\u00e9 \u6771\u4eac", "id:1:2"),
             ("a:b", "c"), ("a", ":bc"), ("s" * 256, "i" * 256)]
    lines = [(key, enc(event(i, key, src))) for src, i in pairs]
    lib.kcat_produce_lines(broker.bootstrap, TOPIC, lines)
    wait_until("the collector to count %d events" % len(pairs),
               lambda: collector.metrics().counted == len(pairs), 60,
               on_timeout=lambda: collector.metrics().brief())
    for src, i in pairs:
        found = s.db.scalar(
            "SELECT count(*) FROM event_ids WHERE event_hash = tally_event_hash(%s, %s)"
            % (lib.sql_literal(src), lib.sql_literal(i)))
        check(found == "1", "no event_ids row for tally_event_hash(%r, %r)" % (src[:20], i[:20]))
    check(s.db.scalar("SELECT count(*) FROM event_ids") == str(len(pairs)),
          "expected %d event_ids rows" % len(pairs))


def test_expired_partitions_dropped(s):
    """Retention: a week of event_ids that ended more than the lateness horizon
    ago is dropped whole; the current weeks stay; the collector creates the
    coming weeks' partitions at start."""
    partitions = 4
    broker = s.broker(partitions)
    collector = s.collector(broker, "it-retention")
    wait_until("the collector to be up", lambda: collector.metrics(required=False) is not None,
               30)
    weeks = s.db.query("SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
                       " WHERE i.inhparent = 'event_ids'::regclass")
    names = sorted(r[0] for r in weeks)
    this_week = s.db.scalar("SELECT 'event_ids_' || to_char(date_trunc('week', now() AT TIME "
                            "ZONE 'UTC'), 'YYYYMMDD')")
    next_week = s.db.scalar("SELECT 'event_ids_' || to_char(date_trunc('week', now() AT TIME "
                            "ZONE 'UTC') + interval '7 days', 'YYYYMMDD')")
    check(this_week in names and next_week in names,
          "missing this or next week's partition in %s" % names)
    s.db.execute("CREATE TABLE event_ids_20200106 PARTITION OF event_ids"
                 " FOR VALUES FROM ('2020-01-06') TO ('2020-01-13');"
                 "INSERT INTO event_ids VALUES (gen_random_uuid(), '2020-01-07')")
    dropped = s.db.scalar("SELECT tally_drop_expired_event_partitions(35)")
    check(dropped == "1", "expected 1 expired partition dropped, got %s" % dropped)
    check(s.db.scalar("SELECT to_regclass('event_ids_20200106') IS NULL") == "t",
          "the expired partition is still there")
    check(s.db.scalar("SELECT to_regclass('%s') IS NOT NULL" % this_week) == "t",
          "this week's partition was dropped")


# ---- 9. tally-api's authorize endpoint against the collector's counters -------------


def utc_day_bounds(t=None):
    """(start, end) of the UTC day holding `t` (epoch seconds)."""
    t = now() if t is None else t
    start = int(t) // 86400 * 86400
    return start, start + 86400


def away_from_utc_midnight(margin=120):
    """Waits out the last `margin` seconds of a UTC day, so that a test of
    DAY quotas runs inside one day (at most `margin` s, and rarely)."""
    left = utc_day_bounds()[1] - now()
    if left < margin:
        time.sleep(left + 2)


def check_int_header(answer, name, expected, what):
    value = answer.header(name)
    check(value is not None and value.isdigit() and int(value) == expected,
          "%s: %s is %r, expected %d (%r)" % (what, name, value, expected, answer))


def check_seconds_to_day_end(answer, name, what):
    """`name` holds the seconds to the end of the UTC day (ceil), give or take
    the time the request took."""
    value = answer.header(name)
    expected = utc_day_bounds()[1] - now()
    check(value is not None and value.isdigit()
          and expected - 2 <= int(value) <= expected + 2,
          "%s: %s is %r, expected about %.0f (seconds to the end of the UTC day): %r"
          % (what, name, value, expected, answer))


def authorize_outcomes(api):
    m = api.metrics()
    out = {}
    for name, v in m.values.items():
        if name.startswith('tally_api_authorize_total{outcome="') and v:
            out[name.split('"')[1]] = int(v)
    return out


def test_authorize_quota_boundary(s):
    """Issue #3: GET /v1/authorize switches from 204 to 429 at exactly the
    quota once the collector has counted the events: a DAY quota of 50, 49
    events counted, one 204 (the last unit: the api counts what it allowed)
    and 429 right after; another key on the plan is unaffected; once the
    collector counts a 50th event the api keeps answering 429."""
    away_from_utc_midnight()
    broker = s.broker(4)
    api = s.api()
    plan = api.call("POST", "/v1/plans", 201, admin=True, body={
        "name": "it-quota-50", "quota": {"limit": 50, "period": "DAY"},
        "throttle": {"rateLimit": 1000, "burstLimit": 1000}}).json
    check(plan["quota"]["limit"] == 50 and plan["quota"]["period"] == "DAY"
          and plan["quota"].get("offset", 0) == 0
          and plan["throttle"] == {"rateLimit": 1000, "burstLimit": 1000},
          "POST /v1/plans answered %s" % plan)
    keys = [api.call("POST", "/v1/keys", 201, admin=True,
                     body={"name": "it-quota-%s" % n, "planId": plan["id"]}).json
            for n in ("a", "b")]
    for k in keys:
        check(k.get("planId") == plan["id"] and isinstance(k.get("value"), str) and k["value"],
              "POST /v1/keys answered %s" % k)
    first, second = keys
    kid = first["id"]
    day_start, day_end = utc_day_bounds()

    def quota(key_id):
        return api.call("GET", "/v1/keys/%s/quota" % key_id, 200, admin=True).json

    q = quota(kid)
    check((q["keyId"], q["planId"], q["period"], q["limit"], q["used"], q["remaining"])
          == (kid, plan["id"], "DAY", 50, 0, 50), "quota before any event: %s" % q)

    collector = s.collector(broker, "it-quota")
    source = "it-quota"
    t = now()
    # Units 1 each: half say so, half rely on the default (data.units = 1).
    events = [event("q-%d" % i, kid, source, t,
                    {"method": "GET", "endpoint": "/items", "status": 200}
                    if i % 2 else {"method": "GET", "endpoint": "/items", "status": 200,
                                   "units": 1})
              for i in range(49)]
    lib.kcat_produce_lines(broker.bootstrap, TOPIC, [(kid, enc(e)) for e in events])
    wait_until("the collector to count 49 events",
               lambda: (lambda m: m.consumed == 49 and m.balanced())(collector.metrics()), 60,
               on_timeout=lambda: collector.metrics().brief())
    m = collector.metrics()
    check(m.counted == 49 and m.rejected == 0 and m.duplicates == 0,
          "expected counted=49 rejected=0 duplicates=0, got %s %s"
          % (m.brief(), m.rejected_by_code()))
    wait_until("GET /v1/keys/{id}/quota to show used 49", lambda: quota(kid)["used"] == 49, 15,
               on_timeout=lambda: "last: %s" % quota(kid))
    q = quota(kid)
    check((q["limit"], q["used"], q["remaining"]) == (50, 49, 1)
          and lib.parse_rfc3339(q["periodStart"]) == day_start
          and lib.parse_rfc3339(q["periodEnd"]) == day_end,
          "quota after 49 events: %s" % q)

    # The authorize cache reloads every second; act just after a reload that
    # saw the counter at 49, well before the next one.
    before = authorize_outcomes(api)
    api.wait_fresh_cache()
    refreshes = api.refreshes()
    allowed = api.authorize(first["value"])
    refused = api.authorize(first["value"])
    other = api.authorize(second["value"])
    reloaded = api.refreshes() - refreshes
    note = "" if reloaded == 0 else " (the authorize cache reloaded %d time(s) meanwhile)" % reloaded
    what = "the 50th request of the day" + note
    check(allowed.status == 204, "%s: expected 204, got %r" % (what, allowed))
    check_int_header(allowed, "X-RateLimit-Limit", 50, what)
    check_int_header(allowed, "X-RateLimit-Remaining", 0, what)
    check_seconds_to_day_end(allowed, "X-RateLimit-Reset", what)
    check(allowed.header("X-Tally-Key-Id") == kid, "%s: X-Tally-Key-Id %r"
          % (what, allowed.header("X-Tally-Key-Id")))
    check(allowed.header("Retry-After") is None, "%s: a 204 with Retry-After" % what)
    what = "the 51st request of the day" + note
    check(refused.status == 429 and refused.error_code() == "quota_exceeded",
          "%s: expected 429 quota_exceeded, got %r" % (what, refused))
    check_seconds_to_day_end(refused, "Retry-After", what)
    check_int_header(refused, "X-RateLimit-Limit", 50, what)
    check_int_header(refused, "X-RateLimit-Remaining", 0, what)
    check_seconds_to_day_end(refused, "X-RateLimit-Reset", what)
    check(refused.header("X-Tally-Key-Id") == kid, "%s: X-Tally-Key-Id %r"
          % (what, refused.header("X-Tally-Key-Id")))
    what = "another key on the same plan, with no usage" + note
    check(other.status == 204, "%s: expected 204, got %r" % (what, other))
    check_int_header(other, "X-RateLimit-Limit", 50, what)
    check_int_header(other, "X-RateLimit-Remaining", 49, what)
    check(other.header("X-Tally-Key-Id") == second["id"], "%s: X-Tally-Key-Id %r"
          % (what, other.header("X-Tally-Key-Id")))
    after = authorize_outcomes(api)
    delta = {k: after.get(k, 0) - before.get(k, 0) for k in set(after) | set(before)}
    delta = {k: v for k, v in delta.items() if v}
    check(delta == {"allowed": 2, "over_quota": 1},
          "tally_api_authorize_total moved by %s, expected allowed 2, over_quota 1" % delta)

    # The gateway's event for the allowed request reaches the collector:
    # used 50 >= 50, and the api keeps refusing, across reloads.
    last = event("q-49", kid, source, now(), {"method": "GET", "endpoint": "/items",
                                              "status": 200})
    lib.kcat_produce_lines(broker.bootstrap, TOPIC, [(kid, enc(last))])
    wait_until("the collector to count the 50th event",
               lambda: (lambda m: m.counted == 50 and m.balanced())(collector.metrics()), 60,
               on_timeout=lambda: collector.metrics().brief())
    wait_until("GET /v1/keys/{id}/quota to show used 50", lambda: quota(kid)["used"] == 50, 15,
               on_timeout=lambda: "last: %s" % quota(kid))
    q = quota(kid)
    check((q["limit"], q["used"], q["remaining"]) == (50, 50, 0), "quota after 50 events: %s" % q)
    api.wait_fresh_cache()
    start = api.refreshes()
    answers = []
    while api.refreshes() < start + 2:  # across at least one more reload
        answers.append(api.authorize(first["value"]))
        time.sleep(0.05)
    wrong = [a for a in answers if a.status != 429 or a.error_code() != "quota_exceeded"
             or a.header("X-RateLimit-Remaining") != "0" or a.header("Retry-After") is None]
    check(not wrong, "with used 50 of 50 counted, %d of %d answers were not 429 "
          "quota_exceeded with Remaining 0 and Retry-After, e.g. %r"
          % (len(wrong), len(answers), wrong[:1]))
    counters = {k: v for k, v in s.db.counters().items() if k[1] == "DAY"}
    check(counters == {(kid, "DAY", day_start): (50, 50, 0)},
          "usage_counters DAY rows: %s" % counters)
    s.note("%d answers 429 after the 50th event" % len(answers))


def test_authorize_burst(s):
    """A plan with burstLimit 5 and rateLimit 1 and a quota far away: five
    204s and a 429 (throttled, Retry-After 1) right after; another key on
    the plan has its own bucket; a second later one token is back."""
    api = s.api()
    limit = 1000000
    plan = api.call("POST", "/v1/plans", 201, admin=True, body={
        "name": "it-burst", "quota": {"limit": limit, "period": "MONTH"},
        "throttle": {"rateLimit": 1, "burstLimit": 5}}).json
    keys = [api.call("POST", "/v1/keys", 201, admin=True,
                     body={"name": "it-burst-%s" % n, "planId": plan["id"]}).json
            for n in ("a", "b")]

    def burst(k):
        t0 = time.monotonic()
        answers = [api.authorize(k["value"]) for _ in range(6)]
        elapsed = time.monotonic() - t0
        check(elapsed < 0.5, "6 authorize requests took %.2fs: too slow to judge a 1/s "
              "refill" % elapsed)
        statuses = [a.status for a in answers]
        check(statuses == [204] * 5 + [429],
              "key %s: expected 5 x 204 then 429, got %s" % (k["id"], statuses))
        for i, a in enumerate(answers):
            what = "key %s, request %d" % (k["id"], i + 1)
            check_int_header(a, "X-RateLimit-Limit", limit, what)
            check_int_header(a, "X-RateLimit-Remaining", limit - min(i + 1, 5), what)
            check(a.header("X-Tally-Key-Id") == k["id"], "%s: X-Tally-Key-Id %r"
                  % (what, a.header("X-Tally-Key-Id")))
        last = answers[-1]
        check(last.error_code() == "throttled", "the 6th request: %r" % last)
        check_int_header(last, "Retry-After", 1, "the 6th request")
        return time.monotonic()

    # Remaining counts what this api allowed since its last cache reload:
    # both bursts run just after a reload, well before the next one.
    api.wait_fresh_cache()
    refused_at = burst(keys[0])
    burst(keys[1])  # its own bucket
    # One token per second: a second after the 429, exactly one more 204.
    time.sleep(max(0.0, refused_at + 1.05 - time.monotonic()))
    statuses = [api.authorize(keys[0]["value"]).status for _ in range(2)]
    check(statuses == [204, 429], "a second after the burst: expected [204, 429], got %s"
          % statuses)
    outcomes = authorize_outcomes(api)
    check(outcomes == {"allowed": 11, "throttled": 3},
          "tally_api_authorize_total: %s, expected allowed 11, throttled 3" % outcomes)


TESTS = [
    ("dedup_100k_with_replay", test_dedup_100k_with_replay),
    ("broker_outage", test_broker_outage),
    ("event_hash_matches_sql", test_event_hash_matches_sql),
    ("expired_partitions_dropped", test_expired_partitions_dropped),
    ("sigkill_restarts", test_sigkill_restarts),
    ("sigkill_many_writers", test_sigkill_many_writers),
    ("kill_while_earlier_batch_blocked", test_kill_while_earlier_batch_blocked),
    ("postgres_restart", test_postgres_restart),
    ("two_instances_one_killed", test_two_instances_one_killed),
    ("dlq_corpus", test_dlq_corpus),
    ("key_created_while_running", test_key_created_while_running),
    ("sigterm_exits_cleanly", test_sigterm_exits_cleanly),
    ("same_id_different_data", test_same_id_different_data),
    ("lag_zero_when_caught_up", test_lag_zero_when_caught_up),
    ("authorize_quota_boundary", test_authorize_quota_boundary),
    ("authorize_burst", test_authorize_burst),
]
