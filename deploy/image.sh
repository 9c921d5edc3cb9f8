#!/usr/bin/env bash
# Builds the container images (deploy/Dockerfile -> tally:local, and
# deploy/gateway/Dockerfile -> tally-gateway:local) with docker when the user
# can reach a docker daemon, else with podman, making the Dockerfile's Debian
# base image (its first FROM) locally (debootstrap --variant=minbase) when it
# can be neither found nor pulled. Both images go through the same steps and
# flags. `make image` runs `deploy/image.sh build`, `make gateway-image`
# `deploy/image.sh gateway`.
#
#   deploy/image.sh build   base image if missing, then the Tally image
#   deploy/image.sh gateway base image if missing, then the gateway image
#                           (nginx + rsyslog, deploy/gateway/)
#   deploy/image.sh base    only the base image
#   deploy/image.sh env     prints the podman settings as `export` lines, so
#                           that `eval "$(deploy/image.sh env)"; podman ...`
#                           sees the same storage (tests, compose-smoke.sh)
#
# State (podman only; kept between runs so a rebuild is fast), in
# $IMAGE_STATE_DIR, by default /var/tmp/tally-image-<uid>:
#   containers.conf, storage.conf  podman's settings (CONTAINERS_CONF,
#                                  CONTAINERS_STORAGE_CONF), written each run
#   storage/                       podman's images and layers
#   base/bookworm-minbase-N.tar    the debootstrapped base, imported again
#                                  when storage/ is gone
# podman's run-time state (locks, mounts) stays on a tmpfs: /run/tally-image
# for root, else $XDG_RUNTIME_DIR/tally-image. `rm -rf` of both resets all.
#
# Settings (environment): IMAGE_TAG (tally:local), IMAGE_GATEWAY_TAG
# (tally-gateway:local), IMAGE_ENGINE (docker or
# podman; default: docker if `docker info` works, else podman), IMAGE_MIRROR
# (the Debian mirror for debootstrap; default: the first one this machine's
# apt sources name).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
tally_dockerfile="$root/deploy/Dockerfile"
gateway_dockerfile="$root/deploy/gateway/Dockerfile"
state=${IMAGE_STATE_DIR:-/var/tmp/tally-image-$(id -u)}
suite=bookworm
# Bumped when make_base_tarball changes, so an older tarball is not reused.
base_version=2

say() { echo "image.sh: $*" >&2; }
die() { say "$*"; exit 1; }

pick_engine() {
  if [ -n "${IMAGE_ENGINE:-}" ]; then
    echo "$IMAGE_ENGINE"
  elif command -v docker >/dev/null && docker info >/dev/null 2>&1 \
       && ! docker info 2>/dev/null | grep -qi podman; then
    echo docker
  elif command -v podman >/dev/null; then
    echo podman
  else
    die "neither docker nor podman found (Debian: apt-get install podman runc)"
  fi
}

run_dir() {
  if [ "$(id -u)" = 0 ]; then echo /run/tally-image; else echo "${XDG_RUNTIME_DIR:-/tmp}/tally-image"; fi
}

# podman's settings for this kind of machine: runc (crun refuses hybrid
# cgroups), explicit ulimits (podman's default setrlimit is refused here),
# cgroupfs and a file event log (no systemd), storage in the state directory.
write_podman_conf() {
  local run
  run=$(run_dir)
  mkdir -p "$state/storage" "$run"
  cat >"$state/containers.conf" <<EOF
# Written by deploy/image.sh: podman settings for Tally's image scripts.
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = "$run/events.log"
tmp_dir = "$run/libpod"
EOF
  {
    echo "# Written by deploy/image.sh."
    echo "[storage]"
    echo "driver = \"overlay\""
    echo "graphroot = \"$state/storage\""
    echo "runroot = \"$run/storage\""
    if [ "$(id -u)" != 0 ] && command -v fuse-overlayfs >/dev/null; then
      echo "[storage.options.overlay]"
      echo "mount_program = \"$(command -v fuse-overlayfs)\""
    fi
  } >"$state/storage.conf"
}

print_env() {
  echo "export CONTAINERS_CONF='$state/containers.conf'"
  echo "export CONTAINERS_STORAGE_CONF='$state/storage.conf'"
}

use_podman_conf() {
  write_podman_conf
  export CONTAINERS_CONF="$state/containers.conf"
  export CONTAINERS_STORAGE_CONF="$state/storage.conf"
}

# The first Debian mirror of this machine's apt sources (one-line or deb822
# form), else deb.debian.org.
debian_mirror() {
  if [ -n "${IMAGE_MIRROR:-}" ]; then echo "$IMAGE_MIRROR"; return; fi
  local uri
  uri=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources \
          2>/dev/null | grep -v '^\s*#' \
        | grep -oE 'https?://[^ ]*/debian/?( |$)' | head -n 1 | tr -d ' ') || true
  echo "${uri:-http://deb.debian.org/debian}"
}

