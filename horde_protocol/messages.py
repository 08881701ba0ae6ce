"""The ComputeHorde WebSocket messages (protocol.md §1.3, §3, §12), one pydantic model per `message_type`.

Wire rules these models keep, because stock validators and executors depend on them:

* the class name is the `message_type` value, and each direction has its own tagged union: a frame
  whose `message_type` belongs to another direction is as invalid as garbage;
* unknown keys are ignored (forward compatibility both ways);
* `dump()` is pydantic's compact `model_dump_json()`: every field present, nulls included, enums as
  values, fields in the reference models' order (so a parsed frame re-serializes byte-exactly;
  `validator_signature` comes first because the reference declares it on a base class).

Parsing helpers raise pydantic.ValidationError for anything that is not a valid frame of their
direction; `parse_validator_frame` also returns the received object, which the §12
`validator_signature` covers.
"""

from __future__ import annotations

import enum
import json
from typing import Annotated, Any, ClassVar, Literal, Union

from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    NonNegativeInt,
    TypeAdapter,
    ValidationError,
)

from horde_protocol.enums import (
    DockerRunOptionsPreset,
    ExecutorClass,
    HordeFailureReason,
    JobFailureReason,
    JobParticipantType,
    JobRejectionReason,
    JobStage,
    UnauthorizedErrorCode,
)
from horde_protocol.receipts import (
    JobAcceptedReceiptPayload,
    JobFinishedReceiptPayload,
    JobStartedReceiptPayload,
    Receipt,
)
from horde_protocol.signing import verify_blob
from horde_protocol.structs import ExecutorTimingDetails, MachineSpecs, StreamingDetails
from horde_protocol.uploads import OutputUpload
from horde_protocol.volumes import Volume

FailureContext = dict[str, JsonValue]


class Progress(enum.IntEnum):
    """The steps of a job's progress, in the order validators wait for them (protocol.md §5.2).

    A relay forwards the first message of each step and drops a duplicate or one that arrives
    after a later step; only the steps marked `mandatory` are waited for by every validator."""

    EXECUTOR_READY = 1
    VOLUMES_READY = 2
    STREAMING_READY = 3
    EXECUTION_DONE = 4
    MACHINE_SPECS = 5

    @property
    def mandatory(self) -> bool:
        return self in (Progress.EXECUTOR_READY, Progress.VOLUMES_READY, Progress.EXECUTION_DONE)


class Outcome(str, enum.Enum):
    """How a message ends a job (or, for a decline, the offer): at most one such message per job."""

    FINISHED = "finished"
    FAILED = "failed"
    DECLINED = "declined"


class _Message(BaseModel):
    """Every wire message. The three class attributes are the job lifecycle, declared here once:
    agents, relays and the self-test read them instead of keeping tables of `message_type` strings."""

    model_config = ConfigDict(extra="ignore")

    progress: ClassVar[Progress | None] = None  # the progress step this message reports
    outcome: ClassVar[Outcome | None] = None  # set on messages that end the job
    closes_stage: ClassVar[JobStage | None] = None  # the job stage whose end this message marks

    @classmethod
    def kind(cls) -> str:
        """The `message_type` value (also the class name), without an instance."""
        return cls.model_fields["message_type"].default


# ---------------------------------------------------------------- both directions


class GenericError(_Message):
    """Any error; never ends a job by itself."""

    message_type: Literal["GenericError"] = "GenericError"
    details: str | None = None


class V0MainHotkeyMessage(_Message):
    """Sent with `main_hotkey: null` as a query; the miner answers with its main hotkey (§5.6)."""

    message_type: Literal["V0MainHotkeyMessage"] = "V0MainHotkeyMessage"
    main_hotkey: str | None = None


# ---------------------------------------------------------------- validator -> miner (§3.1)


class ValidatorAuthForMiner(_Message):
    """First frame of every validator connection; `signature` covers `blob()` (§4.2)."""

    message_type: Literal["ValidatorAuthForMiner"] = "ValidatorAuthForMiner"
    validator_hotkey: str
    miner_hotkey: str
    timestamp: int
    signature: str

    def blob(self) -> str:
        return f"{self.validator_hotkey}:{self.miner_hotkey}:{self.timestamp}"


