"""The small-range path for receipt pages answers exactly as aiohttp's FileResponse does (issue 14).

Both are served side by side from one real page file by a real aiohttp server; the status, the
headers in wire order and casing (less Date) and the body must match for every request a
validator sends, and requests the small path does not take must still reach FileResponse."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from aiohttp import hdrs, web
from aiohttp.test_utils import TestClient

from miner_agent.server.http import PAGE_CONTENT_TYPE, SMALL_RANGE_MAX_BYTES, small_open_range

PAGE_LINES = 40
PAD = 600
PAGE_BYTES = sum(len(f'{{"receipt":{i},"pad":"{"x" * PAD}"}}\n') for i in range(PAGE_LINES))


def _app(page: Path) -> web.Application:
    async def file_response(request: web.Request) -> web.StreamResponse:
        return web.FileResponse(page, headers={hdrs.CONTENT_TYPE: PAGE_CONTENT_TYPE})

    async def small_or_file(request: web.Request) -> web.StreamResponse:
        return small_open_range(request, page) or await file_response(request)

    app = web.Application()
    app.router.add_get("/file", file_response)
    app.router.add_get("/small", small_or_file)
    return app


@pytest.fixture
async def client(tmp_path: Path, aiohttp_client: Callable[[web.Application], Awaitable[TestClient]]) -> TestClient:
    page = tmp_path / "123.jsonl"
    page.write_text("".join(f'{{"receipt":{i},"pad":"{"x" * PAD}"}}\n' for i in range(PAGE_LINES)))
    assert page.stat().st_size == PAGE_BYTES
    (tmp_path / "123.jsonl.gz").write_bytes(b"\x1f\x8b not really")  # an archive sibling, as maintenance leaves
    return await aiohttp_client(_app(page))


async def _seen(client: TestClient, path: str, headers: dict[str, str]) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    async with client.get(path, headers=headers, auto_decompress=False) as resp:
        raw = [(k, v) for k, v in resp.raw_headers if k.lower() != b"date"]
        return resp.status, raw, await resp.read()


@pytest.mark.parametrize("headers", [
    {"Range": "bytes=0-", "Accept-Encoding": ""},
    {"Range": "bytes=1000-", "Accept-Encoding": ""},
    {"Range": "bytes=24000-"},
    {"Range": "bytes=999999-", "Accept-Encoding": ""},  # nothing new: 416
    {"Range": f"bytes={PAGE_BYTES}-", "Accept-Encoding": ""},  # exactly up to date: 416
    {"Range": "bytes=0-99", "Accept-Encoding": ""},  # not an open range: FileResponse
    {"Range": "bytes=0-", "Accept-Encoding": "gzip"},  # the .gz sibling: FileResponse
    {"Range": "bytes=0-", "If-None-Match": "*"},
    {"Accept-Encoding": ""},  # a whole-page fetch: 200
])
async def test_every_validator_request_gets_what_fileresponse_gives(client: TestClient, headers: dict[str, str]) -> None:
    assert await _seen(client, "/small", headers) == await _seen(client, "/file", headers)


async def test_the_small_path_is_the_one_taken_for_an_open_range(client: TestClient, tmp_path: Path) -> None:
    status, raw, body = await _seen(client, "/small", {"Range": "bytes=1000-", "Accept-Encoding": ""})
    assert status == 206 and dict(raw)[b"Content-Range"].startswith(b"bytes 1000-")
    page = tmp_path / "123.jsonl"
    assert body == page.read_bytes()[1000:]
    request_headers = {"Range": "bytes=0-"}

    class Request:
        method = "GET"
        headers = request_headers

    assert small_open_range(Request(), page) is not None  # type: ignore[arg-type]
    Request.headers = {"Range": f"bytes={PAGE_BYTES}-"}
    nothing_new = small_open_range(Request(), page)  # type: ignore[arg-type]
    assert nothing_new is not None and nothing_new.status == 416
    Request.headers = request_headers
    page.write_bytes(b"x" * (SMALL_RANGE_MAX_BYTES + 1))
    assert small_open_range(Request(), page) is None  # type: ignore[arg-type]  # sendfile's job
