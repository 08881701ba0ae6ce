"""Plain HTTP on the axon port: receipt pages (`/receipts/<page>.jsonl`) and `/version`.

Validators fetch receipt pages incrementally with `Range: bytes=<n>-` and treat anything
but 206 + Content-Range (or 416 when nothing is new, 404 when the page does not exist)
as a transfer error, so pages are served by aiohttp's static file response, which
implements Range, 206, 416 and a pre-compressed `.gz` sibling exactly like a static
file server. Names are checked strictly: only `<digits>.jsonl` maps to a file.
"""

from __future__ import annotations

import re

from aiohttp import web

from miner_agent import __version__
from miner_agent.server.context import CTX

_PAGE_NAME = re.compile(r"^[0-9]{1,12}\.jsonl$")


async def receipts_page(request: web.Request) -> web.StreamResponse:
    name = request.match_info["name"]
    if not _PAGE_NAME.match(name):
        raise web.HTTPNotFound()
    path = request.app[CTX].receipts.pages_dir / name
    if not path.is_file():
        raise web.HTTPNotFound()
    return web.FileResponse(path, headers={"Content-Type": "application/jsonl"})


async def version(request: web.Request) -> web.Response:
    return web.json_response({"miner_version": __version__, "runner_version": __version__})
