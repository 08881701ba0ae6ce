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

It is a few lines of asyncio rather than aiohttp.web: one GET a scrape, answered and closed, is all
Prometheus asks, and an idle agent then need not import aiohttp at all (~13 MiB resident, issue 14:
aiohttp is loaded with the first job's download or upload). What a peer can make it hold is
bounded: `MAX_REQUEST_HEAD_BYTES` of request, `REQUEST_TIMEOUT_S` to send it, `MAX_SCRAPES`
connections at once (more are closed unanswered).
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from agent_common.prom_text import Gauge, Labels, render
from executor_agent.container.engine import EngineError
from executor_agent.container.podman_engine import Podman
from executor_agent.daemon.registry import JobRegistry
from executor_agent.executor_config import AgentConfig
from executor_agent.imagegc import GcStats

log = logging.getLogger(__name__)

MAX_REQUEST_HEAD_BYTES = 8 * 1024  # a scrape's request line and headers are ~200 bytes
REQUEST_TIMEOUT_S = 10.0  # Prometheus's default scrape_timeout: longer is not a scrape
MAX_SCRAPES = 8  # connections served at once; Prometheus keeps one per target and scrape


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
        self._open: set[asyncio.StreamWriter] = set()  # connections being served

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            if len(self._open) >= MAX_SCRAPES:
                return
            self._open.add(writer)
            try:
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), REQUEST_TIMEOUT_S)
                writer.write(await self._answer(head))
                await asyncio.wait_for(writer.drain(), REQUEST_TIMEOUT_S)
            except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ConnectionError):
                pass  # not a scrape, or gone: nothing to answer
            finally:
                self._open.discard(writer)
        finally:
            writer.close()

    async def _answer(self, head: bytes) -> bytes:
        method, _, rest = head.partition(b" ")
        target = rest.partition(b" ")[0].partition(b"?")[0]
        if target != b"/metrics":
            return _response(b"404 Not Found", b"only /metrics is served here\n")
        if method not in (b"GET", b"HEAD"):
            return _response(b"405 Method Not Allowed", b"GET /metrics\n", b"Allow: GET, HEAD\r\n")
        body = (await self.metrics.render()).encode("utf-8")
        return _response(b"200 OK", body, head_only=method == b"HEAD")

    async def run(self) -> None:
        try:
            server = await asyncio.start_server(self._serve, self.host, self.port, limit=MAX_REQUEST_HEAD_BYTES)
        except OSError as exc:
            log.error("metrics not served host=%s port=%d error=%r; jobs go on. Free the port or set "
                      "[metrics] port (or enabled = false) in executor-agent.toml", self.host, self.port,
                      exc.strerror or str(exc))
            return
        try:
            self.bound_port = server.sockets[0].getsockname()[1] if server.sockets else self.port
            log.info("metrics listening host=%s port=%d", self.host, self.bound_port)
            await asyncio.Event().wait()  # until the services stop cancel us
        finally:
            server.close()
            for writer in list(self._open):  # a scrape still reading ends now, not cancelled at loop close
                writer.close()


def _response(status: bytes, body: bytes, extra_headers: bytes = b"", head_only: bool = False) -> bytes:
    """An HTTP/1.1 answer that closes the connection: Prometheus opens one per scrape anyway."""
    headers = (b"HTTP/1.1 " + status + b"\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n"
               b"X-Content-Type-Options: nosniff\r\nContent-Length: " + str(len(body)).encode() +
               b"\r\nConnection: close\r\n" + extra_headers + b"\r\n")
    return headers if head_only else headers + body
