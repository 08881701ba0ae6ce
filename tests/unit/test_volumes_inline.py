"""Inline volumes and safe extraction: every hostile archive is a VolumeError, nothing lands outside
`dest`, and what is extracted is readable by the container's (other) uid."""

from __future__ import annotations

import base64
import io
import os
import stat
import struct
import warnings
import zipfile
from dataclasses import replace
from pathlib import Path

import pytest

from executor_agent.inputs.http_fetch import Retryable, ThroughputGuard
from executor_agent.inputs.volume_fetch import VolumeError, VolumeLimits, fetch_volume
from horde_protocol.volumes import InlineVolume, MultiVolume

LIMITS = VolumeLimits()


def make_zip(entries: list[tuple[str | zipfile.ZipInfo, bytes]], compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns about the duplicate names we make on purpose
        with zipfile.ZipFile(buf, "w", compression=compression) as zf:
            for name, data in entries:
                zf.writestr(name, data)
    return buf.getvalue()


def inline(data: bytes, relative_path: str | None = None) -> InlineVolume:
    return InlineVolume(contents=base64.b64encode(data).decode(), relative_path=relative_path)


def tree(root: Path) -> dict[str, bytes | None]:
    return {
        str(p.relative_to(root)): (p.read_bytes() if p.is_file() and not p.is_symlink() else None)
        for p in sorted(root.rglob("*"))
    }


@pytest.fixture
def job_dir(tmp_path: Path) -> Path:
    (tmp_path / "outside").mkdir()
    return tmp_path


async def test_inline_extracts_into_relative_path(job_dir: Path) -> None:
    dest = job_dir / "volume"
    data = make_zip([("a/b.txt", b"hello"), ("c.txt", b"x"), ("empty/", b"")])
    await fetch_volume(inline(data, "sub/dir"), dest, LIMITS)
    assert tree(dest) == {
        "sub": None, "sub/dir": None, "sub/dir/a": None, "sub/dir/a/b.txt": b"hello",
        "sub/dir/c.txt": b"x", "sub/dir/empty": None,
    }


async def test_inline_without_relative_path_goes_to_root(job_dir: Path) -> None:
    dest = job_dir / "volume"
    await fetch_volume(inline(make_zip([("payload.txt", b"42")])), dest, LIMITS)
    assert (dest / "payload.txt").read_bytes() == b"42"


async def test_extracted_files_readable_by_others_despite_umask(job_dir: Path) -> None:
    dest = job_dir / "volume"
    old = os.umask(0o077)
    try:
        await fetch_volume(inline(make_zip([("d/f.sh", b"#!/bin/sh\n")])), dest, LIMITS)
    finally:
        os.umask(old)
    for path in (dest, dest / "d", dest / "d" / "f.sh"):
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode & 0o005 == 0o005, f"{path} mode {oct(mode)}"
        assert mode & 0o022 == 0, f"{path} must not be writable by others: {oct(mode)}"


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("../evil.txt", "'..'"),
        ("a/../../evil.txt", "'..'"),
        ("/tmp/evil.txt", "absolute"),
        ("..\\evil.txt", "backslash"),
        ("C:/evil.txt", "drive-letter"),
    ],
)
async def test_hostile_names_rejected(job_dir: Path, name: str, message: str) -> None:
    with pytest.raises(VolumeError, match=message):
        await fetch_volume(inline(make_zip([("ok.txt", b"1"), (zipfile.ZipInfo(name), b"evil")])),
                           job_dir / "volume", LIMITS)
    assert not any(job_dir.rglob("evil.txt"))
    assert not (job_dir / "volume" / "ok.txt").exists()  # validated before anything is written


async def test_symlink_entry_rejected(job_dir: Path) -> None:
    info = zipfile.ZipInfo("link")
    info.create_system = 3
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    with pytest.raises(VolumeError, match="symlink entries are not allowed"):
        await fetch_volume(inline(make_zip([(info, b"/etc")])), job_dir / "volume", LIMITS)
    assert not os.path.lexists(job_dir / "volume" / "link")


async def test_entry_through_existing_symlink_rejected(job_dir: Path) -> None:
    dest = job_dir / "volume"
    dest.mkdir()
    (dest / "link").symlink_to(job_dir / "outside")
    with pytest.raises(VolumeError, match="'link' is a symlink"):
        await fetch_volume(inline(make_zip([("link/evil.txt", b"x")])), dest, LIMITS)
    assert list((job_dir / "outside").iterdir()) == []


async def test_existing_symlink_as_file_is_replaced_not_followed(job_dir: Path) -> None:
    dest = job_dir / "volume"
    dest.mkdir()
    victim = job_dir / "outside" / "victim.txt"
    victim.write_bytes(b"original")
    (dest / "f.txt").symlink_to(victim)
    await fetch_volume(inline(make_zip([("f.txt", b"new")])), dest, LIMITS)
    assert victim.read_bytes() == b"original"
    assert not (dest / "f.txt").is_symlink() and (dest / "f.txt").read_bytes() == b"new"


async def test_relative_path_escaping_dest_rejected(job_dir: Path) -> None:
    for bad in ("../outside", "/etc", "a/./b", "a//b", "x\\y"):
        with pytest.raises(VolumeError, match="relative_path"):
            await fetch_volume(inline(make_zip([("evil.txt", b"x")]), bad), job_dir / "volume", LIMITS)
    assert not any(job_dir.rglob("evil.txt"))


