"""The two ways a job can fail on this host, as flat exceptions translated once, at the
end of `JobRun.run()`, into the stock messages of protocol.md §5.4."""

from __future__ import annotations

from typing import Any

from horde_protocol.enums import HordeFailureReason, JobFailureReason


class JobFailure(Exception):
    """The job's own fault; becomes V0JobFailedRequest at the current stage."""

    def __init__(self, reason: JobFailureReason, message: str, *, exit_status: int | None = None,
                 stdout: str | None = None, stderr: str | None = None) -> None:
        super().__init__(message)
        self.reason, self.message = reason, message
        self.exit_status, self.stdout, self.stderr = exit_status, stdout, stderr


class HordeFailure(Exception):
    """Our (infrastructure) fault; becomes V0HordeFailedRequest reported_by executor."""

    def __init__(self, reason: HordeFailureReason, message: str, context: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.reason, self.message, self.context = reason, message, context
