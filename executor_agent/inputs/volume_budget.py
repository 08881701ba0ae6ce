"""One byte budget and one entry count for a job's whole /volume.

Each downloader and each archive has its own caps (`VolumeLimits.max_bytes`, `max_extracted_bytes`,
`max_zip_entries`, ...), but those bound one piece: forty 12 MiB inline zips in a `multi_volume`
pass a 256 MiB disk limit piece by piece. Every sub-volume of a job therefore also charges this
one shared budget, created once per `fetch_volume`, for what it puts on disk: extracted files,
downloaded files, and a zip_url archive while it waits to be extracted.
"""

from __future__ import annotations

import threading

from executor_agent.inputs.volume_limits import VolumeError


class VolumeBudgetExceeded(VolumeError):
    """The job's volumes together are too big or have too many entries. The message has no
    context; callers prefix the volume or download that crossed the line."""


class VolumeBudget:
    """Bytes and entries left for the job's volume. Thread-safe: zip extraction charges it from a
    worker thread (sub-volumes are fetched one after the other, but the lock costs nothing)."""

    def __init__(self, max_bytes: int, max_entries: int) -> None:
        self.max_bytes = max_bytes
        self.max_entries = max_entries
        self.used_bytes = 0
        self.used_entries = 0
        self._lock = threading.Lock()

    def _too_big(self) -> VolumeBudgetExceeded:
        return VolumeBudgetExceeded(f"all volumes of this job together exceed the limit of {self.max_bytes} bytes")

    def check_declared(self, more_bytes: int) -> None:
        """Fail early on a size that is only announced (Content-Length, zip headers); never trusted
        to be small, so the real bytes are charged as they are written."""
        with self._lock:
            if self.used_bytes + more_bytes > self.max_bytes:
                raise self._too_big()

    def charge_bytes(self, n: int) -> None:
        with self._lock:
            self.used_bytes += n
            if self.used_bytes > self.max_bytes:
                raise self._too_big()

    def release_bytes(self, n: int) -> None:
        """Give back bytes that left the disk again (a rewound download, an extracted archive)."""
        with self._lock:
            self.used_bytes -= n

    def charge_entries(self, n: int) -> None:
        with self._lock:
            self.used_entries += n
            if self.used_entries > self.max_entries:
                raise VolumeBudgetExceeded(
                    f"all volumes of this job together have more than {self.max_entries} files and directories"
                )


__all__ = ["VolumeBudget", "VolumeBudgetExceeded"]
