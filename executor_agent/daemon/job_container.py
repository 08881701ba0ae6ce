"""One job's container on the engine: image, create and start, wait under the disk watchdog,
logs, kill, removal.

Split from the lifecycle (`job.py`): `JobRun` decides *when* a container starts, is
killed or is left running for the next agent; `JobContainer` knows *how*, through the
`ContainerEngine` protocol only. What it can tell is the job's fault (a non-zero exit, an
overrun, a full disk) or the host's (no image, no GPU spec) it raises as the lifecycle's
two failures, with the stock texts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from executor_agent.container.engine import CdiUnavailable, ContainerEngine, UsernsUnavailable
from executor_agent.container.job_spec import (
    JOB_LABEL,
    JobContainerSpec,
    UnknownPreset,
    container_name,
    enforce_isolation,
)
from executor_agent.daemon.disk_watch import DiskWatch
from executor_agent.daemon.failures import HordeFailure, JobFailure
from executor_agent.daemon.jobdirs import JobDirs
from executor_agent.executor_config import AgentConfig, ImagePolicy
from executor_agent.net.egress import EgressRefused, RegistryUnresolved, check_registry
from executor_agent.outputs import collect as outputs
from horde_protocol.enums import HordeFailureReason, JobFailureReason, JobStage
from horde_protocol.messages import V0JobRequest

log = logging.getLogger(__name__)

CONTAINER_TIMEOUT_MESSAGE = "Job container timed out during execution"
PULL_FAILED_MESSAGE = "Failed to pull docker image"
REGISTRY_REFUSED_MESSAGE = "Job image not pulled: its registry is not reachable for jobs"
START_SETTLE_TIMEOUT_S = 30.0  # a cancelled start may still finish; wait this long to learn its id
DISK_LIMIT_MESSAGE = ("Job container exceeded its disk limit of {limit_mib} MiB (it used {used_mib} MiB in /volume, "
                      "/output, artifacts, its own filesystem and its logs) and was killed")
DISK_LIMIT_AT_EXIT_MESSAGE = ("Job container exceeded its disk limit of {limit_mib} MiB (it held {used_mib} MiB in "
                              "/volume, /output, artifacts, its own filesystem and its logs when it exited)")
CDI_MESSAGE = ("GPU requested (docker_run_options_preset {preset}) but the CDI device {devices} is not configured "
               "on this executor host; generate the spec with `nvidia-ctk cdi generate --output=/etc/cdi/nvidia.yaml`")
USERNS_MESSAGE = ("Job container not started: this executor host cannot give it a user namespace, and a job "
                  "never runs as host root; an operator must add subordinate ids for `containers` to /etc/subuid "
                  "and /etc/subgid")
RAW_SCRIPT_COMMAND = ("python", "/script.py")  # the stock command for a raw_script job without docker_run_cmd
# /script.py is the job's own code, read by the job's uid (an unprivileged host uid in its user
# namespace): readable by all, whatever the daemon's 077 umask made it. Other local users
# cannot reach it: jobs_dir is 0700.
SCRIPT_MODE = 0o644
MAX_ENGINE_ERROR_CHARS = 500  # of the engine's text, carried in a horde failure's context
MIB = 1024 * 1024


@dataclass
class ContainerResult:
    """How the container ended, with its logs captured (bounded in memory, full on disk)."""

    exit_code: int | None  # None: it outlived its time and was killed
    stdout: outputs.LogCapture
    stderr: outputs.LogCapture


class JobContainer:
    """The container side of one job; `container_id` is set once a start returned (or, for
    a resumed job, from the state the previous agent saved)."""

    def __init__(self, job_uuid: str, dirs: JobDirs, config: AgentConfig, engine: ContainerEngine) -> None:
        self.job_uuid = job_uuid
        self.dirs = dirs
        self.config = config
        self.engine = engine
        self.container_id: str | None = None
        self.disk_exceeded_bytes: int | None = None  # set when the disk watch found the job over its limit
        self.disk_exceeded_at_exit = False  # ... only at its exit: it was not killed for it
        self._ensured_images: set[str] = set()

    async def ensure_image(self, image: str) -> None:
        """Present locally (pulled first when the policy allows); once per image per job.

        A pull goes where the image name says, and the name is the job author's: a registry on
        loopback, a private network or this host is refused like a volume URL (net/egress.py),
        as the job's own failure. Images already here (preloaded) need no pull and no check."""
        if image in self._ensured_images:
            return
        pull = self.config.image_policy == ImagePolicy.LOCAL_OR_PULL
        timeout_s = self.config.image_pull_timeout_s
        if pull and not await self.engine.ensure_image(image, pull=False, timeout_s=timeout_s):
            try:
                await check_registry(self.config.egress.policy, image)
            except EgressRefused as exc:
                raise JobFailure(JobFailureReason.UNKNOWN, f"{REGISTRY_REFUSED_MESSAGE}: {exc}") from exc
            except RegistryUnresolved as exc:  # as a pull from an unresolvable registry always ended
                raise HordeFailure(HordeFailureReason.GENERIC_ERROR, PULL_FAILED_MESSAGE,
                                   {"docker_image": image, "cause": str(exc)}) from exc
        if not await self.engine.ensure_image(image, pull=pull, timeout_s=timeout_s):
            raise HordeFailure(HordeFailureReason.GENERIC_ERROR, PULL_FAILED_MESSAGE, {"docker_image": image})
        self._ensured_images.add(image)

    def write_script(self, request: V0JobRequest) -> Path | None:
        """The raw script as a file to mount at /script.py, or None when the job has none."""
        if not request.raw_script:
            return None
        self.dirs.script.write_text(request.raw_script)
        os.chmod(self.dirs.script, SCRIPT_MODE)
        return self.dirs.script

    @staticmethod
    def command_of(request: V0JobRequest, script: Path | None) -> list[str]:
        command = list(request.docker_run_cmd or [])
        return list(RAW_SCRIPT_COMMAND) if script is not None and not command else command

    def create_kwargs(self, request: V0JobRequest, image: str, command: list[str], script: Path | None,
                      network: str | None) -> dict[str, Any]:
        """The engine's create arguments for this job, before a job-runner plugin edits them."""
        limits = self.config.container
        spec = JobContainerSpec(
            job_uuid=self.job_uuid, image=image, command=command,
            volume_dir=self.dirs.volume, output_dir=self.dirs.output, env=dict(request.env or {}),
            gpu_preset=str(request.docker_run_options_preset),
            artifacts_dir=self.dirs.artifacts if request.artifacts_dir else None,
            artifacts_target=request.artifacts_dir, script_path=script,
            memory_limit_mib=limits.memory_limit_mib, pids_limit=limits.pids_limit,
            shm_size_mib=limits.shm_size_mib, network=network,
        )
        try:
            return spec.create_kwargs()
        except UnknownPreset as exc:
            raise HordeFailure(HordeFailureReason.GENERIC_ERROR, f"Unknown docker_run_options_preset: {exc}",
                               {"preset": spec.gpu_preset}) from None

    async def start(self, kwargs: dict[str, Any], gpu_preset: str) -> str:
        """Create and start. The job label and the container name are ours whatever a plugin
        returned (a restarted agent finds the container by them), and so is the isolation
        (user namespace, nosuid binds, no new privileges, JOB_CAPABILITIES; job_spec.py). The
        id is learnt even when the task is cancelled meanwhile, so a cancel or a stage
        timeout in the middle of a start still finds a container to kill."""
        kwargs["labels"] = {**(kwargs.get("labels") or {}), JOB_LABEL: self.job_uuid}
        kwargs["name"] = container_name(self.job_uuid)
        undone = enforce_isolation(kwargs)
        if undone:
            log.warning("job-runner plugin weakened the container isolation; restored job=%s keys=%s",
                        self.job_uuid, ",".join(undone))
        start = asyncio.ensure_future(self.engine.start_container(kwargs))
        try:
            self.container_id = await asyncio.shield(start)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception, asyncio.CancelledError):
                self.container_id = await asyncio.wait_for(start, START_SETTLE_TIMEOUT_S)
            raise
        except CdiUnavailable as exc:
            raise HordeFailure(HordeFailureReason.GENERIC_ERROR,
                               CDI_MESSAGE.format(preset=gpu_preset, devices=", ".join(kwargs.get("devices", []))),
                               {"stage": JobStage.EXECUTION.value,
                                "podman_error": str(exc)[:MAX_ENGINE_ERROR_CHARS]}) from None
        except UsernsUnavailable as exc:
            log.error("no user namespace for job=%s: %s", self.job_uuid, str(exc)[:MAX_ENGINE_ERROR_CHARS])
            raise HordeFailure(HordeFailureReason.GENERIC_ERROR, USERNS_MESSAGE,
                               {"stage": JobStage.EXECUTION.value,
                                "podman_error": str(exc)[:MAX_ENGINE_ERROR_CHARS]}) from None
        return self.container_id

    async def run_to_exit(self, timeout_s: float) -> ContainerResult:
        """Wait for the exit (killing the container at timeout_s, or when the disk watch finds
        it over its disk limit, measured once more at its exit), then capture its logs."""
        assert self.container_id is not None
        container_id = self.container_id
        watch = self._disk_watch(container_id)
        watchdog = asyncio.create_task(watch.run()) if watch is not None else None
        try:
            exit_code = await self.engine.wait(container_id, timeout_s)
        finally:
            if watchdog is not None:
                watchdog.cancel()
                await asyncio.gather(watchdog, return_exceptions=True)
        if exit_code is None:
            await self.engine.kill(container_id)
        elif watch is not None:
            await watch.at_exit()
        if watch is not None:
            self.disk_exceeded_bytes, self.disk_exceeded_at_exit = watch.exceeded_bytes, not watch.killed
        out = await asyncio.to_thread(outputs.LogCapture, self.dirs.stdout_log)
        err = await asyncio.to_thread(outputs.LogCapture, self.dirs.stderr_log)
        try:
            await self.engine.capture_logs(container_id, out, err)
        finally:
            out.close()
            err.close()
        log.info("container exited job=%s exit_code=%s stdout_bytes=%d stderr_bytes=%d", self.job_uuid, exit_code,
                 out.total_bytes, err.total_bytes)
        return ContainerResult(exit_code, out, err)

    def check_exit(self, result: ContainerResult) -> None:
        """Raise the job's failure for a container that did not end well (stock texts)."""
        out, err = result.stdout, result.stderr
        if self.disk_exceeded_bytes is not None:
            raise JobFailure(JobFailureReason.NONZERO_RETURN_CODE,
                             (DISK_LIMIT_AT_EXIT_MESSAGE if self.disk_exceeded_at_exit else DISK_LIMIT_MESSAGE).format(
                                 limit_mib=self.config.container.disk_limit_mib,
                                 used_mib=self.disk_exceeded_bytes // MIB),
                             exit_status=result.exit_code, stdout=out.text(), stderr=err.text())
        if result.exit_code is None:
            raise JobFailure(JobFailureReason.TIMEOUT, CONTAINER_TIMEOUT_MESSAGE, stdout=out.text(), stderr=err.text())
        if result.exit_code != 0:
            raise JobFailure(JobFailureReason.NONZERO_RETURN_CODE,
                             f"Job container exited with non-zero exit code: {result.exit_code}",
                             exit_status=result.exit_code, stdout=out.text(), stderr=err.text())

    def _disk_watch(self, container_id: str) -> DiskWatch | None:
        """The container's disk watch (daemon/disk_watch.py), or None without a disk limit."""
        limits = self.config.container
        if not limits.disk_limit_mib:
            return None
        return DiskWatch(self.job_uuid, self.dirs, self.engine, container_id, limits.disk_limit_mib * MIB,
                         limits.disk_check_interval_s)

    async def kill(self) -> None:
        """Best effort, shielded so a second cancellation cannot leave the container running.
        Looks the container up by job label too: the id is unknown if creation raced us."""
        try:
            await asyncio.shield(self._kill_all())
        except Exception:  # noqa: BLE001 - logged; cleanup goes on
            log.warning("container kill failed job=%s", self.job_uuid, exc_info=True)

    async def _kill_all(self) -> None:
        ids = {c.container_id for c in await self.engine.job_containers(self.job_uuid)}
        if self.container_id is not None:
            ids.add(self.container_id)
        for container_id in ids:
            await self.engine.kill(container_id)

    async def remove(self) -> None:
        """Force-remove every container of the job (raises; the caller logs)."""
        for container in await self.engine.job_containers(self.job_uuid):
            await self.engine.remove(container.container_id)
        if self.container_id is not None:
            await self.engine.remove(self.container_id)
