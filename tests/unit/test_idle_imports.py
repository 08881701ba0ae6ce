"""What an idle agent has imported: only what its configured mode needs (issue 14, idle RSS < 60 MiB).

asyncssh (with cryptography, ~20 MiB resident) is for SSH executors, bittensor for the bittensor
chain backend, web3/eth-account for [collateral], podman-py for the executor agent. A miner with
local executors, the static chain backend and no [collateral] must start and serve without any
of them; whoever adds an import of one at module level on that path makes this test name it.

The miner is the real `miner-agent run` in a subprocess (started, then stopped with SIGTERM), so
imports made while starting up count too, not only those at module level.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from miner_agent.miner_config import MinerConfig
from tests.fixtures.imports import (
    NOT_FOR_A_LOCAL_STATIC_MINER,
    NOT_FOR_AN_EXECUTOR_AGENT,
    dump_on_exit_script,
    top_level_packages,
)
from tests.fixtures.miner import write_config

ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 20.0

def test_a_local_static_miner_runs_without_ssh_chain_or_collateral_libraries(
        tmp_path: Path, miner_config: MinerConfig) -> None:
    config = write_config(tmp_path / "miner.toml", miner_config)
    # No metrics listener: its fixed default port may be taken by another test run on this machine.
    config.write_text(config.read_text().replace("[miner]\n", "[miner]\nmetrics_enabled = false\n", 1))
    dump = tmp_path / "modules.json"
    script = dump_on_exit_script("miner_agent.commands.main", "run")
    proc = subprocess.Popen([sys.executable, "-c", script, str(dump), str(config)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not miner_config.admin_socket.exists():  # bound after the listener: the daemon is up
            assert proc.poll() is None, f"miner-agent run exited {proc.returncode}: {proc.stdout.read()!r}"
            assert time.monotonic() < deadline, "miner-agent run did not come up"
            time.sleep(0.05)
        time.sleep(0.5)  # the executor link's first connect attempt and the first ticks
        proc.send_signal(signal.SIGTERM)
        output = proc.communicate(timeout=START_TIMEOUT_S)[0].decode(errors="replace")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, output
    loaded = top_level_packages(dump)
    assert "aiohttp" in loaded  # the dump is of a daemon that served
    assert loaded & NOT_FOR_A_LOCAL_STATIC_MINER == set(), output


def test_the_executor_agent_serve_path_imports_no_miner_or_signing_libraries() -> None:
    """What `executor-agent serve` imports before it starts (starting needs podman, which the
    unit tier has not): the daemon and its job machinery, without signatures or certificates,
    which only streaming jobs need (made on first use)."""
    code = ("import json, sys\nimport executor_agent.cli, executor_agent.daemon.server\n"
            "print(json.dumps(sorted(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=START_TIMEOUT_S).stdout
    loaded = {name.split(".")[0] for name in json.loads(out)}
    assert "podman" in loaded
    assert loaded & NOT_FOR_AN_EXECUTOR_AGENT == set()
