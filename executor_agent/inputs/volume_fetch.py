"""Putting a job's input volume into `dest` (the host side of the container's `/volume`).

One entry point, `fetch_volume`, for every `volume_type` of protocol.md §8.1. Anything the job
sender got wrong or did on purpose (bad URL, 404, hostile zip, too big, too slow) is a VolumeError
whose text the user sees as "Download failed: <text>"; anything else (disk full, a bug) propagates
unchanged so the caller can report a horde failure instead of blaming the job. A URL the egress
guard refuses (loopback, private, link-local, this host) is a VolumeError.

All sub-volumes of a job share one `VolumeBudget` (bytes on disk, files and directories), so many
small volumes cannot add up past it, and a multi_volume may hold at most `max_sub_volumes`.

Cancellation (the caller's stage deadline) is safe at every await: the HTTP session is closed by
`async with`, the zip_url archive lives in an unnamed O_TMPFILE file that vanishes when closed,
a half-written single file is removed, and an extraction thread is told to stop and awaited
before its directory descriptor is closed.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import io
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import BinaryIO

import aiohttp

from executor_agent.fs.blocking import run_cancellable
from executor_agent.fs.safepath import DIR_MODE, UnsafePathError, create_file, open_dir, split_relative_path
from executor_agent.inputs import huggingface as hf_volume
from executor_agent.inputs.http_fetch import ByteBudget, display_url, download, open_session
from executor_agent.inputs.safezip import FILE_MODE, ArchiveError, ExtractStats, ZipLimits, extract_zip
from executor_agent.inputs.volume_budget import VolumeBudget, VolumeBudgetExceeded
from executor_agent.inputs.volume_limits import VolumeError, VolumeLimits, job_volume_limits
from executor_agent.net.egress import EgressRefused
from horde_protocol.volumes import (
    HuggingfaceVolume,
    InlineVolume,
    MultiVolume,
    SingleFileVolume,
    Volume,
    ZipUrlVolume,
)

log = logging.getLogger(__name__)

BASE64_EXPANSION = 4 / 3  # base64 text is this much longer than the bytes it encodes


def _zip_limits(limits: VolumeLimits) -> ZipLimits:
    return ZipLimits(
        max_extracted_bytes=limits.max_extracted_bytes,
        max_entries=limits.max_zip_entries,
        max_compression_ratio=limits.max_compression_ratio,
        ratio_floor_bytes=limits.ratio_floor_bytes,
    )


async def _extract(source: BinaryIO, size: int, target_fd: int, limits: VolumeLimits, budget: VolumeBudget,
                   what: str) -> ExtractStats:
    """Unzip in a worker thread (see `blocking`): the loop keeps serving the miner link meanwhile."""
    zip_limits = _zip_limits(limits)
    try:
        return await run_cancellable(lambda cancel: extract_zip(source, size, target_fd, zip_limits, cancel, budget))
    except ArchiveError as exc:
        raise VolumeError(f"{what}: {exc}") from None
    except VolumeBudgetExceeded as exc:
        raise VolumeError(f"Input volume too large: {what}: {exc}") from None


def _open_target(root_fd: int, relative_path: str | None) -> int:
    parts = split_relative_path(relative_path, what="relative_path", allow_root=True)
    return open_dir(root_fd, parts, create=True)


async def _fetch_inline(volume: InlineVolume, root_fd: int, limits: VolumeLimits, budget: VolumeBudget) -> None:
    what = "inline volume"
    if len(volume.contents) > limits.max_bytes * BASE64_EXPANSION + 4:
        raise VolumeError(f"Input volume too large: {what} exceeds {limits.max_bytes} bytes")
    try:
        data = base64.b64decode(volume.contents, validate=False)
    except (binascii.Error, ValueError) as exc:
        raise VolumeError(f"{what}: contents is not valid base64 ({exc})") from None
    target = _open_target(root_fd, volume.relative_path)
    try:
        stats = await _extract(io.BytesIO(data), len(data), target, limits, budget, what)
    finally:
        os.close(target)
    log.info("event=volume_extracted type=inline files=%d bytes=%d", stats.files, stats.bytes)


async def _fetch_zip_url(volume: ZipUrlVolume, root_fd: int, temp_dir: Path, session: aiohttp.ClientSession,
                         limits: VolumeLimits, budget: VolumeBudget) -> None:
    what = f"zip_url {display_url(volume.contents)}"
    target = _open_target(root_fd, volume.relative_path)
    archive_budget = ByteBudget(limits.max_bytes, budget)  # the archive takes disk until it is extracted
    try:
        # O_TMPFILE: the archive has no name, so no crash or cancellation can leave it behind
        with tempfile.TemporaryFile(dir=temp_dir) as archive:
            size = await download(session, volume.contents, archive, archive_budget, limits, what=what)
            archive.seek(0)
            stats = await _extract(archive, size, target, limits, budget, what)
    finally:
        archive_budget.release(archive_budget.used_bytes)  # the archive file is gone
        os.close(target)
    log.info("event=volume_extracted type=zip_url bytes_downloaded=%d files=%d bytes=%d",
             size, stats.files, stats.bytes)


async def _fetch_single_file(volume: SingleFileVolume, root_fd: int, session: aiohttp.ClientSession,
                             limits: VolumeLimits, budget: VolumeBudget) -> None:
    what = f"single_file {display_url(volume.url)}"
    parts = split_relative_path(volume.relative_path, what="relative_path")
    try:
        budget.charge_entries(1)
    except VolumeBudgetExceeded as exc:
        raise VolumeError(f"{what}: {exc}") from None
    parent = open_dir(root_fd, parts[:-1], create=True)
    try:
        fd = create_file(parent, parts[-1], FILE_MODE)
        try:
            with os.fdopen(fd, "w+b") as out:
                size = await download(session, volume.url, out, ByteBudget(limits.max_bytes, budget), limits,
                                      what=what)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(parts[-1], dir_fd=parent)  # no half file for the job to trip over
            raise
    finally:
        os.close(parent)
    log.info("event=volume_downloaded type=single_file bytes=%d", size)


async def _fetch_one(volume: Volume, root_fd: int, temp_dir: Path, session: aiohttp.ClientSession,
                     limits: VolumeLimits, budget: VolumeBudget) -> None:
    if isinstance(volume, InlineVolume):
        await _fetch_inline(volume, root_fd, limits, budget)
    elif isinstance(volume, ZipUrlVolume):
        await _fetch_zip_url(volume, root_fd, temp_dir, session, limits, budget)
    elif isinstance(volume, SingleFileVolume):
        await _fetch_single_file(volume, root_fd, session, limits, budget)
    elif isinstance(volume, HuggingfaceVolume):
        await hf_volume.fetch_huggingface(volume, root_fd, session, limits, budget)
    elif isinstance(volume, MultiVolume):
        if len(volume.volumes) > limits.max_sub_volumes:
            raise VolumeError(f"multi_volume has {len(volume.volumes)} volumes, more than the limit of "
                              f"{limits.max_sub_volumes}; merge them into fewer archives")
        for index, sub in enumerate(volume.volumes):
            if isinstance(sub, MultiVolume):  # the wire model forbids it; a constructed one might not
                raise VolumeError(f"multi_volume item {index}: nested multi_volume is not allowed")
            await _fetch_one(sub, root_fd, temp_dir, session, limits, budget)
    else:
        raise VolumeError(f"unsupported volume_type {getattr(volume, 'volume_type', type(volume).__name__)!r}")


async def fetch_volume(volume: Volume, dest: Path, limits: VolumeLimits) -> None:
    """Download or unpack `volume` into `dest` (created if missing, 0755), never writing outside it.

    Raises VolumeError for anything that is the job's fault."""
    started = time.monotonic()
    budget = VolumeBudget(limits.max_volume_bytes, limits.max_volume_entries)
    dest.mkdir(parents=True, exist_ok=True)
    temp_dir = limits.temp_dir or dest.parent
    root_fd = os.open(dest, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fchmod(root_fd, DIR_MODE)
        async with open_session(limits) as session:
            await _fetch_one(volume, root_fd, temp_dir, session, limits, budget)
    except UnsafePathError as exc:
        raise VolumeError(str(exc)) from None
    except EgressRefused as exc:  # every request path translates it with context; this is the backstop
        raise VolumeError(str(exc)) from None
    finally:
        os.close(root_fd)
    log.info("event=volume_ready type=%s took_ms=%d bytes=%d entries=%d", volume.volume_type,
             (time.monotonic() - started) * 1000, budget.used_bytes, budget.used_entries)


__all__ = ["VolumeError", "VolumeLimits", "fetch_volume", "job_volume_limits"]
