"""The local admin API: a unix socket (mode 0600) for the operator's CLI, never the public port.

JSON over HTTP on the socket, so `curl --unix-socket` works too:
    GET  /status                      executors, running jobs, manifest, receipts
    GET  /doctor                      what `miner-agent doctor` needs from us, each executor's report included
    POST /executors/<name>/drain      finish running jobs, take no new one (kept across restarts)
    POST /executors/<name>/undrain
    POST /selftest/key                one-time validator key for `miner-agent self-test`
    DELETE /selftest/key/<hotkey>     revoke it when the self-test ends
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from aiohttp import web
from bittensor_wallet import Keypair

from miner_agent import __version__
from miner_agent.server.context import CTX, MinerContext

log = logging.getLogger(__name__)


async def status(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    now = time.monotonic()
    fleet = ctx.fleet
    executors = [
        {
            "name": e.name,
            "executor_class": str(e.executor_class.value),
            "mode": e.mode,
            "link": fleet.links[e.name].state.value,
            "last_error": fleet.links[e.name].last_error,
            "down_for_s": round(fleet.down_for(e.name, now), 1),
            "slots": fleet.slots(e.name),
            "running_jobs": sorted(fleet.jobs[e.name]),
            "drained": e.name in fleet.drained,
        }
        for e in fleet.entries
    ]
    jobs = [
        {"job_uuid": uuid, "validator": job.validator, "executor": job.executor_name, "state": job.machine.state.value}
        for uuid, job in ctx.service.jobs.items()
    ]
    return web.json_response({
        "version": __version__,
        "hotkey": ctx.signer.hotkey,
        "port": ctx.public_port,
        "manifest": fleet.manifest(now),
        "executors": executors,
        "jobs": jobs,
        "receipts": ctx.receipts.count(),
        "validator_connections": ctx.metrics.ws_open,
        "chain": ctx.chain.status(),
        "collateral": ctx.collateral.status() if ctx.collateral is not None else None,
    })


async def _set_drain(request: web.Request, on: bool) -> web.Response:
    ctx = request.app[CTX]
    name = request.match_info["name"]
    if name not in ctx.fleet.links:
        known = ", ".join(sorted(ctx.fleet.links)) or "none"
        return web.json_response({"error": f"no executor named {name!r} (configured: {known})"}, status=404)
    ctx.fleet.drain(name, on)
    ctx.service.jobs_db.set_drained(name, on)
    return web.json_response({"name": name, "drained": on, "running_jobs": len(ctx.fleet.jobs[name])})


async def drain(request: web.Request) -> web.Response:
    return await _set_drain(request, True)


async def undrain(request: web.Request) -> web.Response:
    return await _set_drain(request, False)


SELFTEST_KEY_TTL_S = 600  # a self-test key is good for ten minutes, then a new one is needed


async def selftest_key(request: web.Request) -> web.Response:
    """A fresh validator key the public port accepts for `SELFTEST_KEY_TTL_S`: the self-test
    acts as a validator without any real validator's key, and only a local root (or
    miner-agent user) can get one, because only they can open this socket."""
    ctx = request.app[CTX]
    mnemonic = Keypair.generate_mnemonic()
    hotkey = Keypair.create_from_mnemonic(mnemonic).ss58_address
    ctx.selftest_keys[hotkey] = time.monotonic() + SELFTEST_KEY_TTL_S
    log.info("self-test key issued validator=%s ttl_s=%d", hotkey, SELFTEST_KEY_TTL_S)
    return web.json_response({
        "mnemonic": mnemonic, "hotkey": hotkey, "miner_hotkey": ctx.signer.hotkey,
        "port": ctx.public_port, "ttl_s": SELFTEST_KEY_TTL_S, "preload_images": ctx.preload_images(),
    })


async def selftest_key_revoke(request: web.Request) -> web.Response:
    hotkey = request.match_info["hotkey"]
    request.app[CTX].selftest_keys.pop(hotkey, None)
    return web.json_response({"revoked": hotkey})


async def doctor(request: web.Request) -> web.Response:
    from miner_agent.doctor.live import live_facts  # only doctor pays for the import

    facts = await live_facts(request.app[CTX])
    return web.json_response(text=facts.model_dump_json())


def build_admin_app(ctx: MinerContext) -> web.Application:
    app = web.Application()
    app[CTX] = ctx
    app.router.add_get("/status", status)
    app.router.add_get("/doctor", doctor)
    app.router.add_post("/executors/{name}/drain", drain)
    app.router.add_post("/executors/{name}/undrain", undrain)
    app.router.add_post("/selftest/key", selftest_key)
    app.router.add_delete("/selftest/key/{hotkey}", selftest_key_revoke)
    return app


async def start_admin(ctx: MinerContext, path: Path) -> web.AppRunner:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() or path.is_socket():
        path.unlink()
    runner = web.AppRunner(build_admin_app(ctx), access_log=None, handle_signals=False, shutdown_timeout=1.0)
    await runner.setup()
    old = os.umask(0o177)
    try:
        await web.UnixSite(runner, str(path)).start()
    finally:
        os.umask(old)
    return runner
