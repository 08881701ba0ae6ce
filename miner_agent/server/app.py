"""The aiohttp application validators talk to: routes only, no state of its own."""

from __future__ import annotations

from aiohttp import web

from miner_agent.server.conn_guard import GUARD, header_seen
from miner_agent.server.context import CTX, MinerContext
from miner_agent.server.http import receipts_page, version
from miner_agent.server.queries import add_query_routes
from miner_agent.server.validator_ws import close_validator_sockets, validator_interface


def build_app(ctx: MinerContext) -> web.Application:
    app = web.Application(client_max_size=1024**2, middlewares=[header_seen])
    app[CTX] = ctx
    app[GUARD] = ctx.guard
    app.router.add_get("/v0.1/validator_interface/{hotkey}", validator_interface)
    app.router.add_get("/receipts/{name}", receipts_page)
    app.router.add_get("/version", version)
    add_query_routes(app)  # /v0.1/manifest, /v0.1/hotkey
    app.on_shutdown.append(close_validator_sockets)
    return app