class V0InitialJobRequest(_Message):
    """Job offer / executor reservation. Also what the miner sends its executor first (§3.3)."""

    validator_signature: str | None = None  # §12; over the received object: validator_signature_blob
    message_type: Literal["V0InitialJobRequest"] = "V0InitialJobRequest"
    job_uuid: str
    executor_class: ExecutorClass
    docker_image: str | None = None
    timeout_seconds: int | None = None  # deprecated single total budget, used when executor_timing is null
    volume: Volume | None = None
    job_started_receipt_payload: JobStartedReceiptPayload
    job_started_receipt_signature: str
    streaming_details: StreamingDetails | None = None
    executor_timing: ExecutorTimingDetails | None = None


class V0JobRequest(_Message):
    """The full job, sent only after `V0ExecutorReadyRequest`; forwarded to the executor as is."""

    validator_signature: str | None = None  # §12
    message_type: Literal["V0JobRequest"] = "V0JobRequest"
    job_uuid: str
    executor_class: ExecutorClass
    docker_image: str
    raw_script: str | None = None
    docker_run_options_preset: DockerRunOptionsPreset
    docker_run_cmd: list[str]
    env: dict[str, str] = Field(default_factory=dict)
    volume: Volume | None = None
    output_upload: OutputUpload | None = None
    artifacts_dir: str | None = None


class V0JobAcceptedReceiptRequest(_Message):
    """The validator's signed JobAccepted receipt; no reply."""

    message_type: Literal["V0JobAcceptedReceiptRequest"] = "V0JobAcceptedReceiptRequest"
    payload: JobAcceptedReceiptPayload
    signature: str


class V0JobFinishedReceiptRequest(_Message):
    """The validator's signed JobFinished receipt, sent at the end of every job; no reply."""

    message_type: Literal["V0JobFinishedReceiptRequest"] = "V0JobFinishedReceiptRequest"
    payload: JobFinishedReceiptPayload
    signature: str


# ---------------------------------------------------------------- miner -> validator only (§3.2)


class UnauthorizedError(_Message):
    """Understood by validators, though the stock miner refuses with `GenericError` instead."""

    message_type: Literal["UnauthorizedError"] = "UnauthorizedError"
    code: UnauthorizedErrorCode
    details: str | None = None


class V0ExecutorManifestRequest(_Message):
    """First miner frame after auth. One unknown class key invalidates the frame on the validator."""

    message_type: Literal["V0ExecutorManifestRequest"] = "V0ExecutorManifestRequest"
    manifest: dict[ExecutorClass, NonNegativeInt]

    @property
    def total_count(self) -> int:
        return sum(self.manifest.values())


class V0AcceptJobRequest(_Message):
    """Executor reserved (must reach the validator within the 7 s reservation window)."""

    message_type: Literal["V0AcceptJobRequest"] = "V0AcceptJobRequest"
    job_uuid: str


class V0DeclineJobRequest(_Message):
    """Offer refused; only `busy` with enough `receipts` is excused (§5.3)."""

    message_type: Literal["V0DeclineJobRequest"] = "V0DeclineJobRequest"
    outcome = Outcome.DECLINED
    job_uuid: str
    message: str = ""
    reason: JobRejectionReason = JobRejectionReason.UNKNOWN
    receipts: list[Receipt] = Field(default_factory=list)
    context: FailureContext | None = None


# ---------------------------------------------------------------- executor -> miner -> validator (§3.2, §3.4)


class V0ExecutorReadyRequest(_Message):
    """Executor finished startup; the validator's deadline timer starts now."""

    message_type: Literal["V0ExecutorReadyRequest"] = "V0ExecutorReadyRequest"
    progress = Progress.EXECUTOR_READY
    closes_stage = JobStage.EXECUTOR_STARTUP
    job_uuid: str
    executor_token: str | None = None


class V0VolumesReadyRequest(_Message):
    """Input downloaded. Mandatory: the validator waits for it."""

    message_type: Literal["V0VolumesReadyRequest"] = "V0VolumesReadyRequest"
    progress = Progress.VOLUMES_READY
    closes_stage = JobStage.VOLUME_DOWNLOAD
    job_uuid: str


