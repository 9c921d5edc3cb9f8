#!/usr/bin/env bash
# Starts and stops Tally's local backing services: a throwaway PostgreSQL 15
# cluster on a free loopback port and the in-memory dev broker
# (tally-devbroker). All state lives under one directory, DIR (`.tally` for
# `make stack-up`; tests pass their own temporary directory):
#
#   DIR/pg/data            PostgreSQL cluster       DIR/pg/port    its TCP port
#   DIR/pg/run             its unix socket          DIR/env        settings to source
#   DIR/kafka/bootstrap    broker bootstrap list    DIR/devbroker.pid
#   DIR/logs/postgres.log, DIR/logs/devbroker.log
#
# usage:
#   tools/stack.sh up DIR [--fast]   start what is not running, (re)write DIR/env
#   tools/stack.sh down DIR          stop both; the data stays in DIR
#   tools/stack.sh status DIR        exit 0 if both run, 3 otherwise
#   tools/stack.sh pg-stop DIR       stop only PostgreSQL
#   tools/stack.sh pg-start DIR      start only PostgreSQL, on the same port
#
# --fast turns off fsync and full_page_writes: faster, and a crash of the
# machine loses the cluster. For tests only; the default keeps both on.
#
# Environment read by this script (never by the programs; it is removed
# from the dev broker's environment, because Tally programs refuse unknown
# TALLY_* variables):
#   TALLY_BIN_DIR               where tally-devbroker is [<repo>/build/bin]
#   TALLY_DEVBROKER_PARTITIONS  partitions of the events topic [16]
#   PG_BIN                      PostgreSQL's bin directory
#                               [/usr/lib/postgresql/15/bin]
#
# PostgreSQL refuses to run as root; run as root, this script creates a
# system user `tally` (no login shell, no home) and runs the cluster as it.
# The database superuser is `tally` either way, with trust authentication
# on loopback only.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
bin_dir=${TALLY_BIN_DIR:-$repo/build/bin}
pg_os_user=tally
db_user=tally
db_name=tally
broker_start_timeout_s=20
broker_stop_timeout_s=10

die() {
  echo "stack.sh: error: $*" >&2
  exit 1
}

note() {
  echo "stack.sh: $*"
}

usage() {
  sed -n '/^# usage:/,/^#   tools\/stack.sh pg-start/s/^# \{0,1\}//p' "$0" >&2
  exit 2
}

# --- PostgreSQL -------------------------------------------------------------

find_pg_bin() {
  local candidate
  if [ -n "${PG_BIN:-}" ]; then
    [ -x "$PG_BIN/pg_ctl" ] || die "PG_BIN=$PG_BIN has no pg_ctl"
    echo "$PG_BIN"
    return
  fi
  for candidate in /usr/lib/postgresql/15/bin /usr/lib/postgresql/*/bin; do
    if [ -x "$candidate/pg_ctl" ]; then
      echo "$candidate"
      return
    fi
  done
  if candidate=$(command -v pg_ctl 2>/dev/null); then
    dirname "$candidate"
    return
  fi
  die "PostgreSQL server binaries not found (looked in /usr/lib/postgresql/*/bin and PATH); run 'make deps' or set PG_BIN"
}

running_as_root() {
  [ "$(id -u)" -eq 0 ]
}

# Runs a command as the operating-system user that owns the cluster, from
# DIR/pg so that it never starts in a directory it cannot read, and without
# the lock's descriptor (a server inheriting it would hold the lock forever).
as_pg() {
  if running_as_root; then
    (cd "$state_dir/pg" && runuser -u "$pg_os_user" -- "$@" 9>&-)
  else
    (cd "$state_dir/pg" && "$@" 9>&-)
  fi
}

ensure_pg_os_user() {
  running_as_root || return 0
  id -u "$pg_os_user" >/dev/null 2>&1 && return 0
  local group_option=(--user-group)
  if getent group "$pg_os_user" >/dev/null; then
    group_option=(--gid "$pg_os_user")
  fi
  useradd --system "${group_option[@]}" --no-create-home --home-dir /nonexistent \
    --shell /usr/sbin/nologin --comment "Tally local PostgreSQL" "$pg_os_user" \
    || die "cannot create system user '$pg_os_user' (PostgreSQL refuses to run as root)"
  note "created system user '$pg_os_user' to run PostgreSQL (it refuses to run as root)"
}

