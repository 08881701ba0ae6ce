"""What every job on this host shares, as one frozen object.

`AgentServices` builds it once at agent start (the job-runner plugin, the specs cache,
the image-usage recorder, the container engine) and the registry hands the same object
to each `JobRun`. Frozen so no job can swap a dependency under another; a unit test
builds its own with a fake engine and a fake clock.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from executor_agent.container.engine import ContainerEngine
from executor_agent.executor_config import AgentConfig
from executor_agent.plugins.job_runner import JobRunner
from executor_agent.specs import SpecsCache


def _ignore_image(_ref: str) -> None:
    """The default image-use recorder: no image GC is watching."""


@dataclass(frozen=True)
class JobDeps:
    config: AgentConfig
    engine: ContainerEngine
    runner: JobRunner = field(default_factory=lambda: JobRunner({}))  # the built-in runner changes nothing
    specs: SpecsCache | None = None  # None: no V0MachineSpecsRequest before V0JobFinishedRequest
    image_used: Callable[[str], None] = _ignore_image  # tells the image GC an image was just used
    clock: Callable[[], float] = time.monotonic  # seconds; every deadline of the job is on this clock
