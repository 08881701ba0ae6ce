"""Job-runner plugins loaded through the config, and the stage budgets: each overrun with
its exact reason and stage, and unused time carried over to the next stage."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from executor_agent.daemon.server import AgentStartError, ExecutorAgent
from executor_agent.executor_config import AgentConfig
from executor_agent.plugins.job_runner import JobContext, JobRunner
from horde_protocol.link_frames import Payload, Submit
from tests.integration.test_executor_agent import initial, job_request, run_job, types
from tests.integration.test_executor_hostile import agent_with

pytestmark = pytest.mark.podman

EXAMPLE = "executor_agent.plugins.example_runner:ExampleRunner"


class SlowStart(JobRunner):
    """Spends `delay_s` of the execution stage in before_start (a slow GPU reservation, say)."""

    async def before_start(self, job: JobContext) -> None:
        await asyncio.sleep(float(self.options["delay_s"]))


class BrokenAfterStart(JobRunner):
    async def after_start(self, job: JobContext, container_id: str) -> None:
        raise RuntimeError("sidecar refused")


def timing(leeway: int, download: int, execution: int, upload: int) -> dict[str, int]:
    return {"allowed_leeway": leeway, "download_time_limit": download, "execution_time_limit": execution,
            "upload_time_limit": upload, "streaming_start_time_limit": 0}


async def test_example_runner_fires_every_hook(agent_config: AgentConfig, busybox_image: str,
                                               tmp_path: Path) -> None:
    journal = tmp_path / "hooks.log"
    options = {
        "image_map": {"localhost/ch-test-alias:1": busybox_image},
        "env": {"RUNNER_ENV": "from-runner"},
        "labels": {"com.example.team": "test"},
        "command_prefix": ["/bin/sh", "-c", 'echo prefix-ran; exec "$@"', "wrapper"],
        "journal_path": str(journal),
    }
    script = "cat /output/runner-before-start.txt; echo env=$RUNNER_ENV"
    async with agent_with(agent_config, job_runner=EXAMPLE, job_runner_options=options) as (_, client):
        job_uuid, events = await run_job(client, "localhost/ch-test-alias:1", ["/bin/sh", "-c", script])
        finished = events[-1].message
        assert finished.message_type == "V0JobFinishedRequest", finished
        assert finished.docker_process_stdout == f"prefix-ran\nprepared for {job_uuid}\nenv=from-runner\n"
        await asyncio.sleep(0.3)  # cleanup runs right after the terminal event
    hooks = [line.split(" ", 2)[2] for line in journal.read_text().splitlines()]
    assert [h.split()[0] for h in hooks] == ["hook=before_start", "hook=after_start", "hook=cleanup"]
    assert hooks[2].endswith("result=V0JobFinishedRequest")
    assert all(f"job={job_uuid}" in line for line in journal.read_text().splitlines())


async def test_failing_hook_is_a_horde_failure(agent_config: AgentConfig, busybox_image: str) -> None:
    path = f"{__name__}:BrokenAfterStart"
    async with agent_with(agent_config, job_runner=path) as (_, client):
        _, events = await run_job(client, busybox_image, ["sleep", "30"])
        failed = events[-1].message
        assert (failed.message_type, failed.reason) == ("V0HordeFailedRequest", "generic_error")
        assert failed.message == f"Job runner {path} failed in after_start: RuntimeError: sidecar refused"


async def test_unloadable_runner_stops_the_agent_at_start(agent_config: AgentConfig) -> None:
    agent = ExecutorAgent(agent_config.model_copy(update={"job_runner": "no_such_pkg.mod:Runner"}))
    with pytest.raises(AgentStartError, match="job_runner 'no_such_pkg.mod:Runner': cannot import no_such_pkg.mod"):
        await agent.start()
    await agent.stop()


async def test_execution_stage_overrun(agent_config: AgentConfig, busybox_image: str) -> None:
    async with agent_with(agent_config, job_runner=f"{__name__}:SlowStart",
                          job_runner_options={"delay_s": 3}) as (_, client):
        _, events = await run_job(client, busybox_image, ["true"], init_kw={"timing": timing(0, 1, 1, 5)})
        failed = events[-1].message
        assert types(events) == ["V0ExecutorReadyRequest", "V0VolumesReadyRequest", "V0JobFailedRequest"]
        assert (failed.reason, failed.stage, failed.message) == ("timeout", "execution", "Execution time exceeded")


async def test_unused_download_time_carries_over(agent_config: AgentConfig, busybox_image: str) -> None:
    # execution gets 1 s, the plugin spends 2 s: only the ~5 s the download did not use save the job
    async with agent_with(agent_config, job_runner=f"{__name__}:SlowStart",
                          job_runner_options={"delay_s": 2}) as (_, client):
        _, events = await run_job(client, busybox_image, ["echo", "ok"], init_kw={"timing": timing(0, 6, 1, 5)})
        assert events[-1].message.message_type == "V0JobFinishedRequest", events[-1].message
        assert events[-1].message.docker_process_stdout == "ok\n"


async def test_upload_stage_overrun(link_client: Any, busybox_image: str, http_server) -> None:
    release = asyncio.Event()

    async def stall(request: web.Request) -> web.Response:
        await request.read()
        await release.wait()
        return web.Response(text="too late")

    url = http_server.route("PUT", "/slow", stall)
    try:
        started = time.monotonic()
        _, events = await run_job(link_client, busybox_image, ["echo", "printed"],
                                  init_kw={"timing": timing(0, 5, 5, 1)},
                                  output_upload={"output_upload_type": "zip_and_http_put", "url": url})
        failed = events[-1].message
        assert types(events) == ["V0ExecutorReadyRequest", "V0VolumesReadyRequest", "V0ExecutionDoneRequest",
                                 "V0JobFailedRequest"]
        assert (failed.reason, failed.stage, failed.message) == ("timeout", "result_upload", "Upload time exceeded")
        assert time.monotonic() - started < 15  # leftover download/execution time, then the 1 s of upload
    finally:
        release.set()


async def test_download_stage_overrun_after_partial_wait(link_client: Any, busybox_image: str) -> None:
    """The payload arrives, but too late for leeway + download budget."""
    job_uuid = str(uuid.uuid4())
    await link_client.send(Submit(job_uuid=job_uuid, initial=initial(job_uuid, busybox_image,
                                                                     timing=timing(1, 1, 5, 5))))
    assert (await link_client.recv()).message.message_type == "V0ExecutorReadyRequest"
    await asyncio.sleep(2.5)
    await link_client.send(Payload(job_uuid=job_uuid, request=job_request(job_uuid, busybox_image, ["true"])))
    events = await link_client.recv_events(job_uuid, timeout_s=10)
    failed = events[-1].message
    assert (failed.reason, failed.stage, failed.message) == ("timeout", "volume_download", "Download time exceeded")
