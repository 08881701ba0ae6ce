"""Executor agent configuration: one TOML file, every value with a documented default.

The file is `/etc/executor-agent/executor-agent.toml` under systemd. Every key is
optional; an empty file gives a working agent on a stock podman host. Units are in
the key names so a reader never has to guess (`_s`, `_bytes`, `_mib`).

Example::

    socket_path = "/run/executor-agent/agent.sock"
    jobs_dir = "/var/lib/executor-agent/jobs"
    podman_url = "unix:///run/podman/podman.sock"
    slots = 1
    keep_job_dirs = false
    image_policy = "local_or_pull"

    [container]
    memory_limit_mib = 0        # 0 = no limit
    pids_limit = 16384

    [streaming]
    port_range = [6000, 6999]   # inclusive; one TLS port per streaming job
    bind_host = "0.0.0.0"
    health_timeout_s = 25.0

    [egress]
    allow = ["10.20.0.0/16", "files.lan", "registry.lan:5000"]   # default: [] (public addresses only)
"""

from __future__ import annotations

import ipaddress
from enum import Enum
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from agent_common.tomlfile import ConfigError, load_model
from executor_agent.net.egress import EgressPolicy

DEFAULT_CONFIG_PATH = Path("/etc/executor-agent/executor-agent.toml")
# The agent socket's group on a packaged host: clients (a local miner-agent) are put in it, and
# it grants nothing else. Never the podman socket's group (executor-agent-podman), which only
# the agent's units hold: podman's socket is root-equivalent (docs/job-isolation.md).
LINK_GROUP = "executor-agent-link"


class ImagePolicy(str, Enum):
    """What the startup stage does when the job image is not in local storage.

    `local_or_pull`: pull it (stock behaviour, but the stock executor pulls every time;
    we only pull when missing, so preloaded images cost nothing).
    `local_only`: fail the job at once; for hosts that only run preloaded images.
    """

    LOCAL_OR_PULL = "local_or_pull"
    LOCAL_ONLY = "local_only"


class ContainerLimits(BaseModel):
    """Resource limits for job containers. The stock executor sets none; we cap pids so a
    fork bomb cannot take the host, and leave memory to the operator (GPU jobs vary)."""

    model_config = ConfigDict(extra="forbid")

    memory_limit_mib: int = Field(0, ge=0, description="0 = no limit (memory+swap are set equal)")
    pids_limit: int = Field(16384, ge=0, description="tasks (threads count) per container; 0 = no limit")
    shm_size_mib: int = Field(0, ge=0, description="/dev/shm size; 0 = podman's default (64 MiB)")
    disk_limit_mib: int = Field(
        51200, ge=0, description="what one job may hold on this host's disk (/volume, /output, artifacts, its "
        "root filesystem layer and its logs): its volumes may not download more, and its container is killed "
        "past it (daemon/disk_watch.py); 0 = no limit",
    )
    disk_check_interval_s: float = Field(
        2.0, gt=0, description="the longest time between two full measurements of a running job's disk use; "
        "growth on the job dirs' filesystems is noticed within 10 ms and measured at once",
    )


