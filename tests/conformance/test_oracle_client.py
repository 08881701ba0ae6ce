"""compute-horde 0.0.27's own validator client (OrganicMinerClient, in .venv-oracle) against a real
miner on loopback: it authenticates, reads the manifest, and after the miner drops its socket it
reconnects and re-authenticates with a fresh greeting by itself, so the future-skew bound and the
pre-auth limits (issue 10) do not get in the way of the stock client. Then a §12-signed offer
made by the client is answered (declined busy: no executor runs here)."""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from pathlib import Path

import pytest
from bittensor_wallet import Keypair

from tests.conformance.test_oracle import ORACLE_PYTHON

CLIENT = Path(__file__).with_name("oracle_client.py")
VALIDATOR_URI = "//OracleValidator"


async def _line(proc: asyncio.subprocess.Process, prefix: str) -> str:
    assert proc.stdout is not None
    while True:
        try:
            raw = await asyncio.wait_for(proc.stdout.readline(), 30)
        except TimeoutError:
            proc.kill()
            err = (await proc.stderr.read()).decode()[-3000:] if proc.stderr else ""
            pytest.fail(f"oracle client said no {prefix} in 30 s: {err}")
        if not raw:
            err = (await proc.stderr.read()).decode()[-3000:] if proc.stderr else ""
            pytest.fail(f"oracle client ended before {prefix}: {err}")
        line = raw.decode().strip()
        if line.startswith(prefix):
            return line[len(prefix):].strip()


async def test_the_stock_client_reconnects_and_reauthenticates(miner_config, start_miner, caplog) -> None:
    if not ORACLE_PYTHON.exists():
        pytest.fail(f"{ORACLE_PYTHON} is missing: run scripts/oracle-venv.sh", pytrace=False)
    validator = Keypair.create_from_uri(VALIDATOR_URI).ss58_address
    config = miner_config.model_copy(update={"validators": miner_config.validators.model_copy(update={"allow": [validator]})})
    agent = await start_miner(config)
    caplog.set_level(logging.INFO, logger="miner_agent.server.validator_ws")
    proc = await asyncio.create_subprocess_exec(
        str(ORACLE_PYTHON), str(CLIENT), stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    try:
        assert proc.stdin is not None
        proc.stdin.write(json.dumps({
            "host": "127.0.0.1", "port": agent.port, "miner_hotkey": agent.ctx.signer.hotkey,
            "validator_uri": VALIDATOR_URI, "job_uuid": str(uuid.uuid4()), "executor_class": "always_on.test",
        }).encode() + b"\n")
        await proc.stdin.drain()
        assert json.loads(await _line(proc, "MANIFEST")) == {}
        for handler in list(agent.ctx.validator_sockets):  # the miner drops the socket (a restart would)
            await handler.ws.close()
        for _ in range(100):
            authenticated = [r for r in caplog.records if "validator authenticated" in r.getMessage()]
            if len(authenticated) >= 2:
                break
            await asyncio.sleep(0.1)
        assert len(authenticated) >= 2, "the stock client did not re-authenticate after the drop"
        proc.stdin.write(b"offer\n")
        await proc.stdin.drain()
        assert await _line(proc, "ANSWER") == "V0DeclineJobRequest busy"
        assert await asyncio.wait_for(proc.wait(), 15) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
