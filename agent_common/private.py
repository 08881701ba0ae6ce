"""Files that may hold secrets, created private from the first byte.

Both daemons set `DAEMON_UMASK` (077) when they start serving, so whatever they create is theirs
alone; `private_open` makes the same promise without relying on the umask (library code also
runs inside other processes, such as the test suite or the self-test).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import BinaryIO

DAEMON_UMASK = 0o077
PRIVATE_FILE_MODE = 0o600


def set_daemon_umask() -> int:
    """Set the daemon's umask; returns the previous one."""
    return os.umask(DAEMON_UMASK)


def private_open(path: Path) -> BinaryIO:
    """Open `path` for writing (created or truncated) with mode 0600 whatever the umask."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, PRIVATE_FILE_MODE)
    os.fchmod(fd, PRIVATE_FILE_MODE)  # an existing file keeps its old mode through O_CREAT
    return os.fdopen(fd, "wb")


def make_private(path: Path) -> None:
    """Tighten an existing file (one written by an older version) to 0600."""
    if path.exists() and path.stat().st_mode & 0o077:
        path.chmod(PRIVATE_FILE_MODE)
