"""Streaming endpoints survive an executor-agent restart (issue 10, item 12), on real podman and real TLS.

The validator pinned the port and the certificate of V0StreamingJobReadyRequest (the miner
signed ip:port:public_key), so a restarted agent must serve the running job again on that
port with that certificate, without a second announcement; when it cannot, the job ends
with a horde failure that says why. Each test restarts the agent for real: the in-process
`ExecutorAgent.stop()` (what SIGTERM runs) or an `executor-agent serve` process sent SIGTERM.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import ssl
import stat
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from executor_agent.container.job_spec import container_name
from executor_agent.container.tls_proxy import ServerCert, make_server_cert
from executor_agent.daemon.recovery import load_running_state
from executor_agent.daemon.server import ExecutorAgent
from executor_agent.daemon.streaming_job import network_name
from executor_agent.executor_config import StreamingSettings
from horde_protocol.link_frames import Attach, Event, Payload, Submit
from tests.fixtures.podman import LinkClient, containers_with_label, podman_cli
from tests.integration.test_executor_agent import initial, job_request, types
from tests.integration.test_streaming import SERVE, client_context, network_exists, port_free

pytestmark = pytest.mark.podman

PORT_RANGE = (46200, 46249)  # apart from test_streaming.py's, so the two files never meet on a port
HEALTH_TIMEOUT_S = 3.0
HEALTH_POLL_S = 0.2
# room for two agent starts (a subprocess takes a couple of seconds) inside the execution limit
TIMING = {"allowed_leeway": 5, "download_time_limit": 10, "execution_time_limit": 60, "upload_time_limit": 10,
          "streaming_start_time_limit": 10}
SOCKET_APPEAR_TIMEOUT_S = 15.0
SIGTERM_EXIT_TIMEOUT_S = 15.0
CLEANUP_SETTLE_S = 1.0  # the job's cleanup runs right after its terminal event
FINISHED = ["V0ExecutorReadyRequest", "V0VolumesReadyRequest", "V0StreamingJobReadyRequest",
            "V0ExecutionDoneRequest", "V0MachineSpecsRequest", "V0JobFinishedRequest"]


@pytest.fixture
def agent_config(agent_config: Any) -> Iterator[Any]:
    streaming = StreamingSettings(port_range=PORT_RANGE, bind_host="127.0.0.1", health_timeout_s=HEALTH_TIMEOUT_S,
                                  health_poll_interval_s=HEALTH_POLL_S)
    config = agent_config.model_copy(update={"streaming": streaming})
    yield config
    # A test that failed half-way leaves no agent to end its job, and SERVE loops until told to
    # stop: remove what is left of this test's jobs (found by their dirs) so nothing runs on.
    for job_dir in config.jobs_dir.glob("*-*-*-*-*"):
        if containers_with_label(job_dir.name):
            podman_cli("rm", "-f", "-t", "0", container_name(job_dir.name))
        if network_exists(job_dir.name):
            podman_cli("network", "rm", "-f", network_name(job_dir.name))


def streaming_initial(job_uuid: str, image: str, client_cert_pem: str) -> Any:
    from horde_protocol.structs import StreamingDetails

    details = StreamingDetails(public_key=client_cert_pem, executor_ip="127.0.0.1")
    return initial(job_uuid, image, timing=TIMING).model_copy(update={"streaming_details": details})


async def get_hello(port: int, ctx: ssl.SSLContext) -> tuple[bytes, bytes]:
    """GET /hello.txt over mutual TLS; returns the response and the server's certificate (DER)."""
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname="127.0.0.1"), 5)
    try:
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        writer.write(b"GET /hello.txt HTTP/1.0\r\nHost: localhost\r\n\r\n")
        await writer.drain()
        return await asyncio.wait_for(reader.read(), 5), der
    finally:
        writer.close()


def assert_served(body: bytes) -> None:
    assert body.startswith(b"HTTP/1.") and b" 200 " in body.split(b"\r\n")[0], body[:200]
    assert body.endswith(b"hello-stream\n"), body[-200:]


