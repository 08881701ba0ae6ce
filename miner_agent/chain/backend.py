"""The chain seam: the reads and writes a miner needs, and the offline implementation.

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

    async def neuron_uid(self, netuid: int, hotkey: str) -> int | None:
        """The hotkey's uid on the netuid; None when it is not registered there."""
        ...

    async def read_axon(self, netuid: int, hotkey: str) -> tuple[str, int] | None:
        """The hotkey's served axon as (IPv4 text, port); None when it never served one."""
        ...

    async def block_timestamp(self) -> float:
        """Unix seconds of the head block (`Timestamp.Now` / 1000): the clock validators date by."""
        ...

    async def associated_evm_address(self, netuid: int, uid: int) -> tuple[str, int] | None:
        """`SubtensorModule.AssociatedEvmAddress[(netuid, uid)]` as (checksummed H160, block); None if unset."""
        ...

    async def associate_evm_key(self, netuid: int, evm_address: str, block_number: int, signature: bytes) -> None:
        """`SubtensorModule.associate_evm_key`, signed by our hotkey; `signature` is the EVM key's
        65-byte EIP-191 signature over hotkey_pubkey || keccak256(block_number as u64 LE).
        Raises ChainRejected (rate limit, not registered, bad signature)."""
        ...

    async def close(self) -> None:
        """Release connections; the backend may be used again afterwards (it reconnects)."""
        ...


def _read_static_file(path: Path) -> object:
    try:
        text = path.read_text()
    except OSError as exc:
        raise ChainUnavailable(f"static validators file {path}: {exc.strerror or exc}") from None
    try:
        return tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
        raise ChainUnavailable(f"static validators file {path}: not valid {path.suffix.lstrip('.') or 'JSON'}: {exc}") from None


def read_validators_file(path: Path) -> frozenset[str]:
    """Hotkeys from a TOML (`validators = [...]`) or JSON (list, or {"validators": [...]}) file."""
    raw = _read_static_file(path)
    if isinstance(raw, dict):
        raw = raw.get("validators")
    if not isinstance(raw, list) or not all(isinstance(v, str) and v for v in raw):
        raise ChainUnavailable(f"static validators file {path}: expected a list of hotkey strings under 'validators'")
    return frozenset(raw)


@dataclass(frozen=True)
class StaticChainState:
    """The optional tables of a static chain file, beside `validators` (docs/chain.md):

        [uids]          hotkey = uid
        [axons]         hotkey = "ip:port"
        [commitments]   hotkey = "text"
        [evm]           "<uid>" = "0xH160"        (AssociatedEvmAddress of netuid's uid)
        clock_offset_s = -7200                    (chain time minus local time, seconds)

    A missing file or table is empty; a wrong type is a ChainUnavailable naming the key.
    """

    uids: dict[str, int] = field(default_factory=dict)
    axons: dict[str, tuple[str, int]] = field(default_factory=dict)
    commitments: dict[str, str] = field(default_factory=dict)
    evm: dict[int, str] = field(default_factory=dict)
    clock_offset_s: float = 0.0

    @classmethod
    def read(cls, path: Path | None) -> StaticChainState:
        if path is None or not path.exists():  # the validators duty already reports a missing file
            return cls()
        raw = _read_static_file(path)
        if not isinstance(raw, dict):
            return cls()

        def table(name: str) -> dict[str, object]:
            value = raw.get(name, {})
            if not isinstance(value, dict):
                raise ChainUnavailable(f"static validators file {path}: [{name}] must be a table")
            return value

        try:
            axons = {}
            for hotkey, where in table("axons").items():
                host, _, port = str(where).rpartition(":")
                axons[hotkey] = (host, int(port))
            return cls(
                uids={k: int(v) for k, v in table("uids").items()},  # type: ignore[call-overload]
                axons=axons,
                commitments={k: str(v) for k, v in table("commitments").items()},
                evm={int(k): str(v) for k, v in table("evm").items()},
                clock_offset_s=float(raw.get("clock_offset_s", 0.0)),
            )
        except (TypeError, ValueError) as exc:
            raise ChainUnavailable(f"static validators file {path}: {exc}") from None


@dataclass(frozen=True)
class ChainWrite:
    """One write the static backend recorded instead of sending (what, and the block it 'landed' in)."""

    kind: str  # "serve_axon" | "commitment" | "associate_evm_key"
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
    axons: dict[tuple[int, str], tuple[str, int]] = field(default_factory=dict)
    evm_associations: dict[tuple[int, int], tuple[str, int]] = field(default_factory=dict)

    def _state(self) -> StaticChainState:
        return StaticChainState.read(self.validators_file)

    async def validator_permit_hotkeys(self, netuid: int) -> frozenset[str]:
        if self.validators_file is None:
            return frozenset()
        return read_validators_file(self.validators_file)

    async def current_block(self) -> int:
        if self.block is not None:
            return self.block
        return int(self.clock()) // BLOCK_TIME_S

    async def serve_axon(self, netuid: int, ip: str, port: int) -> None:
        self.axons[(netuid, self.own_hotkey)] = (ip, port)
        await self._record("serve_axon", netuid, {"ip": ip, "port": port})

    async def read_commitment(self, netuid: int, hotkey: str) -> str:
        if (netuid, hotkey) in self.commitments:
            return self.commitments[(netuid, hotkey)]
        return self._state().commitments.get(hotkey, "")

    async def neuron_uid(self, netuid: int, hotkey: str) -> int | None:
        return self._state().uids.get(hotkey)

    async def read_axon(self, netuid: int, hotkey: str) -> tuple[str, int] | None:
        if (netuid, hotkey) in self.axons:
            return self.axons[(netuid, hotkey)]
        return self._state().axons.get(hotkey)

    async def block_timestamp(self) -> float:
        return self.clock() + self._state().clock_offset_s

    async def associated_evm_address(self, netuid: int, uid: int) -> tuple[str, int] | None:
        if (netuid, uid) in self.evm_associations:
            return self.evm_associations[(netuid, uid)]
        address = self._state().evm.get(uid)
        return None if address is None else (address, 0)

    async def associate_evm_key(self, netuid: int, evm_address: str, block_number: int, signature: bytes) -> None:
        uid = await self.neuron_uid(netuid, self.own_hotkey)
        if uid is None:
            raise ChainRejected(f"associate_evm_key: hotkey {self.own_hotkey} is not registered on netuid {netuid}")
        self.evm_associations[(netuid, uid)] = (evm_address, await self.current_block())
        await self._record("associate_evm_key", netuid, {
            "evm_key": evm_address, "block_number": block_number, "signature": "0x" + signature.hex(),
        })

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
