"""`/v0.1/validator_interface/<hotkey>`: one validator websocket session.

The upgrade is always accepted (HTTP 101) and the validator is checked afterwards, as
the stock miner does: refusals are a `GenericError` frame and a normal close (1000).
Frames that arrive before the handshake are queued and replayed after it; the first
frame we send on an authenticated session is always the manifest.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from dataclasses import dataclass

from aiohttp import WSCloseCode, WSMsgType, web
from pydantic import ValidationError

from horde_protocol.messages import (
    GenericError,
    V0ExecutorManifestRequest,
    V0InitialJobRequest,
    V0JobAcceptedReceiptRequest,
    V0JobFinishedReceiptRequest,
    V0JobRequest,
    V0MainHotkeyMessage,
    ValidatorAuthForMiner,
    malformed_details,
    parse_validator_frame,
    validator_signature_ok,
)
from miner_agent.keys import verify
from miner_agent.protocol.auth import check_auth, refusal_details
from miner_agent.receipts.receipt_store import ReceiptRejected
from miner_agent.server.context import CTX, MinerContext

log = logging.getLogger(__name__)

AUTH_WAIT_S = 60.0  # a socket that never authenticates is closed after this long
MAX_QUEUED_FRAMES = 32  # frames kept while waiting for the handshake


@dataclass
class Session:
    """An authenticated validator websocket, as the job service sees it."""

    ws: web.WebSocketResponse
    validator_hotkey: str

    @property
    def closed(self) -> bool:
        return self.ws.closed

    async def send_text(self, text: str) -> bool:
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
    ws = web.WebSocketResponse(max_msg_size=ctx.config.miner.max_frame_bytes, receive_timeout=None)
    await ws.prepare(request)
    peer = request.remote
    if not ctx.is_known_validator(hotkey):
        log.warning("validator refused validator=%s peer=%s reason=unknown", hotkey, peer)
        await _refuse(ws, f"Unknown validator: {hotkey}")
        return ws
    handler = _Handler(ctx, ws, hotkey)
    ctx.metrics.ws_open += 1
    try:
        await handler.run()
    finally:
        ctx.metrics.ws_open -= 1
        if handler.session is not None:
            ctx.service.on_session_closed(handler.session)
    return ws


async def _refuse(ws: web.WebSocketResponse, details: str) -> None:
    await ws.send_str(GenericError(details=details).model_dump_json())
    await ws.close(code=WSCloseCode.OK)


class _Handler:
    def __init__(self, ctx: MinerContext, ws: web.WebSocketResponse, hotkey: str) -> None:
        self.ctx, self.ws, self.hotkey = ctx, ws, hotkey
        self.session: Session | None = None
        self.queued: list[tuple[object, dict]] = []
        self.opened = time.monotonic()

    async def run(self) -> None:
        async for frame in self.ws:
            if frame.type is WSMsgType.TEXT:
                await self._on_text(frame.data)
            elif frame.type is WSMsgType.BINARY:
                await self._error("Malformed message: binary frames are not part of the protocol")
            if self.session is None and time.monotonic() - self.opened > AUTH_WAIT_S and not self.ws.closed:
                await _refuse(self.ws, refusal_details(self.hotkey, "no auth message in time"))

    async def _on_text(self, text: str) -> None:
        try:
            message, raw = parse_validator_frame(text)
        except ValidationError as exc:
            await self._error(malformed_details(exc))
            return
        except ValueError as exc:  # not JSON at all
            await self._error(f"Malformed message: {exc}")
            return
        if isinstance(message, ValidatorAuthForMiner):
            await self._on_auth(message)
        elif self.session is None:
            if len(self.queued) < MAX_QUEUED_FRAMES:
                self.queued.append((message, raw))
            else:
                await self._error("Too many frames before authentication; dropped")
        else:
            await self._dispatch(message, raw)

    async def _on_auth(self, message: ValidatorAuthForMiner) -> None:
        if self.session is not None:
            return  # already authenticated on this socket; a repeated greeting changes nothing
        reason = check_auth(
            message, self.hotkey, self.ctx.signer.hotkey, time.time(), verify, self.ctx.config.miner.auth_max_age_s
        )
        if reason is not None:
            log.warning("validator refused validator=%s reason=%r", self.hotkey, reason)
            await _refuse(self.ws, refusal_details(self.hotkey, reason))
            return
        self.session = Session(self.ws, self.hotkey)
        log.info("validator authenticated validator=%s", self.hotkey)
        manifest = V0ExecutorManifestRequest(manifest=self.ctx.fleet.manifest())
        await self.session.send_text(manifest.model_dump_json())
        await self.ctx.service.on_session(self.session)
        queued, self.queued = self.queued, []
        for queued_message, raw in queued:
            await self._dispatch(queued_message, raw)

    async def _dispatch(self, message: object, raw: dict) -> None:
        assert self.session is not None
        service = self.ctx.service
        if isinstance(message, (V0InitialJobRequest, V0JobRequest)) and not await self._signature_ok(message, raw):
            return
        try:
            await self._handle(message)
        except (sqlite3.Error, OSError) as exc:
            # Storage trouble (a full disk, a read-only state dir): say so at once and keep the
            # socket; an offer is declined rather than left to time out.
            log.error("frame not handled validator=%s type=%s error=%r", self.hotkey, type(message).__name__, str(exc))
            if isinstance(message, V0InitialJobRequest):
                await service.decline(self.session, str(message.job_uuid), "unknown",
                                      f"miner storage failure, job not taken: {exc}",
                                      cls=str(message.executor_class.value))
            else:
                await self._error(f"miner storage failure handling {type(message).__name__}: {exc}")

    async def _handle(self, message: object) -> None:
        assert self.session is not None
        service = self.ctx.service
        if isinstance(message, V0InitialJobRequest):
            if self.ctx.validators.is_blacklisted(self.hotkey):
                log.info("job declined job=%s validator=%s reason=validator_blacklisted", message.job_uuid, self.hotkey)
                await service.decline(self.session, str(message.job_uuid), "validator_blacklisted",
                                      "this miner does not take jobs from this validator",
                                      cls=str(message.executor_class.value))
                return
            await service.offer(self.session, message)
        elif isinstance(message, V0JobRequest):
            await service.job_request(self.session, message)
        elif isinstance(message, (V0JobAcceptedReceiptRequest, V0JobFinishedReceiptRequest)):
            self._store_receipt(message)
        elif isinstance(message, V0MainHotkeyMessage):
            reply = V0MainHotkeyMessage(main_hotkey=self.ctx.main_hotkey())
            await self.session.send_text(reply.model_dump_json())
        elif isinstance(message, GenericError):
            log.warning("validator sent an error validator=%s details=%r", self.hotkey, message.details)

    async def _signature_ok(self, message: V0InitialJobRequest | V0JobRequest, raw: dict) -> bool:
        """Verify the optional §12 `validator_signature`; absent is fine, wrong is refused."""
        if validator_signature_ok(raw, self.hotkey) is not False:
            return True
        log.warning("bad validator_signature validator=%s job=%s type=%s", self.hotkey, message.job_uuid, message.message_type)
        if isinstance(message, V0InitialJobRequest):
            assert self.session is not None
            await self.ctx.service.decline(
                self.session, str(message.job_uuid), "invalid_signature", "validator_signature does not verify"
            )
        else:
            await self._error(f"Invalid validator_signature on V0JobRequest for job {message.job_uuid}")
        return False

    def _store_receipt(self, message: V0JobAcceptedReceiptRequest | V0JobFinishedReceiptRequest) -> None:
        try:
            self.ctx.receipts.accept(message.payload, message.signature, self.hotkey)
        except ReceiptRejected as exc:
            # Stock behaviour: no reply; the log says why.
            log.warning(
                "receipt dropped type=%s job=%s validator=%s reason=%r",
                message.message_type, message.payload.job_uuid, self.hotkey, str(exc),
            )

    async def _error(self, details: str) -> None:
        log.warning("malformed frame validator=%s details=%r", self.hotkey, details[:500])
        await self.ws.send_str(GenericError(details=details).model_dump_json())
