"""The disk limit of a running job: measure what it holds on this host, kill it past the limit.

What a job holds: its /volume (downloaded for it; read-only to it, so measured once), its
/output and artifacts (walked), its container's own filesystem layer and its log (asked of the
engine). Podman's overlay here has no size option and the host no project quotas, so this is
a check, not a quota, and a writer overshoots by what it writes between a check and the kill.

The old check measured every `disk_check_interval_s` (2 s) and nothing else, so the overshoot
was the write rate times up to 2 s: a `dd` of 4,000 MiB under a 500 MiB limit was stopped
only at 1.7-2.3 GiB on a fast disk. Three things make it small:

* a cheap trigger: every DISK_TRIGGER_POLL_S the used blocks of the filesystems under the job
  dirs are read with statvfs (one syscall). When they grew by a share of the job's headroom
  since the last look, the job dirs (/output, artifacts) are walked at once, at every poll
  while that lasts, and a full measurement (with the engine's size of the container layer) is
  started. That growth is every writer's on the filesystem, so it can only call a look early,
  never skip one (a deletion elsewhere could hide the job's growth): the periodic measurement
  stays.
* an adaptive period: the next full measurement comes sooner when the last ones saw the job
  grow fast, so it lands before the job would reach its limit at that rate; this covers a
  container layer on another filesystem than the jobs dir.
* the walks go on while a full measurement waits for the engine, and when the job dirs alone
  are past the limit the engine is not asked at all.

Full measurements are at least DISK_CHECK_MIN_INTERVAL_S apart, which bounds what the watch
costs podman. A job that exits before a check saw it over its limit is measured once more at
its exit.

The kill itself goes first straight to the container's init process, through a pidfd opened
when the watch starts (checked then to be in the container's cgroup; a pidfd can never signal
another process that reused the number): SIGKILL to a pid namespace's init ends every process
in it at once. Podman's kill (an inspect, then runc) follows for its own bookkeeping; alone it
let a 1 GiB/s writer go on for 150-200 ms on a loaded CI VM, the largest part of the overshoot.
Where the pidfd cannot be had (no pid from the engine, /proc hidden, no CAP_KILL) podman's kill
is all there is. The overshoot is measured in tests/integration/test_executor_disk_limit.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
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


_CONTAINER_ID = re.compile(r"[0-9a-f]{64}")


def open_init_pidfd(pid: int, container_id: str) -> int | None:
    """A pidfd on `pid` if it may be the container's init and we may signal it; None otherwise.

    Refused: a process whose cgroup path does not name the full container id (podman's and
    docker's paths do), and one we may not signal (no CAP_KILL over another uid). Where /proc
    hides the process (systemd's ProtectProc=invisible) the cgroup cannot be read; the caller
    then relies on the engine naming the same pid again after the pidfd exists. A pidfd names
    one process for good: it can never signal another one that reuses the number."""
    if not _CONTAINER_ID.fullmatch(container_id):
        return None
    try:
        fd = os.pidfd_open(pid)
    except OSError:
        return None
    try:
        with open(f"/proc/{pid}/cgroup", "rb") as f:
            cgroups: bytes | None = f.read()
    except OSError:
        cgroups = None
    try:
        signal.pidfd_send_signal(fd, 0)  # alive still (so the read was about it), and ours to signal
    except OSError:
        os.close(fd)
        return None
    if cgroups is not None and container_id.encode() not in cgroups:
        os.close(fd)
        return None
    return fd


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


@dataclass(frozen=True)
class _Mark:
    """What the job held at one look (`used`, bytes) and the watched filesystems' used bytes
    then (`fs`), at `at` on the watch's clock."""

    used: int
    fs: int
    at: float

    def suspect(self, fs_now: int, limit_bytes: int) -> bool:
        """Whether the filesystems grew since this look by a share of the headroom it left
        that calls for another look (their growth is everyone's, so it can only call one)."""
        return fs_now - self.fs >= (limit_bytes - self.used) * DISK_TRIGGER_HEADROOM_FRACTION


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
        self._init_pidfd: int | None = None  # the container's init, for a kill without podman

    async def dirs_bytes(self) -> int:
        """Bytes in the job dirs (/volume, /output, artifacts): exact, and cheap while they
        hold few files."""
        if self._volume_bytes is None:  # the volume does not change once the container runs
            self._volume_bytes = await asyncio.to_thread(disk_use, (self.dirs.volume,))
        return self._volume_bytes + await asyncio.to_thread(disk_use, (self.dirs.output, self.dirs.artifacts))

    async def measure(self) -> tuple[int, int | None]:
        """(bytes in the job dirs, bytes of the container's layer and log) now. When the job
        dirs alone are past the limit the layer is None: the engine is not asked then (its
        answer is the slow part, and the writer goes on while we wait for it)."""
        in_dirs = await self.dirs_bytes()
        self.measurements += 1
        if in_dirs > self.limit_bytes:
            return in_dirs, None
        return in_dirs, await self.engine.disk_bytes(self.container_id)

    async def run(self) -> None:
        """Measure until the job is over its limit, then kill it; runs until cancelled.

        Full measurements (with the engine) come on the adaptive period, and also, at least
        DISK_CHECK_MIN_INTERVAL_S apart, while the filesystems grew since the last one by a
        suspect share of the headroom it left. Between them, while the growth since the last
        look is suspect, the job dirs alone are walked at every poll, also while a full
        measurement waits for the engine: a writer into /output is caught without podman."""
        watched = (self.dirs.output, self.dirs.artifacts, self.dirs.volume)
        layer = 0  # the container's layer and log at the last full measurement
        full_mark: _Mark | None = None  # the last full measurement
        last_at = self.clock()
        # the last look of either kind; before the first one, nothing held: the dirs are walked
        # once the filesystems grew by half the limit, also while the first full one waits
        look_mark = _Mark(0, fs_used_bytes(watched), last_at)
        next_at = last_at  # the first measurement at once: a job may write from its first instant
        full: asyncio.Task[tuple[int, int | None]] | None = None
        launched = _Mark(0, 0, 0.0)
        try:
            await self._open_init()
            while True:
                if full is not None and full.done():
                    try:
                        in_dirs, layer_now = full.result()
                    except Exception:  # noqa: BLE001 - a failed measurement is retried next round
                        log.debug("disk measurement failed job=%s", self.job_uuid, exc_info=True)
                        next_at = self.clock() + self.max_interval_s
                    else:
                        used = in_dirs + (layer_now or 0)
                        if used > self.limit_bytes:
                            await self._kill(used)
                            return
                        layer = layer_now or 0
                        measured_at = self.clock()
                        last_used = full_mark.used if full_mark is not None else None
                        next_at = measured_at + self._next_interval(used, last_used, measured_at - last_at)
                        full_mark, last_at = _Mark(used, launched.fs, launched.at), measured_at
                        if look_mark.at <= full_mark.at:
                            look_mark = full_mark
                    full = None
                now = self.clock()
                fs_now = fs_used_bytes(watched)
                full_suspect = (full_mark is not None and now - last_at >= DISK_CHECK_MIN_INTERVAL_S
                                and full_mark.suspect(fs_now, self.limit_bytes))
                if full is None and (now >= next_at or full_suspect):
                    launched = _Mark(0, fs_now, now)
                    full = asyncio.create_task(self.measure())
                elif look_mark.suspect(fs_now, self.limit_bytes):
                    in_dirs = await self._dirs_bytes_or_zero()
                    if in_dirs > self.limit_bytes:
                        self.measurements += 1
                        await self._kill(in_dirs)
                        return
                    look_mark = _Mark(in_dirs + layer, fs_now, now)
                await asyncio.sleep(DISK_TRIGGER_POLL_S)
        finally:
            if full is not None and not full.done():
                full.cancel()
                await asyncio.gather(full, return_exceptions=True)
            if self._init_pidfd is not None:
                os.close(self._init_pidfd)
                self._init_pidfd = None

    async def _open_init(self) -> None:
        """The pidfd for the direct kill: the engine names the init's pid, the pidfd is opened
        and checked, and the engine must name the same pid, running, once more."""
        try:
            state = await self.engine.state(self.container_id)
            if state is not None and state.pid and state.status == "running":
                fd = await asyncio.to_thread(open_init_pidfd, state.pid, self.container_id)
                if fd is not None:
                    try:
                        again = await self.engine.state(self.container_id)
                    except BaseException:
                        os.close(fd)
                        raise
                    if again is not None and again.pid == state.pid and again.status == "running":
                        self._init_pidfd = fd
                    else:
                        os.close(fd)
        except Exception:  # noqa: BLE001 - without it the kill goes through the engine only
            log.debug("container state unavailable job=%s", self.job_uuid, exc_info=True)
        log.debug("disk watch started job=%s direct_kill=%s", self.job_uuid, self._init_pidfd is not None)

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
            in_dirs, layer = await self.measure()
        except Exception:  # noqa: BLE001 - the running checks stand; a gone container is not over
            log.debug("disk measurement at exit failed job=%s", self.job_uuid, exc_info=True)
            return
        used = in_dirs + (layer or 0)
        if used > self.limit_bytes:
            self.exceeded_bytes = used
            log.warning("job over disk limit at exit job=%s used_mib=%d limit_mib=%d", self.job_uuid, used // MIB,
                        self.limit_bytes // MIB)

    async def _kill(self, used: int) -> None:
        self.exceeded_bytes, self.killed = used, True
        started = self.clock()
        if self._init_pidfd is not None:
            with contextlib.suppress(OSError):  # gone already, or no CAP_KILL: the engine's kill follows
                signal.pidfd_send_signal(self._init_pidfd, signal.SIGKILL)
        await self.engine.kill(self.container_id)
        log.warning("job over disk limit, killed job=%s used_mib=%d limit_mib=%d measurements=%d kill_ms=%d",
                    self.job_uuid, used // MIB, self.limit_bytes // MIB, self.measurements,
                    (self.clock() - started) * 1000)


__all__ = ["DISK_CHECK_MIN_INTERVAL_S", "DiskWatch", "fs_used_bytes"]
