"""Receipts: verify the validator's signature, countersign, keep in SQLite, publish in pages.

Every receipt is kept twice on purpose. The SQLite row is the record (insert-ignore per
receipt type and job, as validators store them); the page file
`<receipts_dir>/<page>.jsonl` is what validators pull over HTTP, one `Receipt` JSON per
line, page = floor(miner clock / 300 s) at write time. A page is rewritten by
copy-append-rename so a reader never sees half a line, and `rebuild_pages` re-derives
any page whose file lost lines (a crash between the commit and the rename) from SQLite.
The file writes themselves, grouped when offers come in bursts, are `PageWriter`'s.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path

from horde_protocol.receipts import JobStartedReceiptPayload, Receipt, ReceiptPayload, receipt_blob
from miner_agent.keys import Signer, verify
from miner_agent.receipts.excuse_index import ExcuseIndex, IndexedExcuse
from miner_agent.receipts.page_writer import PageWriter

log = logging.getLogger(__name__)

PAGE_TIME_S = 300  # stock PAGE_TIME: one page per 5 minutes of the miner's clock
EXCUSE_GRACE_S = 0  # validators add their own 2 s; we hand over what is valid at the offer's timestamp
# Organic JobStarted receipts kept in memory with their page lines (excuse_index.py): every busy
# decline in a burst hands over most of the same receipts, and reading them from SQLite per decline
# grew as n². At ~700 bytes a line this is at most ~3 MiB; a question the index cannot answer goes
# to SQLite, as before.
EXCUSE_LINES_KEPT = 4096
# The index starts with the rows this much older than the longest ttl allows a decline to use now:
# an offer whose receipt is stamped a little in the past (a validator's clock behind ours) is
# still answered from memory.
EXCUSE_INDEX_MARGIN_S = 60.0


def page_of(unix_time: float) -> int:
    return int(unix_time // PAGE_TIME_S)


def _enum_text(value: object) -> str:
    return str(getattr(value, "value", value))


def _row_to_receipt(row: sqlite3.Row) -> Receipt:
    payload_json, validator_signature, miner_signature = row[0], row[1], row[2]
    return Receipt.model_validate(
        {"payload": json.loads(payload_json), "validator_signature": validator_signature, "miner_signature": miner_signature}
    )


# Organic JobStarted receipts of a class valid at a time (stock busy-decline excuses), parameters from
# `_excuses_args`. `timestamp_unix >= ?` (the time less the longest ttl stored) changes no result, as
# no row older than that is still valid, but it bounds the index range SQLite walks: without it every
# decline read every JobStarted receipt of the class ever kept, a cost that grew with the history.
_EXCUSES_WHERE = (
    " WHERE receipt_type='JobStartedReceipt' AND executor_class=? AND is_organic=1"
    " AND job_uuid != ? AND timestamp_unix >= ? AND timestamp_unix <= ? AND timestamp_unix + ttl_s + ? >= ?"
    " ORDER BY timestamp_unix, rowid"  # the index's own order, which ExcuseIndex keeps too
)


class ReceiptRejected(Exception):
    """Why a receipt was not stored; validators get no reply either way (stock behaviour)."""


@dataclass
class ReceiptStore:
    conn: sqlite3.Connection
    pages_dir: Path
    signer: Signer
    # Pages whose append failed after the row committed; repaired by the next rebuild_pages.
    stale_pages: set[int] = field(default_factory=set)
    writer: PageWriter = field(init=False)
    # The recent organic JobStarted receipts with their lines (see EXCUSE_LINES_KEPT); loaded on first use.
    _excuses: ExcuseIndex = field(default_factory=lambda: ExcuseIndex(EXCUSE_LINES_KEPT), init=False)
    _excuses_loaded: bool = field(default=False, init=False)
    # The longest ttl_s of a stored organic JobStarted receipt (None: not read from SQLite yet); it only
    # grows, so pruning old receipts leaves it an upper bound, which is all `_excuses_args` needs.
    _longest_ttl_s: float | None = field(default=None, init=False)
    # Rows waiting for this turn of the loop's transaction, each with the future its offer awaits.
    _queued_rows: list[tuple[Receipt, asyncio.Future[tuple[int, str] | None]]] = field(
        default_factory=list, init=False)

    def __post_init__(self) -> None:
        self.pages_dir.mkdir(parents=True, exist_ok=True)
        self.writer = PageWriter(self.pages_dir)

    def accept(self, payload: ReceiptPayload, validator_signature: str, validator_hotkey: str) -> Receipt:
        """Check hotkeys and the validator's signature, countersign, store and publish.

        Raises ReceiptRejected (nothing stored) when any check fails. Storing the same
        receipt twice is harmless: the first one stays. The page is durable on return.
        """
        receipt = self._countersigned(payload, validator_signature, validator_hotkey)
        stored = self._insert(receipt)
        if stored is not None:
            page, line = stored
            try:
                self.writer.append_now(page, [line])
            except OSError as exc:
                self._append_failed(page, receipt, exc)
        return receipt

    async def accept_durable(self, payload: ReceiptPayload, validator_signature: str, validator_hotkey: str) -> Receipt:
        """`accept` for the event loop: returns once the receipt's page is durable, as `accept`
        does, but grouped with the other offers of a burst: the rows that arrive in one turn of the
        loop share one transaction (`_insert_soon`), and the page writes run off the loop."""
        receipt = self._countersigned(payload, validator_signature, validator_hotkey)
        stored = await self._insert_soon(receipt)
        if stored is not None:
            page, line = stored
            error = await self.writer.append(page, line)
            if error is not None:
                self._append_failed(page, receipt, error)
        return receipt

    def _insert_soon(self, receipt: Receipt) -> asyncio.Future[tuple[int, str] | None]:
        """`_insert`'s answer, once the rows queued in this turn of the loop are committed together
        (one transaction for a burst's rows: ~half the cost of a commit each)."""
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[tuple[int, str] | None] = loop.create_future()
        self._queued_rows.append((receipt, answer))
        if len(self._queued_rows) == 1:
            loop.call_soon(self._insert_queued)
        return answer

    def _insert_queued(self) -> None:
        batch, self._queued_rows = self._queued_rows, []
        try:
            stored = self._insert_all([receipt for receipt, _ in batch])
        except BaseException as exc:  # a full disk: every offer of the batch declines, nothing stored
            for _, answer in batch:
                if not answer.done():
                    answer.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        for (receipt, answer), row in zip(batch, stored, strict=True):
            if not answer.done():
                answer.set_result(row)
            elif row is not None:  # its offer was cancelled: the row is in, its line reaches the page by repair
                self.stale_pages.add(row[0])

    def _countersigned(self, payload: ReceiptPayload, validator_signature: str, validator_hotkey: str) -> Receipt:
        if payload.miner_hotkey != self.signer.hotkey:
            raise ReceiptRejected(f"miner_hotkey {payload.miner_hotkey} is not ours ({self.signer.hotkey})")
        if payload.validator_hotkey != validator_hotkey:
            raise ReceiptRejected(
                f"validator_hotkey {payload.validator_hotkey} is not the authenticated {validator_hotkey}"
            )
        blob = receipt_blob(payload)
        if not verify(validator_hotkey, blob, validator_signature):
            raise ReceiptRejected("validator signature does not verify")
        return Receipt(payload=payload, validator_signature=validator_signature, miner_signature=self.signer.sign(blob))

    def _insert(self, receipt: Receipt) -> tuple[int, str] | None:
        """Insert the row (committed on return); (page, line) to publish, None if it was there."""
        return self._insert_all([receipt])[0]

    def _insert_all(self, receipts: list[Receipt]) -> list[tuple[int, str] | None]:
        """Insert the rows in one transaction (committed on return, or none of them); for each,
        (page, line) to publish, or None if it was there."""
        page = page_of(time.time())
        inserted: list[int | None] = []  # the new row's rowid, None if it was there
        alone = len(receipts) == 1  # one statement is its own transaction (autocommit): no BEGIN/COMMIT
        if not alone:
            self.conn.execute("BEGIN IMMEDIATE")
        try:
            for receipt in receipts:
                p = receipt.payload
                started = isinstance(p, JobStartedReceiptPayload)
                cur = self.conn.execute(
                    "INSERT OR IGNORE INTO receipts (receipt_type, job_uuid, validator_hotkey, payload_json,"
                    " validator_signature, miner_signature, timestamp_unix, executor_class, is_organic, ttl_s, page)"
                    " VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                    (
                        _enum_text(p.receipt_type),
                        str(p.job_uuid),
                        p.validator_hotkey,
                        p.model_dump_json(),
                        receipt.validator_signature,
                        receipt.miner_signature,
                        p.timestamp.timestamp(),
                        _enum_text(p.executor_class) if started else None,
                        int(p.is_organic) if started else None,
                        getattr(p, "ttl", None),
                        page,
                    ),
                )
                inserted.append(cur.lastrowid if cur.rowcount else None)
        except BaseException:
            if self.conn.in_transaction:  # SQLite ends it itself on some errors (a full disk)
                self.conn.execute("ROLLBACK")
            raise
        if not alone:
            self.conn.execute("COMMIT")
        return [None if rowid is None else self._stored(receipt, page, rowid)
                for receipt, rowid in zip(receipts, inserted, strict=True)]

    def _stored(self, receipt: Receipt, page: int, rowid: int) -> tuple[int, str]:
        """What a committed new row leaves in memory and in the log; its (page, line)."""
        p = receipt.payload
        line = receipt.model_dump_json()
        if isinstance(p, JobStartedReceiptPayload) and p.is_organic:
            if self._longest_ttl_s is not None and p.ttl > self._longest_ttl_s:
                self._longest_ttl_s = p.ttl
                self._excuses_loaded = False  # declines now reach further back: read the index again
            if self._excuses_loaded:
                self._excuses.add(_enum_text(p.executor_class),
                                  IndexedExcuse(p.timestamp.timestamp(), rowid, p.ttl, str(p.job_uuid), line))
                self._excuses.forget_before(self._index_start(time.time()))
        # A JobStarted receipt comes with an offer, whose "job accepted" / "job declined" line follows
        # at once: at INFO it doubled the lines of a burst (200 for 100 offers, ~5 ms of its p99).
        level = logging.DEBUG if isinstance(p, JobStartedReceiptPayload) else logging.INFO
        log.log(level, "receipt stored type=%s job=%s validator=%s page=%d",
                _enum_text(p.receipt_type), p.job_uuid, p.validator_hotkey, page)
        return page, line

    def _append_failed(self, page: int, receipt: Receipt, exc: OSError) -> None:
        # The row is committed; the page is re-derived from it once the disk allows.
        self.stale_pages.add(page)
        log.error("receipt page write failed page=%d job=%s error=%r; it is rebuilt from the database "
                  "when space returns", page, receipt.payload.job_uuid, exc.strerror or str(exc))

    def _longest_ttl(self) -> float:
        if self._longest_ttl_s is None:
            row = self.conn.execute("SELECT MAX(ttl_s) FROM receipts WHERE receipt_type='JobStartedReceipt'"
                                    " AND is_organic=1").fetchone()
            self._longest_ttl_s = float(row[0] or 0)
        return self._longest_ttl_s

    def _index_start(self, now: float) -> float:
        """The oldest timestamp the index keeps rows for."""
        return now - self._longest_ttl() - EXCUSE_GRACE_S - EXCUSE_INDEX_MARGIN_S

    def _load_excuses(self) -> None:
        """Fill the index from SQLite: every organic JobStarted row since `_index_start`, or the
        newest EXCUSE_LINES_KEPT of them (then it covers only what is newer than the last one read)."""
        since = self._index_start(time.time())
        rows = self.conn.execute(
            "SELECT executor_class, timestamp_unix, rowid, ttl_s, job_uuid, payload_json, validator_signature,"
            " miner_signature FROM receipts WHERE receipt_type='JobStartedReceipt' AND is_organic=1"
            " AND timestamp_unix > ? ORDER BY timestamp_unix DESC, rowid DESC LIMIT ?",
            (since, EXCUSE_LINES_KEPT),
        ).fetchall()
        complete_after = rows[-1][1] if len(rows) == EXCUSE_LINES_KEPT else since
        self._excuses.load([(r[0], IndexedExcuse(r[1], r[2], r[3], r[4], _row_to_receipt(r[5:]).model_dump_json()))
                            for r in rows], complete_after)
        self._excuses_loaded = True

    def _oldest_excuse(self, at_unix: float) -> float:
        """No receipt stamped before this can still be valid at `at_unix`."""
        return at_unix - self._longest_ttl() - EXCUSE_GRACE_S

    def _excuses_args(self, executor_class: str, at_unix: float, exclude_job: str) -> tuple[object, ...]:
        return (executor_class, exclude_job, self._oldest_excuse(at_unix), at_unix, EXCUSE_GRACE_S, at_unix)

    def _page_path(self, page: int) -> Path:
        return self.writer.path(page)

    def _page_lines(self, page: int) -> list[str]:
        rows = self.conn.execute(
            "SELECT payload_json, validator_signature, miner_signature FROM receipts WHERE page=? ORDER BY rowid",
            (page,),
        ).fetchall()
        return [_row_to_receipt(r).model_dump_json() for r in rows]

    def rebuild_pages(self, only_stale: bool = False) -> int:
        """Rewrite page files whose line count differs from SQLite; returns how many.

        At start every page is checked (a crash may have hit any append); afterwards only the
        pages whose append is known to have failed, so the periodic repair reads no files."""
        if only_stale and not self.stale_pages:
            return 0
        query = "SELECT page, COUNT(*) FROM receipts GROUP BY page"
        rows = self.conn.execute(query).fetchall()
        if only_stale:
            rows = [(page, count) for page, count in rows if page in self.stale_pages]
        self.stale_pages.clear()
        fixed = 0
        for (page, count) in rows:
            if self.writer.busy(page):  # its queued lines are about to land; look again next time
                self.stale_pages.add(page)
                continue
            path = self._page_path(page)
            have = path.read_bytes().count(b"\n") if path.exists() else 0
            if have != count:
                self.writer.replace_now(page, self._page_lines(page))
                log.warning("receipt page rebuilt page=%d lines_before=%d lines_now=%d", page, have, count)
                fixed += 1
        return fixed

    def excuses(self, executor_class: str, at_unix: float, exclude_job: str) -> list[Receipt]:
        """Organic JobStarted receipts of this class valid at `at_unix` (stock busy-decline excuses)."""
        rows = self.conn.execute(
            "SELECT payload_json, validator_signature, miner_signature FROM receipts" + _EXCUSES_WHERE,
            self._excuses_args(executor_class, at_unix, exclude_job),
        ).fetchall()
        return [_row_to_receipt(r) for r in rows]

    def excuse_lines(self, executor_class: str, at_unix: float, exclude_job: str) -> list[str]:
        """`excuses` as their page lines (each `Receipt.model_dump_json()`), in the same order,
        from memory when the index covers the time: what a busy decline embeds without a query
        and without parsing every receipt again."""
        if not self._excuses_loaded:
            self._load_excuses()
        lines = self._excuses.lines(executor_class, self._oldest_excuse(at_unix), at_unix, EXCUSE_GRACE_S,
                                    exclude_job)
        if lines is not None:
            return lines
        return [r.model_dump_json() for r in self.excuses(executor_class, at_unix, exclude_job)]

    def count(self) -> int:
        return self.conn.execute("SELECT COUNT(*) FROM receipts").fetchone()[0]
