"""The executor agent's /metrics listener (executor_agent/daemon/metrics_endpoint.py) on a real
loopback socket: Prometheus gets its text, anything else a short refusal, and a stranger on the
port can hold no more than the documented bounds."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import aiohttp
import pytest

from executor_agent.daemon import metrics_endpoint
from executor_agent.daemon.metrics_endpoint import MAX_REQUEST_HEAD_BYTES, MetricsEndpoint

BODY = '# HELP executor_agent_up 1\n# TYPE executor_agent_up gauge\nexecutor_agent_up 1\n'


class _Metrics:
    """What the endpoint asks of ExecutorMetrics: the rendered text, at scrape time."""

    scrapes = 0

    async def render(self) -> str:
        self.scrapes += 1
        return BODY


@contextlib.asynccontextmanager
async def _endpoint() -> AsyncIterator[tuple[MetricsEndpoint, _Metrics]]:
    metrics = _Metrics()
    endpoint = MetricsEndpoint(metrics, "127.0.0.1", 0)  # type: ignore[arg-type]
    task = asyncio.create_task(endpoint.run())
    for _ in range(200):
        if endpoint.bound_port:
            break
        await asyncio.sleep(0.01)
    try:
        yield endpoint, metrics
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def _raw(port: int, request: bytes) -> bytes:
    """The whole answer; b"" for a connection closed unanswered (a reset, if our request was unread)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    try:
        return await asyncio.wait_for(reader.read(), 5)
    except ConnectionResetError:
        return b""
    finally:
        writer.close()


async def test_prometheus_gets_the_text_and_other_requests_a_refusal() -> None:
    async with _endpoint() as (endpoint, metrics), aiohttp.ClientSession() as http:
        base = f"http://127.0.0.1:{endpoint.bound_port}"
        async with http.get(base + "/metrics") as r:
            assert r.status == 200 and await r.text() == BODY
            assert r.headers["Content-Type"].startswith("text/plain") and r.charset == "utf-8"
        async with http.head(base + "/metrics") as r:
            assert r.status == 200 and int(r.headers["Content-Length"]) == len(BODY)
        async with http.get(base + "/") as r:
            assert r.status == 404
        async with http.post(base + "/metrics", data=b"x") as r:
            assert r.status == 405 and r.headers["Allow"] == "GET, HEAD"
        assert metrics.scrapes == 2


async def test_an_oversized_or_unfinished_request_is_closed_unanswered(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(metrics_endpoint, "REQUEST_TIMEOUT_S", 0.3)
    async with _endpoint() as (endpoint, metrics):
        port = endpoint.bound_port
        assert await _raw(port, b"GET /metrics HTTP/1.1\r\nX-Pad: " + b"a" * MAX_REQUEST_HEAD_BYTES + b"\r\n\r\n") == b""
        assert await _raw(port, b"GET /metrics HTTP/1.1\r\n") == b""  # never finished: closed at the timeout
        assert metrics.scrapes == 0
        assert (await _raw(port, b"GET /metrics HTTP/1.0\r\n\r\n")).startswith(b"HTTP/1.1 200 OK\r\n")


async def test_connections_past_the_cap_are_closed_while_the_held_ones_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(metrics_endpoint, "MAX_SCRAPES", 2)
    async with _endpoint() as (endpoint, _):
        port = endpoint.bound_port
        held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(2)]
        await asyncio.sleep(0.1)
        assert await _raw(port, b"GET /metrics HTTP/1.1\r\n\r\n") == b""
        for _, writer in held:
            writer.close()
        await asyncio.sleep(0.1)
        assert (await _raw(port, b"GET /metrics HTTP/1.1\r\n\r\n")).startswith(b"HTTP/1.1 200 OK\r\n")


async def test_a_port_in_use_is_logged_and_the_agent_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    async with _endpoint() as (endpoint, _):
        second = MetricsEndpoint(_Metrics(), "127.0.0.1", endpoint.bound_port)  # type: ignore[arg-type]
        await asyncio.wait_for(second.run(), 5)  # returns instead of raising
        assert second.bound_port is None
        assert "metrics not served" in caplog.text
