#!/usr/bin/env bash
# `make run`: the whole local system on embedded defaults. Starts the local
# PostgreSQL and dev broker (tools/stack.sh, state in .tally/), migrates,
# seeds demo plans and keys, starts tally-collector, tally-api, the Stripe
# stand-in (tests/stripe/standin.py, a fresh test key each run),
# tally-reporter against it and tally-loadgen with realistic traffic, and
# prints a live summary until Ctrl-C, which stops everything it started.
# Logs go to .tally/logs/.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
# TALLY_STATE_DIR: another state directory than .tally (e.g. to run a second
# demo next to a `make stack-up` stack).
state=${TALLY_STATE_DIR:-.tally}
bin=${TALLY_BIN_DIR:-$root/build/bin}
logs=$state/logs
pids=()

# Stops what we started, newest first (the load generator before the
# collector, the reporter before its stand-in), each within 10 s. Each
# program runs in its own session (setsid), so a Ctrl-C reaches only this
# script: the programs get one SIGTERM from here, in order (a second signal
# would make them exit at once, skipping their clean shutdown).
stop_all() {
  trap - INT TERM HUP EXIT
  echo
  echo "run: stopping..."
  local i pid
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
    pid=${pids[i]}
    kill -TERM "$pid" 2>/dev/null || continue
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  tools/stack.sh down "$state" >/dev/null || true
  echo "run: stopped; the database is kept in $state/ for the next run"
  exit 0
}
trap stop_all INT TERM HUP EXIT

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

tools/stack.sh up "$state"
# shellcheck disable=SC1091
. "$state/env"
export TALLY_DATABASE_URL TALLY_KAFKA_BROKERS
unset TALLY_STATE_DIR
tools/migrate.sh
mkdir -p "$logs"

# A fresh admin token and fresh key secrets each run: printed once below,
# stored nowhere but in this shell (the database keeps only SHA-256s).
secret() { head -c 64 /dev/urandom | base64 | tr -dc 'A-Za-z0-9' | head -c "$1"; }
admin_token=$(secret 32)
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
                               stripe_customer_id = EXCLUDED.stripe_customer_id;
TRUNCATE stripe_reports;
SQL

TALLY_METRICS_ADDR=$metrics_addr setsid "$bin/tally-collector" >"$logs/collector.log" 2>&1 &
pids+=($!)
TALLY_ADMIN_TOKEN=$admin_token TALLY_HTTP_ADDR=$api_addr setsid "$bin/tally-api" >"$logs/api.log" 2>&1 &
pids+=($!)

# The Stripe stand-in on a free loopback port (it prints the address it got),
# accepting any cus_... customer and the meter api_calls.
: >"$logs/standin.log"
STRIPE_STANDIN_API_KEY=$stripe_key setsid python3 tests/stripe/standin.py --host 127.0.0.1 --port 0 \
  --customers '*' --meters api_calls >>"$logs/standin.log" 2>&1 &
pids+=($!)
standin_pid=$!
stripe_url=
for _ in $(seq 1 100); do
  stripe_url=$(sed -n 's/^stripe-standin listening on \(http:[^ ]*\).*/\1/p' "$logs/standin.log")
  [ -n "$stripe_url" ] && break
  kill -0 "$standin_pid" 2>/dev/null || break
  sleep 0.1
done
[ -n "$stripe_url" ] || { echo "run: the Stripe stand-in did not start; see $logs/standin.log" >&2; exit 1; }

# The reporter: a cycle every 5 s, reporting the running hour too (settle 0),
# so the stand-in's ledger follows the counted usage within seconds.
reporter_metrics=127.0.0.1:$(free_port 9102)
TALLY_STRIPE_API_KEY=$stripe_key TALLY_STRIPE_API_BASE=$stripe_url \
  TALLY_METRICS_ADDR=$reporter_metrics setsid "$bin/tally-reporter" --report-interval-s 5 \
  --report-settle-s 0 >"$logs/reporter.log" 2>&1 &
pids+=($!)
# Bob sends far more than the others and runs over his 1,000 units a day.
setsid "$bin/tally-loadgen" --keys key_free_alice:1,key_free_bob:6,key_pro_acme:4,key_ent_globex:9 \
  --rate 200 --duration 86400 --dup-ratio 0.05 --late-ratio 0.02 --source gw-demo \
  --log-level warn >"$logs/loadgen.log" 2>&1 &
pids+=($!)

cat <<INFO

Tally is running (Ctrl-C stops everything):
  api                http://$api_addr   admin token: $admin_token
                     curl -H "Authorization: Bearer $admin_token" http://$api_addr/v1/keys
                     curl -H "Authorization: Bearer $admin_token" http://$api_addr/v1/keys/key_free_bob/quota
                     curl -H "x-api-key: ${key_secret[key_pro_acme]}" 'http://$api_addr/v1/me/usage?granularity=hour'
                     curl -i -H "x-api-key: ${key_secret[key_free_bob]}" -H 'X-Original-Method: GET' \\
                          -H 'X-Original-URI: /v1/items' http://$api_addr/v1/authorize
  key secrets        key_free_alice ${key_secret[key_free_alice]}   key_free_bob ${key_secret[key_free_bob]}
                     key_pro_acme ${key_secret[key_pro_acme]}   key_ent_globex ${key_secret[key_ent_globex]}
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
  for pid in "${pids[@]}"; do
    kill -0 "$pid" 2>/dev/null || { echo "run: a process stopped; see $logs/"; exit 1; }
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
  printf '  Stripe: %s calls, %s reports accepted, %s pending, %s parked (reporter)\n' \
    "$(counter tally_reporter_calls_total "$reporter_metrics")" \
    "$(counter tally_reporter_reports_accepted_total "$reporter_metrics")" \
    "$(counter tally_reporter_pending_reports "$reporter_metrics")" \
    "$(counter tally_reporter_parked_reports "$reporter_metrics")"
  stripe_summary
done
