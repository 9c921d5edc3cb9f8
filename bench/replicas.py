"""The replicas benchmark (bench/run.py --only replicas; issue #15): what
sharing one key's quota and rate across tally-api replicas costs, and the
quota overshoot it allows.

- authorize_replicas_rps: GET /v1/authorize for one key (quota 10^9, so
  every answer is 204 and the replicas lease slices of 1,000 all along)
  under wrk (2 threads, 64 connections, keep-alive, 10 s) through nginx
  (`upstream`, round robin, 2 workers) to 2 replicas with
  TALLY_API_REPLICAS_SHARED on.
- authorize_replicas_one_rps: the same through the same nginx to 1 replica,
  sharing off (each replica alone, as before issue #15);
  authorize_replicas_one_shared_rps: 1 replica, sharing on.
  authorize_replicas_ratio = 2 shared / 1 alone. The machine has 2 cores,
  so this is the cost of coordination, not scaling.
- quota_overshoot: a key with a quota of 10,000 hit by wrk through nginx on
  2 shared replicas, one killed with -9 after 1 s; after its TTL, the rest
  drained: allowed - 10,000. quota_overshoot_bound is B = replicas killed x
  slice (README, "Several api replicas"); the goal is overshoot <= B.

Correctness checks: no refusal in the rps runs; overshoot <= B; nothing
stranded (allowed >= the quota).
"""

import importlib.util
import os
import threading
import time

from common import REPO, BenchError, Figures, background_cpu, log

_spec = importlib.util.spec_from_file_location(
    "replicas_suite", os.path.join(REPO, "tests", "replicas", "run.py"))
suite = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(suite)
gw, lib = suite.gw, suite.lib

REQUIRES = ("tally-api", "tally-devbroker")
RPS_SECONDS = 10
QUOTA = suite.QUOTA


def rps(port, key, label):
    allowed, refused, elapsed = suite.wrk(port, key["value"], RPS_SECONDS, connections=64)
    log("%s: %d allowed, %d refused in %.1f s" % (label, allowed, refused, elapsed))
    return allowed / elapsed, refused


def run(ctx, opts):
    fig = Figures("replicas: one key's quota and rate shared by tally-api replicas")
    started = time.monotonic()
    registry = lib.Registry()
    tmp = ctx.readable_dir("replicas")
    try:
        db = ctx.database_url
        alone = suite.Replica(registry, tmp, opts.bin, db, "alone", shared=False)
        plan = alone.plan(name="Bench replicas", quota={"limit": 10 ** 9, "period": "MONTH"},
                          throttle={"rateLimit": 10 ** 6, "burstLimit": 10 ** 6})
        key = alone.key(plan)
        nginx = suite.Balancer(registry, tmp, [alone])
        time.sleep(0.5)  # the key in the cache (refresh 200 ms)
        load = background_cpu()
        suite.wrk(nginx.port, key["value"], 2)  # warm-up
        one, refused_one = rps(nginx.port, key, "1 replica, alone")
        alone.proc.terminate(15)
        first = suite.Replica(registry, tmp, opts.bin, db, "shared1")
        nginx.reload([first])
        one_shared, refused_one_shared = rps(nginx.port, key, "1 replica, shared")
        second = suite.Replica(registry, tmp, opts.bin, db, "shared2")
        nginx.reload([first, second])
        time.sleep(2 * suite.HEARTBEAT_MS / 1000.0)
        two, refused_two = rps(nginx.port, key, "2 replicas, shared")
        for label, refused in (("1 alone", refused_one), ("1 shared", refused_one_shared),
                               ("2 shared", refused_two)):
            if refused:
                fig.problems.append("%s: %d refusals on a key far from its limits"
                                    % (label, refused))
        # The quota run: 2 shared replicas, one killed -9 after 1 s.
        qplan = first.plan(name="Bench replicas quota", quota={"limit": QUOTA, "period": "MONTH"})
        qkey = first.key(qplan)
        time.sleep(0.5)
        allowed = 0
        for r in (first, second):
            allowed += 1 if 200 <= r.authorize(qkey["value"]) < 300 else 0
        killer = threading.Timer(1.0, second.proc.kill)
        killer.start()
        a, _, _ = suite.wrk(nginx.port, qkey["value"], 6, connections=64)
        killer.join()
        allowed += a
        time.sleep(suite.TTL_MS / 1000.0 + 2 * suite.HEARTBEAT_MS / 1000.0)
        for _ in range(10):
            a, _, _ = suite.wrk(nginx.port, qkey["value"], 2, connections=8)
            allowed += a
            if a == 0:
                break
        bound = 1 * suite.SLICE
        overshoot = allowed - QUOTA
        if overshoot > bound:
            fig.problems.append("quota overshoot %d > B = %d" % (overshoot, bound))
        if allowed < QUOTA:
            fig.problems.append("only %d of %d allowed: quota stranded" % (allowed, QUOTA))
        ratio = two / one
        fig.add("authorize_replicas_rps", "%.0f" % two, "requests/s")
        fig.add("authorize_replicas_one_rps", "%.0f" % one, "requests/s")
        fig.add("authorize_replicas_one_shared_rps", "%.0f" % one_shared, "requests/s")
        fig.add("authorize_replicas_ratio", "%.2f" % ratio, "ratio")
        fig.add("quota_overshoot", "%d" % overshoot, "requests")
        fig.add("quota_overshoot_bound", "%d" % bound, "requests")
        fig.note("authorize       2 shared %.0f/s, 1 alone %.0f/s, 1 shared %.0f/s (ratio %.2f)"
                 % (two, one, one_shared, ratio))
        fig.note("quota           %d allowed of %d with one replica killed -9: overshoot %d, "
                 "B %d" % (allowed, QUOTA, overshoot, bound))
        fig.note_other_load("before the runs %.0f%% busy" % (100 * load), load)
        fig.note_duration(started, "4 replicas, 5 wrk runs")
    except lib.Failure as e:
        raise BenchError(str(e))
    finally:
        registry.stop_all()
    return fig
