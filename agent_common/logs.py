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
from contextvars import ContextVar

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


def redact(text: str) -> str:
    """The text with URL queries, URL credentials and token values replaced."""
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


def setup_logging(level: str = "info") -> None:
    """Configure the root logger once; journald format when systemd gave us its stream."""
    journal = bool(os.environ.get("JOURNAL_STREAM") or os.environ.get("INVOCATION_ID"))
    handler = logging.StreamHandler(sys.stderr)
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