class ImageGcSettings(BaseModel):
    """Job-image garbage collection (a docuum equivalent; executor_agent/imagegc.py). An image
    is removable when no container uses it, it is not in the preload list, and this agent has
    not seen it used for `min_age_s`. Removable images go when unused for `max_age_s`, or,
    least recently used first, while the image disk is above `disk_high_percent`, until it
    is below `disk_low_percent`."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(True, description="run the collector in the agent")
    interval_s: float = Field(600.0, gt=0, description="time between two collections")
    min_age_s: float = Field(3600.0, ge=0, description="never remove an image used (or first seen) this recently")
    max_age_s: float = Field(604800.0, ge=0, description="remove an image unused this long; 0 = only under disk pressure")
    disk_high_percent: float = Field(85.0, gt=0, le=100, description="image disk use that starts LRU removal")
    disk_low_percent: float = Field(70.0, ge=0, le=100, description="LRU removal stops below this")

    @model_validator(mode="after")
    def _low_below_high(self) -> ImageGcSettings:
        if self.disk_low_percent >= self.disk_high_percent:
            raise ValueError("disk_low_percent must be below disk_high_percent")
        return self


class MetricsSettings(BaseModel):
    """The agent's Prometheus endpoint (executor_agent/daemon/metrics_endpoint.py; docs/metrics.md): its
    disk and image collection. Loopback unless `host` says otherwise; a port already taken is logged
    and the agent runs on without it (jobs matter more than the graph)."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(True, description="serve /metrics")
    host: str = Field("127.0.0.1", description="address of the metrics listener; never the miner link")
    port: int = Field(9109, ge=0, le=65535, description="its TCP port (0 = any free port)")


class StreamingSettings(BaseModel):
    """Streaming jobs (behaviour.md §2.6): the agent serves mutual TLS on one port of
    `port_range` per job and forwards to the job's port 8000 on its internal network."""

    model_config = ConfigDict(extra="forbid")

    port_range: tuple[int, int] = Field(
        (6000, 6999), description="inclusive TCP port range for the per-job TLS listener (stock dispenser range)"
    )
    bind_host: str = Field("0.0.0.0", description="address the TLS listener binds; users connect from outside")
    health_timeout_s: float = Field(
        25.0, gt=0,
        description="how long the job's GET /health may take to answer 200 (stock WAIT_FOR_STREAMING_JOB_TIMEOUT)",
    )
    health_poll_interval_s: float = Field(0.5, gt=0, description="time between two /health probes")
    subnet_pool: str = Field(
        "10.223.0.0/16", description="private range carved into one /24 per streaming job's internal network"
    )

    @model_validator(mode="after")
    def _range_ordered(self) -> StreamingSettings:
        low, high = self.port_range
        if not 1 <= low <= high <= 65535:
            raise ValueError("port_range must be [low, high] with 1 <= low <= high <= 65535")
        try:
            pool = ipaddress.ip_network(self.subnet_pool)
        except ValueError:
            raise ValueError(f"subnet_pool {self.subnet_pool!r} is not a network like 10.223.0.0/16") from None
        if pool.prefixlen > 24:
            raise ValueError("subnet_pool must be a /24 or larger")
        return self


class EgressSettings(BaseModel):
    """Where the URLs of a job (volume downloads, Hugging Face, output uploads) may connect.

    Those URLs are written by whoever submitted the job, so by default they may reach public
    addresses only: loopback, link-local (cloud metadata), private, CGNAT, multicast, reserved
    addresses and this host's own are refused, checked after DNS and again on every redirect
    (executor_agent/net/egress.py). `allow` opens exceptions, e.g. a file mirror on the LAN."""

    model_config = ConfigDict(extra="forbid")

    allow: list[str] = Field(
        default_factory=list,
        description='exceptions, each one of: a network or address, any port ("10.20.0.0/16", "127.0.0.1", '
        '"fd00::/8"); an address and one port ("127.0.0.1:5000", "[::1]:5000"); a URL host name, any port '
        'or one port ("files.lan", "registry.lan:5000"; matched exactly, case-insensitive, and whatever it '
        "resolves to is then allowed). [] = public addresses only",
    )

    @field_validator("allow")
    @classmethod
    def _entries_parse(cls, allow: list[str]) -> list[str]:
        EgressPolicy.from_entries(allow)  # a ValueError names the bad entry
        return allow

    @property
    def policy(self) -> EgressPolicy:
        return EgressPolicy.from_entries(self.allow)


DEFAULT_DYNAMIC_CONFIG_URL = (
    "https://raw.githubusercontent.com/backend-developers-ltd/compute-horde-dynamic-config/master/miner-config-prod.json"
)


