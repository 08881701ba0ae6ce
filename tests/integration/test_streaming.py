"""Streaming jobs on a real podman: mutual TLS through the agent's proxy to a busybox httpd."""

from __future__ import annotations

import asyncio
import socket
import ssl
import tempfile
import uuid
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from executor_agent.container.tls_proxy import make_server_cert
from executor_agent.executor_config import StreamingSettings
from horde_protocol.link_frames import Event, Payload, Submit
from horde_protocol.messages import ExecutorTimingDetails, V0JobRequest
from horde_protocol.signing import verify_blob
from horde_protocol.structs import StreamingDetails
from miner_agent.miner_config import LocalExecutor
from tests.fixtures.miner import sim_for
from tests.fixtures.podman import LinkClient, containers_with_label, podman_cli
from tests.integration.test_executor_agent import initial, job_request, types

pytestmark = pytest.mark.podman

PORT_RANGE = (46100, 46199)  # high and narrow: tests must not take the stock 6000-6999
HEALTH_TIMEOUT_S = 3.0
TIMING = {"allowed_leeway": 5, "download_time_limit": 10, "execution_time_limit": 30, "upload_time_limit": 10,
          "streaming_start_time_limit": 10}
# httpd in the background; the job ends when the test drops /output/stop (a bind of the host dir)
SERVE = ("mkdir -p /www && echo healthy > /www/health && echo hello-stream > /www/hello.txt && "
         "(httpd -f -p 8000 -h /www &) && while [ ! -f /output/stop ]; do sleep 0.1; done; echo done")


@pytest.fixture
def agent_config(agent_config: Any) -> Any:
    streaming = StreamingSettings(port_range=PORT_RANGE, bind_host="127.0.0.1", health_timeout_s=HEALTH_TIMEOUT_S,
                                  health_poll_interval_s=0.2)
    return agent_config.model_copy(update={"streaming": streaming})


def streaming_initial(job_uuid: str, image: str, client_cert_pem: str) -> Any:
    details = StreamingDetails(public_key=client_cert_pem, executor_ip="127.0.0.1")
    return initial(job_uuid, image, timing=TIMING).model_copy(update={"streaming_details": details})


def client_context(server_cert_pem: str, client: Any | None) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cadata=server_cert_pem)  # pin the executor's certificate
    if client is not None:
        with tempfile.TemporaryDirectory() as d:
            cert, key = Path(d) / "c.pem", Path(d) / "k.pem"
            cert.write_text(client.cert_pem)
            key.write_text(client.key_pem)
            ctx.load_cert_chain(cert, key)
    return ctx


async def https_get(port: int, ctx: ssl.SSLContext, path: str) -> bytes:
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname="127.0.0.1"), 5)
    try:
        writer.write(f"GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n".encode())
        await writer.drain()
        return await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()


def port_free(port: int) -> bool:
    """Nothing listens there any more (a bind test would trip over TIME_WAIT)."""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except ConnectionRefusedError:
        return True
    return False


def network_exists(job_uuid: str) -> bool:
    return f"ch-{job_uuid}" in podman_cli("network", "ls", "--format", "{{.Name}}").split()


