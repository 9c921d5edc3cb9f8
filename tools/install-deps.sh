#!/usr/bin/env bash
# Installs the Debian packages Tally needs to build, test and run locally,
# and only those that are missing: `apt-get update` once, then
# `apt-get install -y`. Safe to run again; prints nothing when all is there.
set -euo pipefail

packages=(
  build-essential pkg-config
  librdkafka-dev libpq-dev libmicrohttpd-dev libjansson-dev libcurl4-openssl-dev
  check            # C unit-test framework
  clang-14 libclang-rt-14-dev  # libFuzzer targets (make fuzz)
  postgresql postgresql-client
  kcat             # a real Kafka client, used by the tests
  python3          # integration-test and benchmark drivers (stdlib only)
  wrk nginx-light  # the gateway recipe (auth_request), benchmarks' load generator
  rsyslog rsyslog-kafka  # the gateway's access log into Kafka (imfile + omkafka)
  prometheus       # alert rules (promtool test rules) and a real scrape test
  chromium         # dashboards, tested in a real headless browser
  awscli python3-boto3  # the AWS usage-plan API, driven by AWS's own clients
  faketime         # the AWS suite: the aws CLI signing with a clock 20 minutes slow
  podman runc debootstrap docker-compose uidmap slirp4netns fuse-overlayfs  # the image test
  procps util-linux iproute2 curl ca-certificates openssl  # openssl: test certificates
)

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done
[ ${#missing[@]} -eq 0 ] && exit 0

echo "install-deps: installing ${missing[*]}" >&2
if [ "$(id -u)" -eq 0 ]; then
  SUDO=""
elif command -v sudo >/dev/null 2>&1; then
  SUDO="sudo"
else
  echo "install-deps: missing packages (${missing[*]}) and not root; install them or run as root" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
$SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
