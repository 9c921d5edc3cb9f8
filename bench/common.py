"""What the Tally benchmarks share (bench/run.py runs them): the throwaway
stack each one gets (Context), starting, waiting for and stopping processes,
free ports, /metrics and /proc readings (RSS, CPU, the machine's other load),
and the Figures a benchmark returns, printed as docs/CONTRACT.md §1 pins:

    BENCH <name> <value> <unit>

Python 3 standard library only.
"""

import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Above this fraction of the machine's CPU busy with other programs while a
# benchmark idles, its report warns that the figures are noisy.
NOISY_LOAD = 0.2

# The dev broker keeps about 5 MB a partition and drops older records past
# that; a usage event is about 270 bytes as a record (300 with margin). A
# benchmark keeps what it leaves unconsumed under half of that, so nothing
# is dropped before the collector reads it.
SAFE_BYTES_PER_PARTITION = 2_500_000
RECORD_BYTES = 300


def events_the_broker_keeps(partitions):
    """Events a benchmark may leave unconsumed on `partitions` partitions."""
    return partitions * SAFE_BYTES_PER_PARTITION // RECORD_BYTES


class BenchError(Exception):
    """The run itself failed or a correctness check did not hold."""


def log(msg):
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# --- figures -------------------------------------------------------------


class Figures:
    """BENCH lines, report lines, target verdicts and failed correctness
    checks of one benchmark."""

    def __init__(self, title):
        self.title = title
        self.bench = []     # (name, formatted value, unit)
        self.report = []    # free text lines
        self.targets = []   # (description, met)
        self.problems = []  # failed correctness checks: the run fails

    def add(self, name, value, unit):
        self.bench.append((name, value, unit))

    def note(self, line):
        self.report.append(line)

    def target(self, description, met):
        self.targets.append((description, met))

    def note_other_load(self, description, *loads):
        """The report line on what other programs used of the machine's CPU
        (background_cpu readings), and a warning when any was noisy."""
        self.note(f"other load      {description}")
        if max(loads) > NOISY_LOAD:
            self.note("WARNING         other programs kept the machine busy: figures are noisy")

    def note_duration(self, started, included):
        """How long the benchmark took since time.monotonic() was `started`."""
        self.note(f"duration        {time.monotonic() - started:.0f} s ({included} included, "
                  f"stack start excluded)")

    def print_report(self):
        print(f"-- {self.title}")
        for line in self.report:
            print(f"   {line}")
        for description, met in self.targets:
            print(f"   target {description}: {'met' if met else 'NOT met'}")

    def print_bench_lines(self):
        for name, value, unit in self.bench:
            print(f"BENCH {name} {value} {unit}")


# --- processes and the throwaway stack ---------------------------------------


