"""Start and stop the miner agent: the order in which its parts come up and go down.

Up: database, hotkey, receipt pages checked against SQLite, executor links, unfinished
jobs reloaded, then the public listener, then READY=1 to systemd. Down (SIGTERM): the
listener closes first so no new job arrives, frames already being handled finish and send
their answers, every validator socket closes with 1001 (going away), then the links;
running jobs stay on their executors and are re-attached by the next start.
"""

from __future__ import annotations

import asyncio
import logging
import signal

import sdnotify
from aiohttp import web

from miner_agent.activity import Activity
from miner_agent.chain.duties import build_chain_duties
from miner_agent.collateral.duty import CollateralDuty
from miner_agent.db import open_db
from miner_agent.fleet.manager import load_manager
from miner_agent.fleet.pool import MANIFEST_HOLD_S, Fleet
from miner_agent.jobs.job_store import JobStore
from miner_agent.jobs.service import JobService
from miner_agent.keys import Signer, load_hotkey
from miner_agent.metrics import MinerMetrics
from miner_agent.miner_config import MinerConfig
from miner_agent.receipts.maintenance import ReceiptMaintenance
from miner_agent.receipts.receipt_store import ReceiptStore
from miner_agent.server.admin import start_admin
from miner_agent.server.app import build_app
from miner_agent.server.conn_guard import KEEPALIVE_TIMEOUT_S, GuardedTCPSite
from miner_agent.server.context import MinerContext
from miner_agent.server.metrics_http import attach_gauges, start_metrics

log = logging.getLogger(__name__)

WATCHDOG_PING_S = 10.0  # well inside the unit's WatchdogSec


class MinerAgent:
    def __init__(self, config: MinerConfig, signer: Signer | None = None) -> None:
        self.config = config
        self.signer = signer
        self.ctx: MinerContext | None = None
        self._runner: web.AppRunner | None = None
        self._admin: web.AppRunner | None = None
        self._metrics: web.AppRunner | None = None
        self._maintenance: asyncio.Task[None] | None = None
        self.metrics_port: int = 0
        self.port: int = 0

    async def start(self) -> None:
        cfg = self.config
        signer = self.signer or load_hotkey(cfg.wallet.path, cfg.wallet.name, cfg.wallet.hotkey)
        conn = open_db(cfg.db_path)
        receipts = ReceiptStore(conn, cfg.receipts_dir, signer)
        receipts.rebuild_pages()
        manager = None
        if cfg.executor_manager.class_path:
            manager = load_manager(cfg.executor_manager.class_path, cfg.executor_manager.options)
        fleet = Fleet(list(cfg.executors), manager=manager,
                      manifest_hold_s=min(MANIFEST_HOLD_S, cfg.miner.executor_lost_after_s))
        jobs_db = JobStore(conn)
        for name in jobs_db.drained() & set(fleet.links):
            fleet.drain(name)
        chain = build_chain_duties(
            cfg.chain, keypair=signer.keypair, allow=cfg.validators.allow, manifest=fleet.manifest,
            listen_port=lambda: self.port, state_dir=cfg.miner.state_dir,
        )
        metrics = MinerMetrics()
        service = JobService(fleet, jobs_db, receipts, metrics, cfg.miner.executor_lost_after_s,
                             is_blacklisted=lambda hotkey: chain.validators.is_blacklisted(hotkey))
        service.restore()
        fleet.start()
        service.start()
        maintenance = ReceiptMaintenance(conn, cfg.receipts_dir, receipts)
        self._maintenance = asyncio.create_task(maintenance.run_forever(), name="receipts-maintenance")
        self.ctx = MinerContext(cfg, signer, fleet, service, receipts, chain, metrics, activity=Activity(conn))
        self.ctx.collateral = CollateralDuty(cfg, chain.backend, signer.hotkey)
        attach_gauges(self.ctx)
        metrics.gauges.extend(self.ctx.collateral.gauges())
        self._admin = await start_admin(self.ctx, cfg.admin_socket)
        if cfg.miner.metrics_enabled:
            self._metrics, self.metrics_port = await start_metrics(self.ctx, cfg.miner.metrics_host, cfg.miner.metrics_port)
        self._runner = web.AppRunner(build_app(self.ctx), access_log=None, handle_signals=False, shutdown_timeout=2.0,
                                     keepalive_timeout=KEEPALIVE_TIMEOUT_S)
        await self._runner.setup()
        site = GuardedTCPSite(self._runner, cfg.miner.listen_host, cfg.miner.listen_port, self.ctx.guard)
        await site.start()
        self.port = site.port
        self.ctx.public_port = self.port
        await chain.start()  # after the bind: the axon announce needs the real port
        await self.ctx.collateral.start()
        log.info(
            "miner-agent started hotkey=%s listen=%s:%d executors=%d validators_allowed=%d chain=%s state_dir=%s",
            signer.hotkey, cfg.miner.listen_host, self.port, len(cfg.executors), len(cfg.validators.allow),
            cfg.chain.backend,
            cfg.miner.state_dir,
        )

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        for runner in (self._admin, self._metrics):
            if runner is not None:
                await runner.cleanup()
        if self._maintenance is not None:
            self._maintenance.cancel()
            await asyncio.gather(self._maintenance, return_exceptions=True)
        if self.ctx is not None:
            running = len(self.ctx.service.jobs)
            if self.ctx.collateral is not None:
                await self.ctx.collateral.stop()
            await self.ctx.chain.stop()
            await self.ctx.service.stop()
            await self.ctx.fleet.stop()
            self.ctx.receipts.conn.close()
            log.info("miner-agent stopped jobs_left_on_executors=%d receipts=%s", running, "kept")


async def serve(config: MinerConfig) -> None:
    """Run until SIGTERM or SIGINT, telling systemd where we are."""
    agent = MinerAgent(config)
    await agent.start()
    notifier = sdnotify.SystemdNotifier()
    notifier.notify(f"READY=1\nSTATUS=serving validators on port {agent.port}")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), WATCHDOG_PING_S)
        except TimeoutError:
            notifier.notify("WATCHDOG=1")
    notifier.notify("STOPPING=1")
    await agent.stop()


