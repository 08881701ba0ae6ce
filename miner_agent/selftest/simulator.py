"""A validator of our own: real keys, real websocket, the stock organic flow (protocol.md §5.2).

Used by the test suite, by the quickstart's demo job, and later by `miner-agent
self-test`. It speaks only what a stock validator speaks and parses every miner frame
with the validator-side union, so a frame a real validator would reject fails here too.
"""

from __future__ import annotations

import asyncio
import base64
import io
import time
import uuid as uuidlib
import zipfile
from dataclasses import dataclass, field
from datetime import UTC, datetime

import aiohttp
from bittensor_wallet import Keypair
from pydantic import BaseModel

from horde_protocol.messages import (
    ExecutorTimingDetails,
    MinerToValidatorMessage,
    V0AcceptJobRequest,
    V0DeclineJobRequest,
    V0ExecutorManifestRequest,
    V0ExecutorReadyRequest,
    V0HordeFailedRequest,
    V0InitialJobRequest,
    V0JobAcceptedReceiptRequest,
    V0JobFinishedReceiptRequest,
    V0JobFinishedRequest,
    V0JobRequest,
    ValidatorAuthForMiner,
    parse_miner_to_validator,
)
from horde_protocol.receipts import (
    JobAcceptedReceiptPayload,
    JobFinishedReceiptPayload,
    JobStartedReceiptPayload,
    receipt_blob,
)
from horde_protocol.signing import sign_blob
from horde_protocol.volumes import InlineVolume, Volume

RESERVATION_TIME_LIMIT_S = 7  # validator's DYNAMIC_EXECUTOR_RESERVATION_TIME_LIMIT


def inline_zip(files: dict[str, bytes]) -> InlineVolume:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return InlineVolume(contents=base64.b64encode(buf.getvalue()).decode())


@dataclass
class Received:
    """One miner frame as the validator saw it, with when (monotonic seconds)."""

    at: float
    message: MinerToValidatorMessage

    @property
    def type(self) -> str:
        return self.message.kind()


@dataclass
class SimSession:
    ws: aiohttp.ClientWebSocketResponse
    http: aiohttp.ClientSession
    received: list[Received] = field(default_factory=list)

    async def send(self, message: BaseModel | str) -> None:
        text = message if isinstance(message, str) else message.model_dump_json()
        await self.ws.send_str(text)

    async def recv(self, timeout_s: float = 10.0) -> Received:
        frame = await self.ws.receive(timeout=timeout_s)
        if frame.type is not aiohttp.WSMsgType.TEXT:
            raise ConnectionError(f"miner closed or sent a non-text frame: {frame.type.name} {frame.extra!r}")
        item = Received(time.monotonic(), parse_miner_to_validator(frame.data))
        self.received.append(item)
        return item

    async def recv_until(self, *kinds: type[BaseModel], timeout_s: float = 30.0, or_outcome: bool = False) -> Received:
        """The next frame of one of `kinds` (or, with `or_outcome`, any frame that ends the job or
        the offer), keeping every frame on the way in `received`."""
        deadline = time.monotonic() + timeout_s
        while True:
            item = await self.recv(max(0.01, deadline - time.monotonic()))
            if isinstance(item.message, kinds) or (or_outcome and item.message.outcome is not None):
                return item

    async def close(self) -> None:
        await self.ws.close()
        await self.http.close()

    async def __aenter__(self) -> SimSession:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


