"""What a finished job hands back inline: truncated stdout/stderr and small artifacts.

The rules are the stock executor's, byte for byte, because validators compare what
they get against what a stock miner would send (behaviour.md §2.4):
* stdout/stderr longer than 1,000,000 characters become the first 500,000 + " ... " +
  the last 500,000; the full text goes to /output/stdout.txt and stderr.txt so it is
  part of any zip upload;
* artifacts are the regular files directly in the artifacts dir strictly smaller than
  1,000,000 bytes, keyed "<artifacts_dir>/<filename>", base64-encoded.

A container may print gigabytes. `LogCapture` reads a log stream chunk by chunk and keeps
only what the message can carry (the first and last 2,000,000 bytes, enough for 500,000
characters of up to 4 bytes each at either end, so the truncated text is exactly the
stock one), while the whole stream goes to a file that becomes /output/stdout.txt. The
agent's memory stays bounded whatever the job prints; the disk the log takes is counted
against the job's disk limit while it runs.
"""

from __future__ import annotations

import base64
import logging
import os
import shutil
import stat
from pathlib import Path

log = logging.getLogger(__name__)

MAX_RESULT_CHARS = 1_000_000  # stock MAX_RESULT_SIZE_IN_RESPONSE
TRUNCATED_HALF_CHARS = MAX_RESULT_CHARS // 2
TRUNCATION_MARK = " ... "
MAX_ARTIFACT_BYTES = 1_000_000  # stock MAX_ARTIFACT_SIZE; files must be strictly smaller
STDOUT_FILE = "stdout.txt"
STDERR_FILE = "stderr.txt"
MAX_UTF8_CHAR_BYTES = 4
LOG_HEAD_BYTES = TRUNCATED_HALF_CHARS * MAX_UTF8_CHAR_BYTES  # holds the first 500,000 characters
LOG_TAIL_BYTES = TRUNCATED_HALF_CHARS * MAX_UTF8_CHAR_BYTES  # holds the last 500,000 characters


def truncate_output(text: str) -> str:
    """Keep head and tail of an over-long output, so both the start and the error at the
    end survive while the message stays well under the frame limits."""
    if len(text) <= MAX_RESULT_CHARS:
        return text
    return text[:TRUNCATED_HALF_CHARS] + TRUNCATION_MARK + text[-TRUNCATED_HALF_CHARS:]


def write_full_outputs(output_dir: Path, stdout: str, stderr: str) -> None:
    """Write the untruncated streams into the output dir before any upload zips it."""
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / STDOUT_FILE).write_text(stdout, errors="replace")
    (output_dir / STDERR_FILE).write_text(stderr, errors="replace")


def collect_artifacts(host_dir: Path, artifacts_dir: str) -> dict[str, str]:
    """Base64 of each small regular file directly in host_dir, keyed by its container path.

    Subdirectories, symlinks (a job could point one at a host file) and files of
    MAX_ARTIFACT_BYTES or more are skipped with a log line, as the stock executor does.
    """
    result: dict[str, str] = {}
    if not host_dir.is_dir():
        return result
    prefix = artifacts_dir.rstrip("/") or ""
    for entry in sorted(os.scandir(host_dir), key=lambda e: e.name):
        st = entry.stat(follow_symlinks=False)
        if not stat.S_ISREG(st.st_mode):
            log.warning("artifact skipped name=%s reason=not_a_regular_file", entry.name)
            continue
        if st.st_size >= MAX_ARTIFACT_BYTES:
            log.warning("artifact skipped name=%s reason=too_large size_bytes=%d", entry.name, st.st_size)
            continue
        fd = os.open(entry.path, os.O_RDONLY | os.O_NOFOLLOW)
        with os.fdopen(fd, "rb") as fh:
            data = fh.read(MAX_ARTIFACT_BYTES)
        result[f"{prefix}/{entry.name}"] = base64.b64encode(data).decode()
    return result


class LogCapture:
    """One log stream: head and tail in memory (bounded), everything in an optional file.

    The file is opened O_NOFOLLOW in a directory only the agent writes (the job root),
    never in /output, where a job could have planted a symlink.
    """

    def __init__(self, file_path: Path | None = None, head_bytes: int = LOG_HEAD_BYTES,
                 tail_bytes: int = LOG_TAIL_BYTES) -> None:
        self.head = bytearray()
        self.tail = bytearray()
        self.total_bytes = 0
        self.file_path = file_path
        self._head_limit, self._tail_limit = head_bytes, tail_bytes
        self._fd: int | None = None
        if file_path is not None:
            self._fd = os.open(file_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)

    def feed(self, chunk: bytes) -> None:
        self.total_bytes += len(chunk)
        if self._fd is not None:
            view = memoryview(chunk)
            while view:
                view = view[os.write(self._fd, view):]
        room = self._head_limit - len(self.head)
        if room > 0:
            self.head += chunk[:room]
            chunk = chunk[room:]
        if chunk:
            self.tail += chunk
            if len(self.tail) > self._tail_limit:
                del self.tail[: len(self.tail) - self._tail_limit]

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    @property
    def complete(self) -> bool:
        """True when nothing was dropped between head and tail."""
        return self.total_bytes == len(self.head) + len(self.tail)

    def text(self) -> str:
        """The message text: the stock truncation of the whole stream, decoded (invalid
        bytes replaced). Exact, because a dropped middle means more than 4,000,000 bytes,
        hence more than 1,000,000 characters, so stock would truncate as well."""
        if self.complete:
            return truncate_output(bytes(self.head + self.tail).decode(errors="replace"))
        head = bytes(self.head).decode(errors="replace")[:TRUNCATED_HALF_CHARS]
        tail = bytes(self.tail).decode(errors="replace")[-TRUNCATED_HALF_CHARS:]
        return head + TRUNCATION_MARK + tail


def place_full_output(source: Path | None, output_dir: Path, name: str) -> None:
    """Move a captured log into /output/<name>, replacing whatever the job left at that
    name (a rename replaces a planted symlink itself, it never writes through it)."""
    target = output_dir / name
    if target.is_dir() and not target.is_symlink():
        shutil.rmtree(target)
    if source is None or not source.exists():
        target.unlink(missing_ok=True)
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
        os.close(fd)
        return
    os.chmod(source, 0o644)
    os.replace(source, target)


class FrameDecoder:
    """Splits podman's multiplexed log stream (8-byte header: stream, 0, 0, 0, big-endian
    length; then the payload) into payloads, from chunks of any size. Reading big chunks
    and slicing here is several times faster than two small reads per frame, and a 50 MiB
    log has over half a million frames."""

    HEADER_BYTES = 8

    def __init__(self, sink: LogCapture) -> None:
        self.sink = sink
        self._pending = b""

    def feed(self, chunk: bytes) -> None:
        data = self._pending + chunk if self._pending else chunk
        view = memoryview(data)
        pos, end = 0, len(data)
        while end - pos >= self.HEADER_BYTES:
            length = int.from_bytes(view[pos + 4:pos + 8], "big")
            if end - pos - self.HEADER_BYTES < length:
                break
            start = pos + self.HEADER_BYTES
            if length:
                self.sink.feed(data[start:start + length])
            pos = start + length
        self._pending = data[pos:]
