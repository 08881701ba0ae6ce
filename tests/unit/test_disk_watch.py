"""The disk watch (executor_agent/daemon/disk_watch.py) on real files under tmp_path with a
scripted engine: what it counts, when it asks the engine, when it kills, the check at exit,
and that the direct kill never takes a process outside the container."""

from __future__ import annotations

import asyncio
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from executor_agent.container.engine import ContainerState
from executor_agent.daemon.disk_watch import DISK_CHECK_MIN_INTERVAL_S, DiskWatch, open_init_pidfd
from executor_agent.daemon.jobdirs import JobDirs

MIB = 1024 * 1024
CONTAINER_ID = "c" * 64
LIMIT = 4 * MIB
KILL_WAIT_S = 5.0  # far more than the watch needs to see a file of the job dirs


class ScriptedEngine:
    """`disk_bytes` answers `layer`; `kill` is recorded."""

    def __init__(self, layer: int = 0) -> None:
        self.layer = layer
        self.disk_calls = 0
        self.killed: list[str] = []

    async def disk_bytes(self, container_id: str) -> int:
        self.disk_calls += 1
        return self.layer

    async def kill(self, container_id: str) -> None:
        self.killed.append(container_id)

    async def state(self, container_id: str) -> ContainerState:
        return ContainerState(container_id, "running", None)  # no pid: the engine's kill only


def job_dirs(tmp_path: Path) -> JobDirs:
    dirs = JobDirs(tmp_path / "job")
    for d in (dirs.volume, dirs.output, dirs.artifacts):
        d.mkdir(parents=True)
    return dirs


def write(path: Path, size: int) -> None:
    with open(path, "wb") as f:  # real blocks: zeros written, not a sparse file
        f.write(bytes(size))
        f.flush()
        os.fsync(f.fileno())


def watch(dirs: JobDirs, engine: Any, max_interval_s: float = 60.0) -> DiskWatch:
    return DiskWatch("job", dirs, engine, CONTAINER_ID, LIMIT, max_interval_s)


async def test_a_file_in_output_past_the_limit_is_killed_without_asking_the_engine(tmp_path: Path) -> None:
    dirs, engine = job_dirs(tmp_path), ScriptedEngine()
    w = watch(dirs, engine)
    task = asyncio.create_task(w.run())
    await asyncio.sleep(0.1)  # the first full measurement, at once
    assert engine.disk_calls == 1
    write(dirs.output / "big", LIMIT + MIB)
    await asyncio.wait_for(task, KILL_WAIT_S)  # seen through the statvfs trigger, not the 60 s period
    assert engine.killed == [CONTAINER_ID]
    assert w.killed and w.exceeded_bytes is not None and w.exceeded_bytes > LIMIT
    assert engine.disk_calls == 1  # the job dirs alone were past the limit: podman was not asked


async def test_layer_growth_is_caught_by_the_full_measurement(tmp_path: Path) -> None:
    dirs, engine = job_dirs(tmp_path), ScriptedEngine()
    w = watch(dirs, engine, max_interval_s=0.2)
    task = asyncio.create_task(w.run())
    await asyncio.sleep(0.3)
    assert engine.killed == []
    engine.layer = LIMIT + 1
    await asyncio.wait_for(task, KILL_WAIT_S)
    assert engine.killed == [CONTAINER_ID] and w.exceeded_bytes == LIMIT + 1


async def test_volume_counts_and_a_job_over_at_its_exit_is_over(tmp_path: Path) -> None:
    dirs, engine = job_dirs(tmp_path), ScriptedEngine(layer=2 * MIB)
    write(dirs.volume / "model.bin", 3 * MIB)  # 3 + 2 > 4 MiB; either alone is not
    w = watch(dirs, engine)
    await w.at_exit()
    assert w.exceeded_bytes is not None and w.exceeded_bytes >= 5 * MIB
    assert not w.killed and engine.killed == []  # it had exited already


async def test_a_job_under_its_limit_at_exit_is_not_over(tmp_path: Path) -> None:
    dirs, engine = job_dirs(tmp_path), ScriptedEngine(layer=MIB)
    write(dirs.output / "result", MIB)
    w = watch(dirs, engine)
    await w.at_exit()
    assert w.exceeded_bytes is None


@pytest.mark.parametrize(("used", "last", "elapsed", "expected"), [
    (MIB, None, 1.0, 60.0),  # no rate yet: the period
    (MIB, 2 * MIB, 1.0, 60.0),  # shrinking: the period
    (2 * MIB, MIB, 1.0, 1.0),  # 1 MiB/s, 2 MiB left: half of the 2 s to the limit
    (LIMIT - 1, 0, 0.001, DISK_CHECK_MIN_INTERVAL_S),  # about to cross: the floor
])
def test_the_period_shortens_with_the_growth_rate(used: int, last: int | None, elapsed: float,
                                                  expected: float) -> None:
    w = watch(JobDirs(Path("/nonexistent")), ScriptedEngine())
    assert w._next_interval(used, last, elapsed) == pytest.approx(expected)


def test_the_direct_kill_never_takes_a_process_outside_the_container() -> None:
    bystander = subprocess.Popen(["sleep", "30"])
    try:
        assert open_init_pidfd(bystander.pid, CONTAINER_ID) is None  # its cgroup does not name the container
        assert open_init_pidfd(bystander.pid, "not-a-container-id") is None
        assert open_init_pidfd(2**22 + 1, CONTAINER_ID) is None  # above pid_max: no such process
        assert bystander.poll() is None
    finally:
        bystander.kill()
        bystander.wait()