@dataclass
class ValidatorSim:
    keypair: Keypair
    miner_hotkey: str
    base_url: str  # http://host:port

    @property
    def hotkey(self) -> str:
        return self.keypair.ss58_address

    def auth(self, timestamp: int | None = None, signer: Keypair | None = None) -> ValidatorAuthForMiner:
        ts = int(time.time()) if timestamp is None else timestamp
        blob = f"{self.hotkey}:{self.miner_hotkey}:{ts}"
        return ValidatorAuthForMiner(
            validator_hotkey=self.hotkey,
            miner_hotkey=self.miner_hotkey,
            timestamp=ts,
            signature=sign_blob(signer or self.keypair, blob),
        )

    async def connect(self, authenticate: bool = True, path_hotkey: str | None = None,
                      source_address: str | None = None) -> SimSession:
        """A validator socket; `source_address` binds its local end (many simulated validators on
        one host each come from their own loopback address, as real ones come from their own hosts)."""
        connector = aiohttp.TCPConnector(local_addr=(source_address, 0)) if source_address else None
        http = aiohttp.ClientSession(connector=connector)
        url = f"{self.base_url.replace('http', 'ws', 1)}/v0.1/validator_interface/{path_hotkey or self.hotkey}"
        ws = await http.ws_connect(url, max_msg_size=50 * 1024 * 1024, heartbeat=20)
        session = SimSession(ws, http)
        if authenticate:
            await session.send(self.auth())
        return session

    def initial_request(
        self,
        executor_class: str,
        image: str,
        job_uuid: str | None = None,
        volume: Volume | None = None,
        timing: ExecutorTimingDetails | None = None,
    ) -> V0InitialJobRequest:
        job_uuid = job_uuid or str(uuidlib.uuid4())
        payload = JobStartedReceiptPayload(
            job_uuid=job_uuid,
            miner_hotkey=self.miner_hotkey,
            validator_hotkey=self.hotkey,
            timestamp=datetime.now(UTC),
            executor_class=executor_class,
            is_organic=True,
            ttl=RESERVATION_TIME_LIMIT_S,
        )
        return V0InitialJobRequest(
            job_uuid=job_uuid,
            executor_class=executor_class,
            docker_image=image,
            timeout_seconds=300,
            volume=volume,
            job_started_receipt_payload=payload,
            job_started_receipt_signature=sign_blob(self.keypair, receipt_blob(payload)),
            executor_timing=timing
            or ExecutorTimingDetails(
                allowed_leeway=5, download_time_limit=10, execution_time_limit=20, upload_time_limit=10,
                streaming_start_time_limit=0,
            ),
        )

    def accepted_receipt(self, job_uuid: str, ttl_s: int = 60) -> V0JobAcceptedReceiptRequest:
        now = datetime.now(UTC)
        payload = JobAcceptedReceiptPayload(
            job_uuid=job_uuid, miner_hotkey=self.miner_hotkey, validator_hotkey=self.hotkey,
            timestamp=now, time_accepted=now, ttl=ttl_s,
        )
        return V0JobAcceptedReceiptRequest(payload=payload, signature=sign_blob(self.keypair, receipt_blob(payload)))

    def finished_receipt(self, job_uuid: str, started: datetime, score: float) -> V0JobFinishedReceiptRequest:
        now = datetime.now(UTC)
        payload = JobFinishedReceiptPayload(
            job_uuid=job_uuid, miner_hotkey=self.miner_hotkey, validator_hotkey=self.hotkey, timestamp=now,
            time_started=started, time_took_us=int((now - started).total_seconds() * 1e6),
            score_str=f"{score:.6f}", block_numbers=[],
        )
        return V0JobFinishedReceiptRequest(payload=payload, signature=sign_blob(self.keypair, receipt_blob(payload)))

    async def run_job(
        self,
        initial: V0InitialJobRequest,
        request: V0JobRequest,
        readiness_timeout_s: float = 30.0,
    ) -> list[Received]:
        """The stock organic flow end to end; returns every frame after the manifest.

        Sends the JobAccepted receipt after an accept, the job request after ready, and
        the JobFinished receipt at the end (score 0 on failure), like a validator does.
        """
        started = datetime.now(UTC)
        async with await self.connect() as session:
            await session.recv_until(V0ExecutorManifestRequest, timeout_s=10)
            await session.send(initial)
            first = await session.recv_until(V0AcceptJobRequest, V0DeclineJobRequest, V0HordeFailedRequest,
                                             timeout_s=RESERVATION_TIME_LIMIT_S)
            if isinstance(first.message, V0AcceptJobRequest):
                await session.send(self.accepted_receipt(str(initial.job_uuid)))
                got = await session.recv_until(V0ExecutorReadyRequest, timeout_s=readiness_timeout_s, or_outcome=True)
                if isinstance(got.message, V0ExecutorReadyRequest):
                    await session.send(request)
                    t = initial.executor_timing
                    budget = (t.allowed_leeway + t.download_time_limit + t.execution_time_limit
                              + t.upload_time_limit + t.streaming_start_time_limit) if t else 300
                    await session.recv_until(or_outcome=True, timeout_s=budget + 5)
                ok = isinstance(session.received[-1].message, V0JobFinishedRequest)
                await session.send(self.finished_receipt(str(initial.job_uuid), started, 1.0 if ok else 0.0))
                await asyncio.sleep(0.05)  # let the receipt frame leave before closing, as a validator does
            return [r for r in session.received if not isinstance(r.message, V0ExecutorManifestRequest)]
