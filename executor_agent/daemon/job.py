"""One job's lifecycle on this host: startup, download, execution, upload (behaviour.md §2.2).

A `JobRun` owns its job dir and its container and reports through an `emit` callback
(the registry numbers, logs and fans out each message). Failures are two flat
exceptions translated once, at the end of `run()`, into the exact stock messages of
protocol.md §5.4: `JobFailure` (the job's fault -> V0JobFailedRequest) and
`HordeFailure` (ours -> V0HordeFailedRequest, reported_by "executor").
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from agent_common.logs import set_job_fields
from executor_agent.container.engine import CdiUnavailable
from executor_agent.container.job_spec import JOB_LABEL, JobContainerSpec, UnknownPreset
from executor_agent.container.podman_engine import Podman
from executor_agent.container.tls_proxy import HEALTH_FAILED_MESSAGE, StreamingError
from executor_agent.daemon.deadline import (
    DOWNLOAD,
    EXECUTION,
    STAGE_TIMEOUT_MESSAGES,
    UPLOAD,
    Deadline,
    NoTiming,
    StageBudgets,
)
from executor_agent.daemon.failures import HordeFailure, JobFailure
from executor_agent.daemon.jobdirs import JobDirs, chmod_tree, disk_use
from executor_agent.daemon.recovery import RunningState, drop_running_state, save_running_state
from executor_agent.daemon.streaming_job import HealthCheckFailed, StreamingSession
from executor_agent.executor_config import AgentConfig, ImagePolicy
from executor_agent.inputs.volume_fetch import VolumeError, fetch_volume, job_volume_limits
from executor_agent.outputs import collect as outputs
from executor_agent.outputs.upload import UploadError, UploadLimits, upload_outputs
from executor_agent.plugins.job_runner import JobContext, JobRunner
from executor_agent.specs import SpecsCache
from horde_protocol.enums import HordeFailureReason, JobFailureReason, JobParticipantType, JobStage
from horde_protocol.messages import (
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

STARTUP = "executor_startup"
STREAMING_STARTUP = "streaming_startup"  # reported while the streaming job's /health is awaited
CONTAINER_TIMEOUT_MESSAGE = "Job container timed out during execution"
PULL_FAILED_MESSAGE = "Failed to pull docker image"
MULTIPLE_VOLUMES_MESSAGE = "Received multiple volumes"
START_SETTLE_TIMEOUT_S = 30.0  # a cancelled start may still finish; wait this long to learn its id
DISK_LIMIT_MESSAGE = ("Job container exceeded its disk limit of {limit_mib} MiB (it used {used_mib} MiB in /output, "
                      "artifacts, its own filesystem and its logs) and was killed")
CDI_MESSAGE = ("GPU requested (docker_run_options_preset {preset}) but the CDI device {devices} is not configured "
               "on this executor host; generate the spec with `nvidia-ctk cdi generate --output=/etc/cdi/nvidia.yaml`")
MIB = 1024 * 1024

Emit = Callable[[Any], Awaitable[None]]


@dataclass
class ContainerResult:
    """How the container ended, with its logs captured (bounded in memory, full on disk)."""

    exit_code: int
    stdout: outputs.LogCapture
    stderr: outputs.LogCapture


class JobRun:
    """Runs one job to exactly one terminal message. `cancel()` ends it with a horde
    failure; cancelling the task without `cancel()` (agent shutdown) emits nothing and
    leaves the container running, so a restarted agent can pick it up."""

    def __init__(self, initial: V0InitialJobRequest, dirs: JobDirs, config: AgentConfig,
                 podman: Podman, emit: Emit, clock: Callable[[], float] = time.monotonic, *,
                 runner: JobRunner | None = None, specs: SpecsCache | None = None,
                 image_used: Callable[[str], None] | None = None) -> None:
        self.job_uuid = initial.job_uuid
        self.initial = initial
        self.dirs = dirs
        self.config = config
        self.podman = podman
        self._emit = emit
        self._clock = clock
        self.stage = STARTUP
        self.container_id: str | None = None
        self.cancel_reason: str | None = None
        self.payload: asyncio.Future[V0JobRequest] = asyncio.get_running_loop().create_future()
        self.task: asyncio.Task[None] | None = None
        self.detaching = False
        self._ending = False  # set once the terminal message is decided; cancel() is then too late
        self.runner = runner if runner is not None else JobRunner({})
        self.specs = specs
        self._image_used = image_used
        self.result_type: str | None = None
        self.disk_exceeded_bytes: int | None = None
        self._ensured_images: set[str] = set()
        details = initial.streaming_details
        self.streaming = (StreamingSession(self.job_uuid, details, config.streaming, podman, dirs.root)
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
        """Agent shutdown: stop this task but leave the container running for the next agent."""
        self.detaching = True
        if self.task is not None and not self.task.done() and not self._ending:
            self.task.cancel()  # once the terminal event is out, let the short cleanup finish

    def cancel(self, reason: str) -> bool:
        """Ask the job to end with a horde failure; False once its terminal event is decided."""
        if self._ending or self.cancel_reason is not None:
            return False
        self.cancel_reason = reason
        if self.task is not None and not self.task.done():
            self.task.cancel()
        return True

    async def run(self, resume: RunningState | None = None) -> None:
        """The whole job, or (after an agent restart) its rest from the running container."""
        set_job_fields(job=self.job_uuid, validator=self.initial.job_started_receipt_payload.validator_hotkey)
        started = self._clock()
        try:
            terminal = await (self._resumed(resume) if resume is not None else self._lifecycle())
        except JobFailure as exc:
            terminal = V0JobFailedRequest(
                job_uuid=self.job_uuid, message=exc.message, reason=exc.reason, stage=JobStage(self.stage),
                docker_process_exit_status=exc.exit_status, docker_process_stdout=exc.stdout,
                docker_process_stderr=exc.stderr,
            )
        except HordeFailure as exc:
            terminal = self._horde(exc.reason, exc.message, exc.context)
        except asyncio.CancelledError:
            if self.detaching or self.cancel_reason is None:
                log.info("job left running on shutdown job=%s stage=%s", self.job_uuid, self.stage)
                if self.streaming is not None:  # the listener dies with this agent; free its port now
                    await self.streaming.close(remove_network=False)
                raise
            await self._kill_container()
            text = f"Job cancelled by miner: {self.cancel_reason}" if self.cancel_reason else "Job cancelled by miner"
            terminal = self._horde(HordeFailureReason.GENERIC_ERROR, text, {"stage": self.stage})
        except Exception as exc:  # noqa: BLE001 - every other error is ours, reported, never lost
            log.exception("unhandled exception job=%s stage=%s", self.job_uuid, self.stage)
            terminal = self._horde(HordeFailureReason.UNHANDLED_EXCEPTION, "Unhandled exception",
                                   {"exception_type": type(exc).__name__, "stage": self.stage})
        self._ending = True
        self.result_type = terminal.message_type
        await self._emit(terminal)
        log.info("job ended job=%s stage=%s result=%s took_ms=%d", self.job_uuid, self.stage,
                 terminal.message_type, (self._clock() - started) * 1000)
        await self._cleanup()

    def _horde(self, reason: HordeFailureReason, message: str, context: dict[str, Any] | None) -> Any:
        return V0HordeFailedRequest(job_uuid=self.job_uuid, reported_by=JobParticipantType.EXECUTOR,
                                    reason=reason, message=message, context=context)

    async def _lifecycle(self) -> Any:
        """The happy path, stage by stage; returns the V0JobFinishedRequest."""
        try:
            budgets = StageBudgets.from_initial(self.initial.executor_timing, self.initial.timeout_seconds)
        except NoTiming as exc:
            raise HordeFailure(HordeFailureReason.GENERIC_ERROR, str(exc)) from None
        self.dirs.create()
        if self.initial.docker_image:
            await self._ensure_image(await self._hook("image", lambda: self.runner.image(self.context(None))))
        await self._emit(V0ExecutorReadyRequest(job_uuid=self.job_uuid))
        deadline = Deadline(budgets, self._clock())
        if self.streaming is not None:
            await self.streaming.prepare()

        request = await self._stage(deadline, DOWNLOAD, self._download)
        result = await self._stage(deadline, EXECUTION, lambda: self._execute(request, deadline))
        return await self._stage(deadline, UPLOAD, lambda: self._upload(request, result))

    async def _resumed(self, state: RunningState) -> Any:
        """Pick the job up at its running (or exited) container after an agent restart."""
        self.container_id = state.container_id
        self.payload.set_result(state.request)
        deadline = state.deadline(self._clock())
        log.info("job resumed job=%s stage=execution left_s=%.1f", self.job_uuid, deadline.remaining(self._clock()))
        result = await self._stage(deadline, EXECUTION, lambda: self._await_container(deadline), extend=False)
        return await self._stage(deadline, UPLOAD, lambda: self._upload(state.request, result))

    async def _stage(self, deadline: Deadline, stage: str, body: Callable[[], Awaitable[Any]],
                     extend: bool = True) -> Any:
        """Run one stage within the shared deadline; overrunning it is the job's `timeout`."""
        self.stage = stage
        left = deadline.enter(stage, self._clock()) if extend else deadline.remaining(self._clock())
        log.debug("stage entered job=%s stage=%s left_s=%.2f", self.job_uuid, stage, left)
        scope = asyncio.timeout(left)
        try:
            async with scope:
                return await body()
        except TimeoutError:
            if scope.expired():
                raise JobFailure(JobFailureReason.TIMEOUT, STAGE_TIMEOUT_MESSAGES[stage]) from None
            raise

    async def _ensure_image(self, image: str) -> None:
        if image in self._ensured_images:
            return
        pull = self.config.image_policy == ImagePolicy.LOCAL_OR_PULL
        if not await self.podman.ensure_image(image, pull=pull, timeout_s=self.config.image_pull_timeout_s):
            raise HordeFailure(HordeFailureReason.GENERIC_ERROR, PULL_FAILED_MESSAGE, {"docker_image": image})
        self._ensured_images.add(image)

    async def _download(self) -> V0JobRequest:
        request = await self.payload
        if self.initial.volume is not None and request.volume is not None:
            raise HordeFailure(HordeFailureReason.GENERIC_ERROR, MULTIPLE_VOLUMES_MESSAGE)
        volume = request.volume if request.volume is not None else self.initial.volume
        if volume is not None:
            try:
                limits = job_volume_limits(self.config.egress.policy,
                                           disk_limit_mib=self.config.container.disk_limit_mib)
                await fetch_volume(volume, self.dirs.volume, limits)
            except VolumeError as exc:
                raise JobFailure(JobFailureReason.DOWNLOAD_FAILED, f"Download failed: {exc}") from exc
            await asyncio.to_thread(chmod_tree, self.dirs.volume)
        await self._ensure_image(await self._hook("image", lambda: self.runner.image(self.context(request))))
        await self._emit(V0VolumesReadyRequest(job_uuid=self.job_uuid))
        return request

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
                               {"stage": self.stage, "hook": hook}) from exc

    async def _execute(self, request: V0JobRequest, deadline: Deadline) -> ContainerResult:
        ctx = self.context(request)
        await self._hook("before_start", lambda: self.runner.before_start(ctx))
        image = await self._hook("image", lambda: self.runner.image(ctx))
        await self._ensure_image(image)  # a no-op unless the plugin changed its mind since the download stage
        command = list(request.docker_run_cmd or [])
        script = None
        if request.raw_script:
            self.dirs.script.write_text(request.raw_script)
            script = self.dirs.script
            if not command:
                command = ["python", "/script.py"]
        command = list(await self._hook("command", lambda: self.runner.command(ctx, command)))
        limits = self.config.container
        spec = JobContainerSpec(
            job_uuid=self.job_uuid, image=image, command=command,
            volume_dir=self.dirs.volume, output_dir=self.dirs.output, env=dict(request.env or {}),
            gpu_preset=str(request.docker_run_options_preset),
            artifacts_dir=self.dirs.artifacts if request.artifacts_dir else None,
            artifacts_target=request.artifacts_dir, script_path=script,
            memory_limit_mib=limits.memory_limit_mib, pids_limit=limits.pids_limit,
            shm_size_mib=limits.shm_size_mib,
            network=self.streaming.network if self.streaming is not None else None,
        )
        try:
            kwargs = spec.create_kwargs()
        except UnknownPreset as exc:
            raise HordeFailure(HordeFailureReason.GENERIC_ERROR, f"Unknown docker_run_options_preset: {exc}",
                               {"preset": spec.gpu_preset}) from None
        name = kwargs["name"]
        kwargs = await self._hook("run_options", lambda: self.runner.run_options(ctx, kwargs))
        kwargs["labels"] = {**(kwargs.get("labels") or {}), JOB_LABEL: self.job_uuid}
        kwargs["name"] = name
        if self._image_used is not None:
            self._image_used(str(kwargs.get("image") or image))
        try:
            if self.streaming is not None:
                await self.streaming.create_network()
            self.container_id = await self._start_container(kwargs)
        except CdiUnavailable as exc:
            raise HordeFailure(HordeFailureReason.GENERIC_ERROR,
                               CDI_MESSAGE.format(preset=spec.gpu_preset, devices=", ".join(kwargs.get("devices", []))),
                               {"stage": self.stage, "podman_error": str(exc)[:500]}) from None
        except BaseException:
            if not self.detaching:
                await self._kill_container()
            raise
        log.info("container started job=%s stage=execution container=%s", self.job_uuid, self.container_id[:12])
        try:
            await self._hook("after_start", lambda: self.runner.after_start(ctx, self.container_id))
        except HordeFailure:
            await self._kill_container()
            raise
        await asyncio.to_thread(save_running_state, self.dirs.root, self.initial, request, self.container_id,
                                deadline, self._clock())
        if self.streaming is not None:
            await self._serve_streaming(self.container_id)
        return await self._await_container(deadline)

    async def _serve_streaming(self, container_id: str) -> None:
        """Proxy up and /health answered, then tell the miner where to connect."""
        assert self.streaming is not None
        self.stage = STREAMING_STARTUP
        try:
            port = await self.streaming.serve(container_id)
        except HealthCheckFailed as exc:
            await self._kill_container()
            raise JobFailure(JobFailureReason.TIMEOUT, HEALTH_FAILED_MESSAGE, exit_status=exc.exit_code) from None
        except StreamingError as exc:
            await self._kill_container()
            raise HordeFailure(HordeFailureReason.GENERIC_ERROR, f"Streaming setup failed: {exc}",
                               {"stage": self.stage}) from None
        except BaseException:
            if not self.detaching:
                await self._kill_container()
            raise
        assert self.streaming.cert is not None
        self.stage = EXECUTION
        await self._emit(V0StreamingJobReadyRequest(job_uuid=self.job_uuid, public_key=self.streaming.cert.cert_pem,
                                                    port=port))

    async def _await_container(self, deadline: Deadline) -> ContainerResult:
        assert self.container_id is not None
        limit_mib = self.config.container.disk_limit_mib
        watchdog = asyncio.create_task(self._watch_disk(self.container_id, limit_mib * MIB)) if limit_mib else None
        try:
            try:
                exit_code = await self.podman.wait(self.container_id, deadline.container_timeout(self._clock()))
            finally:
                if watchdog is not None:
                    watchdog.cancel()
                    await asyncio.gather(watchdog, return_exceptions=True)
            if exit_code is None:
                await self.podman.kill(self.container_id)
            out = await asyncio.to_thread(outputs.LogCapture, self.dirs.stdout_log)
            err = await asyncio.to_thread(outputs.LogCapture, self.dirs.stderr_log)
            try:
                await self.podman.capture_logs(self.container_id, out, err)
            finally:
                out.close()
                err.close()
        except BaseException:
            if not self.detaching:
                await self._kill_container()
            raise
        log.info("container exited job=%s exit_code=%s stdout_bytes=%d stderr_bytes=%d", self.job_uuid, exit_code,
                 out.total_bytes, err.total_bytes)
        if self.disk_exceeded_bytes is not None:
            raise JobFailure(JobFailureReason.NONZERO_RETURN_CODE,
                             DISK_LIMIT_MESSAGE.format(limit_mib=limit_mib, used_mib=self.disk_exceeded_bytes // MIB),
                             exit_status=exit_code, stdout=out.text(), stderr=err.text())
        if exit_code is None:
            raise JobFailure(JobFailureReason.TIMEOUT, CONTAINER_TIMEOUT_MESSAGE, stdout=out.text(), stderr=err.text())
        if exit_code != 0:
            raise JobFailure(JobFailureReason.NONZERO_RETURN_CODE,
                             f"Job container exited with non-zero exit code: {exit_code}",
                             exit_status=exit_code, stdout=out.text(), stderr=err.text())
        await self._emit(V0ExecutionDoneRequest(job_uuid=self.job_uuid))
        return ContainerResult(exit_code, out, err)

    async def _watch_disk(self, container_id: str, limit_bytes: int) -> None:
        """Kill the container once what it wrote to this host's disk passes the limit. A
        check, not a quota: overlay here has no size option, and a tmpfs /output would put
        up to the upload size in RAM and still not cover the container's own filesystem."""
        interval = self.config.container.disk_check_interval_s
        while True:
            await asyncio.sleep(interval)
            try:
                in_dirs = await asyncio.to_thread(disk_use, (self.dirs.output, self.dirs.artifacts))
                used = in_dirs + await self.podman.disk_bytes(container_id)
            except Exception:  # noqa: BLE001 - a failed measurement is retried next round
                log.debug("disk measurement failed job=%s", self.job_uuid, exc_info=True)
                continue
            if used > limit_bytes:
                self.disk_exceeded_bytes = used
                log.warning("job over disk limit job=%s used_mib=%d limit_mib=%d", self.job_uuid, used // MIB,
                            limit_bytes // MIB)
                await self.podman.kill(container_id)
                return

    async def _start_container(self, kwargs: dict[str, Any]) -> str:
        """Start, and learn the container id even when cancelled meanwhile, so a cancel
        or stage timeout in the middle of a start still finds a container to kill."""
        start = asyncio.ensure_future(self.podman.start_container(kwargs))
        try:
            return await asyncio.shield(start)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception, asyncio.CancelledError):
                self.container_id = await asyncio.wait_for(start, START_SETTLE_TIMEOUT_S)
            raise

    async def _upload(self, request: V0JobRequest, result: ContainerResult) -> Any:
        exit_code = result.exit_code
        short_out, short_err = result.stdout.text(), result.stderr.text()
        await asyncio.to_thread(outputs.place_full_output, result.stdout.file_path, self.dirs.output,
                                outputs.STDOUT_FILE)
        await asyncio.to_thread(outputs.place_full_output, result.stderr.file_path, self.dirs.output,
                                outputs.STDERR_FILE)
        artifacts: dict[str, str] = {}
        if request.artifacts_dir:
            artifacts = await asyncio.to_thread(outputs.collect_artifacts, self.dirs.artifacts, request.artifacts_dir)
        upload_results: dict[str, str] = {}
        if request.output_upload is not None:
            try:
                upload_limits = UploadLimits(egress=self.config.egress.policy)
                upload_results = await upload_outputs(request.output_upload, self.dirs.output, upload_limits)
            except UploadError as exc:
                raise JobFailure(JobFailureReason.UPLOAD_FAILED, "Upload failed", exit_status=exit_code,
                                 stdout=short_out, stderr=short_err) from exc
        if self.specs is not None and self.specs.specs is not None:  # stock: only on success, right before finished
            await self._emit(V0MachineSpecsRequest(job_uuid=self.job_uuid, specs=MachineSpecs(specs=self.specs.specs)))
        return V0JobFinishedRequest(job_uuid=self.job_uuid, docker_process_stdout=short_out,
                                    docker_process_stderr=short_err, artifacts=artifacts,
                                    upload_results=upload_results)

    async def _kill_container(self) -> None:
        """Best effort, shielded so a second cancellation cannot leave the container running.
        Looks the container up by job label too: the id is unknown if creation raced us."""
        try:
            await asyncio.shield(self._kill_all())
        except Exception:  # noqa: BLE001 - logged; cleanup goes on
            log.warning("container kill failed job=%s", self.job_uuid, exc_info=True)

    async def _kill_all(self) -> None:
        ids = {c.container_id for c in await self.podman.job_containers(self.job_uuid)}
        if self.container_id is not None:
            ids.add(self.container_id)
        for container_id in ids:
            await self.podman.kill(container_id)

    async def _cleanup(self) -> None:
        """After the terminal event: the plugin's cleanup hook, then remove the container(s)
        and the work dirs (unless kept)."""
        request = self.payload.result() if self.payload.done() and not self.payload.cancelled() else None
        try:
            await self.runner.cleanup(self.context(request), self.container_id, self.result_type or "")
        except Exception:  # noqa: BLE001 - errors in cleanup are only logged, as in stock
            log.warning("job runner cleanup failed job=%s runner=%s", self.job_uuid, self.runner.name, exc_info=True)
        if self.streaming is not None:  # the proxy goes first; the network once its container is gone
            await self.streaming.close(remove_network=False)
        if self.config.keep_job_dirs:
            return
        try:
            for container in await self.podman.job_containers(self.job_uuid):
                await self.podman.remove(container.container_id)
            if self.container_id is not None:
                await self.podman.remove(self.container_id)
            if self.streaming is not None:
                await self.podman.remove_network(self.streaming.network)
            await asyncio.to_thread(self.dirs.remove_work)
            drop_running_state(self.dirs.root)
        except Exception:  # noqa: BLE001 - errors in cleanup are only logged, as in stock
            log.warning("cleanup failed job=%s", self.job_uuid, exc_info=True)
