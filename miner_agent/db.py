"""The miner's SQLite database: jobs, their events, receipts. WAL, one writer (the event loop).

Writes are small and few per job, so they run inline on the loop; WAL with
synchronous=NORMAL keeps each under a millisecond while still surviving a killed
process (an OS crash may lose the last transaction, never corrupt the file).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from agent_common.private import make_private, private_open

SCHEMA_VERSION = 2

# Upgrades, by the version they lead to. 2: the job snapshot keeps the machine's progress and
# deadline, so a restart reads them back instead of guessing.
_MIGRATIONS: dict[int, tuple[str, ...]] = {
    2: (
        "ALTER TABLE jobs ADD COLUMN progress INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE jobs ADD COLUMN deadline_unix REAL NOT NULL DEFAULT 0",
    ),
}

_SCHEMA = """
CREATE TABLE IF NOT EXISTS receipts (
    receipt_type TEXT NOT NULL,
    job_uuid TEXT NOT NULL,
    validator_hotkey TEXT NOT NULL,
    payload_json TEXT NOT NULL,
    validator_signature TEXT NOT NULL,
    miner_signature TEXT NOT NULL,
    timestamp_unix REAL NOT NULL,
    executor_class TEXT,
    is_organic INTEGER,
    ttl_s INTEGER,
    page INTEGER NOT NULL,
    PRIMARY KEY (receipt_type, job_uuid)
);
CREATE INDEX IF NOT EXISTS receipts_page ON receipts(page);
CREATE INDEX IF NOT EXISTS receipts_started ON receipts(receipt_type, executor_class, timestamp_unix);

CREATE TABLE IF NOT EXISTS jobs (
    job_uuid TEXT PRIMARY KEY,
    validator_hotkey TEXT NOT NULL,
    executor_class TEXT NOT NULL,
    executor_name TEXT NOT NULL,
    executor_endpoint TEXT,  -- JSON of a manager-started executor's endpoint; NULL for configured ones
    state TEXT NOT NULL,
    initial_json TEXT NOT NULL,
    request_json TEXT,
    last_executor_seq INTEGER NOT NULL DEFAULT 0,
    progress INTEGER NOT NULL DEFAULT 0,  -- highest Progress step forwarded to the validator
    deadline_unix REAL NOT NULL DEFAULT 0,  -- the job machine's watchdog deadline
    created_unix REAL NOT NULL,
    updated_unix REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs(state);

CREATE TABLE IF NOT EXISTS drained_executors (name TEXT PRIMARY KEY);

-- Last authenticated connection per validator and the last receipt page served (miner_agent/activity.py).
-- New tables need no migration: this script runs on every open (CREATE ... IF NOT EXISTS).
CREATE TABLE IF NOT EXISTS validator_activity (hotkey TEXT PRIMARY KEY, last_connected_unix REAL NOT NULL);
CREATE TABLE IF NOT EXISTS activity_marks (name TEXT PRIMARY KEY, at_unix REAL NOT NULL);

CREATE TABLE IF NOT EXISTS job_messages (
    job_uuid TEXT NOT NULL,
    n INTEGER NOT NULL,
    message_json TEXT NOT NULL,
    delivered INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (job_uuid, n)
);
"""


def open_db(path: Path) -> sqlite3.Connection:
    """Open (creating if needed) the database at `path` with the schema applied."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # Jobs' env, presigned URLs and receipts live here: 0600 before SQLite creates it (its -wal and
    # -shm files copy the database file's mode), and tightened if an older version left it 0644.
    if not path.exists():
        private_open(path).close()
    for existing in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        make_private(existing)
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA busy_timeout=5000")
    # Ended jobs' env and presigned URLs are scrubbed by an UPDATE: zero the old bytes, not just unlink them.
    conn.execute("PRAGMA secure_delete=ON")
    found = conn.execute("PRAGMA user_version").fetchone()[0]
    fresh = conn.execute("SELECT 1 FROM sqlite_master WHERE name='jobs'").fetchone() is None
    conn.executescript(_SCHEMA)
    if not fresh:
        for version in range(max(found, 1) + 1, SCHEMA_VERSION + 1):
            for statement in _MIGRATIONS[version]:
                conn.execute(statement)
    conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
    return conn
