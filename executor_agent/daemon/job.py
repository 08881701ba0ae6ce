"""One job's lifecycle on this host: startup, download, execution, upload (behaviour.md §2.2).

A `JobRun` owns its job dir and its container (`JobContainer`, which does the container
work through the engine protocol) and reports through an `emit` callback (the registry
numbers, logs and fans out each message). Where it is, and how it is ending, is one
explicit `Stage`. Failures are two flat exceptions translated once, at the end of `run()`,
into the exact stock messages of protocol.md §5.4: `JobFailure` (the job's fault ->
V0JobFailedRequest) and `HordeFailure` (ours -> V0HordeFailedRequest, reported_by "executor").
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from agent_common.logs import set_job_fields
from executor_agent.container.tls_proxy import HEALTH_FAILED_MESSAGE, StreamingError
from executor_agent.daemon.deadline import STAGE_TIMEOUT_MESSAGES, Deadline, NoTiming, StageBudgets
from executor_agent.daemon.deps import JobDeps
from executor_agent.daemon.failures import HordeFailure, JobFailure
from executor_agent.daemon.job_container import ContainerResult, JobContainer
from executor_agent.daemon.job_fields import FieldProblem, initial_problem, request_problem
from executor_agent.daemon.job_io import deliver_outputs, fetch_inputs
from executor_agent.daemon.jobdirs import JobDirs
from executor_agent.daemon.recovery import RunningState, drop_running_state, save_running_state
from executor_agent.daemon.streaming_job import HealthCheckFailed, StreamingSession
from executor_agent.plugins.job_runner import JobContext
from horde_protocol.enums import HordeFailureReason, JobFailureReason, JobParticipantType, JobStage
from horde_protocol.messages import (
    ExecutorToMinerMessage,
    V0ExecutionDoneRequest,
    V0ExecutorReadyRequest,
    V0HordeFailedRequest,
    V0InitialJobRequest,
    V0JobFailedRequest,
    V0JobFinishedRequest,
    V0JobRequest,
    V0MachineSpecsRequest,
    V0StreamingJobReadyRequest,
    V0VolumesReadyRequest,
)
from horde_protocol.structs import MachineSpecs

log = logging.getLogger(__name__)

CANCELLED_MESSAGE = "Job cancelled by miner"

Emit = Callable[[ExecutorToMinerMessage], Awaitable[None]]
T = TypeVar("T")


class Stage(enum.Enum):
    """Where a JobRun is. The working stages' values are the wire `JobStage`s their
    failures report; the ending states say how the run ends, each entered once:

    working -> CANCELLING (cancel(): kill, then one horde failure)
            -> DETACHING  (agent shutdown: no message, the container runs on for the next agent)
    working | CANCELLING -> ENDING (the terminal message is decided: too late to cancel or detach)
    ENDING -> ENDED (cleanup done)
    """

    STARTUP = JobStage.EXECUTOR_STARTUP.value
    DOWNLOAD = JobStage.VOLUME_DOWNLOAD.value
    EXECUTION = JobStage.EXECUTION.value
    STREAMING_STARTUP = JobStage.STREAMING_STARTUP.value  # while the streaming job's /health is awaited
    UPLOAD = JobStage.RESULT_UPLOAD.value
    CANCELLING = "cancelling"
    DETACHING = "detaching"
    ENDING = "ending"
    ENDED = "ended"

    @property
    def working(self) -> bool:
        return self not in _ENDING_STATES


_ENDING_STATES = frozenset({Stage.CANCELLING, Stage.DETACHING, Stage.ENDING, Stage.ENDED})


class JobRun:
    """Runs one job to exactly one terminal message. `cancel()` ends it with a horde
    failure; `detach()`, or cancelling the task without `cancel()` (agent shutdown), emits
    nothing and leaves the container running, so a restarted agent can pick it up."""

    def __init__(self, initial: V0InitialJobRequest, dirs: JobDirs, deps: JobDeps, emit: Emit) -> None:
        self.job_uuid = initial.job_uuid
        self.initial = initial
        self.dirs = dirs
        self.deps = deps
        self.runner = deps.runner
        self._emit = emit
        self._clock = deps.clock
        self.stage = Stage.STARTUP
        self.work_stage = Stage.STARTUP  # the last working stage: what failure messages report
        self._cancel_reason = ""  # what cancel() was given; read only in Stage.CANCELLING
        self._scope: asyncio.Timeout | None = None  # the current stage's deadline
        self.payload: asyncio.Future[V0JobRequest] = asyncio.get_running_loop().create_future()
        self.task: asyncio.Task[None] | None = None
        self.result_type: str | None = None
        self._state_saved: asyncio.Future[None] | None = None  # the write of running.json, once started
        self.container = JobContainer(self.job_uuid, dirs, deps.config, deps.engine)
        details = initial.streaming_details
        self.streaming = (StreamingSession(self.job_uuid, details, deps.config.streaming, deps.engine, dirs.root)
                          if details is not None else None)

    def start(self, resume: RunningState | None = None) -> asyncio.Task[None]:
        self.task = asyncio.create_task(self.run(resume), name=f"job-{self.job_uuid}")
        return self.task

    def give_payload(self, request: V0JobRequest) -> bool:
        """False when a payload was already given (the caller answers with a LinkError)."""
        if self.payload.done():
            return False
        self.payload.set_result(request)
        return True

    def detach(self) -> None:
        """Agent shutdown: stop this task but leave the container running for the next agent.
        Once the terminal message is decided the short cleanup is left to finish."""
        if self.stage in (Stage.ENDING, Stage.ENDED):
            return
        self.stage = Stage.DETACHING
        self._cancel_task()

    def cancel(self, reason: str) -> bool:
        """Ask the job to end with a horde failure; False once it is already ending."""
        if not self.stage.working:
            return False
        self.stage = Stage.CANCELLING
        self._cancel_reason = reason
        self._cancel_task()
        return True

    def _cancel_task(self) -> None:
        if self.task is not None and not self.task.done():
            self.task.cancel()

    def _enter(self, stage: Stage) -> None:
        """Move to a working stage. An ending under way keeps its state; only the stage its
        failure reports moves on."""
        self.work_stage = stage
        if self.stage.working:
            self.stage = stage

    async def run(self, resume: RunningState | None = None) -> None:
        """The whole job, or (after an agent restart) its rest from the running container."""
        set_job_fields(job=self.job_uuid, validator=self.initial.job_started_receipt_payload.validator_hotkey)
        started = self._clock()
        terminal: ExecutorToMinerMessage
        try:
            terminal = await (self._resumed(resume) if resume is not None else self._lifecycle())
        except JobFailure as exc:
            terminal = V0JobFailedRequest(
                job_uuid=self.job_uuid, message=exc.message, reason=exc.reason, stage=JobStage(self.work_stage.value),
                docker_process_exit_status=exc.exit_status, docker_process_stdout=exc.stdout,
                docker_process_stderr=exc.stderr,
            )
        except HordeFailure as exc:
            terminal = self._horde(exc.reason, exc.message, exc.context)
        except asyncio.CancelledError:
            if self.stage is not Stage.CANCELLING:  # detach(), or the task cancelled from outside
                log.info("job left running on shutdown job=%s stage=%s", self.job_uuid, self.work_stage.value)
                if self.streaming is not None:  # the listener dies with this agent; free its port now
                    await self.streaming.close(remove_network=False)
                raise
            await self.container.kill()
            reason = self._cancel_reason
            text = f"{CANCELLED_MESSAGE}: {reason}" if reason else CANCELLED_MESSAGE
            terminal = self._horde(HordeFailureReason.GENERIC_ERROR, text, {"stage": self.work_stage.value})
        except Exception as exc:  # noqa: BLE001 - every other error is ours, reported, never lost
            log.exception("unhandled exception job=%s stage=%s", self.job_uuid, self.work_stage.value)
            terminal = self._horde(HordeFailureReason.UNHANDLED_EXCEPTION, "Unhandled exception",
                                   {"exception_type": type(exc).__name__, "stage": self.work_stage.value})
        self.stage = Stage.ENDING
        self.result_type = terminal.message_type
        await self._emit(terminal)
        log.info("job ended job=%s stage=%s result=%s took_ms=%d", self.job_uuid, self.work_stage.value,
                 terminal.message_type, (self._clock() - started) * 1000)
        await self._cleanup()
        self.stage = Stage.ENDED

    def _horde(self, reason: HordeFailureReason, message: str, context: dict[str, Any] | None) -> V0HordeFailedRequest:
        return V0HordeFailedRequest(job_uuid=self.job_uuid, reported_by=JobParticipantType.EXECUTOR,
                                    reason=reason, message=message, context=context)

    async def _lifecycle(self) -> V0JobFinishedRequest:
        """The happy path, stage by stage."""
        try:
            budgets = StageBudgets.from_initial(self.initial.executor_timing, self.initial.timeout_seconds)
        except NoTiming as exc:
            raise HordeFailure(HordeFailureReason.GENERIC_ERROR, str(exc)) from None
        self._refuse_invalid(initial_problem(self.initial))
        self.dirs.create()
        if self.initial.docker_image:
            await self.container.ensure_image(await self._hook("image", lambda: self.runner.image(self.context(None))))
        await self._emit(V0ExecutorReadyRequest(job_uuid=self.job_uuid))
        deadline = Deadline(budgets, self._clock())
        if self.streaming is not None:
            await self.streaming.prepare()

        request = await self._stage(deadline, Stage.DOWNLOAD, self._download)
        result = await self._stage(deadline, Stage.EXECUTION, lambda: self._execute(request, deadline))
        return await self._stage(deadline, Stage.UPLOAD, lambda: self._upload(request, result))

    async def _resumed(self, state: RunningState) -> V0JobFinishedRequest:
        """Pick the job up at its running (or exited) container after an agent restart."""
        self.container.container_id = state.container_id
        self.payload.set_result(state.request)
        deadline = state.deadline(self._clock())
        log.info("job resumed job=%s stage=execution left_s=%.1f", self.job_uuid, deadline.remaining(self._clock()))
        result = await self._stage(deadline, Stage.EXECUTION, lambda: self._await_container(deadline), extend=False)
        return await self._stage(deadline, Stage.UPLOAD, lambda: self._upload(state.request, result))

    async def _stage(self, deadline: Deadline, stage: Stage, body: Callable[[], Awaitable[T]],
                     extend: bool = True) -> T:
        """Run one stage within the shared deadline; overrunning it is the job's `timeout`."""
        self._enter(stage)
        now = self._clock()
        left = deadline.enter(stage.value, now) if extend else deadline.remaining(now)
        log.debug("stage entered job=%s stage=%s left_s=%.2f", self.job_uuid, stage.value, left)
        scope = self._scope = asyncio.timeout(left)
        try:
            async with scope:
                return await body()
        except TimeoutError:
            if scope.expired():
                raise JobFailure(JobFailureReason.TIMEOUT, STAGE_TIMEOUT_MESSAGES[stage.value]) from None
            raise

    async def _download(self) -> V0JobRequest:
        request = await self.payload
        self._refuse_invalid(request_problem(request, self.initial))
        await fetch_inputs(self.initial, request, self.dirs, self.deps.config)
        await self.container.ensure_image(await self._hook("image", lambda: self.runner.image(self.context(request))))
        await self._emit(V0VolumesReadyRequest(job_uuid=self.job_uuid))
        return request

    def _refuse_invalid(self, problem: FieldProblem | None) -> None:
        """A malformed field is the job author's mistake: fail the job naming it, before
        podman or a download turns it into an error that reads as ours."""
        if problem is not None:
            log.info("job request refused job=%s stage=%s field=%s", self.job_uuid, self.work_stage.value,
                     problem.field)
            raise JobFailure(problem.reason, problem.message)

    def context(self, request: V0JobRequest | None) -> JobContext:
        return JobContext(job_uuid=self.job_uuid, initial=self.initial, request=request, job_dir=self.dirs.root,
                          volume_dir=self.dirs.volume, output_dir=self.dirs.output, artifacts_dir=self.dirs.artifacts)

    async def _hook(self, hook: str, call: Callable[[], Any]) -> Any:
        """Run one job-runner plugin hook; its failure is the host's (a horde failure)."""
        try:
            result = call()
            return await result if asyncio.iscoroutine(result) else result
        except (asyncio.CancelledError, JobFailure, HordeFailure):
            raise
        except Exception as exc:  # noqa: BLE001 - any plugin error is reported, never lost
            log.warning("job runner hook failed job=%s runner=%s hook=%s", self.job_uuid, self.runner.name, hook,
                        exc_info=True)
            raise HordeFailure(HordeFailureReason.GENERIC_ERROR,
                               f"Job runner {self.runner.name} failed in {hook}: {type(exc).__name__}: {exc}",
                               {"stage": self.work_stage.value, "hook": hook}) from exc

    def _leaves_container(self, exc: BaseException) -> bool:
        """Whether an exception leaving the container work must leave the container running:
        on agent shutdown only (detach(), or the task cancelled from outside, which is
        neither cancel() nor this stage's deadline)."""
        if self.stage is Stage.DETACHING:
            return True
        timed_out = self._scope is not None and self._scope.expired()
        return isinstance(exc, asyncio.CancelledError) and self.stage is not Stage.CANCELLING and not timed_out

    async def _abort_container(self, exc: BaseException) -> None:
        if not self._leaves_container(exc):
            await self.container.kill()

    async def _execute(self, request: V0JobRequest, deadline: Deadline) -> ContainerResult:
        ctx = self.context(request)
        await self._hook("before_start", lambda: self.runner.before_start(ctx))
        image = await self._hook("image", lambda: self.runner.image(ctx))
        await self.container.ensure_image(image)  # a no-op unless the plugin changed its mind since the download
        script = self.container.write_script(request)
        command = self.container.command_of(request, script)
        command = list(await self._hook("command", lambda: self.runner.command(ctx, command)))
        network = self.streaming.network if self.streaming is not None else None
        kwargs = self.container.create_kwargs(request, image, command, script, network)
        kwargs = await self._hook("run_options", lambda: self.runner.run_options(ctx, kwargs))
        self.deps.image_used(str(kwargs.get("image") or image))
        try:
            if self.streaming is not None:
                await self.streaming.create_network()
            container_id = await self.container.start(kwargs, str(request.docker_run_options_preset))
        except HordeFailure:  # no GPU spec: the engine already removed what it created
            raise
        except BaseException as exc:
            await self._abort_container(exc)
            raise
        log.info("container started job=%s stage=execution container=%s", self.job_uuid, container_id[:12])
        try:
            await self._hook("after_start", lambda: self.runner.after_start(ctx, container_id))
        except HordeFailure:
            await self.container.kill()
            raise
        initial, resumable = state_to_keep(self.initial, request)
        self._state_saved = asyncio.ensure_future(asyncio.to_thread(
            save_running_state, self.dirs.root, initial, resumable, container_id, deadline, self._clock()))
        await asyncio.shield(self._state_saved)
        if self.streaming is not None:
            await self._serve_streaming(container_id)
        return await self._await_container(deadline)

    async def _serve_streaming(self, container_id: str) -> None:
        """Proxy up and /health answered, then tell the miner where to connect."""
        assert self.streaming is not None
        self._enter(Stage.STREAMING_STARTUP)
        try:
            port = await self.streaming.serve(container_id)
        except HealthCheckFailed as exc:
            await self.container.kill()
            raise JobFailure(JobFailureReason.TIMEOUT, HEALTH_FAILED_MESSAGE, exit_status=exc.exit_code) from None
        except StreamingError as exc:
            await self.container.kill()
            raise HordeFailure(HordeFailureReason.GENERIC_ERROR, f"Streaming setup failed: {exc}",
                               {"stage": self.work_stage.value}) from None
        except BaseException as exc:
            await self._abort_container(exc)
            raise
        assert self.streaming.cert is not None
        self._enter(Stage.EXECUTION)
        await self._emit(V0StreamingJobReadyRequest(job_uuid=self.job_uuid, public_key=self.streaming.cert.cert_pem,
                                                    port=port))

    async def _await_container(self, deadline: Deadline) -> ContainerResult:
        try:
            result = await self.container.run_to_exit(deadline.container_timeout(self._clock()))
        except BaseException as exc:
            await self._abort_container(exc)
            raise
        self.container.check_exit(result)
        await self._emit(V0ExecutionDoneRequest(job_uuid=self.job_uuid))
        return result

    async def _upload(self, request: V0JobRequest, result: ContainerResult) -> V0JobFinishedRequest:
        results = await deliver_outputs(request, result, self.dirs, self.deps.config)
        specs = self.deps.specs
        if specs is not None and specs.specs is not None:  # stock: only on success, right before finished
            await self._emit(V0MachineSpecsRequest(job_uuid=self.job_uuid, specs=MachineSpecs(specs=specs.specs)))
        return V0JobFinishedRequest(job_uuid=self.job_uuid, docker_process_stdout=result.stdout.text(),
                                    docker_process_stderr=result.stderr.text(), artifacts=results.artifacts,
                                    upload_results=results.upload_results)

    async def _cleanup(self) -> None:
        """After the terminal event: running.json goes first (it holds the job's upload URLs and
        nothing needs it any more, kept dirs or not), then the plugin's cleanup hook, then the
        container(s) and the work dirs (unless kept)."""
        await self._drop_state()
        request = self.payload.result() if self.payload.done() and not self.payload.cancelled() else None
        try:
            await self.runner.cleanup(self.context(request), self.container.container_id, self.result_type or "")
        except Exception:  # noqa: BLE001 - errors in cleanup are only logged, as in stock
            log.warning("job runner cleanup failed job=%s runner=%s", self.job_uuid, self.runner.name, exc_info=True)
        if self.streaming is not None:  # the proxy goes first; the network once its container is gone
            await self.streaming.close(remove_network=False)
        if self.deps.config.keep_job_dirs:
            return
        try:
            await self.container.remove()
            if self.streaming is not None:
                await self.deps.engine.remove_network(self.streaming.network)
            await asyncio.to_thread(self.dirs.remove_work)
        except Exception:  # noqa: BLE001 - errors in cleanup are only logged, as in stock
            log.warning("cleanup failed job=%s", self.job_uuid, exc_info=True)

    async def _drop_state(self) -> None:
        """Delete running.json, after its write if one is still under way in its thread (a
        cancel during the write must not let the file reappear after the delete)."""
        if self._state_saved is not None:
            await asyncio.gather(self._state_saved, return_exceptions=True)
        try:
            await asyncio.to_thread(drop_running_state, self.dirs.root)
        except OSError:
            log.warning("running state not removed job=%s", self.job_uuid, exc_info=True)


def state_to_keep(initial: V0InitialJobRequest, request: V0JobRequest) -> tuple[V0InitialJobRequest, V0JobRequest]:
    """The requests as running.json keeps them: what a resumed job still needs (the upload
    target, artifacts_dir, streaming details), without what it no longer does once its
    container exists: the env (in the container already) and the volumes (downloaded), whose
    tokens and presigned URLs would otherwise sit on disk for the whole run."""
    return (initial.model_copy(update={"volume": None}),
            request.model_copy(update={"env": {}, "volume": None}))
