"""Receipts: verify the validator's signature, countersign, keep in SQLite, publish in pages.

Every receipt is kept twice on purpose. The SQLite row is the record (insert-ignore per
receipt type and job, as validators store them); the page file
`<receipts_dir>/<page>.jsonl` is what validators pull over HTTP, one `Receipt` JSON per
line, page = floor(miner clock / 300 s) at write time. A page is rewritten by
copy-append-rename so a reader never sees half a line, and `rebuild_pages` re-derives
any page whose file lost lines (a crash between the commit and the rename) from SQLite.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path

from agent_common.private import private_open
from horde_protocol.receipts import JobStartedReceiptPayload, Receipt, ReceiptPayload, receipt_blob
from miner_agent.keys import Signer, verify

log = logging.getLogger(__name__)

PAGE_TIME_S = 300  # stock PAGE_TIME: one page per 5 minutes of the miner's clock
EXCUSE_GRACE_S = 0  # validators add their own 2 s; we hand over what is valid at the offer's timestamp


def page_of(unix_time: float) -> int:
    return int(unix_time // PAGE_TIME_S)


def _enum_text(value: object) -> str:
    return str(getattr(value, "value", value))


def _row_to_receipt(row: sqlite3.Row) -> Receipt:
    payload_json, validator_signature, miner_signature = row[0], row[1], row[2]
    return Receipt.model_validate(
        {"payload": json.loads(payload_json), "validator_signature": validator_signature, "miner_signature": miner_signature}
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

    def __post_init__(self) -> None:
        self.pages_dir.mkdir(parents=True, exist_ok=True)

    def accept(self, payload: ReceiptPayload, validator_signature: str, validator_hotkey: str) -> Receipt:
        """Check hotkeys and the validator's signature, countersign, store and publish.

        Raises ReceiptRejected (nothing stored) when any check fails. Storing the same
        receipt twice is harmless: the first one stays.
        """
        if payload.miner_hotkey != self.signer.hotkey:
            raise ReceiptRejected(f"miner_hotkey {payload.miner_hotkey} is not ours ({self.signer.hotkey})")
        if payload.validator_hotkey != validator_hotkey:
            raise ReceiptRejected(
                f"validator_hotkey {payload.validator_hotkey} is not the authenticated {validator_hotkey}"
            )
        blob = receipt_blob(payload)
        if not verify(validator_hotkey, blob, validator_signature):
            raise ReceiptRejected("validator signature does not verify")
        receipt = Receipt(payload=payload, validator_signature=validator_signature, miner_signature=self.signer.sign(blob))
        self._insert(receipt)
        return receipt

    def _insert(self, receipt: Receipt) -> None:
        p = receipt.payload
        started = isinstance(p, JobStartedReceiptPayload)
        page = page_of(time.time())
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
        if cur.rowcount:
            try:
                self._append_line(page, receipt.model_dump_json())
            except OSError as exc:
                # The row is committed; the page is re-derived from it once the disk allows.
                self.stale_pages.add(page)
                log.error("receipt page write failed page=%d job=%s error=%r; it is rebuilt from the database "
                          "when space returns", page, p.job_uuid, exc.strerror or str(exc))
            log.info(
                "receipt stored type=%s job=%s validator=%s page=%d",
                _enum_text(p.receipt_type), p.job_uuid, p.validator_hotkey, page,
            )

    def _page_path(self, page: int) -> Path:
        return self.pages_dir / f"{page}.jsonl"

    def _append_line(self, page: int, line: str) -> None:
        path = self._page_path(page)
        old = path.read_bytes() if path.exists() else b""
        self._replace(path, old + line.encode() + b"\n")

    @staticmethod
    def _replace(path: Path, data: bytes) -> None:
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with private_open(tmp) as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)

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
            path = self._page_path(page)
            have = path.read_bytes().count(b"\n") if path.exists() else 0
            if have != count:
                lines = self._page_lines(page)
                self._replace(path, "".join(line + "\n" for line in lines).encode())
                log.warning("receipt page rebuilt page=%d lines_before=%d lines_now=%d", page, have, count)
                fixed += 1
        return fixed

    def excuses(self, executor_class: str, at_unix: float, exclude_job: str) -> list[Receipt]:
        """Organic JobStarted receipts of this class valid at `at_unix` (stock busy-decline excuses)."""
        rows = self.conn.execute(
            "SELECT payload_json, validator_signature, miner_signature FROM receipts"
            " WHERE receipt_type='JobStartedReceipt' AND executor_class=? AND is_organic=1"
            " AND job_uuid != ? AND timestamp_unix <= ? AND timestamp_unix + ttl_s + ? >= ?",
            (executor_class, exclude_job, at_unix, EXCUSE_GRACE_S, at_unix),
        ).fetchall()
        return [_row_to_receipt(r) for r in rows]

    def count(self) -> int:
        return self.conn.execute("SELECT COUNT(*) FROM receipts").fetchone()[0]
