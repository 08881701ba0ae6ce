"""What a job container looks like, as pure data: image name rules, mounts, limits, GPU preset.

Kept apart from podman_engine.py so the lifecycle builds a container's arguments (and its
unit tests check them) without importing the podman client. The arguments are podman-py
`containers.create` keyword arguments, the one format a job-runner plugin edits.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from executor_agent.container.engine import EngineError

JOB_LABEL = "io.computehorde.job-uuid"
CDI_ALL_GPUS = "nvidia.com/gpu=all"
GPU_PRESET_DEVICES: dict[str, list[str]] = {"nvidia_all": [CDI_ALL_GPUS], "none": []}
MIB = 1024 * 1024


class UnknownPreset(EngineError):
    """A docker_run_options_preset this host has no device list for."""


def normalize_image(ref: str) -> str:
    """Append `:latest` to an untagged reference, as the stock executor does.

    A colon in the last path component is a tag; one before a slash is a registry port
    (`localhost:5000/img`); a digest (`@sha256:...`) needs no tag.
    """
    if "@" in ref:
        return ref
    last = ref.rsplit("/", 1)[-1]
    return ref if ":" in last else f"{ref}:latest"


def container_name(job_uuid: str) -> str:
    return f"ch-{job_uuid}-job"


@dataclass(frozen=True)
class JobContainerSpec:
    """What a job container needs; built from the V0JobRequest by the daemon."""

    job_uuid: str
    image: str
    command: list[str]
    volume_dir: Path
    output_dir: Path
    env: dict[str, str] = field(default_factory=dict)
    gpu_preset: str = "none"
    artifacts_dir: Path | None = None  # host side of the bind
    artifacts_target: str | None = None  # container side (V0JobRequest.artifacts_dir)
    script_path: Path | None = None  # host file mounted at /script.py
    memory_limit_mib: int = 0
    pids_limit: int = 0
    shm_size_mib: int = 0
    network: str | None = None  # an internal podman network (streaming jobs); None = no network at all

    def create_kwargs(self) -> dict[str, Any]:
        """podman-py `containers.create` keyword arguments (pure, unit-testable)."""
        if self.gpu_preset not in GPU_PRESET_DEVICES:
            raise UnknownPreset(f"unknown docker_run_options_preset {self.gpu_preset!r}")
        mounts: list[dict[str, Any]] = [
            _bind(self.volume_dir, "/volume", read_only=True),
            _bind(self.output_dir, "/output", read_only=False),
        ]
        if self.artifacts_dir is not None and self.artifacts_target:
            mounts.append(_bind(self.artifacts_dir, self.artifacts_target, read_only=False))
        if self.script_path is not None:
            mounts.append(_bind(self.script_path, "/script.py", read_only=True))
        kwargs: dict[str, Any] = {
            "image": normalize_image(self.image),
            "labels": {JOB_LABEL: self.job_uuid},
            "name": container_name(self.job_uuid),
            "mounts": mounts,
            "environment": dict(self.env),
            "devices": list(GPU_PRESET_DEVICES[self.gpu_preset]),
        }
        if self.network:
            kwargs["networks"] = {self.network: {}}
        else:
            kwargs["network_mode"] = "none"
        if self.command:
            kwargs["command"] = list(self.command)
        if self.memory_limit_mib:
            kwargs["mem_limit"] = self.memory_limit_mib * MIB
            kwargs["memswap_limit"] = self.memory_limit_mib * MIB
        if self.pids_limit:
            kwargs["pids_limit"] = self.pids_limit
        if self.shm_size_mib:
            kwargs["shm_size"] = self.shm_size_mib * MIB
        return kwargs


def _bind(source: Path, target: str, *, read_only: bool) -> dict[str, Any]:
    return {"type": "bind", "source": str(source), "target": target, "read_only": read_only}


__all__ = ["JOB_LABEL", "JobContainerSpec", "UnknownPreset", "container_name", "normalize_image"]