# The cluster's user must reach DIR: a private temporary directory (mode 700)
# or one of its parents may block it. Adds search permission (x, not read)
# where it is missing.
ensure_pg_can_traverse() {
  running_as_root || return 0
  local path="" component
  local -a components
  IFS=/ read -r -a components <<<"${state_dir#/}"
  # From the root down, so that each test sees its parents already open.
  for component in "${components[@]}"; do
    path="$path/$component"
    if ! runuser -u "$pg_os_user" -- test -x "$path" 2>/dev/null; then
      chmod o+x "$path" || die "user '$pg_os_user' cannot enter $path and chmod o+x failed"
      note "added o+x to $path so that user '$pg_os_user' can reach $state_dir"
    fi
  done
}

# Prints a free loopback TCP port (bound and released at once).
free_port() {
  python3 -c 'import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])
s.close()'
}

# Succeeds if nothing listens on 127.0.0.1:$1.
port_is_free() {
  python3 - "$1" <<'EOF'
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
try:
    s.bind(("127.0.0.1", int(sys.argv[1])))
except OSError:
    sys.exit(1)
finally:
    s.close()
EOF
}

pg_is_running() {
  [ -f "$pg_data/PG_VERSION" ] || return 1
  as_pg "$pg_bin/pg_ctl" status -D "$pg_data" >/dev/null 2>&1
}

pg_port() {
  [ -s "$state_dir/pg/port" ] || die "$state_dir/pg/port is missing; run 'tools/stack.sh up $state_dir' first"
  cat "$state_dir/pg/port"
}

pg_init() {
  [ -f "$pg_data/PG_VERSION" ] && return 0
  note "creating PostgreSQL cluster in $pg_data"
  rm -rf "$pg_data"
  as_pg "$pg_bin/initdb" -D "$pg_data" -A trust -U "$db_user" -E UTF8 --locale=C --no-sync \
    >>"$state_dir/logs/initdb.log" 2>&1 \
    || die "initdb failed; see $state_dir/logs/initdb.log"
  # Settings that depend on the call (port, --fast) live in tally.conf,
  # rewritten by every 'up' that starts the cluster.
  printf "\n# Tally's local stack (tools/stack.sh)\ninclude_if_exists = 'tally.conf'\n" \
    >>"$pg_data/postgresql.conf"
}