class V0StreamingJobReadyRequest(_Message):
    """Streaming server up; the miner sets `ip` and `miner_signature` (over `signature_blob()`, §4.5)."""

    message_type: Literal["V0StreamingJobReadyRequest"] = "V0StreamingJobReadyRequest"
    progress = Progress.STREAMING_READY
    job_uuid: str
    executor_token: str | None = None
    public_key: str
    ip: str | None = None
    port: int
    miner_signature: str | None = None

    def signature_blob(self) -> str:
        return f"{self.job_uuid}:{self.ip}:{self.port}:{self.public_key}"


class V0ExecutionDoneRequest(_Message):
    """Container exited with 0. Mandatory: the validator waits for it."""

    message_type: Literal["V0ExecutionDoneRequest"] = "V0ExecutionDoneRequest"
    progress = Progress.EXECUTION_DONE
    closes_stage = JobStage.EXECUTION
    job_uuid: str


class V0MachineSpecsRequest(_Message):
    """Optional, before `V0JobFinishedRequest`; note the two levels: `specs.specs`."""

    message_type: Literal["V0MachineSpecsRequest"] = "V0MachineSpecsRequest"
    progress = Progress.MACHINE_SPECS
    job_uuid: str
    specs: MachineSpecs


class V0JobFinishedRequest(_Message):
    """Success, terminal. `artifacts` values are base64; `upload_results` values are JSON strings."""

    message_type: Literal["V0JobFinishedRequest"] = "V0JobFinishedRequest"
    outcome = Outcome.FINISHED
    closes_stage = JobStage.RESULT_UPLOAD
    job_uuid: str
    docker_process_stdout: str
    docker_process_stderr: str
    artifacts: dict[str, str] | None = None
    upload_results: dict[str, str] | None = None


class V0JobFailedRequest(_Message):
    """The job's own fault, terminal. Older peers send `error_detail`/`error_type`; accepted on input,
    always written as `message`/`reason`."""

    message_type: Literal["V0JobFailedRequest"] = "V0JobFailedRequest"
    outcome = Outcome.FAILED
    job_uuid: str
    message: str = Field(default="", validation_alias=AliasChoices("message", "error_detail"))
    reason: JobFailureReason = Field(
        default=JobFailureReason.UNKNOWN, validation_alias=AliasChoices("reason", "error_type")
    )
    stage: JobStage = JobStage.UNKNOWN
    docker_process_exit_status: int | None = None
    docker_process_stdout: str | None = None
    docker_process_stderr: str | None = None
    context: FailureContext | None = None


class V0HordeFailedRequest(_Message):
    """Infrastructure fault, terminal."""

    message_type: Literal["V0HordeFailedRequest"] = "V0HordeFailedRequest"
    outcome = Outcome.FAILED
    job_uuid: str
    reported_by: JobParticipantType
    message: str
    reason: HordeFailureReason
    context: FailureContext | None = None


class V0ExecutorFailedRequest(_Message):
    """Deprecated: validators map it to a horde failure `generic_error`. Parse it, never send it."""

    message_type: Literal["V0ExecutorFailedRequest"] = "V0ExecutorFailedRequest"
    outcome = Outcome.FAILED
    job_uuid: str
    executor_token: str | None = None


class V0StreamingJobNotReadyRequest(_Message):
    """Deprecated: validators map it to a horde failure `streaming_failed`. Parse it, never send it."""

    message_type: Literal["V0StreamingJobNotReadyRequest"] = "V0StreamingJobNotReadyRequest"
    outcome = Outcome.FAILED
    job_uuid: str
    executor_token: str | None = None


# ---------------------------------------------------------------- the four directions (§3.1-§3.4)

ValidatorToMinerMessage = Annotated[
    Union[
        GenericError, ValidatorAuthForMiner, V0InitialJobRequest, V0JobRequest, V0JobAcceptedReceiptRequest,
        V0JobFinishedReceiptRequest, V0MainHotkeyMessage,
    ],
    Field(discriminator="message_type"),
]

