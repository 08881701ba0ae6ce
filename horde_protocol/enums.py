"""Enumerations that travel on the ComputeHorde wire (protocol.md §1.3, §2.1, §2.2, §12).

Two kinds, and the difference is a wire-compatibility fact, not a taste:

* strict (`ExecutorClass`, `DockerRunOptionsPreset`, `UnauthorizedErrorCode`): an unknown value makes the
  whole frame invalid, exactly as on stock validators and executors. Never emit a value outside these.
* lenient (`JobStage`, `JobFailureReason`, `HordeFailureReason`, `JobRejectionReason`,
  `JobParticipantType`): any value not listed parses as `unknown`, so a newer peer adding a reason never
  breaks an older one. pydantic calls `_missing_` for these, in JSON and in Python mode.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any


class _LenientEnum(StrEnum):
    """A str enum whose unknown values (of any JSON type) become its `unknown` member."""

    @classmethod
    def _missing_(cls, value: Any) -> _LenientEnum:
        return cls("unknown")


class ExecutorClass(StrEnum):
    """The five executor classes (§2.1). Strict: one unknown class invalidates a manifest frame."""

    spin_up_4min__gpu_24gb = "spin_up-4min.gpu-24gb"
    always_on__gpu_24gb = "always_on.gpu-24gb"
    always_on__llm__a6000 = "always_on.llm.a6000"
    always_on__test = "always_on.test"
    always_on__cpu__8c__16gb = "always_on.cpu.8c.16gb"

    @property
    def spec(self) -> ExecutorClassSpec:
        return EXECUTOR_CLASS_SPECS[self]


@dataclass(frozen=True)
class ExecutorClassSpec:
    """What a validator assumes about a class: spin-up time sets its executor-readiness timeout (§5.2);
    the short code is the class's letter in the on-chain manifest commitment (§10)."""

    short_code: str
    spin_up_time_s: int
    has_gpu: bool
    gpu_vram_gb: int | None = None
    cpu_cores: int | None = None
    ram_gb: int | None = None


EXECUTOR_CLASS_SPECS: dict[ExecutorClass, ExecutorClassSpec] = {
    ExecutorClass.spin_up_4min__gpu_24gb: ExecutorClassSpec("S", 240, True, gpu_vram_gb=24),
    ExecutorClass.always_on__gpu_24gb: ExecutorClassSpec("A", 3, True, gpu_vram_gb=24),
    ExecutorClass.always_on__llm__a6000: ExecutorClassSpec("L", 30, True, gpu_vram_gb=48),
    ExecutorClass.always_on__test: ExecutorClassSpec("T", 3, False),
    ExecutorClass.always_on__cpu__8c__16gb: ExecutorClassSpec("C", 30, False, cpu_cores=8, ram_gb=16),
}
EXECUTOR_CLASS_BY_SHORT_CODE: dict[str, ExecutorClass] = {s.short_code: c for c, s in EXECUTOR_CLASS_SPECS.items()}

# The stock compute_horde default (what a stock miner without DEFAULT_EXECUTOR_CLASS advertised);
# the migration keeps it, so an imported config says what the old miner said.
STOCK_DEFAULT_EXECUTOR_CLASS = ExecutorClass.spin_up_4min__gpu_24gb
# Ours: the class validators weight. Production's DYNAMIC_EXECUTOR_CLASS_WEIGHTS has been
# `always_on.cpu.8c.16gb=100` since 2026-01, so a new executor advertised as the stock default
# would earn nothing; `miner-agent doctor` warns when the weights move on.
DEFAULT_EXECUTOR_CLASS = ExecutorClass.always_on__cpu__8c__16gb
DEFAULT_LLM_EXECUTOR_CLASS = ExecutorClass.always_on__llm__a6000
MAX_EXECUTOR_TIMEOUT_S = 1200  # 20 minutes: the stock miner's pool kills executors older than this


class DockerRunOptionsPreset(StrEnum):
    """How the job container is run (§2.2); validators pick `nvidia_all` for classes with a GPU. Strict."""

    nvidia_all = "nvidia_all"
    none = "none"


