"""Receipt page files: copy-append-rename with fsync, one rewrite at a time, grouped when busy.

A page is rewritten whole (old bytes + new lines, fsync, rename) so a validator reading it never
sees half a line. That costs a file copy and an fsync per rewrite, which on the event loop made a
burst of offers wait for each other's fsync in turn. Here an offer's line is queued and the loop
goes on; one worker thread writes everything queued by then, per page, in a single rewrite and
fsync, and only then releases the offers waiting on it (group commit). So an answer still leaves
only after its receipt's page is durable, as before, while a hundred offers share a few fsyncs.

Every rewrite of a page file, from the worker or from synchronous callers on the loop (a
JobAccepted/JobFinished receipt, `rebuild_pages`), takes one lock, so two rewrites never race and
the file only ever grows by whole lines.
"""

from __future__ import annotations

import asyncio
import errno
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from agent_common.private import private_open

COPY_CHUNK_BYTES = 1024 * 1024  # the hand copy's read size, where copy_file_range is not there


def _copy_all(src: int, dst: int) -> None:
    """All of `src` onto the end of `dst` (both at offset 0 and the end of what was copied)."""
    size = os.fstat(src).st_size
    try:
        while size > 0 and (n := os.copy_file_range(src, dst, size)) > 0:
            size -= n
        if size <= 0:
            return
    except OSError as exc:  # a filesystem or kernel without it (EXDEV, ENOSYS, EINVAL): copy by hand
        if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
            raise
    while chunk := os.read(src, COPY_CHUNK_BYTES):
        view = memoryview(chunk)
        while view:
            view = view[os.write(dst, view):]


@dataclass
class _Waiting:
    line: str
    done: asyncio.Future[OSError | None]


@dataclass
class PageWriter:
    pages_dir: Path
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _queued: dict[int, list[_Waiting]] = field(default_factory=dict)
    _worker: asyncio.Task[None] | None = None
    # Its own thread, not the loop's default pool: that pool also opens the files aiohttp serves
    # (receipt pages) and compresses large websocket frames, and an fsync must not hold up either.
    _thread: ThreadPoolExecutor | None = None
    _writing: set[int] = field(default_factory=set)  # pages the thread is rewriting now

    def path(self, page: int) -> Path:
        return self.pages_dir / f"{page}.jsonl"

    def busy(self, page: int) -> bool:
        """Lines for `page` are queued or being written: their rows are in SQLite already, so a
        rebuild from SQLite now would write them and the queued append write them again."""
        return page in self._writing or page in self._queued

    # -- synchronous: the caller's thread writes ---------------------------------------

    def append_now(self, page: int, lines: list[str]) -> None:
        """Append whole lines to a page and make it durable before returning; raises OSError."""
        with self._lock:
            path = self.path(page)
            self._replace(path, "".join(line + "\n" for line in lines).encode(), keep=path)

    def replace_now(self, page: int, lines: list[str]) -> None:
        """Rewrite a page with exactly `lines` (a rebuild from the database); raises OSError."""
        with self._lock:
            self._replace(self.path(page), "".join(line + "\n" for line in lines).encode())

    @staticmethod
    def _replace(path: Path, data: bytes, keep: Path | None = None) -> None:
        """`path` becomes the bytes of `keep` (if it exists) followed by `data`, durably. The old
        bytes are copied by the kernel (copy_file_range), not through Python: the worker thread
        then holds the GIL for almost nothing while the event loop answers a burst of offers."""
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with private_open(tmp) as fh:
            if keep is not None:
                try:
                    src = os.open(keep, os.O_RDONLY | os.O_CLOEXEC)
                except FileNotFoundError:
                    pass
                else:
                    try:
                        _copy_all(src, fh.fileno())
                    finally:
                        os.close(src)
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)

    # -- asynchronous: group commit ----------------------------------------------------

    async def append(self, page: int, line: str) -> OSError | None:
        """Queue one line; returns once a rewrite holding it is durable, with the OSError that
        rewrite met (None when it is on disk). The loop runs other work meanwhile."""
        done: asyncio.Future[OSError | None] = asyncio.get_running_loop().create_future()
        self._queued.setdefault(page, []).append(_Waiting(line, done))
        if self._worker is None or self._worker.done():
            self._worker = asyncio.get_running_loop().create_task(self._drain(), name="receipt-pages")
        return await asyncio.shield(done)

    async def _drain(self) -> None:
        """Write what is queued, page by page, until nothing is: whatever queues up during one
        rewrite goes into the next one together."""
        while self._queued:
            batch, self._queued = self._queued, {}
            try:
                for page, waiting in list(batch.items()):
                    try:
                        if self._thread is None:
                            self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="receipt-pages")
                        lines = [w.line for w in waiting]
                        self._writing.add(page)
                        try:
                            await asyncio.get_running_loop().run_in_executor(self._thread, self.append_now, page,
                                                                             lines)
                        finally:
                            self._writing.discard(page)
                    except OSError as exc:  # a full disk: the caller marks the page for a rebuild
                        self._settle(waiting, exc)
                    else:
                        self._settle(waiting, None)
                    del batch[page]
            except BaseException as exc:
                # Cancelled at shutdown, or a bug: whoever still waits hears of it rather than hang.
                for w in [w for waiting in (*batch.values(), *self._queued.values()) for w in waiting]:
                    if w.done.done():
                        continue
                    if isinstance(exc, Exception):
                        w.done.set_exception(exc)
                    else:
                        w.done.cancel()
                self._queued = {}
                raise

    @staticmethod
    def _settle(waiting: list[_Waiting], error: OSError | None) -> None:
        for w in waiting:
            if not w.done.done():
                w.done.set_result(error)

    async def flush(self) -> None:
        """Wait until everything queued so far is written (shutdown, tests)."""
        while self._worker is not None and not self._worker.done():
            await asyncio.shield(self._worker)
