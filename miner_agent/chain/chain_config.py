"""The `[chain]` section of miner-agent.toml: which chain backend, where we announce, what we rotate.

Defaults are the offline ones (static backend, no fetches), so a fresh install starts with no
network beyond its own listener. Switching `backend = "bittensor"` is the one line that makes
the duties real; everything else keeps its stock-miner value (protocol.md §10, behaviour.md §3-4).
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

KNOWN_NETWORKS = ("finney", "test", "local", "devnet", "archive")  # names the bittensor SDK resolves
DEFAULT_NETUID = 12  # ComputeHorde on finney (testnet: 174)
DEFAULT_DYNAMIC_CONFIG_ENV = "prod"  # the stock DYNAMIC_CONFIG_ENV
# Services that answer a bare "what is my public IPv4" GET with the address as text; tried in order
# when announce_ip = "auto" (the stock miner let the bittensor SDK detect it the same way).
DEFAULT_IP_DISCOVERY_URLS = (
    "https://checkip.amazonaws.com",
    "https://api.ipify.org",
    "https://ifconfig.me/ip",
)


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DynamicConfigSource(_Section):
    """Where the stock `DYNAMIC_*` values come from (behaviour.md §3).

    `none`: built-in defaults only. `file`: a local JSON or TOML file, re-read every refresh.
    `url`: HTTP(S) JSON documents in the stock dynamic-config format, later ones override earlier
    ones; with `urls` empty that is the stock GitHub pair for `env` (miner-config, then common-config).
    """

    source: Literal["none", "file", "url"] = "none"
    path: Path | None = None
    urls: list[str] = Field(default_factory=list)
    env: str = Field(DEFAULT_DYNAMIC_CONFIG_ENV, pattern=r"^[A-Za-z0-9_-]+$")
    fetch_timeout_s: float = Field(20.0, gt=0)

    @field_validator("urls")
    @classmethod
    def _http_only(cls, urls: list[str]) -> list[str]:
        for url in urls:
            if not url.startswith(("http://", "https://")):
                raise ValueError(f"dynamic config url {url!r} must start with http:// or https://")
        return urls


class ChainSection(_Section):
    """Everything the chain duties need besides the hotkey (from [wallet]) and the static
    allowlist (from [validators] allow)."""

    # "static" reads validators from a file and only logs writes; "bittensor" talks to subtensor.
    backend: Literal["static", "bittensor"] = "static"
    # A bittensor network name (KNOWN_NETWORKS) or a ws:// / wss:// subtensor endpoint.
    network: str = "finney"
    netuid: int = Field(DEFAULT_NETUID, ge=0, le=65535)
    # Static backend: TOML (`validators = [...]`) or JSON (a list, or {"validators": [...]}).
    static_validators_file: Path | None = None
    # Static backend: a fixed block number; unset derives one from the clock (12 s blocks).
    static_block: int | None = Field(None, ge=0)
    # The stock constance SERVING flag: false keeps the axon un-announced (e.g. while migrating).
    announce: bool = True
    # Public IPv4 put on chain, or "auto" to ask ip_discovery_urls.
    announce_ip: str = "auto"
    # Port put on chain; "auto" is the port the validator listener actually bound.
    announce_port: int | Literal["auto"] = "auto"
    ip_discovery_urls: list[str] = Field(default_factory=lambda: list(DEFAULT_IP_DISCOVERY_URLS))
    # Publish the manifest as a knowledge commitment (`<M:...>`, protocol.md §10).
    commit_manifest: bool = True
    # The stock HOTKEYS_FOR_MAIN_HOTKEY_SELECTION: hotkeys of one coldkey, rotated per 722-block cycle.
    hotkeys_for_main_hotkey_selection: list[str] = Field(default_factory=list)
    # Validators whose V0InitialJobRequest is declined with reason validator_blacklisted.
    blocklist: list[str] = Field(default_factory=list)
    dynamic_config: DynamicConfigSource = Field(default_factory=DynamicConfigSource)

    @field_validator("announce_ip")
    @classmethod
    def _ipv4_or_auto(cls, value: str) -> str:
        if value == "auto":
            return value
        try:
            address = ipaddress.IPv4Address(value)
        except ValueError:
            raise ValueError(f"announce_ip {value!r} is not an IPv4 address; use a public IPv4 or \"auto\"") from None
        if address.is_unspecified:
            raise ValueError("announce_ip 0.0.0.0 means 'not serving' to validators; use a public IPv4 or \"auto\"")
        return value

    @field_validator("announce_port")
    @classmethod
    def _port_range(cls, value: int | str) -> int | str:
        if isinstance(value, int) and not 1 <= value <= 65535:
            raise ValueError(f"announce_port {value} is outside 1..65535")
        return value

    @field_validator("network")
    @classmethod
    def _known_network(cls, value: str) -> str:
        if value in KNOWN_NETWORKS or value.startswith(("ws://", "wss://")):
            return value
        raise ValueError(f"network {value!r} is not one of {', '.join(KNOWN_NETWORKS)} or a ws:// / wss:// endpoint")
