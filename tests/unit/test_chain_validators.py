"""Validator set: permit ∪ allow may connect; the blocklist only declines jobs (behaviour.md §4.1)."""

from __future__ import annotations

from pathlib import Path

from miner_agent.chain.validators import ValidatorSet, load_cache, save_cache


def test_known_blacklisted_and_active_are_separate_questions() -> None:
    vs = ValidatorSet(permitted=frozenset({"p1", "p2"}), allow=frozenset({"a1"}), blocked=frozenset({"p2", "x"}))
    assert vs.is_known("p1") and vs.is_known("a1") and vs.is_known("p2")
    assert not vs.is_known("x")  # blocked but not a validator: unknown
    assert vs.is_blacklisted("p2") and not vs.is_blacklisted("p1")
    assert vs.active == {"p1", "a1"}
    assert "p2" in vs and "x" not in vs and 5 not in vs
    assert len(vs) == 3


def test_with_permitted_keeps_allow_and_blocklist() -> None:
    vs = ValidatorSet(allow=frozenset({"a"}), blocked=frozenset({"b"})).with_permitted({"p"}, 10)
    assert vs.permitted == {"p"} and vs.allow == {"a"} and vs.blocked == {"b"} and vs.block == 10


def test_cache_round_trip_and_bad_files(tmp_path: Path) -> None:
    path = tmp_path / "validators.json"
    assert load_cache(path) is None
    save_cache(path, frozenset({"v2", "v1"}), 1234)
    assert load_cache(path) == (frozenset({"v1", "v2"}), 1234)
    path.write_text("{not json")
    assert load_cache(path) is None
    path.write_text('{"version": 99, "permitted": []}')
    assert load_cache(path) is None
