"""The job's single deadline, as the validator counts it (protocol.md §5.2, behaviour.md §2.2).

Pure: it takes numbers and a clock reading and returns numbers, so every timing rule is
tested without sleeping. The validator starts ONE timer when it sees
V0ExecutorReadyRequest, set to `allowed_leeway`, and adds each stage's limit as the
stage begins; time a stage does not use rolls forward to the next. We enforce the same
deadline on the host so a job fails here, with a precise reason, a little before the
validator would give up on us. Without `executor_timing`, the deprecated
`timeout_seconds` is one budget for every remaining stage.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

DOWNLOAD = "volume_download"
EXECUTION = "execution"
UPLOAD = "result_upload"
STAGES = (DOWNLOAD, EXECUTION, UPLOAD)

NO_TIMING_MESSAGE = "No timing received: either timeout_seconds or timing_details must be set"

# Texts of the job failure (reason `timeout`) when a whole stage overruns the deadline.
STAGE_TIMEOUT_MESSAGES = {
    DOWNLOAD: "Download time exceeded",
    EXECUTION: "Execution time exceeded",
    UPLOAD: "Upload time exceeded",
}


class NoTiming(Exception):
    """The initial request carries neither executor_timing nor timeout_seconds."""

    def __init__(self) -> None:
        super().__init__(NO_TIMING_MESSAGE)


@dataclass(frozen=True)
class StageBudgets:
    """Seconds granted per stage. `cumulative` is the executor_timing mode; otherwise
    `initial_s` (timeout_seconds) covers everything and stages add nothing."""

    initial_s: float
    download_s: float = 0.0
    execution_s: float = 0.0
    upload_s: float = 0.0
    streaming_s: float = 0.0
    cumulative: bool = True
    container_limit_s: float = 0.0  # how long the container itself may run

    @classmethod
    def from_initial(cls, executor_timing: Any | None, timeout_seconds: int | None) -> StageBudgets:
        """Budgets from V0InitialJobRequest.executor_timing (preferred) or timeout_seconds."""
        if executor_timing is not None:
            return cls(
                initial_s=float(executor_timing.allowed_leeway),
                download_s=float(executor_timing.download_time_limit),
                execution_s=float(executor_timing.execution_time_limit),
                upload_s=float(executor_timing.upload_time_limit),
                streaming_s=float(executor_timing.streaming_start_time_limit),
                cumulative=True,
                container_limit_s=float(executor_timing.execution_time_limit),
            )
        if timeout_seconds is not None:
            total = float(timeout_seconds)
            return cls(initial_s=total, cumulative=False, container_limit_s=total)
        raise NoTiming()

    def stage_extension_s(self, stage: str, streaming: bool = False) -> float:
        if not self.cumulative:
            return 0.0
        if stage == DOWNLOAD:
            return self.download_s
        if stage == EXECUTION:
            return self.execution_s + (self.streaming_s if streaming else 0.0)
        if stage == UPLOAD:
            return self.upload_s
        raise ValueError(f"unknown stage {stage!r}")


class Deadline:
    """One absolute deadline on a monotonic clock; `enter(stage)` extends it.

    Start it when V0ExecutorReadyRequest is sent (the validator starts its timer when
    it receives that message, so ours can only end earlier, never later).
    """

    def __init__(self, budgets: StageBudgets, now: float) -> None:
        self.budgets = budgets
        self.at = now + budgets.initial_s
        self.stage: str | None = None

    def enter(self, stage: str, now: float, streaming: bool = False) -> float:
        """Begin a stage: extend the deadline by its budget and return the seconds left."""
        self.stage = stage
        self.at += self.budgets.stage_extension_s(stage, streaming)
        return self.remaining(now)

    def remaining(self, now: float) -> float:
        return max(0.0, self.at - now)

    def container_timeout(self, now: float) -> float:
        """How long to wait for the container: its own limit, never past the stage deadline."""
        return min(self.budgets.container_limit_s, self.remaining(now))

    def __repr__(self) -> str:
        return f"<Deadline stage={self.stage} at={self.at:.3f}>"
