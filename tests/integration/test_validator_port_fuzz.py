"""Fuzzing the validator port with frames made from the protocol models (issue 10, "Proof"):
valid frames of every validator->miner type, then mutated values, types and sizes, unknown
message types and truncated JSON, before and after auth. The miner must not crash, log no
unhandled exception, keep its memory bounded and still run a good job afterwards."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import logging
import os
import random
from collections.abc import Callable, Iterator
from typing import Any

import aiohttp
import pytest

from horde_protocol.messages import V0ExecutorManifestRequest, V0JobRequest, V0MainHotkeyMessage
from miner_agent.miner_config import LocalExecutor
from miner_agent.selftest.simulator import ValidatorSim, inline_zip
from tests.fixtures.miner import echo_job_finishes, sim_for

pytestmark = [pytest.mark.integration, pytest.mark.podman]

FRAMES = 10_000
SEED = 20261201
RSS_GROWTH_LIMIT_MIB = 150  # the miner and this client share a process; both are counted
NASTY_VALUES: list[Any] = [None, 0, -1, 2**63, 1e308, "", "x" * 10_000, [], {}, [[[]]], True, "\u0000", "../../etc"]


def _rss_mib() -> float:
    with open(f"/proc/{os.getpid()}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def _seeds(sim: ValidatorSim) -> list[dict[str, Any]]:
    """One valid frame of each validator->miner type, as JSON objects."""
    initial = sim.initial_request("always_on.test", "localhost/none:latest",
                                  volume=inline_zip({"a.txt": b"a"}))
    request = V0JobRequest(job_uuid=initial.job_uuid, executor_class="always_on.test", docker_image="img",
                           docker_run_options_preset="none", docker_run_cmd=["true"], env={"A": "b"})
    frames = [sim.auth(), initial, request, sim.accepted_receipt(str(initial.job_uuid)), V0MainHotkeyMessage()]
    return [json.loads(frame.model_dump_json()) for frame in frames]


def _mutate(obj: Any, rng: random.Random) -> Any:
    """One random change somewhere in a JSON tree."""
    if isinstance(obj, dict) and obj and rng.random() < 0.8:
        key = rng.choice(sorted(obj))
        choice = rng.random()
        if choice < 0.25:
            del obj[key]
        elif choice < 0.6:
            obj[key] = copy.deepcopy(rng.choice(NASTY_VALUES))
        else:
            obj[key] = _mutate(obj[key], rng)
        return obj
    if isinstance(obj, list) and obj and rng.random() < 0.8:
        i = rng.randrange(len(obj))
        obj[i] = _mutate(obj[i], rng)
        return obj
    return copy.deepcopy(rng.choice(NASTY_VALUES))


def frames(seeds: list[dict[str, Any]], rng: random.Random, valid_auth: bool = True) -> Iterator[str]:
    """Endless fuzz frames; `valid_auth=False` never yields an auth frame that would pass, so the
    pre-auth phase stays before auth."""
    while True:
        frame = copy.deepcopy(rng.choice(seeds))
        kind = rng.random()
        if kind < 0.55:
            for _ in range(rng.randint(1, 3)):
                frame = _mutate(frame, rng)
            yield json.dumps(frame)
        elif kind < 0.7:
            frame["message_type"] = rng.choice(["V9Nope", "", "ValidatorAuthForMiner ", "v0jobrequest", 7])
            yield json.dumps(frame)
        elif kind < 0.85:
            text = json.dumps(frame)
            yield text[: rng.randrange(len(text))]  # truncated JSON
        elif kind < 0.95:
            yield rng.choice(["null", "[]", "{}", '"str"', "1e999", "[" * 5000, "{\"a\":" * 3000 + "1"])
        elif valid_auth or frame["message_type"] != "ValidatorAuthForMiner":
            yield json.dumps(frame)  # valid: some must get through so paths past parsing are hit


async def _send_all(sim: ValidatorSim, port: int, source: Iterator[str], n: int, authenticate: bool,
                    read: Callable[[], float]) -> int:
    """Send n frames the miner actually reads (each send waits until its frame counter moves, so
    nothing is lost in a socket the miner already closed), reconnecting whenever it closes one;
    returns the sockets used."""
    sent = sockets = 0
    while sent < n:
        sockets += 1
        async with aiohttp.ClientSession() as http:
            url = f"ws://127.0.0.1:{port}/v0.1/validator_interface/{sim.hotkey}"
            async with http.ws_connect(url, max_msg_size=64 * 1024 * 1024) as ws:
                if authenticate:
                    await ws.send_str(sim.auth().model_dump_json())
                reader = asyncio.create_task(_drain(ws))
                with contextlib.suppress(ConnectionError, RuntimeError):
                    while sent < n and not ws.closed:
                        before = read()
                        await ws.send_str(next(source))
                        for i in range(500):  # up to ~2 s for the miner (same loop) to read it
                            if read() > before or ws.closed or reader.done():
                                break
                            await asyncio.sleep(0 if i < 100 else 0.005)
                        if read() > before:
                            sent += 1
                        else:
                            break
                await ws.close()
                await reader
    return sockets


async def _drain(ws: aiohttp.ClientWebSocketResponse) -> None:
    async for _ in ws:
        pass


async def test_ten_thousand_fuzzed_frames_before_and_after_auth(miner_config, start_miner, executor_agent, agent_config,
                                                                busybox_image, validator_key, caplog) -> None:
    local = LocalExecutor(name="local", executor_class="always_on.test", socket=agent_config.socket_path)
    agent = await start_miner(miner_config.model_copy(update={"executors": [local]}))
    assert await agent.ctx.fleet.links["local"].wait_up(10)
    sim = sim_for(agent, validator_key)
    # Every garbage socket is closed and the sender reconnects at once from 127.0.0.1; the
    # per-address connection rate (tested in test_validator_port_hostile) would slow it down.
    agent.ctx.guard.guard.new_per_address_per_s = 1e9
    rng = random.Random(SEED)
    seeds = _seeds(sim)
    caplog.set_level(logging.WARNING)
    rss_before = _rss_mib()

    def frames_read() -> float:
        return sum(agent.ctx.metrics.validator_frames.values.values())

    pre = await _send_all(sim, agent.port, frames(seeds, rng, valid_auth=False), FRAMES // 2, False, frames_read)
    post = await _send_all(sim, agent.port, frames(seeds, rng), FRAMES - FRAMES // 2, True, frames_read)
    growth = _rss_mib() - rss_before
    received = agent.ctx.metrics.validator_frames.values
    by_auth = {auth: sum(v for k, v in received.items() if dict(k)["authenticated"] == auth) for auth in ("no", "yes")}

    crashes = [r for r in caplog.records if r.levelno >= logging.ERROR and (r.exc_info or "Traceback" in r.getMessage()
               or r.name.startswith("aiohttp"))]
    assert crashes == [], [f"{r.name}: {r.getMessage()}" for r in crashes[:5]]
    assert growth < RSS_GROWTH_LIMIT_MIB, f"RSS grew {growth:.0f} MiB over {FRAMES} frames"
    assert pre > 1 and post > 1  # garbage got sockets closed, and the miner took new ones
    # The miner read every frame (a valid auth among the fuzz moves later frames to "yes").
    assert sum(by_auth.values()) >= FRAMES and by_auth["no"] >= FRAMES // 2 and by_auth["yes"] >= FRAMES // 4, by_auth

    async with await sim.connect() as session:  # the port still serves, and a good job still runs
        assert isinstance((await session.recv(5)).message, V0ExecutorManifestRequest)
    await echo_job_finishes(sim, busybox_image, "survived")
