"""Receipt pages written by group commit, and busy-decline excuses served from memory (issue 14).

On a real SQLite file and real page files: what a burst of offers gets back must be what the
one-at-a-time path gave, byte for byte, and durable before the answer."""

from __future__ import annotations

import asyncio
import errno
import json
import os
import sqlite3
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest
from bittensor_wallet import Keypair

from horde_protocol.enums import JobRejectionReason
from horde_protocol.messages import V0DeclineJobRequest
from horde_protocol.receipts import JobStartedReceiptPayload, receipt_blob
from horde_protocol.signing import sign_blob
from miner_agent.db import open_db
from miner_agent.jobs.decline import decline_json
from miner_agent.keys import Signer
from miner_agent.receipts.receipt_store import ReceiptStore, page_of

MINER = Keypair.create_from_uri("//Miner")
VALIDATOR = Keypair.create_from_uri("//Validator")
CLASS = "always_on.test"


def _store(tmp_path: Path) -> ReceiptStore:
    return ReceiptStore(open_db(tmp_path / "m.sqlite3"), tmp_path / "receipts", Signer(MINER))


def _started(job: str | None = None, organic: bool = True) -> tuple[JobStartedReceiptPayload, str]:
    payload = JobStartedReceiptPayload(job_uuid=job or str(uuid.uuid4()), miner_hotkey=MINER.ss58_address,
                                       validator_hotkey=VALIDATOR.ss58_address, timestamp=datetime.now(UTC),
                                       executor_class=CLASS, is_organic=organic, ttl=30)
    return payload, sign_blob(VALIDATOR, receipt_blob(payload))


def _page(store: ReceiptStore) -> Path:
    return store.pages_dir / f"{page_of(time.time())}.jsonl"


async def test_a_burst_of_offers_is_durable_on_the_page_before_each_returns(tmp_path: Path) -> None:
    store = _store(tmp_path)
    offers = [_started() for _ in range(50)]

    async def one(payload: JobStartedReceiptPayload, signature: str) -> bool:
        await store.accept_durable(payload, signature, VALIDATOR.ss58_address)
        return str(payload.job_uuid) in _page(store).read_text()  # what a validator could fetch now

    assert all(await asyncio.gather(*(one(p, s) for p, s in offers)))
    lines = _page(store).read_text().splitlines()
    assert sorted(lines) == sorted(line for line in store._page_lines(page_of(time.time())))
    assert len(lines) == 50 and store.count() == 50 and store.rebuild_pages() == 0


async def test_synchronous_and_grouped_appends_never_lose_each_others_lines(tmp_path: Path) -> None:
    store = _store(tmp_path)
    grouped = [_started() for _ in range(20)]
    tasks = [asyncio.ensure_future(store.accept_durable(p, s, VALIDATOR.ss58_address)) for p, s in grouped]
    await asyncio.sleep(0)  # the worker has taken the first batch
    for _ in range(5):
        payload, signature = _started()
        store.accept(payload, signature, VALIDATOR.ss58_address)  # a JobAccepted/JobFinished-style sync append
    await asyncio.gather(*tasks)
    assert len(_page(store).read_text().splitlines()) == 25 == store.count()
    assert store.rebuild_pages() == 0


async def test_a_failed_grouped_append_marks_the_page_for_rebuild_and_still_returns(tmp_path: Path) -> None:
    store = _store(tmp_path)
    _page(store).mkdir()  # the rename over it fails: a real OSError, like a full disk would give
    payload, signature = _started()
    receipt = await store.accept_durable(payload, signature, VALIDATOR.ss58_address)
    assert receipt.payload.job_uuid == payload.job_uuid
    assert store.count() == 1 and store.stale_pages == {page_of(time.time())}
    _page(store).rmdir()
    assert store.rebuild_pages(only_stale=True) == 1
    assert str(payload.job_uuid) in _page(store).read_text()


