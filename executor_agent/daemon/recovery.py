"""What a restarted agent needs to pick up a job whose container kept running.

Job containers run under the podman service, so they survive an agent restart (an
upgrade, a crash). When the container starts, the job writes `running.json` next to
its event log: both requests, the container id and the deadlines as wall-clock
instants (monotonic clocks do not survive a restart). A new agent that finds an
unfinished event log resumes the job from the container (exited or still running)
when that file and the labelled container are there, and otherwise ends the job with
a horde failure, so every job still gets exactly one terminal event.

A streaming job adds its endpoint (`streaming`: port and certificate files) once its
proxy answers; the validator pinned that port and key, so a new agent serves the
same ones again (daemon/streaming_job.py `StreamingSession.resume`).
"""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path

from pydantic import BaseModel, Field, ValidationError

from agent_common.private import private_open
from executor_agent.daemon.deadline import Deadline, StageBudgets
from horde_protocol.messages import V0InitialJobRequest, V0JobRequest

STATE_FILE = "running.json"
RESTART_MESSAGE = "Executor agent restarted and could not resume the job (stage: {stage})"


class StreamingEndpoint(BaseModel):
    """Where a streaming job is served: the announced port and the certificate files in
    `<job>/ssl` (the private key 0600). A restarted agent re-opens exactly this port with
    exactly this certificate, because the validator pinned both."""

    port: int = Field(ge=1, le=65535)
    cert_path: Path
    key_path: Path
    client_ca_path: Path  # the user's certificate: the only client trust anchor


class RunningState(BaseModel):
    initial: V0InitialJobRequest
    request: V0JobRequest
    container_id: str
    deadline_unix: float  # the shared job deadline (execution stage already added)
    container_deadline_unix: float  # when the container itself runs out of time
    streaming: StreamingEndpoint | None = None  # set once a streaming job's endpoint answered

    def deadline(self, now: float) -> Deadline:
        """Rebuild the Deadline on this process's monotonic clock."""
        budgets = StageBudgets.from_initial(self.initial.executor_timing, self.initial.timeout_seconds)
        left_container_s = max(0.0, self.container_deadline_unix - time.time())
        deadline = Deadline(dataclasses.replace(budgets, container_limit_s=left_container_s), now)
        deadline.at = now + (self.deadline_unix - time.time())
        return deadline


def save_running_state(job_root: Path, initial: V0InitialJobRequest, request: V0JobRequest,
                       container_id: str, deadline: Deadline, now: float) -> None:
    """Atomically (write + rename) record what a resume needs; 0600 from the first byte,
    whatever the umask: it holds the job's upload URLs."""
    wall = time.time()
    state = RunningState(initial=initial, request=request, container_id=container_id,
                         deadline_unix=wall + deadline.remaining(now),
                         container_deadline_unix=wall + deadline.container_timeout(now))
    tmp = job_root / (STATE_FILE + ".tmp")
    with private_open(tmp) as f:
        f.write(state.model_dump_json().encode())
    os.replace(tmp, job_root / STATE_FILE)


def record_streaming_endpoint(job_root: Path, endpoint: StreamingEndpoint) -> None:
    """Add the endpoint to the job's running.json (written by the job when its container
    started); atomically, private from the first byte like the key it points at."""
    state = load_running_state(job_root)
    if state is None:
        raise FileNotFoundError(f"no {STATE_FILE} in {job_root} to record the streaming endpoint in")
    tmp = job_root / (STATE_FILE + ".tmp")
    with private_open(tmp) as f:
        f.write(state.model_copy(update={"streaming": endpoint}).model_dump_json().encode())
    os.replace(tmp, job_root / STATE_FILE)


def load_running_state(job_root: Path) -> RunningState | None:
    try:
        return RunningState.model_validate_json((job_root / STATE_FILE).read_bytes())
    except (FileNotFoundError, ValidationError):
        return None


def drop_running_state(job_root: Path) -> None:
    (job_root / STATE_FILE).unlink(missing_ok=True)
    (job_root / (STATE_FILE + ".tmp")).unlink(missing_ok=True)  # a write cut short by a crash
