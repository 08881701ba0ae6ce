"""`/metrics` on its own listener (loopback by default), and the gauges read at scrape time."""

from __future__ import annotations

import time
from collections import Counter

from aiohttp import web

from miner_agent.fleet.connection import LinkState
from miner_agent.fleet.pool import Fleet
from miner_agent.metrics import Gauge
from miner_agent.server.context import CTX, MinerContext

VALIDATOR_SEEN_WINDOW_S = 3600.0  # doctor's "connected in the last hour", as a gauge


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
        *activity_gauges(ctx),
    ]


def executor_link_states(fleet: Fleet) -> dict:
    """1 per configured executor whose link is up, 0 otherwise: what names the host to look at."""
    return {(("executor", e.name), ("executor_class", str(e.executor_class.value))):
            1.0 if fleet.links[e.name].state is LinkState.UP else 0.0 for e in fleet.entries}


def activity_gauges(ctx: MinerContext) -> list[Gauge]:
    """Validator activity (miner_agent/activity.py) and the per-executor link, for the alert rules.

    Only hotkeys that are validators now count (permit or allowlist): a `miner-agent self-test`
    connection must not make a miner that no validator reaches look seen. A time that never
    happened reads 0 (a timestamp alert then fires as for a very old one), and
    `miner_agent_start_time_seconds` lets a rule wait out the first hour after a fresh install."""
    activity, m = ctx.activity, ctx.metrics

    def validator_times() -> list[float]:
        validators = ctx.validators
        return [t for hotkey, t in activity.last_connected().items() if hotkey in validators]

    def seen_within(window_s: float) -> dict:
        since = time.time() - window_s
        return {(): float(sum(1 for t in validator_times() if t >= since))}

    return [
        Gauge("miner_agent_executor_up", "1 if the link to this executor is up, else 0",
              lambda: executor_link_states(ctx.fleet)),
        Gauge("miner_agent_validator_last_seen_timestamp_seconds",
              "Unix time of the last authentication by a validator (self-test keys aside; 0 = never, kept across restarts)",
              lambda: {(): max(validator_times(), default=0.0)}),
        Gauge("miner_agent_validators_seen_last_hour", "Validators that authenticated in the last hour",
              lambda: seen_within(VALIDATOR_SEEN_WINDOW_S)),
        Gauge("miner_agent_validator_auth_total", "Validator websocket authentications since start",
              lambda: {(): float(activity.connections)}, kind="counter"),
        Gauge("miner_agent_receipt_pages_last_fetch_timestamp_seconds",
              "Unix time of the last receipt page request (0 = never, kept across restarts)",
              lambda: {(): activity.last_page_fetch() or 0.0}),
        Gauge("miner_agent_receipt_page_fetches_total", "Receipt page requests since start (404s included)",
              lambda: {(): float(activity.page_fetches)}, kind="counter"),
        Gauge("miner_agent_start_time_seconds", "Unix time this miner-agent process started",
              lambda: {(): m.started_unix}),
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
