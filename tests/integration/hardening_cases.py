"""Integration tests of the collector's hardening: poison events (a stored
total that would overflow, an event the database refuses) are dead-lettered
while every other key keeps being counted exactly, through a kill -9; the
health endpoints turn unhealthy when a batch waits too long; one window for
creating and dropping event_ids partitions; a collector stopped before its
first assignment exits 0."""

import os
import subprocess
import time
import urllib.error
import urllib.request

import lib
from cases import DLQ, TOPIC, base_time, enc, event, expect_event
from lib import Expected, check, wait_until, wait_for_totals

INT64_MAX = 2 ** 63 - 1
MAX_BYTES = 10 ** 12   # data.bytes per event (README's bounds)
MAX_UNITS = 10 ** 9    # data.units per event


def seed_usage(db, key, hour, requests, units, nbytes):
    """A usage_hourly row and its DAY/WEEK/MONTH counters, as the collector
    would have written them."""
    db.execute("INSERT INTO usage_hourly (key_id, hour, requests, units, bytes) "
               "VALUES ('%s', to_timestamp(%d), %d, %d, %d)" % (key, hour, requests, units, nbytes))
    for period, start in lib.period_starts(hour).items():
        db.execute("INSERT INTO usage_counters (key_id, period, period_start, requests, units, "
                   "bytes) VALUES ('%s', '%s', to_timestamp(%d), %d, %d, %d)"
                   % (key, period, start, requests, units, nbytes))


