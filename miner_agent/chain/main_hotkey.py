"""Which hotkey of our coldkey is "main" this cycle (protocol.md §5.6, behaviour.md §4.9).

Validators give 80% of a coldkey's score to the hotkey its miners name as main, and a bonus when
the name changes from one cycle to the next. All miners of one coldkey share the list
(HOTKEYS_FOR_MAIN_HOTKEY_SELECTION) and derive the same answer from the block alone, so they agree
without talking to each other.

Cycle arithmetic, as the stock `compute_horde.subtensor` defines it: an epoch of a subnet with tempo
T is T + 1 blocks long and starts at blocks where `(block + netuid + 2) % (T + 1) == 0` (subtensor's
`blocks_until_next_epoch`); a cycle is two epochs and cycle 0 starts with the epoch containing
block 0. Folding that together: cycle = (block + (netuid + 2) % (T + 1)) // (2 * (T + 1)).
At netuid 1 cycle 0 is blocks [-3, 719), cycle 1 [719, 1441), cycle 2 [1441, 2163).
"""

from __future__ import annotations

from collections.abc import Sequence

TEMPO_BLOCKS = 360  # ComputeHorde's subnet tempo
EPOCH_BLOCKS = TEMPO_BLOCKS + 1  # 361
CYCLE_BLOCKS = 2 * EPOCH_BLOCKS  # 722: the unit validators score in


def epoch_start(block: int, netuid: int, tempo: int = TEMPO_BLOCKS) -> int:
    """First block of the epoch containing `block`."""
    return block - (block + netuid + 2) % (tempo + 1)


def cycle_number(block: int, netuid: int, tempo: int = TEMPO_BLOCKS) -> int:
    """Index of the cycle containing `block`, counting the cycle that contains block 0 as 0."""
    interval = tempo + 1
    return (block + (netuid + 2) % interval) // (2 * interval)


def cycle_range(block: int, netuid: int, tempo: int = TEMPO_BLOCKS) -> range:
    """The blocks of the cycle containing `block` (for logs and status)."""
    interval = tempo + 1
    start = cycle_number(block, netuid, tempo) * 2 * interval - (netuid + 2) % interval
    return range(start, start + 2 * interval)


def choose_main_hotkey(own_hotkey: str, rotation: Sequence[str], block: int | None, netuid: int) -> str:
    """The hotkey to answer V0MainHotkeyMessage with.

    No rotation list: our own hotkey. Unknown block (chain unreachable since start): our own
    hotkey too, the stock miner's fallback. Otherwise rotation[cycle % len(rotation)].
    """
    if not rotation or block is None:
        return own_hotkey
    return rotation[cycle_number(block, netuid) % len(rotation)]


def check_rotation(own_hotkey: str, rotation: Sequence[str]) -> str | None:
    """A warning line when the rotation list leaves our own hotkey out (a likely typo), else None."""
    if rotation and own_hotkey not in rotation:
        return (
            f"hotkey {own_hotkey} is not in [chain] hotkeys_for_main_hotkey_selection; "
            "every miner of the coldkey should list the same hotkeys, including its own"
        )
    return None
