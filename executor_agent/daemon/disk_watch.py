"""The disk limit of a running job: measure what it holds on this host, kill it past the limit.

What a job holds: its /volume (downloaded for it; read-only to it, so measured once), its
/output and artifacts (walked), its container's own filesystem layer and its log (asked of the
engine). Podman's overlay here has no size option and the host no project quotas, so this is
a check, not a quota, and a writer overshoots by what it writes between a check and the kill.

The old check measured every `disk_check_interval_s` (2 s) and nothing else, so the overshoot
was the write rate times up to 2 s: a `dd` of 4,000 MiB under a 500 MiB limit was stopped
only at 1.7-2.3 GiB on a fast disk. Two things make it small:

* a cheap trigger: every DISK_TRIGGER_POLL_S the used blocks of the filesystems under the job
  dirs are read with statvfs (one syscall). When they grew by a share of the job's headroom
  since the last measurement, the job is measured at once. That growth is every writer's on
  the filesystem, so it can only call a measurement early, never skip one (a deletion
  elsewhere could hide the job's growth): the periodic measurement stays.
* an adaptive period: the next measurement comes sooner when the last ones saw the job grow
  fast, so it lands before the job would reach its limit at that rate; this covers a
  container layer on another filesystem than the jobs dir.

Measurements are at least DISK_CHECK_MIN_INTERVAL_S apart, which bounds what the watchdog
costs podman. The overshoot is then about the write rate times (DISK_CHECK_MIN_INTERVAL_S +
one measurement + the kill): measured in tests/integration/test_executor_disk_limit.py.
A job that exits before a check saw it over its limit is measured once more at its exit.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

from executor_agent.container.engine import ContainerEngine
from executor_agent.daemon.jobdirs import JobDirs, disk_use

log = logging.getLogger(__name__)

MIB = 1024 * 1024
# How often the statvfs trigger looks. One syscall per filesystem, in the event loop: 100 per
# second cost nothing measurable, and bound how late a burst from a quiet job is noticed.
DISK_TRIGGER_POLL_S = 0.01
# Measure at once when the job dirs' filesystems grew by this share of the job's headroom
# since the last measurement: half, so a steady writer is measured at least twice more before
# it can reach its limit.
DISK_TRIGGER_HEADROOM_FRACTION = 0.5
# The least time between two measurements. One costs podman a walk of the container's layer
# and us one of /output (about 10 ms each here), so this caps the watchdog at 20 a second
# per job while a job is close to its limit, and is most of the overshoot: at 1 GiB/s, 50 MiB.
DISK_CHECK_MIN_INTERVAL_S = 0.05
# The adaptive period aims the next measurement at this share of the time the job would take
# to reach its limit at the growth rate last seen.
DISK_RATE_HEADROOM_FRACTION = 0.5


def fs_used_bytes(paths: tuple[Path, ...]) -> int:
    """Used bytes of the filesystems holding `paths`, each filesystem counted once."""
    seen: set[int] = set()
    total = 0
    for path in paths:
        try:
            device = os.stat(path).st_dev
            if device in seen:
                continue
            seen.add(device)
            st = os.statvfs(path)
        except OSError:
            continue
        total += (st.f_blocks - st.f_bfree) * st.f_frsize
    return total


class DiskWatch:
    """Watches one container of one job against `limit_bytes` until it exits or is killed.
    `exceeded_bytes` is what was measured when it was found over the limit (None: it was not)."""

    def __init__(self, job_uuid: str, dirs: JobDirs, engine: ContainerEngine, container_id: str,
                 limit_bytes: int, max_interval_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.job_uuid = job_uuid
        self.dirs = dirs
        self.engine = engine
        self.container_id = container_id
        self.limit_bytes = limit_bytes
        self.max_interval_s = max(max_interval_s, DISK_CHECK_MIN_INTERVAL_S)
        self.clock = clock
        self.exceeded_bytes: int | None = None
        self.killed = False  # the watch killed the container (rather than finding it over at its exit)
        self.measurements = 0
        self._volume_bytes: int | None = None

    async def dirs_bytes(self) -> int:
        """Bytes in the job dirs (/volume, /output, artifacts): exact, and cheap while they
        hold few files."""
        if self._volume_bytes is None:  # the volume does not change once the container runs
            self._volume_bytes = await asyncio.to_thread(disk_use, (self.dirs.volume,))
        return self._volume_bytes + await asyncio.to_thread(disk_use, (self.dirs.output, self.dirs.artifacts))

    async def measure(self) -> int:
        """Bytes the job holds on this host now. When the job dirs alone are past the limit,
        just those: the engine is not asked then (its answer is the slow part, and the writer
        goes on while we wait for it)."""
        in_dirs = await self.dirs_bytes()
        self.measurements += 1
        if in_dirs > self.limit_bytes:
            return in_dirs
        return in_dirs + await self.engine.disk_bytes(self.container_id)

    async def run(self) -> None:
        """Measure until the job is over its limit, then kill it; runs until cancelled.

        Full measurements (with the engine) come on the adaptive period, and also, at least
        DISK_CHECK_MIN_INTERVAL_S apart, while the filesystems' growth since the last one is
        a suspect share of the headroom it left. While suspect, the job dirs alone are also
        walked at every poll, also while a full measurement waits for the engine: a writer
        into /output is caught without waiting for podman."""
        watched = (self.dirs.output, self.dirs.artifacts, self.dirs.volume)
        last_used: int | None = None
        last_at = self.clock()
        next_at = last_at  # the first measurement at once: a job may write from its first instant
        fs_base = fs_used_bytes(watched)
        full: asyncio.Task[int] | None = None
        try:
            while True:
                if full is not None and full.done():
                    try:
                        used = full.result()
                    except Exception:  # noqa: BLE001 - a failed measurement is retried next round
                        log.debug("disk measurement failed job=%s", self.job_uuid, exc_info=True)
                        next_at = self.clock() + self.max_interval_s
                    else:
                        if used > self.limit_bytes:
                            await self._kill(used)
                            return
                        measured_at = self.clock()
                        next_at = measured_at + self._next_interval(used, last_used, measured_at - last_at)
                        last_used, last_at = used, measured_at
                    full = None
                now = self.clock()
                suspect = (last_used is not None and fs_used_bytes(watched) - fs_base
                           >= (self.limit_bytes - last_used) * DISK_TRIGGER_HEADROOM_FRACTION)
                if full is None and (now >= next_at or (suspect and now - last_at >= DISK_CHECK_MIN_INTERVAL_S)):
                    fs_base = fs_used_bytes(watched)
                    full = asyncio.create_task(self.measure())
                elif suspect:
                    in_dirs = await self._dirs_bytes_or_zero()
                    if in_dirs > self.limit_bytes:
                        self.measurements += 1
                        await self._kill(in_dirs)
                        return
                await asyncio.sleep(DISK_TRIGGER_POLL_S)
        finally:
            if full is not None and not full.done():
                full.cancel()
                await asyncio.gather(full, return_exceptions=True)

    async def _dirs_bytes_or_zero(self) -> int:
        try:
            return await self.dirs_bytes()
        except OSError:
            return 0

    def _next_interval(self, used: int, last_used: int | None, elapsed_s: float) -> float:
        """The max period, shortened so that at the growth rate just seen the next measurement
        comes while the job still has DISK_RATE_HEADROOM_FRACTION of its time to the limit."""
        if last_used is None or used <= last_used or elapsed_s <= 0:
            return self.max_interval_s
        rate = (used - last_used) / elapsed_s
        to_limit_s = (self.limit_bytes - used) / rate
        return min(self.max_interval_s, max(DISK_CHECK_MIN_INTERVAL_S, to_limit_s * DISK_RATE_HEADROOM_FRACTION))

    async def at_exit(self) -> None:
        """The container has exited: one last measurement, for a job that wrote past its limit
        and ended between two checks."""
        if self.exceeded_bytes is not None:
            return
        try:
            used = await self.measure()
        except Exception:  # noqa: BLE001 - the running checks stand; a gone container is not over
            log.debug("disk measurement at exit failed job=%s", self.job_uuid, exc_info=True)
            return
        if used > self.limit_bytes:
            self.exceeded_bytes = used
            log.warning("job over disk limit at exit job=%s used_mib=%d limit_mib=%d", self.job_uuid, used // MIB,
                        self.limit_bytes // MIB)

    async def _kill(self, used: int) -> None:
        self.exceeded_bytes, self.killed = used, True
        started = self.clock()
        await self.engine.kill(self.container_id)
        log.warning("job over disk limit, killed job=%s used_mib=%d limit_mib=%d measurements=%d kill_ms=%d",
                    self.job_uuid, used // MIB, self.limit_bytes // MIB, self.measurements,
                    (self.clock() - started) * 1000)


__all__ = ["DISK_CHECK_MIN_INTERVAL_S", "DiskWatch", "fs_used_bytes"]
