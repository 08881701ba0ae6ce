"""Job-image garbage collection: a docuum equivalent for executor hosts.

Job images are multi-GB and validators send many; the stock executor never removes
one, and its miner host relied on docuum with a 50 GB threshold (field-notes §1 #2).
Here the agent collects every `[image_gc] interval_s`:

* `plan_gc` (pure: images, usage times, disk numbers and a clock in, a list out) decides;
* `ImageGc` feeds it from podman and removes what it returns.

An image is never removed when a container uses it (running or not, ours or not), when
a job of this agent is about to use it, when it is on the preload list
(`[preload] images` plus the list the last preload run wrote), or when it was used (or
first seen by this agent) less than `min_age_s` ago. Of the rest, an image unused for
`max_age_s` goes; and while the image disk is above `disk_high_percent`, the least
recently used go until the projection falls below `disk_low_percent`. Removal is never
forced, so podman itself refuses an image that a container started in the meantime.

"Used" is tracked by this agent in `<state>/image-usage.json` (podman 4.3 records no
last-use time, and an image's creation date says nothing about when it was pulled).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from executor_agent.container.engine import EngineError, ImageInfo
from executor_agent.container.job_spec import normalize_image
from executor_agent.container.podman_engine import Podman

log = logging.getLogger(__name__)

USAGE_FILE = "image-usage.json"
PRELOAD_LIST_FILE = "preload-images.json"  # a JSON list of refs; written by the preload run
ID_KEY_PREFIX = "id:"
MIB = 1024 * 1024


@dataclass(frozen=True)
class GcPolicy:
    min_age_s: float
    max_age_s: float  # 0 = no age-based removal
    disk_high_percent: float
    disk_low_percent: float


@dataclass(frozen=True)
class DiskUsage:
    total_bytes: int
    used_bytes: int

    @property
    def percent(self) -> float:
        return 100.0 * self.used_bytes / self.total_bytes if self.total_bytes else 0.0


@dataclass(frozen=True)
class Removal:
    image: ImageInfo
    reason: str  # "unused" (older than max_age_s) or "disk" (disk pressure, LRU)
    idle_s: float


def canonical_ref(ref: str) -> str:
    """The fully qualified form podman lists: `python` -> `docker.io/library/python:latest`,
    `localhost:5000/a` -> `localhost:5000/a:latest`; digests keep their digest."""
    ref = ref.strip()
    digest = ""
    if "@" in ref:
        ref, _, digest = ref.partition("@")
    else:
        ref = normalize_image(ref)
    name, tag = ref, ""
    if not digest:
        name, _, tag = ref.rpartition(":")
    first = name.split("/", 1)[0]
    if "/" not in name or not ("." in first or ":" in first or first == "localhost"):
        name = f"docker.io/{name}"
    if name.startswith("docker.io/") and name.count("/") == 1:
        name = "docker.io/library/" + name.removeprefix("docker.io/")
    return f"{name}@{digest}" if digest else f"{name}:{tag}"


def last_used(image: ImageInfo, usage: Mapping[str, float]) -> float | None:
    """Latest use recorded for the image's id or any of its names."""
    keys = [ID_KEY_PREFIX + image.image_id, *(canonical_ref(n) for n in image.names)]
    times = [usage[k] for k in keys if k in usage]
    return max(times) if times else None


def plan_gc(images: Iterable[ImageInfo], *, now: float, usage: Mapping[str, float], protected_refs: Iterable[str],
            in_use_ids: set[str], disk: DiskUsage | None, policy: GcPolicy) -> list[Removal]:
    """Which images to remove, in order. Pure: no podman, no clock but `now`."""
    protected = {canonical_ref(r) for r in protected_refs if r.strip()}
    candidates: list[tuple[float, ImageInfo]] = []
    for image in images:
        if image.image_id in in_use_ids:
            continue
        refs = {canonical_ref(n) for n in image.names} | {canonical_ref(d) for d in image.digests}
        if refs & protected:
            continue
        used = last_used(image, usage)
        idle = now - (used if used is not None else now)  # never seen before: as if used now
        if idle < policy.min_age_s:
            continue
        candidates.append((idle, image))
    candidates.sort(key=lambda c: (-c[0], -c[1].size_bytes))  # least recently used first

    removals: list[Removal] = []
    rest: list[tuple[float, ImageInfo]] = []
    for idle, image in candidates:
        if policy.max_age_s and idle >= policy.max_age_s:
            removals.append(Removal(image, "unused", idle))
        else:
            rest.append((idle, image))
    if disk is None or disk.total_bytes <= 0 or disk.percent < policy.disk_high_percent:
        return removals
    projected = disk.used_bytes - sum(r.image.size_bytes for r in removals)
    for idle, image in rest:
        if 100.0 * projected / disk.total_bytes <= policy.disk_low_percent:
            break
        removals.append(Removal(image, "disk", idle))
        projected -= image.size_bytes
    return removals


