"""What a job container looks like, as pure data: image name rules, mounts, limits, GPU preset,
and the isolation that keeps container root from being host root.

Kept apart from podman_engine.py so the lifecycle builds a container's arguments (and its
unit tests check them) without importing the podman client. The arguments are podman-py
`containers.create` keyword arguments, the one format a job-runner plugin edits.

Isolation (docs/job-isolation.md). A job is arbitrary code from anyone, usually running as
root in its image, and it writes files that land on this host under the jobs dir:
* a user namespace (`auto`, USERNS_SIZE ids from the `containers` ranges of /etc/subuid and
  /etc/subgid): container root is an unprivileged host uid, so a setuid-root binary left in
  /output is setuid to that uid on the host, never to root;
* every bind mount `nosuid,nodev`: nothing on /volume or /output gains privilege inside;
* `no-new-privileges`: no setuid binary or file capability raises a job's privileges;
* capabilities dropped to JOB_CAPABILITIES.
Our binds go in podman-py's `volumes` argument: its `mounts` argument has no way to carry
`nosuid`/`nodev` (it passes read_only, U, propagation, relabel, mode and size only).
`enforce_isolation` re-applies all of it after a job-runner plugin had the kwargs.
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

# What job images need of root's capabilities; everything else is dropped (podman 4.3's
# default set adds FSETID, SETPCAP, SETFCAP, NET_BIND_SERVICE, NET_RAW, SYS_CHROOT, MKNOD,
# AUDIT_WRITE). Kept, each because ordinary job images use it as root:
#   CHOWN, DAC_OVERRIDE, FOWNER: pip/apt/conda installing into the image and fixing ownership
#     and modes of files root does not own (the job's non-root users, /output files);
#   SETUID, SETGID: apt drops to its `_apt` user, entrypoints `su`/`gosu` to a service user;
#   KILL: a root supervisor (torchrun, multiprocessing, dumb-init) signals workers of other uids.
# Dropped, because no job needs them and each helps an escalation: FSETID (keeps setuid and
# setgid bits on files root does not own), SETFCAP (writes file capabilities), SETPCAP, MKNOD
# (device nodes), NET_RAW (raw packets on a streaming job's network), NET_BIND_SERVICE (jobs
# listen on 8000), SYS_CHROOT, AUDIT_WRITE. Inside the user namespace even the kept ones act
# only on the container's own ids and files.
JOB_CAPABILITIES: tuple[str, ...] = ("CHOWN", "DAC_OVERRIDE", "FOWNER", "KILL", "SETGID", "SETUID")
# Ids per job container's user namespace (uids and gids 0..65535, like a normal system: images
# with users such as nobody=65534 work). podman's own `auto` default sizes the map from the
# image's /etc/passwd (1,024 at least), which breaks jobs that `useradd` a high uid. With the
# packaged range of 2,147,483,648 ids this allows 32,768 containers at once.
USERNS_SIZE = 65536
# podman 4.3's API needs both: `userns` nsmode auto alone is silently ignored (the container
# gets the host's identity map), `idmappings` alone as well. Checked after create, in the engine.
USERNS_MODE = "auto"
BIND_OPTIONS: tuple[str, ...] = ("nosuid", "nodev")


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
        # Absolute: podman-py takes a `volumes` key that does not start with "/" for a named volume.
        volumes: dict[str, dict[str, Any]] = {
            str(self.volume_dir.absolute()): _bind("/volume", read_only=True),
            str(self.output_dir.absolute()): _bind("/output", read_only=False),
        }
        if self.artifacts_dir is not None and self.artifacts_target:
            volumes[str(self.artifacts_dir.absolute())] = _bind(self.artifacts_target, read_only=False)
        if self.script_path is not None:
            volumes[str(self.script_path.absolute())] = _bind("/script.py", read_only=True)
        kwargs: dict[str, Any] = {
            "image": normalize_image(self.image),
            "labels": {JOB_LABEL: self.job_uuid},
            "name": container_name(self.job_uuid),
            "volumes": volumes,
            "environment": dict(self.env),
            "devices": list(GPU_PRESET_DEVICES[self.gpu_preset]),
            **isolation_kwargs(),
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


def _bind(target: str, *, read_only: bool) -> dict[str, Any]:
    """One podman-py `volumes` entry: a bind mount with BIND_OPTIONS."""
    return {"bind": target, "mode": "ro" if read_only else "rw", "extended_mode": list(BIND_OPTIONS)}


def isolation_kwargs() -> dict[str, Any]:
    """The create arguments that keep container root from being host root (module docstring)."""
    return {
        "userns_mode": USERNS_MODE,
        "idmappings": {"AutoUserNs": True, "AutoUserNsOpts": {"Size": USERNS_SIZE}},
        "no_new_privileges": True,
        "cap_drop": ["ALL"],
        "cap_add": list(JOB_CAPABILITIES),
        "privileged": False,
    }


def enforce_isolation(kwargs: dict[str, Any]) -> list[str]:
    """Re-apply the isolation to kwargs a job-runner plugin returned; returns what it had to
    change (for a warning), empty when the plugin left it alone.

    The plugin is the operator's code, but the isolation is what keeps the host the
    operator's: an extra capability, a `privileged` flag or a bind without nosuid is undone
    here. A bind the plugin added to podman-py's `mounts` is moved to `volumes` (the only
    argument that carries nosuid/nodev); tmpfs and named volumes are podman's own, already
    nosuid,nodev.
    """
    changed = [key for key, value in isolation_kwargs().items() if kwargs.get(key) != value]
    kwargs.update(isolation_kwargs())
    kwargs.pop("security_opt", None)  # podman-py sends it as SELinux options; nothing of ours uses it
    volumes: dict[str, Any] = dict(kwargs.get("volumes") or {})
    kept_mounts: list[dict[str, Any]] = []
    for mount in kwargs.get("mounts") or []:
        if str(mount.get("type", "")).lower() != "bind":
            kept_mounts.append(mount)
            continue
        changed.append(f"mounts[{mount.get('target')}]")
        volumes[str(mount.get("source"))] = _bind(str(mount.get("target")), read_only=bool(mount.get("read_only")))
    for source, entry in list(volumes.items()):
        options = list(entry.get("extended_mode") or [])
        missing = [opt for opt in BIND_OPTIONS if opt not in options]
        if missing:
            changed.append(f"volumes[{source}]")
            volumes[source] = {**entry, "extended_mode": options + missing}
    kwargs["volumes"] = volumes
    if kept_mounts:
        kwargs["mounts"] = kept_mounts
    else:
        kwargs.pop("mounts", None)
    return changed


__all__ = ["BIND_OPTIONS", "JOB_CAPABILITIES", "JOB_LABEL", "USERNS_SIZE", "JobContainerSpec", "UnknownPreset",
           "container_name", "enforce_isolation", "isolation_kwargs", "normalize_image"]
