"""The container engine as the job lifecycle sees it: a Protocol, its value types and its errors.

`Podman` (podman_engine.py) is the one implementation the agent runs with; it maps every
podman-py and requests error onto the exceptions below, so nothing else in the agent
knows podman's exception types. The lifecycle (`daemon/job.py`, `daemon/job_container.py`,
`daemon/streaming_job.py`) and the registry's restart recovery ask only for the methods of
`ContainerEngine`, which is what lets their unit tests run against an in-memory fake
while the integration tests keep real podman.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from executor_agent.outputs.collect import LogCapture


class EngineError(Exception):
    """The engine could not do what we asked (an infrastructure fault, not the job's)."""


class EngineNotFound(EngineError):
    """The engine answered 404: the container, image or network named is not there (any more)."""


class CdiUnavailable(EngineError):
    """A CDI device (the GPU) was asked for but the engine has no spec that provides it."""


class UsernsUnavailable(EngineError):
    """A user namespace was asked for but the engine cannot give one (no subordinate ids for
    it, or it started the container without one); the container is not left running."""


@dataclass(frozen=True)
class ContainerState:
    container_id: str
    status: str  # created, running, exited, ...
    exit_code: int | None
    pid: int | None = None  # its init process on this host while it runs (`state` only); None: unknown


@dataclass(frozen=True)
class ImageInfo:
    """One image in local storage, as the image GC sees it."""

    image_id: str
    names: tuple[str, ...]  # repo:tag names; empty for a dangling image
    digests: tuple[str, ...]  # repo@sha256:... names
    size_bytes: int
    created_unix: float


class ContainerEngine(Protocol):
    """Exactly what a job's lifecycle (and the registry's restart recovery) asks of the engine.

    Containers are created from podman-py `containers.create` keyword arguments (what
    `JobContainerSpec.create_kwargs` builds and a job-runner plugin may edit). Every method
    raises `EngineError` (or its subclasses) and nothing engine-specific."""

    # --- batch jobs -------------------------------------------------------------------
    async def ensure_image(self, image: str, *, pull: bool, timeout_s: float) -> bool:
        """True when the image is present locally, pulling it first if `pull`."""
        ...

    async def start_container(self, kwargs: dict[str, Any]) -> str:
        """Create and start; returns the id. Raises CdiUnavailable for a missing GPU spec and
        UsernsUnavailable when kwargs ask for a user namespace the engine did not set up."""
        ...

    async def wait(self, container_id: str, timeout_s: float) -> int | None:
        """The exit code, or None when the container still runs after timeout_s."""
        ...

    async def kill(self, container_id: str) -> None:
        """SIGKILL and wait until it is no longer running; a gone or exited container is fine."""
        ...

    async def capture_logs(self, container_id: str, stdout_capture: LogCapture, stderr_capture: LogCapture) -> None:
        """Stream the exited container's stdout and stderr into the two captures."""
        ...

    async def disk_bytes(self, container_id: str) -> int:
        """What the container wrote to this host's disk outside its binds (layer and log)."""
        ...

    async def job_containers(self, job_uuid: str | None = None) -> list[ContainerState]:
        """Containers carrying the job label (all of them, or one job's)."""
        ...

    async def remove(self, container_id: str) -> None:
        """Force-remove; a container that is already gone is fine."""
        ...

    # --- streaming jobs ---------------------------------------------------------------
    async def create_internal_network(self, name: str, job_uuid: str, subnet_pool: str) -> str:
        """A bridge network with no route out, labelled with the job; returns its subnet."""
        ...

    async def remove_network(self, name: str) -> None:
        """Remove a network; one that is already gone is fine."""
        ...

    async def container_ip(self, container_id: str, network: str) -> str | None:
        """The container's address on one network, or None when it has none (yet)."""
        ...

    async def state(self, container_id: str) -> ContainerState | None:
        """The container's status and exit code, or None when it is gone."""
        ...

    # --- restart recovery (the registry) ----------------------------------------------
    async def job_label_of(self, container_id: str) -> str | None:
        """The job uuid label of a container; raises EngineNotFound when it is gone."""
        ...

    async def network_exists(self, name: str) -> bool: ...


__all__ = ["CdiUnavailable", "ContainerEngine", "ContainerState", "EngineError", "EngineNotFound", "ImageInfo",
           "UsernsUnavailable"]
