"""The recent organic JobStarted receipts in memory, by executor class and time: busy-decline
excuses (protocol.md §5.3) without a query per decline.

In a burst of offers to a busy class every decline asks for the receipts valid at its offer's
time, and SQLite answered each with an index walk and a row object per receipt (~8 % of an
offer's CPU on the loop, issue 14). This index answers the same question from sorted lists and
says when it cannot: it holds every row whose timestamp is after `complete_after` and nothing is
guessed below that, so a question reaching further back (right after a start, an offer with an
old timestamp, a row pushed out by `max_entries`) gets None and the caller asks SQLite. The
order is SQLite's for the same WHERE on its index (receipt_type, executor_class, timestamp_unix):
by timestamp, then by rowid. No I/O here.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, field
from typing import NamedTuple


class IndexedExcuse(NamedTuple):
    timestamp_unix: float
    rowid: int
    ttl_s: float
    job_uuid: str
    line: str  # the receipt's page line, as a decline embeds it


@dataclass
class ExcuseIndex:
    max_entries: int
    # Every row with timestamp_unix > complete_after is here; inf until `load` says from when.
    complete_after: float = math.inf
    _by_class: dict[str, list[IndexedExcuse]] = field(default_factory=dict)
    _count: int = 0

    def load(self, rows: list[tuple[str, IndexedExcuse]], complete_after: float) -> None:
        """Start from SQLite's rows of (class, excuse) with timestamp > `complete_after`: all of them."""
        self._by_class, self._count, self.complete_after = {}, 0, complete_after
        for executor_class, excuse in rows:
            self.add(executor_class, excuse)

    def add(self, executor_class: str, excuse: IndexedExcuse) -> None:
        """A row just committed (its rowid SQLite's), or one read back by `load`."""
        if excuse.timestamp_unix <= self.complete_after:
            return  # below what the index covers: SQLite answers for that time anyway
        bisect.insort(self._by_class.setdefault(executor_class, []), excuse)
        self._count += 1
        while self._count > self.max_entries:
            self._drop_oldest()

    def forget_before(self, timestamp_unix: float) -> None:
        """Drop the rows older than `timestamp_unix` (no decline near now can use them)."""
        for excuses in self._by_class.values():
            if excuses and excuses[0].timestamp_unix < timestamp_unix:
                n = bisect.bisect_left(excuses, (timestamp_unix,))
                del excuses[:n]
                self._count -= n
                # whatever class it was in, nothing older than this is kept any more
                self.complete_after = max(self.complete_after, timestamp_unix)

    def _drop_oldest(self) -> None:
        oldest = min((e for e in self._by_class.values() if e), key=lambda e: e[0])
        self.complete_after = max(self.complete_after, oldest.pop(0).timestamp_unix)
        self._count -= 1

    def lines(self, executor_class: str, oldest: float, at_unix: float, grace_s: float,
              exclude_job: str) -> list[str] | None:
        """The lines of the rows with oldest <= timestamp <= at_unix <= timestamp + ttl + grace,
        other than `exclude_job`'s, in SQLite's order; None if rows that old may be missing."""
        if oldest <= self.complete_after:
            return None
        excuses = self._by_class.get(executor_class, [])
        lines = []
        for i in range(bisect.bisect_left(excuses, (oldest,)), len(excuses)):
            e = excuses[i]
            if e.timestamp_unix > at_unix:
                break
            if e.timestamp_unix + e.ttl_s + grace_s >= at_unix and e.job_uuid != exclude_job:
                lines.append(e.line)
        return lines

    def __len__(self) -> int:
        return self._count
