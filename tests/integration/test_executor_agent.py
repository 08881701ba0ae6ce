"""The executor agent end to end: link frames over its unix socket, real podman containers."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import uuid
import zipfile
from typing import Any

import pytest

from horde_protocol.link_frames import Attach, Cancel, Event, LinkError, Payload, Ping, Pong, Submit
from horde_protocol.messages import V0InitialJobRequest, V0JobRequest
from tests.fixtures.podman import LinkClient, containers_with_label

pytestmark = pytest.mark.podman

CLASS = "always_on.test"


def initial(job_uuid: str, image: str, *, volume: dict[str, Any] | None = None,
            timing: dict[str, int] | None = None, timeout_seconds: int | None = None) -> V0InitialJobRequest:
    timing = timing if timing is not None else {"allowed_leeway": 5, "download_time_limit": 10,
                                                "execution_time_limit": 20, "upload_time_limit": 10,
                                                "streaming_start_time_limit": 0}
    return V0InitialJobRequest.model_validate({
        "job_uuid": job_uuid, "executor_class": CLASS, "docker_image": image,
        "timeout_seconds": timeout_seconds, "volume": volume,
        "job_started_receipt_payload": {
            "job_uuid": job_uuid, "miner_hotkey": "5Gminer", "validator_hotkey": "5Fvali",
            "timestamp": "2026-01-21T12:00:00.123456Z", "receipt_type": "JobStartedReceipt",
            "executor_class": CLASS, "is_organic": True, "ttl": 7,
        },
        "job_started_receipt_signature": "0x00",
        "executor_timing": timing or None,
    })


def job_request(job_uuid: str, image: str, cmd: list[str], **extra: Any) -> V0JobRequest:
    return V0JobRequest.model_validate({
        "job_uuid": job_uuid, "executor_class": CLASS, "docker_image": image,
        "docker_run_options_preset": "none", "docker_run_cmd": cmd, **extra,
    })


def inline_volume(files: dict[str, str]) -> dict[str, Any]:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, text in files.items():
            zf.writestr(name, text)
    return {"volume_type": "inline", "contents": base64.b64encode(buf.getvalue()).decode()}


async def run_job(client: LinkClient, image: str, cmd: list[str], *, init_kw: dict[str, Any] | None = None,
                  **req_kw: Any) -> tuple[str, list[Event]]:
    job_uuid = str(uuid.uuid4())
    await client.send(Submit(job_uuid=job_uuid, initial=initial(job_uuid, image, **(init_kw or {}))))
    first = await client.recv()
    assert isinstance(first, Event), first
    if first.message.message_type != "V0ExecutorReadyRequest":
        return job_uuid, [first]
    await client.send(Payload(job_uuid=job_uuid, request=job_request(job_uuid, image, cmd, **req_kw)))
    return job_uuid, [first, *await client.recv_events(job_uuid)]


def types(events: list[Event]) -> list[str]:
    return [e.message.message_type for e in events]


async def test_job_succeeds_in_order(link_client: LinkClient, busybox_image: str, executor_agent: Any) -> None:
    job_uuid, events = await run_job(link_client, busybox_image, ["/bin/sh", "-c", "echo hi; echo oops >&2"])
    assert types(events) == ["V0ExecutorReadyRequest", "V0VolumesReadyRequest", "V0ExecutionDoneRequest",
                             "V0MachineSpecsRequest", "V0JobFinishedRequest"]
    assert [e.seq for e in events] == [1, 2, 3, 4, 5]
    finished = events[-1].message
    assert finished.docker_process_stdout == "hi\n"
    assert finished.docker_process_stderr == "oops\n"
    log_path = executor_agent.config.jobs_dir / job_uuid / "events.jsonl"
    assert [json.loads(line)["seq"] for line in log_path.read_text().splitlines()] == [1, 2, 3, 4, 5]
    await asyncio.sleep(0.2)  # cleanup runs right after the terminal event
    assert containers_with_label(job_uuid) == []
    assert not (executor_agent.config.jobs_dir / job_uuid / "output").exists()


async def test_inline_volume_is_read_only_and_output_written(link_client: LinkClient, busybox_image: str,
                                                             executor_agent: Any) -> None:
    script = ("cat /volume/a/in.txt; touch /volume/x 2>/dev/null && echo writable || echo read-only; "
              "echo result > /output/r.txt && cat /output/r.txt; echo art > /art/one.txt")
    _, events = await run_job(link_client, busybox_image, ["/bin/sh", "-c", script],
                              init_kw={"volume": inline_volume({"a/in.txt": "payload\n"})},
                              artifacts_dir="/art")
    finished = events[-1].message
    assert finished.message_type == "V0JobFinishedRequest", finished
    assert finished.docker_process_stdout == "payload\nread-only\nresult\n"
    assert finished.artifacts == {"/art/one.txt": base64.b64encode(b"art\n").decode()}


async def test_raw_script_runs_as_python_script(link_client: LinkClient, busybox_image: str) -> None:
    # the test image's `python` is sh, so the "script" is shell
    _, events = await run_job(link_client, busybox_image, [], raw_script="echo from-script $FOO",
                              env={"FOO": "bar"})
    assert events[-1].message.docker_process_stdout == "from-script bar\n"


async def test_nonzero_exit(link_client: LinkClient, busybox_image: str) -> None:
    _, events = await run_job(link_client, busybox_image, ["/bin/sh", "-c", "echo out; echo bad >&2; exit 3"])
    failed = events[-1].message
    assert types(events) == ["V0ExecutorReadyRequest", "V0VolumesReadyRequest", "V0JobFailedRequest"]
    assert failed.reason == "nonzero_return_code"
    assert failed.stage == "execution"
    assert failed.message == "Job container exited with non-zero exit code: 3"
    assert (failed.docker_process_exit_status, failed.docker_process_stdout, failed.docker_process_stderr) == (
        3, "out\n", "bad\n")


async def test_execution_overrun_kills_container(link_client: LinkClient, busybox_image: str) -> None:
    timing = {"allowed_leeway": 1, "download_time_limit": 5, "execution_time_limit": 1,
              "upload_time_limit": 5, "streaming_start_time_limit": 0}
    job_uuid, events = await run_job(link_client, busybox_image, ["/bin/sh", "-c", "echo started; sleep 60"],
                                     init_kw={"timing": timing})
    failed = events[-1].message
    assert failed.message_type == "V0JobFailedRequest"
    assert (failed.reason, failed.stage, failed.message) == ("timeout", "execution",
                                                             "Job container timed out during execution")
    assert failed.docker_process_stdout == "started\n"
    await asyncio.sleep(0.2)
    assert containers_with_label(job_uuid) == []


async def test_missing_image_is_horde_failure(link_client: LinkClient) -> None:
    _, events = await run_job(link_client, "localhost/ch-test-no-such-image:1", ["true"])
    failed = events[-1].message
    assert failed.message_type == "V0HordeFailedRequest"
    assert (failed.reason, failed.message, failed.reported_by) == ("generic_error", "Failed to pull docker image",
                                                                   "executor")


async def test_no_timing_is_horde_failure(link_client: LinkClient, busybox_image: str) -> None:
    _, events = await run_job(link_client, busybox_image, ["true"], init_kw={"timing": {}})
    failed = events[-1].message
    assert failed.message_type == "V0HordeFailedRequest"
    assert failed.message.startswith("No timing received: ")


async def test_timeout_seconds_fallback(link_client: LinkClient, busybox_image: str) -> None:
    _, events = await run_job(link_client, busybox_image, ["echo", "ok"], init_kw={"timing": {}, "timeout_seconds": 30})
    assert events[-1].message.docker_process_stdout == "ok\n"


async def test_two_volumes_is_horde_failure(link_client: LinkClient, busybox_image: str) -> None:
    vol = inline_volume({"a.txt": "a"})
    _, events = await run_job(link_client, busybox_image, ["true"], init_kw={"volume": vol}, volume=vol)
    failed = events[-1].message
    assert types(events) == ["V0ExecutorReadyRequest", "V0HordeFailedRequest"]
    assert (failed.reason, failed.message) == ("generic_error", "Received multiple volumes")


async def test_malformed_lines_keep_connection(link_client: LinkClient) -> None:
    await link_client.send_raw(b"this is not json\n")
    err = await link_client.recv()
    assert isinstance(err, LinkError) and err.details.startswith("malformed frame")
    await link_client.send_raw(b'{"link": "submit", "job_uuid": "x"}\n')
    err = await link_client.recv()
    assert isinstance(err, LinkError) and "initial" in err.details
    await link_client.send(Ping(nonce=7))
    assert await link_client.recv() == Pong(nonce=7)


async def test_payload_before_submit_and_duplicates(link_client: LinkClient, busybox_image: str) -> None:
    job_uuid = str(uuid.uuid4())
    await link_client.send(Payload(job_uuid=job_uuid, request=job_request(job_uuid, busybox_image, ["true"])))
    err = await link_client.recv()
    assert isinstance(err, LinkError) and err.job_uuid == job_uuid and "unknown job" in err.details
    await link_client.send(Submit(job_uuid=job_uuid, initial=initial(job_uuid, busybox_image)))
    assert (await link_client.recv()).message.message_type == "V0ExecutorReadyRequest"
    await link_client.send(Submit(job_uuid=job_uuid, initial=initial(job_uuid, busybox_image)))
    err = await link_client.recv()
    assert isinstance(err, LinkError) and "already submitted" in err.details
    request = job_request(job_uuid, busybox_image, ["/bin/sh", "-c", "sleep 0.5; echo done"])
    await link_client.send(Payload(job_uuid=job_uuid, request=request))
    await link_client.send(Payload(job_uuid=job_uuid, request=request))
    frames = [await link_client.recv()]
    while not (isinstance(frames[-1], Event) and frames[-1].seq == 5):
        frames.append(await link_client.recv())
    assert any(isinstance(f, LinkError) and "already has its payload" in f.details for f in frames)
    assert frames[-1].message.docker_process_stdout == "done\n"


async def test_attach_replays_and_cancel(executor_agent: Any, busybox_image: str) -> None:
    first = await LinkClient.connect(executor_agent.config.socket_path)
    await first.recv()  # hello
    job_uuid = str(uuid.uuid4())
    await first.send(Submit(job_uuid=job_uuid, initial=initial(job_uuid, busybox_image)))
    await first.send(Payload(job_uuid=job_uuid, request=job_request(job_uuid, busybox_image, ["sleep", "60"])))
    assert [(await first.recv()).seq for _ in range(2)] == [1, 2]
    events_path = executor_agent.config.jobs_dir / job_uuid / "events.jsonl"
    assert len(events_path.read_text().splitlines()) == 2
    await first.close()

    second = await LinkClient.connect(executor_agent.config.socket_path)
    hello = await second.recv()
    assert [(j.job_uuid, j.last_seq, j.finished) for j in hello.jobs if j.job_uuid == job_uuid] == [
        (job_uuid, 2, False)]
    await second.send(Attach(job_uuid=job_uuid, since_seq=1))
    replayed = await second.recv()
    assert (replayed.seq, replayed.message.message_type) == (2, "V0VolumesReadyRequest")
    for _ in range(50):  # the container is up once podman lists it running
        if containers_with_label(job_uuid):
            break
        await asyncio.sleep(0.1)
    await second.send(Cancel(job_uuid=job_uuid, reason="test"))
    terminal = await second.recv()
    assert terminal.seq == 3
    assert terminal.message.message_type == "V0HordeFailedRequest"
    await asyncio.sleep(0.3)
    assert containers_with_label(job_uuid) == []
    assert events_path.exists()  # kept for a late attach
    await second.send(Attach(job_uuid=job_uuid, since_seq=0))
    assert [(await second.recv()).seq for _ in range(3)] == [1, 2, 3]
    await second.close()


async def test_restart_resumes_running_job(agent_config: Any, busybox_image: str) -> None:
    from executor_agent.daemon.server import ExecutorAgent
    from tests.fixtures.podman import podman_cli

    agent = ExecutorAgent(agent_config)
    await agent.start()
    client = await LinkClient.connect(agent_config.socket_path)
    await client.recv()
    job_uuid = str(uuid.uuid4())
    await client.send(Submit(job_uuid=job_uuid, initial=initial(job_uuid, busybox_image)))
    cmd = ["/bin/sh", "-c", "sleep 1.5; echo resumed-ok"]
    await client.send(Payload(job_uuid=job_uuid, request=job_request(job_uuid, busybox_image, cmd)))
    assert [(await client.recv()).seq for _ in range(2)] == [1, 2]
    state_file = agent_config.jobs_dir / job_uuid / "running.json"
    for _ in range(50):
        if state_file.exists():
            break
        await asyncio.sleep(0.05)
    assert await agent.stop() == 1
    await client.close()
    running = podman_cli("ps", "--filter", f"label=io.computehorde.job-uuid={job_uuid}", "--format", "{{.ID}}")
    assert running.split(), "the job container must outlive the agent"

    agent = ExecutorAgent(agent_config)
    await agent.start()
    try:
        client = await LinkClient.connect(agent_config.socket_path)
        hello = await client.recv()
        assert [(j.last_seq, j.finished) for j in hello.jobs if j.job_uuid == job_uuid] == [(2, False)]
        await client.send(Attach(job_uuid=job_uuid, since_seq=2))
        events = await client.recv_events(job_uuid)
        assert [(e.seq, e.message.message_type) for e in events] == [
            (3, "V0ExecutionDoneRequest"), (4, "V0MachineSpecsRequest"), (5, "V0JobFinishedRequest")]
        assert events[-1].message.docker_process_stdout == "resumed-ok\n"
        await client.close()
    finally:
        await agent.stop()


async def test_restart_before_container_ends_job(agent_config: Any, busybox_image: str) -> None:
    from executor_agent.daemon.server import ExecutorAgent

    agent = ExecutorAgent(agent_config)
    await agent.start()
    client = await LinkClient.connect(agent_config.socket_path)
    await client.recv()
    job_uuid = str(uuid.uuid4())
    await client.send(Submit(job_uuid=job_uuid, initial=initial(job_uuid, busybox_image)))
    assert (await client.recv()).seq == 1
    await agent.stop()
    await client.close()
    agent = ExecutorAgent(agent_config)
    await agent.start()
    try:
        client = await LinkClient.connect(agent_config.socket_path)
        await client.recv()
        await client.send(Attach(job_uuid=job_uuid, since_seq=1))
        terminal = await client.recv()
        assert (terminal.seq, terminal.message.message_type) == (2, "V0HordeFailedRequest")
        assert terminal.message.message.startswith("Executor agent restarted")
        await client.close()
    finally:
        await agent.stop()


async def test_output_upload_zip_put(link_client: LinkClient, busybox_image: str, http_server) -> None:
    from aiohttp import web

    received: list[bytes] = []

    async def put(request: web.Request) -> web.Response:
        received.append(await request.read())
        return web.Response(text="stored", headers={"ETag": "abc"})

    async def refuse(_request: web.Request) -> web.Response:
        return web.Response(status=403)

    up_url, fail_url = http_server.route("PUT", "/up", put), http_server.route("PUT", "/fail", refuse)
    cmd = ["/bin/sh", "-c", "echo data > /output/result.txt; echo printed"]
    _, events = await run_job(link_client, busybox_image, cmd, output_upload={
        "output_upload_type": "zip_and_http_put", "url": up_url})
    finished = events[-1].message
    assert finished.message_type == "V0JobFinishedRequest", finished
    assert json.loads(finished.upload_results["output.zip"])["body"] == "stored"
    names = zipfile.ZipFile(io.BytesIO(received[0])).namelist()
    assert sorted(names) == ["result.txt", "stderr.txt", "stdout.txt"]

    _, events = await run_job(link_client, busybox_image, cmd, output_upload={
        "output_upload_type": "zip_and_http_put", "url": fail_url})
    failed = events[-1].message
    assert (failed.reason, failed.stage, failed.message) == ("upload_failed", "result_upload", "Upload failed")
    assert (failed.docker_process_exit_status, failed.docker_process_stdout) == (0, "printed\n")


async def test_payload_never_sent_is_download_timeout(link_client: LinkClient, busybox_image: str) -> None:
    job_uuid = str(uuid.uuid4())
    timing = {"allowed_leeway": 0, "download_time_limit": 1, "execution_time_limit": 5,
              "upload_time_limit": 5, "streaming_start_time_limit": 0}
    await link_client.send(Submit(job_uuid=job_uuid, initial=initial(job_uuid, busybox_image, timing=timing)))
    events = await link_client.recv_events(job_uuid, timeout_s=10)
    failed = events[-1].message
    assert types(events) == ["V0ExecutorReadyRequest", "V0JobFailedRequest"]
    assert (failed.reason, failed.stage, failed.message) == ("timeout", "volume_download", "Download time exceeded")


async def test_bad_volume_is_download_failed(link_client: LinkClient, busybox_image: str) -> None:
    volume = {"volume_type": "inline", "contents": base64.b64encode(b"not a zip").decode()}
    _, events = await run_job(link_client, busybox_image, ["true"], init_kw={"volume": volume})
    failed = events[-1].message
    assert (failed.message_type, failed.reason, failed.stage) == ("V0JobFailedRequest", "download_failed",
                                                                 "volume_download")
    assert failed.message.startswith("Download failed: ")


async def test_sigterm_stops_the_agent_promptly_and_leaves_the_job_running(agent_config: Any, busybox_image: str,
                                                                          tmp_path: Any) -> None:
    """systemd stops the agent with SIGTERM and kills it after TimeoutStopSec: a blocking
    podman wait must not hold the process, and the job's container must live on."""
    import asyncio
    import signal
    import sys
    import time

    from tests.fixtures.podman import containers_with_label

    config = tmp_path / "agent.toml"
    config.write_text(f'socket_path = "{agent_config.socket_path}"\njobs_dir = "{agent_config.jobs_dir}"\n'
                      f'podman_url = "{agent_config.podman_url}"\nimage_policy = "local_only"\n')
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "executor_agent", "serve", "--config", str(config),
                                                stderr=asyncio.subprocess.PIPE)
    try:
        for _ in range(200):
            if agent_config.socket_path.exists():
                break
            await asyncio.sleep(0.05)
        client = await LinkClient.connect(agent_config.socket_path)
        await client.recv()  # hello
        job_uuid = str(uuid.uuid4())
        await client.send(Submit(job_uuid=job_uuid, initial=initial(job_uuid, busybox_image)))
        assert (await client.recv()).message.message_type == "V0ExecutorReadyRequest"
        await client.send(Payload(job_uuid=job_uuid, request=job_request(job_uuid, busybox_image, ["sleep", "15"])))
        assert (await client.recv()).message.message_type == "V0VolumesReadyRequest"
        await asyncio.sleep(0.5)  # the container runs and the agent is blocked waiting for it
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 10) == 0
        assert time.monotonic() - t0 < 3
        assert containers_with_label(job_uuid), "the job's container must survive the agent"
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