# The security archive next to the mirror, when this machine's sources name one.
security_mirror() {
  cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources \
      2>/dev/null | grep -v '^\s*#' | grep -oE 'https?://[^ ]*/debian-security/?' | head -n 1 || true
}

# debootstrap --variant=minbase, made slim the way Debian's slim images are
# (no documentation, manual pages or translations installed by later apt
# runs; apt's caches emptied), packed into base/bookworm-minbase.tar.
make_base_tarball() {
  local mirror security rootfs tarball="$state/base/$suite-minbase-$base_version.tar"
  command -v debootstrap >/dev/null || die "debootstrap not found (apt-get install debootstrap)"
  [ "$(id -u)" = 0 ] || die "debootstrap needs root: run 'sudo deploy/image.sh base' once"
  mirror=$(debian_mirror)
  security=$(security_mirror)
  rootfs="$state/base/rootfs"
  rm -rf "$rootfs"
  mkdir -p "$state/base"
  say "making the base image: debootstrap --variant=minbase $suite from $mirror (about a minute)"
  debootstrap --variant=minbase "$suite" "$rootfs" "$mirror" >"$state/base/debootstrap.log" 2>&1 \
    || { tail -n 20 "$state/base/debootstrap.log" >&2; die "debootstrap failed (log: $state/base/debootstrap.log)"; }
  {
    echo "deb $mirror $suite main"
    echo "deb $mirror $suite-updates main"
    if [ -n "$security" ]; then echo "deb $security $suite-security main"; fi
  } >"$rootfs/etc/apt/sources.list"
  cat >"$rootfs/etc/dpkg/dpkg.cfg.d/slim" <<'EOF'
# A container base: packages install without their documentation, manual
# pages and translations (copyright files stay).
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-exclude /usr/share/lintian/*
EOF
  cat >"$rootfs/etc/apt/apt.conf.d/slim" <<'EOF'
// A container base: no package cache kept, no recommended packages, no
// translated package descriptions fetched.
APT::Install-Recommends "false";
Acquire::Languages "none";
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/*.bin || true"; };
EOF
  # A layer is committed whole or not at all, so dpkg's fsync of every file
  # buys nothing in an image build and costs most of its time on a busy disk.
  echo force-unsafe-io >"$rootfs/etc/dpkg/dpkg.cfg.d/unsafe-io"
  find "$rootfs/usr/share/doc" -mindepth 2 ! -name copyright ! -type d -delete 2>/dev/null || true
  rm -rf "$rootfs/usr/share/man/"* "$rootfs/usr/share/info/"* "$rootfs/usr/share/locale/"* \
         "$rootfs/var/cache/apt/"*.bin "$rootfs/var/cache/apt/archives/"*.deb \
         "$rootfs/var/lib/apt/lists/"* "$rootfs/var/log/"*.log
  tar --numeric-owner -C "$rootfs" -cf "$tarball.tmp" .
  mv "$tarball.tmp" "$tarball"
  rm -rf "$rootfs"
}

# The base image of Dockerfile $2 (its first FROM), found locally, pulled,
# or made: an existing one is reused, so only the first run pays.
ensure_base() {
  local engine=$1 dockerfile=$2 base tarball="$state/base/$suite-minbase-$base_version.tar"
  base=$(awk 'toupper($1) == "FROM" { print $2; exit }' "$dockerfile")
  if "$engine" image inspect "$base" >/dev/null 2>&1; then
    say "base image $base: present"
    return
  fi
  if timeout 60 "$engine" pull "docker.io/library/$base" >/dev/null 2>&1; then
    say "base image $base: pulled"
    return
  fi
  [ -f "$tarball" ] || make_base_tarball
  say "base image $base: importing $tarball"
  "$engine" import "$tarball" "$base" >/dev/null
}

# Dockerfile $2 -> image $3, the repository root as the context.
build_image() {
  local engine=$1 dockerfile=$2 tag=$3 started=$SECONDS
  local args=(build -f "$dockerfile" -t "$tag")
  # Docker's image format (OCI images have no HEALTHCHECK); both stages at
  # once (the runtime stage's apt-get runs while the build stage compiles).
  if [ "$engine" = podman ]; then args+=(--format docker --jobs 2); fi
  say "building $tag with $engine"
  "$engine" "${args[@]}" "$root"
  say "built $tag in $((SECONDS - started)) s"
}

command=${1:-build}
case "$command" in
  env)
    write_podman_conf
    print_env
    ;;
  base | build | gateway)
    engine=$(pick_engine)
    if [ "$engine" = podman ]; then use_podman_conf; fi
    if [ "$command" = gateway ]; then
      dockerfile=$gateway_dockerfile tag=${IMAGE_GATEWAY_TAG:-tally-gateway:local}
    else
      dockerfile=$tally_dockerfile tag=${IMAGE_TAG:-tally:local}
    fi
    ensure_base "$engine" "$dockerfile"
    if [ "$command" != base ]; then build_image "$engine" "$dockerfile" "$tag"; fi
    ;;
  *)
    die "usage: deploy/image.sh [build|gateway|base|env]"
    ;;
esac