async def test_streaming_job_serves_mutual_tls_then_finishes(link_client: LinkClient, busybox_image: str,
                                                             executor_agent: Any) -> None:
    client = make_server_cert(None)
    job_uuid = str(uuid.uuid4())
    await link_client.send(Submit(job_uuid=job_uuid, initial=streaming_initial(job_uuid, busybox_image,
                                                                               client.cert_pem)))
    ready = await link_client.recv()
    assert isinstance(ready, Event) and ready.message.message_type == "V0ExecutorReadyRequest", ready
    await link_client.send(Payload(job_uuid=job_uuid, request=job_request(job_uuid, busybox_image,
                                                                          ["/bin/sh", "-c", SERVE])))
    events = [ready]
    while events[-1].message.message_type != "V0StreamingJobReadyRequest":
        frame = await link_client.recv(timeout_s=20)
        assert isinstance(frame, Event), frame
        assert frame.message.message_type in ("V0VolumesReadyRequest", "V0StreamingJobReadyRequest"), frame
        events.append(frame)
    streaming = events[-1].message
    assert PORT_RANGE[0] <= streaming.port <= PORT_RANGE[1]
    assert streaming.public_key.startswith("-----BEGIN CERTIFICATE-----")
    assert network_exists(job_uuid)

    body = await https_get(streaming.port, client_context(streaming.public_key, client), "/hello.txt")
    assert body.startswith(b"HTTP/1.") and b" 200 " in body.split(b"\r\n")[0], body[:200]
    assert body.endswith(b"hello-stream\n")

    refused: bytes | BaseException
    try:
        refused = await https_get(streaming.port, client_context(streaming.public_key, None), "/hello.txt")
    except (ssl.SSLError, ConnectionError, asyncio.IncompleteReadError) as exc:
        refused = exc
    assert not (isinstance(refused, bytes) and b"hello-stream" in refused), refused

    stranger = make_server_cert(None)  # a certificate the user did not send is refused too
    try:
        refused = await https_get(streaming.port, client_context(streaming.public_key, stranger), "/hello.txt")
    except (ssl.SSLError, ConnectionError, asyncio.IncompleteReadError) as exc:
        refused = exc
    assert not (isinstance(refused, bytes) and b"hello-stream" in refused), refused

    (executor_agent.config.jobs_dir / job_uuid / "output" / "stop").touch()
    events += await link_client.recv_events(job_uuid, timeout_s=20)
    assert types(events) == ["V0ExecutorReadyRequest", "V0VolumesReadyRequest", "V0StreamingJobReadyRequest",
                             "V0ExecutionDoneRequest", "V0MachineSpecsRequest", "V0JobFinishedRequest"]
    assert events[-1].message.docker_process_stdout == "done\n"
    await asyncio.sleep(0.5)  # cleanup runs right after the terminal event
    assert containers_with_label(job_uuid) == []
    assert not network_exists(job_uuid)
    assert port_free(streaming.port)
    assert not (executor_agent.config.jobs_dir / job_uuid / "ssl").exists()


async def test_streaming_job_without_health_fails_like_stock(link_client: LinkClient, busybox_image: str) -> None:
    client = make_server_cert(None)
    job_uuid = str(uuid.uuid4())
    await link_client.send(Submit(job_uuid=job_uuid, initial=streaming_initial(job_uuid, busybox_image,
                                                                               client.cert_pem)))
    ready = await link_client.recv()
    assert ready.message.message_type == "V0ExecutorReadyRequest", ready
    loop = asyncio.get_running_loop()
    started = loop.time()
    await link_client.send(Payload(job_uuid=job_uuid, request=job_request(job_uuid, busybox_image,
                                                                          ["/bin/sh", "-c", "sleep 60"])))
    events = await link_client.recv_events(job_uuid, timeout_s=30)
    took = loop.time() - started
    assert types(events) == ["V0VolumesReadyRequest", "V0JobFailedRequest"]
    failed = events[-1].message
    assert (failed.reason, failed.stage, failed.message) == ("timeout", "streaming_startup",
                                                             "Streaming job health check failed")
    assert HEALTH_TIMEOUT_S <= took < HEALTH_TIMEOUT_S + 10
    await asyncio.sleep(0.5)
    assert containers_with_label(job_uuid) == []
    assert not network_exists(job_uuid)
    assert all(port_free(p) for p in range(PORT_RANGE[0], PORT_RANGE[0] + 3))


# -- end to end: validator simulator -> miner agent -> executor agent -> podman ------------------------

CLASS = "always_on.test"


@pytest.fixture
def e2e_config(miner_config: Any, agent_config: Any) -> Any:
    local = LocalExecutor(name="local", executor_class=CLASS, socket=agent_config.socket_path)
    return miner_config.model_copy(update={"executors": [local]})


