"""The per-job event log: `<jobs_dir>/<uuid>/events.jsonl`, one link Event frame a line.

Every upward job message is appended here before any connection sees it, so a miner
that reconnects (or an agent that restarts) can replay exactly what was missed with
`attach(since_seq)`. Appends are plain O_APPEND writes: they survive a crash of this
process (the page cache keeps them); surviving a host power loss would need fsync,
and a power loss kills the job's container anyway.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from pydantic import ValidationError

from horde_protocol.link_frames import Event, decode_up, encode, is_terminal

log = logging.getLogger(__name__)

EVENTS_FILE = "events.jsonl"


class EventLog:
    """Append-only log of one job's events; `last_seq` is the highest seq written."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.last_seq = 0
        self.finished = False
        for event in self.read():
            self.last_seq = event.seq
            self.finished = self.finished or is_terminal(event)

    def append(self, event: Event) -> None:
        """Write one event durably enough to replay it; seqs must grow by exactly one."""
        if event.seq != self.last_seq + 1:
            raise ValueError(f"event seq {event.seq} does not follow {self.last_seq}")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, encode(event))
        finally:
            os.close(fd)
        self.last_seq = event.seq
        self.finished = self.finished or is_terminal(event)

    def read(self, since_seq: int = 0) -> list[Event]:
        """Events with seq > since_seq. A torn last line (crash mid-write) is skipped."""
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return []
        events: list[Event] = []
        for number, line in enumerate(raw.splitlines(), 1):
            if not line.strip():
                continue
            try:
                frame = decode_up(line)
            except ValidationError:
                log.warning("event log line unreadable path=%s line=%d", self.path, number)
                continue
            if isinstance(frame, Event) and frame.seq > since_seq:
                events.append(frame)
        return events