async def test_relative_path_through_symlink_rejected(job_dir: Path) -> None:
    dest = job_dir / "volume"
    dest.mkdir()
    (dest / "link").symlink_to(job_dir / "outside")
    with pytest.raises(VolumeError, match="symlink"):
        await fetch_volume(inline(make_zip([("evil.txt", b"x")]), "link/sub"), dest, LIMITS)
    assert list((job_dir / "outside").iterdir()) == []


async def test_duplicate_names_rejected(job_dir: Path) -> None:
    with pytest.raises(VolumeError, match="duplicate"):
        await fetch_volume(inline(make_zip([("a.txt", b"1"), ("./a.txt", b"2")])), job_dir / "volume", LIMITS)


async def test_file_and_directory_with_same_name_rejected(job_dir: Path) -> None:
    with pytest.raises(VolumeError, match="is a file, not a directory"):
        await fetch_volume(inline(make_zip([("a", b"1"), ("a/b", b"2")])), job_dir / "volume", LIMITS)


async def test_bomb_by_declared_size(job_dir: Path) -> None:
    limits = replace(LIMITS, max_extracted_bytes=1000)
    with pytest.raises(VolumeError, match="declares 2000 bytes uncompressed"):
        await fetch_volume(inline(make_zip([("a", b"\0" * 1000), ("b", b"\0" * 1000)])), job_dir / "volume", limits)


async def test_bomb_by_compression_ratio(job_dir: Path) -> None:
    limits = replace(LIMITS, max_compression_ratio=50, ratio_floor_bytes=64 * 1024)
    with pytest.raises(VolumeError, match="zip bomb"):
        await fetch_volume(inline(make_zip([("zeros", b"\0" * (4 * 1024 * 1024))])), job_dir / "volume", limits)


async def test_ratio_not_applied_below_floor(job_dir: Path) -> None:
    limits = replace(LIMITS, max_compression_ratio=2, ratio_floor_bytes=1024 * 1024)
    await fetch_volume(inline(make_zip([("zeros", b"\0" * 100_000)])), job_dir / "volume", limits)
    assert (job_dir / "volume" / "zeros").stat().st_size == 100_000


async def test_bomb_by_entry_count(job_dir: Path) -> None:
    limits = replace(LIMITS, max_zip_entries=5)
    with pytest.raises(VolumeError, match="6 entries, more than the limit of 5"):
        await fetch_volume(inline(make_zip([(f"f{i}", b"") for i in range(6)])), job_dir / "volume", limits)


def _understate_sizes(data: bytes, fake_size: int) -> bytes:
    """Rewrite every uncompressed-size field (local and central headers) to `fake_size`."""
    out = bytearray(data)
    pos = 0
    while (pos := out.find(b"PK\x03\x04", pos)) >= 0:
        struct.pack_into("<I", out, pos + 22, fake_size)
        pos += 4
    pos = 0
    while (pos := out.find(b"PK\x01\x02", pos)) >= 0:
        struct.pack_into("<I", out, pos + 24, fake_size)
        pos += 4
    return bytes(out)


async def test_lying_size_header_does_not_bypass_cap(job_dir: Path) -> None:
    limits = replace(LIMITS, max_extracted_bytes=10_000)
    data = _understate_sizes(make_zip([("big", os.urandom(50_000))]), 10)
    with pytest.raises(VolumeError):
        await fetch_volume(inline(data), job_dir / "volume", limits)
    big = job_dir / "volume" / "big"
    assert not big.exists() or big.stat().st_size <= 10_000


async def test_encrypted_entry_rejected(job_dir: Path) -> None:
    data = bytearray(make_zip([("secret", b"x")], compression=zipfile.ZIP_STORED))
    for sig, flag_offset in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        pos = data.find(sig)
        struct.pack_into("<H", data, pos + flag_offset, 1)
    with pytest.raises(VolumeError, match="encrypted"):
        await fetch_volume(inline(bytes(data)), job_dir / "volume", LIMITS)


async def test_not_a_zip_and_not_base64(job_dir: Path) -> None:
    with pytest.raises(VolumeError, match="not a valid zip"):
        await fetch_volume(inline(b"this is not a zip"), job_dir / "volume", LIMITS)
    with pytest.raises(VolumeError, match="base64"):
        await fetch_volume(InlineVolume(contents="abc"), job_dir / "volume", LIMITS)


async def test_inline_over_max_bytes(job_dir: Path) -> None:
    with pytest.raises(VolumeError, match="Input volume too large"):
        await fetch_volume(inline(os.urandom(3000)), job_dir / "volume", replace(LIMITS, max_bytes=1000))


async def test_multi_volume_inline_in_order(job_dir: Path) -> None:
    dest = job_dir / "volume"
    volume = MultiVolume(volumes=[inline(make_zip([("x.txt", b"first")])), inline(make_zip([("x.txt", b"second")]))])
    await fetch_volume(volume, dest, LIMITS)
    assert (dest / "x.txt").read_bytes() == b"second"


def test_throughput_guard_trips_only_after_a_slow_window() -> None:
    now = [0.0]
    guard = ThroughputGuard(min_bytes_per_s=100, window_s=10.0, clock=lambda: now[0])
    now[0] = 5.0
    guard.feed(1)  # inside the first window: no verdict yet
    now[0] = 10.0
    guard.feed(999)  # 1000 bytes / 10 s = 100 B/s: fine, new window starts
    now[0] = 21.0
    with pytest.raises(Retryable, match="too slow"):
        guard.feed(10)