def pem_to_der(pem: str) -> bytes:
    return ssl.PEM_cert_to_DER_cert(pem)


async def connect(config: Any) -> LinkClient:
    client = await LinkClient.connect(config.socket_path)
    hello = await client.recv()
    assert hello.link == "hello", hello
    return client


async def start_streaming_job(client: LinkClient, image: str, command: str = SERVE
                              ) -> tuple[str, ServerCert, list[Event]]:
    """Submit a streaming job and read its events up to V0StreamingJobReadyRequest."""
    user = make_server_cert(None)  # the validator's client certificate
    job_uuid = str(uuid.uuid4())
    await client.send(Submit(job_uuid=job_uuid, initial=streaming_initial(job_uuid, image, user.cert_pem)))
    events = [await client.recv()]
    assert events[0].message.message_type == "V0ExecutorReadyRequest", events[0]
    await client.send(Payload(job_uuid=job_uuid, request=job_request(job_uuid, image, ["/bin/sh", "-c", command])))
    while events[-1].message.message_type != "V0StreamingJobReadyRequest":
        frame = await client.recv(timeout_s=20)
        assert isinstance(frame, Event) and frame.job_uuid == job_uuid, frame
        assert frame.message.message_type in ("V0VolumesReadyRequest", "V0StreamingJobReadyRequest"), frame
        events.append(frame)
    return job_uuid, user, events


def assert_endpoint_kept(config: Any, job_uuid: str, port: int) -> None:
    """What a restarted agent needs is on disk: the port in running.json, the key private."""
    job_root = config.jobs_dir / job_uuid
    state = load_running_state(job_root)
    assert state is not None and state.streaming is not None, "running.json lacks the streaming endpoint"
    assert state.streaming.port == port
    key = state.streaming.key_path
    assert key.parent == job_root / "ssl"
    assert stat.S_IMODE(os.lstat(key).st_mode) == 0o600
    assert stat.S_IMODE(os.lstat(key.parent).st_mode) == 0o700


async def finish_after_restart(config: Any, job_uuid: str, since_seq: int) -> list[Event]:
    """Attach to the job on the new agent, let the job end, and return its later events."""
    client = await connect(config)
    try:
        await client.send(Attach(job_uuid=job_uuid, since_seq=since_seq))
        (config.jobs_dir / job_uuid / "output" / "stop").touch()
        return await client.recv_events(job_uuid, timeout_s=30)
    finally:
        await client.close()


async def assert_cleaned_up(config: Any, job_uuid: str, port: int) -> None:
    await asyncio.sleep(CLEANUP_SETTLE_S)
    assert containers_with_label(job_uuid) == []
    assert not network_exists(job_uuid)
    assert port_free(port)
    assert not (config.jobs_dir / job_uuid / "ssl").exists(), "the private key outlived its job"


def running(job_uuid: str) -> bool:
    from executor_agent.container.podman_engine import JOB_LABEL

    return bool(podman_cli("ps", "--filter", f"label={JOB_LABEL}={job_uuid}", "--format", "{{.ID}}").split())


class Agents:
    """In-process agents on one config, one after another; the fixture stops a running one."""

    def __init__(self, config: Any) -> None:
        self.config = config
        self.running: ExecutorAgent | None = None

    async def start(self) -> ExecutorAgent:
        assert self.running is None
        agent = ExecutorAgent(self.config)
        await agent.start()
        self.running = agent
        return agent

    async def stop(self) -> int:
        """What SIGTERM runs; returns the jobs left running for the next agent."""
        assert self.running is not None
        agent, self.running = self.running, None
        return await agent.stop()


@pytest.fixture
async def agents(agent_config: Any) -> AsyncIterator[Agents]:
    made = Agents(agent_config)
    try:
        yield made
    finally:
        if made.running is not None:
            await made.stop()


