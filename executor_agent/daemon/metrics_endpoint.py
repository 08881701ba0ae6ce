"""`/metrics` of the executor agent: its disks, its image collection and its jobs, for the alert rules.

An executor host fills up in two places the miner cannot see: the jobs dir (volumes and outputs)
and podman's image store (multi-GB job images, which imagegc.py collects). Both are measured at
scrape time (two statvfs calls in a worker thread); the collection's counters are the ones
ImageGc keeps. The store's path comes from podman once and is cached; until podman answers, the
image-store samples are left out rather than guessed. node_exporter, if the host runs it, sees the
same filesystems; these samples name the two paths that matter and the GC threshold beside them.

The listener is loopback by default and separate from the miner link (a unix socket); a port
already in use is logged and the agent goes on serving jobs. Prometheus then shows the target down,
which the `ExecutorMetricsDown` rule reports (packaging/prometheus/).
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web

from agent_common.prom_text import Gauge, Labels, render
from executor_agent.container.engine import EngineError
from executor_agent.container.podman_engine import Podman
from executor_agent.daemon.registry import JobRegistry
from executor_agent.executor_config import AgentConfig
from executor_agent.imagegc import GcStats

log = logging.getLogger(__name__)

SHUTDOWN_TIMEOUT_S = 1.0  # a scrape in flight at stop gets this long


@dataclass(frozen=True)
class DiskSample:
    total_bytes: int
    free_bytes: int  # what an unprivileged writer may still use (statvfs f_bavail)

    @property
    def used_bytes(self) -> int:
        return self.total_bytes - self.free_bytes


def disk_sample(path: Path | str) -> DiskSample | None:
    """statvfs of `path`; None when it does not exist (yet) or cannot be read."""
    try:
        usage = shutil.disk_usage(path)
    except OSError:
        return None
    return DiskSample(total_bytes=usage.total, free_bytes=usage.free)


def _one(value: float) -> dict[Labels, float]:
    return {(): float(value)}


@dataclass
class ExecutorMetrics:
    """The samples; built by AgentServices beside what they read."""

    config: AgentConfig
    podman: Podman
    registry: JobRegistry
    gc_stats: GcStats
    started_unix: float = field(default_factory=time.time)
    _graph_root: str | None = None

    async def _image_store_path(self) -> str | None:
        if self._graph_root is None:
            try:
                self._graph_root = await self.podman.graph_root()
            except (OSError, EngineError) as exc:
                log.warning("metrics cannot ask podman for its image store error=%s", exc)
        return self._graph_root

    async def render(self) -> str:
        store_path = await self._image_store_path()
        jobs, store = await asyncio.to_thread(
            lambda: (disk_sample(self.config.jobs_dir), disk_sample(store_path) if store_path else None))
        gc, counters, gc_cfg = self.gc_stats, self.registry.counters, self.config.image_gc
        metrics: list[Gauge] = []
        if jobs is not None:
            metrics += [
                Gauge("executor_agent_jobs_dir_size_bytes", "Size of the filesystem holding jobs_dir",
                      lambda: _one(jobs.total_bytes)),
                Gauge("executor_agent_jobs_dir_free_bytes", "Bytes jobs may still write under jobs_dir",
                      lambda: _one(jobs.free_bytes)),
                Gauge("executor_agent_jobs_dir_free_ratio", "Free share (0..1) of the filesystem holding jobs_dir",
                      lambda: _one(jobs.free_bytes / jobs.total_bytes if jobs.total_bytes else 0.0)),
            ]
        if store is not None:
            metrics += [
                Gauge("executor_agent_image_store_size_bytes", "Size of the filesystem holding podman's image store",
                      lambda: _one(store.total_bytes)),
                Gauge("executor_agent_image_store_used_bytes", "Bytes used on the filesystem of podman's image store",
                      lambda: _one(store.used_bytes)),
                Gauge("executor_agent_image_store_used_ratio",
                      "Used share (0..1) of the image store's filesystem; image GC acts above its disk_high ratio",
                      lambda: _one(store.used_bytes / store.total_bytes if store.total_bytes else 0.0)),
            ]
        metrics += [
            Gauge("executor_agent_image_gc_enabled", "1 if the agent collects job images ([image_gc] enabled)",
                  lambda: _one(1.0 if gc_cfg.enabled else 0.0)),
            Gauge("executor_agent_image_gc_disk_high_ratio", "[image_gc] disk_high_percent / 100",
                  lambda: _one(gc_cfg.disk_high_percent / 100.0)),
            Gauge("executor_agent_image_gc_runs_total", "Image GC passes since start", lambda: _one(gc.runs),
                  kind="counter"),
            Gauge("executor_agent_image_gc_failed_runs_total", "Image GC passes that failed (see the journal)",
                  lambda: _one(gc.failed_runs), kind="counter"),
            Gauge("executor_agent_image_gc_removal_errors_total", "Images podman refused to remove",
                  lambda: _one(gc.removal_errors), kind="counter"),
            Gauge("executor_agent_image_gc_removed_images_total", "Images removed since start",
                  lambda: _one(gc.removed_images), kind="counter"),
            Gauge("executor_agent_image_gc_freed_bytes_total", "Bytes of images removed since start",
                  lambda: _one(gc.freed_bytes), kind="counter"),
            Gauge("executor_agent_image_gc_last_run_timestamp_seconds", "Unix time of the last GC pass (0 = none yet)",
                  lambda: _one(gc.last_run_unix)),
            Gauge("executor_agent_images", "Images in podman's store at the last GC pass", lambda: _one(gc.images)),
            Gauge("executor_agent_jobs_running", "Jobs holding a slot", lambda: _one(self.registry.active_count())),
            Gauge("executor_agent_slots", "Jobs this host may run at once", lambda: _one(self.config.slots)),
            Gauge("executor_agent_jobs_total", "Jobs submitted here since start, and how they ended",
                  lambda: {(("outcome", "submitted"),): counters.submitted, (("outcome", "finished"),): counters.finished,
                           (("outcome", "failed"),): counters.failed,
                           (("outcome", "horde_failed"),): counters.horde_failed},
                  kind="counter"),
            Gauge("executor_agent_start_time_seconds", "Unix time this executor-agent process started",
                  lambda: _one(self.started_unix)),
        ]
        return render(metrics)


class MetricsEndpoint:
    """Serves ExecutorMetrics on `[metrics] host:port` while `run()` is awaited (a services task)."""

    def __init__(self, metrics: ExecutorMetrics, host: str, port: int) -> None:
        self.metrics, self.host, self.port = metrics, host, port
        self.bound_port: int | None = None  # set once listening (port 0 picks one)

    async def _handle(self, request: web.Request) -> web.Response:
        return web.Response(text=await self.metrics.render(), content_type="text/plain", charset="utf-8",
                            headers={"X-Content-Type-Options": "nosniff"})

    async def run(self) -> None:
        app = web.Application()
        app.router.add_get("/metrics", self._handle)
        runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=SHUTDOWN_TIMEOUT_S)
        await runner.setup()
        try:
            site = web.TCPSite(runner, self.host, self.port)
            try:
                await site.start()
            except OSError as exc:
                log.error("metrics not served host=%s port=%d error=%r; jobs go on. Free the port or set "
                          "[metrics] port (or enabled = false) in executor-agent.toml", self.host, self.port,
                          exc.strerror or str(exc))
                return
            server = getattr(site, "_server", None)
            self.bound_port = server.sockets[0].getsockname()[1] if server and server.sockets else self.port
            log.info("metrics listening host=%s port=%d", self.host, self.bound_port)
            await asyncio.Event().wait()  # until the services stop cancel us
        finally:
            await runner.cleanup()
