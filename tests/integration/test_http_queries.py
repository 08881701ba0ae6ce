"""`GET /v0.1/manifest` and `GET /v0.1/hotkey` on a started miner: the upstream HTTP shapes, with
the values the websocket gives, and no authentication asked for."""

from __future__ import annotations

import asyncio
import time

import aiohttp
from bittensor_wallet import Keypair

from horde_protocol.enums import ExecutorClass
from horde_protocol.messages import V0ExecutorManifestRequest, V0MainHotkeyMessage
from miner_agent.chain.chain_config import ChainSection
from miner_agent.miner_config import ExecutorManagerSection
from tests.fixtures.miner import sim_for
from tests.integration.test_executor_manager import FailingManager

ROTATION_HEAD = Keypair.create_from_uri("//Alice").ss58_address
MANIFEST = {"always_on.test": 2, "always_on.gpu-24gb": 1}
SETTLE_S = 10.0  # the validators duty reads the (static) block right after start


class TwoClassManager(FailingManager):
    """Advertises two classes; never asked to start anything here."""

    def get_manifest(self) -> dict[ExecutorClass, int]:
        return {ExecutorClass(k): v for k, v in MANIFEST.items()}


async def _get(port: int, path: str) -> tuple[int, str, dict]:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"http://127.0.0.1:{port}{path}") as resp:
            return resp.status, resp.content_type, await resp.json()


async def test_manifest_and_main_hotkey_over_http_match_the_websocket(miner_config, start_miner, miner_wallet,
                                                                       validator_key) -> None:
    _, signer = miner_wallet
    # Block 0 is in rotation cycle 0, so the main hotkey is the list's first: not our own.
    chain = ChainSection(static_block=0, hotkeys_for_main_hotkey_selection=[ROTATION_HEAD, signer.hotkey])
    agent = await start_miner(miner_config, executors=[], chain=chain, executor_manager=ExecutorManagerSection(
        class_path=f"{__name__}:TwoClassManager"))

    deadline = time.monotonic() + SETTLE_S
    while True:
        status, content_type, hotkey = await _get(agent.port, "/v0.1/hotkey")
        if hotkey != {"main_hotkey": signer.hotkey} or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.1)
    assert (status, content_type, hotkey) == (200, "application/json", {"main_hotkey": ROTATION_HEAD})
    status, content_type, manifest = await _get(agent.port, "/v0.1/manifest")
    assert (status, content_type, manifest) == (200, "application/json", {"manifest": MANIFEST})

    sim = sim_for(agent, validator_key)
    async with await sim.connect() as session:
        first = await session.recv_until(V0ExecutorManifestRequest)
        await session.send(V0MainHotkeyMessage())
        answer = await session.recv_until(V0MainHotkeyMessage)
    assert {"manifest": first.message.model_dump(mode="json")["manifest"]} == manifest
    assert answer.message.main_hotkey == hotkey["main_hotkey"]
