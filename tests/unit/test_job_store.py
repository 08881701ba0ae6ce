"""The job snapshot in SQLite: one transaction per step, read back as written, and rows from the
previous schema upgraded in place (a miner upgraded mid-job must not forward a step twice)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from horde_protocol.messages import V0AcceptJobRequest, V0ExecutorReadyRequest
from miner_agent.db import SCHEMA_VERSION, open_db
from miner_agent.jobs.job_store import JobSnapshot, JobStore
from miner_agent.jobs.machine import JobState

UUID = "00000000-0000-4000-8000-00000000000a"

SCHEMA_1_JOBS = """
CREATE TABLE jobs (job_uuid TEXT PRIMARY KEY, validator_hotkey TEXT NOT NULL, executor_class TEXT NOT NULL,
    executor_name TEXT NOT NULL, executor_endpoint TEXT, state TEXT NOT NULL, initial_json TEXT NOT NULL,
    request_json TEXT, last_executor_seq INTEGER NOT NULL DEFAULT 0, created_unix REAL NOT NULL,
    updated_unix REAL NOT NULL);
CREATE TABLE job_messages (job_uuid TEXT NOT NULL, n INTEGER NOT NULL, message_json TEXT NOT NULL,
    delivered INTEGER NOT NULL DEFAULT 0, PRIMARY KEY (job_uuid, n));
PRAGMA user_version=1;
"""


def _snapshot(**changes: object) -> JobSnapshot:
    base = dict(job_uuid=UUID, validator_hotkey="5Validator", executor_class="always_on.test", executor_name="local",
                state=JobState.SUBMITTED, initial_json="{}", created_unix=1000.0)
    base.update(changes)
    return JobSnapshot(**base)  # type: ignore[arg-type]


def test_a_step_is_read_back_as_it_was_saved(tmp_path: Path) -> None:
    store = JobStore(open_db(tmp_path / "miner.db"))
    accept = V0AcceptJobRequest(job_uuid=UUID).model_dump_json()
    assert store.save(_snapshot(), [accept]) == [1]
    ready = V0ExecutorReadyRequest(job_uuid=UUID).model_dump_json()
    step = _snapshot(state=JobState.WAITING_FOR_PAYLOAD, progress=1, deadline_unix=1234.5, last_executor_seq=1)
    assert store.save(step, [ready]) == [2]
    store.conn.close()

    reopened = JobStore(open_db(tmp_path / "miner.db"))
    assert reopened.unfinished() == [step]
    assert reopened.sent_types(UUID) == ["V0AcceptJobRequest", "V0ExecutorReadyRequest"]
    assert [n for _, n, _ in reopened.undelivered("5Validator")] == [1, 2]


def test_a_failed_step_writes_nothing(tmp_path: Path) -> None:
    """The snapshot and the messages it owes are one transaction: a message that cannot be stored
    takes the state change with it, so a restart never sees a state without its message."""
    store = JobStore(open_db(tmp_path / "miner.db"))
    store.save(_snapshot())
    store.conn.execute("CREATE TRIGGER full_disk BEFORE INSERT ON job_messages BEGIN SELECT RAISE(ABORT, 'disk full'); END")
    with pytest.raises(sqlite3.IntegrityError, match="disk full"):
        store.save(_snapshot(state=JobState.FAILED, last_executor_seq=3), ['{"message_type": "V0HordeFailedRequest"}'])
    row = store.get(UUID)
    assert row is not None and row.state is JobState.SUBMITTED and row.last_executor_seq == 0
    assert store.sent_types(UUID) == []


def test_a_schema_1_row_is_upgraded_with_its_progress_from_the_messages_sent(tmp_path: Path) -> None:
    path = tmp_path / "miner.db"
    old = sqlite3.connect(path)
    old.executescript(SCHEMA_1_JOBS)
    old.execute("INSERT INTO jobs VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                (UUID, "5Validator", "always_on.test", "local", None, "waiting_for_payload", "{}", None, 2, 1000.0, 1000.0))
    for n, message in enumerate([V0AcceptJobRequest(job_uuid=UUID), V0ExecutorReadyRequest(job_uuid=UUID)], 1):
        old.execute("INSERT INTO job_messages (job_uuid, n, message_json) VALUES (?,?,?)", (UUID, n, message.model_dump_json()))
    old.commit()
    old.close()

    conn = open_db(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    (row,) = JobStore(conn).unfinished()
    assert (row.state, row.last_executor_seq, row.progress, row.deadline_unix) == (JobState.WAITING_FOR_PAYLOAD, 2, 1, 0.0)


def test_the_database_is_private_even_under_a_lax_umask(tmp_path: Path) -> None:
    """It holds jobs' env, presigned URLs and receipts: 0600, and an old 0644 file is tightened."""
    import os

    old = os.umask(0o022)
    try:
        conn = open_db(tmp_path / "miner.db")
        JobStore(conn).save(_snapshot())
        modes = {p.name: p.stat().st_mode & 0o777 for p in tmp_path.iterdir()}
        assert modes and set(modes.values()) == {0o600}, modes
        conn.close()
        (tmp_path / "legacy.db").touch(mode=0o644)
        open_db(tmp_path / "legacy.db").close()
        assert (tmp_path / "legacy.db").stat().st_mode & 0o777 == 0o600
    finally:
        os.umask(old)
