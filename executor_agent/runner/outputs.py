"""What a finished job hands back inline: truncated stdout/stderr and small artifacts.

The rules are the stock executor's, byte for byte, because validators compare what
they get against what a stock miner would send (behaviour.md §2.4):
* stdout/stderr longer than 1,000,000 characters become the first 500,000 + " ... " +
  the last 500,000; the full text goes to /output/stdout.txt and stderr.txt so it is
  part of any zip upload;
* artifacts are the regular files directly in the artifacts dir strictly smaller than
  1,000,000 bytes, keyed "<artifacts_dir>/<filename>", base64-encoded.
"""

from __future__ import annotations

import base64
import logging
import os
import stat
from pathlib import Path

log = logging.getLogger(__name__)

MAX_RESULT_CHARS = 1_000_000  # stock MAX_RESULT_SIZE_IN_RESPONSE
TRUNCATED_HALF_CHARS = MAX_RESULT_CHARS // 2
TRUNCATION_MARK = " ... "
MAX_ARTIFACT_BYTES = 1_000_000  # stock MAX_ARTIFACT_SIZE; files must be strictly smaller
STDOUT_FILE = "stdout.txt"
STDERR_FILE = "stderr.txt"


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
