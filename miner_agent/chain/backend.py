"""The chain seam: the five reads and writes a miner needs, and the offline implementation.

Everything above this interface (ChainDuties, the validator set, main-hotkey rotation) is
chain-agnostic, so the same duties run against subtensor (`BittensorChain`) or against a file
(`StaticChain`, the default). Backends translate their own failures into the two error classes
below, once, at this boundary; callers never see a bittensor exception.
"""

from __future__ import annotations

import json
import logging
import time
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

log = logging.getLogger(__name__)

BLOCK_TIME_S = 12  # subtensor's target block time on finney and testnet


class ChainError(Exception):
    """A chain read or write did not happen; the message says which and why."""


class ChainUnavailable(ChainError):
    """The chain could not be reached or did not answer (retry later)."""


class ChainRejected(ChainError):
    """The chain answered and refused a write (rate limit, not registered, ...)."""


@runtime_checkable
class ChainBackend(Protocol):
    """What the miner reads from and writes to the chain (protocol.md §10)."""

    async def validator_permit_hotkeys(self, netuid: int) -> frozenset[str]:
        """Hotkeys of the netuid's neurons with validator_permit (§4.3)."""
        ...

    async def current_block(self) -> int:
        """The chain head's block number (main-hotkey rotation, §5.6)."""
        ...

    async def serve_axon(self, netuid: int, ip: str, port: int) -> None:
        """Publish ip:port as our axon; raises ChainRejected when the chain refuses."""
        ...

    async def read_commitment(self, netuid: int, hotkey: str) -> str:
        """The hotkey's knowledge commitment as text; "" when it has none."""
        ...

    async def write_commitment(self, netuid: int, text: str) -> None:
        """Replace our own knowledge commitment with `text` (UTF-8, <= 128 bytes)."""
        ...

    async def close(self) -> None:
        """Release connections; the backend may be used again afterwards (it reconnects)."""
        ...


def read_validators_file(path: Path) -> frozenset[str]:
    """Hotkeys from a TOML (`validators = [...]`) or JSON (list, or {"validators": [...]}) file."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise ChainUnavailable(f"static validators file {path}: {exc.strerror or exc}") from None
    try:
        raw: object = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
        raise ChainUnavailable(f"static validators file {path}: not valid {path.suffix.lstrip('.') or 'JSON'}: {exc}") from None
    if isinstance(raw, dict):
        raw = raw.get("validators")
    if not isinstance(raw, list) or not all(isinstance(v, str) and v for v in raw):
        raise ChainUnavailable(f"static validators file {path}: expected a list of hotkey strings under 'validators'")
    return frozenset(raw)


@dataclass(frozen=True)
class ChainWrite:
    """One write the static backend recorded instead of sending (what, and the block it 'landed' in)."""

    kind: str  # "serve_axon" | "commitment"
    netuid: int
    block: int
    detail: dict[str, object]


@dataclass
class StaticChain:
    """The offline chain: validators from a file, a fixed or clock-derived block, writes kept in memory.

    The validators file is re-read on every refresh, so an operator edits it without a restart.
    Writes are logged and recorded (`writes`) so tests and `status` can see what would have gone on
    chain; commitments read back what was last written, like the real chain would.
    """

    validators_file: Path | None = None
    block: int | None = None
    clock: Callable[[], float] = time.time
    writes: list[ChainWrite] = field(default_factory=list)
    commitments: dict[tuple[int, str], str] = field(default_factory=dict)
    own_hotkey: str = ""

    async def validator_permit_hotkeys(self, netuid: int) -> frozenset[str]:
        if self.validators_file is None:
            return frozenset()
        return read_validators_file(self.validators_file)

    async def current_block(self) -> int:
        if self.block is not None:
            return self.block
        return int(self.clock()) // BLOCK_TIME_S

    async def serve_axon(self, netuid: int, ip: str, port: int) -> None:
        await self._record("serve_axon", netuid, {"ip": ip, "port": port})

    async def read_commitment(self, netuid: int, hotkey: str) -> str:
        return self.commitments.get((netuid, hotkey), "")

    async def write_commitment(self, netuid: int, text: str) -> None:
        self.commitments[(netuid, self.own_hotkey)] = text
        await self._record("commitment", netuid, {"text": text})

    async def close(self) -> None:
        return None

    async def _record(self, kind: str, netuid: int, detail: dict[str, object]) -> None:
        block = await self.current_block()
        self.writes.append(ChainWrite(kind, netuid, block, detail))
        shown = " ".join(f"{k}={v!r}" for k, v in detail.items())
        log.info("static chain write recorded (not sent) kind=%s netuid=%d block=%d %s", kind, netuid, block, shown)
