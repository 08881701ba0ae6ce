#!/usr/bin/env bash
# One command from a fresh Debian 12 or 13 machine to a running miner with a local
# executor, on embedded defaults, and one job sent through it by a demo validator.
#
#   sudo bash scripts/quickstart.sh         set up, start, send a demo job
#   sudo bash scripts/quickstart.sh stop    stop what it started
# (as root, where sudo is not installed: bash scripts/quickstart.sh)
#
# It installs only what the miner needs (scripts/bootstrap.sh: podman, requirements/miner.txt);
# nothing test-only.
#
# Everything lives in .quickstart/ in this checkout: configs, wallets (unencrypted,
# demo only), SQLite state, job dirs, logs. The miner listens on 0.0.0.0:8000 like the
# stock miner; the demo validator connects over loopback.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
QS=$REPO/.quickstart
export CONTAINERS_CONF=$REPO/packaging/podman/containers.conf
IMAGE=localhost/miner-agent-demo:latest

stop() {
  for name in miner-agent executor-agent podman; do
    if [ -f "$QS/run/$name.pid" ]; then
      kill "$(cat "$QS/run/$name.pid")" 2>/dev/null && echo "quickstart: stopped $name" || true
      rm -f "$QS/run/$name.pid"
    fi
  done
}
if [ "${1:-}" = "stop" ]; then stop; exit 0; fi
if [ "$(id -u)" != 0 ]; then
  echo "quickstart: needs root (podman, apt); run it as root, or with sudo: sudo bash scripts/quickstart.sh" >&2
  exit 1
fi

bash scripts/bootstrap.sh
stop
mkdir -p "$QS"/{run,state,jobs,logs,wallets}

echo "quickstart: podman API service on $QS/run/podman.sock"
rm -f "$QS/run/podman.sock"
(cd "$QS/run" && exec nohup podman system service --time=0 "unix://$QS/run/podman.sock" >"$QS/logs/podman.log" 2>&1) &
echo $! >"$QS/run/podman.pid"
for _ in $(seq 100); do [ -S "$QS/run/podman.sock" ] && break; sleep 0.1; done

if ! podman image exists "$IMAGE"; then
  echo "quickstart: building the demo job image $IMAGE from busybox (no registry needed)"
  rootfs=$(mktemp -d)
  mkdir -p "$rootfs/bin" && cp /bin/busybox "$rootfs/bin/busybox"
  for tool in sh cat echo hostname sleep ls; do ln -s busybox "$rootfs/bin/$tool"; done
  tar -C "$rootfs" -cf "$rootfs.tar" . && podman import -q --change 'CMD ["/bin/sh"]' "$rootfs.tar" "$IMAGE" >/dev/null
  rm -rf "$rootfs" "$rootfs.tar"
fi

VALIDATOR=$(.venv/bin/python - "$QS/wallets" <<'PY'
import sys
from pathlib import Path
from miner_agent.keys import create_wallet
wallets = Path(sys.argv[1])
create_wallet(wallets, "miner", "default")
print(create_wallet(wallets, "validator", "default").hotkey)
PY
)
# The class validators pay for today: production's DYNAMIC_EXECUTOR_CLASS_WEIGHTS has been
# always_on.cpu.8c.16gb=100 since 2026-01, so a GPU class (or always_on.test) would earn nothing.
# A GPU host moves to a GPU class only once the weights give it one; `miner-agent doctor` says so.
CLASS=always_on.cpu.8c.16gb
if command -v nvidia-smi >/dev/null 2>&1; then
  echo "quickstart: GPU found; advertising $CLASS anyway, the only class validators weight today." \
       "Switch executor_class when DYNAMIC_EXECUTOR_CLASS_WEIGHTS weights a GPU class (miner-agent doctor shows it)"
fi

cat >"$QS/executor-agent.toml" <<TOML
socket_path = "$QS/run/agent.sock"
jobs_dir = "$QS/jobs"
podman_url = "unix://$QS/run/podman.sock"
TOML
[ -f "$QS/miner-agent.toml" ] || cat >"$QS/miner-agent.toml" <<TOML
# Quickstart miner: every key not set here keeps its embedded default (docs/configuration.md).
[miner]
state_dir = "$QS/state"

[wallet]
path = "$QS/wallets"
name = "miner"
hotkey = "default"

[validators]
allow = ["$VALIDATOR"]   # the demo validator; real ones come from the chain later

[[executors]]
name = "local"
executor_class = "$CLASS"
mode = "local"
socket = "$QS/run/agent.sock"
TOML

echo "quickstart: starting executor-agent and miner-agent (logs in $QS/logs)"
nohup .venv/bin/executor-agent serve --config "$QS/executor-agent.toml" >"$QS/logs/executor-agent.log" 2>&1 &
echo $! >"$QS/run/executor-agent.pid"
nohup .venv/bin/miner-agent run --config "$QS/miner-agent.toml" >"$QS/logs/miner-agent.log" 2>&1 &
echo $! >"$QS/run/miner-agent.pid"
for _ in $(seq 100); do
  .venv/bin/python -c 'import socket; socket.create_connection(("127.0.0.1", 8000), 0.2)' 2>/dev/null && break
  sleep 0.1
done
sleep 0.5  # let the miner's link to the executor come up

echo "quickstart: sending a demo job as validator $VALIDATOR"
if .venv/bin/miner-agent demo-job --config "$QS/miner-agent.toml" --validator-wallet-path "$QS/wallets" \
     --validator-wallet validator --image "$IMAGE"; then
  echo "quickstart: the miner is running on port 8000. Logs: $QS/logs/. Stop: sudo bash scripts/quickstart.sh stop"
  echo "quickstart: what validators would see of it: .venv/bin/miner-agent doctor --config $QS/miner-agent.toml"
else
  echo "quickstart: the demo job failed; see $QS/logs/miner-agent.log and executor-agent.log" >&2
  exit 1
fi
