"""`GET /v0.1/manifest` and `GET /v0.1/hotkey` on the validator port: the websocket's two queries as HTTP.

Upstream ComputeHorde moves these two queries off the websocket (PR #672, "Query miner main hotkey
and manifest via HTTP instead of websocket"); its miner answers `{"manifest": {"<executor class>":
<count>}}` and `{"main_hotkey": "<ss58>"}` with 200, or 500 with `{"error": "Could not get ..."}`.
These handlers give the same bodies, with the values the websocket gives (`V0ExecutorManifestRequest`
after auth, the `V0MainHotkeyMessage` answer), which stay as they are for validators that still ask there.

They are public: the manifest is in our knowledge commitment and the main hotkey follows from the
chain and the config, so there is nothing to authenticate. The connections are strangers' to the
connection guard (conn_guard.py), bounded like receipt-page fetches. A validator polls these on a
timer, so each handler keeps the last body it encoded and only re-encodes when the value changed.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Hashable
from typing import Any

from aiohttp import web

from horde_protocol.messages import V0ExecutorManifestRequest
from miner_agent.server.context import CTX

log = logging.getLogger(__name__)

MANIFEST_PATH = "/v0.1/manifest"
HOTKEY_PATH = "/v0.1/hotkey"
JSON_CONTENT_TYPE = "application/json"


class LastBody:
    """The JSON body of the last value asked for; encoding again only when the value changed."""

    def __init__(self) -> None:
        self._key: Hashable | None = None
        self._body = b""

    def body(self, key: Hashable, build: Any) -> bytes:
        """`key` identifies the value; `build()` returns the object to encode when it is new."""
        if key != self._key or not self._body:
            self._body = json.dumps(build()).encode()
            self._key = key
        return self._body


def _json(body: bytes, status: int = 200) -> web.Response:
    return web.Response(body=body, status=status, content_type=JSON_CONTENT_TYPE)


def manifest_handler() -> Any:
    last = LastBody()

    async def manifest(request: web.Request) -> web.Response:
        try:
            counts = request.app[CTX].fleet.manifest()
            key = tuple(sorted(counts.items()))
            # Through the websocket frame's model: the same class keys and counts the websocket sends.
            body = last.body(key, lambda: {
                "manifest": V0ExecutorManifestRequest(manifest=counts).model_dump(mode="json")["manifest"]})
        except Exception:  # the stock view's answer; the cause goes to the journal, not to a stranger
            log.exception("manifest query failed path=%s", MANIFEST_PATH)
            return _json(b'{"error": "Could not get manifest"}', status=500)
        return _json(body)

    return manifest


def hotkey_handler() -> Any:
    last = LastBody()

    async def main_hotkey(request: web.Request) -> web.Response:
        try:
            hotkey = request.app[CTX].main_hotkey()
            body = last.body(hotkey, lambda: {"main_hotkey": hotkey})
        except Exception:
            log.exception("main hotkey query failed path=%s", HOTKEY_PATH)
            return _json(b'{"error": "Could not get main hotkey"}', status=500)
        return _json(body)

    return main_hotkey


def add_query_routes(app: web.Application) -> None:
    """The two routes, each handler with its own last-body cache (one per app)."""
    app.router.add_get(MANIFEST_PATH, manifest_handler())
    app.router.add_get(HOTKEY_PATH, hotkey_handler())
