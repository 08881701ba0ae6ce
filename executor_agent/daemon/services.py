"""The agent's helpers beside the job registry: machine specs, image GC, the job-runner plugin.

`AgentServices` builds them from the config, puts what each job needs into one frozen
`JobDeps` (built here, once), builds the registry that hands it to every JobRun, and
runs the two periodic tasks (specs refresh, image GC) until the agent stops. Both
periodic tasks work in worker threads or through the podman API, so the event loop
never waits on a probe.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from executor_agent.container.podman_engine import Podman
from executor_agent.daemon.deps import JobDeps
from executor_agent.daemon.metrics_endpoint import ExecutorMetrics, MetricsEndpoint
from executor_agent.daemon.registry import JobRegistry
from executor_agent.executor_config import AgentConfig
from executor_agent.imagegc import PRELOAD_LIST_FILE, USAGE_FILE, ImageGc, ImageUsage, policy_from, read_preload_list
from executor_agent.plugins.job_runner import JobRunner, JobRunnerError, load_job_runner
from executor_agent.specs import SpecsCache, sources_from_config

log = logging.getLogger(__name__)


class AgentServices:
    def __init__(self, config: AgentConfig, podman: Podman) -> None:
        """Raises JobRunnerError (a one-line config problem) when the plugin cannot load."""
        self.config = config
        self.runner: JobRunner = (load_job_runner(config.job_runner, config.job_runner_options)
                                  if config.job_runner else JobRunner(config.job_runner_options))
        self.specs = SpecsCache(sources_from_config(config))
        state_dir = config.jobs_dir.parent
        self.usage = ImageUsage(state_dir / USAGE_FILE)
        self.preload_list_path = state_dir / PRELOAD_LIST_FILE
        self.deps = JobDeps(config=config, engine=podman, runner=self.runner, specs=self.specs,
                            image_used=self.image_used)
        self.registry = JobRegistry(self.deps)
        self.image_gc = ImageGc(podman, policy_from(config.image_gc), self.usage,
                                protected_refs=self.protected_refs, active_refs=self.active_refs)
        self.metrics = MetricsEndpoint(ExecutorMetrics(config, podman, self.registry, self.image_gc.stats),
                                       config.metrics.host, config.metrics.port)
        self._tasks: list[asyncio.Task[None]] = []

    def protected_refs(self) -> list[str]:
        """The preload list: the config's images plus what the last preload run wrote."""
        return [*self.config.preload.images, *read_preload_list(self.preload_list_path)]

    def active_refs(self) -> set[str]:
        """Images that jobs of this agent run or are about to run."""
        refs: set[str] = set()
        for entry in self.registry.jobs.values():
            run = entry.run
            if run is None or not entry.active:
                continue
            if run.initial.docker_image:
                refs.add(run.initial.docker_image)
            if run.payload.done() and not run.payload.cancelled():
                refs.add(run.payload.result().docker_image)
        return refs

    def image_used(self, ref: str) -> None:
        self.usage.touch_ref(ref, time.time())

    def start(self) -> None:
        self._tasks.append(asyncio.create_task(self.specs.keep_fresh(self.config.specs_refresh_s), name="specs"))
        if self.config.image_gc.enabled:
            self._tasks.append(asyncio.create_task(self.image_gc.loop(self.config.image_gc.interval_s),
                                                   name="image-gc"))
        if self.config.metrics.enabled:
            self._tasks.append(asyncio.create_task(self.metrics.run(), name="metrics"))
        log.info("services started job_runner=%s image_gc=%s", self.runner.name,
                 "on" if self.config.image_gc.enabled else "off")

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()


__all__ = ["AgentServices", "JobRunnerError"]
