"""Extracting a zip archive sent by a stranger.

`ZipFile.extractall` trusts the archive: header sizes, entry names, entry types. Here nothing is
trusted: names must be plain relative paths, symlinks and device entries are refused, duplicates
are refused, and sizes are what we count while writing, not what the headers claim. A zip bomb
is stopped by three independent bounds: entry count, total extracted bytes, and extracted bytes
per byte of archive (the compression ratio); an optional budget shared with the job's other
volumes is charged as well, so many small archives cannot add up past it. Synchronous on purpose:
the caller runs it in a thread and passes a `threading.Event` to stop it between chunks.
"""

from __future__ import annotations

import errno
import os
import stat
import threading
import zipfile
import zlib
from dataclasses import dataclass
from typing import BinaryIO, Protocol

from executor_agent.fs.blocking import Cancelled
from executor_agent.fs.safepath import DIR_MODE, UnsafePathError, create_file, open_dir

FILE_MODE = 0o755  # the stock executor chmods 777; we keep "everyone may read and run", drop write
EXTRACT_CHUNK_BYTES = 1024 * 1024  # 1 MiB per read: amortises syscalls, bounds memory
_ENCRYPTED_FLAG = 0x1  # general purpose bit 0 (APPNOTE 4.4.4)


class ArchiveError(Exception):
    """The archive is malformed or hostile; the message says which entry and why."""


@dataclass(frozen=True)
class ZipLimits:
    max_extracted_bytes: int
    max_entries: int
    max_compression_ratio: int  # extracted bytes allowed per byte of archive
    ratio_floor_bytes: int  # below this many extracted bytes the ratio is not checked


class SharedBudget(Protocol):
    """Bytes and entries this archive shares with others (see inputs/volume_budget.py); each
    method raises once the budget is spent, and that exception leaves `extract_zip` unchanged."""

    def check_declared(self, more_bytes: int) -> None: ...

    def charge_bytes(self, n: int) -> None: ...

    def charge_entries(self, n: int) -> None: ...


@dataclass(frozen=True)
class ExtractStats:
    files: int
    dirs: int
    bytes: int


def _entry_parts(info: zipfile.ZipInfo) -> tuple[str, ...]:
    """The path components of an entry name; `./` and doubled slashes are tolerated as harmless
    spellings, anything that could leave the destination is not."""
    name = info.filename
    if "\\" in name:
        raise ArchiveError(f"entry {name!r}: backslash in name (zip names use '/')")
    if name.startswith("/"):
        raise ArchiveError(f"entry {name!r}: absolute path")
    parts = tuple(p for p in name.split("/") if p not in ("", "."))
    if ".." in parts:
        raise ArchiveError(f"entry {name!r}: '..' would leave the volume directory")
    if not parts:
        raise ArchiveError(f"entry {name!r}: empty name")
    if ":" in parts[0] and len(parts[0]) == 2:
        raise ArchiveError(f"entry {name!r}: drive-letter path")
    return parts


def _check_entry_type(info: zipfile.ZipInfo) -> None:
    """Only plain files and directories; a symlink entry is the classic way out of the target."""
    mode = info.external_attr >> 16
    kind = stat.S_IFMT(mode)
    if kind and kind not in (stat.S_IFREG, stat.S_IFDIR):
        label = "symlink" if stat.S_ISLNK(mode) else "special file"
        raise ArchiveError(f"entry {info.filename!r}: {label} entries are not allowed")
    if info.flag_bits & _ENCRYPTED_FLAG:
        raise ArchiveError(f"entry {info.filename!r}: encrypted entries are not supported")


