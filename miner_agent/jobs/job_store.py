"""Jobs and the messages owed to validators, in SQLite, so a restart loses neither.

A job is written as one snapshot (`JobSnapshot`: who, where, what the validator sent, and the
machine's state, progress and deadline) together with the messages that step produced, in one
transaction: after a crash the row and the messages owed agree, and `restore()` reads the
machine back instead of rebuilding it. Every message for a validator is written here before it
is sent and marked delivered after the websocket took it; whatever was not delivered goes out
when that validator connects again.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace

from horde_protocol.messages import parse_miner_to_validator
from miner_agent.jobs.machine import JobState


@dataclass(frozen=True)
class JobSnapshot:
    """Everything a restarted miner needs to carry on with a job, as of its last step."""

    job_uuid: str
    validator_hotkey: str
    executor_class: str
    executor_name: str
    state: JobState
    initial_json: str
    created_unix: float
    request_json: str | None = None
    last_executor_seq: int = 0
    executor_endpoint: str | None = None  # JSON of a manager-started executor's endpoint
    progress: int = 0  # highest Progress step forwarded to the validator
    deadline_unix: float = 0.0  # the machine's watchdog deadline; 0 only in rows from schema 1


JobRow = JobSnapshot  # what a read returns is what a write took


@dataclass
class JobStore:
    conn: sqlite3.Connection

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        """BEGIN IMMEDIATE .. COMMIT, or ROLLBACK on any error (the connection is in autocommit)."""
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            if self.conn.in_transaction:  # SQLite ends it itself on some errors (a full disk)
                self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")

    def save(self, snapshot: JobSnapshot, messages: Sequence[str] = ()) -> list[int]:
        """Write the job's snapshot and append `messages` (owed to its validator) atomically;
        returns the numbers of the appended messages, for `mark_delivered`."""
        s = snapshot
        with self._transaction():
            self.conn.execute(
                "INSERT INTO jobs (job_uuid, validator_hotkey, executor_class, executor_name, executor_endpoint, state,"
                " initial_json, request_json, last_executor_seq, progress, deadline_unix, created_unix, updated_unix)"
                " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)"
                " ON CONFLICT(job_uuid) DO UPDATE SET executor_name=excluded.executor_name,"
                " executor_endpoint=excluded.executor_endpoint, state=excluded.state, initial_json=excluded.initial_json,"
                " request_json=excluded.request_json, last_executor_seq=excluded.last_executor_seq,"
                " progress=excluded.progress, deadline_unix=excluded.deadline_unix, updated_unix=excluded.updated_unix",
                (s.job_uuid, s.validator_hotkey, s.executor_class, s.executor_name, s.executor_endpoint, s.state.value,
                 s.initial_json, s.request_json, s.last_executor_seq, s.progress, s.deadline_unix, s.created_unix,
                 time.time()),
            )
            return [self._append(s.job_uuid, text) for text in messages]

    def delete(self, job_uuid: str) -> None:
        with self._transaction():
            self.conn.execute("DELETE FROM job_messages WHERE job_uuid=?", (job_uuid,))
            self.conn.execute("DELETE FROM jobs WHERE job_uuid=?", (job_uuid,))

    def exists(self, job_uuid: str) -> bool:
        return self.conn.execute("SELECT 1 FROM jobs WHERE job_uuid=?", (job_uuid,)).fetchone() is not None

    def drained(self) -> set[str]:
        return {r[0] for r in self.conn.execute("SELECT name FROM drained_executors")}

    def set_drained(self, name: str, on: bool) -> None:
        if on:
            self.conn.execute("INSERT OR IGNORE INTO drained_executors (name) VALUES (?)", (name,))
        else:
            self.conn.execute("DELETE FROM drained_executors WHERE name=?", (name,))

    def unfinished(self) -> list[JobSnapshot]:
        rows = self.conn.execute(
            "SELECT * FROM jobs WHERE state NOT IN (?, ?) ORDER BY created_unix",
            (JobState.FINISHED.value, JobState.FAILED.value),
        ).fetchall()
        return [self._upgraded(_row(r)) for r in rows]

    def get(self, job_uuid: str) -> JobSnapshot | None:
        r = self.conn.execute("SELECT * FROM jobs WHERE job_uuid=?", (job_uuid,)).fetchone()
        return _row(r) if r else None

    # -- messages owed to validators -----------------------------------------------------

    def _append(self, job_uuid: str, message_json: str) -> int:
        n = self.conn.execute(
            "SELECT COALESCE(MAX(n), 0) + 1 FROM job_messages WHERE job_uuid=?", (job_uuid,)
        ).fetchone()[0]
        self.conn.execute(
            "INSERT INTO job_messages (job_uuid, n, message_json) VALUES (?,?,?)", (job_uuid, n, message_json)
        )
        return int(n)

    def mark_delivered(self, job_uuid: str, n: int) -> None:
        self.conn.execute("UPDATE job_messages SET delivered=1 WHERE job_uuid=? AND n=?", (job_uuid, n))

    def sent_types(self, job_uuid: str) -> list[str]:
        """message_type of every message recorded for the job, in order."""
        return [parse_miner_to_validator(text).kind() for text in self._messages(job_uuid)]

    def _messages(self, job_uuid: str) -> list[str]:
        rows = self.conn.execute("SELECT message_json FROM job_messages WHERE job_uuid=? ORDER BY n", (job_uuid,))
        return [r[0] for r in rows]

    def undelivered(self, validator: str) -> list[tuple[str, int, str]]:
        return [
            (r[0], r[1], r[2])
            for r in self.conn.execute(
                "SELECT m.job_uuid, m.n, m.message_json FROM job_messages m JOIN jobs j USING (job_uuid)"
                " WHERE j.validator_hotkey=? AND m.delivered=0 ORDER BY j.created_unix, m.n",
                (validator,),
            ).fetchall()
        ]

    def _upgraded(self, row: JobSnapshot) -> JobSnapshot:
        """A row written by schema 1 kept no progress: read it off the messages already recorded, so
        a replayed event is not forwarded twice. (Its deadline, 0, is left for the service to bound.)"""
        if row.deadline_unix or row.progress:
            return row
        steps = [parse_miner_to_validator(text).progress or 0 for text in self._messages(row.job_uuid)]
        return replace(row, progress=max(steps, default=0))


def _row(r: sqlite3.Row) -> JobSnapshot:
    return JobSnapshot(
        job_uuid=r["job_uuid"],
        validator_hotkey=r["validator_hotkey"],
        executor_class=r["executor_class"],
        executor_name=r["executor_name"],
        state=JobState(r["state"]),
        initial_json=r["initial_json"],
        request_json=r["request_json"],
        last_executor_seq=r["last_executor_seq"],
        created_unix=r["created_unix"],
        executor_endpoint=r["executor_endpoint"],
        progress=r["progress"],
        deadline_unix=r["deadline_unix"],
    )
