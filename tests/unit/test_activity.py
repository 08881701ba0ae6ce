"""Validator activity survives a restart and costs at most one write a minute (miner_agent/activity.py).

A real SQLite database file, opened through the miner's own open_db, reopened as a restart would."""

from __future__ import annotations

from pathlib import Path

from miner_agent.activity import MAX_VALIDATORS_TRACKED, PERSIST_EVERY_S, Activity
from miner_agent.db import open_db


def test_never_connected_and_first_times_survive_a_restart(tmp_path: Path) -> None:
    db = tmp_path / "miner.sqlite"
    first = Activity(open_db(db))
    assert first.last_connected() == {} and first.last_page_fetch() is None
    first.validator_connected("5Alice", 1000.0)
    first.pages_fetched(1001.0)
    again = Activity(open_db(db))
    assert again.last_connected() == {"5Alice": 1000.0}
    assert again.last_page_fetch() == 1001.0


def test_live_times_move_every_call_but_the_database_only_once_a_minute(tmp_path: Path) -> None:
    db = tmp_path / "miner.sqlite"
    activity = Activity(open_db(db))
    activity.validator_connected("5Alice", 1000.0)
    activity.validator_connected("5Alice", 1000.0 + PERSIST_EVERY_S / 2)
    activity.pages_fetched(1000.0)
    activity.pages_fetched(1000.0 + PERSIST_EVERY_S / 2)
    assert activity.last_connected() == {"5Alice": 1000.0 + PERSIST_EVERY_S / 2}
    assert activity.last_page_fetch() == 1000.0 + PERSIST_EVERY_S / 2
    assert Activity(open_db(db)).last_connected() == {"5Alice": 1000.0}  # the half-minute is what a crash loses
    activity.validator_connected("5Alice", 1000.0 + PERSIST_EVERY_S)
    activity.pages_fetched(1000.0 + PERSIST_EVERY_S)
    restarted = Activity(open_db(db))
    assert restarted.last_connected() == {"5Alice": 1000.0 + PERSIST_EVERY_S}
    assert restarted.last_page_fetch() == 1000.0 + PERSIST_EVERY_S
    assert (activity.connections, activity.page_fetches) == (3, 3)


def test_one_time_hotkeys_cannot_grow_the_table_without_bound(tmp_path: Path) -> None:
    db = tmp_path / "miner.sqlite"
    activity = Activity(open_db(db))
    for i in range(MAX_VALIDATORS_TRACKED + 5):
        activity.validator_connected(f"5Key{i}", 1000.0 + i)
    kept = Activity(open_db(db)).last_connected()
    assert len(kept) == MAX_VALIDATORS_TRACKED
    assert "5Key0" not in kept and f"5Key{MAX_VALIDATORS_TRACKED + 4}" in kept
