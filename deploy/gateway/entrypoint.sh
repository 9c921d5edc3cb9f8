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
sed -i -e "s|server 127.0.0.1:8080;|server ${GATEWAY_TALLY_API:-api:8080};|" \
       -e "s|listen 127.0.0.1:8000;|listen ${GATEWAY_LISTEN:-0.0.0.0:8000};|" \
       -e "s|\"gw-demo\"|\"${GATEWAY_SOURCE:-gw-compose}\"|" "$conf/nginx.conf"

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
