"""Zipping the job's output directory without trusting what the container left in it.

The container wrote `/output` as it pleased: a symlink to `/etc/shadow` or `/root/.ssh`, a FIFO
that blocks the reader, a directory symlink looping forever. Only regular files reached through
real directories are zipped; everything else is skipped and logged (the upload still goes out).
Every file is opened relative to its parent's descriptor with O_NOFOLLOW, so a check-then-open
race cannot swap a file for a link either.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import zipfile
from collections.abc import Iterator
from typing import BinaryIO

from executor_agent.fs.blocking import Cancelled
from executor_agent.fs.safepath import UnsafePathError, open_dir, open_regular_file

log = logging.getLogger(__name__)

ZIP_CHUNK_BYTES = 1024 * 1024  # 1 MiB per read while compressing
ZIP_MEMBER_MODE = 0o644  # recorded in the archive; the receiver gets plain readable files
ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)  # the earliest time a zip header can hold


class OutputZipError(Exception):
    """The output cannot be zipped within the limits; the message says which limit."""


def _walk(dir_fd: int, prefix: tuple[str, ...], skipped: list[str]) -> Iterator[tuple[str, ...]]:
    """Relative paths of the regular files below `dir_fd`, sorted; symlinks are never followed."""
    with os.scandir(dir_fd) as it:
        entries = sorted(it, key=lambda e: e.name)
    for entry in entries:
        parts = (*prefix, entry.name)
        if entry.is_symlink():
            skipped.append("/".join(parts) + " (symlink)")
        elif entry.is_dir(follow_symlinks=False):
            try:
                child = open_dir(dir_fd, [entry.name], create=False)
            except UnsafePathError as exc:  # swapped for a link since scandir saw it
                skipped.append(f"{'/'.join(parts)} ({exc})")
                continue
            try:
                yield from _walk(child, parts, skipped)
            finally:
                os.close(child)
        elif entry.is_file(follow_symlinks=False):
            yield parts
        else:
            skipped.append("/".join(parts) + " (not a regular file)")


def list_output_files(root_fd: int, exclude: frozenset[tuple[str, ...]]) -> list[tuple[str, ...]]:
    """Files to zip: every regular file below `root_fd` whose path is not in `exclude`."""
    skipped: list[str] = []
    files = [p for p in _walk(root_fd, (), skipped) if p not in exclude]
    for item in skipped:
        log.warning("event=output_entry_skipped path=%r", item)
    return files


def _zip_info(parts: tuple[str, ...], st: os.stat_result) -> zipfile.ZipInfo:
    date_time = max(time.gmtime(st.st_mtime)[:6], ZIP_EPOCH)
    info = zipfile.ZipInfo("/".join(parts), date_time=date_time)
    info.compress_type = zipfile.ZIP_DEFLATED
    info.external_attr = ZIP_MEMBER_MODE << 16
    info.file_size = st.st_size  # lets zipfile pick zip64 headers up front for big files
    return info


def write_output_zip(root_fd: int, files: list[tuple[str, ...]], out: BinaryIO,
                     max_zip_bytes: int, cancel: threading.Event) -> int:
    """Zip `files` (from `list_output_files`) into `out`; returns the archive size in bytes.

    The size is checked while compressing, so a huge output fails without filling the disk."""

    def check_size() -> None:
        if out.tell() > max_zip_bytes:
            raise OutputZipError(f"output zip exceeds the limit of {max_zip_bytes} bytes")

    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED, allowZip64=True) as zf:
        for parts in files:
            try:
                fd, st = open_regular_file(root_fd, parts)
            except UnsafePathError as exc:  # changed after listing: skip it like any odd entry
                log.warning("event=output_entry_skipped path=%r reason=%r", "/".join(parts), str(exc))
                continue
            with os.fdopen(fd, "rb") as src, zf.open(_zip_info(parts, st), "w", force_zip64=st.st_size > 2**31) as dst:
                while chunk := src.read(ZIP_CHUNK_BYTES):
                    if cancel.is_set():
                        raise Cancelled()
                    dst.write(chunk)
                    check_size()
    check_size()
    out.flush()
    return out.tell()
