"""The miner agent's configuration: one TOML file, every key optional but the wallet.

The models here are the single source of truth for keys and defaults; docs/configuration.md's
configuration table mirrors them. Loading turns every problem into one line that
names the key and the file (`ConfigError`), never a traceback.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from agent_common.tomlfile import ConfigError, load_model
from horde_protocol.enums import DEFAULT_EXECUTOR_CLASS, ExecutorClass
from miner_agent.chain.chain_config import ChainSection
from miner_agent.collateral.config import CollateralSection

DEFAULT_CONFIG_PATH = Path("/etc/miner-agent/miner-agent.toml")
DEFAULT_STATE_DIR = Path("/var/lib/miner-agent")
DEFAULT_LISTEN_PORT = 8000  # the stock BITTENSOR_MINER_PORT
DEFAULT_EXECUTOR_SOCKET = Path("/run/executor-agent/agent.sock")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class MinerSection(_Section):
    listen_host: str = "0.0.0.0"
    listen_port: int = Field(DEFAULT_LISTEN_PORT, ge=0, le=65535)
    state_dir: Path = DEFAULT_STATE_DIR
    # How long a validator's auth timestamp stays valid (stock AUTH_MESSAGE_MAX_AGE).
    auth_max_age_s: int = Field(10, ge=1)
    # How far ahead of our clock an auth timestamp may be; bounds how long a captured auth frame
    # could be replayed (stock miners have no bound).
    auth_max_future_s: int = Field(5, ge=0)
    # An executor whose link stays down this long has its running jobs failed
    # (V0HordeFailedRequest executor_disconnected); shorter drops are re-attached.
    executor_lost_after_s: float = Field(60.0, gt=0)
    # Prometheus /metrics listener; loopback by default, never the public port.
    metrics_host: str = "127.0.0.1"
    metrics_port: int = Field(9108, ge=0, le=65535)
    metrics_enabled: bool = True
    # Local control socket for `miner-agent status/executors ...`; default <state_dir>/admin.sock.
    admin_socket: Path | None = None
    # Largest websocket frame an authenticated validator may send. The big frames are V0JobRequest /
    # V0InitialJobRequest with an inline (base64 zip) volume; 50 MiB is the validators' own websocket
    # max_size, so no stock peer exchanges a larger frame. Before auth a much smaller cap applies.
    max_frame_bytes: int = Field(50 * 1024 * 1024, ge=1024)


class WalletSection(_Section):
    path: Path = Path("~/.bittensor/wallets")
    name: str = "default"
    hotkey: str = "default"


class ValidatorsSection(_Section):
    # Hotkeys (SS58) always allowed to connect, on top of the chain's validator-permit
    # neurons ([chain]); [chain] blocklist declines jobs from listed hotkeys.
    allow: list[str] = Field(default_factory=list)


class _ExecutorBase(_Section):
    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    executor_class: ExecutorClass = DEFAULT_EXECUTOR_CLASS
    # Where streaming-job users reach this executor (streaming_details.executor_ip, the ip of
    # V0StreamingJobReadyRequest). Unset: the ssh `host`, or for a local executor [chain]
    # announce_ip when it is an IPv4, else 127.0.0.1 (see `streaming_address`).
    public_address: str | None = None


class LocalExecutor(_ExecutorBase):
    mode: Literal["local"] = "local"
    socket: Path = DEFAULT_EXECUTOR_SOCKET


class SshExecutor(_ExecutorBase):
    mode: Literal["ssh"]
    host: str
    port: int = Field(22, ge=1, le=65535)
    user: str = "executor-agent"
    key_path: Path
    # The host's public key line ("ssh-ed25519 AAAA..."), pinned: no trust on first use.
    host_key: str
    socket: Path = DEFAULT_EXECUTOR_SOCKET

    @field_validator("host_key")
    @classmethod
    def _parses(cls, value: str) -> str:
        import asyncssh  # here, not at the top: only SSH executors need it, and it costs ~20 MiB resident

        try:
            asyncssh.import_public_key(value.strip())
        except (asyncssh.KeyImportError, ValueError):
            raise ValueError(
                "host_key must be the host's public key line, e.g. the content of "
                "/etc/ssh/ssh_host_ed25519_key.pub on that host ('ssh-ed25519 AAAA...')"
            ) from None
        return value.strip()


ExecutorEntry = Annotated[Union[LocalExecutor, SshExecutor], Field(discriminator="mode")]

LOOPBACK_ADDRESS = "127.0.0.1"  # last resort: streaming works from this host only


def streaming_address(entry: LocalExecutor | SshExecutor, announce_ip: str | None = None) -> str:
    """The address streaming users connect to for this executor (protocol.md §5.5 step 2,
    kept simple: no public-IP discovery, no X-Real-IP)."""
    if entry.public_address:
        return entry.public_address
    if isinstance(entry, SshExecutor):
        return entry.host
    if announce_ip:
        try:
            return str(ipaddress.IPv4Address(announce_ip))
        except ValueError:
            pass
    return LOOPBACK_ADDRESS


class ExecutorManagerSection(_Section):
    # Dotted path of a miner_agent.fleet.manager.BaseExecutorManager subclass that starts
    # executors on demand (the stock EXECUTOR_MANAGER_CLASS_PATH); unset = none.
    class_path: str | None = None
    options: dict[str, Any] = Field(default_factory=dict)


class MinerConfig(_Section):
    miner: MinerSection = Field(default_factory=MinerSection)
    wallet: WalletSection = Field(default_factory=WalletSection)
    validators: ValidatorsSection = Field(default_factory=ValidatorsSection)
    executors: list[ExecutorEntry] = Field(default_factory=lambda: [LocalExecutor(name="local")])
    executor_manager: ExecutorManagerSection = Field(default_factory=ExecutorManagerSection)
    chain: ChainSection = Field(default_factory=ChainSection)
    collateral: CollateralSection = Field(default_factory=CollateralSection)

    @model_validator(mode="after")
    def _unique_executor_names(self) -> MinerConfig:
        seen: set[str] = set()
        for entry in self.executors:
            if entry.name in seen:
                raise ValueError(f"executor name {entry.name!r} is used twice; names must be unique")
            seen.add(entry.name)
        return self

    @model_validator(mode="after")
    def _fill_public_addresses(self) -> MinerConfig:
        """Resolve each executor's streaming address once, here, where [chain] is known."""
        for entry in self.executors:
            if not entry.public_address:
                entry.public_address = streaming_address(entry, self.chain.announce_ip)
        return self

    @property
    def db_path(self) -> Path:
        return self.miner.state_dir / "miner.sqlite3"

    @property
    def admin_socket(self) -> Path:
        return self.miner.admin_socket or self.miner.state_dir / "admin.sock"

    @property
    def receipts_dir(self) -> Path:
        return self.miner.state_dir / "receipts"


def load_config(path: Path) -> MinerConfig:
    """Read and validate the TOML file; raises ConfigError with one actionable line."""
    return load_model(path, MinerConfig, "create it (see docs/configuration.md)")


__all__ = ["ConfigError", "ExecutorEntry", "LocalExecutor", "MinerConfig", "SshExecutor", "load_config"]
