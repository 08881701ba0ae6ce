"""The executor's job lifecycle (`JobRun`) against an in-memory container engine: no podman.

The fake implements `ContainerEngine`; a container "runs" until its scripted exit or a kill.
What real podman does (mounts, logs, limits) stays with the integration tests; here it is the
order of the messages, the single terminal one, and who kills or keeps the container.
"""

from __future__ import annotations

import asyncio
import inspect
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from executor_agent.container.engine import ContainerEngine, ContainerState, EngineNotFound
from executor_agent.container.job_spec import JOB_LABEL
from executor_agent.container.podman_engine import Podman
from executor_agent.daemon.deps import JobDeps
from executor_agent.daemon.job import JobRun, Stage
from executor_agent.daemon.jobdirs import JobDirs
from executor_agent.daemon.recovery import STATE_FILE
from executor_agent.daemon.registry import JobRegistry
from executor_agent.executor_config import AgentConfig
from executor_agent.outputs.collect import LogCapture
from executor_agent.specs import SpecsCache, SpecsSources
from horde_protocol.link_frames import AgentToMinerFrame, Event, Submit
from horde_protocol.messages import (
    ExecutorToMinerMessage,
    V0HordeFailedRequest,
    V0InitialJobRequest,
    V0JobFailedRequest,
    V0JobRequest,
)

IMAGE = "localhost/fake-job:1"
CLASS = "always_on.test"
KILLED_EXIT_CODE = 137
SETTLE_TIMEOUT_S = 5.0  # how long a test waits for the job to reach a point; far more than it needs
EVENTUALLY_POLL_S = 0.01


@dataclass
class FakeContainer:
    container_id: str
    kwargs: dict[str, Any]
    exit_code: int | None = None  # None while it runs
    killed: bool = False
    exited: asyncio.Event = field(default_factory=asyncio.Event)

    def end(self, code: int) -> None:
        if self.exit_code is None:
            self.exit_code = code
            self.exited.set()


class FakeEngine:
    """Containers in a dict. `exit_code` is what a started container exits with right away
    (None: it runs until killed); `wait_cap_s` makes a wait give up early (a container that
    outlives its own limit, without the test sleeping that long); `wait_hangs` makes a wait
    ignore its timeout (a stuck engine: only the stage deadline ends it)."""

    def __init__(self, *, exit_code: int | None = 0, stdout: bytes = b"", stderr: bytes = b"",
                 wait_cap_s: float | None = None, wait_hangs: bool = False,
                 exit_codes: dict[str, int] | None = None) -> None:
        self.exit_code = exit_code
        self.exit_codes = exit_codes or {}  # by the container's first command word, over `exit_code`
        self.stdout, self.stderr = stdout, stderr
        self.wait_cap_s, self.wait_hangs = wait_cap_s, wait_hangs
        self.containers: dict[str, FakeContainer] = {}
        self.killed: list[str] = []
        self.waiting = asyncio.Event()  # set once the lifecycle waits on a container

    def _get(self, container_id: str) -> FakeContainer:
        try:
            return self.containers[container_id]
        except KeyError:
            raise EngineNotFound(f"no container {container_id}") from None

    async def ensure_image(self, image: str, *, pull: bool, timeout_s: float) -> bool:
        return True

    async def start_container(self, kwargs: dict[str, Any]) -> str:
        container = FakeContainer(f"fake{len(self.containers) + 1:04d}", kwargs)
        self.containers[container.container_id] = container
        code = self.exit_codes.get((kwargs.get("command") or [""])[0], self.exit_code)
        if code is not None:
            container.end(code)
        return container.container_id

    async def wait(self, container_id: str, timeout_s: float) -> int | None:
        container = self._get(container_id)
        self.waiting.set()
        limit = None if self.wait_hangs else min(timeout_s, self.wait_cap_s or timeout_s)
        try:
            await asyncio.wait_for(container.exited.wait(), limit)
        except TimeoutError:
            return None
        return container.exit_code

    async def kill(self, container_id: str) -> None:
        container = self.containers.get(container_id)
        if container is None or container.exit_code is not None:
            return
        container.killed = True
        self.killed.append(container_id)
        container.end(KILLED_EXIT_CODE)

    async def capture_logs(self, container_id: str, stdout_capture: LogCapture, stderr_capture: LogCapture) -> None:
        self._get(container_id)
        stdout_capture.feed(self.stdout)
        stderr_capture.feed(self.stderr)

    async def disk_bytes(self, container_id: str) -> int:
        return 0

    async def job_containers(self, job_uuid: str | None = None) -> list[ContainerState]:
        return [ContainerState(c.container_id, "running" if c.exit_code is None else "exited", c.exit_code)
                for c in self.containers.values()
                if job_uuid is None or c.kwargs.get("labels", {}).get(JOB_LABEL) == job_uuid]

    async def remove(self, container_id: str) -> None:
        container = self.containers.pop(container_id, None)
        if container is not None:
            container.end(KILLED_EXIT_CODE)

    async def create_internal_network(self, name: str, job_uuid: str, subnet_pool: str) -> str:
        raise AssertionError("no streaming job in these tests")

    async def remove_network(self, name: str) -> None:
        pass

    async def container_ip(self, container_id: str, network: str) -> str | None:
        return None

    async def state(self, container_id: str) -> ContainerState | None:
        container = self.containers.get(container_id)
        if container is None:
            return None
        return ContainerState(container_id, "running" if container.exit_code is None else "exited",
                              container.exit_code)

    async def job_label_of(self, container_id: str) -> str | None:
        return self._get(container_id).kwargs.get("labels", {}).get(JOB_LABEL)

    async def network_exists(self, name: str) -> bool:
        return False


