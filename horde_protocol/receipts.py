"""Job receipts (protocol.md §4.4, §4.6, §6): what validators sign, miners countersign and publish.

Parsing accepts what any stock validator sends (timezone-aware datetimes required, no further
bounds); `receipt_problems` applies the newer wheel's stricter bounds (§12) so the miner can decline to
publish a receipt that newer validators would drop anyway.

The signing blob must be byte-identical to the validator's: Python `json.dumps(payload, sort_keys=True)`
with default separators over pydantic's JSON-mode dump. pydantic already writes datetimes as §4.6 wants
(`YYYY-MM-DDTHH:MM:SS`, `.ffffff` only when microseconds != 0, `Z` for UTC), which
tests/unit/test_protocol_receipts.py pins, so no formatter of our own is needed.
"""

from __future__ import annotations

import json
import re
import uuid
from datetime import datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Annotated, Literal, Union

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from horde_protocol.enums import ExecutorClass
from horde_protocol.signing import sign_blob, verify_blob

if TYPE_CHECKING:
    from bittensor_wallet import Keypair

# Bounds of compute-horde 0.0.27 (§12); older validators do not check them.
MAX_TTL_S = 30 * 24 * 60 * 60  # 30 days
MAX_TIME_TOOK_US = 365 * 24 * 60 * 60 * 1_000_000  # 365 days in microseconds
MAX_SCORE_STR_LENGTH = 256
MAX_BLOCK_NUMBER = 2**32
MAX_BLOCK_NUMBERS = 10_000
MIN_TIMESTAMP_YEAR = 2000  # inclusive
MAX_TIMESTAMP_YEAR = 2100  # exclusive
SCORE_STR_RE = re.compile(r"[0-9]+(\.[0-9]+)?")


class ReceiptType(StrEnum):
    JobStartedReceipt = "JobStartedReceipt"
    JobAcceptedReceipt = "JobAcceptedReceipt"
    JobFinishedReceipt = "JobFinishedReceipt"


class _Payload(BaseModel):
    """Fields common to all payloads; field order is the validators' so dumps match theirs."""

    model_config = ConfigDict(extra="ignore")

    job_uuid: str
    miner_hotkey: str
    validator_hotkey: str
    timestamp: AwareDatetime  # when the validator created the receipt

    def blob(self) -> str:
        return receipt_blob(self)


class JobStartedReceiptPayload(_Payload):
    """Sent inside `V0InitialJobRequest`; `ttl` (s) is the reservation window (7 s for organic jobs)."""

    receipt_type: Literal["JobStartedReceipt"] = "JobStartedReceipt"
    executor_class: ExecutorClass
    is_organic: bool
    ttl: int


class JobAcceptedReceiptPayload(_Payload):
    """Sent after `V0AcceptJobRequest`; the executor counts as busy until `timestamp + ttl`."""

    receipt_type: Literal["JobAcceptedReceipt"] = "JobAcceptedReceipt"
    time_accepted: AwareDatetime
    ttl: int


class JobFinishedReceiptPayload(_Payload):
    """Sent at the end of every job; what validators score on. `score_str` = executor-seconds as
    `f"{v:.6f}"`, `block_numbers` = allowance blocks paid with (both zero/empty on failure)."""

    receipt_type: Literal["JobFinishedReceipt"] = "JobFinishedReceipt"
    time_started: AwareDatetime
    time_took_us: int
    score_str: str
    block_numbers: list[int] = Field(default_factory=list)


ReceiptPayload = Annotated[
    Union[JobStartedReceiptPayload, JobAcceptedReceiptPayload, JobFinishedReceiptPayload],
    Field(discriminator="receipt_type"),
]
AnyReceiptPayload = Union[JobStartedReceiptPayload, JobAcceptedReceiptPayload, JobFinishedReceiptPayload]


def receipt_blob(payload: AnyReceiptPayload) -> str:
    """The canonical text both signatures of a receipt cover (§4.4): `", "`/`": "` separators, sorted
    keys, `\\uXXXX` for non-ASCII, every field present."""
    return json.dumps(payload.model_dump(mode="json"), sort_keys=True)


