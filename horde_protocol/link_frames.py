"""The link protocol between miner-agent and executor-agent.

Newline-delimited JSON over one stream (the executor agent's unix socket, reached
directly in `local` mode or through an SSH streamlocal channel in `ssh` mode).
One connection carries any number of jobs.

The job messages themselves are ComputeHorde's own (`V0InitialJobRequest`,
`V0JobRequest` down; `V0ExecutorReadyRequest` ... `V0JobFinishedRequest`,
`V0JobFailedRequest`, `V0HordeFailedRequest` up), so the miner forwards what the
executor says to the validator unchanged. They travel inside a few envelope frames
of ours, discriminated by the key `link` (never `message_type`, so an envelope can
never be mistaken for a validator frame):

miner -> executor
    submit   start a job: startup stage (image check), then `V0ExecutorReadyRequest`
    payload  the validator's `V0JobRequest` for a submitted job
    attach   (re)subscribe this connection to a job's events with seq > since_seq
    cancel   stop a job now (container killed, a `V0HordeFailedRequest` is the last event)
    ping     liveness; answered by pong with the same nonce
    doctor   ask for the agent's own health checks; answered by doctor_report with the same nonce

executor -> miner
    hello    first frame on every connection: version, slots, the jobs it knows
    event    one upward job message with its per-job sequence number (1, 2, ...)
    error    a frame the agent could not act on (code busy / unknown_job: the job cannot
             run here); the connection stays open
    pong     answer to ping
    doctor_report  the agent's check rows ({check, status, detail}) for `miner-agent doctor`

Compatibility. LINK_VERSION counts breaking changes only; a frame kind added later (doctor,
doctor_report) keeps it, because each side ignores what it does not know: unknown keys are
dropped (extra="ignore"), an agent that predates a request kind answers it with an `error`
frame (no job_uuid, "malformed frame"), and an agent lists the optional requests it answers in
Hello `features`, so a miner never needs to guess. A miner that predates doctor_report never
asks for one, so it never receives one.
Every event is appended to the job's event log on the executor host before it is
sent, so `attach` after a reconnect or a restart replays exactly what was missed.
"""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from horde_protocol.messages import ExecutorToMinerMessage, V0InitialJobRequest, V0JobRequest

LINK_VERSION = 1
MAX_FRAME_BYTES = 64 * 1024 * 1024  # 64 MiB: a finished message may carry 2 MB of output + artifacts


class LinkFrame(BaseModel):
    """Base of every link frame (both directions); public so a writer can be typed against it."""

    model_config = ConfigDict(extra="ignore")


class Submit(LinkFrame):
    link: Literal["submit"] = "submit"
    job_uuid: str
    initial: V0InitialJobRequest


class Payload(LinkFrame):
    link: Literal["payload"] = "payload"
    job_uuid: str
    request: V0JobRequest


class Attach(LinkFrame):
    link: Literal["attach"] = "attach"
    job_uuid: str
    since_seq: int = 0


class Cancel(LinkFrame):
    link: Literal["cancel"] = "cancel"
    job_uuid: str
    reason: str = ""


class Ping(LinkFrame):
    link: Literal["ping"] = "ping"
    nonce: int = 0


class Doctor(LinkFrame):
    """Ask the agent for its health checks (cached start-up results plus cheap live ones)."""

    link: Literal["doctor"] = "doctor"
    nonce: int = 0
    # The class the miner advertises this executor as: GPU checks (CDI spec, toolkit version)
    # apply only to a GPU class. None: the agent decides from its own hardware.
    executor_class: str | None = None


class DoctorRow(LinkFrame):
    check: str
    status: Literal["ok", "warn", "FAIL", "not checked"]
    detail: str = ""


class DoctorReport(LinkFrame):
    link: Literal["doctor_report"] = "doctor_report"
    nonce: int = 0
    rows: list[DoctorRow] = Field(default_factory=list)


FEATURE_DOCTOR = "doctor"  # Hello.features entry: this agent answers `doctor`


class JobSummary(LinkFrame):
    job_uuid: str
    last_seq: int
    finished: bool


class Hello(LinkFrame):
    link: Literal["hello"] = "hello"
    link_version: int = LINK_VERSION
    agent_version: str
    slots: int = 1
    jobs: list[JobSummary] = Field(default_factory=list)
    features: list[str] = Field(default_factory=list)  # optional requests it answers (FEATURE_DOCTOR)


class Event(LinkFrame):
    link: Literal["event"] = "event"
    job_uuid: str
    seq: int
    message: ExecutorToMinerMessage


class LinkError(LinkFrame):
    link: Literal["error"] = "error"
    job_uuid: str | None = None
    details: str
    # "busy" (no free slot for a submit) and "unknown_job" mean the job cannot run here and
    # the miner should end it; anything else ("" included) is informational, e.g. a
    # duplicate frame re-sent after a reconnect.
    code: str = ""


class Pong(LinkFrame):
    link: Literal["pong"] = "pong"
    nonce: int = 0


MinerToAgentFrame = Annotated[Union[Submit, Payload, Attach, Cancel, Ping, Doctor], Field(discriminator="link")]
AgentToMinerFrame = Annotated[Union[Hello, Event, LinkError, Pong, DoctorReport], Field(discriminator="link")]

_down = TypeAdapter(MinerToAgentFrame)
_up = TypeAdapter(AgentToMinerFrame)

def encode(frame: LinkFrame) -> bytes:
    """One frame as one line of compact JSON."""
    return frame.model_dump_json().encode() + b"\n"


def decode_down(line: bytes | str) -> Submit | Payload | Attach | Cancel | Ping | Doctor:
    """Parse a miner->executor line; raises pydantic.ValidationError on anything else."""
    return _down.validate_json(line)


def decode_up(line: bytes | str) -> Hello | Event | LinkError | Pong | DoctorReport:
    """Parse an executor->miner line; raises pydantic.ValidationError on anything else."""
    return _up.validate_json(line)


def is_terminal(event: Event) -> bool:
    """The event ends its job (the lifecycle is declared on the message models)."""
    return event.message.outcome is not None