def health_status(port, path="/healthz"):
    try:
        with urllib.request.urlopen("http://127.0.0.1:%d%s" % (port, path), timeout=5) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def test_poison_events_dead_lettered(s):
    """Three kinds of poison mixed into normal traffic: bytes that would take
    a stored hourly total past bigint, units that would take a key's counters
    past it, and events that break a constraint an operator added. Each
    goes to the DLQ (counter_overflow / database_rejected, with the database's
    message, value unchanged); every other event, of these keys too, is
    counted exactly, with a kill -9 in the middle."""
    partitions = 8
    broker = s.broker(partitions)
    keys = lib.keys_on_distinct_partitions("t10-key-", 4, partitions)
    pa, pb, pc = "t10-bytes", "t10-units", "t10-check"
    s.db.add_keys(keys + [pa, pb, pc])
    t = int(time.time()) - 600
    hour = t // 3600 * 3600
    t_event = hour + 30
    expected = Expected()
    # PA's hour has room for less than one more event of MAX_BYTES; PB's
    # counters for less than one of MAX_UNITS.
    seed_usage(s.db, pa, hour, 1, 1, INT64_MAX - MAX_BYTES // 2)
    expected.add(pa, hour, 1, 1, INT64_MAX - MAX_BYTES // 2)
    seed_usage(s.db, pb, hour, 1, INT64_MAX - MAX_UNITS // 2, 0)
    expected.add(pb, hour, 1, INT64_MAX - MAX_UNITS // 2, 0)
    # A constraint an operator added that some events break: the database
    # refuses them for good (SQLSTATE 23514), whatever the collector does.
    s.db.execute("ALTER TABLE usage_hourly ADD CONSTRAINT t10_no_forbidden "
                 "CHECK (endpoint <> '/t10-forbidden')")
    try:
        poison_run(s, broker, keys, pa, pb, pc, hour, t_event, expected)
    finally:
        s.db.execute("ALTER TABLE usage_hourly DROP CONSTRAINT t10_no_forbidden")


def poison_run(s, broker, keys, pa, pb, pc, hour, t_event, expected):

    run = s.loadgen(broker, keys, count=1000000, seed=s.rng.randrange(1, 2 ** 31),
                    base_time=base_time(), source="it-poison", rate=1500, dup_ratio=0.2,
                    dup_other_partition=0.5, late_ratio=0.1)
    group = "it-poison"
    collector = s.collector(broker, group)
    wait_until("the collector to count something", lambda: collector.metrics().counted > 0, 60,
               on_timeout=lambda: collector.metrics().brief())

    poison = {}  # value -> (code, what the message must mention)

    def wave(tag):
        lines = []
        for i in range(3):
            bad = event("%s-pa-big-%d" % (tag, i), pa, "it-poison-x", t_event,
                        {"units": 1, "bytes": MAX_BYTES})
            poison[enc(bad)] = ("counter_overflow", "out of range")
            ok = event("%s-pa-zero-%d" % (tag, i), pa, "it-poison-x", t_event,
                       {"units": 2, "bytes": 0})
            expect_event(expected, ok)
            bad_units = event("%s-pb-%d" % (tag, i), pb, "it-poison-x", t_event,
                              {"units": MAX_UNITS})
            poison[enc(bad_units)] = ("counter_overflow", "out of range")
            bad_week = event("%s-pc-bad-%d" % (tag, i), pc, "it-poison-x", t_event,
                             {"units": 1, "endpoint": "/t10-forbidden"})
            poison[enc(bad_week)] = ("database_rejected", "t10_no_forbidden")
            ok_week = event("%s-pc-ok-%d" % (tag, i), pc, "it-poison-x", t_event,
                            {"units": 4, "bytes": 9, "endpoint": "/t10-allowed"})
            expect_event(expected, ok_week)
            lines += [(pa, enc(bad)), (pa, enc(ok)), (pb, enc(bad_units)), (pc, enc(bad_week)),
                      (pc, enc(ok_week))]
        lib.kcat_produce_lines(broker.bootstrap, TOPIC, lines)
        return len(lines)

    extra = wave("w1")
    # Kill at a random moment while the poison of wave 1 is being isolated
    # or just after.
    time.sleep(s.rng.uniform(0.1, 1.5))
    collector.assert_alive()
    collector.sigkill()
    collector = s.collector(broker, group)
    extra += wave("w2")
    time.sleep(2)
    summary = run.stop()
    expected.add_summary(summary)
    valid_extra = extra - len(poison)
    wait_for_totals(s.db, summary["unique"] + valid_extra + 2, [collector], 120)
    lib.verify_totals(s.db, expected)

    messages = lib.kcat_consume_all(broker.bootstrap, DLQ)
    problems, found = [], set()
    for msg in messages:
        entry = poison.get(msg["value"])
        if entry is None:
            problems.append("a DLQ message that is not poison: %r" % (msg["value"] or b"")[:80])
            continue
        code, mention = entry
        found.add(msg["value"])
        h = msg["headers"]
        if h.get("tally-error-code") != code:
            problems.append("code %r, expected %r" % (h.get("tally-error-code"), code))
        if mention not in h.get("tally-error-message", ""):
            problems.append("message %r does not mention %r" % (h.get("tally-error-message"),
                                                                  mention))
        if h.get("tally-source-topic") != TOPIC:
            problems.append("tally-source-topic %r" % h.get("tally-source-topic"))
    missing = [v for v in poison if v not in found]
    if missing:
        problems.append("%d poison events not in the DLQ, e.g. %r" % (len(missing), missing[0][:80]))
    check(not problems, "%d DLQ problems: %s" % (len(problems), "; ".join(problems[:6])))
    m = collector.metrics()
    check(m.balanced(), "consumed != counted + duplicates + rejected: %s" % m.brief())
    check(health_status(collector.port) == 200, "healthz is not 200 after the poison")
    collector.assert_alive()
    s.note("%d poison events dead-lettered (%d DLQ messages), %d events counted exactly"
           % (len(poison), len(messages), summary["unique"] + valid_extra))


def test_refusal_of_everything_pauses(s):
    """When PostgreSQL refuses every event of a round, each on its own (here
    a constraint no row meets; in life a missing partition), that is not the
    events' fault: nothing goes to the DLQ, consumption pauses with reason
    database_refuses_all, and once the cause is gone every event is counted.
    The 40 events are on four keys of four different lanes, 10 a batch:
    the rule judges the round (at least 20 events), not each batch."""
    broker = s.broker(1)  # one partition: one fetch brings all 40
    keys = keys_in_distinct_lanes("t13-key-", 4)
    s.db.add_keys(keys)
    s.db.execute("ALTER TABLE usage_hourly ADD CONSTRAINT t13_refuse_all CHECK (requests < 0)")
    try:
        # All 40 are in Kafka before the collector starts, and its round
        # waits long enough to take them in one: a round under 20 events
        # refused whole is read as its events' fault (isolated, dead-
        # lettered), and a busy machine could otherwise split the 40.
        events = [event("all-%d" % i, keys[i % 4], "it-refuse-all") for i in range(40)]
        lib.kcat_produce_lines(broker.bootstrap, TOPIC, [(e["subject"], enc(e)) for e in events])
        collector = s.collector(broker, "it-refuse-all", args=["--batch-max-wait-ms", "200"])
        wait_until("consumption paused: database_refuses_all",
                   lambda: collector.metrics().get(
                       'tally_collector_pause_reason{reason="database_refuses_all"}') == 1, 60,
                   on_timeout=lambda: collector.metrics().brief())
        check(collector.metrics().rejected == 0, "events were dead-lettered")
    finally:
        s.db.execute("ALTER TABLE usage_hourly DROP CONSTRAINT t13_refuse_all")
    wait_until("all 40 counted", lambda: collector.metrics().counted == 40, 60,
               on_timeout=lambda: collector.metrics().brief())
    check(not lib.kcat_consume_all(broker.bootstrap, DLQ), "the DLQ is not empty")
    collector.stop()


def test_one_keys_refusal_is_its_own(s):
    """One key's events, 25 of them and alone in their lane's batch, are all
    refused by a constraint, while another key's 25 in the same round are
    taken: the refusal is those events' fault, not a refusal of everything.
    They go to the DLQ, the others are counted, and consumption never
    pauses (judged per batch, it would, and hold every key back)."""
    broker = s.broker(1)
    bad, good = keys_in_distinct_lanes("t13b-key-", 2)
    s.db.add_keys([bad, good])
    s.db.execute("ALTER TABLE usage_hourly ADD CONSTRAINT t13b_refuse_one "
                 "CHECK (key_id <> %s)" % lib.sql_literal(bad))
    try:
        events = [event("one-%d" % i, (bad, good)[i % 2], "it-refuse-one") for i in range(50)]
        lib.kcat_produce_lines(broker.bootstrap, TOPIC, [(e["subject"], enc(e)) for e in events])
        collector = s.collector(broker, "it-refuse-one", args=["--batch-max-wait-ms", "200"])
        wait_until("25 counted and 25 dead-lettered",
                   lambda: (lambda m: m.counted == 25 and m.rejected == 25)(collector.metrics()),
                   60, on_timeout=lambda: collector.metrics().brief())
        check(collector.metrics().get(
            'tally_collector_pause_reason{reason="database_refuses_all"}') == 0,
            "consumption paused as if everything were refused")
        codes = {m["headers"].get("tally-error-code")
                 for m in lib.kcat_consume_all(broker.bootstrap, DLQ)}
        check(codes == {"database_rejected"}, "DLQ codes %r" % codes)
    finally:
        s.db.execute("ALTER TABLE usage_hourly DROP CONSTRAINT t13b_refuse_one")
    collector.stop()


def keys_in_distinct_lanes(prefix, count, lanes=4):
    """`count` key ids in different collector lanes (default TALLY_WRITERS)."""
    keys, used, i = [], set(), 0
    while len(keys) < count:
        name = "%s%d" % (prefix, i)
        lane = lib.collector_lane(name, lanes)
        if lane not in used:
            keys.append(name)
            used.add(lane)
        i += 1
    return keys


def test_stall_turns_health_red(s):
    """A batch that cannot be written (its rows locked by another session)
    turns /healthz and /readyz to 503 after TALLY_STALL_TIMEOUT_S, with
    tally_collector_stalled_seconds showing the wait; both recover once the
    batch is written."""
    broker = s.broker(2)
    key = "t11-key"
    s.db.add_keys([key])
    collector = s.collector(broker, "it-stall", args=["--stall-timeout-s", "5"])
    first = event("stall-0", key, "it-stall")
    lib.kcat_produce_lines(broker.bootstrap, TOPIC, [(key, enc(first))])
    wait_until("the first event counted", lambda: collector.metrics().counted == 1, 60)
    check(health_status(collector.port) == 200, "healthz not 200 before the stall")
    locker = subprocess.Popen(
        ["psql", "-X", "-q", "-d", s.ctx.db_url, "-c",
         "BEGIN; LOCK TABLE usage_hourly IN ACCESS EXCLUSIVE MODE; SELECT pg_sleep(10); COMMIT;"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(1)
        lib.kcat_produce_lines(broker.bootstrap, TOPIC,
                               [(key, enc(event("stall-1", key, "it-stall")))])
        wait_until("healthz to answer 503 while the batch waits",
                   lambda: health_status(collector.port) == 503, 15)
        check(health_status(collector.port, "/readyz") == 503, "readyz not 503 during the stall")
        stalled = collector.metrics().get("tally_collector_stalled_seconds")
        check(stalled >= 5, "tally_collector_stalled_seconds is %s during the stall" % stalled)
    finally:
        locker.wait(timeout=30)
    wait_until("the second event counted", lambda: collector.metrics().counted == 2, 30)
    wait_until("healthz back to 200", lambda: health_status(collector.port) == 200, 10)
    check(collector.metrics().get("tally_collector_stalled_seconds") == 0,
          "stalled seconds not back to 0")
    collector.stop()


def test_dlq_reason_cut_on_a_character(s):
    """The DLQ reason names an unknown subject cut to 100 bytes: on a
    character boundary, never in the middle of a UTF-8 sequence."""
    broker = s.broker(2)
    collector = s.collector(broker, "it-utf8-cut")
    subject = "a" + "\u00e9" * 63  # 127 bytes; byte 100 falls inside an e-acute
    ev = event("utf8-cut", subject, "it-utf8-cut")
    lib.kcat_produce_lines(broker.bootstrap, TOPIC, [("k", enc(ev))])
    wait_until("the event rejected", lambda: collector.metrics().rejected == 1, 60)
    messages = lib.kcat_consume_all(broker.bootstrap, DLQ)
    check(len(messages) == 1, "expected 1 DLQ message, got %d" % len(messages))
    reason = messages[0]["headers"].get("tally-error-message", "")
    check(messages[0]["headers"].get("tally-error-code") == "unknown_key",
          "code %r" % messages[0]["headers"].get("tally-error-code"))
    check("\ufffd" not in reason and "a\u00e9\u00e9" in reason,
          "reason is cut inside a character: %r" % reason)
    collector.stop()


def test_database_socket_above_fd_setsize(s):
    """With descriptors 3..1100 taken (a busy process), the collector's
    PostgreSQL socket is numbered past select()'s FD_SETSIZE (1024): waiting
    on it (at SIGTERM, the last batches are written synchronously) must be
    safe; select() with FD_SET there overflows its fd_set."""
    broker = s.broker(2)
    keys = lib.keys_on_distinct_partitions("t12-key-", 2, 2)
    s.db.add_keys(keys)
    port = lib.free_port()
    argv = [s.asan_bin("tally-collector"), "--database-url", s.ctx.db_url,
            "--kafka-brokers", broker.bootstrap, "--kafka-group", "it-fds",
            "--metrics-addr", "127.0.0.1:%d" % port, "--session-timeout-ms", "3000",
            # small batches: the next fills while one is written, and the loop
            # then waits on the database socket
            "--batch-max-events", "20"]
    hold_fds = ('ulimit -n 4096 && for i in $(seq 3 1100); do eval "exec $i</dev/null"; done'
                ' && exec "$@"')
    proc = lib.Proc(s.registry, "collector-fds", ["bash", "-c", hold_fds, "bash"] + argv,
                    s.path("collector-fds.log"))

    def counted():
        try:
            with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port, timeout=5) as r:
                m = lib.Metrics(lib.parse_metrics(r.read().decode()))
                return m.counted
        except OSError:
            check(proc.alive(), "the collector exited: %s" % proc.log_tail())
            return 0

    lib.kcat_produce_lines(broker.bootstrap, TOPIC,
                           [(keys[0], enc(event("fd-0", keys[0], "it-fds")))])
    wait_until("the first event counted", lambda: counted() == 1, 60)
    def socket_fd(n):
        try:
            return os.readlink("/proc/%d/fd/%s" % (proc.pid, n)).startswith("socket:")
        except OSError:  # closed meanwhile
            return False

    high = [int(n) for n in os.listdir("/proc/%d/fd" % proc.pid)
            if int(n) > 1100 and socket_fd(n)]
    check(high, "internal: no socket above descriptor 1100 in the collector")
    # SIGTERM while events flow: the batches left are written synchronously,
    # waiting on the socket.
    run = s.loadgen(broker, keys, count=1000000, seed=s.rng.randrange(1, 2 ** 31),
                    base_time=base_time(), source="it-fds", rate=5000)
    wait_until("events arriving", lambda: counted() > 2000, 60)
    rc, _, killed = proc.terminate(30)
    run.stop()
    report = lib.sanitizer_report(proc.log_text())
    check(report is None, "sanitizer report:\n%s" % report)
    check(not killed and rc == 0, "exit status %s after SIGTERM: %s" % (rc, proc.log_tail()))


def test_partition_windows_agree(s):
    """Creating and dropping event_ids partitions use one window: right after
    the coming weeks are created nothing is expired, for every weekday the
    horizon can fall on (so a collector start creates and drops nothing)."""
    for horizon in range(35, 49):
        s.db.scalar("SELECT tally_ensure_event_partitions(%d)" % horizon)
        dropped = s.db.scalar("SELECT tally_drop_expired_event_partitions(%d)" % horizon)
        check(dropped == "0", "horizon %d: %s partition(s) created and dropped at once"
              % (horizon, dropped))
        again = s.db.scalar("SELECT tally_ensure_event_partitions(%d)" % horizon)
        check(again == "0", "horizon %d: %s partition(s) created again" % (horizon, again))
    s.db.scalar("SELECT tally_drop_expired_event_partitions(35)")


def test_sigterm_before_first_assignment(s):
    """A collector that gets SIGTERM while it waits to join a group whose
    killed member has not timed out yet (no assignment yet) exits 0: the
    librdkafka 2.0.2 cooperative-sticky abort on close is worked around."""
    broker = s.broker(2)
    group = "it-early-term"
    first = s.collector(broker, group, session_timeout_ms=10000)
    wait_until("the first collector to be assigned",
               lambda: "assigned" in first.proc.log_text(), 30)
    first.sigkill()
    second = s.collector(broker, group, session_timeout_ms=10000)
    time.sleep(1.5)
    check("assigned" not in second.proc.log_text(),
          "internal: the second collector was assigned already")
    second.stop(timeout=10)


TESTS = [
    ("poison_events_dead_lettered", test_poison_events_dead_lettered),
    ("refusal_of_everything_pauses", test_refusal_of_everything_pauses),
    ("one_keys_refusal_is_its_own", test_one_keys_refusal_is_its_own),
    ("stall_turns_health_red", test_stall_turns_health_red),
    ("dlq_reason_cut_on_a_character", test_dlq_reason_cut_on_a_character),
    ("database_socket_above_fd_setsize", test_database_socket_above_fd_setsize),
    ("partition_windows_agree", test_partition_windows_agree),
    ("sigterm_before_first_assignment", test_sigterm_before_first_assignment),
]