async def test_in_process_restart_serves_the_same_port_and_certificate(
        agent_config: Any, busybox_image: str, agents: Agents) -> None:
    await agents.start()
    client = await connect(agent_config)
    job_uuid, user, events = await start_streaming_job(client, busybox_image)
    ready = events[-1].message
    ctx = client_context(ready.public_key, user)  # pins the certificate the validator was sent
    body, der = await get_hello(ready.port, ctx)
    assert_served(body)
    assert der == pem_to_der(ready.public_key)
    assert_endpoint_kept(agent_config, job_uuid, ready.port)

    assert await agents.stop() == 1
    await client.close()
    assert running(job_uuid), "the job container must outlive the agent"
    assert port_free(ready.port), "the stopped agent still listens"

    await agents.start()
    body, der = await get_hello(ready.port, ctx)
    assert_served(body)
    assert der == pem_to_der(ready.public_key)

    later = await finish_after_restart(agent_config, job_uuid, since_seq=events[-1].seq)
    assert types(events + later) == FINISHED  # one announcement in all: none after the restart
    assert later[-1].message.docker_process_stdout == "done\n"
    await assert_cleaned_up(agent_config, job_uuid, ready.port)


def write_toml(config: Any, path: Path) -> Path:
    path.write_text(
        f'socket_path = "{config.socket_path}"\njobs_dir = "{config.jobs_dir}"\n'
        f'podman_url = "{config.podman_url}"\nimage_policy = "local_only"\nslots = 2\n'
        f'[streaming]\nport_range = [{PORT_RANGE[0]}, {PORT_RANGE[1]}]\nbind_host = "127.0.0.1"\n'
        f'health_timeout_s = {HEALTH_TIMEOUT_S}\nhealth_poll_interval_s = {HEALTH_POLL_S}\n')
    return path


async def serve_subprocess(config_path: Path, socket_path: Path) -> asyncio.subprocess.Process:
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "executor_agent", "serve", "--config",
                                                str(config_path), stdout=asyncio.subprocess.DEVNULL,
                                                stderr=asyncio.subprocess.DEVNULL)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + SOCKET_APPEAR_TIMEOUT_S
    while not socket_path.exists():
        assert proc.returncode is None, f"executor-agent serve exited with {proc.returncode}"
        assert loop.time() < deadline, "executor-agent serve did not open its socket"
        await asyncio.sleep(0.05)
    return proc


async def sigterm(proc: asyncio.subprocess.Process) -> int:
    proc.send_signal(signal.SIGTERM)
    return await asyncio.wait_for(proc.wait(), SIGTERM_EXIT_TIMEOUT_S)


async def test_sigterm_of_executor_agent_serve_keeps_the_endpoint(agent_config: Any, busybox_image: str,
                                                                  tmp_path: Path) -> None:
    """`systemctl restart executor-agent`: SIGTERM to the serving process, then a new one."""
    config_path = write_toml(agent_config, tmp_path / "agent.toml")
    procs: list[asyncio.subprocess.Process] = []
    try:
        procs.append(await serve_subprocess(config_path, agent_config.socket_path))
        client = await connect(agent_config)
        job_uuid, user, events = await start_streaming_job(client, busybox_image)
        ready = events[-1].message
        ctx = client_context(ready.public_key, user)
        assert_served((await get_hello(ready.port, ctx))[0])
        assert_endpoint_kept(agent_config, job_uuid, ready.port)
        await client.close()

        assert await sigterm(procs[0]) == 0
        assert running(job_uuid), "the job container must outlive the agent"
        assert port_free(ready.port)

        procs.append(await serve_subprocess(config_path, agent_config.socket_path))
        body, der = await get_hello(ready.port, ctx)
        assert_served(body)
        assert der == pem_to_der(ready.public_key)
        later = await finish_after_restart(agent_config, job_uuid, since_seq=events[-1].seq)
        assert types(events + later) == FINISHED
        await assert_cleaned_up(agent_config, job_uuid, ready.port)
        assert await sigterm(procs[1]) == 0
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()