def _plan(zf: zipfile.ZipFile, limits: ZipLimits,
          shared: SharedBudget | None) -> list[tuple[zipfile.ZipInfo, tuple[str, ...]]]:
    """Validate every entry before writing anything, so most hostile archives leave no trace."""
    infos = zf.infolist()
    if len(infos) > limits.max_entries:
        raise ArchiveError(f"archive has {len(infos)} entries, more than the limit of {limits.max_entries}")
    declared = sum(i.file_size for i in infos)
    if declared > limits.max_extracted_bytes:
        raise ArchiveError(
            f"archive declares {declared} bytes uncompressed, more than the limit of {limits.max_extracted_bytes}"
        )
    if shared is not None:
        shared.charge_entries(len(infos))
        shared.check_declared(declared)
    seen: dict[tuple[str, ...], str] = {}
    plan = []
    for info in infos:
        _check_entry_type(info)
        parts = _entry_parts(info)
        if parts in seen:
            raise ArchiveError(f"entry {info.filename!r}: duplicate of {seen[parts]!r}")
        seen[parts] = info.filename
        plan.append((info, parts))
    for parts, name in seen.items():  # a file "a" and an entry "a/b" cannot both be honoured
        for i in range(1, len(parts)):
            prefix = parts[:i]
            if prefix in seen and not seen[prefix].endswith("/"):
                raise ArchiveError(f"entry {name!r}: {seen[prefix]!r} is a file, not a directory")
    return plan


class _Budget:
    """Bytes written so far against both the absolute cap and the ratio cap."""

    def __init__(self, limits: ZipLimits, archive_bytes: int, shared: SharedBudget | None) -> None:
        self.written = 0
        self._cap = limits.max_extracted_bytes
        self._ratio_cap = max(limits.ratio_floor_bytes, limits.max_compression_ratio * archive_bytes)
        self._ratio = limits.max_compression_ratio
        self._shared = shared

    def add(self, n: int, entry: str) -> None:
        self.written += n
        if self._shared is not None:
            self._shared.charge_bytes(n)
        if self.written > self._cap:
            raise ArchiveError(f"entry {entry!r}: extracted data exceeds the limit of {self._cap} bytes")
        if self.written > self._ratio_cap:
            raise ArchiveError(
                f"entry {entry!r}: extracted data exceeds {self._ratio}x the archive size (zip bomb?)"
            )


def _write_entry(zf: zipfile.ZipFile, info: zipfile.ZipInfo, parent_fd: int, name: str,
                 budget: _Budget, cancel: threading.Event) -> None:
    fd = create_file(parent_fd, name, FILE_MODE)
    with os.fdopen(fd, "wb") as out, zf.open(info) as src:
        while chunk := src.read(EXTRACT_CHUNK_BYTES):
            if cancel.is_set():
                raise Cancelled()
            budget.add(len(chunk), info.filename)
            out.write(chunk)


def extract_zip(source: str | os.PathLike[str] | BinaryIO, archive_bytes: int, root_fd: int,
                limits: ZipLimits, cancel: threading.Event, shared: SharedBudget | None = None) -> ExtractStats:
    """Extract `source` (a path or seekable binary file of `archive_bytes` bytes) beneath the
    directory `root_fd`. Raises ArchiveError for anything hostile or broken, and whatever
    `shared` raises when the archive would overspend it."""
    try:
        with zipfile.ZipFile(source) as zf:
            plan = _plan(zf, limits, shared)
            budget = _Budget(limits, archive_bytes, shared)
            files = dirs = 0
            for info, parts in plan:
                if cancel.is_set():
                    raise Cancelled()
                if info.is_dir():
                    os.close(open_dir(root_fd, parts, create=True))
                    dirs += 1
                    continue
                parent = open_dir(root_fd, parts[:-1], create=True)
                try:
                    _write_entry(zf, info, parent, parts[-1], budget, cancel)
                finally:
                    os.close(parent)
                files += 1
            return ExtractStats(files=files, dirs=dirs, bytes=budget.written)
    except UnsafePathError as exc:
        raise ArchiveError(f"unsafe entry path: {exc}") from None
    except (zipfile.BadZipFile, zlib.error, EOFError) as exc:
        raise ArchiveError(f"not a valid zip archive: {exc}") from None
    except NotImplementedError as exc:  # e.g. an unsupported compression method
        raise ArchiveError(f"unsupported zip feature: {exc}") from None
    except RuntimeError as exc:  # zipfile's "password required" and friends
        raise ArchiveError(f"cannot read zip entry: {exc}") from None
    except OSError as exc:
        if exc.errno not in (errno.ENAMETOOLONG, errno.EILSEQ):
            raise  # a full disk or an I/O error is the host's problem, not the archive's
        raise ArchiveError(f"entry name not usable on this filesystem: {exc.strerror}") from None


__all__ = ["DIR_MODE", "FILE_MODE", "ArchiveError", "ExtractStats", "SharedBudget", "ZipLimits", "extract_zip"]
