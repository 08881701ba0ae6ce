"""Archiving and eviction of receipt pages and old rows, on a real SQLite file and real pages."""

from __future__ import annotations

import gzip
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from bittensor_wallet import Keypair

from horde_protocol.messages import V0AcceptJobRequest
from horde_protocol.receipts import JobStartedReceiptPayload, receipt_blob
from horde_protocol.signing import sign_blob
from miner_agent.db import open_db
from miner_agent.jobs.job_store import JobSnapshot, JobStore
from miner_agent.jobs.machine import JobState
from miner_agent.keys import Signer
from miner_agent.receipts.maintenance import RETENTION_S, ReceiptMaintenance
from miner_agent.receipts.receipt_store import PAGE_TIME_S, ReceiptStore, page_of

MINER = Keypair.create_from_uri("//Miner")
VALIDATOR = Keypair.create_from_uri("//Validator")


def _store(tmp_path: Path) -> ReceiptStore:
    return ReceiptStore(open_db(tmp_path / "m.sqlite3"), tmp_path / "receipts", Signer(MINER))


def _receipt(store: ReceiptStore, job: str, when: datetime) -> None:
    payload = JobStartedReceiptPayload(job_uuid=job, miner_hotkey=MINER.ss58_address,
                                       validator_hotkey=VALIDATOR.ss58_address, timestamp=when,
                                       executor_class="always_on.test", is_organic=True, ttl=7)
    store.accept(payload, sign_blob(VALIDATOR, receipt_blob(payload)), VALIDATOR.ss58_address)


def test_finished_pages_are_archived_once_and_active_ones_are_not(tmp_path: Path) -> None:
    store = _store(tmp_path)
    _receipt(store, "00000000-0000-4000-8000-000000000001", datetime.now(UTC))
    now = time.time()
    current = page_of(now)
    old = store.pages_dir / f"{current - 3}.jsonl"
    old.write_bytes((store.pages_dir / f"{current}.jsonl").read_bytes())
    maintenance = ReceiptMaintenance(store.conn, store.pages_dir)
    assert maintenance.archive(now) == 1
    assert gzip.decompress((store.pages_dir / f"{current - 3}.jsonl.gz").read_bytes()) == old.read_bytes()
    assert not (store.pages_dir / f"{current}.jsonl.gz").exists()
    assert maintenance.archive(now) == 0  # already done


def test_old_receipts_pages_and_finished_jobs_are_evicted(tmp_path: Path) -> None:
    store = _store(tmp_path)
    now = time.time()
    _receipt(store, "00000000-0000-4000-8000-000000000001", datetime.now(UTC) - timedelta(seconds=RETENTION_S + 60))
    _receipt(store, "00000000-0000-4000-8000-000000000002", datetime.now(UTC))
    ancient = store.pages_dir / f"{page_of(now - RETENTION_S) - 1}.jsonl"
    ancient.write_text("x\n")
    jobs = JobStore(store.conn)
    for uuid, state in (("old-finished", JobState.FINISHED), ("old-running", JobState.RUNNING)):
        snapshot = JobSnapshot(job_uuid=uuid, validator_hotkey=VALIDATOR.ss58_address, executor_class="always_on.test",
                               executor_name="local", state=state, initial_json="{}", created_unix=now)
        jobs.save(snapshot, [V0AcceptJobRequest(job_uuid=uuid).model_dump_json()])
    store.conn.execute("UPDATE jobs SET updated_unix = ?", (now - RETENTION_S - 60,))
    receipts, pages, evicted_jobs = ReceiptMaintenance(store.conn, store.pages_dir).evict(now)
    assert (receipts, pages, evicted_jobs) == (1, 1, 1)
    assert not ancient.exists()
    assert store.count() == 1
    assert jobs.get("old-finished") is None and jobs.get("old-running") is not None  # never a live job
    assert jobs.sent_types("old-finished") == [] and jobs.sent_types("old-running") == ["V0AcceptJobRequest"]
    assert PAGE_TIME_S == 300


def test_a_failed_page_append_is_repaired_by_the_next_maintenance_run(tmp_path: Path) -> None:
    store = _store(tmp_path)
    page_path = store.pages_dir / f"{page_of(time.time())}.jsonl"
    page_path.mkdir()  # the rename over it fails: a real OSError, like a full disk would give
    _receipt(store, "00000000-0000-4000-8000-000000000003", datetime.now(UTC))
    assert store.count() == 1 and store.stale_pages == {page_of(time.time())}
    page_path.rmdir()
    maintenance = ReceiptMaintenance(store.conn, store.pages_dir, store)
    maintenance.run_once()
    assert "00000000-0000-4000-8000-000000000003" in page_path.read_text()
    assert store.stale_pages == set()


def test_pages_and_archives_are_private_even_under_a_lax_umask(tmp_path: Path) -> None:
    import os

    old = os.umask(0o022)
    try:
        store = _store(tmp_path)
        _receipt(store, "00000000-0000-4000-8000-000000000004", datetime.now(UTC) - timedelta(seconds=2 * PAGE_TIME_S))
        maintenance = ReceiptMaintenance(store.conn, store.pages_dir, store)
        maintenance.archive(time.time() + 3 * PAGE_TIME_S)  # its page is done: archived as .gz
        files = list(store.pages_dir.iterdir())
        assert any(p.suffix == ".gz" for p in files) and any(p.suffix == ".jsonl" for p in files), files
        assert {p.stat().st_mode & 0o777 for p in files} == {0o600}
    finally:
        os.umask(old)
