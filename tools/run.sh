#!/usr/bin/env bash
# `make run`: the whole local system on embedded defaults. Starts the local
# PostgreSQL and dev broker (tools/stack.sh, state in .tally/), migrates,
# seeds demo plans and keys, starts tally-collector, tally-api, tally-ingest
# (POST /v1/events), the Stripe
# stand-in (tests/stripe/standin.py, a fresh test key each run),
# tally-reporter against it and tally-loadgen with realistic traffic, and
# prints a live summary until Ctrl-C, which stops everything it started.
# A closed terminal (SIGHUP) or a dead reader of the output (`make run | tee`
# whose tee died) stops everything the same way; a run that finds programs an
# earlier run left behind (pid files in .tally/run/) stops them first.
# Logs go to .tally/logs/ (this script's own messages to run.log).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
# TALLY_STATE_DIR: another state directory than .tally (e.g. to run a second
# demo next to a `make stack-up` stack).
state=${TALLY_STATE_DIR:-.tally}
bin=${TALLY_BIN_DIR:-$root/build/bin}
logs=$state/logs

# Every program's pid file, $run_dir/NAME.pid ("PID START_TIME"), so that a
# later run finds what an earlier one left running (its script SIGKILLed, or
# an old version of this script that died with the terminal).
run_dir=$state/run
# Start order; stopped in reverse (the load generator before the collector,
# the reporter before its stand-in).
program_names=(collector api ingest gateway_rsyslog gateway_nginx standin reporter loadgen gateway_traffic)
# What each program's command line holds (after a rebuild, /proc/PID/exe of
# an old process says "(deleted)", so the command line is the stable mark).
declare -A program_mark=([collector]=tally-collector [api]=tally-api [ingest]=tally-ingest
  [standin]=tests/stripe/standin.py [reporter]=tally-reporter [loadgen]=tally-loadgen
  [gateway_rsyslog]=deploy/gateway/rsyslog/tally.conf [gateway_nginx]=gateway/nginx/conf/nginx.conf
  [gateway_traffic]=deploy/gateway/demo-traffic.sh [script]=run.sh)
declare -A started_pid=()

# Writes to the terminal and to $logs/run.log. A closed terminal (EIO) or a
# dead reader (EPIPE) only loses the terminal's copy.
say() {
  printf '%s\n' "$*" 2>/dev/null || true
  if [ -d "$logs" ]; then
    printf '%s %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$*" >>"$logs/run.log" 2>/dev/null || true
  fi
}

# A process's start time (clock ticks after boot, field 22 of /proc/PID/stat,
# read after the command name, which may hold spaces): with the pid, it names
# one process, so a recycled pid is never taken for ours.
start_time() {
  local stat
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  local -a fields
  read -r -a fields <<<"${stat##*) }"
  [ -n "${fields[19]:-}" ] || return 1
  echo "${fields[19]}"
}

# True while the process runs (a zombie, dead but not yet reaped, does not).
running() {
  local stat
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  stat=${stat##*) }
  [ "${stat:0:1}" != Z ]
}

record_pid() {
  mkdir -p "$run_dir"
  echo "$2 $(start_time "$2" || echo 0)" >"$run_dir/$1.pid"
}

# The pid in $run_dir/$1.pid when that very process still runs our program.
recorded_pid() {
  local pid recorded_start
  read -r pid recorded_start <"$run_dir/$1.pid" 2>/dev/null || return 1
  [[ "$pid" =~ ^[0-9]+$ ]] && [ "$pid" != $$ ] || return 1
  [ "$(start_time "$pid")" = "$recorded_start" ] || return 1
  local command_line
  command_line=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null) || return 1
  [[ "$command_line" == *"${program_mark[$1]}"* ]] || return 1
  echo "$pid"
}

# SIGTERM, up to $2 seconds for a clean shutdown, then SIGKILL. Only one
# SIGTERM: a second would make the programs exit at once, skipping it.
stop_pid() {
  local pid=$1 tenths=$(($2 * 10))
  kill -TERM "$pid" 2>/dev/null || return 0
  for ((; tenths > 0; tenths--)); do running "$pid" || break; sleep 0.1; done
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}

