"""Keep the receipt pages and the database from growing forever (stock archive + eviction).

* Pages no longer written to (page <= current - N_ACTIVE_PAGES) get a `.jsonl.gz` sibling,
  which aiohttp serves to validators asking with `Accept-Encoding: gzip` (as nginx's
  gzip_static did for the stock miner).
* Receipts, their pages and finished jobs older than RETENTION_S are deleted: validators
  only pull the last few hours, and scoring cycles are shorter than two days.
"""

from __future__ import annotations

import asyncio
import gzip
import logging
import os
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from agent_common.private import private_open
from miner_agent.jobs.machine import JobState
from miner_agent.receipts.receipt_store import PAGE_TIME_S, ReceiptStore, page_of

log = logging.getLogger(__name__)

N_ACTIVE_PAGES = 2  # stock: the current page and the one before are still appended to
RETENTION_S = 2 * 24 * 3600  # stock RECEIPTS_RETENTION_PERIOD and JOBS_RETENTION_PERIOD: 2 days
MAINTENANCE_PERIOD_S = 60.0  # stock archive task period


@dataclass
class ReceiptMaintenance:
    conn: sqlite3.Connection
    pages_dir: Path
    store: ReceiptStore | None = None  # when given, pages whose append failed are rebuilt every run

    def archive(self, now: float) -> int:
        """gzip every finished page that has no archive yet; returns how many were written."""
        newest_done = page_of(now) - N_ACTIVE_PAGES
        written = 0
        for path in self.pages_dir.glob("*.jsonl"):
            if not path.stem.isdigit() or int(path.stem) > newest_done:
                continue
            target = path.with_name(path.name + ".gz")
            if target.exists() and target.stat().st_mtime >= path.stat().st_mtime:
                continue
            tmp = target.with_name(f".{target.name}.tmp")
            with open(path, "rb") as src, private_open(tmp) as raw, gzip.open(raw, "wb", compresslevel=9) as dst:
                dst.write(src.read())
            os.replace(tmp, target)
            written += 1
        return written

    def evict(self, now: float) -> tuple[int, int, int]:
        """Delete old receipts, pages and finished jobs; returns (receipts, pages, jobs)."""
        cutoff = now - RETENTION_S
        cutoff_page = page_of(cutoff)
        receipts = self.conn.execute("DELETE FROM receipts WHERE timestamp_unix < ?", (cutoff,)).rowcount
        pages = 0
        for path in [*self.pages_dir.glob("*.jsonl"), *self.pages_dir.glob("*.jsonl.gz")]:
            stem = path.name.split(".", 1)[0]
            if stem.isdigit() and int(stem) < cutoff_page:
                path.unlink(missing_ok=True)
                pages += 1
        done = (JobState.FINISHED.value, JobState.FAILED.value)
        self.conn.execute(
            "DELETE FROM job_messages WHERE job_uuid IN"
            " (SELECT job_uuid FROM jobs WHERE updated_unix < ? AND state IN (?, ?))",
            (cutoff, *done),
        )
        jobs = self.conn.execute(
            "DELETE FROM jobs WHERE updated_unix < ? AND state IN (?, ?)", (cutoff, *done)
        ).rowcount
        return receipts, pages, jobs

    def run_once(self, now: float | None = None) -> None:
        now = time.time() if now is None else now
        if self.store is not None:
            self.store.rebuild_pages(only_stale=True)
        archived = self.archive(now)
        receipts, pages, jobs = self.evict(now)
        # The WAL keeps old versions of rows (ended jobs' scrubbed secrets among them) until a
        # checkpoint; truncating it each period leaves them in neither file.
        self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        if archived or receipts or pages or jobs:
            log.info("receipts maintenance archived_pages=%d evicted_receipts=%d evicted_pages=%d evicted_jobs=%d",
                     archived, receipts, pages, jobs)

    async def run_forever(self) -> None:
        while True:
            try:
                self.run_once()  # on the loop: it shares the loop's SQLite connection, and is quick
            except Exception:  # a full disk or a locked DB must not stop the miner; retried next period
                log.exception("receipts maintenance failed; retrying in %d s", int(MAINTENANCE_PERIOD_S))
            await asyncio.sleep(MAINTENANCE_PERIOD_S)


__all__ = ["N_ACTIVE_PAGES", "PAGE_TIME_S", "RETENTION_S", "ReceiptMaintenance"]
