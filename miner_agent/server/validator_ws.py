"""`/v0.1/validator_interface/<hotkey>`: one validator websocket session.

The upgrade is always accepted (HTTP 101) and the validator is checked afterwards, as
the stock miner does: refusals are a `GenericError` frame and a normal close (1000).
Frames that arrive before the handshake are queued and replayed after it; the first
frame we send on an authenticated session is always the manifest.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any

from aiohttp import WSCloseCode, WSMsgType, web
from pydantic import ValidationError

from agent_common.logs import LineBudget
from horde_protocol.messages import (
    GenericError,
    V0ExecutorManifestRequest,
    V0InitialJobRequest,
    V0JobAcceptedReceiptRequest,
    V0JobFinishedReceiptRequest,
    V0JobRequest,
    V0MainHotkeyMessage,
    ValidatorAuthForMiner,
    ValidatorToMinerMessage,
    malformed_details,
    parse_validator_frame,
)
from miner_agent.jobs.decline import SplicedText
from miner_agent.jobs.service import STORAGE_ERRORS
from miner_agent.keys import verify
from miner_agent.protocol.auth import check_auth, refusal_details
from miner_agent.server.conn_guard import AUTH_TIMEOUT_S, PRE_AUTH_MAX_FRAME_BYTES, PRE_AUTH_QUEUE_BYTES
from miner_agent.server.context import CTX, MinerContext
from miner_agent.server.mem_trim import HeapTrimmer
from miner_agent.server.ws_deflate import StatelessDeflateResponse

log = logging.getLogger(__name__)

MAX_QUEUED_FRAMES = 32  # frames kept while waiting for the handshake (and PRE_AUTH_QUEUE_BYTES in all)
GARBAGE_CLOSE_AFTER = 32  # consecutive malformed frames: the peer is not speaking the protocol
DRAIN_TIMEOUT_S = 5.0  # on shutdown, how long frames being handled may take before sockets close
SHUTDOWN_CLOSE_MESSAGE = b"miner-agent is shutting down"


@dataclass
class Session:
    """An authenticated validator websocket, as the job service sees it."""

    ws: web.WebSocketResponse
    validator_hotkey: str

    @property
    def closed(self) -> bool:
        return self.ws.closed

    async def send_text(self, text: str | SplicedText) -> bool:
        if self.ws.closed:
            return False
        try:
            await self.ws.send_str(text)
            return True
        except (ConnectionError, RuntimeError):
            return False


async def validator_interface(request: web.Request) -> web.WebSocketResponse:
    ctx: MinerContext = request.app[CTX]
    hotkey = request.match_info["hotkey"]
    ws = StatelessDeflateResponse(max_msg_size=ctx.config.miner.max_frame_bytes, receive_timeout=None)
    await ws.prepare(request)
    peer = request.remote
    if not ctx.is_known_validator(hotkey):
        if (suppressed := _REFUSALS.allow(time.monotonic())) is not None:
            log.warning("validator refused validator=%s peer=%s reason=unknown suppressed_since_last=%d",
                        hotkey, peer, suppressed)
        await _refuse(ws, f"Unknown validator: {hotkey}")
        return ws
    handler = _Handler(ctx, ws, hotkey, request.transport)
    ctx.metrics.ws_open += 1
    ctx.validator_sockets.add(handler)
    try:
        await handler.run()
    finally:
        ctx.validator_sockets.discard(handler)
        ctx.metrics.ws_open -= 1
        if handler.session is not None:
            ctx.service.on_session_closed(handler.session)
        _HEAP.closed()
    return ws


async def _refuse(ws: web.WebSocketResponse, details: str) -> None:
    """Stock refusal: a GenericError saying why, then a normal close (1000)."""
    if ws.closed:
        return
    try:
        await ws.send_str(GenericError(details=details).model_dump_json())
    except (ConnectionError, RuntimeError):
        pass  # the peer is gone already; closing below cleans up
    await ws.close(code=WSCloseCode.OK)


_REFUSALS = LineBudget()  # refusals of unknown hotkeys, across all connections
_HEAP = HeapTrimmer()  # what closed sockets freed goes back to the system, once per burst of closes


class _Handler:
    def __init__(self, ctx: MinerContext, ws: web.WebSocketResponse, hotkey: str, transport: object) -> None:
        self.ctx, self.ws, self.hotkey, self.transport = ctx, ws, hotkey, transport
        self.session: Session | None = None
        self.queued: list[tuple[ValidatorToMinerMessage, dict[str, Any]]] = []
        self.queued_bytes = 0
        self.opened = time.monotonic()
        self.idle = asyncio.Event()  # clear while a received frame is being handled
        self.idle.set()
        self.malformed_in_a_row = 0
        self._malformed_lines = LineBudget()

    async def run(self) -> None:
        while not self.ws.closed:
            try:
                frame = await self.ws.receive(timeout=self._auth_time_left())
            except TimeoutError:
                # A timer, not the next frame, ends a socket that never authenticates.
                await _refuse(self.ws, refusal_details(self.hotkey, "no auth message in time"))
                return
            if frame.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR):
                return
            self.idle.clear()
            try:
                if frame.type is WSMsgType.TEXT:
                    await self._on_text(frame.data)
                elif frame.type is WSMsgType.BINARY:
                    self.ctx.metrics.validator_frames.inc(authenticated="yes" if self.session else "no", parsed="binary")
                    await self._error("Malformed message: binary frames are not part of the protocol")
            finally:
                self.idle.set()

    def _auth_time_left(self) -> float | None:
        if self.session is not None:
            return None
        return max(0.001, self.opened + AUTH_TIMEOUT_S - time.monotonic())

    async def _on_text(self, text: str) -> None:
        authenticated = "yes" if self.session is not None else "no"
        if self.session is None and len(text) > PRE_AUTH_MAX_FRAME_BYTES:
            self.ctx.metrics.validator_frames.inc(authenticated=authenticated, parsed="too_large")
            await _refuse(self.ws, f"Frame of {len(text)} bytes before authentication; the limit is "
                                   f"{PRE_AUTH_MAX_FRAME_BYTES} bytes until ValidatorAuthForMiner succeeds")
            return
        try:
            message, raw = parse_validator_frame(text)
        except ValidationError as exc:
            self.ctx.metrics.validator_frames.inc(authenticated=authenticated, parsed="no")
            await self._error(malformed_details(exc))
            return
        except ValueError as exc:  # not JSON at all
            self.ctx.metrics.validator_frames.inc(authenticated=authenticated, parsed="no")
            await self._error(f"Malformed message: {exc}")
            return
        self.ctx.metrics.validator_frames.inc(authenticated=authenticated, parsed="yes")
        self.malformed_in_a_row = 0
        if isinstance(message, ValidatorAuthForMiner):
            await self._on_auth(message)
        elif self.session is None:
            if len(self.queued) >= MAX_QUEUED_FRAMES or self.queued_bytes + len(text) > PRE_AUTH_QUEUE_BYTES:
                await _refuse(self.ws, f"Too many frames before authentication (limit {MAX_QUEUED_FRAMES} frames, "
                                       f"{PRE_AUTH_QUEUE_BYTES} bytes); send ValidatorAuthForMiner first")
                return
            self.queued.append((message, raw))
            self.queued_bytes += len(text)
        else:
            await self._dispatch(message, raw)

    async def _on_auth(self, message: ValidatorAuthForMiner) -> None:
        if self.session is not None:
            return  # already authenticated on this socket; a repeated greeting changes nothing
        cfg = self.ctx.config.miner
        reason = check_auth(message, self.hotkey, self.ctx.signer.hotkey, time.time(), verify,
                            cfg.auth_max_age_s, cfg.auth_max_future_s)
        if reason is not None:
            log.warning("validator refused validator=%s reason=%r", self.hotkey, reason)
            await _refuse(self.ws, refusal_details(self.hotkey, reason))
            return
        self.session = Session(self.ws, self.hotkey)
        self.ctx.guard.guard.authenticated(self.transport)
        log.info("validator authenticated validator=%s", self.hotkey)
        self.ctx.activity.validator_connected(self.hotkey, time.time())
        manifest = V0ExecutorManifestRequest(manifest=self.ctx.fleet.manifest())
        await self.session.send_text(manifest.model_dump_json())
        await self.ctx.service.on_session(self.session)
        queued, self.queued, self.queued_bytes = self.queued, [], 0
        for queued_message, raw in queued:
            await self._dispatch(queued_message, raw)

    async def _dispatch(self, message: ValidatorToMinerMessage, raw: dict[str, Any]) -> None:
        """Hand an authenticated frame to its owner; what to do with a job is the service's call."""
        assert self.session is not None
        service = self.ctx.service
        try:
            if isinstance(message, V0InitialJobRequest):
                await service.offer(self.session, message, raw)
            elif isinstance(message, V0JobRequest):
                await service.job_request(self.session, message, raw)
            elif isinstance(message, (V0JobAcceptedReceiptRequest, V0JobFinishedReceiptRequest)):
                service.on_receipt(self.session, message)
            elif isinstance(message, V0MainHotkeyMessage):
                reply = V0MainHotkeyMessage(main_hotkey=self.ctx.main_hotkey())
                await self.session.send_text(reply.model_dump_json())
            elif isinstance(message, GenericError):
                log.warning("validator sent an error validator=%s details=%r", self.hotkey, message.details)
        except STORAGE_ERRORS as exc:
            # Storage trouble outside an offer (the service declines those itself): say so, keep the socket.
            log.error("frame not handled validator=%s type=%s error=%r", self.hotkey, message.kind(), str(exc))
            await self._error(f"miner storage failure handling {message.kind()}: {exc}")

    async def _error(self, details: str) -> None:
        """Answer a frame we cannot use (stock: GenericError, socket kept); a peer that sends nothing
        else is closed, and the log gets one line per LOG_EVERY_S with the count held back."""
        self.malformed_in_a_row += 1
        if (held := self._malformed_lines.allow(time.monotonic())) is not None:
            log.warning("malformed frame validator=%s authenticated=%s held_back=%d details=%r",
                        self.hotkey, self.session is not None, held, details[:500])
        if self.malformed_in_a_row >= GARBAGE_CLOSE_AFTER:
            log.warning("closing a socket that sends only malformed frames validator=%s frames=%d",
                        self.hotkey, self.malformed_in_a_row)
            await _refuse(self.ws, f"{details[:200]}; closing after {self.malformed_in_a_row} malformed frames in a row")
            return
        await self.ws.send_str(GenericError(details=details).model_dump_json())


async def close_validator_sockets(app: web.Application) -> None:
    """Shutdown (SIGTERM): let every frame already being handled finish and send its answer, then
    close each validator socket with 1001 (going away), so validators reconnect to the next start
    rather than read an abnormal drop. The listener is already closed when this runs."""
    ctx: MinerContext = app[CTX]
    handlers = list(ctx.validator_sockets)
    busy = [asyncio.ensure_future(h.idle.wait()) for h in handlers if not h.idle.is_set()]
    if busy:
        _, late = await asyncio.wait(busy, timeout=DRAIN_TIMEOUT_S)
        for waiter in late:
            waiter.cancel()
        if late:
            log.warning("shutdown: %d validator frame(s) still being handled after %g s", len(late), DRAIN_TIMEOUT_S)
    await asyncio.gather(
        *(h.ws.close(code=WSCloseCode.GOING_AWAY, message=SHUTDOWN_CLOSE_MESSAGE) for h in handlers),
        return_exceptions=True,
    )
    if handlers:
        log.info("shutdown: validator sockets closed count=%d code=%d", len(handlers), WSCloseCode.GOING_AWAY)
