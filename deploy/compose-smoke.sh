#!/usr/bin/env bash
# Brings docker-compose.yml up once, the way a user would, on a machine with
# podman but no Docker and no registry: docker-compose (1.29) against
# podman's Docker-compatible API socket (`podman system service`), with an
# override that puts the host's local stack (tools/stack.sh: PostgreSQL and
# the dev broker) in place of the kafka and postgres containers. Checks that
# the migrate job completes and every Tally service (collector, api,
# reporter) becomes healthy through the compose file's own healthchecks,
# stops them (each must exit 0 on SIGTERM), then tears everything down.
# Not part of `make test` (about two minutes; needs ports 9101 and 9102 free
# on the host). Run as root, from anywhere:
#
#   deploy/compose-smoke.sh [--keep DIR]    # --keep: leave logs in DIR
#
# What the override changes, and why:
# - kafka, postgres: placeholders from tally:local (`sleep infinity`, healthy
#   at once): the real ones are the host's stack, checked by this script
#   before compose starts. kafka-init: `true` (the dev broker creates the
#   topics itself). Their images (apache/kafka, postgres) cannot be pulled
#   without a registry.
# - collector, reporter, migrate: `network_mode: host`, so they reach the
#   stack on 127.0.0.1; their listen addresses move from 0.0.0.0 to
#   127.0.0.1 (same ports, so the compose file's healthchecks run as
#   written). The reporter talks to a Stripe stand-in started here.
# - api: slirp4netns (host networking refuses its published port), reaching
#   the stack's PostgreSQL as 10.0.2.2, through a second database_url
#   secret; published on a free port (API_PORT), which the script calls.
# - No systemd here, so podman runs no healthcheck on its own: a loop runs
#   `podman healthcheck run` on the project's containers every 2 s, which
#   updates the status docker-compose waits for.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
keep=
if [ "${1:-}" = --keep ]; then keep=${2:?--keep needs a directory}; fi
started=$SECONDS
say() { echo "compose-smoke: $*" >&2; }
die() { say "FAILED: $*"; exit 1; }

for port in 9101 9102; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    die "port $port is in use on this host (the Tally services listen on it)"
  fi
done
command -v docker-compose >/dev/null || die "docker-compose not found (apt-get install docker-compose)"

eval "$(env -u DOCKER_HOST "$root/deploy/image.sh" env)"
work=$(mktemp -d /tmp/tally-compose-smoke.XXXXXX)
project=tallysmoke$$
compose=(docker-compose -p "$project" -f "$root/docker-compose.yml" -f "$work/override.yml")
service_pid= standin_pid= health_pid=

