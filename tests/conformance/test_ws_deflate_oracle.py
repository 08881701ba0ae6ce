"""The validators' websocket library (python `websockets`, as compute-horde 0.0.27 pins it, in
.venv-oracle) reads what the miner's permessage-deflate without server context takeover writes
(miner_agent/server/ws_deflate.py): it accepts the negotiated extension, and every message, small,
a busy decline's size, one large enough to be compressed off the loop, the same text twice, and
busy declines built from shared pieces (each piece compressed on its own, the recurring ones
reused), arrives whole and in order, also when sent back to back on one socket. aiohttp's client is checked the same way (the
benches and the self-test use it)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import random
import string
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from horde_protocol.enums import JobRejectionReason
from horde_protocol.messages import V0DeclineJobRequest
from miner_agent.jobs.decline import SplicedText, decline_json
from miner_agent.server.ws_deflate import OFF_LOOP_MIN_BYTES, StatelessDeflateResponse
from tests.conformance.test_oracle import ORACLE_PYTHON
from tests.fixtures.httpserver import start_server

# Sizes sent in this order on one socket: tiny, manifest-like, a busy decline with ~60 excuses, then
# one past the off-loop threshold between two small ones (the small must not overtake it).
SIZES = [2, 1_500, 40_000, 10, OFF_LOOP_MIN_BYTES + 5_000, 7]
CLIENT_TIMEOUT_S = 60

# Runs in .venv-oracle: the stock library's defaults (compression="deflate"), as compute-horde connects.
_STOCK_CLIENT = """
import asyncio, hashlib, json, sys
import websockets

async def main():
    async with websockets.connect(sys.argv[1], max_size=50 * 2**20) as ws:
        print(json.dumps({"extensions": ws.response.headers.get("Sec-WebSocket-Extensions")}), flush=True)
        await ws.send("go")
        for _ in range(int(sys.argv[2])):
            text = await ws.recv()
            print(json.dumps({"len": len(text), "sha": hashlib.sha256(text.encode()).hexdigest()}), flush=True)

asyncio.run(main())
"""


def _messages() -> list[str | SplicedText]:
    rnd = random.Random(14)
    # JSON-like text with hex runs, which compresses about as a decline does.
    alphabet = string.ascii_letters + string.digits + '{}":,' + "0123456789abcdef" * 4
    texts = ["".join(rnd.choices(alphabet, k=n)) for n in SIZES]
    # The same text again: with the compressor's context kept it would be a back-reference into the
    # previous message, which the client (a fresh decoder per message) could not resolve.
    return [*texts, texts[2], texts[2], *_spliced_declines(rnd, alphabet)]


def _spliced_declines(rnd: random.Random, alphabet: str) -> list[SplicedText]:
    """Three busy declines as a burst sends them: each with the previous one's excuses and more."""
    lines = ['{"r":"' + "".join(rnd.choices(alphabet.replace('"', ""), k=640)) + '"}' for _ in range(70)]
    decline = V0DeclineJobRequest(job_uuid="7b3e2a0c-4a55-4c1e-9d0e-0d4c8f1b2a6e", reason=JobRejectionReason.BUSY,
                                  message="all executors of the class are busy")
    declines = [decline_json(decline, lines[:n]) for n in (40, 41, 70)]
    assert all(isinstance(d, SplicedText) and d.blocks for d in declines)  # >= 32 lines: a block at least
    return declines


@contextlib.asynccontextmanager
async def _server(messages: list[str]) -> AsyncIterator[str]:
    """The test's own loopback server (tests/fixtures/httpserver.py) with one websocket route; yields its ws:// URL."""
    async def handler(request: web.Request) -> web.WebSocketResponse:
        ws = StatelessDeflateResponse()
        await ws.prepare(request)
        await ws.receive()
        # All sent without waiting for each other, so their order is the writer's to keep.
        await asyncio.gather(*(ws.send_str(m) for m in messages))
        await ws.receive()  # until the client closes
        return ws

    async with start_server() as server:
        yield server.route("GET", "/ws", handler).replace("http://", "ws://", 1)


async def test_the_stock_websockets_client_reads_every_message() -> None:
    if not ORACLE_PYTHON.exists():
        pytest.fail(f"{ORACLE_PYTHON} is missing: run scripts/oracle-venv.sh", pytrace=False)
    messages = _messages()
    async with _server(messages) as url:
        proc = await asyncio.create_subprocess_exec(
            str(ORACLE_PYTHON), "-c", _STOCK_CLIENT, url, str(len(messages)),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(proc.communicate(), CLIENT_TIMEOUT_S)
        assert proc.returncode == 0, err.decode()[-3000:]
    lines = [json.loads(line) for line in out.decode().splitlines()]
    assert lines[0]["extensions"] == "permessage-deflate; server_no_context_takeover"
    assert lines[1:] == [{"len": len(str(m)), "sha": hashlib.sha256(str(m).encode()).hexdigest()} for m in messages]


async def _aiohttp_reads(compress: int) -> list[str]:
    """What aiohttp's client, negotiating deflate with `compress` window bits (0: none), receives."""
    messages = _messages()
    async with _server(messages) as url, aiohttp.ClientSession() as http, http.ws_connect(
            url, compress=compress, max_msg_size=2**24) as ws:
        assert ws.compress == compress
        await ws.send_str("go")
        return [(await ws.receive(timeout=CLIENT_TIMEOUT_S)).data for _ in messages]


async def test_aiohttps_client_reads_every_message_compressed() -> None:
    assert await _aiohttp_reads(15) == [str(m) for m in _messages()]


async def test_a_client_without_deflate_gets_plain_frames() -> None:
    assert await _aiohttp_reads(0) == [str(m) for m in _messages()]
