"""`miner-agent doctor` against a started miner with a local executor agent, and each failing
condition made real: the static chain announcing the wrong axon, a dynamic-config document
weighting our class 0, the executor agent stopped, a skewed chain clock.

The chain is the static backend's file (its [axons], [commitments] and clock_offset_s tables,
re-read on every doctor run); the public address comes from a loopback HTTP server standing in
for the discovery service. The agent's own report (podman, user namespaces, preloaded image,
the CVE-2022-0492 probe run in that image) reaches doctor over the link.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from bittensor_wallet import Keypair

from executor_agent.daemon.server import ExecutorAgent
from miner_agent.chain.chain_config import ChainSection, DynamicConfigSource
from miner_agent.daemon import MinerAgent
from miner_agent.miner_config import LocalExecutor, MinerConfig
from tests.fixtures.httpserver import LocalHttpServer, respond
from tests.fixtures.miner import run_cli, sim_for, write_config

pytestmark = pytest.mark.podman

PUBLIC_IP = "203.0.113.7"  # what the stand-in discovery service says this host is (TEST-NET-3)
CLASS = "always_on.cpu.8c.16gb"
PROBE_WAIT_S = 60.0


@dataclass
class Setup:
    miner: MinerAgent
    agent: ExecutorAgent
    config_path: Path
    chain_file: Path
    dynamic_file: Path
    validator: str

    def stage_chain(self, *, axon: str | None = None, clock_offset_s: float = 0.0) -> None:
        hotkey = self.miner.ctx.signer.hotkey  # type: ignore[union-attr]
        self.chain_file.write_text(
            f'validators = ["{self.validator}"]\nclock_offset_s = {clock_offset_s}\n'
            f'[axons]\n"{hotkey}" = "{axon or f"{PUBLIC_IP}:{self.miner.port}"}"\n'
            f'[commitments]\n"{hotkey}" = "<M:C1>"\n')

    def stage_weights(self, value: str) -> None:
        self.dynamic_file.write_text(f'DYNAMIC_EXECUTOR_CLASS_WEIGHTS = "{value}"\n')

    async def doctor(self) -> tuple[int, dict[str, dict[str, str]], str]:
        code, out, err = await run_cli("doctor", "--json", "--config", str(self.config_path))
        rows = {row["check"]: row for row in json.loads(out)["rows"]}
        return code, rows, err


@pytest.fixture
async def setup(tmp_path: Path, agent_config, busybox_image: str, miner_config: MinerConfig, start_miner,
                validator_key: Keypair, http_server: LocalHttpServer) -> Setup:
    agent = ExecutorAgent(agent_config.model_copy(
        update={"preload": agent_config.preload.model_copy(update={"images": [busybox_image]})}))
    await agent.start()
    chain_file, dynamic_file = tmp_path / "chain.toml", tmp_path / "dynamic.toml"
    chain_file.write_text(f'validators = ["{validator_key.ss58_address}"]\n')
    ip_url = http_server.route("GET", "/ip", respond(200, PUBLIC_IP.encode() + b"\n"))
    chain = ChainSection(static_validators_file=chain_file, ip_discovery_urls=[ip_url],
                         dynamic_config=DynamicConfigSource(source="file", path=dynamic_file))
    config = miner_config.model_copy(update={
        "executors": [LocalExecutor(name="local", executor_class=CLASS, socket=agent.config.socket_path)],
        "chain": chain})
    miner = await start_miner(config)
    config_path = write_config(tmp_path / "miner.toml", config)
    with config_path.open("a") as f:
        f.write(f'[chain]\nstatic_validators_file = "{chain_file}"\nip_discovery_urls = ["{ip_url}"]\n'
                f'[chain.dynamic_config]\nsource = "file"\npath = "{dynamic_file}"\n')
    s = Setup(miner, agent, config_path, chain_file, dynamic_file, validator_key.ss58_address)
    s.stage_chain()
    s.stage_weights(f"{CLASS}=100")
    assert await miner.ctx.fleet.links["local"].wait_up(10)  # type: ignore[union-attr]
    # a validator connects and fetches a receipt page, as a crediting one does
    session = await sim_for(miner, validator_key).connect()
    await session.recv()  # the manifest: authenticated
    await session.close()
    async with aiohttp.ClientSession() as http:
        async with http.get(f"http://127.0.0.1:{miner.port}/receipts/0.jsonl") as resp:
            assert resp.status in (200, 404)
    deadline = time.monotonic() + PROBE_WAIT_S
    while agent.health.probe[0] == "not checked" and "running" in agent.health.probe[1]:
        assert time.monotonic() < deadline, "the start-up CVE probe did not finish"
        await asyncio.sleep(0.2)
    yield s
    await agent.stop()


async def test_healthy_miner_passes_with_the_table(setup: Setup) -> None:
    code, out, err = await run_cli("doctor", "--config", str(setup.config_path))
    print("\n" + out)
    assert code == 0, out + err
    assert out.splitlines()[0].split() == ["CHECK", "RESULT", "WHAT", "TO", "DO"]
    code, rows, _ = await setup.doctor()
    results = {name: row["result"] for name, row in rows.items()}
    assert results.pop("collateral") == "not checked"  # static chain: nothing to read it from
    assert set(results.values()) == {"ok"}, json.dumps(rows, indent=1)
    for name in ("axon on chain", "axon port listening", "axon IP is public", "manifest commitment",
                 "validator connections", "executor classes weighted", "receipt pages fetched", "clock vs chain",
                 "executor local: link", "executor local: agent doctor"):
        assert name in rows
    probe = setup.agent.health.probe
    assert probe[0] == "ok" and "Contained: cannot escape via CVE-2022-0492" in probe[1], probe


async def test_wrong_axon_on_chain_fails(setup: Setup) -> None:
    setup.stage_chain(axon=f"198.51.100.9:{setup.miner.port + 1}")
    code, rows, _ = await setup.doctor()
    assert code == 1
    axon = rows["axon on chain"]
    assert axon["result"] == "FAIL" and "198.51.100.9" in axon["detail"] and str(setup.miner.port) in axon["detail"]
    assert rows["axon IP is public"]["result"] == "FAIL" and PUBLIC_IP in rows["axon IP is public"]["detail"]


async def test_class_weighted_zero_warns_and_names_the_weighted_ones(setup: Setup) -> None:
    setup.stage_weights(f"{CLASS}=0,spin_up-4min.gpu-24gb=100")
    code, rows, _ = await setup.doctor()
    row = rows["executor classes weighted"]
    assert row["result"] == "warn" and f"{CLASS} earns nothing" in row["detail"], row
    assert "weighted: spin_up-4min.gpu-24gb=100" in row["detail"]
    assert code == 0  # a warning, not a failure: the miner works, it just is not paid for it


async def test_executor_agent_down_fails(setup: Setup) -> None:
    await setup.agent.stop()
    link = setup.miner.ctx.fleet.links["local"]  # type: ignore[union-attr]
    for _ in range(50):
        if link.state.value != "up":
            break
        await asyncio.sleep(0.1)
    code, rows, _ = await setup.doctor()
    assert code == 1
    row = rows["executor local: link"]
    assert row["result"] == "FAIL" and "executor-agent" in row["fix"], row


async def test_skewed_clock_fails(setup: Setup) -> None:
    setup.stage_chain(clock_offset_s=-7200)  # the chain's block time is two hours behind ours
    code, rows, _ = await setup.doctor()
    assert code == 1
    row = rows["clock vs chain"]
    assert row["result"] == "FAIL" and "7200 s ahead" in row["detail"] and "timedatectl" in row["fix"], row
