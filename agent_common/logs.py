"""Logging for journald, for both agents: one line per event, priority as a `<N>` prefix.

journald reads `<3>`..`<7>` at the start of a stderr line as the syslog priority, so
`journalctl -p warning -u executor-agent` works without a journald library. Outside
systemd (a terminal) the same prefix is replaced by a timestamp and level name.

Secrets never reach the journal: whatever a message or a folded traceback contains,
URL query strings (presigned S3/GCS URLs carry their signature there), userinfo in URLs,
and bearer/token values are replaced before the line is written.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from asyncio import _get_running_loop as asyncio_running_loop  # get_running_loop() without the raise
from contextvars import ContextVar
from typing import TextIO

LOG_COALESCE_S = 0.005  # how long the loop's lines wait to share a write: a burst's 200 lines in ~15 writes
_PRIORITY = {logging.CRITICAL: 2, logging.ERROR: 3, logging.WARNING: 4, logging.INFO: 6, logging.DEBUG: 7}


_SECRETS = [
    (re.compile(r"(\b[a-z][a-z0-9+.-]*://[^\s?#'\"]*)\?[^\s'\"#)]*", re.I), r"\1?<redacted>"),
    (re.compile(r"(\b[a-z][a-z0-9+.-]*://)[^/\s:@'\"]+(?::[^/\s@'\"]*)?@", re.I), r"\1<redacted>@"),
    (re.compile(r"(\b(?:token|authorization|x-amz-signature|signature)[\"']?\s*[:=]\s*[\"']?)"
                r"(?:(?:bearer|basic)\s+)?[^\s,'\"}]+", re.I), r"\1<redacted>"),
    (re.compile(r"(\bbearer\s+)[^\s,'\"}]+", re.I), r"\1<redacted>"),
]


# "job=<uuid> validator=<hotkey>" while a job's task (and any thread it starts) is logging,
# so every line about a job names both, whoever wrote the log call.
job_fields: ContextVar[tuple[tuple[str, str], ...]] = ContextVar("job_fields", default=())


def set_job_fields(**fields: str) -> None:
    """Attach key=value context to every log line of the current task from now on."""
    job_fields.set(tuple(fields.items()))


def _with_job_fields(text: str) -> str:
    for key, value in job_fields.get():
        if f"{key}=" not in text:
            text += f" {key}={value}"
    return text


# Every pattern above needs "://" or one of these words (any case), so a line with neither has
# nothing to hide: a few substring tests instead of four substitutions (21 -> ~1 us a line; a burst
# of 100 offers logs 200 lines).
_SECRET_WORDS = ("token", "authorization", "signature", "bearer")


def redact(text: str) -> str:
    """The text with URL queries, URL credentials and token values replaced."""
    if "://" not in text:
        lowered = text.lower()
        if not any(word in lowered for word in _SECRET_WORDS):
            return text
    for pattern, replacement in _SECRETS:
        text = pattern.sub(replacement, text)
    return text


class JournalFormatter(logging.Formatter):
    def __init__(self, journal: bool) -> None:
        super().__init__()
        self.journal = journal

    def format(self, record: logging.LogRecord) -> str:
        text = record.getMessage().replace("\n", " ")
        if record.exc_info:
            # Keep one event per line: the traceback is folded into the same record.
            text += " exception=" + repr(self.formatException(record.exc_info))
        text = redact(_with_job_fields(text))
        if self.journal:
            return f"<{_PRIORITY.get(record.levelno, 6)}>{record.name}: {text}"
        return f"{self.formatTime(record, '%H:%M:%S')} {record.levelname:<7} {record.name}: {text}"


class CoalescingHandler(logging.StreamHandler):
    """stderr, one line per record, but what the event loop's thread logs within
    `LOG_COALESCE_S` goes out in one write.

    A write per line releases the GIL, and in a burst of offers the receipt page thread is waiting
    for it, so each of the 200 lines of 100 offers paid a hand-over: ~15 ms of the burst's p99
    (issue 14). Other threads, and a thread with no running loop, write at once (after whatever the
    loop has pending, to keep the order). What a SIGKILL can lose is the last `LOG_COALESCE_S` of
    the loop's lines; `flush()` (logging's shutdown at exit) writes them."""

    def __init__(self, stream: TextIO) -> None:
        super().__init__(stream)
        self._pending: list[str] = []
        self._flush_on: object = None  # the loop a flush is set on; a loop that ended never runs it

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record) + self.terminator
        except Exception:
            self.handleError(record)
            return
        loop = asyncio_running_loop()
        with self.lock:
            self._pending.append(line)
            if loop is None:
                self._write_pending()
            elif self._flush_on is not loop:
                self._flush_on = loop
                loop.call_later(LOG_COALESCE_S, self.flush)

    def flush(self) -> None:
        with self.lock:
            self._flush_on = None
            self._write_pending()

    def _write_pending(self) -> None:
        if not self._pending:
            return
        text, self._pending = "".join(self._pending), []
        try:
            self.stream.write(text)
            self.stream.flush()
        except Exception:  # as StreamHandler: a closed or full stderr must not take the daemon down
            self.handleError(logging.makeLogRecord({"msg": text.rstrip("\n")}))


def setup_logging(level: str = "info") -> None:
    """Configure the root logger once; journald format when systemd gave us its stream."""
    journal = bool(os.environ.get("JOURNAL_STREAM") or os.environ.get("INVOCATION_ID"))
    handler = CoalescingHandler(sys.stderr)
    handler.setFormatter(JournalFormatter(journal))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("asyncssh", "aiohttp.access", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


# A stranger can make us log (a malformed frame, a refused socket): such lines go through a budget.
LOG_EVERY_S = 10.0  # at most one line per interval and source, with the count held back


class LineBudget:
    """At most one log line per `every_s`; `allow` says how many were held back since the last."""

    def __init__(self, every_s: float = LOG_EVERY_S) -> None:
        self.every_s = every_s
        self._last = -float("inf")
        self._held = 0

    def allow(self, now: float) -> int | None:
        if now - self._last < self.every_s:
            self._held += 1
            return None
        held, self._held, self._last = self._held, 0, now
        return held
