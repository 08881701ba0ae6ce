"""Small structures nested in messages (protocol.md §2.3)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict


class _Struct(BaseModel):
    model_config = ConfigDict(extra="ignore")


class StreamingDetails(_Struct):
    """`public_key` = the streaming client's PEM certificate; the miner fills `executor_ip`."""

    public_key: str
    executor_ip: str | None = None


class ExecutorTimingDetails(_Struct):
    """Per-stage budgets in seconds; each stage adds its budget to one running deadline (§5.2)."""

    allowed_leeway: int
    download_time_limit: int
    execution_time_limit: int
    upload_time_limit: int
    streaming_start_time_limit: int


class MachineSpecs(_Struct):
    """What the executor found on its host (gpu, cpu, ram, hard_disk, os...); free-form."""

    specs: dict[str, Any]
