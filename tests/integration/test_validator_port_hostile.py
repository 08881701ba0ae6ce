"""The validator port against strangers (issue 10, items 1-4): a real miner on loopback, raw
sockets from many loopback source addresses (127.0.1.0/24 is all loopback on Linux), and a real
validator key that must still get through."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import resource
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest

from horde_protocol.messages import V0ExecutorManifestRequest
from miner_agent.keys import load_hotkey
from miner_agent.miner_config import LocalExecutor
from miner_agent.selftest.simulator import ValidatorSim
from miner_agent.server import validator_ws
from miner_agent.server.conn_guard import PRE_AUTH_MAX_FRAME_BYTES, UNAUTH_PER_ADDRESS
from tests.fixtures.miner import echo_job_finishes, sim_for, write_config

pytestmark = pytest.mark.integration

HOSTILE_SOCKETS = 2000
HOSTILE_ADDRESSES = 100  # 20 sockets each: under the per-address cap, so only the total cap can save us
MANIFEST_WITHIN_S = 1.0
SYSTEMD_DEFAULT_NOFILE = 1024  # what a unit without LimitNOFILE gets


def _raise_fd_limit(need: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, need), hard))
    assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] >= need, "this machine's hard fd limit is too low"


async def _open(port: int, source: str = "127.0.0.1") -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))


async def _closed_within(reader: asyncio.StreamReader, seconds: float) -> bool:
    """True when the server closes (EOF or reset) within `seconds`."""
    try:
        while True:
            data = await asyncio.wait_for(reader.read(65536), seconds)
            if not data:
                return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False


async def test_idle_tcp_and_a_half_sent_header_are_closed_at_the_header_deadline(miner_config, start_miner) -> None:
    agent = await start_miner(miner_config)
    agent.ctx.guard.guard.header_timeout_s = 1.0
    idle_r, idle_w = await _open(agent.port)
    half_r, half_w = await _open(agent.port)
    half_w.write(b"GET /version HTTP/1.1\r\nHost: miner\r\nX-Slow: ")  # never finished
    await half_w.drain()
    t0 = time.monotonic()
    assert await _closed_within(idle_r, 5)
    assert await _closed_within(half_r, 5)
    assert time.monotonic() - t0 < 4
    # A complete request is served as before, and its connection is not cut at the header deadline.
    async with aiohttp.ClientSession() as http:
        async with http.get(f"http://127.0.0.1:{agent.port}/version") as resp:
            assert resp.status == 200
    assert agent.ctx.guard.guard.stats.closed_header_timeout >= 2
    for w in (idle_w, half_w):
        w.close()


async def test_a_websocket_that_never_sends_a_frame_is_refused_by_a_timer(miner_config, start_miner, validator_key,
                                                                          monkeypatch) -> None:
    monkeypatch.setattr(validator_ws, "AUTH_TIMEOUT_S", 1.0)
    agent = await start_miner(miner_config)
    sim = sim_for(agent, validator_key)
    async with await sim.connect(authenticate=False) as session:
        t0 = time.monotonic()
        got = await session.recv(5)  # no frame of ours ever arrives: only the timer can answer
        assert got.type == "GenericError"
        assert got.message.details == f"Validator {validator_key.ss58_address} not authenticated due to: no auth message in time"
        frame = await session.ws.receive(timeout=5)
        assert frame.type is aiohttp.WSMsgType.CLOSE and session.ws.close_code == 1000
        assert time.monotonic() - t0 < 3


async def test_one_address_cannot_take_more_than_its_share(miner_config, start_miner) -> None:
    agent = await start_miner(miner_config)
    mine = [await _open(agent.port, "127.0.1.1") for _ in range(UNAUTH_PER_ADDRESS)]
    extra_r, extra_w = await _open(agent.port, "127.0.1.1")
    assert await _closed_within(extra_r, 2)  # refused at once
    other_r, other_w = await _open(agent.port, "127.0.1.2")
    assert not await _closed_within(other_r, 0.5)  # another address is unaffected
    assert agent.ctx.guard.guard.unauthenticated == UNAUTH_PER_ADDRESS + 1
    for _, w in [*mine, (extra_r, extra_w), (other_r, other_w)]:
        w.close()


async def test_an_address_that_reconnects_as_fast_as_it_is_dropped_is_refused(miner_config, start_miner) -> None:
    """A burst, then NEW_CONNS_PER_ADDRESS_PER_S: reconnecting after every drop does not get a
    stranger a fresh pre-auth budget as fast as it can dial."""
    agent = await start_miner(miner_config)
    for _ in range(UNAUTH_PER_ADDRESS + 20):  # never more than one open at a time: only the rate can refuse
        _, writer = await _open(agent.port, "127.0.1.9")
        writer.close()
        await writer.wait_closed()
    await asyncio.sleep(0.3)
    stats = agent.ctx.guard.guard.stats
    assert stats.refused_per_address >= 10, stats
    other_r, other_w = await _open(agent.port, "127.0.1.10")
    assert not await _closed_within(other_r, 0.3)
    other_w.close()


async def test_a_far_future_auth_frame_is_refused_on_the_wire(miner_config, start_miner, validator_key) -> None:
    agent = await start_miner(miner_config)
    sim = sim_for(agent, validator_key)
    async with await sim.connect(authenticate=False) as session:
        stamp = int(time.time()) + 3600
        await session.send(sim.auth(timestamp=stamp))
        got = await session.recv(5)
        assert got.type == "GenericError"
        assert "msg from the future" in got.message.details
        await session.ws.receive(timeout=5)
        assert session.ws.close_code == 1000


async def test_pre_auth_frames_are_small_and_their_queue_is_capped(miner_config, start_miner, validator_key) -> None:
    agent = await start_miner(miner_config)
    sim = sim_for(agent, validator_key)
    async with await sim.connect(authenticate=False) as session:
        await session.ws.send_str("x" * (PRE_AUTH_MAX_FRAME_BYTES + 1))
        got = await session.recv(5)
        assert got.type == "GenericError" and "before authentication" in got.message.details
        await session.ws.receive(timeout=5)
        assert session.ws.close_code == 1000
    # Valid frames queued before auth: past the byte cap the socket closes with the reason.
    offer = sim.initial_request("always_on.test", "localhost/none:latest").model_dump_json()
    async with await sim.connect(authenticate=False) as session:
        for _ in range(validator_ws.MAX_QUEUED_FRAMES + 1):
            await session.ws.send_str(offer)
        got = await session.recv(5)
        assert got.type == "GenericError" and "Too many frames before authentication" in got.message.details
    # An offer queued before the auth frame still runs through once the handshake succeeds.
    async with await sim.connect(authenticate=False) as session:
        await session.ws.send_str(offer.replace("V0InitialJobRequest", "V0InitialJobRequest", 1))
        await session.send(sim.auth())
        assert (await session.recv(5)).type == "V0ExecutorManifestRequest"


async def test_a_garbage_flood_is_logged_once_per_interval_and_closed(miner_config, start_miner, validator_key,
                                                                      caplog) -> None:
    agent = await start_miner(miner_config)
    sim = sim_for(agent, validator_key)
    caplog.set_level(logging.WARNING, logger="miner_agent.server.validator_ws")
    async with await sim.connect() as session:
        await session.recv_until(V0ExecutorManifestRequest)
        for _ in range(validator_ws.GARBAGE_CLOSE_AFTER + 100):
            with contextlib.suppress(ConnectionError):
                await session.ws.send_str("x")
        errors = 0
        while True:
            frame = await session.ws.receive(timeout=5)
            if frame.type is not aiohttp.WSMsgType.TEXT:
                break
            errors += 1
        assert session.ws.close_code == 1000
        assert errors == validator_ws.GARBAGE_CLOSE_AFTER  # one answer per frame, then the close
    lines = [r for r in caplog.records if "malformed" in r.getMessage()]
    assert len(lines) <= 2, [r.getMessage() for r in lines]  # one per interval + the closing line


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def _listening(port: int, proc: subprocess.Popen[bytes], log_path: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert proc.poll() is None, log_path.read_text()[-3000:]
        with contextlib.suppress(OSError):
            _, w = await asyncio.open_connection("127.0.0.1", port)
            w.close()
            return
        await asyncio.sleep(0.2)
    pytest.fail(f"miner not listening: {log_path.read_text()[-3000:]}")


@pytest.mark.podman
async def test_2000_hostile_idle_sockets_do_not_lock_out_a_validator(miner_config, executor_agent, agent_config,
                                                                     busybox_image, validator_key, tmp_path) -> None:
    """`miner-agent run` as a process with systemd's default of 1,024 descriptors (the unit raises it;
    this shows the guard alone keeps the door open): 2,000 strangers' sockets, half idle, half with
    a header that never ends, then a validator connects, gets its manifest and runs a job."""
    _raise_fd_limit(HOSTILE_SOCKETS + 1024)
    port = _free_port()
    local = LocalExecutor(name="local", executor_class="always_on.test", socket=agent_config.socket_path)
    config = miner_config.model_copy(update={
        "executors": [local], "miner": miner_config.miner.model_copy(update={"listen_port": port})})
    log_path = tmp_path / "miner.log"
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "miner_agent", "run", "--config", str(write_config(tmp_path / "miner.toml", config))],
            stdout=log_file, stderr=subprocess.STDOUT,
            preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (SYSTEMD_DEFAULT_NOFILE, SYSTEMD_DEFAULT_NOFILE)),
        )
    hostile: list[asyncio.StreamWriter] = []
    try:
        await _listening(port, proc, log_path)
        sim = ValidatorSim(validator_key, load_hotkey(config.wallet.path, config.wallet.name, config.wallet.hotkey).hotkey,
                           f"http://127.0.0.1:{port}")
        for i in range(HOSTILE_SOCKETS):
            source = f"127.0.1.{1 + i % HOSTILE_ADDRESSES}"
            with contextlib.suppress(OSError):  # the miner may drop some as fast as we open them
                _, writer = await _open(port, source)
                if i % 2:
                    writer.write(b"GET /receipts/1.jsonl HTTP/1.1\r\nHost: miner\r\n")
                hostile.append(writer)
        await asyncio.sleep(0.5)
        t0 = time.monotonic()
        async with await sim.connect() as session:
            first = await session.recv(5)
            took = time.monotonic() - t0
        assert isinstance(first.message, V0ExecutorManifestRequest), first
        assert first.message.manifest == {"always_on.test": 1}, first.message
        assert took < MANIFEST_WITHIN_S, f"manifest after {took:.2f} s under a flood"
        await echo_job_finishes(sim, busybox_image, "still serving")
        assert "unauthenticated connections dropped" in log_path.read_text()
    finally:
        for writer in hostile:
            writer.close()
        proc.terminate()
        proc.wait(15)