def test_excuse_lines_are_the_excuses_json_in_the_same_order_from_memory_or_disk(tmp_path: Path) -> None:
    store = _store(tmp_path)
    for organic in (True, True, False, True, True):
        payload, signature = _started(organic=organic)
        store.accept(payload, signature, VALIDATOR.ss58_address)
    mine, _ = _started()
    at = time.time()
    expected = [r.model_dump_json() for r in store.excuses(CLASS, at, str(mine.job_uuid))]
    assert len(expected) == 4
    assert store.excuse_lines(CLASS, at, str(mine.job_uuid)) == expected
    restarted = _store(tmp_path)  # a new process on the same files: the index is read back from SQLite
    assert restarted.excuse_lines(CLASS, at, str(mine.job_uuid)) == expected
    excluded = str(store.excuses(CLASS, at, "")[0].payload.job_uuid)
    assert store.excuse_lines(CLASS, at, excluded) == [r.model_dump_json() for r in store.excuses(CLASS, at, excluded)]


def test_a_decline_with_excuse_lines_is_byte_identical_to_pydantics(tmp_path: Path) -> None:
    store = _store(tmp_path)
    for _ in range(3):
        payload, signature = _started()
        store.accept(payload, signature, VALIDATOR.ss58_address)
    at = time.time()
    excuses = store.excuses(CLASS, at, "none")
    tricky = 'busy "receipts":[] \\ "x"'  # the key's text inside a string is escaped, never matched
    for message in ("all executors of the class are busy", tricky):
        decline = V0DeclineJobRequest(job_uuid="j", reason=JobRejectionReason.BUSY, message=message)
        full = decline.model_copy(update={"receipts": excuses})
        assert str(decline_json(decline, store.excuse_lines(CLASS, at, "none"))) == full.model_dump_json()
    bare = V0DeclineJobRequest(job_uuid="j", reason=JobRejectionReason.UNKNOWN, message="m")
    assert decline_json(bare, []) == bare.model_dump_json()


async def test_a_rebuild_leaves_a_page_with_queued_lines_for_later_and_duplicates_nothing(tmp_path: Path) -> None:
    store = _store(tmp_path)
    first, signature = _started()
    store.accept(first, signature, VALIDATOR.ss58_address)
    page = page_of(time.time())
    payload, signature = _started()
    task = asyncio.ensure_future(store.accept_durable(payload, signature, VALIDATOR.ss58_address))
    for _ in range(5):  # a turn for the row's transaction, one for the offer to queue its line
        await asyncio.sleep(0)
        if store.writer.busy(page):
            break
    assert store.writer.busy(page)  # its row is in SQLite, its line queued or being written
    store.stale_pages.add(page)
    assert store.rebuild_pages(only_stale=True) == 0 and store.stale_pages == {page}
    await task
    lines = _page(store).read_text().splitlines()
    assert len(lines) == 2 == len(set(lines))
    assert store.rebuild_pages(only_stale=True) == 0 and store.stale_pages == set()


def test_excuses_read_only_recent_rows_yet_keep_an_old_receipt_whose_ttl_still_covers_the_time(
        tmp_path: Path) -> None:
    """The excuse query walks the index from (time - the longest ttl stored) on: a receipt from an
    hour ago with a two-hour ttl is still handed over, one from an hour ago with 30 s is not, also
    after a restart (the longest ttl is read back from SQLite)."""
    store = _store(tmp_path)
    assert store.excuses(CLASS, time.time(), "none") == []  # the longest ttl is known (0) before the inserts
    hour_ago = datetime.fromtimestamp(time.time() - 3600, UTC)
    kept, expired, recent = str(uuid.uuid4()), str(uuid.uuid4()), str(uuid.uuid4())
    for job, when, ttl in ((kept, hour_ago, 7200), (expired, hour_ago, 30), (recent, datetime.now(UTC), 30)):
        payload = JobStartedReceiptPayload(job_uuid=job, miner_hotkey=MINER.ss58_address,
                                           validator_hotkey=VALIDATOR.ss58_address, timestamp=when,
                                           executor_class=CLASS, is_organic=True, ttl=ttl)
        store.accept(payload, sign_blob(VALIDATOR, receipt_blob(payload)), VALIDATOR.ss58_address)
    at = time.time()
    for fresh in (store, _store(tmp_path)):  # this process, and one started on the same database
        jobs = [str(r.payload.job_uuid) for r in fresh.excuses(CLASS, at, "none")]
        assert sorted(jobs) == sorted([kept, recent])
        assert [line for line in fresh.excuse_lines(CLASS, at, "none")] == [
            r.model_dump_json() for r in fresh.excuses(CLASS, at, "none")]