class PreloadSettings(BaseModel):
    """What `executor-agent preload` (run by executor-agent-preload.timer) pulls: these images
    plus the miner dynamic config's DYNAMIC_PRELOAD_DOCKER_JOB_IMAGES (see executor_agent/preload.py)."""

    model_config = ConfigDict(extra="forbid")

    images: list[str] = Field(default_factory=list, description="job images to keep pulled on this host")
    dynamic_config_url: str = Field(
        DEFAULT_DYNAMIC_CONFIG_URL,
        description='the stock preload script\'s source (http(s):// or file://); "" = only `images`',
    )
    pull_timeout_s: float = Field(
        1800.0, gt=0, description="bound on one preload pull; job images are often several GB"
    )


class AgentConfig(BaseModel):
    """Everything the executor agent reads at start."""

    model_config = ConfigDict(extra="forbid")

    socket_path: Path = Field(
        Path("/run/executor-agent/agent.sock"),
        description="unix socket the miner agent talks to (directly or via SSH streamlocal); mode 0660",
    )
    socket_group: str | None = Field(
        None,
        description=f"group of the socket: its members may connect (a miner-agent on this host). Unset: "
        f"{LINK_GROUP!r} when that group exists (the executor-agent package creates it and puts a local "
        f"miner-agent in it), else the agent's own group; \"\" = the agent's own group",
    )
    jobs_dir: Path = Field(
        Path("/var/lib/executor-agent/jobs"),
        description="one dir per job: volume/, output/, artifacts/, events.jsonl",
    )
    podman_url: str = Field(
        "unix:///run/podman/podman.sock",
        description="podman API service; containers started through it outlive this agent",
    )
    slots: int = Field(1, ge=1, description="how many jobs may run at once on this host")
    keep_job_dirs: bool = Field(
        False,
        description="keep volume/output and the container after a job ends (debugging; "
        "like the stock DEBUG_AUTO_REMOVE_EXECUTOR_CONTAINERS=false)",
    )
    image_policy: ImagePolicy = Field(ImagePolicy.LOCAL_OR_PULL)
    image_pull_timeout_s: float = Field(
        240.0, gt=0, description="bound on one pull; the validator's startup budget is usually far smaller"
    )
    finished_job_retention_s: float = Field(
        3600.0, ge=0, description="how long events.jsonl of a finished job stays for a late attach"
    )
    container: ContainerLimits = Field(default_factory=ContainerLimits)
    preload: PreloadSettings = Field(default_factory=PreloadSettings)
    image_gc: ImageGcSettings = Field(default_factory=ImageGcSettings)
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)
    streaming: StreamingSettings = Field(default_factory=StreamingSettings)
    egress: EgressSettings = Field(default_factory=EgressSettings)
    specs_refresh_s: float = Field(
        21600.0, gt=0, description="machine specs are collected at start and refreshed this often (6 h)"
    )
    nvidia_smi_path: str = Field("nvidia-smi", description="nvidia-smi used for the GPU part of the machine specs")
    job_runner: str = Field(
        "", description='job-runner plugin as "package.module:ClassName" (executor_agent/plugins/job_runner.py); '
        '"" = the built-in behaviour'
    )
    job_runner_options: dict[str, Any] = Field(
        default_factory=dict, description="free-form table handed to the job-runner plugin"
    )


def load_config(path: Path | str | None) -> AgentConfig:
    """Read and validate a TOML config; None or a missing default path gives the defaults.

    Raises ConfigError with a one-line message that names the file and the offending key.
    """
    if path is None:
        if not DEFAULT_CONFIG_PATH.exists():
            return AgentConfig()
        path = DEFAULT_CONFIG_PATH
    return load_model(Path(path), AgentConfig, "pass --config with an existing TOML file")


__all__ = ["LINK_GROUP", "AgentConfig", "ConfigError", "EgressSettings", "ImagePolicy", "load_config"]