async def test_streaming_ready_reaches_validator_signed(e2e_config: Any, start_miner: Any, executor_agent: Any,
                                                        busybox_image: str, validator_key: Any) -> None:
    agent = await start_miner(e2e_config)
    assert await agent.ctx.fleet.links["local"].wait_up(10), agent.ctx.fleet.links["local"].last_error
    sim = sim_for(agent, validator_key)
    client = make_server_cert(None)
    timing = ExecutorTimingDetails(**TIMING)
    initial = sim.initial_request(CLASS, busybox_image, timing=timing)
    initial = initial.model_copy(update={"streaming_details": StreamingDetails(public_key=client.cert_pem)})
    serve_then_exit = ("mkdir -p /www && echo ok > /www/health && (httpd -f -p 8000 -h /www &) && sleep 3; "
                       "echo served")
    request = V0JobRequest(job_uuid=initial.job_uuid, executor_class=CLASS, docker_image=busybox_image,
                           docker_run_options_preset="none", docker_run_cmd=["sh", "-c", serve_then_exit])
    received = await sim.run_job(initial, request)
    kinds = [r.type for r in received]
    assert kinds[:5] == ["V0AcceptJobRequest", "V0ExecutorReadyRequest", "V0VolumesReadyRequest",
                         "V0StreamingJobReadyRequest", "V0ExecutionDoneRequest"], kinds
    assert kinds[-1] == "V0JobFinishedRequest", received[-1].message
    assert set(kinds[5:-1]) <= {"V0MachineSpecsRequest"}
    ready = received[3].message
    assert ready.ip == "127.0.0.1" and ready.executor_token is None
    assert PORT_RANGE[0] <= ready.port <= PORT_RANGE[1]
    blob = f"{initial.job_uuid}:{ready.ip}:{ready.port}:{ready.public_key}"
    assert ready.miner_signature and verify_blob(agent.ctx.signer.hotkey, blob, ready.miner_signature)
    # the executor put the miner's address for it into its certificate (SAN)
    cert = x509.load_pem_x509_certificate(ready.public_key.encode())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert received[-1].message.docker_process_stdout == "served\n"


async def test_a_restarted_agent_removes_networks_of_jobs_that_ended(agent_config, busybox_image) -> None:
    """A crash between a streaming job's end and its cleanup leaves its network; the next
    start removes it (and never touches networks of jobs it does not know)."""
    import subprocess
    import uuid as uuidlib

    from executor_agent.daemon.eventlog import EVENTS_FILE, EventLog
    from executor_agent.daemon.server import ExecutorAgent
    from executor_agent.daemon.streaming_job import network_name
    from horde_protocol.link_frames import Event
    from horde_protocol.messages import V0HordeFailedRequest
    from tests.fixtures.podman import _podman_env

    ended, stranger = str(uuidlib.uuid4()), str(uuidlib.uuid4())
    job_dir = agent_config.jobs_dir / ended
    job_dir.mkdir(parents=True)
    EventLog(job_dir / EVENTS_FILE).append(Event(job_uuid=ended, seq=1, message=V0HordeFailedRequest(
        job_uuid=ended, reported_by="executor", reason="generic_error", message="crashed")))
    for job in (ended, stranger):
        subprocess.run(["podman", "network", "create", "--internal", network_name(job)], env=_podman_env(),
                       check=True, capture_output=True)
    agent = ExecutorAgent(agent_config)
    await agent.start()
    try:
        exists = lambda job: subprocess.run(["podman", "network", "exists", network_name(job)],  # noqa: E731
                                            env=_podman_env()).returncode == 0
        assert not exists(ended)
        assert exists(stranger)
    finally:
        await agent.stop()
        for job in (ended, stranger):
            subprocess.run(["podman", "network", "rm", "-f", network_name(job)], env=_podman_env(), capture_output=True)
