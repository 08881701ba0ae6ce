"""The /v0.1 query handlers on their own: a changed value is answered at once, and a failure is the
stock 500 body without the cause (that goes to the journal)."""

from __future__ import annotations

import logging
from types import SimpleNamespace
from typing import Any

import pytest
from aiohttp import web

from miner_agent.server.context import CTX
from miner_agent.server.queries import add_query_routes


class Fleet:
    def __init__(self) -> None:
        self.counts: dict[str, int] | Exception = {"always_on.test": 1}

    def manifest(self) -> dict[str, int]:
        if isinstance(self.counts, Exception):
            raise self.counts
        return dict(self.counts)


@pytest.fixture
async def served(aiohttp_client: Any) -> tuple[Any, SimpleNamespace]:
    ctx = SimpleNamespace(fleet=Fleet(), hotkey="5Own")
    ctx.main_hotkey = lambda: ctx.hotkey
    app = web.Application()
    app[CTX] = ctx  # type: ignore[misc]  # only the two attributes the handlers read
    add_query_routes(app)
    return await aiohttp_client(app), ctx


async def test_answers_follow_the_values(served: tuple[Any, SimpleNamespace]) -> None:
    client, ctx = served
    for _ in range(2):  # the second answer comes from the kept body
        resp = await client.get("/v0.1/manifest")
        assert resp.status == 200 and await resp.json() == {"manifest": {"always_on.test": 1}}
    ctx.fleet.counts = {"always_on.test": 1, "always_on.gpu-24gb": 4}
    assert await (await client.get("/v0.1/manifest")).json() == {
        "manifest": {"always_on.test": 1, "always_on.gpu-24gb": 4}}
    assert await (await client.get("/v0.1/hotkey")).json() == {"main_hotkey": "5Own"}
    ctx.hotkey = "5Next"
    assert await (await client.get("/v0.1/hotkey")).json() == {"main_hotkey": "5Next"}


async def test_a_failure_is_the_stock_500_and_a_journal_line(served: tuple[Any, SimpleNamespace],
                                                             caplog: pytest.LogCaptureFixture) -> None:
    client, ctx = served
    ctx.fleet.counts = RuntimeError("manager exploded at /secret/path")
    with caplog.at_level(logging.ERROR, logger="miner_agent.server.queries"):
        resp = await client.get("/v0.1/manifest")
    assert resp.status == 500 and await resp.json() == {"error": "Could not get manifest"}
    assert "manifest query failed" in caplog.text
    ctx.fleet.counts = {"unknown.class": 1}  # a class validators reject would void the whole manifest
    assert (await client.get("/v0.1/manifest")).status == 500