# An earlier run on this state directory: its script, if it still runs, is
# asked to stop (it stops its programs itself); programs it left behind are
# stopped here, in the usual order. Otherwise the new reporter would stand by
# behind the old one's lock (Stripe: 0 calls), and two load generators run.
stop_earlier_run() {
  local name pid i
  if pid=$(recorded_pid script); then
    say "run: an earlier make run (pid $pid) uses $state; stopping it first"
    stop_pid "$pid" 70
  fi
  for ((i = ${#program_names[@]} - 1; i >= 0; i--)); do
    name=${program_names[i]}
    if pid=$(recorded_pid "$name"); then
      say "run: $name (pid $pid) was left running by an earlier make run; stopping it"
      stop_pid "$pid" 10
    fi
  done
  rm -rf "$run_dir"
}

# Stops what we started, newest first, each within 10 s. Each program runs
# in its own session (setsid), so a Ctrl-C or a closed terminal's SIGHUP
# reaches only this script. Whatever ends the script (Ctrl-C, SIGTERM,
# SIGHUP, SIGPIPE from a dead `| tee`, a failed write under set -e, a
# program that stopped) ends here: from now on no signal interrupts the
# stopping and no failed write ends it.
stop_all() {
  local status=$1 i name
  trap '' INT TERM HUP PIPE
  trap - EXIT
  set +e
  say ""
  say "run: stopping..."
  for ((i = ${#program_names[@]} - 1; i >= 0; i--)); do
    name=${program_names[i]}
    [ -n "${started_pid[$name]:-}" ] && stop_pid "${started_pid[$name]}" 10
  done
  rm -rf "$run_dir"
  tools/stack.sh down "$state" >>"$logs/run.log" 2>&1
  say "run: stopped; the database is kept in $state/ for the next run"
  exit "$status"
}
trap 'stop_all 0' INT TERM HUP PIPE
trap 'stop_all $?' EXIT

# Starts a program (the rest of the arguments) in its own session, output to
# $logs/NAME.log, and records its pid.
start_program() {
  local name=$1
  shift
  setsid "$@" >>"$logs/$name.log" 2>&1 </dev/null &
  started_pid[$name]=$!
  record_pid "$name" $!
}

command -v python3 >/dev/null || { echo "run: python3 is needed for the Stripe stand-in (make deps)" >&2; exit 1; }

# A free loopback port: $1 when nobody listens on it, any free one otherwise.
free_port() {
  python3 - "$1" <<'PY'
import socket, sys
for port in (int(sys.argv[1]), 0):
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", port))
        print(s.getsockname()[1])
        break
    except OSError:
        pass
    finally:
        s.close()
PY
}

# The collector's metrics and the api on their usual ports when free.
metrics_addr=127.0.0.1:$(free_port 9101)
api_addr=127.0.0.1:$(free_port 8080)
api_metrics=127.0.0.1:$(free_port 9100)
ingest_addr=127.0.0.1:$(free_port 8081)
ingest_metrics=127.0.0.1:$(free_port 9103)

mkdir -p "$logs"
stop_earlier_run
record_pid script $$
tools/stack.sh up "$state"
# shellcheck disable=SC1091
. "$state/env"
export TALLY_DATABASE_URL TALLY_KAFKA_BROKERS
unset TALLY_STATE_DIR
tools/migrate.sh

# A fresh admin token and fresh key secrets each run: printed once below,
# stored nowhere but in this shell (the database keeps only digests).
secret() { head -c 64 /dev/urandom | base64 | tr -dc 'A-Za-z0-9' | head -c "$1"; }
admin_token=$(secret 32)
# POST /v1/events's bearer token: fresh each run, given to tally-ingest in
# its environment (never on a command line, where ps would show it).
ingest_token=$(secret 32)
# The api's key HMAC secret must outlive a run (the stored key digests
# depend on it): made once, kept in the state directory, readable by us only,
# and given to the api as a file.
key_hmac_secret_file=$root/$state/key_hmac_secret
[[ "$state" = /* ]] && key_hmac_secret_file=$state/key_hmac_secret
if [ ! -s "$key_hmac_secret_file" ]; then
  (umask 077 && secret 48 >"$key_hmac_secret_file")
fi
declare -A key_secret
for k in key_free_alice key_free_bob key_pro_acme key_ent_globex; do key_secret[$k]=$(secret 40); done
# The Stripe stand-in accepts this test key only; the reporter gets it in its
# environment (never on a command line, where ps would show it).
stripe_key=sk_test_demo_$(secret 24)

# Demo plans modelled on a typical SaaS, and a few keys (ids are what the
# gateways put in each event's subject), each billed to its own Stripe
# customer on the meter api_calls.
#
# The stand-in keeps its ledger in memory, so it starts empty each run while
# the database is kept: the demo empties the reporter's outbox
# (stripe_reports) so that the reporter sends the whole history (the last 35
# days) to the new stand-in, and its ledger converges on the counted usage.
# Never do that against a real Stripe account: it would bill everything again.
psql "$TALLY_DATABASE_URL" -X -q -v ON_ERROR_STOP=1 \
  -v s_alice="${key_secret[key_free_alice]}" -v s_bob="${key_secret[key_free_bob]}" \
  -v s_acme="${key_secret[key_pro_acme]}" -v s_globex="${key_secret[key_ent_globex]}" <<'SQL'
INSERT INTO plans (id, name, quota_limit, quota_period, throttle_rate_limit, throttle_burst_limit, stripe_meter_event_name)
VALUES ('plan_free', 'Free', 1000, 'DAY', 10, 20, 'api_calls'),
       ('plan_pro', 'Pro', 50000, 'MONTH', 100, 200, 'api_calls'),
       ('plan_enterprise', 'Enterprise', 1000000, 'MONTH', 500, 1000, 'api_calls')
ON CONFLICT (id) DO UPDATE SET stripe_meter_event_name = EXCLUDED.stripe_meter_event_name;
INSERT INTO api_keys (id, value_hash, name, customer_id, stripe_customer_id, plan_id)
SELECT k.id, sha256(convert_to(k.secret, 'UTF8')), k.name, k.customer, k.stripe, k.plan
  FROM (VALUES ('key_free_alice', :'s_alice', 'Alice (Free)', 'cust_alice', 'cus_demo_alice',
                'plan_free'),
               ('key_free_bob', :'s_bob', 'Bob (Free, over quota)', 'cust_bob', 'cus_demo_bob',
                'plan_free'),
               ('key_pro_acme', :'s_acme', 'Acme (Pro)', 'cust_acme', 'cus_demo_acme',
                'plan_pro'),
               ('key_ent_globex', :'s_globex', 'Globex (Enterprise)', 'cust_globex',
                'cus_demo_globex', 'plan_enterprise'))
       AS k (id, secret, name, customer, stripe, plan)
ON CONFLICT (id) DO UPDATE SET value_hash = EXCLUDED.value_hash,
                               value_hash_form = EXCLUDED.value_hash_form,
                               stripe_customer_id = EXCLUDED.stripe_customer_id;
TRUNCATE stripe_reports;
SQL

: >"$logs/collector.log"
TALLY_METRICS_ADDR=$metrics_addr start_program collector "$bin/tally-collector"
: >"$logs/api.log"
TALLY_ADMIN_TOKEN=$admin_token TALLY_HTTP_ADDR=$api_addr TALLY_METRICS_ADDR=$api_metrics \
  TALLY_KEY_HMAC_SECRET_FILE=$key_hmac_secret_file start_program api "$bin/tally-api"
: >"$logs/ingest.log"
TALLY_INGEST_TOKEN=$ingest_token TALLY_INGEST_ADDR=$ingest_addr TALLY_METRICS_ADDR=$ingest_metrics \
  start_program ingest "$bin/tally-ingest"

# The gateway (deploy/gateway/, README "Putting Tally behind nginx"): nginx
# with the shipped recipe, its example addresses replaced by free ports,
# enforcing plans with auth_request to the api above, and rsyslog publishing
# its usage log to the dev broker. Its own directory under the state one.
gateway_addr=127.0.0.1:$(free_port 8000)
gateway_app=127.0.0.1:$(free_port 8001)
gateway_dir=$root/$state/gateway
[[ "$state" = /* ]] && gateway_dir=$state/gateway
mkdir -p "$gateway_dir/nginx/conf" "$gateway_dir/nginx/logs" "$gateway_dir/nginx/temp" \
  "$gateway_dir/rsyslog"
# nginx's workers run as nobody when started as root: they must reach it.
chmod 0755 "$gateway_dir" "$gateway_dir/nginx"
cp deploy/gateway/nginx/*.conf "$gateway_dir/nginx/conf/"
sed -i -e "s|server 127.0.0.1:8080;|server $api_addr;|" -e "s|listen 127.0.0.1:8000;|listen $gateway_addr;|" \
  -e "s|127.0.0.1:8001|$gateway_app|g" "$gateway_dir/nginx/conf/nginx.conf"
gateway_usage_log=$gateway_dir/nginx/logs/tally-usage.log
touch "$gateway_usage_log"
: >"$logs/gateway_rsyslog.log"
GATEWAY_USAGE_LOG=$gateway_usage_log GATEWAY_RSYSLOG_WORK_DIR=$gateway_dir/rsyslog \
  GATEWAY_KAFKA_BROKERS=$TALLY_KAFKA_BROKERS GATEWAY_KAFKA_TOPIC=usage-events \
  start_program gateway_rsyslog rsyslogd -n -f "$root/deploy/gateway/rsyslog/tally.conf" \
  -i "$gateway_dir/rsyslog/rsyslogd.pid"
: >"$logs/gateway_nginx.log"
start_program gateway_nginx nginx -e "$logs/gateway_nginx.log" -p "$gateway_dir/nginx" \
  -c "$gateway_dir/nginx/conf/nginx.conf" -g 'daemon off;'

# The Stripe stand-in on a free loopback port (it prints the address it got),
# accepting any cus_... customer and the meter api_calls.
: >"$logs/standin.log"
STRIPE_STANDIN_API_KEY=$stripe_key start_program standin python3 tests/stripe/standin.py \
  --host 127.0.0.1 --port 0 --customers '*' --meters api_calls
standin_pid=${started_pid[standin]}
stripe_url=
for _ in $(seq 1 100); do
  stripe_url=$(sed -n 's/^stripe-standin listening on \(http:[^ ]*\).*/\1/p' "$logs/standin.log")
  [ -n "$stripe_url" ] && break
  kill -0 "$standin_pid" 2>/dev/null || break
  sleep 0.1
done
if [ -z "$stripe_url" ]; then
  say "run: the Stripe stand-in did not start; see $logs/standin.log" >&2
  exit 1
fi

# The reporter: a cycle every 5 s, reporting the running hour too (settle 0),
# so the stand-in's ledger follows the counted usage within seconds.
reporter_metrics=127.0.0.1:$(free_port 9102)
: >"$logs/reporter.log"
TALLY_STRIPE_API_KEY=$stripe_key TALLY_STRIPE_API_BASE=$stripe_url \
  TALLY_METRICS_ADDR=$reporter_metrics start_program reporter "$bin/tally-reporter" \
  --report-interval-s 5 --report-settle-s 0
# Bob sends far more than the others and runs over his 1,000 units a day.
: >"$logs/loadgen.log"
start_program loadgen "$bin/tally-loadgen" \
  --keys key_free_alice:1,key_free_bob:6,key_pro_acme:4,key_ent_globex:9 \
  --rate 200 --duration 86400 --dup-ratio 0.05 --late-ratio 0.02 --source gw-demo \
  --log-level warn

# Part of the demo traffic goes through the gateway: Bob's 30 requests a
# second are past his Free plan's throttle (10/s, burst 20), so the edge
# answers 429 to some, and his daily quota of 1,000 runs out within a
# minute; Acme's 5 a second all pass. Every allowed one is counted
# (rsyslog -> Kafka -> collector) and reported.
gateway_answers=$logs/gateway_answers.log
: >"$gateway_answers"
start_program gateway_traffic deploy/gateway/demo-traffic.sh "http://$gateway_addr" \
  "$gateway_answers" "key_free_bob:${key_secret[key_free_bob]}:30" \
  "key_pro_acme:${key_secret[key_pro_acme]}:5"
# A customer dashboard link for Acme, valid an hour, made through the api as
# a customer's backend would (empty if the api does not answer in time).
dashboard_link=$(curl -s --max-time 5 --retry 20 --retry-connrefused --retry-delay 1 -X POST \
  -H "Authorization: Bearer $admin_token" -d '{"ttlSeconds":3600}' \
  "http://$api_addr/v1/keys/key_pro_acme/dashboard-links" 2>/dev/null |
  sed -n 's/.*"url":"\([^"]*\)".*/\1/p') || dashboard_link=

cat <<INFO

Tally is running (Ctrl-C stops everything):
  dashboards         http://$api_addr$dashboard_link   (Acme's usage, link valid 1 h)
                     http://$api_addr/dashboard/admin   (operator overview: the admin token below)
  api                http://$api_addr   admin token: $admin_token
                     curl -H "Authorization: Bearer $admin_token" http://$api_addr/v1/keys
                     curl -H "Authorization: Bearer $admin_token" http://$api_addr/v1/keys/key_free_bob/quota
                     curl -H "x-api-key: ${key_secret[key_pro_acme]}" 'http://$api_addr/v1/me/usage?granularity=hour'
                     curl -i -H "x-api-key: ${key_secret[key_free_bob]}" -H 'X-Original-Method: GET' \\
                          -H 'X-Original-URI: /v1/items' http://$api_addr/v1/authorize
  ingest (HTTP)      http://$ingest_addr/v1/events   ingest token: $ingest_token
                     curl -i -H "Authorization: Bearer $ingest_token" \\
                          -H 'Content-Type: application/cloudevents+json' http://$ingest_addr/v1/events \\
                          -d '{"specversion":"1.0","id":"demo-'\$RANDOM'","source":"curl","type":"api.request",
                               "subject":"key_pro_acme","time":"'\$(date -u +%Y-%m-%dT%H:%M:%SZ)'"}'
                     metrics http://$ingest_metrics/metrics
  key secrets        key_free_alice ${key_secret[key_free_alice]}   key_free_bob ${key_secret[key_free_bob]}
                     key_pro_acme ${key_secret[key_pro_acme]}   key_ent_globex ${key_secret[key_ent_globex]}
  gateway (nginx)    http://$gateway_addr   (auth_request to the api; usage log -> rsyslog -> Kafka)
                     curl -i -H "x-api-key: ${key_secret[key_pro_acme]}" http://$gateway_addr/items/42
                     usage log $gateway_usage_log   answers $gateway_answers
  api metrics        http://$api_metrics/metrics
  collector metrics  http://$metrics_addr/metrics   health http://$metrics_addr/healthz
  reporter metrics   http://$reporter_metrics/metrics   health http://$reporter_metrics/healthz
                     TALLY_DATABASE_URL='$TALLY_DATABASE_URL' $bin/tally-reporter reconcile
  Stripe stand-in    $stripe_url (test key $stripe_key; the meter api_calls, customers cus_demo_*)
                     curl $stripe_url/_standin/ledger    curl $stripe_url/_standin/events
  database           psql "$TALLY_DATABASE_URL"
  kafka (dev broker) $TALLY_KAFKA_BROKERS   e.g. kcat -b $TALLY_KAFKA_BROKERS -C -t usage-events
  logs               $logs/
INFO

# Sums a metric over all its label sets (of the collector's /metrics, or of
# the address in $2).
counter() {
  curl -s "http://${2:-$metrics_addr}/metrics" 2>/dev/null |
    awk -v m="$1" '$1 == m || index($1, m "{") == 1 {s += $2} END {printf "%d", s}'
}

# Per Stripe customer: units counted (the reporter's 35-day window), units in
# the stand-in's ledger, and the difference still to report (the running
# hour's new usage, until the next cycle).
stripe_summary() {
  local ledger
  ledger=$(curl -s --max-time 2 "$stripe_url/_standin/ledger" 2>/dev/null) || ledger='{}'
  psql "$TALLY_DATABASE_URL" -X -q -A -F ' ' -t <<'SQL' | LEDGER=$ledger python3 -c '
import json, os, sys
try:
    ledger = json.loads(os.environ["LEDGER"]).get("meter_events", {})
except ValueError:
    ledger = {}
for line in sys.stdin:
    customer, meter, counted = line.split()
    in_stripe = ledger.get(customer, {}).get(meter, 0)
    print(f"  {customer:<16} {meter:<11} counted {int(counted):9d}   in Stripe {in_stripe:9d}"
          f"   not yet {int(counted) - in_stripe:7d}")
'
SELECT k.stripe_customer_id, p.stripe_meter_event_name, sum(u.units)
  FROM usage_hourly u JOIN api_keys k ON k.id = u.key_id JOIN plans p ON p.id = u.plan_id
 WHERE k.stripe_customer_id IS NOT NULL AND p.stripe_meter_event_name IS NOT NULL
   AND u.hour >= now() - interval '35 days'
 GROUP BY 1, 2 ORDER BY 1, 2;
SQL
}
last=$(counter tally_collector_events_counted_total); last=${last:-0}
while true; do
  sleep 2
  for name in "${!started_pid[@]}"; do
    if ! kill -0 "${started_pid[$name]}" 2>/dev/null; then
      say "run: $name stopped; see $logs/$name.log"
      exit 1
    fi
  done
  now=$(counter tally_collector_events_counted_total); now=${now:-0}
  dup=$(counter tally_collector_events_duplicate_total)
  rej=$(counter tally_collector_events_rejected_total)
  printf '\n%s  counted %s events (%s/s), duplicates %s, rejected %s\n' "$(date -u +%H:%M:%S)" \
    "$now" "$(( (now - last) / 2 ))" "${dup:-0}" "${rej:-0}"
  last=$now
  psql "$TALLY_DATABASE_URL" -X -q -A -F ' ' -t <<'SQL' | awk '{printf "  %-16s %-11s %-6s used %9s of %9s  remaining %9s\n", $1, $2, $3, $4, $5, $6}'
SELECT k.id, p.name, p.quota_period, coalesce(c.units, 0), p.quota_limit,
       greatest(p.quota_limit - coalesce(c.units, 0), 0)
  FROM api_keys k JOIN plans p ON p.id = k.plan_id
  LEFT JOIN usage_counters c ON c.key_id = k.id AND c.period = p.quota_period
       AND c.period_start = date_trunc(lower(p.quota_period), now())
 ORDER BY k.id;
SQL
  awk '{n[$1 " " $2]++} END {for (k in n) {split(k, a, " "); printf "  gateway: %-14s %s x %d\n", a[1], a[2], n[k]}}' \
    "$gateway_answers" 2>/dev/null | sort || true
  printf '  Stripe: %s calls, %s reports accepted, %s pending, %s parked (reporter)\n' \
    "$(counter tally_reporter_calls_total "$reporter_metrics")" \
    "$(counter tally_reporter_reports_accepted_total "$reporter_metrics")" \
    "$(counter tally_reporter_pending_reports "$reporter_metrics")" \
    "$(counter tally_reporter_parked_reports "$reporter_metrics")"
  stripe_summary
done