class UnauthorizedErrorCode(StrEnum):
    """`UnauthorizedError.code`. Strict: validators reject a frame with any other code."""

    TOKEN_TOO_OLD = "TOKEN_TOO_OLD"
    UNKNOWN_VALIDATOR = "UNKNOWN_VALIDATOR"
    VALIDATOR_INACTIVE = "VALIDATOR_INACTIVE"


class JobParticipantType(_LenientEnum):
    """Who reports a horde failure (`V0HordeFailedRequest.reported_by`)."""

    UNKNOWN = "unknown"
    SDK = "sdk"
    FACILITATOR = "facilitator"
    VALIDATOR = "validator"
    MINER = "miner"
    EXECUTOR = "executor"


class JobStage(_LenientEnum):
    """Where a job was when it failed (`V0JobFailedRequest.stage`)."""

    UNKNOWN = "unknown"
    EXECUTOR_STARTUP = "executor_startup"
    VOLUME_DOWNLOAD = "volume_download"
    STREAMING_STARTUP = "streaming_startup"
    EXECUTION = "execution"
    RESULT_UPLOAD = "result_upload"


class JobFailureReason(_LenientEnum):
    """The job's own fault (`V0JobFailedRequest.reason`)."""

    UNKNOWN = "unknown"
    TIMEOUT = "timeout"
    NONZERO_RETURN_CODE = "nonzero_return_code"
    DOWNLOAD_FAILED = "download_failed"
    UPLOAD_FAILED = "upload_failed"


class HordeFailureReason(_LenientEnum):
    """An infrastructure fault (`V0HordeFailedRequest.reason`). The `*_timed_out` and
    `miner_connection_failed` values are the validator's own; a miner never sends them."""

    UNKNOWN = "unknown"
    GENERIC_ERROR = "generic_error"
    UNHANDLED_EXCEPTION = "unhandled_exception"
    UNHANDLED_TIMEOUT = "unhandled_timeout"
    STREAMING_FAILED = "streaming_failed"
    MINER_CONNECTION_FAILED = "miner_connection_failed"
    INITIAL_RESPONSE_TIMED_OUT = "initial_response_timed_out"
    EXECUTOR_READINESS_RESPONSE_TIMED_OUT = "executor_readiness_response_timed_out"
    VOLUMES_TIMED_OUT = "volumes_timed_out"
    STREAMING_JOB_READY_TIMED_OUT = "streaming_job_ready_timed_out"
    EXECUTION_TIMED_OUT = "execution_timed_out"
    FINAL_RESPONSE_TIMED_OUT = "final_response_timed_out"
    EXECUTOR_SPINUP_FAILED = "executor_spinup_failed"
    EXECUTOR_DISCONNECTED = "executor_disconnected"
    SECURITY_CHECK_FAILED = "security_check_failed"


class JobRejectionReason(_LenientEnum):
    """Why a miner declines an offer (`V0DeclineJobRequest.reason`). Only `busy` can be excused (§5.3);
    `invalid_receipt` is the newer wheel's addition (§12)."""

    UNKNOWN = "unknown"
    BUSY = "busy"
    INVALID_SIGNATURE = "invalid_signature"
    INVALID_RECEIPT = "invalid_receipt"
    NO_MINER_FOR_JOB = "no_miner_for_job"
    VALIDATOR_BLACKLISTED = "validator_blacklisted"


# Hotkey a validator writes as `miner_hotkey` for its own trusted miner, reached by address (§12).
TRUSTED_MINER_FAKE_KEY = "0" * 48

__all__ = [
    "DEFAULT_EXECUTOR_CLASS",
    "STOCK_DEFAULT_EXECUTOR_CLASS",
    "DEFAULT_LLM_EXECUTOR_CLASS",
    "EXECUTOR_CLASS_BY_SHORT_CODE",
    "EXECUTOR_CLASS_SPECS",
    "MAX_EXECUTOR_TIMEOUT_S",
    "TRUSTED_MINER_FAKE_KEY",
    "DockerRunOptionsPreset",
    "ExecutorClass",
    "ExecutorClassSpec",
    "HordeFailureReason",
    "JobFailureReason",
    "JobParticipantType",
    "JobRejectionReason",
    "JobStage",
    "UnauthorizedErrorCode",
]
