"""The life of one job on the miner, as a pure state machine.

It is fed what happens (an executor event, the validator's job request, the link to the
executor lost, the clock) and answers with actions for the edges to carry out (send to
the validator, send to the executor, release the slot). No sockets, no sleeping: every
order and timeout rule is tested by calling methods with a made-up `now`.

Rules kept here:
* progress goes to the validator in the order validators wait for it
  (ready -> volumes ready -> [streaming ready] -> execution done -> [specs] -> result);
  the first of each kind counts, duplicates and out-of-order ones are dropped;
* a terminal message (finished, failed, horde failed) ends the job in any state, once;
* legacy executor messages are mapped the way the stock miner maps them;
* a watchdog gives up `WATCHDOG_GRACE_S` after the last stage budget the validator
  granted, so a silent executor never holds a slot forever.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from horde_protocol.enums import EXECUTOR_CLASS_SPECS, MAX_EXECUTOR_TIMEOUT_S, ExecutorClass
from horde_protocol.messages import (
    ExecutorToMinerMessage,
    GenericError,
    MinerToValidatorMessage,
    Outcome,
    Progress,
    V0ExecutorFailedRequest,
    V0ExecutorReadyRequest,
    V0HordeFailedRequest,
    V0InitialJobRequest,
    V0JobFailedRequest,
    V0JobFinishedRequest,
    V0JobRequest,
    V0StreamingJobNotReadyRequest,
    V0StreamingJobReadyRequest,
)

WATCHDOG_GRACE_S = 15.0  # executor deadlines fire first; this only catches a silent executor
EXECUTOR_STARTUP_S = 5.0  # validator's DYNAMIC_EXECUTOR_STARTUP_TIME_LIMIT default
MAX_JOB_S = float(MAX_EXECUTOR_TIMEOUT_S)  # absolute cap on any job, as the stock pool enforces


class JobState(str, enum.Enum):
    SUBMITTED = "submitted"  # accepted, executor starting
    WAITING_FOR_PAYLOAD = "waiting_for_payload"  # ready sent, waiting for V0JobRequest
    RUNNING = "running"
    FINISHED = "finished"
    FAILED = "failed"

    @property
    def terminal(self) -> bool:
        return self in (JobState.FINISHED, JobState.FAILED)


@dataclass(frozen=True)
class ToValidator:
    message: MinerToValidatorMessage


@dataclass(frozen=True)
class ToExecutor:
    request: V0JobRequest | None = None  # payload to forward
    cancel: str | None = None  # reason to cancel the executor's job


@dataclass(frozen=True)
class Release:
    """The job is over: free its slot."""

    outcome: Outcome


Action = ToValidator | ToExecutor | Release

@dataclass
class Budget:
    """Stage budgets (seconds) the validator will wait, from the initial request."""

    readiness: float
    leeway: float
    download: float
    execution: float
    upload: float
    streaming: float

    @classmethod
    def from_initial(cls, initial: V0InitialJobRequest) -> Budget:
        spec = EXECUTOR_CLASS_SPECS.get(ExecutorClass(initial.executor_class))
        readiness = (spec.spin_up_time_s if spec else 240) + EXECUTOR_STARTUP_S
        t = initial.executor_timing
        if t is None:
            total = float(initial.timeout_seconds or MAX_JOB_S)
            return cls(readiness, total, 0, 0, 0, 0)
        return cls(
            readiness,
            t.allowed_leeway,
            t.download_time_limit,
            t.execution_time_limit,
            t.upload_time_limit,
            t.streaming_start_time_limit,
        )

    def total(self) -> float:
        """The longest the validator waits for the whole job, from the offer."""
        return self.readiness + self.leeway + self.download + self.execution + self.upload + self.streaming


@dataclass
class JobMachine:
    job_uuid: str
    budget: Budget
    started_at: float
    streaming: bool = False
    state: JobState = JobState.SUBMITTED
    progress: int = 0  # highest `Progress` step forwarded (0: none yet)
    deadline: float = 0.0
    outcome: Outcome | None = None
    log: list[str] = field(default_factory=list)  # why things were dropped, for the job's log lines

    def __post_init__(self) -> None:
        if not self.deadline:
            self.deadline = self.started_at + self.budget.readiness

    # -- inputs -------------------------------------------------------------------------

    def on_executor_message(self, message: ExecutorToMinerMessage, now: float) -> list[Action]:
        if self.state.terminal:
            self.log.append(f"dropped {message.kind()} after the job ended")
            return []
        if isinstance(message, GenericError):
            details = message.details or "Received GenericError from the executor with no details"
            return self._end(self._horde("executor", "generic_error", details))
        if isinstance(message, V0ExecutorFailedRequest):
            return self._end(self._horde("executor", "generic_error", "Legacy executor failure (V0ExecutorFailedRequest)"))
        if isinstance(message, V0StreamingJobNotReadyRequest):
            failed = V0JobFailedRequest(
                job_uuid=self.job_uuid,
                stage="streaming_startup",
                reason="unknown",
                message="Legacy streaming failure (V0StreamingJobNotReadyRequest)",
            )
            return self._end(failed)
        if message.outcome is not None:
            return self._end(message)
        step = message.progress
        if step is None:
            self.log.append(f"dropped unexpected {message.kind()}")
            return []
        if step <= self.progress:
            self.log.append(f"dropped duplicate or late {message.kind()}")
            return []
        self.progress = step
        self._extend_deadline(step, now)
        if isinstance(message, (V0ExecutorReadyRequest, V0StreamingJobReadyRequest)):
            message = message.model_copy(update={"executor_token": None})
        if step is Progress.EXECUTOR_READY:
            self.state = JobState.WAITING_FOR_PAYLOAD
        return [ToValidator(message)]

    def on_job_request(self, request: V0JobRequest, now: float) -> list[Action]:
        if self.state is not JobState.WAITING_FOR_PAYLOAD:
            raise JobRequestRefused(f"job {self.job_uuid} is {self.state.value}, not waiting for its payload")
        self.state = JobState.RUNNING
        return [ToExecutor(request=request)]

    def on_executor_lost(self, now: float, details: str) -> list[Action]:
        """The executor cannot be reached any more and will not be: an honest horde failure."""
        if self.state.terminal:
            return []
        return self._end(self._horde("miner", "executor_disconnected", details))

    def on_spinup_failed(self) -> list[Action]:
        """The executor could not be started or reached after the accept (stock ExecutorUnavailable)."""
        if self.state.terminal:
            return []
        return self._end(self._horde("miner", "executor_spinup_failed", "Executor failed to start"))

    def on_tick(self, now: float) -> list[Action]:
        if self.state.terminal:
            return []
        if now < min(self.deadline + WATCHDOG_GRACE_S, self.started_at + MAX_JOB_S):
            return []
        message = f"Executor sent no result within its budget (state {self.state.value})"
        return [ToExecutor(cancel="miner watchdog"), *self._end(self._horde("miner", "unhandled_timeout", message))]

    # -- helpers ------------------------------------------------------------------------

    def _extend_deadline(self, step: Progress, now: float) -> None:
        """The validator's clock restarts at ready; later steps add their stage budgets."""
        b = self.budget
        if step is Progress.EXECUTOR_READY:
            self.deadline = now + b.leeway + b.download
        elif step is Progress.VOLUMES_READY:
            self.deadline += b.execution + b.streaming
        elif step is Progress.EXECUTION_DONE:
            self.deadline += b.upload

    def _horde(self, reported_by: str, reason: str, message: str) -> V0HordeFailedRequest:
        return V0HordeFailedRequest(job_uuid=self.job_uuid, reported_by=reported_by, reason=reason, message=message)

    def _end(self, message: V0JobFinishedRequest | V0JobFailedRequest | V0HordeFailedRequest) -> list[Action]:
        outcome = message.outcome
        assert outcome is not None
        self.state = JobState.FINISHED if outcome is Outcome.FINISHED else JobState.FAILED
        self.outcome = outcome
        return [ToValidator(message), Release(outcome)]


class JobRequestRefused(Exception):
    """A V0JobRequest the job cannot take now; the validator gets a GenericError."""


__all__ = [
    "Action",
    "Budget",
    "JobMachine",
    "JobRequestRefused",
    "JobState",
    "Release",
    "ToExecutor",
    "ToValidator",
]
