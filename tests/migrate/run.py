#!/usr/bin/env python3
"""tools/migrate.sh and tally-migrate (tools/migrate/migrate.c) against a real
PostgreSQL (a throwaway tools/stack.sh), one fresh database per case.

    python3 tests/migrate/run.py [--bin build/bin] [--keep-logs DIR]

Checks what the psql script it replaced did: every NNN_name.sql file in name
order, each once and in its own transaction with its row in
schema_migrations; a second run applies nothing; a file added later (the next
NNN) is applied by the next run; two runs at once apply each file once; a
failing file is rolled back whole and stops the run, the earlier ones stay;
other names are ignored. Python 3 standard library only."""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(REPO, "tests", "integration"))
import lib  # noqa: E402
from lib import Failure, check, clean_env  # noqa: E402

MIGRATE_SH = os.path.join(REPO, "tools", "migrate.sh")


class Context:
    def __init__(self, tmp):
        self.tmp = tmp
        self.stack_dir = os.path.join(tmp, "stack")
        self.count = 0

    def start(self):
        cp = subprocess.run([os.path.join(REPO, "tools", "stack.sh"), "up", self.stack_dir,
                             "--fast"], env=clean_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, timeout=180)
        check(cp.returncode == 0, "tools/stack.sh up: %s" % cp.stdout.decode()[-1500:])
        with open(os.path.join(self.stack_dir, "env")) as f:
            for line in f:
                if line.startswith("export TALLY_DATABASE_URL="):
                    self.url = line.strip().split("=", 1)[1].strip("'")
        self.admin = lib.DB(self.url)

    def stop(self):
        subprocess.run([os.path.join(REPO, "tools", "stack.sh"), "down", self.stack_dir],
                       env=clean_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                       timeout=120)

    def fresh_database(self):
        """A new empty database: (its connection string, a DB on it)."""
        self.count += 1
        name = "migrate_case_%d" % self.count
        self.admin.execute("CREATE DATABASE " + name)
        url = self.url.replace("dbname=", "dbname=%s olddbname=" % name, 1)
        url = " ".join(p for p in url.split() if not p.startswith("olddbname="))
        return url, lib.DB(url)

    def migrations_dir(self, files):
        """A directory holding `files` ({name: SQL text})."""
        self.count += 1
        path = os.path.join(self.tmp, "migrations-%d" % self.count)
        os.makedirs(path)
        for name, text in files.items():
            with open(os.path.join(path, name), "w") as f:
                f.write(text)
        return path


def migrate(url, directory, wait=True):
    """tools/migrate.sh DIR: (exit status, stdout, stderr), or the Popen."""
    argv = [MIGRATE_SH] + ([directory] if directory else [])
    env = clean_env({"TALLY_DATABASE_URL": url} if url else {})
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, cwd="/")
    if not wait:
        return proc
    out, err = proc.communicate(timeout=120)
    return proc.returncode, out.decode("utf-8", "replace"), err.decode("utf-8", "replace")


def applied_lines(out):
    return [line.split()[1] for line in out.splitlines() if line.startswith("applying ")]


def versions(db):
    return [row[0] for row in db.query("SELECT version FROM schema_migrations ORDER BY 1")]


def repository_migrations(ctx):
    """The repository's own migrations: all, then none; the schema works."""
    url, db = ctx.fresh_database()
    expected = sorted(n[:-4] for n in os.listdir(os.path.join(REPO, "migrations"))
                      if n[:3].isdigit() and n[3] == "_" and n.endswith(".sql"))
    rc, out, err = migrate(url, None)
    check(rc == 0, "first run exited %d: %s" % (rc, err))
    check(applied_lines(out) == expected, "applied %s, expected %s" % (applied_lines(out), expected))
    rc, out, err = migrate(url, None)
    check(rc == 0 and out == "", "second run: exit %d, output %r %r" % (rc, out, err))
    check(versions(db) == expected, "schema_migrations: %s" % versions(db))
    check(db.scalar("SELECT to_regclass('usage_hourly') IS NOT NULL") == "t", "no usage_hourly")
    return "%d applied, then none" % len(expected)