async def test_a_bursts_rows_share_one_transaction(tmp_path: Path) -> None:
    store = _store(tmp_path)
    statements: list[str] = []
    store.conn.set_trace_callback(statements.append)
    offers = [_started() for _ in range(40)]
    await asyncio.gather(*(store.accept_durable(p, s, VALIDATOR.ss58_address) for p, s in offers))
    store.conn.set_trace_callback(None)
    assert statements.count("BEGIN IMMEDIATE") == 1 and statements.count("COMMIT") == 1
    assert store.count() == 40 and len(_page(store).read_text().splitlines()) == 40


async def test_a_failed_transaction_fails_every_offer_in_it_and_stores_none(tmp_path: Path) -> None:
    """A real SQLite failure mid-batch (the row's table made read-only by a trigger): every offer of
    the batch gets the error, as each did alone, and no row or page line of the batch is left."""
    store = _store(tmp_path)
    offers = [_started() for _ in range(5)]
    poisoned = str(offers[3][0].job_uuid)
    store.conn.execute(f"CREATE TRIGGER refuse BEFORE INSERT ON receipts WHEN NEW.job_uuid = '{poisoned}'"
                       " BEGIN SELECT RAISE(ABORT, 'disk full, say'); END")
    results = await asyncio.gather(*(store.accept_durable(p, s, VALIDATOR.ss58_address) for p, s in offers),
                                   return_exceptions=True)
    assert all(isinstance(r, sqlite3.IntegrityError) and "disk full" in str(r) for r in results)
    assert store.count() == 0 and not _page(store).exists()
    store.conn.execute("DROP TRIGGER refuse")
    await store.accept_durable(*offers[0], VALIDATOR.ss58_address)  # the connection is usable again
    assert store.count() == 1


async def test_an_offer_cancelled_before_its_commit_leaves_its_page_to_the_repair(tmp_path: Path) -> None:
    store = _store(tmp_path)
    payload, signature = _started()
    task = asyncio.ensure_future(store.accept_durable(payload, signature, VALIDATOR.ss58_address))
    await asyncio.sleep(0)  # countersigned, its row queued for this turn's transaction
    task.cancel()
    await asyncio.sleep(0)
    assert task.cancelled() and store.count() == 1  # the row went in; its line did not reach the page
    assert store.stale_pages == {page_of(time.time())}
    assert store.rebuild_pages(only_stale=True) == 1
    assert str(payload.job_uuid) in _page(store).read_text()


@pytest.mark.parametrize("errno_value", [errno.EXDEV, errno.ENOSYS])
def test_pages_grow_whole_where_the_kernel_cannot_copy_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                             errno_value: int) -> None:
    """The old bytes of a page are copied by copy_file_range; a filesystem without it (EXDEV across
    mounts, ENOSYS on old kernels) gets the same file by read and write."""
    store = _store(tmp_path)
    first = [_started() for _ in range(3)]
    for payload, signature in first:
        store.accept(payload, signature, VALIDATOR.ss58_address)

    def refuse(*_: object) -> int:
        raise OSError(errno_value, os.strerror(errno_value))

    monkeypatch.setattr(os, "copy_file_range", refuse)
    payload, signature = _started()
    store.accept(payload, signature, VALIDATOR.ss58_address)
    lines = _page(store).read_text().splitlines()
    expected = [str(p.job_uuid) for p, _ in first] + [str(payload.job_uuid)]
    assert [json.loads(line)["payload"]["job_uuid"] for line in lines] == expected
