"""Prometheus metrics in the text exposition format, written by hand.

A handful of counters and histograms do not justify a client library; the format is
small and stable (https://prometheus.io/docs/instrumenting/exposition_formats/).
Gauges that mirror live state (executors up, open connections, receipts stored) are
read at scrape time from their owners instead of being kept in sync here.
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 7.0, 10.0)
STAGE_BUCKETS_S = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1200)

Labels = tuple[tuple[str, str], ...]


def _fmt_labels(labels: Labels, extra: tuple[str, str] | None = None) -> str:
    items = [*labels, *([extra] if extra else [])]
    if not items:
        return ""
    inner = ",".join(f'{k}="{_escape(v)}"' for k, v in items)
    return "{" + inner + "}"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


@dataclass
class Counter:
    name: str
    help: str
    values: dict[Labels, float] = field(default_factory=lambda: defaultdict(float))

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        self.values[tuple(sorted(labels.items()))] += amount

    def render(self) -> Iterable[str]:
        yield f"# HELP {self.name} {self.help}"
        yield f"# TYPE {self.name} counter"
        for labels, value in sorted(self.values.items()):
            yield f"{self.name}{_fmt_labels(labels)} {value:g}"


@dataclass
class Histogram:
    name: str
    help: str
    buckets: tuple[float, ...]
    series: dict[Labels, list[float]] = field(default_factory=dict)  # bucket counts..., sum, count

    def observe(self, value: float, **labels: str) -> None:
        key = tuple(sorted(labels.items()))
        row = self.series.setdefault(key, [0.0] * (len(self.buckets) + 2))
        for i in range(bisect.bisect_left(self.buckets, value), len(self.buckets)):
            row[i] += 1
        row[-2] += value
        row[-1] += 1

    def render(self) -> Iterable[str]:
        yield f"# HELP {self.name} {self.help}"
        yield f"# TYPE {self.name} histogram"
        for labels, row in sorted(self.series.items()):
            for bound, count in zip(self.buckets, row):
                yield f"{self.name}_bucket{_fmt_labels(labels, ('le', f'{bound:g}'))} {count:g}"
            yield f"{self.name}_bucket{_fmt_labels(labels, ('le', '+Inf'))} {row[-1]:g}"
            yield f"{self.name}_sum{_fmt_labels(labels)} {row[-2]:g}"
            yield f"{self.name}_count{_fmt_labels(labels)} {row[-1]:g}"


@dataclass
class Gauge:
    name: str
    help: str
    read: Callable[[], dict[Labels, float]]

    def render(self) -> Iterable[str]:
        yield f"# HELP {self.name} {self.help}"
        yield f"# TYPE {self.name} gauge"
        for labels, value in sorted(self.read().items()):
            yield f"{self.name}{_fmt_labels(labels)} {value:g}"


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
    gauges: list[Gauge] = field(default_factory=list)
    ws_open: int = 0

    def render(self) -> str:
        lines: list[str] = []
        for metric in (self.jobs, self.accept_latency, self.stage_duration, self.validator_frames, *self.gauges):
            lines.extend(metric.render())
        return "\n".join(lines) + "\n"