def clean_env(extra=None):
    """The environment without any TALLY_* variable (Tally programs refuse
    ones they do not know), plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TALLY_")}
    env.update(extra or {})
    return env


def free_ports(count):
    """`count` distinct free loopback ports (all held open until every one is
    bound, so two calls cannot hand out the same port twice)."""
    held = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            held.append(s)
        return [s.getsockname()[1] for s in held]
    finally:
        for s in held:
            s.close()


def free_port():
    return free_ports(1)[0]


def find_tool(name, *fallbacks):
    """The program on PATH, else the first executable fallback, else None."""
    found = shutil.which(name)
    if found:
        return found
    for candidate in fallbacks:
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def find_psql():
    found = find_tool("psql", "/usr/lib/postgresql/15/bin/psql")
    if not found:
        raise BenchError("psql not found (install postgresql-client)")
    return found


class Context:
    """A temporary directory holding a stack started by tools/stack.sh."""

    def __init__(self, bin_dir, keep, partitions):
        self.bin_dir = bin_dir
        self.keep = keep
        self.partitions = partitions
        self.dir = tempfile.mkdtemp(prefix="tally-bench-")
        self.stack_started = False
        self.procs = []  # (name, Popen) of long-running processes we started
        self.psql_bin = find_psql()
        self.database_url = None
        self.brokers = None

    # stack

    def _stack(self, command):
        env = clean_env({"TALLY_BIN_DIR": self.bin_dir,
                         "TALLY_DEVBROKER_PARTITIONS": str(self.partitions)})
        return subprocess.run([os.path.join(REPO, "tools", "stack.sh"), command, self.dir],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True)

    def up(self):
        log(f"starting PostgreSQL (fsync on) and the dev broker ({self.partitions} partitions) "
            f"in {self.dir}")
        self.stack_started = True
        r = self._stack("up")
        if r.returncode != 0:
            raise BenchError(f"tools/stack.sh up failed:\n{r.stdout}")
        settings = self.read_env()
        self.database_url = settings["TALLY_DATABASE_URL"]
        self.brokers = settings["TALLY_KAFKA_BROKERS"]
        fsync = self.psql("SHOW fsync").strip()
        if fsync != "on":
            raise BenchError(f"PostgreSQL runs with fsync={fsync}; benchmarks need it on")
        r = subprocess.run([os.path.join(REPO, "tools", "migrate.sh")],
                           env=clean_env({"TALLY_DATABASE_URL": self.database_url}),
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if r.returncode != 0:
            raise BenchError(f"tools/migrate.sh failed:\n{r.stdout}")

    def read_env(self):
        """DIR/env is a shell file; let a shell evaluate it."""
        out = subprocess.run(
            ["bash", "-c", '. "$1" && printf "%s\\0%s\\0" "$TALLY_DATABASE_URL" '
             '"$TALLY_KAFKA_BROKERS"', "bash", os.path.join(self.dir, "env")],
            env=clean_env(), stdout=subprocess.PIPE, check=True, text=True).stdout
        url, brokers = out.split("\0")[:2]
        return {"TALLY_DATABASE_URL": url, "TALLY_KAFKA_BROKERS": brokers}

    def teardown(self):
        for name, proc in reversed(self.procs):
            stop_process(name, proc)
        self.procs.clear()
        if self.stack_started:
            r = self._stack("down")
            if r.returncode != 0:
                log(f"warning: tools/stack.sh down failed:\n{r.stdout}")
            self.stack_started = False
        if self.keep:
            log(f"--keep: state, logs and data files stay in {self.dir}")
        else:
            shutil.rmtree(self.dir, ignore_errors=True)

    # helpers

    def path(self, *parts):
        return os.path.join(self.dir, *parts)

    def readable_dir(self, name):
        """A new directory `name` in the stack's directory, both readable by
        everyone: nginx started as root runs its workers as nobody, and they
        must reach the configuration and files kept there."""
        path = self.path(name)
        os.makedirs(path)
        os.chmod(self.dir, 0o755)
        os.chmod(path, 0o755)
        return path

    def bin(self, name):
        return os.path.join(self.bin_dir, name)

    def psql(self, sql=None, args=(), stdin=None):
        """Runs psql (ON_ERROR_STOP, tuples only, unaligned); returns stdout."""
        cmd = [self.psql_bin, self.database_url, "-X", "-q", "-t", "-A",
               "-v", "ON_ERROR_STOP=1"] + list(args)
        if sql is not None:
            cmd += ["-c", sql]
        r = subprocess.run(cmd, input=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True, env=clean_env())
        if r.returncode != 0:
            raise BenchError(f"psql failed ({sql or args}): {r.stderr.strip()}")
        return r.stdout

    def spawn(self, name, cmd, env, log_path):
        logf = open(log_path, "ab")
        proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=logf,
                                stderr=subprocess.STDOUT, start_new_session=True)
        logf.close()
        self.procs.append((name, proc))
        return proc

    def forget(self, proc):
        self.procs = [(n, p) for n, p in self.procs if p is not proc]


def stop_process(name, proc, timeout=15):
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        log(f"{name} (pid {proc.pid}) ignored SIGTERM for {timeout}s; killing it")
        proc.kill()
        proc.wait()


def tail(path, lines=25):
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-lines:])
    except OSError:
        return "(no log)"


def wait_until_ready(name, proc, log_paths, ready, timeout_s, interval=0.1):
    """Polls ready() until it returns something true, and returns that; fails
    with the tail of the logs when the process exits first or timeout_s
    passes."""
    deadline = time.monotonic() + timeout_s
    while True:
        if proc.poll() is not None:
            raise BenchError(f"{name} exited with status {proc.returncode}; last lines of its "
                             f"log:\n" + "".join(tail(p) for p in log_paths))
        answer = ready()
        if answer:
            return answer
        if time.monotonic() > deadline:
            raise BenchError(f"{name} not ready within {timeout_s} s; last lines of its log:\n"
                             + "".join(tail(p) for p in log_paths))
        time.sleep(interval)


# --- /metrics and /proc ----------------------------------------------------

METRIC_LINE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)")


def fetch_metrics(port, timeout=2):
    """The Prometheus text of 127.0.0.1:port/metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=timeout) as r:
        return r.read().decode()


def parse_metrics(text, family=None):
    """{name: value} from Prometheus text, labelled series summed by name;
    with `family`, {labels: value} of that metric family only."""
    values = {}
    for line in text.splitlines():
        m = METRIC_LINE.match(line)
        if not m or (family is not None and m.group(1) != family):
            continue
        key = m.group(1) if family is None else (m.group(2) or "")
        values[key] = values.get(key, 0.0) + float(m.group(3))
    return values


def scrape(port, family=None, timeout=2):
    """parse_metrics of a process's /metrics."""
    return parse_metrics(fetch_metrics(port, timeout), family)


def proc_status_kb(pid):
    """(VmRSS, VmHWM) in kB, or None when the process is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            fields = dict(line.split(":", 1) for line in f if ":" in line)
        return int(fields["VmRSS"].split()[0]), int(fields["VmHWM"].split()[0])
    except (OSError, KeyError, ValueError):
        return None


def proc_cpu_seconds(pid):
    """User + system CPU seconds of a process so far (0 when unknown)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def machine_cpu_ticks():
    """(all ticks, idle ticks) of the whole machine from /proc/stat."""
    try:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return (0, 0)
    return sum(v[:8]), v[3] + (v[4] if len(v) > 4 else 0)


def busy_fraction(ticks_before, ticks_after):
    """Fraction of all CPUs busy between two machine_cpu_ticks readings."""
    total = ticks_after[0] - ticks_before[0]
    idle = ticks_after[1] - ticks_before[1]
    return 1.0 - idle / total if total > 0 else 0.0  # 0: unknown


def background_cpu(seconds=1.0):
    """Fraction of all CPUs busy over `seconds` while the benchmark itself
    idles: what other programs on the machine are using."""
    before = machine_cpu_ticks()
    time.sleep(seconds)
    return busy_fraction(before, machine_cpu_ticks())


def postgres_cpu_by_pid(ctx):
    """{pid: CPU seconds} of the stack's postmaster and its live children."""
    try:
        with open(ctx.path("pg", "data", "postmaster.pid")) as f:
            postmaster = int(f.readline())
    except (OSError, ValueError):
        return {}
    cpu = {postmaster: proc_cpu_seconds(postmaster)}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            if ppid == postmaster:
                cpu[int(entry)] = proc_cpu_seconds(int(entry))
    return cpu


def postgres_cpu_seconds(ctx):
    """CPU seconds used so far by the stack's PostgreSQL: the postmaster and
    its live children (exited backends are not counted)."""
    return sum(postgres_cpu_by_pid(ctx).values())
