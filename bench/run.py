#!/usr/bin/env python3
"""Tally benchmarks (`make bench`).

Each benchmark is a module with run(ctx, opts) -> Figures and the programs
it needs in --bin (REQUIRES); it gets a Context (a throwaway stack:
PostgreSQL 15 with fsync on, the dev broker, a temporary directory). The
runner prints a human report, then one line per figure, as
docs/CONTRACT.md §1 pins:

    BENCH <name> <value> <unit>

Exit status: 0 when every selected benchmark ran and its correctness checks
passed (performance targets are reported, not asserted), 1 otherwise, 2 for
bad arguments.

    python3 bench/run.py --bin build/bin [--events N] [--only collector,api,reporter] [--keep]

Benchmarks: collector (bench/collector.py: dev broker -> committed rollups,
against PostgreSQL's COPY), api (bench/api.py: GET /v1/authorize against
nginx's limit_req, and GET /v1/keys/{id}/quota, under wrk; bench/api.lua,
bench/nginx-yardstick.conf) and reporter (bench/reporter.py: one
`tally-reporter --once` cycle: 10,000 customers x 24 hours of usage to the
Stripe stand-in, tests/stripe/standin.py, at 1,000 calls/s), ingest
(bench/ingest.py: POST /v1/events batches of 100 from wrk, bench/ingest.lua,
through tally-ingest to the dev broker, every event then counted by the
collector), gateway (bench/gateway.py: the nginx recipe of
deploy/gateway/ with auth_request to tally-api against the same nginx
without auth, and the usage freshness at 5,000 requests/s;
bench/gateway.lua), alerts (bench/alerts.py: a threshold-crossing
event produced to Kafka -> the signed webhook at a local receiver, under
20,000 events/s of background traffic) and replicas (bench/replicas.py:
one key's quota and rate shared by tally-api replicas behind nginx: 2
replicas against 1, and the quota overshoot with one killed) and
freshness (bench/freshness.py: an event acknowledged by the broker -> its
unit visible in GET /v1/keys/{id}/quota, idle and with 20,000 events/s of
background traffic). What they share is in bench/common.py.

BENCH_API_ARGS (environment) adds flags to the measured tally-api, e.g.
BENCH_API_ARGS="--threads 4" to compare thread counts.

Python 3 standard library only.
"""

import argparse
import os
import signal
import sys
import time

# The benchmark modules beside this file (Python puts its folder first on
# the path).
import alerts
import api
import collector
import freshness
import ingest
import gateway
import replicas
import reporter
from common import RECORD_BYTES, REPO, SAFE_BYTES_PER_PARTITION, BenchError, Context, log

# Benchmarks in run order; each gets its own fresh stack.
BENCHMARKS = {
    "collector": collector,
    "api": api,
    "reporter": reporter,
    "ingest": ingest,
    "gateway": gateway,
    "alerts": alerts,
    "replicas": replicas,
    "freshness": freshness,
}


def default_partitions(events):
    # At 128 or more, and enough that the broker keeps every event.
    needed = -(-events * RECORD_BYTES // SAFE_BYTES_PER_PARTITION)
    return max(128, needed)


def parse_args(argv):
    p = argparse.ArgumentParser(description="Tally benchmarks; prints BENCH <name> <value> "
                                "<unit> lines (docs/CONTRACT.md §1).")
    p.add_argument("--bin", default=os.path.join(REPO, "build", "bin"),
                   help="directory of the Tally binaries [build/bin]")
    p.add_argument("--events", type=int, default=1_000_000,
                   help="messages to publish for the collector benchmark [1000000]")
    p.add_argument("--only", default=",".join(BENCHMARKS),
                   help=f"comma-separated benchmarks to run [{','.join(BENCHMARKS)}]")
    p.add_argument("--partitions", type=int, default=None,
                   help="partitions of the events topic [max(128, enough for --events)]")
    p.add_argument("--timeout", type=int, default=420,
                   help="seconds the collector may take to catch up [420]")
    p.add_argument("--collector-callgrind", metavar="FILE", default=None,
                   help="run the collector once under valgrind --tool=callgrind, writing "
                   "its profile to FILE (instruction counts; no rates) [off]")
    p.add_argument("--keep", action="store_true",
                   help="keep the temporary directory (stack state, logs) for debugging")
    opts = p.parse_args(argv)
    opts.only = [b.strip() for b in opts.only.split(",") if b.strip()]
    unknown = [b for b in opts.only if b not in BENCHMARKS]
    if unknown:
        p.error(f"unknown benchmark(s) {', '.join(unknown)}; known: {', '.join(BENCHMARKS)}")
    if opts.events < 1000:
        p.error("--events must be at least 1000")
    opts.bin = os.path.abspath(opts.bin)
    if opts.partitions is None:
        opts.partitions = default_partitions(opts.events)
    return opts


def on_sigterm(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def missing_programs(opts):
    needed = sorted({p for b in opts.only for p in BENCHMARKS[b].REQUIRES})
    return [name for name in needed if not os.access(os.path.join(opts.bin, name), os.X_OK)]


def print_summary(results, failures, seconds):
    """The human report of every benchmark, its failures, then the BENCH
    lines."""
    print()
    print(f"=== Tally benchmarks ({os.cpu_count()} CPUs, {seconds:.0f} s) ===")
    for fig in results:
        fig.print_report()
    for failure in failures:
        print(f"FAILED {failure}")
    print()
    for fig in results:
        fig.print_bench_lines()
    sys.stdout.flush()


def main(argv):
    opts = parse_args(argv)
    signal.signal(signal.SIGTERM, on_sigterm)
    missing = missing_programs(opts)
    for name in missing:
        print(f"bench: {opts.bin}/{name} not found; run 'make' first", file=sys.stderr)
    if missing:
        return 1
    wall0 = time.monotonic()
    results, failures = [], []
    for name in opts.only:
        ctx = Context(opts.bin, opts.keep, opts.partitions)
        try:
            ctx.up()
            fig = BENCHMARKS[name].run(ctx, opts)
            results.append(fig)
            failures += [f"{name}: {problem}" for problem in fig.problems]
        except BenchError as e:
            failures.append(f"{name}: {e}")
        except KeyboardInterrupt:
            log("interrupted; tearing down")
            return 130
        finally:
            ctx.teardown()
    print_summary(results, failures, time.monotonic() - wall0)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