# Writes tally.conf for the next start. $1: port, $2: "fast" or "".
pg_write_conf() {
  local port=$1 fast=$2 socket_dir="$state_dir/pg/run"
  # A unix socket path is limited to 107 bytes; past that, TCP only.
  if [ $(( ${#socket_dir} + 18 )) -gt 107 ]; then
    note "$socket_dir is too long for a unix socket; PostgreSQL listens on TCP only"
    socket_dir=
  fi
  local conf="$pg_data/tally.conf"
  {
    echo "# Written by tools/stack.sh up; rewritten on each start."
    echo "listen_addresses = '127.0.0.1'"
    echo "port = $port"
    echo "unix_socket_directories = '${socket_dir//\'/\'\'}'"
    echo "timezone = 'UTC'"
    echo "log_timezone = 'UTC'"
    echo "shared_buffers = 256MB"
    echo "max_connections = 200"
    if [ "$fast" = fast ]; then
      echo "# --fast: tests only; a machine crash can corrupt the cluster."
      echo "fsync = off"
      echo "full_page_writes = off"
    fi
  } >"$conf.tmp"
  mv "$conf.tmp" "$conf"
  if running_as_root; then chown "$pg_os_user:" "$conf"; fi
}

pg_start() {
  local port=$1
  port_is_free "$port" \
    || die "port $port (from $state_dir/pg/port) is in use by another program; free it, or run 'tools/stack.sh down $state_dir' and remove $state_dir/pg/port to pick a new one"
  as_pg "$pg_bin/pg_ctl" start -D "$pg_data" -w -t 60 -l "$state_dir/logs/postgres.log" >/dev/null \
    || die "PostgreSQL did not start; last lines of $state_dir/logs/postgres.log:
$(tail -n 15 "$state_dir/logs/postgres.log" 2>/dev/null)"
  note "PostgreSQL started on 127.0.0.1:$port"
}

pg_stop() {
  if pg_is_running; then
    as_pg "$pg_bin/pg_ctl" stop -D "$pg_data" -m fast -w -t 60 >/dev/null \
      || die "PostgreSQL did not stop; see $state_dir/logs/postgres.log"
    note "PostgreSQL stopped"
  fi
}

pg_ensure_database() {
  local port=$1 exists
  exists=$("$pg_bin/psql" -X -q -t -A -h 127.0.0.1 -p "$port" -U "$db_user" -d postgres \
    -c "SELECT 1 FROM pg_database WHERE datname = '$db_name'") \
    || die "cannot connect to PostgreSQL on 127.0.0.1:$port"
  if [ "$exists" != 1 ]; then
    "$pg_bin/createdb" -h 127.0.0.1 -p "$port" -U "$db_user" "$db_name" \
      || die "cannot create database $db_name"
    note "created database $db_name"
  fi
}

# Prepares directories and the cluster, then starts it unless it runs.
# $1: "fast" or "".
pg_up() {
  local fast=$1 port
  ensure_pg_os_user
  mkdir -p "$state_dir/pg/run" "$state_dir/logs"
  ensure_pg_can_traverse
  touch "$state_dir/logs/postgres.log" "$state_dir/logs/initdb.log"
  if running_as_root; then
    chown "$pg_os_user:" "$state_dir/pg" "$state_dir/pg/run" \
      "$state_dir/logs/postgres.log" "$state_dir/logs/initdb.log"
  fi
  chmod 700 "$state_dir/pg"
  pg_init
  if pg_is_running; then
    port=$(pg_port)
  else
    port=
    [ -s "$state_dir/pg/port" ] && port=$(cat "$state_dir/pg/port")
    # Keep the old port (and so the old env) when it is still free.
    if [ -z "$port" ] || ! port_is_free "$port"; then
      port=$(free_port)
      echo "$port" >"$state_dir/pg/port"
    fi
    pg_write_conf "$port" "$fast"
    pg_start "$port"
  fi
  pg_ensure_database "$port"
}

# --- dev broker -------------------------------------------------------------

# Prints the dev broker's pid if it runs (checking the pid file really names
# tally-devbroker, not a recycled pid).
broker_pid() {
  local pid
  [ -s "$state_dir/devbroker.pid" ] || return 1
  pid=$(cat "$state_dir/devbroker.pid")
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  kill -0 "$pid" 2>/dev/null || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q 'tally-devbroker' || return 1
  echo "$pid"
}

broker_start() {
  local devbroker="$bin_dir/tally-devbroker" pid waited=0
  local args=(--bootstrap-file "$state_dir/kafka/bootstrap")
  [ -x "$devbroker" ] || die "$devbroker not found; run 'make' first (or set TALLY_BIN_DIR)"
  if [ -n "${TALLY_DEVBROKER_PARTITIONS:-}" ]; then
    args+=(--partitions "$TALLY_DEVBROKER_PARTITIONS")
  fi
  mkdir -p "$state_dir/kafka" "$state_dir/logs"
  rm -f "$state_dir/kafka/bootstrap"
  # Its own session, so a Ctrl-C in this terminal later does not reach it.
  env -u TALLY_BIN_DIR -u TALLY_DEVBROKER_PARTITIONS \
    setsid "$devbroker" "${args[@]}" </dev/null >>"$state_dir/logs/devbroker.log" 2>&1 9>&- &
  pid=$!
  echo "$pid" >"$state_dir/devbroker.pid"
  while [ ! -s "$state_dir/kafka/bootstrap" ]; do
    if ! kill -0 "$pid" 2>/dev/null; then
      rm -f "$state_dir/devbroker.pid"
      die "tally-devbroker exited at start; last lines of $state_dir/logs/devbroker.log:
$(tail -n 10 "$state_dir/logs/devbroker.log")"
    fi
    if [ "$waited" -ge $(( broker_start_timeout_s * 10 )) ]; then
      kill -TERM "$pid" 2>/dev/null || true
      rm -f "$state_dir/devbroker.pid"
      die "tally-devbroker wrote no $state_dir/kafka/bootstrap within ${broker_start_timeout_s}s; see $state_dir/logs/devbroker.log"
    fi
    sleep 0.1
    waited=$(( waited + 1 ))
  done
  note "dev broker started (pid $pid) at $(cat "$state_dir/kafka/bootstrap")"
}

broker_stop() {
  local pid waited=0
  if ! pid=$(broker_pid); then
    rm -f "$state_dir/devbroker.pid"
    return 0
  fi
  kill -TERM "$pid" 2>/dev/null || true
  while kill -0 "$pid" 2>/dev/null; do
    if [ "$waited" -ge $(( broker_stop_timeout_s * 10 )) ]; then
      note "dev broker (pid $pid) ignored SIGTERM for ${broker_stop_timeout_s}s; sending SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
      break
    fi
    sleep 0.1
    waited=$(( waited + 1 ))
  done
  rm -f "$state_dir/devbroker.pid" "$state_dir/kafka/bootstrap"
  note "dev broker stopped"
}

# --- env file ---------------------------------------------------------------

# Single-quotes $1 for a POSIX shell.
shell_quote() {
  local escaped=${1//\'/\'\\\'\'}
  printf "'%s'" "$escaped"
}

write_env() {
  local port bootstrap
  port=$(pg_port)
  bootstrap=$(cat "$state_dir/kafka/bootstrap")
  {
    echo "# Written by tools/stack.sh up; source it: . $state_dir/env"
    echo "export TALLY_DATABASE_URL=$(shell_quote "host=127.0.0.1 port=$port dbname=$db_name user=$db_user")"
    echo "export TALLY_KAFKA_BROKERS=$(shell_quote "$bootstrap")"
    echo "export TALLY_STATE_DIR=$(shell_quote "$state_dir")"
  } >"$state_dir/env.tmp"
  mv "$state_dir/env.tmp" "$state_dir/env"
}

# --- commands ---------------------------------------------------------------

print_status() {
  local pid pg_ok=0 broker_ok=0
  if pg_is_running; then
    echo "postgresql  running  127.0.0.1:$(pg_port)  data $pg_data  log $state_dir/logs/postgres.log"
    pg_ok=1
  else
    echo "postgresql  stopped  (data $pg_data)"
  fi
  if pid=$(broker_pid); then
    echo "devbroker   running  $(cat "$state_dir/kafka/bootstrap" 2>/dev/null)  pid $pid  log $state_dir/logs/devbroker.log  (in memory, not durable)"
    broker_ok=1
  else
    echo "devbroker   stopped"
  fi
  [ "$pg_ok" -eq 1 ] && [ "$broker_ok" -eq 1 ]
}

cmd_up() {
  local fast=$1
  pg_up "$fast"
  if ! broker_pid >/dev/null; then
    broker_start
  fi
  write_env
  print_status >/dev/null || die "the stack did not come up; see $state_dir/logs"
  echo "tally stack up; state in $state_dir"
  print_status | sed 's/^/  /'
  if grep -q '^fsync = off' "$pg_data/tally.conf" 2>/dev/null; then
    echo "  (PostgreSQL runs with fsync off: --fast, for tests only)"
  fi
  echo "  settings: . $state_dir/env"
}

cmd_down() {
  broker_stop
  pg_stop
}

main() {
  [ $# -ge 2 ] || usage
  local command=$1 dir=$2 fast=
  shift 2
  while [ $# -gt 0 ]; do
    case $1 in
      --fast) [ "$command" = up ] || die "--fast only applies to 'up'"; fast=fast ;;
      *) die "unknown argument '$1' (see the usage at the top of $0)" ;;
    esac
    shift
  done
  case $command in
    up) mkdir -p "$dir" || die "cannot create $dir" ;;
    down | status | pg-stop | pg-start)
      if [ ! -d "$dir" ]; then
        case $command in
          down) exit 0 ;;
          status) echo "nothing set up in $dir"; exit 3 ;;
          *) die "$dir does not exist; run 'tools/stack.sh up $dir' first" ;;
        esac
      fi
      ;;
    *) usage ;;
  esac
  state_dir=$(cd "$dir" && pwd)
  pg_data="$state_dir/pg/data"
  pg_bin=$(find_pg_bin)

  # One stack command at a time per state directory.
  exec 9>>"$state_dir/.stack.lock"
  flock -w 120 9 || die "another tools/stack.sh holds $state_dir/.stack.lock"

  case $command in
    up) cmd_up "$fast" ;;
    down) cmd_down ;;
    status) print_status || exit 3 ;;
    pg-stop) pg_stop ;;
    pg-start)
      [ -f "$pg_data/PG_VERSION" ] || die "no cluster in $pg_data; run 'tools/stack.sh up $state_dir' first"
      if pg_is_running; then
        note "PostgreSQL already runs on 127.0.0.1:$(pg_port)"
      else
        pg_start "$(pg_port)"
      fi
      ;;
  esac
}

main "$@"