class SkewedClock:
    """time.monotonic plus a skew a test moves forward, so a stage deadline can be made
    to fall due in a fraction of a second although budgets are whole seconds."""

    def __init__(self) -> None:
        self.skew = 0.0

    def __call__(self) -> float:
        return time.monotonic() + self.skew


def initial(job_uuid: str, *, timing: dict[str, int] | None = None) -> V0InitialJobRequest:
    timing = timing or {"allowed_leeway": 5, "download_time_limit": 10, "execution_time_limit": 20,
                        "upload_time_limit": 10, "streaming_start_time_limit": 0}
    return V0InitialJobRequest.model_validate({
        "job_uuid": job_uuid, "executor_class": CLASS, "docker_image": IMAGE,
        "job_started_receipt_payload": {
            "job_uuid": job_uuid, "miner_hotkey": "5Gminer", "validator_hotkey": "5Fvali",
            "timestamp": "2026-01-21T12:00:00.123456Z", "receipt_type": "JobStartedReceipt",
            "executor_class": CLASS, "is_organic": True, "ttl": 7,
        },
        "job_started_receipt_signature": "0x00",
        "executor_timing": timing,
    })


def job_request(job_uuid: str, command: str = "run-the-job") -> V0JobRequest:
    return V0JobRequest.model_validate({
        "job_uuid": job_uuid, "executor_class": CLASS, "docker_image": IMAGE,
        "docker_run_options_preset": "none", "docker_run_cmd": [command],
    })


def config_for(tmp_path: Path) -> AgentConfig:
    return AgentConfig(socket_path=tmp_path / "agent.sock", jobs_dir=tmp_path / "jobs", image_policy="local_only",
                       slots=3)


def deps_for(tmp_path: Path, engine: ContainerEngine, clock: SkewedClock | None = None) -> JobDeps:
    specs = SpecsCache(SpecsSources())
    specs.specs = {"cpu": {"count": 1}}  # as if collected at agent start
    return JobDeps(config=config_for(tmp_path), engine=engine, specs=specs, clock=clock or time.monotonic)


class Job:
    """One JobRun and everything it emitted."""

    def __init__(self, tmp_path: Path, engine: FakeEngine, *, clock: SkewedClock | None = None,
                 timing: dict[str, int] | None = None) -> None:
        self.job_uuid = str(uuid.uuid4())
        self.dirs = JobDirs(tmp_path / "jobs" / self.job_uuid)
        self.dirs.root.mkdir(parents=True)
        self.messages: list[ExecutorToMinerMessage] = []
        self.run = JobRun(initial(self.job_uuid, timing=timing), self.dirs, deps_for(tmp_path, engine, clock),
                          self._emit)

    async def _emit(self, message: ExecutorToMinerMessage) -> None:
        self.messages.append(message)

    def start(self, *, with_payload: bool = True) -> asyncio.Task[None]:
        if with_payload:
            self.give_payload()
        return self.run.start()

    def give_payload(self) -> None:
        assert self.run.give_payload(job_request(self.job_uuid))

    @property
    def types(self) -> list[str]:
        return [m.message_type for m in self.messages]

    @property
    def terminals(self) -> list[ExecutorToMinerMessage]:
        return [m for m in self.messages if m.outcome is not None]


async def eventually(condition: Any, what: str) -> None:
    try:
        async with asyncio.timeout(SETTLE_TIMEOUT_S):
            while not condition():
                await asyncio.sleep(EVENTUALLY_POLL_S)
    except TimeoutError:
        raise AssertionError(f"never happened: {what}") from None


