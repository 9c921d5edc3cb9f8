#!/usr/bin/env bash
# `make run`: the whole local system on embedded defaults. Starts the local
# PostgreSQL and dev broker (tools/stack.sh, state in .tally/), migrates,
# seeds demo plans and keys, starts tally-collector and tally-loadgen with
# realistic traffic, and prints a live summary until Ctrl-C, which stops
# everything it started. Logs go to .tally/logs/.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
state=.tally
bin=${TALLY_BIN_DIR:-$root/build/bin}
logs=$state/logs
metrics_addr=127.0.0.1:9101
api_addr=127.0.0.1:8080
pids=()

stop_all() {
  trap - INT TERM EXIT
  echo
  echo "run: stopping..."
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
  done
  tools/stack.sh down "$state" >/dev/null || true
  echo "run: stopped; the database is kept in $state/ for the next run"
  exit 0
}
trap stop_all INT TERM EXIT

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

# Demo plans modelled on a typical SaaS, and a few keys (ids are what the
# gateways put in each event's subject).
psql "$TALLY_DATABASE_URL" -X -q -v ON_ERROR_STOP=1 \
  -v s_alice="${key_secret[key_free_alice]}" -v s_bob="${key_secret[key_free_bob]}" \
  -v s_acme="${key_secret[key_pro_acme]}" -v s_globex="${key_secret[key_ent_globex]}" <<'SQL'
INSERT INTO plans (id, name, quota_limit, quota_period, throttle_rate_limit, throttle_burst_limit, stripe_meter_event_name)
VALUES ('plan_free', 'Free', 1000, 'DAY', 10, 20, 'api_calls'),
       ('plan_pro', 'Pro', 50000, 'MONTH', 100, 200, 'api_calls'),
       ('plan_enterprise', 'Enterprise', 1000000, 'MONTH', 500, 1000, 'api_calls')
ON CONFLICT (id) DO NOTHING;
INSERT INTO api_keys (id, value_hash, name, customer_id, plan_id)
SELECT k.id, sha256(convert_to(k.secret, 'UTF8')), k.name, k.customer, k.plan
  FROM (VALUES ('key_free_alice', :'s_alice', 'Alice (Free)', 'cust_alice', 'plan_free'),
               ('key_free_bob', :'s_bob', 'Bob (Free, over quota)', 'cust_bob', 'plan_free'),
               ('key_pro_acme', :'s_acme', 'Acme (Pro)', 'cust_acme', 'plan_pro'),
               ('key_ent_globex', :'s_globex', 'Globex (Enterprise)', 'cust_globex',
                'plan_enterprise'))
       AS k (id, secret, name, customer, plan)
ON CONFLICT (id) DO UPDATE SET value_hash = EXCLUDED.value_hash;
SQL

TALLY_METRICS_ADDR=$metrics_addr "$bin/tally-collector" >"$logs/collector.log" 2>&1 &
pids+=($!)
TALLY_ADMIN_TOKEN=$admin_token TALLY_HTTP_ADDR=$api_addr "$bin/tally-api" >"$logs/api.log" 2>&1 &
pids+=($!)
# Bob sends far more than the others and runs over his 1,000 units a day.
"$bin/tally-loadgen" --keys key_free_alice:1,key_free_bob:6,key_pro_acme:4,key_ent_globex:9 \
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
  database           psql "$TALLY_DATABASE_URL"
  kafka (dev broker) $TALLY_KAFKA_BROKERS   e.g. kcat -b $TALLY_KAFKA_BROKERS -C -t usage-events
  logs               $logs/
INFO

# Sums a metric over all its label sets.
counter() {
  curl -s "http://$metrics_addr/metrics" 2>/dev/null |
    awk -v m="$1" '$1 == m || index($1, m "{") == 1 {s += $2} END {printf "%d", s}'
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
done
