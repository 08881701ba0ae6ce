"""What the miner exports on /metrics (docs/metrics.md); the text format is agent_common.prom_text."""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from agent_common.prom_text import Counter, Gauge, Histogram, Labels, render
from horde_protocol.messages import V0HordeFailedRequest, V0JobFailedRequest

__all__ = ["Counter", "Gauge", "Histogram", "Labels", "MinerMetrics"]

LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 7.0, 10.0)
STAGE_BUCKETS_S = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1200)


@dataclass
class MinerMetrics:
    """Everything the miner exports; gauges are attached by the daemon once their owners exist."""

    jobs: Counter = field(default_factory=lambda: Counter(
        "miner_agent_jobs_total", "Jobs by outcome (accepted, declined_<reason>, finished, failed) and executor class"))
    accept_latency: Histogram = field(default_factory=lambda: Histogram(
        "miner_agent_accept_latency_seconds", "From V0InitialJobRequest received to accept/decline sent",
        LATENCY_BUCKETS_S))
    stage_duration: Histogram = field(default_factory=lambda: Histogram(
        "miner_agent_stage_duration_seconds", "Job stage durations seen by the miner, by stage and class",
        STAGE_BUCKETS_S))
    validator_frames: Counter = field(default_factory=lambda: Counter(
        "miner_agent_validator_frames_total",
        "Websocket frames received on the validator port, by whether the socket was authenticated and the frame parsed"))
    job_failures: Counter = field(default_factory=lambda: Counter(
        "miner_agent_job_failures_total",
        "Accepted jobs that ended failed, by kind (job: the job's own fault, horde: ours), reason and class"))
    gauges: list[Gauge] = field(default_factory=list)
    ws_open: int = 0
    started_unix: float = field(default_factory=time.time)  # lets an alert wait out a fresh start

    def count_failures(self, messages: Iterable[object], executor_class: str) -> None:
        """Count the failure among a job's last messages by its reason. The reasons are the protocol's
        lenient enums (an unknown one reads `unknown`), so the label has a bounded set of values."""
        for message in messages:
            if isinstance(message, V0JobFailedRequest):
                self.job_failures.inc(kind="job", reason=message.reason.value, executor_class=executor_class)
            elif isinstance(message, V0HordeFailedRequest):
                self.job_failures.inc(kind="horde", reason=message.reason.value, executor_class=executor_class)

    def render(self) -> str:
        return render((self.jobs, self.accept_latency, self.stage_duration, self.validator_frames, self.job_failures,
                       *self.gauges))
