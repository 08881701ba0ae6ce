"""Dynamic configuration (behaviour.md §3) and public-IP discovery, against loopback HTTP only."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from miner_agent.chain.announce import IpDiscoveryError, discover_public_ipv4, parse_ipv4_answer
from miner_agent.chain.chain_config import DynamicConfigSource
from miner_agent.chain.dynamic import (
    DynamicConfig,
    DynamicConfigError,
    load_values,
    merge_documents,
    resolve_document,
    source_urls,
)

NOW = datetime(2026, 1, 21, 12, 0, tzinfo=timezone.utc)
IMAGES = ["backenddevelopersltd/compute-horde-job-echo:v0-latest", "docker.io/library/python:3.11-slim"]


def entry(*items: tuple[Any, str | None]) -> dict[str, Any]:
    return {"description": "d", "items": [{"value": v, "effective_from": w, "reason": None} for v, w in items]}


def test_last_applicable_item_wins_and_future_items_wait() -> None:
    doc = {
        "DYNAMIC_PRELOAD_DOCKER_JOB_IMAGES": entry((["old"], None), (IMAGES, "2026-01-01T00:00:00Z"),
                                                   (["future"], "2026-02-01T00:00:00")),
        "DYNAMIC_EXECUTOR_STARTUP_TIME_LIMIT": entry((7, None)),
        "DYNAMIC_ONLY_FUTURE": entry((1, "2030-01-01T00:00:00+00:00")),
        "NOT_DYNAMIC": entry((1, None)),
    }
    assert resolve_document(doc, NOW) == {"DYNAMIC_PRELOAD_DOCKER_JOB_IMAGES": IMAGES, "DYNAMIC_EXECUTOR_STARTUP_TIME_LIMIT": 7}


def test_plain_values_and_later_documents_override() -> None:
    miner = {"DYNAMIC_DUMMY": entry((1, None)), "DYNAMIC_RECEIPT_TRANSFER_ENABLED": True}
    common = {"DYNAMIC_DUMMY": entry((2, None))}
    assert merge_documents([miner, common], NOW) == {"DYNAMIC_DUMMY": 2, "DYNAMIC_RECEIPT_TRANSFER_ENABLED": True}


@pytest.mark.parametrize("doc", [[], {"DYNAMIC_X": {"items": "no"}}, {"DYNAMIC_X": {"items": [{"nope": 1}]}},
                                 {"DYNAMIC_X": {"items": [{"value": 1, "effective_from": "yesterday"}]}}])
def test_bad_documents_raise(doc: object) -> None:
    with pytest.raises(DynamicConfigError):
        resolve_document(doc, NOW)


def test_typed_values_and_a_bad_value_keeps_the_previous_one() -> None:
    first = DynamicConfig.from_values({"DYNAMIC_PRELOAD_DOCKER_JOB_IMAGES": IMAGES, "DYNAMIC_EXECUTOR_STARTUP_TIME_LIMIT": 9,
                                       "DYNAMIC_SOMETHING_NEW": {"a": 1}})
    assert first.preload_job_images == tuple(IMAGES) and first.executor_startup_time_limit_s == 9
    assert first.values["DYNAMIC_SOMETHING_NEW"] == {"a": 1}
    second = DynamicConfig.from_values({"DYNAMIC_PRELOAD_DOCKER_JOB_IMAGES": "not a list",
                                        "DYNAMIC_EXECUTOR_STARTUP_TIME_LIMIT": 4}, previous=first)
    assert second.preload_job_images == tuple(IMAGES) and second.executor_startup_time_limit_s == 4
    assert DynamicConfig().preload_job_images == () and DynamicConfig().executor_startup_time_limit_s == 5


async def test_file_source_toml_and_json(tmp_path: Path) -> None:
    toml = tmp_path / "dynamic.toml"
    toml.write_text('DYNAMIC_PRELOAD_DOCKER_JOB_IMAGES = ["a:1", "b:2"]\nDYNAMIC_DUMMY = 3\n')
    assert await load_values(DynamicConfigSource(source="file", path=toml), None, NOW) == {
        "DYNAMIC_PRELOAD_DOCKER_JOB_IMAGES": ["a:1", "b:2"], "DYNAMIC_DUMMY": 3}
    js = tmp_path / "dynamic.json"
    js.write_text(json.dumps({"DYNAMIC_PRELOAD_DOCKER_JOB_IMAGES": entry((IMAGES, None))}))
    assert await load_values(DynamicConfigSource(source="file", path=js), None, NOW) == {"DYNAMIC_PRELOAD_DOCKER_JOB_IMAGES": IMAGES}
    with pytest.raises(DynamicConfigError, match="missing"):
        await load_values(DynamicConfigSource(source="file", path=tmp_path / "missing.json"), None, NOW)
    assert await load_values(DynamicConfigSource(), None, NOW) is None


def test_default_urls_are_the_stock_github_pair() -> None:
    urls = source_urls(DynamicConfigSource(source="url", env="staging"))
    assert urls == [
        "https://raw.githubusercontent.com/backend-developers-ltd/compute-horde-dynamic-config/master/miner-config-staging.json",
        "https://raw.githubusercontent.com/backend-developers-ltd/compute-horde-dynamic-config/master/common-config-staging.json",
    ]


@pytest.fixture
async def config_server(aiohttp_server: Any) -> Any:
    seen: list[str] = []
    docs = {
        "/miner.json": {"DYNAMIC_PRELOAD_DOCKER_JOB_IMAGES": entry((["m"], None)), "DYNAMIC_DUMMY": entry((1, None))},
        "/common.json": {"DYNAMIC_PRELOAD_DOCKER_JOB_IMAGES": entry((IMAGES, None))},
    }

    async def handler(request: web.Request) -> web.StreamResponse:
        seen.append(request.headers.get("User-Agent", ""))
        if request.path == "/broken.json":
            return web.Response(status=500)
        if request.path == "/garbage.json":
            return web.Response(text="<html>")
        return web.json_response(docs[request.path])

    app = web.Application()
    app.router.add_get("/{name}", handler)
    server = await aiohttp_server(app, host="127.0.0.1")
    server.seen = seen
    return server


async def test_url_source_fetches_all_documents_common_last(config_server: Any) -> None:
    urls = [str(config_server.make_url("/miner.json")), str(config_server.make_url("/common.json"))]
    async with aiohttp.ClientSession() as session:
        values = await load_values(DynamicConfigSource(source="url", urls=urls), session, NOW)
    assert values == {"DYNAMIC_PRELOAD_DOCKER_JOB_IMAGES": IMAGES, "DYNAMIC_DUMMY": 1}
    assert config_server.seen == ["backend-developers-ltd", "backend-developers-ltd"]


@pytest.mark.parametrize("path", ["/broken.json", "/garbage.json"])
async def test_url_source_failure_is_one_error(config_server: Any, path: str) -> None:
    urls = [str(config_server.make_url("/miner.json")), str(config_server.make_url(path))]
    async with aiohttp.ClientSession() as session:
        with pytest.raises(DynamicConfigError, match=path.strip("/")):
            await load_values(DynamicConfigSource(source="url", urls=urls), session, NOW)


def test_parse_ipv4_answer() -> None:
    assert parse_ipv4_answer(b"203.0.113.7\n") == "203.0.113.7"
    for body in (b"", b"0.0.0.0", b"127.0.0.1", b"2001:db8::1", b"<html>", b"\xff"):
        assert parse_ipv4_answer(body) is None


async def test_ip_discovery_takes_the_first_good_answer(aiohttp_server: Any) -> None:
    async def bad(_: web.Request) -> web.Response:
        return web.Response(status=503)

    async def junk(_: web.Request) -> web.Response:
        return web.Response(text="rate limited")

    async def good(_: web.Request) -> web.Response:
        return web.Response(text="198.51.100.23\n")

    app = web.Application()
    app.router.add_get("/bad", bad)
    app.router.add_get("/junk", junk)
    app.router.add_get("/good", good)
    server = await aiohttp_server(app, host="127.0.0.1")
    urls = [str(server.make_url(p)) for p in ("/bad", "/junk", "/good")]
    async with aiohttp.ClientSession() as session:
        assert await discover_public_ipv4(session, urls) == "198.51.100.23"
        with pytest.raises(IpDiscoveryError, match="announce_ip"):
            await discover_public_ipv4(session, urls[:2])
