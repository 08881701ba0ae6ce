"""`miner-agent self-test` against a running miner: a healthy one passes, broken ones fail loudly."""

from __future__ import annotations

import re

import pytest
from bittensor_wallet import Keypair

from miner_agent.miner_config import LocalExecutor
from miner_agent.selftest.simulator import ValidatorSim
from tests.fixtures.miner import run_cli, write_config

CLASS = "always_on.test"


@pytest.fixture
def selftest_config(miner_config, agent_config):
    local = LocalExecutor(name="local", executor_class=CLASS, socket=agent_config.socket_path)
    return miner_config.model_copy(update={"executors": [local]})


@pytest.mark.podman
async def test_healthy_miner_passes_every_check(selftest_config, start_miner, executor_agent, busybox_image,
                                                tmp_path) -> None:
    agent = await start_miner(selftest_config)
    assert await agent.ctx.fleet.links["local"].wait_up(10)
    cfg = write_config(tmp_path / "miner.toml", selftest_config)
    code, out, err = await run_cli("self-test", "--config", str(cfg), "--image", busybox_image)
    assert code == 0, out + err
    for check in ["auth, manifest, main hotkey", "/version", f"job on {CLASS}", f"receipts of the {CLASS} job"]:
        assert re.search(rf"^{re.escape(check)}.*\s+pass\s", out, re.M), (check, out)
    assert "self-test: 4 checks passed, 0 failed" in out
    # The one-time key was revoked when the self-test ended.
    key = re.search(r"as validator (\w+)", out).group(1)
    assert not agent.ctx.is_known_validator(key)


@pytest.mark.podman
async def test_broken_executor_fails_the_self_test(selftest_config, start_miner, executor_agent, tmp_path) -> None:
    # The executor is up but cannot run the job: its image is not there (the agent runs local_only).
    agent = await start_miner(selftest_config)
    assert await agent.ctx.fleet.links["local"].wait_up(10)
    cfg = write_config(tmp_path / "miner.toml", selftest_config)
    code, out, err = await run_cli("self-test", "--config", str(cfg), "--image", "localhost/never-preloaded:1")
    assert code == 1, out + err
    assert re.search(rf"^job on {CLASS}.*FAIL\s.*job did not finish: V0HordeFailedRequest", out, re.M), out
    assert "0 failed" not in out


async def test_no_reachable_executor_fails_the_self_test(miner_config, start_miner, tmp_path) -> None:
    await start_miner(miner_config)  # its only executor has no agent behind it
    cfg = write_config(tmp_path / "miner.toml", miner_config)
    code, out, _ = await run_cli("self-test", "--config", str(cfg), "--image", "any")
    assert code == 1
    assert "manifest advertises no executor" in out


async def test_selftest_key_is_only_for_the_selftest(miner_config, start_miner) -> None:
    """A key the admin socket never issued is refused like any stranger."""
    agent = await start_miner(miner_config)
    sim = ValidatorSim(Keypair.create_from_uri("//SelfTestImpostor"), agent.ctx.signer.hotkey,
                       f"http://127.0.0.1:{agent.port}")
    async with await sim.connect() as session:
        got = await session.recv(5)
    assert got.type == "GenericError" and got.message.details.startswith("Unknown validator")
