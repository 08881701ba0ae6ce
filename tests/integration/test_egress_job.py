"""The issue's own case end to end: a job whose volume URL points at a service on this host's
loopback (the miner's metrics) fails as the job's fault, with the refused address named, and
an upload to loopback fails the same way; the agent runs with the default (empty) allowlist.
Real executor agent, real podman, a real server on 127.0.0.1."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from yarl import URL

from executor_agent.daemon.server import ExecutorAgent
from executor_agent.executor_config import AgentConfig, EgressSettings
from tests.fixtures.httpserver import LocalHttpServer, respond, serve_bytes
from tests.fixtures.podman import LinkClient
from tests.integration.test_executor_agent import run_job, types

pytestmark = pytest.mark.podman


@pytest.fixture
async def default_egress_client(agent_config: AgentConfig) -> AsyncIterator[LinkClient]:
    """An agent as installed: `[egress] allow` left at its default, []."""
    agent = ExecutorAgent(agent_config.model_copy(update={"egress": EgressSettings()}))
    await agent.start()
    client = await LinkClient.connect(agent.config.socket_path)
    await client.recv()  # hello
    try:
        yield client
    finally:
        await client.close()
        await agent.stop()


async def test_metrics_url_as_volume_is_the_jobs_failure(default_egress_client: LinkClient, busybox_image: str,
                                                         http_server: LocalHttpServer) -> None:
    metrics = http_server.route("GET", "/metrics", serve_bytes(b"miner_secret 42\n"))
    port = URL(metrics).port
    volume: dict[str, Any] = {"volume_type": "single_file", "url": metrics, "relative_path": "m.txt"}
    _, events = await run_job(default_egress_client, busybox_image, ["cat", "/volume/m.txt"], volume=volume)
    failed = events[-1].message
    assert types(events) == ["V0ExecutorReadyRequest", "V0JobFailedRequest"]
    assert (failed.reason, failed.stage) == ("download_failed", "volume_download")
    assert failed.message.startswith(f"Download failed: single_file {metrics}: refused to connect to "
                                     f"127.0.0.1:{port}: a loopback address"), failed.message
    assert http_server.requests == []


async def test_upload_to_loopback_is_the_jobs_failure(default_egress_client: LinkClient, busybox_image: str,
                                                      http_server: LocalHttpServer) -> None:
    url = http_server.route("PUT", "/up", respond(200, b"stored"))
    _, events = await run_job(default_egress_client, busybox_image, ["sh", "-c", "echo x > /output/r.txt"],
                              output_upload={"output_upload_type": "zip_and_http_put", "url": url})
    failed = events[-1].message
    assert (failed.message_type, failed.reason, failed.stage, failed.message) == (
        "V0JobFailedRequest", "upload_failed", "result_upload", "Upload failed")
    assert http_server.requests == []