MinerToValidatorMessage = Annotated[
    Union[
        GenericError, UnauthorizedError, V0ExecutorManifestRequest, V0MainHotkeyMessage, V0DeclineJobRequest,
        V0AcceptJobRequest, V0ExecutorFailedRequest, V0StreamingJobNotReadyRequest, V0ExecutorReadyRequest,
        V0StreamingJobReadyRequest, V0JobFailedRequest, V0VolumesReadyRequest, V0ExecutionDoneRequest,
        V0JobFinishedRequest, V0MachineSpecsRequest, V0HordeFailedRequest,
    ],
    Field(discriminator="message_type"),
]

MinerToExecutorMessage = Annotated[
    Union[GenericError, V0InitialJobRequest, V0JobRequest],
    Field(discriminator="message_type"),
]

ExecutorToMinerMessage = Annotated[
    Union[
        GenericError, V0ExecutorFailedRequest, V0StreamingJobNotReadyRequest, V0ExecutorReadyRequest,
        V0StreamingJobReadyRequest, V0VolumesReadyRequest, V0ExecutionDoneRequest, V0JobFailedRequest,
        V0JobFinishedRequest, V0MachineSpecsRequest, V0HordeFailedRequest,
    ],
    Field(discriminator="message_type"),
]

_VALIDATOR_TO_MINER: TypeAdapter[ValidatorToMinerMessage] = TypeAdapter(ValidatorToMinerMessage)
_MINER_TO_VALIDATOR: TypeAdapter[MinerToValidatorMessage] = TypeAdapter(MinerToValidatorMessage)
_MINER_TO_EXECUTOR: TypeAdapter[MinerToExecutorMessage] = TypeAdapter(MinerToExecutorMessage)
_EXECUTOR_TO_MINER: TypeAdapter[ExecutorToMinerMessage] = TypeAdapter(ExecutorToMinerMessage)

# ---------------------------------------------------------------- parsing and writing frames


def parse_validator_to_miner(raw: str | bytes) -> ValidatorToMinerMessage:
    """One validator frame; raises pydantic.ValidationError (bad JSON included)."""
    return parse_validator_frame(raw)[0]


def parse_validator_frame(raw: str | bytes) -> tuple[ValidatorToMinerMessage, dict[str, Any]]:
    """One validator frame and the JSON object it arrived as, which §12's `validator_signature`
    covers. The model is validated from that very object (as the reference miner does), so even with
    duplicate keys the miner acts only on content the signature covers."""
    try:
        content = json.loads(raw)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise ValidationError.from_exception_data(
            "ValidatorToMinerMessage", [{"type": "json_invalid", "loc": (), "input": raw, "ctx": {"error": str(exc)}}]
        ) from None
    return _VALIDATOR_TO_MINER.validate_python(content), content


def parse_miner_to_validator(raw: str | bytes) -> MinerToValidatorMessage:
    """What a validator makes of a miner frame (used by tests and fakes)."""
    return _MINER_TO_VALIDATOR.validate_json(raw)


def parse_miner_to_executor(raw: str | bytes) -> MinerToExecutorMessage:
    return _MINER_TO_EXECUTOR.validate_json(raw)


def parse_executor_to_miner(raw: str | bytes) -> ExecutorToMinerMessage:
    return _EXECUTOR_TO_MINER.validate_json(raw)


def malformed_details(exc: ValidationError) -> str:
    """`GenericError.details` for a frame that failed to parse, as the stock miner words it (§1.3)."""
    return f"Malformed message: {exc}"


def dump(message: BaseModel) -> str:
    """A frame as sent: compact JSON, every field, nulls included, enums as values."""
    return message.model_dump_json()


def validator_signature_blob(raw: dict[str, Any]) -> str:
    """What §12's `validator_signature` signs: the received object without that key, sorted keys,
    no whitespace (unlike the receipt blob), non-ASCII escaped."""
    content = {key: value for key, value in raw.items() if key != "validator_signature"}
    return json.dumps(content, sort_keys=True, separators=(",", ":"))


def validator_signature_ok(raw: dict[str, Any], validator_hotkey: str) -> bool | None:
    """None when the frame carries no `validator_signature` (older validators: accept), else whether
    it is `validator_hotkey`'s signature over `validator_signature_blob(raw)`."""
    signature = raw.get("validator_signature")
    if signature is None:
        return None
    return isinstance(signature, str) and verify_blob(validator_hotkey, validator_signature_blob(raw), signature)
