"""Executor-manager plugins: the example manager is loaded by dotted path from the config,
starts a real executor-agent process per job, and a job runs through it on real podman."""

from __future__ import annotations

import asyncio
import os
import signal
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from horde_protocol.enums import ExecutorClass
from horde_protocol.messages import (
    V0AcceptJobRequest,
    V0DeclineJobRequest,
    V0ExecutorManifestRequest,
    V0ExecutorReadyRequest,
    V0JobRequest,
)
from miner_agent.fleet.manager import BaseExecutorManager, ManagedExecutor, ManagerLoadError, load_manager
from miner_agent.miner_config import ExecutorManagerSection
from tests.fixtures.miner import sim_for

CLASS = "always_on.test"
EXAMPLE = "miner_agent.fleet.examples.subprocess_manager:SubprocessExecutorManager"


class FailingManager(BaseExecutorManager):
    """A manager whose executors never start (its manifest still offers one)."""

    def get_manifest(self) -> dict[ExecutorClass, int]:
        return {ExecutorClass(CLASS): 1}

    async def start_new_executor(self, token: str, executor_class: ExecutorClass, timeout_s: float) -> ManagedExecutor:
        raise RuntimeError("no capacity in the cloud today")

    async def kill_executor(self, executor: ManagedExecutor) -> None:
        pass

    async def wait_for_executor(self, executor: ManagedExecutor, timeout_s: float) -> object | None:
        return None


@pytest.fixture
def work_dir() -> Iterator[Path]:
    """The manager's executor homes; afterwards, any executor-agent still running from one of them
    is stopped (a test that ends mid-job would otherwise leave its agent behind, one per run)."""
    path = Path(tempfile.mkdtemp(prefix="mgr-"))
    yield path
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"executor_agent" in cmdline and str(path).encode() in cmdline:
            os.kill(int(pid), signal.SIGTERM)


def _managed_config(miner_config, class_path: str, **options):
    return miner_config.model_copy(update={
        "executors": [],
        "executor_manager": ExecutorManagerSection(class_path=class_path, options=options),
    })


def _job(sim, image, cmd):
    initial = sim.initial_request(CLASS, image)
    request = V0JobRequest(job_uuid=initial.job_uuid, executor_class=CLASS, docker_image=image,
                           docker_run_options_preset="none", docker_run_cmd=cmd)
    return initial, request


@pytest.mark.podman
async def test_example_manager_runs_a_job_in_its_own_agent_and_cleans_up(
        miner_config, start_miner, podman_socket, busybox_image, validator_key, work_dir: Path) -> None:
    config = _managed_config(miner_config, EXAMPLE, work_dir=str(work_dir), podman_url=podman_socket,
                             manifest={CLASS: 1})
    agent = await start_miner(config)
    sim = sim_for(agent, validator_key)
    async with await sim.connect() as session:
        manifest = (await session.recv_until(V0ExecutorManifestRequest)).message.manifest
    assert {str(k): v for k, v in manifest.items()} == {CLASS: 1}

    initial, request = _job(sim, busybox_image, ["echo", "managed"])
    received = await sim.run_job(initial, request)
    types = [r.type for r in received]
    assert types[:4] == ["V0AcceptJobRequest", "V0ExecutorReadyRequest", "V0VolumesReadyRequest",
                         "V0ExecutionDoneRequest"], types
    assert received[-1].message.docker_process_stdout == "managed\n"
    for _ in range(100):  # kill_executor runs after the result; the executor's home goes with it
        if not any(work_dir.iterdir()):
            break
        await asyncio.sleep(0.05)
    assert not any(work_dir.iterdir())
    assert not agent.ctx.fleet.managed and not agent.ctx.fleet.managed_class


@pytest.mark.podman
async def test_manager_capacity_is_respected(miner_config, start_miner, podman_socket, busybox_image,
                                             validator_key, work_dir: Path) -> None:
    agent = await start_miner(_managed_config(miner_config, EXAMPLE, work_dir=str(work_dir),
                                              podman_url=podman_socket, manifest={CLASS: 1}))
    sim = sim_for(agent, validator_key)
    first, _ = _job(sim, busybox_image, ["true"])
    second, _ = _job(sim, busybox_image, ["true"])
    async with await sim.connect() as s1:
        await s1.recv_until(V0ExecutorManifestRequest)
        await s1.send(first)
        assert (await s1.recv_until(V0AcceptJobRequest, V0DeclineJobRequest)).type == "V0AcceptJobRequest"
        await s1.send(second)
        reply = await s1.recv_until(V0DeclineJobRequest, V0AcceptJobRequest)
        assert (reply.type, reply.message.reason) == ("V0DeclineJobRequest", "busy")
        await s1.recv_until(V0ExecutorReadyRequest, timeout_s=15)


async def test_manager_that_cannot_start_gives_spinup_failure(miner_config, start_miner, validator_key) -> None:
    agent = await start_miner(_managed_config(miner_config, f"{__name__}:FailingManager"))
    sim = sim_for(agent, validator_key)
    initial, request = _job(sim, "img", ["true"])
    received = await sim.run_job(initial, request)
    assert [r.type for r in received] == ["V0AcceptJobRequest", "V0HordeFailedRequest"]
    failure = received[-1].message
    assert (failure.reported_by, failure.reason, failure.message) == (
        "miner", "executor_spinup_failed", "Executor failed to start")
    assert not agent.ctx.service.jobs


def test_bad_class_paths_are_clear_errors() -> None:
    with pytest.raises(ManagerLoadError, match="cannot import no_such_module"):
        load_manager("no_such_module:Manager", {})
    with pytest.raises(ManagerLoadError, match="expected \"package.module:ClassName\""):
        load_manager("nodots", {})
    with pytest.raises(ManagerLoadError, match="not a subclass"):
        load_manager("pathlib:Path", {})
    assert isinstance(load_manager(f"{__name__}.FailingManager", {}), FailingManager)
