"""Jobs and the messages owed to validators, in SQLite, so a restart loses neither.

Every message for a validator is written here before it is sent and marked delivered
after the websocket took it; whatever was not delivered goes out when that validator
connects again.
"""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass

from miner_agent.jobs.machine import JobState


@dataclass(frozen=True)
class JobRow:
    job_uuid: str
    validator_hotkey: str
    executor_class: str
    executor_name: str
    state: JobState
    initial_json: str
    request_json: str | None
    last_executor_seq: int
    created_unix: float
    executor_endpoint: str | None = None


@dataclass
class JobStore:
    conn: sqlite3.Connection

    def create(self, job_uuid: str, validator: str, executor_class: str, executor_name: str, initial_json: str) -> None:
        now = time.time()
        self.conn.execute(
            "INSERT INTO jobs (job_uuid, validator_hotkey, executor_class, executor_name, state, initial_json,"
            " created_unix, updated_unix) VALUES (?,?,?,?,?,?,?,?)",
            (job_uuid, validator, executor_class, executor_name, JobState.SUBMITTED.value, initial_json, now, now),
        )

    def delete(self, job_uuid: str) -> None:
        self.conn.execute("DELETE FROM job_messages WHERE job_uuid=?", (job_uuid,))
        self.conn.execute("DELETE FROM jobs WHERE job_uuid=?", (job_uuid,))

    def exists(self, job_uuid: str) -> bool:
        return self.conn.execute("SELECT 1 FROM jobs WHERE job_uuid=?", (job_uuid,)).fetchone() is not None

    def set_state(self, job_uuid: str, state: JobState) -> None:
        self.conn.execute(
            "UPDATE jobs SET state=?, updated_unix=? WHERE job_uuid=?", (state.value, time.time(), job_uuid)
        )

    def set_endpoint(self, job_uuid: str, endpoint_json: str) -> None:
        self.conn.execute("UPDATE jobs SET executor_endpoint=? WHERE job_uuid=?", (endpoint_json, job_uuid))

    def set_request(self, job_uuid: str, request_json: str) -> None:
        self.conn.execute("UPDATE jobs SET request_json=? WHERE job_uuid=?", (request_json, job_uuid))

    def set_seq(self, job_uuid: str, seq: int) -> None:
        self.conn.execute("UPDATE jobs SET last_executor_seq=? WHERE job_uuid=?", (seq, job_uuid))

    def drained(self) -> set[str]:
        return {r[0] for r in self.conn.execute("SELECT name FROM drained_executors")}

    def set_drained(self, name: str, on: bool) -> None:
        if on:
            self.conn.execute("INSERT OR IGNORE INTO drained_executors (name) VALUES (?)", (name,))
        else:
            self.conn.execute("DELETE FROM drained_executors WHERE name=?", (name,))

    def unfinished(self) -> list[JobRow]:
        rows = self.conn.execute(
            "SELECT * FROM jobs WHERE state NOT IN (?, ?) ORDER BY created_unix",
            (JobState.FINISHED.value, JobState.FAILED.value),
        ).fetchall()
        return [_row(r) for r in rows]

    def get(self, job_uuid: str) -> JobRow | None:
        r = self.conn.execute("SELECT * FROM jobs WHERE job_uuid=?", (job_uuid,)).fetchone()
        return _row(r) if r else None

    # -- messages owed to validators -----------------------------------------------------

    def add_message(self, job_uuid: str, message_json: str) -> int:
        n = self.conn.execute(
            "SELECT COALESCE(MAX(n), 0) + 1 FROM job_messages WHERE job_uuid=?", (job_uuid,)
        ).fetchone()[0]
        self.conn.execute(
            "INSERT INTO job_messages (job_uuid, n, message_json) VALUES (?,?,?)", (job_uuid, n, message_json)
        )
        return n

    def mark_delivered(self, job_uuid: str, n: int) -> None:
        self.conn.execute("UPDATE job_messages SET delivered=1 WHERE job_uuid=? AND n=?", (job_uuid, n))

    def sent_types(self, job_uuid: str) -> list[str]:
        """message_type of every message recorded for the job, in order."""
        rows = self.conn.execute("SELECT message_json FROM job_messages WHERE job_uuid=? ORDER BY n", (job_uuid,))
        return [json.loads(r[0]).get("message_type", "") for r in rows]

    def undelivered(self, validator: str) -> list[tuple[str, int, str]]:
        return [
            (r[0], r[1], r[2])
            for r in self.conn.execute(
                "SELECT m.job_uuid, m.n, m.message_json FROM job_messages m JOIN jobs j USING (job_uuid)"
                " WHERE j.validator_hotkey=? AND m.delivered=0 ORDER BY j.created_unix, m.n",
                (validator,),
            ).fetchall()
        ]


def _row(r: sqlite3.Row) -> JobRow:
    return JobRow(
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
    )
