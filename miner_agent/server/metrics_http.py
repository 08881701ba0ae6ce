"""`/metrics` on its own listener (loopback by default), and the gauges read at scrape time."""

from __future__ import annotations

import time
from collections import Counter

from aiohttp import web

from miner_agent.fleet.connection import LinkState
from miner_agent.metrics import Gauge
from miner_agent.server.context import CTX, MinerContext


def attach_gauges(ctx: MinerContext) -> None:
    fleet, service, receipts, m = ctx.fleet, ctx.service, ctx.receipts, ctx.metrics

    def executors_up() -> dict:
        up: Counter[str] = Counter({str(e.executor_class.value): 0 for e in fleet.entries})
        for e in fleet.entries:
            if fleet.links[e.name].state is LinkState.UP:
                up[str(e.executor_class.value)] += 1
        return {(("executor_class", cls),): n for cls, n in up.items()}

    def advertised() -> dict:
        return {(("executor_class", cls),): n for cls, n in fleet.manifest(time.monotonic()).items()}

    m.gauges = [
        Gauge("miner_agent_executors_up", "Executors whose link is up, by class", executors_up),
        Gauge("miner_agent_manifest_executors", "Executors advertised in the manifest, by class", advertised),
        Gauge("miner_agent_jobs_running", "Jobs holding an executor slot", lambda: {(): len(service.jobs)}),
        Gauge("miner_agent_receipts_stored", "Receipts in the database", lambda: {(): receipts.count()}),
        Gauge("miner_agent_validator_connections", "Open validator websockets", lambda: {(): m.ws_open}),
    ]


async def metrics(request: web.Request) -> web.Response:
    return web.Response(text=request.app[CTX].metrics.render(), content_type="text/plain", charset="utf-8",
                        headers={"X-Content-Type-Options": "nosniff"})


async def start_metrics(ctx: MinerContext, host: str, port: int) -> tuple[web.AppRunner, int]:
    app = web.Application()
    app[CTX] = ctx
    app.router.add_get("/metrics", metrics)
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    server = getattr(site, "_server", None)
    bound = server.sockets[0].getsockname()[1] if server and server.sockets else port
    return runner, bound
