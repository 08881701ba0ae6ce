"""Opening paths under a job directory without ever leaving it.

Every name we join onto a host directory comes from someone we do not trust: a validator's
`relative_path`, an entry name inside a zip it sent, or a file the job container wrote into
`/output` (which may be a symlink to `/etc/shadow`). Checking a joined path string with
`Path.resolve()` and then opening it is racy and follows symlinks, so instead every component is
opened relative to its parent's descriptor with `O_NOFOLLOW`: a symlink anywhere on the way makes
the open fail, whoever created it and whenever.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Sequence

from horde_protocol.paths import relative_path_problem

DIR_MODE = 0o755  # others may read and traverse: the job container runs as a different uid
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class UnsafePathError(Exception):
    """A name would escape its root, pass through a symlink, or clash with what is there."""


def split_relative_path(path: str | None, *, what: str, allow_root: bool = False) -> tuple[str, ...]:
    """The components of a canonical relative path (see `horde_protocol.paths`).

    `allow_root` lets None or "" stand for the root itself, as volumes do when `relative_path` is
    not given."""
    if allow_root and not path:
        return ()
    problem = relative_path_problem(path or "")
    if problem is not None:
        raise UnsafePathError(f"{what} {path!r} {problem}; use a plain relative path like 'data/file.bin'")
    return tuple(path.split("/"))  # type: ignore[union-attr]


def _describe(parent_fd: int, name: str) -> str:
    """Why `name` under `parent_fd` could not be used as a directory, for the error message."""
    try:
        st = os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
    except OSError:
        return "cannot be opened"
    if stat.S_ISLNK(st.st_mode):
        return "is a symlink"
    if not stat.S_ISDIR(st.st_mode):
        return "is not a directory"
    return "cannot be opened"


def open_dir(root_fd: int, parts: Sequence[str], *, create: bool) -> int:
    """A new descriptor for root/parts, refusing symlinks; missing directories are created with
    DIR_MODE when `create`. The caller closes the returned descriptor."""
    fd = os.dup(root_fd)
    try:
        for depth, name in enumerate(parts):
            try:
                child = os.open(name, _DIR_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                if not create:
                    raise UnsafePathError(f"{'/'.join(parts[: depth + 1])!r} does not exist") from None
                try:
                    os.mkdir(name, DIR_MODE, dir_fd=fd)
                except FileExistsError:
                    pass  # a concurrent writer made it; the open below still refuses a symlink
                child = os.open(name, _DIR_FLAGS, dir_fd=fd)
                os.fchmod(child, DIR_MODE)  # mkdir's mode is masked by the umask
            except OSError as exc:
                if exc.errno not in (errno.ENOTDIR, errno.ELOOP):
                    raise
                reason = _describe(fd, name)
                raise UnsafePathError(f"{'/'.join(parts[: depth + 1])!r} {reason}") from None
            os.close(fd)
            fd = child
        return fd
    except BaseException:
        os.close(fd)
        raise


def create_file(parent_fd: int, name: str, mode: int) -> int:
    """Create `name` fresh under `parent_fd` for writing, replacing a file or symlink already there
    (never writing through it), and return the descriptor."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(name, flags, mode, dir_fd=parent_fd)
    except FileExistsError:
        try:
            os.unlink(name, dir_fd=parent_fd)  # unlink removes a symlink itself, not its target
        except IsADirectoryError:
            raise UnsafePathError(f"{name!r} already exists as a directory") from None
        except PermissionError:  # Linux reports EPERM, not EISDIR, for unlink() of a directory
            raise UnsafePathError(f"{name!r} already exists and cannot be replaced") from None
        fd = os.open(name, flags, mode, dir_fd=parent_fd)
    os.fchmod(fd, mode)  # the umask must not make it unreadable for the container
    return fd


def open_regular_file(root_fd: int, parts: Sequence[str]) -> tuple[int, os.stat_result]:
    """Open root/parts read-only when every component is a real directory and the last one a
    regular file; symlinks, FIFOs and devices are refused (O_NONBLOCK keeps a FIFO from hanging)."""
    parent = open_dir(root_fd, parts[:-1], create=False)
    try:
        try:
            fd = os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=parent)
        except FileNotFoundError:
            raise UnsafePathError(f"{'/'.join(parts)!r} does not exist") from None
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise UnsafePathError(f"{'/'.join(parts)!r} is a symlink") from None
            raise
    finally:
        os.close(parent)
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise UnsafePathError(f"{'/'.join(parts)!r} is not a regular file")
    return fd, st