async def test_happy_path_reports_each_step_in_order_and_one_terminal(tmp_path: Path) -> None:
    engine = FakeEngine(exit_code=0, stdout=b"hi\n", stderr=b"oops\n")
    job = Job(tmp_path, engine)
    await job.start()
    assert job.types == ["V0ExecutorReadyRequest", "V0VolumesReadyRequest", "V0ExecutionDoneRequest",
                         "V0MachineSpecsRequest", "V0JobFinishedRequest"]
    assert [m.progress for m in job.messages[:-1]] == sorted(m.progress for m in job.messages[:-1])
    assert len(job.terminals) == 1
    finished = job.messages[-1]
    assert (finished.docker_process_stdout, finished.docker_process_stderr) == ("hi\n", "oops\n")
    assert job.run.stage is Stage.ENDED and job.run.work_stage is Stage.UPLOAD
    assert engine.killed == [] and engine.containers == {}  # ended by itself, removed in cleanup
    assert not job.dirs.output.exists()  # the work dirs went with it
    assert not job.run.cancel("too late")


async def test_the_container_keeps_the_job_label_and_name_whatever_it_was_given(tmp_path: Path) -> None:
    engine = FakeEngine(exit_code=0)
    engine_start = engine.start_container
    seen: list[dict[str, Any]] = []

    async def recording_start(kwargs: dict[str, Any]) -> str:
        seen.append(dict(kwargs))
        return await engine_start(kwargs)

    engine.start_container = recording_start  # type: ignore[method-assign]
    job = Job(tmp_path, engine)
    await job.start()
    (kwargs,) = seen
    assert kwargs["labels"] == {JOB_LABEL: job.job_uuid}
    assert kwargs["name"] == f"ch-{job.job_uuid}-job"
    assert kwargs["command"] == ["run-the-job"] and kwargs["network_mode"] == "none"


async def test_cancel_during_execution_kills_and_sends_one_horde_failure(tmp_path: Path) -> None:
    engine = FakeEngine(exit_code=None)  # runs until killed
    job = Job(tmp_path, engine)
    task = job.start()
    await asyncio.wait_for(engine.waiting.wait(), SETTLE_TIMEOUT_S)
    assert job.run.stage is Stage.EXECUTION
    assert job.run.cancel("validator went away")
    assert job.run.stage is Stage.CANCELLING
    assert not job.run.cancel("twice")  # the reason is carried once
    await task
    assert job.types == ["V0ExecutorReadyRequest", "V0VolumesReadyRequest", "V0HordeFailedRequest"]
    (failed,) = job.terminals
    assert isinstance(failed, V0HordeFailedRequest)
    assert (failed.reason, failed.reported_by) == ("generic_error", "executor")
    assert failed.message == "Job cancelled by miner: validator went away"
    assert failed.context == {"stage": "execution"}
    assert len(engine.killed) == 1
    assert engine.containers == {}  # and removed in cleanup
    assert job.run.stage is Stage.ENDED


async def test_cancel_before_the_payload_reports_the_download_stage(tmp_path: Path) -> None:
    engine = FakeEngine()
    job = Job(tmp_path, engine)
    task = job.start(with_payload=False)
    await eventually(lambda: job.types == ["V0ExecutorReadyRequest"], "executor ready")
    assert job.run.cancel("")
    await task
    (failed,) = job.terminals
    assert (failed.message_type, failed.message, failed.context) == (
        "V0HordeFailedRequest", "Job cancelled by miner", {"stage": "volume_download"})
    assert engine.containers == {} and engine.killed == []


async def test_nonzero_exit_is_a_job_failure_in_execution(tmp_path: Path) -> None:
    engine = FakeEngine(exit_code=3, stdout=b"out\n", stderr=b"bad\n")
    job = Job(tmp_path, engine)
    await job.start()
    assert job.types == ["V0ExecutorReadyRequest", "V0VolumesReadyRequest", "V0JobFailedRequest"]
    (failed,) = job.terminals
    assert isinstance(failed, V0JobFailedRequest)
    assert (failed.reason, failed.stage, failed.message) == (
        "nonzero_return_code", "execution", "Job container exited with non-zero exit code: 3")
    assert (failed.docker_process_exit_status, failed.docker_process_stdout, failed.docker_process_stderr) == (
        3, "out\n", "bad\n")
    assert engine.killed == []  # it had exited; nothing to kill


