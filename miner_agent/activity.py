"""When validators last talked to us: the facts behind "why am I not earning?".

A validator that never authenticates on our websocket never sends us jobs, and one that never
fetches our receipt pages never credits the jobs we ran. Both are visible only from this side,
so the miner records them: the last authenticated connection per validator hotkey, and the last
receipt page served. `miner-agent doctor` reads them through the admin socket, and /metrics
exports them as timestamps for the alert rules (packaging/prometheus/).

The times live in the miner's SQLite database (tables `validator_activity` and `activity_marks`,
miner_agent/db.py), so "this validator never connected" survives a restart. A write happens when
a time first appears or has moved PERSIST_EVERY_S past the stored one: at most one small write a
minute per validator, never one per page request. What a crash can lose is that minute.
Recording is a side note to the validator's session: a failed write (a full disk) is logged once
and retried on the next event, and never fails the handshake or the page that caused it.
"""

from __future__ import annotations

import logging
import sqlite3

log = logging.getLogger(__name__)

PERSIST_EVERY_S = 60.0  # the stored time lags the live one by at most this; an alert works in hours
MAX_VALIDATORS_TRACKED = 1024  # a subnet has at most 256 uids; one-time self-test hotkeys must not grow the table
PAGES_MARK = "receipt_pages_fetched"


class Activity:
    """The last authenticated connection per validator and the last receipt page fetch (unix seconds).

    `conn` is the miner's database; without one (a bare MinerContext in a test) nothing is stored.
    Calls come from the event loop only, like every other write to that database.
    """

    def __init__(self, conn: sqlite3.Connection | None = None, persist_every_s: float = PERSIST_EVERY_S) -> None:
        self._conn = conn
        self._persist_every_s = persist_every_s
        self._connected: dict[str, float] = {}
        self._stored_connected: dict[str, float] = {}
        self._page_fetch: float | None = None
        self._stored_page_fetch: float | None = None
        self.connections = 0  # authenticated connections since start (a counter for /metrics)
        self.page_fetches = 0  # receipt pages served since start
        self._write_failing = False
        if conn is not None:
            for row in conn.execute("SELECT hotkey, last_connected_unix FROM validator_activity"):
                self._connected[row[0]] = self._stored_connected[row[0]] = float(row[1])
            mark = conn.execute("SELECT at_unix FROM activity_marks WHERE name = ?", (PAGES_MARK,)).fetchone()
            if mark is not None:
                self._page_fetch = self._stored_page_fetch = float(mark[0])

    def validator_connected(self, hotkey: str, now: float) -> None:
        """A validator authenticated on the websocket at `now`."""
        self.connections += 1
        self._connected[hotkey] = max(now, self._connected.get(hotkey, now))
        stored = self._stored_connected.get(hotkey)
        if stored is not None and now - stored < self._persist_every_s:
            return
        if len(self._connected) > MAX_VALIDATORS_TRACKED:
            self._forget_oldest()
        if self._write(
                "INSERT INTO validator_activity (hotkey, last_connected_unix) VALUES (?, ?) "
                "ON CONFLICT(hotkey) DO UPDATE SET last_connected_unix = excluded.last_connected_unix",
                (hotkey, now)):
            self._stored_connected[hotkey] = now

    def pages_fetched(self, now: float) -> None:
        """A receipt page was served at `now` (validators fetch pages only from miners they credit)."""
        self.page_fetches += 1
        self._page_fetch = max(now, self._page_fetch or now)
        stored = self._stored_page_fetch
        if stored is not None and now - stored < self._persist_every_s:
            return
        if self._write(
                "INSERT INTO activity_marks (name, at_unix) VALUES (?, ?) "
                "ON CONFLICT(name) DO UPDATE SET at_unix = excluded.at_unix",
                (PAGES_MARK, now)):
            self._stored_page_fetch = now

    def last_connected(self) -> dict[str, float]:
        """hotkey -> unix seconds of its last authenticated connection; a hotkey absent never connected."""
        return dict(self._connected)

    def last_page_fetch(self) -> float | None:
        """Unix seconds of the last receipt page served, None if no page was ever fetched."""
        return self._page_fetch

    def _forget_oldest(self) -> None:
        oldest = min(self._connected, key=self._connected.__getitem__)
        del self._connected[oldest]
        self._stored_connected.pop(oldest, None)
        self._write("DELETE FROM validator_activity WHERE hotkey = ?", (oldest,))

    def _write(self, sql: str, params: tuple[str | float, ...]) -> bool:
        """Run one statement; True when it is stored (or there is no database to store it in)."""
        if self._conn is None:
            return True
        try:
            self._conn.execute(sql, params)
        except sqlite3.Error as exc:
            if not self._write_failing:
                log.warning("validator activity not stored error=%r; kept in memory, retried on the next event", exc)
            self._write_failing = True
            return False
        self._write_failing = False
        return True
