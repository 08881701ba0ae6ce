"""Logging for journald (both agents use it; the miner may import the executor's modules): one line per event, the priority as an sd-daemon `<N>` prefix.

journald reads `<3>`..`<7>` at the start of a stderr line as the syslog priority, so
`journalctl -p warning -u executor-agent` works without a journald library. Outside
systemd (a terminal) the same prefix is replaced by a timestamp and level name.
"""

from __future__ import annotations

import logging
import os
import sys

_PRIORITY = {logging.CRITICAL: 2, logging.ERROR: 3, logging.WARNING: 4, logging.INFO: 6, logging.DEBUG: 7}


class JournalFormatter(logging.Formatter):
    def __init__(self, journal: bool) -> None:
        super().__init__()
        self.journal = journal

    def format(self, record: logging.LogRecord) -> str:
        text = record.getMessage().replace("\n", " ")
        if record.exc_info:
            # Keep one event per line: the traceback is folded into the same record.
            text += " exception=" + repr(self.formatException(record.exc_info))
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
