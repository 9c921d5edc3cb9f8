#!/usr/bin/env python3
"""Tally's integration tests: a real PostgreSQL 15 and the dev broker
(tools/stack.sh, in a temporary directory), the collector and the api from
the sanitized build, loadgen and kcat as producers.

    python3 tests/integration/run.py --bin build/bin --asan-bin build/asan/bin
        [--only NAME[,NAME...]] [--seed N] [--keep-logs DIR] [--list]

Prints one line per test (PASS/FAIL, name, seconds, reason) and then
"N passed, N failed"; exits 1 if any test failed. Whatever happens (failure,
Ctrl-C, SIGTERM) the stack is stopped, every process the suite started is
killed and the temporary directory is removed."""

import argparse
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.dont_write_bytecode = True

import cases  # noqa: E402
import hardening_cases  # noqa: E402
import reporter_cases  # noqa: E402
import freshness_cases  # noqa: E402
import lib  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class Interrupted(BaseException):
    pass


def on_signal(signum, _frame):
    raise Interrupted("signal %d" % signum)


class Context:
    """The suite: its temporary directory, the stack, the binaries."""

    def __init__(self, args, tmp):
        self.args = args
        self.tmp = tmp
        self.bin_dir = os.path.abspath(args.bin)
        self.asan_dir = os.path.abspath(args.asan_bin)
        self.stack_dir = os.path.join(tmp, "stack")
        self.db_url = None
        self.db = None
        self.seed = args.seed

    def stack(self, command, extra_env=None):
        env = lib.clean_env({"TALLY_BIN_DIR": self.bin_dir})
        if extra_env:
            env.update(extra_env)
        cp = subprocess.run([os.path.join(REPO, "tools", "stack.sh"), command, self.stack_dir]
                            + (["--fast"] if command == "up" else []),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
                            stdin=subprocess.DEVNULL, timeout=180,
                            start_new_session=True)  # a Ctrl-C must not cut it short
        if cp.returncode != 0:
            raise lib.Failure("tools/stack.sh %s failed: %s"
                              % (command, cp.stdout.decode("utf-8", "replace").strip()[-1500:]))
        return cp.stdout.decode("utf-8", "replace")

    def up(self):
        self.stack("up")
        env = {}
        with open(os.path.join(self.stack_dir, "env")) as f:
            for line in f:
                line = line.strip()
                if line.startswith("export "):
                    name, _, value = line[len("export "):].partition("=")
                    env[name] = value.strip("'")
        self.db_url = env["TALLY_DATABASE_URL"]
        cp = subprocess.run([os.path.join(REPO, "tools", "migrate.sh")],
                            env=lib.clean_env({"TALLY_DATABASE_URL": self.db_url}),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, timeout=120)
        if cp.returncode != 0:
            raise lib.Failure("tools/migrate.sh failed: %s"
                              % cp.stdout.decode("utf-8", "replace").strip()[-1500:])
        self.db = lib.DB(self.db_url)


class Scope:
    """One test: its processes, files and random numbers."""

    def __init__(self, ctx, name):
        self.ctx = ctx
        self.name = name
        self.dir = os.path.join(ctx.tmp, "tests", name)
        os.makedirs(self.dir)
        self.registry = lib.Registry()
        self.collectors = []
        self.apis = []
        self.brokers = []
        self._ids = 0
        self.seed = (ctx.seed * 1000003 + sum(map(ord, name)) * 7919) % (2 ** 31)
        self.rng = random.Random(self.seed)
        self.db = ctx.db
        self.notes = []

    def next_id(self):
        self._ids += 1
        return self._ids

    def path(self, name):
        return os.path.join(self.dir, name)

    def bin(self, name):
        return os.path.join(self.ctx.bin_dir, name)

    def asan_bin(self, name):
        return os.path.join(self.ctx.asan_dir, name)

    def broker(self, partitions, dlq_partitions=4):
        b = lib.Broker(self, partitions, dlq_partitions)
        self.brokers.append(b)
        return b

    def collector(self, broker, group, **kw):
        return lib.Collector(self, broker, group, **kw)

    def api(self, **kw):
        return lib.Api(self, **kw)

    def loadgen(self, broker, keys, **kw):
        return lib.Loadgen(self, broker, keys, **kw)

    def note(self, text):
        self.notes.append(text)

    def pg(self, command):
        self.ctx.stack(command)

    def finish(self):
        """At the end of a passing test: every collector and api still
        running must stop cleanly on SIGTERM (exit 0, no sanitizer report)."""
        for c in self.collectors + self.apis:
            if c.alive():
                c.stop()
            else:
                c.check_sanitizers()

    def cleanup(self):
        self.registry.stop_all()