def later_file_and_other_names(ctx):
    """A file added after a run is applied by the next; other names never."""
    url, db = ctx.fresh_database()
    directory = ctx.migrations_dir({
        "001_first.sql": "CREATE TABLE first_t (id int);\n",
        "002_second.sql": "-- comments only: nothing to run\n",
        "01_short.sql": "CREATE TABLE wrong_1 (id int);",
        "abc_name.sql": "CREATE TABLE wrong_2 (id int);",
        "003_x.sql.bak": "CREATE TABLE wrong_3 (id int);",
        "README": "not SQL"})
    rc, out, err = migrate(url, directory)
    check(rc == 0 and applied_lines(out) == ["001_first", "002_second"],
          "first run: exit %d, %r %r" % (rc, out, err))
    with open(os.path.join(directory, "003_third.sql"), "w") as f:
        f.write("INSERT INTO first_t VALUES (3);\n")
    rc, out, err = migrate(url, directory)
    check(rc == 0 and applied_lines(out) == ["003_third"], "second run: %d %r %r" % (rc, out, err))
    check(versions(db) == ["001_first", "002_second", "003_third"], "versions %s" % versions(db))
    wrong = db.scalar("SELECT count(*) FROM pg_tables WHERE tablename LIKE 'wrong_%'")
    check(wrong == "0", "%s tables from files that are not migrations" % wrong)
    return "003 applied by the next run; 4 other names ignored"


def failure_rolls_back(ctx):
    """A failing file: its statements undone, no row, the run stops at it."""
    url, db = ctx.fresh_database()
    directory = ctx.migrations_dir({
        "001_ok.sql": "CREATE TABLE ok_t (id int);\n",
        "002_bad.sql": "CREATE TABLE half_t (id int);\nSELECT 1 / 0;\n",
        "003_after.sql": "CREATE TABLE after_t (id int);\n"})
    rc, out, err = migrate(url, directory)
    check(rc == 1, "exit %d (expected 1): %r" % (rc, err))
    check("002_bad" in err and "division by zero" in err, "error does not say what: %r" % err)
    check(versions(db) == ["001_ok"], "versions %s" % versions(db))
    tables = [r[0] for r in db.query("SELECT tablename FROM pg_tables WHERE tablename "
                                     "IN ('ok_t', 'half_t', 'after_t') ORDER BY 1")]
    check(tables == ["ok_t"], "tables after the failure: %s" % tables)
    return "002 rolled back whole, 003 not run, exit 1"


def concurrent_runs(ctx):
    """Four runs at once on one database: each file applied exactly once."""
    url, db = ctx.fresh_database()
    procs = [migrate(url, None, wait=False) for _ in range(4)]
    outputs = []
    for proc in procs:
        out, err = proc.communicate(timeout=180)
        check(proc.returncode == 0, "a concurrent run exited %d: %s"
              % (proc.returncode, err.decode("utf-8", "replace")))
        outputs.append(applied_lines(out.decode()))
    all_applied = sorted(v for lines in outputs for v in lines)
    check(all_applied == versions(db), "applied %s; recorded %s" % (all_applied, versions(db)))
    return "%d migrations applied once across 4 runs" % len(all_applied)


def settings_errors(ctx):
    """No database setting: exit 2 naming it; a bad directory: exit 1."""
    rc, _, err = migrate(None, None)
    check(rc != 0 and "TALLY_DATABASE_URL" in err, "without a URL: %d %r" % (rc, err))
    cp = subprocess.run([os.path.join(REPO, "build", "bin", "tally-migrate")],
                        env=clean_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                        timeout=30)
    check(cp.returncode == 2 and b"TALLY_DATABASE_URL" in cp.stderr,
          "tally-migrate without a URL: %d %r" % (cp.returncode, cp.stderr))
    rc, _, err = migrate(ctx.url, os.path.join(ctx.tmp, "no-such-dir"))
    check(rc == 1 and "no-such-dir" in err, "missing directory: %d %r" % (rc, err))
    return "exit 2 naming the setting; exit 1 naming the directory"


CASES = [repository_migrations, later_file_and_other_names, failure_rolls_back,
         concurrent_runs, settings_errors]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--keep-logs", help="copy the stack's logs here")
    parser.parse_args()
    if not os.access(os.path.join(REPO, "build", "bin", "tally-migrate"), os.X_OK):
        print("build/bin/tally-migrate missing: run make", file=sys.stderr)
        return 1
    t0 = time.monotonic()
    tmp = tempfile.mkdtemp(prefix="tally-migrate-test-")
    ctx = Context(tmp)
    passed = failed = 0
    try:
        ctx.start()
        for case in CASES:
            t1 = time.monotonic()
            try:
                detail = case(ctx)
                passed += 1
                print("PASS %s (%.1f s): %s" % (case.__name__, time.monotonic() - t1, detail),
                      flush=True)
            except (Failure, subprocess.SubprocessError, OSError) as e:
                failed += 1
                print("FAIL %s (%.1f s): %s" % (case.__name__, time.monotonic() - t1, e),
                      flush=True)
    except Failure as e:
        failed += 1
        print("FAIL setup: %s" % e)
    finally:
        ctx.stop()
        if parser.parse_args().keep_logs:
            shutil.copytree(os.path.join(tmp, "stack", "logs"), parser.parse_args().keep_logs,
                            dirs_exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
    print("%d passed, %d failed (%.0f s)" % (passed, failed, time.monotonic() - t0))
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
