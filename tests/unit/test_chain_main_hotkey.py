"""Main-hotkey rotation (protocol.md §5.6): cycles of 722 blocks, offset by netuid."""

from __future__ import annotations

import pytest

from miner_agent.chain.main_hotkey import (
    CYCLE_BLOCKS,
    check_rotation,
    choose_main_hotkey,
    cycle_number,
    cycle_range,
    epoch_start,
)

ROTATION = ["a", "b", "c"]


@pytest.mark.parametrize(
    ("block", "expected"),
    [(0, "a"), (718, "a"), (719, "b"), (2000, "c"), (2200, "a")],
)
def test_rotation_at_netuid_1_matches_the_stock_miner(block: int, expected: str) -> None:
    # The stock test_main_hotkey table (behaviour.md §6): cycles [-3,719), [719,1441), [1441,2163), [2163,2885).
    assert choose_main_hotkey("own", ROTATION, block, netuid=1) == expected


@pytest.mark.parametrize(
    ("netuid", "block", "start"),
    [(0, 25, -2), (0, 358, -2), (0, 359, 359), (0, 720, 720), (12, 346, -14), (12, 347, 347), (12, 1100, 1069)],
)
def test_epoch_boundaries_follow_subtensor(netuid: int, block: int, start: int) -> None:
    assert epoch_start(block, netuid) == start


def test_cycle_is_two_epochs_starting_with_the_epoch_of_block_0() -> None:
    for netuid in (0, 1, 12, 174):
        first = epoch_start(0, netuid)
        assert cycle_number(first, netuid) == 0
        assert cycle_number(first + CYCLE_BLOCKS - 1, netuid) == 0
        assert cycle_number(first + CYCLE_BLOCKS, netuid) == 1
        block = 7_000_123
        r = cycle_range(block, netuid)
        assert block in r and len(r) == CYCLE_BLOCKS
        assert (r.start - first) % CYCLE_BLOCKS == 0


def test_no_rotation_or_unknown_block_answers_own_hotkey() -> None:
    assert choose_main_hotkey("own", [], 5000, 12) == "own"
    assert choose_main_hotkey("own", ROTATION, None, 12) == "own"


def test_rotation_without_own_hotkey_is_warned() -> None:
    assert check_rotation("own", ROTATION) is not None
    assert check_rotation("a", ROTATION) is None
    assert check_rotation("own", []) is None
