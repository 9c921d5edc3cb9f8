#!/usr/bin/env bash
# The gateway container's healthcheck (the image's HEALTHCHECK and
# docker-compose.yml's): GET /health on nginx's GATEWAY_LISTEN address,
# healthy only on a 200. It takes no argument, so the exec form names one
# word (podman 4.3's API splits exec-form arguments on spaces), and it
# follows GATEWAY_LISTEN instead of a port written twice. bash's /dev/tcp:
# the image has no curl.
set -uo pipefail
listen=${GATEWAY_LISTEN:-0.0.0.0:8000}
port=${listen##*:}
host=${listen%:*}
# A wildcard or missing host is reached on loopback.
case "$host" in
  "$listen" | "" | "*" | 0.0.0.0) host=127.0.0.1 ;;
  "[::]") host=::1 ;;
esac
host=${host#[}
host=${host%]}
# bash's own message of a refused connection stays out of the health log.
if ! { exec 3<>"/dev/tcp/$host/$port"; } 2>/dev/null; then
  echo "unhealthy: cannot connect to $host:$port"
  exit 1
fi
printf 'GET /health HTTP/1.0\r\nHost: gateway\r\n\r\n' >&3
status_line=
read -r -t 3 status_line <&3
case "$status_line" in
  "HTTP/1."?" 200 "*) echo "healthy: $host:$port/health answered 200"; exit 0 ;;
  *) echo "unhealthy: $host:$port/health answered '${status_line%$'\r'}'"; exit 1 ;;
esac
