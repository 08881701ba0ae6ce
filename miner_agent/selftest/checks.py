"""What a stock validator would hold against a job's message stream, as pure functions.

Each returns a list of problems (empty = pass), so `self-test` can print them and the
tests can feed made-up timings without running anything.
"""

from __future__ import annotations

from collections.abc import Sequence

from horde_protocol.enums import EXECUTOR_CLASS_SPECS, ExecutorClass
from horde_protocol.messages import (
    ExecutorTimingDetails,
    MinerToValidatorMessage,
    Outcome,
    Progress,
    V0AcceptJobRequest,
    V0ExecutionDoneRequest,
    V0ExecutorReadyRequest,
    V0JobFinishedRequest,
    V0VolumesReadyRequest,
)
from horde_protocol.receipts import Receipt, receipt_blob
from horde_protocol.signing import verify_blob
from miner_agent.jobs.machine import EXECUTOR_STARTUP_S
from miner_agent.selftest.simulator import RESERVATION_TIME_LIMIT_S, Received

_FINISHED_RANK = len(Progress) + 1


def _rank(message: MinerToValidatorMessage) -> int | None:
    """Where a message stands in the sequence every validator waits for (None: not in it)."""
    if isinstance(message, V0AcceptJobRequest):
        return 0
    if message.progress is not None and message.progress.mandatory:
        return int(message.progress)
    if message.outcome is Outcome.FINISHED:
        return _FINISHED_RANK
    return None


# accept -> the mandatory progress steps -> finished
MANDATORY_RANKS = [0, *(int(step) for step in Progress if step.mandatory), _FINISHED_RANK]


def progress_problems(
    received: Sequence[Received], sent_at: float, executor_class: str, timing: ExecutorTimingDetails
) -> list[str]:
    """Order and cumulative budgets of protocol.md §5.2, measured from when the offer was sent."""
    problems: list[str] = []
    last = received[-1].message if received else None
    if not isinstance(last, V0JobFinishedRequest):
        detail = getattr(last, "message", None) or getattr(last, "reason", None) or "no answer"
        problems.append(f"job did not finish: {last.kind() if last is not None else 'nothing'} ({detail})")
    seen = [(r.type, rank) for r in received if (rank := _rank(r.message)) is not None]
    if [rank for _, rank in seen] != MANDATORY_RANKS[: len(seen)]:
        problems.append(f"progress out of order: {' -> '.join(kind for kind, _ in seen)}")
    at: dict[str, float] = {}
    for r in received:
        at.setdefault(r.type, r.at - sent_at)
    accept, ready_kind = V0AcceptJobRequest.kind(), V0ExecutorReadyRequest.kind()
    spin_up = EXECUTOR_CLASS_SPECS[ExecutorClass(executor_class)].spin_up_time_s
    budgets: list[tuple[str, float | None, float]] = [(accept, None, RESERVATION_TIME_LIMIT_S)]
    ready = at.get(ready_kind)
    if accept in at:
        budgets.append((ready_kind, at[accept], spin_up + EXECUTOR_STARTUP_S))
    if ready is not None:
        deadline = timing.allowed_leeway + timing.download_time_limit
        budgets.append((V0VolumesReadyRequest.kind(), ready, deadline))
        deadline += timing.execution_time_limit + timing.streaming_start_time_limit
        budgets.append((V0ExecutionDoneRequest.kind(), ready, deadline))
        deadline += timing.upload_time_limit
        budgets.append((V0JobFinishedRequest.kind(), ready, deadline))
    for name, start, budget in budgets:
        if name not in at:
            continue
        took = at[name] - (start or 0.0)
        if took > budget:
            problems.append(f"{name} after {took:.2f} s, budget {budget:g} s")
    return problems


def receipt_problems(receipts: Sequence[Receipt], job_uuid: str, validator: str, miner: str) -> list[str]:
    """All three receipts of the job published, each with both signatures valid."""
    mine = [r for r in receipts if str(r.payload.job_uuid) == job_uuid]
    problems = []
    kinds = sorted(str(r.payload.receipt_type) for r in mine)
    want = ["JobAcceptedReceipt", "JobFinishedReceipt", "JobStartedReceipt"]
    if kinds != want:
        problems.append(f"receipts published: {kinds or 'none'}, expected {want}")
    for r in mine:
        blob = receipt_blob(r.payload)
        if not verify_blob(validator, blob, r.validator_signature):
            problems.append(f"{r.payload.receipt_type}: validator signature does not verify")
        if not verify_blob(miner, blob, r.miner_signature):
            problems.append(f"{r.payload.receipt_type}: miner signature does not verify")
    return problems
