#!/usr/bin/env bash
# Builds the Debian image (suite $2: bookworm or trixie) the system tests boot with real
# systemd as PID 1, into the host's podman storage under the tag given as $1:
#   1. debootstrap --variant=minbase SUITE, imported as <tag>-rootfs (the .debs it fetches are
#      kept in the cache scripts/build-debs.sh's build roots use, so each is downloaded once)
#   2. podman build tests/system/Containerfile on top (systemd, podman, runc, docker-registry)
# The tag carries a hash of this file and the Containerfile (tests/system/conftest.py), so
# an edited recipe builds a new image and an unchanged one is reused between runs.
# Nothing of ours is in the image: the packages under test are installed by the test.
set -euo pipefail
TAG=${1:?usage: build-image.sh TAG SUITE}
SUITE=${2:?usage: build-image.sh TAG SUITE}
DEB_CACHE=${BUILDROOTS:-/var/tmp/miner-agent-buildroots}/debootstrap-cache
HERE=$(cd "$(dirname "$0")" && pwd)
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
export CONTAINERS_CONF=${CONTAINERS_CONF:-$HERE/../../packaging/podman/containers.conf}

if ! podman image exists "$TAG-rootfs"; then
  work=$(mktemp -d /var/tmp/miner-agent-systest-rootfs.XXXXXX)
  trap 'rm -rf "$work"' EXIT
  echo "build-image: debootstrap $SUITE minbase from $MIRROR"
  mkdir -p "$DEB_CACHE"
  # One debootstrap at a time writes into the shared .deb cache (scripts/build-debs.sh takes the same lock).
  if ! flock "$DEB_CACHE.lock" debootstrap --variant=minbase --include=python3 --cache-dir="$DEB_CACHE" "$SUITE" \
       "$work/rootfs" "$MIRROR" >"$work/log" 2>&1; then
    tail -20 "$work/log" >&2
    tail -40 "$work/rootfs/debootstrap/debootstrap.log" >&2 || true
    echo "build-image: debootstrap failed (mirror $MIRROR; set DEBIAN_MIRROR to another)" >&2
    exit 1
  fi
  tar -C "$work/rootfs" -c . | podman import - "$TAG-rootfs" >/dev/null
fi
echo "build-image: podman build $TAG"
podman build -q --build-arg BASE="$TAG-rootfs" -t "$TAG" -f "$HERE/Containerfile" "$HERE" >/dev/null
podman rmi "$TAG-rootfs" >/dev/null 2>&1 || true
echo "build-image: done"
