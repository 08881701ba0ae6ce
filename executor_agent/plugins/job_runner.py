"""Job-runner plugins: what an operator may change about how a job container is run.

The stock executor takes `--job-runner-class <dotted.path>` and lets a custom runner pick
the image, the run arguments and the command, and hook in before and after the start and
at cleanup (behaviour.md §2.3). Here the class is named in the executor config::

    job_runner = "mypackage.runner:MyRunner"
    [job_runner_options]            # any table; handed to the constructor
    registry_mirror = "mirror.local:5000"

and subclasses `JobRunner`. Every method has a default that keeps the built-in behaviour,
so a plugin overrides only what it needs. The agent calls, for each job that reaches the
execution stage, in this order:

1. `before_start(job)`                    - prepare host resources (files, devices, ...)
2. `image(job)`                           - the image to run (pulled or checked as any job image)
3. `command(job, command)`                - the container command
4. `run_options(job, kwargs)`             - podman-py `containers.create` keyword arguments
5. the container is created and started
6. `after_start(job, container_id)`       - e.g. attach a sidecar, register the container
7. `cleanup(job, container_id, result)`   - once per job, after the terminal message is out,
   whatever the outcome, before the agent removes the container and the job dir

A failure in 1-6 ends the job with a horde failure (the host's fault, not the job's) that
names the plugin and the hook; a failure in 7 is logged only. Hooks run in the agent's
event loop: blocking work belongs in `asyncio.to_thread`. After an agent restart a
resumed job gets only `cleanup` (1-6 ran in the previous process).

The agent keeps two things whatever `run_options` returns: the job label (how a
restarted agent finds the container) and the container name.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent_common.plugin_loader import PluginError, load_plugin
from horde_protocol.messages import V0InitialJobRequest, V0JobRequest


class JobRunnerError(Exception):
    """The configured plugin cannot be loaded; str() names it and what is wrong."""


@dataclass(frozen=True)
class JobContext:
    """What a hook may look at. `request` is None when the job ended before its payload
    arrived (only `cleanup` sees that). Paths are on the host."""

    job_uuid: str
    initial: V0InitialJobRequest
    request: V0JobRequest | None
    job_dir: Path  # <jobs_dir>/<uuid>; removed after cleanup unless keep_job_dirs
    volume_dir: Path  # mounted read-only at /volume
    output_dir: Path  # mounted at /output; zipped for upload
    artifacts_dir: Path  # mounted at request.artifacts_dir when the job asks for artifacts


class JobRunner:
    """The built-in behaviour; subclass it and override what you need."""

    def __init__(self, options: dict[str, Any]) -> None:
        self.options = dict(options)

    @property
    def name(self) -> str:
        return f"{type(self).__module__}:{type(self).__qualname__}"

    async def before_start(self, job: JobContext) -> None:
        """Runs before anything about the container is decided."""

    def image(self, job: JobContext) -> str:
        """The image to run; stock `get_docker_image()`. Asked in the startup stage (with
        `job.request` None: the initial request's image, checked or pulled before
        V0ExecutorReadyRequest), again once the payload is in, and at the start."""
        return (job.request or job.initial).docker_image or ""

    def command(self, job: JobContext, command: list[str]) -> list[str]:
        """The container command; stock `get_docker_run_cmd()`. `command` is the request's
        `docker_run_cmd` (or `python /script.py` for a raw script; [] = the image's CMD)."""
        return command

    def run_options(self, job: JobContext, kwargs: dict[str, Any]) -> dict[str, Any]:
        """podman-py `containers.create` kwargs; stock `get_docker_run_args()`. They hold
        the image, command, mounts, environment, devices (CDI), limits, network_mode
        ("none"), labels and name; add or change keys and return the dict."""
        return kwargs

    async def after_start(self, job: JobContext, container_id: str) -> None:
        """Runs right after the container started (stock `after_start_job`)."""

    async def cleanup(self, job: JobContext, container_id: str | None, result: str) -> None:
        """Runs once per job after its terminal message (stock `job_cleanup`). `result` is
        that message's type (`V0JobFinishedRequest`, `V0JobFailedRequest`, `V0HordeFailedRequest`);
        `container_id` is None when no container was started."""


def load_job_runner(path: str, options: dict[str, Any]) -> JobRunner:
    """Instantiate "package.module:ClassName" (or the stock dotted form "package.module.ClassName")."""
    try:
        return load_plugin("job_runner", path, JobRunner, options)
    except PluginError as exc:
        raise JobRunnerError(str(exc)) from None
