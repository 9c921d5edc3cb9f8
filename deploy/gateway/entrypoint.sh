#!/usr/bin/env bash
# The gateway container (deploy/gateway/Dockerfile): nginx with the recipe of
# /etc/tally-gateway/nginx (its example addresses replaced from the
# environment) and rsyslog with /etc/tally-gateway/rsyslog/tally.conf,
# publishing nginx's usage log to Kafka. Stops both on SIGTERM, nginx first
# and gracefully (no more lines), then rsyslog (it saves its read position
# and queue); exits non-zero when either stops by itself. Refuses values
# that are not plain addresses or names (exit 2).
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
# Each value goes into nginx's or rsyslog's configuration as text, so it
# must be what its name says and nothing more: a quote, a semicolon, a `$`
# or a newline would add directives (say `auth_request off;`) or variables.
check_value() {
  local name=$1 value=$2 pattern=$3
  if ! [[ $value =~ $pattern ]]; then
    echo "tally-gateway: $name='$value' is not valid (expected $4)" >&2
    exit 2
  fi
}
address='^[A-Za-z0-9._-]+:[0-9]{1,5}$|^\[[0-9A-Fa-f:.]+\]:[0-9]{1,5}$'
api=${GATEWAY_TALLY_API:-api:8080}
listen=${GATEWAY_LISTEN:-0.0.0.0:8000}
demo=${GATEWAY_DEMO_LISTEN:-127.0.0.1:8001}
source=${GATEWAY_SOURCE:-gw-compose}
topic=${GATEWAY_KAFKA_TOPIC:-usage-events}
check_value GATEWAY_TALLY_API "$api" "$address" "host:port"
check_value GATEWAY_LISTEN "$listen" "^[0-9]{1,5}\$|$address" "host:port or port"
check_value GATEWAY_DEMO_LISTEN "$demo" "$address" "host:port"
check_value GATEWAY_SOURCE "$source" '^[A-Za-z0-9._-]{1,100}$' "letters, digits, . _ -"
check_value GATEWAY_KAFKA_TOPIC "$topic" '^[A-Za-z0-9._-]{1,249}$' "a Kafka topic name"
check_value GATEWAY_KAFKA_BROKERS "$GATEWAY_KAFKA_BROKERS" '^[][A-Za-z0-9._:,-]+$' \
  "host:port,..."

mkdir -p "$state/logs" "$state/temp" "$state/rsyslog" "$conf"
cp /etc/tally-gateway/nginx/*.conf "$conf/"

# nginx.conf with the example's lines replaced: each must be there exactly
# as written (a recipe edited without this script would otherwise start with
# the example's addresses). nginx's error and access logs go to the
# container's output (its log driver rotates them), not into the volume.
# Literal text, not a sed expression. Every example line becomes a marker
# first and every marker its value after, so that a value that looks like
# another example line (GATEWAY_TALLY_API=127.0.0.1:8001) is not replaced
# again.
replace() {
  local from=$1 to=$2 text
  text=$(<"$conf/nginx.conf")
  [[ $text == *"$from"* ]] || { echo "tally-gateway: '$from' not in nginx.conf" >&2; exit 1; }
  printf '%s\n' "${text//"$from"/"$to"}" >"$conf/nginx.conf"
}
lines=(
  "server 127.0.0.1:8080;"                "server $api;"
  "listen 127.0.0.1:8000;"                "listen $listen;"
  "set \$tally_source \"gw-demo\";"      "set \$tally_source \"$source\";"
  "server 127.0.0.1:8001;"                "server $demo;"
  "listen 127.0.0.1:8001;"                "listen $demo;"
  "error_log logs/error.log warn;"        "error_log stderr warn;"
  "access_log logs/access.log combined;"  "access_log /dev/stdout combined;"
)
for ((i = 0; i < ${#lines[@]}; i += 2)); do
  replace "${lines[i]}" "@tally-gateway-line-$i@"
done
for ((i = 0; i < ${#lines[@]}; i += 2)); do
  replace "@tally-gateway-line-$i@" "${lines[i + 1]}"
done

export GATEWAY_USAGE_LOG=$state/logs/tally-usage.log
export GATEWAY_RSYSLOG_WORK_DIR=$state/rsyslog
export GATEWAY_KAFKA_BROKERS GATEWAY_KAFKA_TOPIC=$topic
touch "$GATEWAY_USAGE_LOG"

# Stopping: nginx first and gracefully (SIGQUIT: requests in flight are
# answered and logged; SIGTERM would drop them before their usage line),
# then rsyslog (SIGTERM: it sends what it read, or saves its queue and read
# position). The trap is set before either starts, so a stop asked for at
# any moment is honoured. Exit status: 0 for a stop asked for, else the
# failed program's (1 if it exited 0), so restart policies see a crash.
rsyslog_pid= nginx_pid=
stop() {
  local status=$1
  if [ -n "$nginx_pid" ]; then
    kill -QUIT "$nginx_pid" 2>/dev/null || true
    wait "$nginx_pid" 2>/dev/null || true
  fi
  if [ -n "$rsyslog_pid" ]; then
    kill -TERM "$rsyslog_pid" 2>/dev/null || true
    wait "$rsyslog_pid" 2>/dev/null || true
  fi
  exit "$status"
}
trap 'stop 0' TERM INT

rsyslogd -n -f /etc/tally-gateway/rsyslog/tally.conf -i /tmp/rsyslogd.pid &
rsyslog_pid=$!
nginx -e stderr -p "$state" -c "$conf/nginx.conf" -g 'daemon off;' &
nginx_pid=$!

status=0
wait -n "$nginx_pid" "$rsyslog_pid" || status=$?
echo "tally-gateway: nginx or rsyslog stopped (status $status); stopping the other" >&2
stop "$(( status == 0 ? 1 : status ))"
