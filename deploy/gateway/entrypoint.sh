#!/usr/bin/env bash
# The gateway container (deploy/gateway/Dockerfile): nginx with the recipe of
# /etc/tally-gateway/nginx (its example addresses replaced from the
# environment) and rsyslog with /etc/tally-gateway/rsyslog/tally.conf,
# publishing nginx's usage log to Kafka. Stops both on SIGTERM, nginx first
# (no more lines), then rsyslog (it saves its read position and queue);
# exits when either stops by itself.
#
#   GATEWAY_TALLY_API      tally-api's host:port            [api:8080]
#   GATEWAY_LISTEN         nginx's listen address            [0.0.0.0:8000]
#   GATEWAY_DEMO_LISTEN    the demo upstream's address       [127.0.0.1:8001]
#                          (another one when the container shares the
#                          host's network, as tests/image/run.py's does)
#   GATEWAY_SOURCE         the events' source (gateway name) [gw-compose]
#   GATEWAY_KAFKA_BROKERS  bootstrap brokers                 (required)
#   GATEWAY_KAFKA_TOPIC    the usage topic                   [usage-events]
#   GATEWAY_STATE_DIR      usage log, rsyslog state          [/var/lib/tally-gateway]
set -euo pipefail
: "${GATEWAY_KAFKA_BROKERS:?set GATEWAY_KAFKA_BROKERS (host:port,...)}"
state=${GATEWAY_STATE_DIR:-/var/lib/tally-gateway}
conf=/tmp/tally-gateway-nginx
mkdir -p "$state/logs" "$state/temp" "$state/rsyslog" "$conf"
cp /etc/tally-gateway/nginx/*.conf "$conf/"

# nginx.conf with the example's lines replaced: each must be there exactly
# as written (a recipe edited without this script would otherwise start with
# the example's addresses). nginx's error and access logs go to the
# container's output (its log driver rotates them), not into the volume.
# Literal text, not a sed expression: a value may hold any character.
replace() {
  local from=$1 to=$2 text
  text=$(<"$conf/nginx.conf")
  [[ $text == *"$from"* ]] || { echo "tally-gateway: '$from' not in nginx.conf" >&2; exit 1; }
  printf '%s\n' "${text//"$from"/"$to"}" >"$conf/nginx.conf"
}
replace "server 127.0.0.1:8080;" "server ${GATEWAY_TALLY_API:-api:8080};"
replace "listen 127.0.0.1:8000;" "listen ${GATEWAY_LISTEN:-0.0.0.0:8000};"
replace "set \$tally_source \"gw-demo\";" "set \$tally_source \"${GATEWAY_SOURCE:-gw-compose}\";"
replace "server 127.0.0.1:8001;" "server ${GATEWAY_DEMO_LISTEN:-127.0.0.1:8001};"
replace "listen 127.0.0.1:8001;" "listen ${GATEWAY_DEMO_LISTEN:-127.0.0.1:8001};"
replace "error_log logs/error.log warn;" "error_log stderr warn;"
replace "access_log logs/access.log combined;" "access_log /dev/stdout combined;"

export GATEWAY_USAGE_LOG=$state/logs/tally-usage.log
export GATEWAY_RSYSLOG_WORK_DIR=$state/rsyslog
export GATEWAY_KAFKA_BROKERS GATEWAY_KAFKA_TOPIC=${GATEWAY_KAFKA_TOPIC:-usage-events}
touch "$GATEWAY_USAGE_LOG"

rsyslogd -n -f /etc/tally-gateway/rsyslog/tally.conf -i /tmp/rsyslogd.pid &
rsyslog_pid=$!
nginx -e stderr -p "$state" -c "$conf/nginx.conf" -g 'daemon off;' &
nginx_pid=$!

stop() {
  kill -TERM "$nginx_pid" 2>/dev/null || true
  wait "$nginx_pid" 2>/dev/null || true
  kill -TERM "$rsyslog_pid" 2>/dev/null || true
  wait "$rsyslog_pid" 2>/dev/null || true
  exit 0
}
trap stop TERM INT
wait -n "$nginx_pid" "$rsyslog_pid" || true
echo "tally-gateway: nginx or rsyslog stopped; stopping the other" >&2
stop
