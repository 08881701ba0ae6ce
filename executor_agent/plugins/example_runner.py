"""An example job-runner plugin that uses every hook (see job_runner.py and docs/plugins.md, "Job-runner plugins").

Enable it in /etc/executor-agent/executor-agent.toml::

    job_runner = "executor_agent.plugins.example_runner:ExampleRunner"

    [job_runner_options]
    image_map = { "python:3.11" = "mirror.local:5000/python:3.11" }  # serve images from a mirror
    env = { HF_HUB_OFFLINE = "1" }                                  # extra environment for every job
    labels = { "com.example.team" = "gpu-pool-a" }                  # extra container labels
    command_prefix = []                                             # e.g. ["nice", "-n", "5"]
    journal_path = "/var/log/executor-agent-jobs.log"               # one line per hook, "" = off

Every option is optional. The journal is there to show the hooks firing; a real plugin
would, say, reserve a GPU in `before_start` and release it in `cleanup`.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from executor_agent.plugins.job_runner import JobContext, JobRunner

MARKER_FILE = "runner-before-start.txt"  # written into /output by before_start


class ExampleRunner(JobRunner):
    def __init__(self, options: dict[str, Any]) -> None:
        super().__init__(options)
        self.image_map: dict[str, str] = dict(options.get("image_map") or {})
        self.env: dict[str, str] = {str(k): str(v) for k, v in (options.get("env") or {}).items()}
        self.labels: dict[str, str] = {str(k): str(v) for k, v in (options.get("labels") or {}).items()}
        self.command_prefix: list[str] = [str(x) for x in options.get("command_prefix") or []]
        journal = options.get("journal_path") or ""
        self.journal = Path(journal) if journal else None

    async def _note(self, job: JobContext, text: str) -> None:
        if self.journal is None:
            return
        line = f"{time.time():.3f} job={job.job_uuid} {text}\n"
        await asyncio.to_thread(_append, self.journal, line)

    async def before_start(self, job: JobContext) -> None:
        (job.output_dir / MARKER_FILE).write_text(f"prepared for {job.job_uuid}\n")
        await self._note(job, "hook=before_start")

    def image(self, job: JobContext) -> str:
        image = super().image(job)
        return self.image_map.get(image, image)

    def command(self, job: JobContext, command: list[str]) -> list[str]:
        return [*self.command_prefix, *command] if command else command

    def run_options(self, job: JobContext, kwargs: dict[str, Any]) -> dict[str, Any]:
        kwargs["environment"] = {**kwargs.get("environment", {}), **self.env}
        kwargs["labels"] = {**kwargs.get("labels", {}), **self.labels}
        return kwargs

    async def after_start(self, job: JobContext, container_id: str) -> None:
        await self._note(job, f"hook=after_start container={container_id[:12]}")

    async def cleanup(self, job: JobContext, container_id: str | None, result: str) -> None:
        short = container_id[:12] if container_id else "-"
        await self._note(job, f"hook=cleanup container={short} result={result}")


def _append(path: Path, line: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as fh:
        fh.write(line)
