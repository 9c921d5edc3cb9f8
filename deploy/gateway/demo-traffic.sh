#!/usr/bin/env bash
# Demo traffic through the gateway for `make run` (tools/run.sh): every
# second, one curl per key sends a burst of keep-alive requests through
# nginx and appends each answer's status to OUT (one "KEY STATUS" a line),
# so that the run's summary shows what the edge answered (200 allowed, 429
# throttled or over quota) next to what the collector counted.
#
#   deploy/gateway/demo-traffic.sh GATEWAY_URL OUT KEY_ID:SECRET:REQUESTS_PER_S...
#
# The secrets come on the command line only in the demo (they are fresh each
# run); never pass real keys this way.
set -euo pipefail
url=$1 out=$2
shift 2
paths=(/items /items/1 /items/2 /reports)
while true; do
  for spec in "$@"; do
    IFS=: read -r key_id secret per_second <<<"$spec"
    urls=()
    for ((i = 0; i < per_second; i++)); do
      urls+=(-o /dev/null "$url${paths[i % ${#paths[@]}]}")
    done
    curl -s -w "$key_id %{http_code}\n" -H "x-api-key: $secret" "${urls[@]}" \
      >>"$out" 2>/dev/null || true
  done
  sleep 1
done
