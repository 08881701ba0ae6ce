"""A job's data in and out: the volume before the container, the results after it.

Kept out of the lifecycle (`job.py`) so it reads as stages and messages; what fails here
is the job's fault with the stock texts (`download_failed`, `upload_failed`), anything
else propagates as ours.

The downloaders and the uploader are imported with the first job that needs them: they bring
aiohttp (~13 MiB resident), which an idle agent has no use for (issue 14: idle RSS < 60 MiB).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

from executor_agent.daemon.failures import HordeFailure, JobFailure
from executor_agent.daemon.job_container import ContainerResult
from executor_agent.daemon.jobdirs import JobDirs, chmod_tree
from executor_agent.executor_config import AgentConfig
from executor_agent.outputs import collect as outputs
from horde_protocol.enums import HordeFailureReason, JobFailureReason
from horde_protocol.messages import V0InitialJobRequest, V0JobRequest

MULTIPLE_VOLUMES_MESSAGE = "Received multiple volumes"
UPLOAD_FAILED_MESSAGE = "Upload failed"


async def fetch_inputs(initial: V0InitialJobRequest, request: V0JobRequest, dirs: JobDirs,
                       config: AgentConfig) -> None:
    """The job's one volume (from the initial request or the payload, never both) into
    dirs.volume, readable by any job user; its URLs only where `[egress]` lets them go, and
    no more of it than the job may write to disk."""
    if initial.volume is not None and request.volume is not None:
        raise HordeFailure(HordeFailureReason.GENERIC_ERROR, MULTIPLE_VOLUMES_MESSAGE)
    volume = request.volume if request.volume is not None else initial.volume
    if volume is None:
        return
    from executor_agent.inputs.volume_fetch import VolumeError, fetch_volume, job_volume_limits

    try:
        limits = job_volume_limits(config.egress.policy, disk_limit_mib=config.container.disk_limit_mib)
        await fetch_volume(volume, dirs.volume, limits)
    except VolumeError as exc:
        raise JobFailure(JobFailureReason.DOWNLOAD_FAILED, f"Download failed: {exc}") from exc
    await asyncio.to_thread(chmod_tree, dirs.volume)


log = logging.getLogger(__name__)

@dataclass(frozen=True)
class Results:
    """What V0JobFinishedRequest carries besides the logs."""

    artifacts: dict[str, str] = field(default_factory=dict)
    upload_results: dict[str, str] = field(default_factory=dict)


async def deliver_outputs(request: V0JobRequest, result: ContainerResult, dirs: JobDirs,
                          config: AgentConfig) -> Results:
    """Full logs into /output (so an upload zips them), small artifacts inline, the upload done
    (to where `[egress]` allows)."""
    await asyncio.to_thread(outputs.place_full_output, result.stdout.file_path, dirs.output, outputs.STDOUT_FILE)
    await asyncio.to_thread(outputs.place_full_output, result.stderr.file_path, dirs.output, outputs.STDERR_FILE)
    artifacts: dict[str, str] = {}
    if request.artifacts_dir:
        artifacts = await asyncio.to_thread(outputs.collect_artifacts, dirs.artifacts, request.artifacts_dir)
    upload_results: dict[str, str] = {}
    if request.output_upload is not None:
        from executor_agent.outputs.upload import UploadError, UploadLimits, upload_outputs

        try:
            upload_limits = UploadLimits(egress=config.egress.policy)
            upload_results = await upload_outputs(request.output_upload, dirs.output, upload_limits)
        except UploadError as exc:
            # The validator gets the stock text; the operator's log says why (a refused address, a
            # 403, a size cap), redacted like every URL in our logs.
            log.warning("upload failed job_error=%r", str(exc)[:500])
            raise JobFailure(JobFailureReason.UPLOAD_FAILED, UPLOAD_FAILED_MESSAGE, exit_status=result.exit_code,
                             stdout=result.stdout.text(), stderr=result.stderr.text()) from exc
    return Results(artifacts, upload_results)
