#!/usr/bin/env bash
# Installs what the agents need on a Debian 12 or 13 machine, as root: podman (+runc) from apt,
# and a virtualenv at .venv with the locked dependencies (requirements/, pip --require-hashes)
# and the project in editable mode. Idempotent: a second run only checks.
#
#   bash scripts/bootstrap.sh          what scripts/quickstart.sh runs: requirements/miner.txt
#   bash scripts/bootstrap.sh --test   what scripts/run-tests.sh runs: also sshd, iproute2 and
#                                      requirements/test.txt (pytest, the in-process EVM, ...)
set -euo pipefail
cd "$(dirname "$0")/.."

FLAVOUR=miner
[ "${1:-}" = "--test" ] && FLAVOUR=test
if [ "$(id -u)" != 0 ]; then
  echo "bootstrap: needs root (apt-get); run it as root, or with sudo: sudo bash $0 $*" >&2
  exit 1
fi

APT_PACKAGES=(podman runc fuse-overlayfs busybox-static python3-venv)
[ "$FLAVOUR" = test ] && APT_PACKAGES+=(openssh-server openssh-client iproute2)
missing=()
for p in "${APT_PACKAGES[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  echo "bootstrap: installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# promtool checks the alert rules (tests/integration/test_alert_rules.py). Debian ships it only in the prometheus
# package, whose daemon would listen on 0.0.0.0:9090: installed without its recommended node exporter, with
# a policy-rc.d that keeps the daemon from starting (unless one is there already) and then disabled at boot.
# Tests only: a miner host set up by the quickstart gets no prometheus.
if [ "$FLAVOUR" = test ] && ! command -v promtool >/dev/null; then
  echo "bootstrap: installing prometheus for promtool (its daemon stays stopped and disabled)"
  own_policy=0
  [ -e /usr/sbin/policy-rc.d ] || { printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d; chmod 755 /usr/sbin/policy-rc.d; own_policy=1; }
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
  [ "$own_policy" = 0 ] || rm -f /usr/sbin/policy-rc.d
  systemctl disable prometheus.service >/dev/null 2>&1 || true
fi

# Job containers run in a user namespace (podman userns=auto), whose ids podman takes from the
# `containers` ranges of /etc/subuid and /etc/subgid: the executor-agent package adds the same line.
for f in /etc/subuid /etc/subgid; do
  if ! grep -q '^containers:' "$f" 2>/dev/null; then
    echo "bootstrap: adding subordinate ids for containers to $f"
    echo 'containers:2147483647:2147483648' >>"$f"
  fi
done

PYTHON=${PYTHON:-python3}
LOCK=requirements/$FLAVOUR.txt
STAMP=.venv/.installed-$FLAVOUR
WANT=bittensor
[ "$FLAVOUR" = test ] && WANT=pytest_aiohttp
CHECK="import importlib.util, miner_agent, executor_agent; assert importlib.util.find_spec('$WANT')"
if [ ! -x .venv/bin/python ]; then
  echo "bootstrap: creating .venv with $("$PYTHON" --version 2>&1)"
  "$PYTHON" -m venv .venv
fi
if ! .venv/bin/python -c "$CHECK" 2>/dev/null || [ pyproject.toml -nt "$STAMP" ] || [ "$LOCK" -nt "$STAMP" ]; then
  echo "bootstrap: pip install --require-hashes -r $LOCK, then the project (editable, --no-deps)"
  .venv/bin/pip install -q --disable-pip-version-check --require-hashes -r "$LOCK" 2>&1 | grep -v 'is ignored' || true
  .venv/bin/pip install -q --disable-pip-version-check --no-deps -e . 2>&1 | grep -v 'is ignored' || true
  touch "$STAMP"
fi
.venv/bin/python -c "$CHECK" >/dev/null || {
  echo "bootstrap: .venv does not import the project; see pip's output above" >&2; exit 1; }
echo "bootstrap: ready ($(.venv/bin/python --version), $(podman --version), $LOCK)"