class ImageUsage:
    """Last-use times (unix seconds) by image id and by canonical name, kept in a JSON file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.times: dict[str, float] = {}
        try:
            raw = json.loads(path.read_text())
            self.times = {str(k): float(v) for k, v in raw.items()} if isinstance(raw, dict) else {}
        except (OSError, ValueError):
            self.times = {}

    def touch(self, key: str, now: float) -> None:
        self.times[key] = max(now, self.times.get(key, 0.0))

    def touch_ref(self, ref: str, now: float) -> None:
        self.touch(canonical_ref(ref), now)

    def first_seen(self, images: Iterable[ImageInfo], now: float) -> None:
        for image in images:
            if last_used(image, self.times) is None:
                self.times[ID_KEY_PREFIX + image.image_id] = now

    def keep_only(self, images: Iterable[ImageInfo]) -> None:
        """Forget what is no longer in storage, so the file does not grow forever."""
        live: set[str] = set()
        for image in images:
            live.add(ID_KEY_PREFIX + image.image_id)
            live.update(canonical_ref(n) for n in image.names)
        self.times = {k: v for k, v in self.times.items() if k in live}

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(self.times, sort_keys=True))
        os.replace(tmp, self.path)


def read_preload_list(path: Path) -> list[str]:
    """The refs the last preload run pulled (a JSON list), or [] if there is no usable file."""
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError):
        return []
    return [str(r) for r in raw if isinstance(r, str)] if isinstance(raw, list) else []


def disk_usage_of(path: str) -> DiskUsage:
    usage = shutil.disk_usage(path)
    return DiskUsage(total_bytes=usage.total, used_bytes=usage.used)


@dataclass(frozen=True)
class GcReport:
    images: int
    removed: list[str]
    freed_bytes: int
    disk_percent: float | None
    errors: int


@dataclass
class GcStats:
    """What the collection has done since the agent started (executor_agent/daemon/metrics_endpoint.py)."""

    runs: int = 0
    failed_runs: int = 0  # a pass that raised (podman unreachable, ...)
    removal_errors: int = 0  # images podman refused to remove
    removed_images: int = 0
    freed_bytes: int = 0
    images: int = 0  # in storage at the last pass
    last_run_unix: float = 0.0  # 0 = no pass yet
    last_success_unix: float = 0.0

    def record(self, report: GcReport, now: float) -> None:
        self.runs += 1
        self.removal_errors += report.errors
        self.removed_images += len(report.removed)
        self.freed_bytes += report.freed_bytes
        self.images = report.images
        self.last_run_unix = self.last_success_unix = now


class ImageGc:
    """Feeds `plan_gc` from podman and carries out its plan."""

    def __init__(self, podman: Podman, policy: GcPolicy, usage: ImageUsage, *,
                 protected_refs: Callable[[], Iterable[str]], active_refs: Callable[[], Iterable[str]],
                 disk_usage: Callable[[str], DiskUsage] = disk_usage_of,
                 clock: Callable[[], float] = time.time) -> None:
        self.podman = podman
        self.policy = policy
        self.usage = usage
        self.protected_refs = protected_refs
        self.active_refs = active_refs
        self.disk_usage = disk_usage
        self.clock = clock
        self.stats = GcStats()

    async def run_once(self, now: float | None = None) -> GcReport:
        now = self.clock() if now is None else now
        images = await self.podman.list_images()
        in_use = await self.podman.image_ids_in_use()
        self.usage.first_seen(images, now)
        for image_id in in_use:
            self.usage.touch(ID_KEY_PREFIX + image_id, now)
        active = list(self.active_refs())
        for ref in active:
            self.usage.touch_ref(ref, now)
        try:
            disk: DiskUsage | None = await asyncio.to_thread(self.disk_usage, await self.podman.graph_root())
        except (OSError, EngineError) as exc:
            log.warning("image gc cannot measure the image disk error=%s", exc)
            disk = None
        plan = plan_gc(images, now=now, usage=self.usage.times, protected_refs=[*self.protected_refs(), *active],
                       in_use_ids=in_use, disk=disk, policy=self.policy)
        removed, freed, errors = [], 0, 0
        for removal in plan:
            image = removal.image
            try:
                for ref in image.names or (image.image_id,):
                    await self.podman.remove_image(ref)
            except EngineError as exc:  # e.g. a container started with it since we listed
                errors += 1
                log.warning("image gc kept image=%s reason=%s error=%s", image.names[:1] or image.image_id[:12],
                            removal.reason, str(exc).replace("\n", " ")[:200])
                continue
            removed.append(image.names[0] if image.names else image.image_id)
            freed += image.size_bytes
            log.info("image gc removed image=%s id=%s reason=%s idle_s=%d size_mib=%d", removed[-1],
                     image.image_id[:12], removal.reason, removal.idle_s, image.size_bytes // MIB)
        self.usage.keep_only(await self.podman.list_images() if removed else images)
        await asyncio.to_thread(self.usage.save)
        report = GcReport(len(images), removed, freed, disk.percent if disk else None, errors)
        log.info("image gc done images=%d removed=%d freed_mib=%d disk_percent=%s errors=%d", report.images,
                 len(removed), freed // MIB, f"{disk.percent:.1f}" if disk else "-", errors)
        return report

    async def loop(self, interval_s: float) -> None:
        """Collect every interval_s, forever (a task the agent cancels on stop)."""
        while True:
            try:
                self.stats.record(await self.run_once(), self.clock())
            except Exception:  # noqa: BLE001 - one failed pass must not end collection
                self.stats.runs += 1
                self.stats.failed_runs += 1
                self.stats.last_run_unix = self.clock()
                log.exception("image gc pass failed")
            await asyncio.sleep(interval_s)


def policy_from(settings: Any) -> GcPolicy:
    return GcPolicy(min_age_s=settings.min_age_s, max_age_s=settings.max_age_s,
                    disk_high_percent=settings.disk_high_percent, disk_low_percent=settings.disk_low_percent)