def run_test(ctx, name, func):
    scope = Scope(ctx, name)
    t0 = time.monotonic()
    reason = None
    try:
        ctx.db.reset_usage()
        func(scope)
        scope.finish()
    except lib.Failure as e:
        reason = str(e)
    except Interrupted:
        scope.cleanup()
        raise
    except Exception as e:  # a bug in the test itself still fails the test
        reason = "%s: %s\n%s" % (type(e).__name__, e, traceback.format_exc(limit=4))
    finally:
        scope.cleanup()
        # A sanitizer report in any collector or api fails the test even if killed.
        if reason is None:
            for c in scope.collectors + scope.apis:
                r = lib.sanitizer_report(c.proc.log_text())
                if r:
                    reason = "%s: sanitizer report:\n%s" % (c.name, r)
                    break
    elapsed = time.monotonic() - t0
    if reason is None:
        extra = ("  (" + "; ".join(scope.notes) + ")") if scope.notes else ""
        print("PASS %s %.1fs%s" % (name, elapsed, extra), flush=True)
    else:
        first, _, rest = reason.partition("\n")
        print("FAIL %s %.1fs %s" % (name, elapsed, first), flush=True)
        for line in rest.splitlines():
            print("    " + line, flush=True)
    return reason is None


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bin", default="build/bin", help="tally-loadgen and tally-devbroker")
    p.add_argument("--asan-bin", default="build/asan/bin",
                   help="the collector and api under test")
    p.add_argument("--only", help="comma-separated test names (or substrings) to run")
    p.add_argument("--seed", type=int, default=None, help="random seed (default: random)")
    p.add_argument("--keep-logs", help="copy every log here before removing the temp dir")
    p.add_argument("--list", action="store_true", help="list the tests and exit")
    args = p.parse_args()

    tests = (cases.TESTS + hardening_cases.TESTS + reporter_cases.TESTS +
             freshness_cases.TESTS)
    if args.list:
        for name, _ in tests:
            print(name)
        return 0
    if args.only:
        wanted = [w.strip() for w in args.only.split(",") if w.strip()]
        tests = [(n, f) for n, f in tests if any(w == n or w in n for w in wanted)]
        if not tests:
            print("no test matches --only %s" % args.only, file=sys.stderr)
            return 2
    if args.seed is None:
        args.seed = random.SystemRandom().randrange(1, 2 ** 31)
    missing = []
    for d, names in ((args.bin, ("tally-loadgen", "tally-devbroker")),
                     (args.asan_bin, ("tally-collector", "tally-api"))):
        for n in names:
            if not os.access(os.path.join(d, n), os.X_OK):
                missing.append("%s (run 'make' and 'make asan')" % os.path.join(d, n))
    for tool in ("kcat", "psql"):
        if shutil.which(tool) is None:
            missing.append("%s (run 'make deps')" % tool)
    if missing:
        print("FAIL prerequisites 0.0s missing: %s" % ", ".join(missing), flush=True)
        print("0 passed, 1 failed", flush=True)
        return 1

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    passed = failed = 0
    tmp = tempfile.mkdtemp(prefix="tally-it-")
    ctx = Context(args, tmp)
    started = time.monotonic()
    print("integration tests: seed %d, temp dir %s" % (args.seed, tmp), flush=True)
    interrupted = False
    try:
        t0 = time.monotonic()
        try:
            ctx.up()
        except lib.Failure as e:
            print("FAIL stack_setup %.1fs %s" % (time.monotonic() - t0, e), flush=True)
            failed += 1
        else:
            for name, func in tests:
                if run_test(ctx, name, func):
                    passed += 1
                else:
                    failed += 1
    except Interrupted as e:
        interrupted = True
        print("interrupted (%s); cleaning up" % e, flush=True)
    finally:
        # No more interruptions: the cleanup must run to its end.
        for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(s, signal.SIG_IGN)
        try:
            ctx.stack("down")
        except Exception as e:  # keep cleaning up
            print("warning: stack down: %s" % e, file=sys.stderr)
        if args.keep_logs:
            try:
                lib.copy_tree(tmp, args.keep_logs)
            except Exception as e:
                print("warning: cannot keep logs: %s" % e, file=sys.stderr)
        shutil.rmtree(tmp, ignore_errors=True)
    print("suite took %.1fs" % (time.monotonic() - started), flush=True)
    print("%d passed, %d failed" % (passed, failed), flush=True)
    if interrupted:
        return 130
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
