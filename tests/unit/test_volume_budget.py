"""One budget per job: every sub-volume of a multi_volume shares one byte budget and one entry
count, and a multi_volume has a bounded number of sub-volumes. Real archives, real files."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import pytest

from executor_agent.inputs.volume_fetch import VolumeError, VolumeLimits, fetch_volume
from executor_agent.inputs.volume_limits import MAX_SUB_VOLUMES
from horde_protocol.volumes import InlineVolume, MultiVolume
from tests.unit.test_volumes_inline import inline, make_zip

KIB = 1024
ZIP_BYTES = 12 * KIB  # each archive extracts to this; random data, so the ratio check stays out of it
ZIPS = 40  # 480 KiB in all, against a 256 KiB budget: the 40 x 12 MiB vs 256 MiB, scaled down
BUDGET = 256 * KIB


def bytes_under(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def forty_zips() -> MultiVolume:
    return MultiVolume(volumes=[inline(make_zip([(f"part{i}.bin", os.urandom(ZIP_BYTES))]), f"v{i}")
                                for i in range(ZIPS)])


async def test_small_archives_cannot_add_up_past_the_job_budget(tmp_path: Path) -> None:
    dest = tmp_path / "volume"
    # each archive alone is far inside every per-archive and per-download limit
    limits = replace(VolumeLimits(), max_volume_bytes=BUDGET)
    assert ZIP_BYTES < limits.max_extracted_bytes and ZIP_BYTES < limits.max_bytes
    with pytest.raises(VolumeError, match=rf"^Input volume too large: inline volume: all volumes of this job "
                                          rf"together exceed the limit of {BUDGET} bytes$"):
        await fetch_volume(forty_zips(), dest, limits)
    assert bytes_under(dest) <= BUDGET  # stopped while writing, not after
    assert len(list(dest.iterdir())) == BUDGET // ZIP_BYTES + 1  # the 22nd archive is the one refused


async def test_the_same_volumes_fit_a_budget_that_holds_them(tmp_path: Path) -> None:
    dest = tmp_path / "volume"
    await fetch_volume(forty_zips(), dest, replace(VolumeLimits(), max_volume_bytes=ZIPS * ZIP_BYTES))
    assert bytes_under(dest) == ZIPS * ZIP_BYTES
    assert sorted(p.name for p in dest.iterdir()) == sorted(f"v{i}" for i in range(ZIPS))


async def test_declared_size_over_the_remaining_budget_fails_before_writing(tmp_path: Path) -> None:
    dest = tmp_path / "volume"
    volume = MultiVolume(volumes=[inline(make_zip([("a.bin", b"\0" * 3000)]), "a"),
                                 inline(make_zip([("b.bin", b"\0" * 3000)]), "b")])
    with pytest.raises(VolumeError, match="all volumes of this job together exceed the limit of 5000 bytes"):
        await fetch_volume(volume, dest, replace(VolumeLimits(), max_volume_bytes=5000))
    assert not (dest / "b").exists() or not any((dest / "b").iterdir())


async def test_entries_are_counted_over_all_sub_volumes(tmp_path: Path) -> None:
    per_zip = 10
    volume = MultiVolume(volumes=[inline(make_zip([(f"d{i}/f{j}", b"x") for j in range(per_zip)]), f"v{i}")
                                  for i in range(ZIPS)])
    limits = replace(VolumeLimits(), max_volume_entries=300, max_zip_entries=per_zip)  # each zip is at its own cap
    with pytest.raises(VolumeError, match="all volumes of this job together have more than 300 files and directories"):
        await fetch_volume(volume, tmp_path / "volume", limits)
    await fetch_volume(volume, tmp_path / "ok", replace(limits, max_volume_entries=ZIPS * per_zip))


async def test_too_many_sub_volumes_fail_before_any_is_fetched(tmp_path: Path) -> None:
    dest = tmp_path / "volume"
    tiny = make_zip([("x", b"1")])
    volume = MultiVolume(volumes=[inline(tiny, f"v{i}") for i in range(MAX_SUB_VOLUMES + 1)])
    with pytest.raises(VolumeError, match=f"multi_volume has {MAX_SUB_VOLUMES + 1} volumes, more than the limit of "
                                          f"{MAX_SUB_VOLUMES}"):
        await fetch_volume(volume, dest, VolumeLimits())
    assert not any(dest.iterdir())
    await fetch_volume(MultiVolume(volumes=volume.volumes[:MAX_SUB_VOLUMES]), dest, VolumeLimits())
    assert len(list(dest.iterdir())) == MAX_SUB_VOLUMES


async def test_a_legitimate_multi_volume_still_works(tmp_path: Path) -> None:
    dest = tmp_path / "volume"
    volume = MultiVolume(volumes=[
        inline(make_zip([("model/config.json", b"{}"), ("model/weights.bin", os.urandom(50 * KIB))])),
        inline(make_zip([("data/train.csv", b"a,b\n1,2\n")]), "inputs"),
        InlineVolume(contents=inline(make_zip([("run.sh", b"#!/bin/sh\necho hi\n")])).contents, relative_path="code"),
    ])
    await fetch_volume(volume, dest, replace(VolumeLimits(), max_volume_bytes=64 * KIB, max_volume_entries=10))
    assert (dest / "model" / "config.json").read_bytes() == b"{}"
    assert (dest / "inputs" / "data" / "train.csv").read_bytes() == b"a,b\n1,2\n"
    assert (dest / "code" / "run.sh").read_bytes().startswith(b"#!/bin/sh")