async def test_a_port_taken_meanwhile_ends_the_job_saying_so(agent_config: Any, busybox_image: str,
                                                             agents: Agents) -> None:
    await agents.start()
    client = await connect(agent_config)
    job_uuid, _user, events = await start_streaming_job(client, busybox_image)
    port = events[-1].message.port
    await agents.stop()
    await client.close()

    squatter = socket.socket(socket.AF_INET, socket.SOCK_STREAM)  # another process got the port in between
    # past an earlier test's TIME_WAIT on this port; a listener still excludes every other bind on Linux
    squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        squatter.bind(("127.0.0.1", port))
        squatter.listen()
        await agents.start()
        client = await connect(agent_config)
        await client.send(Attach(job_uuid=job_uuid, since_seq=events[-1].seq))
        later = await client.recv_events(job_uuid, timeout_s=20)
        await client.close()
    finally:
        squatter.close()
    assert types(later) == ["V0HordeFailedRequest"]
    failed = later[0].message
    assert failed.reason == "generic_error" and failed.reported_by == "executor"
    assert failed.message.startswith("Executor agent restarted and could not serve the streaming job again")
    assert f"port {port}" in failed.message and "re-bound" in failed.message, failed.message
    assert failed.context == {"stage": "execution", "port": port}
    await assert_cleaned_up(agent_config, job_uuid, port)


async def test_a_restart_during_the_health_wait_ends_the_job(agent_config: Any, busybox_image: str,
                                                             agents: Agents) -> None:
    """The endpoint was never announced, so there is nothing a validator could reconnect to."""
    await agents.start()
    client = await connect(agent_config)
    user = make_server_cert(None)
    job_uuid = str(uuid.uuid4())
    await client.send(Submit(job_uuid=job_uuid, initial=streaming_initial(job_uuid, busybox_image, user.cert_pem)))
    assert (await client.recv()).message.message_type == "V0ExecutorReadyRequest"
    await client.send(Payload(job_uuid=job_uuid, request=job_request(job_uuid, busybox_image, ["sleep", "60"])))
    assert (await client.recv()).message.message_type == "V0VolumesReadyRequest"
    job_root = agent_config.jobs_dir / job_uuid
    for _ in range(100):  # the container runs once running.json is written; /health never answers
        if (job_root / "running.json").exists():
            break
        await asyncio.sleep(0.05)
    await agents.stop()
    await client.close()

    await agents.start()
    client = await connect(agent_config)
    await client.send(Attach(job_uuid=job_uuid, since_seq=2))
    later = await client.recv_events(job_uuid, timeout_s=20)
    await client.close()
    assert types(later) == ["V0HordeFailedRequest"]
    assert later[0].message.message == "Executor agent restarted and could not resume the job (stage: streaming_startup)"
    await asyncio.sleep(CLEANUP_SETTLE_S)
    assert containers_with_label(job_uuid) == []
    assert not network_exists(job_uuid)
    assert not (job_root / "ssl").exists()


async def test_an_announcement_lost_in_a_crash_is_made_once_on_restart(agent_config: Any, busybox_image: str,
                                                                       agents: Agents) -> None:
    """A crash after the endpoint was recorded but before its announcement reached the event
    log (simulated: the logged line removed while the agent is down): the new agent announces
    the recorded port and certificate once, so the validator still learns where to connect."""
    await agents.start()
    client = await connect(agent_config)
    job_uuid, user, events = await start_streaming_job(client, busybox_image)
    ready = events[-1].message
    await agents.stop()
    await client.close()
    log_path = agent_config.jobs_dir / job_uuid / "events.jsonl"
    lines = log_path.read_bytes().splitlines(keepends=True)
    assert b"V0StreamingJobReadyRequest" in lines[-1]
    log_path.write_bytes(b"".join(lines[:-1]))

    await agents.start()
    client = await connect(agent_config)
    await client.send(Attach(job_uuid=job_uuid, since_seq=0))
    replayed = [await client.recv() for _ in range(3)]
    await client.close()
    assert types(replayed) == FINISHED[:3]
    again = replayed[-1].message
    assert (again.port, again.public_key) == (ready.port, ready.public_key)
    assert_served((await get_hello(ready.port, client_context(ready.public_key, user)))[0])

    later = await finish_after_restart(agent_config, job_uuid, since_seq=replayed[-1].seq)
    assert types(replayed + later) == FINISHED
    await assert_cleaned_up(agent_config, job_uuid, ready.port)
