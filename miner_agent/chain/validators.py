"""Who may talk to us: permit neurons ∪ the static allowlist, with the blocklist applied per job.

Two questions, kept apart because the stock miner answers them at different moments
(behaviour.md §4.1): `is_known` at connect time (unknown => GenericError "Unknown validator" and
close), `is_blacklisted` at each V0InitialJobRequest (=> V0DeclineJobRequest reason
`validator_blacklisted`). A blocklisted validator can still connect, read our manifest and ask
for the main hotkey; it just gets no jobs.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

CACHE_VERSION = 1


@dataclass(frozen=True)
class ValidatorSet:
    """One immutable snapshot; ChainDuties swaps in a new one after every successful refresh."""

    permitted: frozenset[str] = frozenset()  # validator_permit neurons of the netuid, from the chain
    allow: frozenset[str] = frozenset()  # static allowlist ([validators] allow)
    blocked: frozenset[str] = frozenset()  # [chain] blocklist
    block: int | None = None  # chain block the permit list was read at, if known

    def is_known(self, hotkey: str) -> bool:
        """May this hotkey open a validator session at all."""
        return hotkey in self.permitted or hotkey in self.allow

    def is_blacklisted(self, hotkey: str) -> bool:
        """Should this hotkey's job offers be declined with `validator_blacklisted`."""
        return hotkey in self.blocked

    def __contains__(self, hotkey: object) -> bool:
        # Lets the existing `hotkey not in ctx.validators` check keep working unchanged.
        return isinstance(hotkey, str) and self.is_known(hotkey)

    def __len__(self) -> int:
        return len(self.permitted | self.allow)

    @property
    def active(self) -> frozenset[str]:
        """Validators that may get jobs: (permitted ∪ allow) − blocked."""
        return (self.permitted | self.allow) - self.blocked

    def with_permitted(self, permitted: Iterable[str], block: int | None) -> ValidatorSet:
        return ValidatorSet(frozenset(permitted), self.allow, self.blocked, block)


def load_cache(path: Path) -> tuple[frozenset[str], int | None] | None:
    """The permit list saved by the last successful refresh, so a restart during a chain outage
    still admits yesterday's validators. None when absent or unreadable (logged)."""
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        log.warning("validator cache ignored path=%s reason=%r", path, str(exc))
        return None
    hotkeys = raw.get("permitted") if isinstance(raw, dict) else None
    if raw.get("version") != CACHE_VERSION or not isinstance(hotkeys, list):
        log.warning("validator cache ignored path=%s reason='unexpected format'", path)
        return None
    block = raw.get("block")
    return frozenset(str(h) for h in hotkeys), block if isinstance(block, int) else None


def save_cache(path: Path, permitted: frozenset[str], block: int | None) -> None:
    """Write atomically (tmp + rename) so a crash never leaves half a list behind."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({"version": CACHE_VERSION, "block": block, "permitted": sorted(permitted)}))
    os.replace(tmp, path)