@pytest.mark.parametrize("how", ["detach", "task.cancel"])
async def test_agent_shutdown_emits_nothing_and_leaves_the_container_running(tmp_path: Path, how: str) -> None:
    engine = FakeEngine(exit_code=None)
    job = Job(tmp_path, engine)
    task = job.start()
    await asyncio.wait_for(engine.waiting.wait(), SETTLE_TIMEOUT_S)
    if how == "detach":
        job.run.detach()
        assert job.run.stage is Stage.DETACHING
        assert not job.run.cancel("during shutdown")
    else:
        task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert job.types == ["V0ExecutorReadyRequest", "V0VolumesReadyRequest"]
    assert job.terminals == []
    (container,) = engine.containers.values()
    assert container.exit_code is None and engine.killed == []
    assert (job.dirs.root / STATE_FILE).exists()  # what the next agent resumes from


async def test_container_outliving_its_time_is_killed_and_a_timeout(tmp_path: Path) -> None:
    engine = FakeEngine(exit_code=None, stdout=b"started\n", wait_cap_s=0.05)
    job = Job(tmp_path, engine)
    await job.start()
    (failed,) = job.terminals
    assert isinstance(failed, V0JobFailedRequest)
    assert (failed.reason, failed.stage, failed.message) == (
        "timeout", "execution", "Job container timed out during execution")
    assert failed.docker_process_stdout == "started\n"
    assert len(engine.killed) == 1


async def test_execution_stage_deadline_kills_the_container(tmp_path: Path) -> None:
    clock = SkewedClock()
    engine = FakeEngine(exit_code=None, wait_hangs=True)  # only the stage deadline can end the wait
    timing = {"allowed_leeway": 1, "download_time_limit": 1, "execution_time_limit": 2, "upload_time_limit": 1,
              "streaming_start_time_limit": 0}
    job = Job(tmp_path, engine, clock=clock, timing=timing)
    task = job.start(with_payload=False)
    await eventually(lambda: job.types == ["V0ExecutorReadyRequest"], "executor ready")
    clock.skew = 3.8  # of the 1 + 1 + 2 s the job has, 0.2 s are left when execution starts
    job.give_payload()
    await asyncio.wait_for(task, SETTLE_TIMEOUT_S)
    (failed,) = job.terminals
    assert isinstance(failed, V0JobFailedRequest)
    assert (failed.reason, failed.stage, failed.message) == ("timeout", "execution", "Execution time exceeded")
    assert len(engine.killed) == 1  # a timeout is not a shutdown: the container goes


class Listener:
    def __init__(self) -> None:
        self.frames: list[AgentToMinerFrame] = []

    def deliver(self, frame: AgentToMinerFrame) -> None:
        self.frames.append(frame)


async def test_registry_numbers_events_and_counts_outcomes_from_the_models(tmp_path: Path) -> None:
    engine = FakeEngine(exit_code=0, exit_codes={"fail": 3})
    registry = JobRegistry(deps_for(tmp_path, engine))
    listener = Listener()
    finished, failed, cancelled = (str(uuid.uuid4()) for _ in range(3))
    for job_uuid in (finished, failed, cancelled):
        registry.submit(Submit(job_uuid=job_uuid, initial=initial(job_uuid)), listener)
    for job_uuid, command in ((finished, "run-the-job"), (failed, "fail")):
        registry.jobs[job_uuid].run.give_payload(job_request(job_uuid, command))  # type: ignore[union-attr]
    await eventually(lambda: registry.jobs[cancelled].events.last_seq == 1, "executor ready")
    registry.cancel(cancelled, "no payload coming")
    await eventually(lambda: all(e.events.finished for e in registry.jobs.values()), "all ended")
    events = [f for f in listener.frames if isinstance(f, Event)]
    seqs = {u: [e.seq for e in events if e.job_uuid == u] for u in (finished, failed, cancelled)}
    assert seqs == {finished: [1, 2, 3, 4, 5], failed: [1, 2, 3], cancelled: [1, 2]}
    c = registry.counters
    assert (c.submitted, c.finished, c.failed, c.horde_failed) == (3, 1, 1, 1)
    assert registry.active_count() == 0
    await registry.detach_all()


@pytest.mark.parametrize("engine", [Podman, FakeEngine])
def test_engines_have_exactly_the_protocol_signatures(engine: type) -> None:
    """typing.Protocol is checked by type checkers only; this keeps Podman and the fake honest at test time."""
    methods = [name for name, value in vars(ContainerEngine).items() if inspect.iscoroutinefunction(value)]
    assert "start_container" in methods and "job_label_of" in methods
    for name in methods:
        assert inspect.iscoroutinefunction(getattr(engine, name)), name
        assert inspect.signature(getattr(engine, name)) == inspect.signature(getattr(ContainerEngine, name)), name