cleanup() {
  set +e
  if [ -n "${DOCKER_HOST:-}" ]; then
    "${compose[@]}" logs --no-color >"$work/compose.log" 2>&1
    "${compose[@]}" down -v --timeout 30 >>"$work/down.log" 2>&1
  fi
  for pid in $health_pid $standin_pid $service_pid; do kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; done
  "$root/tools/stack.sh" down "$work/stack" >/dev/null 2>&1
  if [ -n "$keep" ]; then
    mkdir -p "$keep" && cp "$work"/*.log "$work/override.yml" "$keep"/ 2>/dev/null
    cp -r "$work/stack/logs" "$keep/stack-logs" 2>/dev/null
  fi
  rm -rf "$work"
}
trap cleanup EXIT

say "building tally:local (deploy/image.sh build)"
env -u DOCKER_HOST IMAGE_ENGINE=podman "$root/deploy/image.sh" build >"$work/build.log" 2>&1 \
  || { tail -n 20 "$work/build.log" >&2; die "image build"; }

say "starting the host's stack (tools/stack.sh) and a Stripe stand-in"
"$root/tools/stack.sh" up "$work/stack" --fast >"$work/stack.log" 2>&1 || die "tools/stack.sh up"
# shellcheck disable=SC1091
. "$work/stack/env"
brokers=$TALLY_KAFKA_BROKERS
database_url=$TALLY_DATABASE_URL
unset TALLY_DATABASE_URL TALLY_KAFKA_BROKERS TALLY_STATE_DIR
stripe_key=sk_test_compose_smoke_$$
STRIPE_STANDIN_API_KEY=$stripe_key python3 "$root/tests/stripe/standin.py" --port 0 \
  --customers '*' --meters api_calls >"$work/standin.log" 2>&1 &
standin_pid=$!
stripe_url=
for _ in $(seq 1 100); do
  stripe_url=$(sed -n 's/^stripe-standin listening on \(http:[^ ]*\).*/\1/p' "$work/standin.log")
  [ -n "$stripe_url" ] && break
  sleep 0.1
done
[ -n "$stripe_url" ] || die "the Stripe stand-in did not start"

say "starting podman's API socket"
podman system service --time=0 "unix://$work/podman.sock" >"$work/podman-service.log" 2>&1 &
service_pid=$!
for _ in $(seq 1 100); do [ -S "$work/podman.sock" ] && break; sleep 0.1; done
[ -S "$work/podman.sock" ] || die "podman system service made no socket"
export DOCKER_HOST="unix://$work/podman.sock"

# The secret files, as deploy/README.md has a user make them (the database
# URL is the host stack's; postgres_password is unused by the placeholder).
mkdir -m 700 "$work/secrets"
printf '%s\n' "$database_url" >"$work/secrets/database_url"
printf '%s\n' "${database_url/host=127.0.0.1/host=10.0.2.2}" >"$work/secrets/database_url_via_slirp"
head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$work/secrets/postgres_password"
head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$work/secrets/admin_token"
head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$work/secrets/key_hmac_secret"
printf '%s\n' "$stripe_key" >"$work/secrets/stripe_api_key"
chmod 444 "$work/secrets"/*
api_port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
export SECRETS_DIR="$work/secrets" STRIPE_API_BASE="$stripe_url" API_PORT=$api_port

cat >"$work/override.yml" <<EOF
# Written by deploy/compose-smoke.sh: the host's stack in place of kafka and
# postgres; the Tally services on the host's network.
x-placeholder: &placeholder
  image: tally:local
  command: ["sleep", "infinity"]
  healthcheck:
    test: ["CMD", "true"]
    interval: 2s
    start_period: 0s
services:
  kafka:
    <<: *placeholder
  postgres:
    <<: *placeholder
  kafka-init:
    image: tally:local
    command: ["true"]
  migrate:
    network_mode: host
  collector:
    network_mode: host
    environment:
      TALLY_KAFKA_BROKERS: "$brokers"
      TALLY_METRICS_ADDR: "127.0.0.1:9101"
  # The api publishes a port, which host networking refuses: slirp4netns
  # instead, whose 10.0.2.2 is the host's loopback (the stack's PostgreSQL).
  api:
    network_mode: "slirp4netns:allow_host_loopback=true"
    environment:
      TALLY_DATABASE_URL_FILE: /run/secrets/database_url_via_slirp
    secrets:
      - database_url_via_slirp
  reporter:
    network_mode: host
    environment:
      TALLY_METRICS_ADDR: "127.0.0.1:9102"
secrets:
  database_url_via_slirp:
    file: $work/secrets/database_url_via_slirp
EOF

# podman runs no healthcheck on its own without systemd: run them for it.
(
  while sleep 2; do
    for id in $(podman ps -q --filter "label=com.docker.compose.project=$project"); do
      podman healthcheck run "$id" >/dev/null 2>&1 || true
    done
  done
) &
health_pid=$!

say "docker-compose up (collector, api, reporter and what they depend on)"
up_started=$SECONDS
"${compose[@]}" up -d --no-build collector api reporter >"$work/up.log" 2>&1 \
  || { tail -n 30 "$work/up.log" >&2; die "docker-compose up"; }

container_of() { "${compose[@]}" ps -q "$1" | head -n 1; }

migrate_id=$(podman ps -a -q --filter "label=com.docker.compose.project=$project" \
  --filter "label=com.docker.compose.service=migrate" | head -n 1)
[ -n "$migrate_id" ] || die "no migrate container"
migrate_exit=$(podman inspect -f '{{.State.ExitCode}}' "$migrate_id")
[ "$migrate_exit" = 0 ] || die "the migrate job exited $migrate_exit: $(podman logs "$migrate_id" 2>&1 | tail -n 5)"
say "migrate job: exit 0; $(podman logs "$migrate_id" 2>&1 | grep -c '^applying') migrations applied"

for service in collector api reporter; do
  id=$(container_of "$service")
  [ -n "$id" ] || die "no $service container"
  status=
  for _ in $(seq 1 60); do
    status=$(podman inspect -f '{{.State.Healthcheck.Status}}' "$id")
    [ "$status" = healthy ] && break
    sleep 1
  done
  [ "$status" = healthy ] || die "$service is '$status': $(podman logs "$id" 2>&1 | tail -n 5)"
  uid=$(awk '/^Uid:/ { print $2 }' "/proc/$(podman inspect -f '{{.State.Pid}}' "$id")/status")
  say "$service: healthy (uid $uid)"
done
up_took=$((SECONDS - up_started))
curl -fsS --max-time 5 "http://127.0.0.1:$api_port/healthz" >/dev/null \
  || die "the api's published port $api_port does not answer /healthz"
say "api: answers on its published port $api_port"

say "docker-compose stop: every Tally service must exit 0"
"${compose[@]}" stop >"$work/stop.log" 2>&1 || die "docker-compose stop"
for service in collector api reporter; do
  id=$(podman ps -a -q --filter "label=com.docker.compose.project=$project" \
    --filter "label=com.docker.compose.service=$service" | head -n 1)
  code=$(podman inspect -f '{{.State.ExitCode}}' "$id")
  [ "$code" = 0 ] || die "$service exited $code after SIGTERM"
done

say "PASSED in $((SECONDS - started)) s (up to all healthy: $up_took s); tearing down"
