#!/usr/bin/env bash
# Installs everything the agents and the test suite need on a Debian 12 machine, as root:
# podman (+runc), sshd, iproute2 from apt, and a virtualenv at .venv with the project
# installed in editable mode. Idempotent: a second run only checks.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(podman runc fuse-overlayfs busybox-static openssh-server openssh-client iproute2 python3-venv)
missing=()
for p in "${APT_PACKAGES[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  echo "bootstrap: installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
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
if [ ! -x .venv/bin/python ]; then
  echo "bootstrap: creating .venv"
  "$PYTHON" -m venv .venv
fi
if ! .venv/bin/python -c 'import miner_agent, executor_agent, pytest_aiohttp' 2>/dev/null \
   || [ pyproject.toml -nt .venv/.installed ]; then
  echo "bootstrap: pip install -e .[test]"
  .venv/bin/pip install -q --disable-pip-version-check -e '.[test]' 2>&1 | grep -v 'is ignored' || true
  touch .venv/.installed
fi
.venv/bin/python -c 'import miner_agent, executor_agent' >/dev/null
echo "bootstrap: ready ($(.venv/bin/python --version), $(podman --version))"

# The validators' own models (compute-horde, PyPI) in a separate venv: a test-only
# conformance oracle, never importable by the agents.
bash scripts/oracle-venv.sh