class Receipt(BaseModel):
    """The doubly-signed, transferable receipt; one per line on the `/receipts/<page>.jsonl` pages."""

    model_config = ConfigDict(extra="ignore")

    payload: ReceiptPayload
    validator_signature: str
    miner_signature: str

    def page_line(self) -> str:
        """One line of a receipt page: compact JSON and a newline."""
        return self.model_dump_json() + "\n"

    def validator_signature_ok(self) -> bool:
        return verify_blob(self.payload.validator_hotkey, receipt_blob(self.payload), self.validator_signature)

    def miner_signature_ok(self) -> bool:
        return verify_blob(self.payload.miner_hotkey, receipt_blob(self.payload), self.miner_signature)


def countersign(payload: AnyReceiptPayload, validator_signature: str, miner_keypair: Keypair) -> Receipt:
    """The miner's half of §4.4: sign the same blob the validator signed. Checking the validator's
    signature and the hotkeys is the caller's job (it knows the authenticated validator)."""
    miner_signature = sign_blob(miner_keypair, receipt_blob(payload))
    return Receipt(payload=payload, validator_signature=validator_signature, miner_signature=miner_signature)


def _timestamp_problem(name: str, value: datetime) -> str | None:
    if not MIN_TIMESTAMP_YEAR <= value.year < MAX_TIMESTAMP_YEAR:
        return f"{name} year {value.year} outside [{MIN_TIMESTAMP_YEAR}, {MAX_TIMESTAMP_YEAR})"
    return None


def receipt_problems(payload: AnyReceiptPayload) -> list[str]:
    """Why compute-horde 0.0.27 validators would reject this payload (empty list: none). Use before
    publishing or attaching a receipt; parsing does not apply these bounds."""
    problems: list[str] = []
    try:
        canonical = str(uuid.UUID(payload.job_uuid))
    except ValueError:
        canonical = None
    if canonical != payload.job_uuid:
        problems.append(f"job_uuid {payload.job_uuid[:64]!r} is not a canonical lowercase UUID")
    stamps = {"timestamp": payload.timestamp}
    if isinstance(payload, JobAcceptedReceiptPayload):
        stamps["time_accepted"] = payload.time_accepted
    if isinstance(payload, JobFinishedReceiptPayload):
        stamps["time_started"] = payload.time_started
    problems.extend(p for name, value in stamps.items() if (p := _timestamp_problem(name, value)))
    if isinstance(payload, (JobStartedReceiptPayload, JobAcceptedReceiptPayload)):
        if not 0 <= payload.ttl <= MAX_TTL_S:
            problems.append(f"ttl {payload.ttl} outside [0, {MAX_TTL_S}]")
    if isinstance(payload, JobFinishedReceiptPayload):
        if not 0 <= payload.time_took_us <= MAX_TIME_TOOK_US:
            problems.append(f"time_took_us {payload.time_took_us} outside [0, {MAX_TIME_TOOK_US}]")
        if len(payload.score_str) > MAX_SCORE_STR_LENGTH or not SCORE_STR_RE.fullmatch(payload.score_str):
            problems.append(f"score_str {payload.score_str[:MAX_SCORE_STR_LENGTH]!r} is not an unsigned decimal")
        if len(payload.block_numbers) > MAX_BLOCK_NUMBERS:
            problems.append(f"{len(payload.block_numbers)} block_numbers, more than {MAX_BLOCK_NUMBERS}")
        if any(not 0 <= b <= MAX_BLOCK_NUMBER for b in payload.block_numbers):
            problems.append(f"a block number outside [0, {MAX_BLOCK_NUMBER}]")
    return problems


__all__ = [
    "AnyReceiptPayload",
    "JobAcceptedReceiptPayload",
    "JobFinishedReceiptPayload",
    "JobStartedReceiptPayload",
    "Receipt",
    "ReceiptPayload",
    "ReceiptType",
    "countersign",
    "receipt_blob",
    "receipt_problems",
]
