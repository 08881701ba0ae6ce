"""What a restarted agent needs to pick up a job whose container kept running.

Job containers run under the podman service, so they survive an agent restart (an
upgrade, a crash). When the container starts, the job writes `running.json` next to
its event log: both requests, the container id and the deadlines as wall-clock
instants (monotonic clocks do not survive a restart). A new agent that finds an
unfinished event log resumes the job from the container (exited or still running)
when that file and the labelled container are there, and otherwise ends the job with
a horde failure, so every job still gets exactly one terminal event.
"""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path

from pydantic import BaseModel, ValidationError

from agent_common.private import private_open
from executor_agent.daemon.deadline import Deadline, StageBudgets
from horde_protocol.messages import V0InitialJobRequest, V0JobRequest

STATE_FILE = "running.json"
RESTART_MESSAGE = "Executor agent restarted and could not resume the job (stage: {stage})"


class RunningState(BaseModel):
    initial: V0InitialJobRequest
    request: V0JobRequest
    container_id: str
    deadline_unix: float  # the shared job deadline (execution stage already added)
    container_deadline_unix: float  # when the container itself runs out of time

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


def load_running_state(job_root: Path) -> RunningState | None:
    try:
        return RunningState.model_validate_json((job_root / STATE_FILE).read_bytes())
    except (FileNotFoundError, ValidationError):
        return None


def drop_running_state(job_root: Path) -> None:
    (job_root / STATE_FILE).unlink(missing_ok=True)
    (job_root / (STATE_FILE + ".tmp")).unlink(missing_ok=True)  # a write cut short by a crash
