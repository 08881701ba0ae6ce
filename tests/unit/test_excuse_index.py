"""Busy-decline excuses from memory (miner_agent/receipts/excuse_index.py) against SQLite's answer
for the same question, on a real database: whatever was stored, in whatever order and with
whatever timestamps and ttls, before or after a restart, with the index full or not, the lines are
SQLite's, in SQLite's order; where the index does not hold the rows it says so and SQLite answers."""

from __future__ import annotations

import random
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest

from horde_protocol.receipts import JobStartedReceiptPayload, receipt_blob
from horde_protocol.signing import sign_blob
from miner_agent.receipts import receipt_store
from miner_agent.receipts.excuse_index import ExcuseIndex, IndexedExcuse
from tests.unit.test_receipt_group_commit import MINER, VALIDATOR, _store

CLASSES = ["always_on.test", "always_on.gpu-24gb"]


def _offer(rnd: random.Random, now: float) -> tuple[JobStartedReceiptPayload, str]:
    # Mostly recent, some from minutes or an hour ago (a validator's clock, a long ttl), some synthetic.
    age = rnd.choice([rnd.uniform(0, 20), rnd.uniform(0, 20), rnd.uniform(0, 400), rnd.uniform(3000, 4000)])
    payload = JobStartedReceiptPayload(
        job_uuid=str(uuid.UUID(int=rnd.getrandbits(128))), miner_hotkey=MINER.ss58_address,
        validator_hotkey=VALIDATOR.ss58_address, timestamp=datetime.fromtimestamp(now - age, UTC),
        executor_class=rnd.choice(CLASSES), is_organic=rnd.random() < 0.85,
        ttl=rnd.choice([7, 7, 30, 600, 5400]))
    return payload, sign_blob(VALIDATOR, receipt_blob(payload))


def _sqlite_lines(store: receipt_store.ReceiptStore, cls: str, at: float, exclude: str) -> list[str]:
    return [r.model_dump_json() for r in store.excuses(cls, at, exclude)]


@pytest.mark.parametrize("kept", [4096, 40])
async def test_memory_answers_as_sqlite_does(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kept: int) -> None:
    monkeypatch.setattr(receipt_store, "EXCUSE_LINES_KEPT", kept)
    rnd = random.Random(kept)
    now = time.time()
    store = _store(tmp_path)
    offers = [_offer(rnd, now) for _ in range(300)]
    answered_from_memory = 0
    for n, (payload, signature) in enumerate(offers):
        await store.accept_durable(payload, signature, VALIDATOR.ss58_address)
        if n % 7 == 0 or n > 280:
            for _ in range(3):
                cls, at = rnd.choice(CLASSES), now - rnd.choice([0.0, rnd.uniform(0, 30), rnd.uniform(0, 4000)])
                exclude = str(rnd.choice(offers[:n + 1])[0].job_uuid)
                assert store.excuse_lines(cls, at, exclude) == _sqlite_lines(store, cls, at, exclude)
                answered_from_memory += store._excuses.lines(cls, at - store._longest_ttl(), at, 0, exclude) is not None
    if kept > len(offers):
        assert answered_from_memory > 10  # the index did answer, not only SQLite
    restarted = _store(tmp_path)
    for at in (now, now - 5, now - 100, now - 3500):
        for cls in CLASSES:
            assert restarted.excuse_lines(cls, at, "none") == _sqlite_lines(restarted, cls, at, "none")


def test_the_index_says_what_it_does_not_hold() -> None:
    index = ExcuseIndex(max_entries=3)
    assert index.lines("c", 0.0, 10.0, 0, "x") is None  # nothing loaded: nothing known
    index.load([], complete_after=100.0)
    for ts, rowid in ((110.0, 1), (120.0, 2), (105.0, 3)):
        index.add("c", IndexedExcuse(ts, rowid, 30, f"job{rowid}", f"line{rowid}"))
    assert index.lines("c", 101.0, 125.0, 0, "none") == ["line3", "line1", "line2"]  # by time, then rowid
    assert index.lines("c", 100.0, 125.0, 0, "none") is None  # a row at exactly 100 may be missing
    index.add("c", IndexedExcuse(130.0, 4, 30, "job4", "line4"))  # a fourth: the oldest (105) goes
    assert len(index) == 3 and index.complete_after == 105.0
    assert index.lines("c", 104.0, 131.0, 0, "none") is None
    assert index.lines("c", 106.0, 131.0, 0, "job2") == ["line1", "line4"]
    index.forget_before(125.0)
    assert len(index) == 1 and index.lines("c", 126.0, 131.0, 0, "none") == ["line4"]
    assert index.lines("c", 121.0, 131.0, 0, "none") is None
