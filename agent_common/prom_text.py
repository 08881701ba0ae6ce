"""Prometheus metrics in the text exposition format, written by hand, for both agents.

A handful of counters and histograms do not justify a client library; the format is
small and stable (https://prometheus.io/docs/instrumenting/exposition_formats/).
Gauges that mirror live state are read at scrape time from their owners instead of
being kept in sync here.
"""

from __future__ import annotations

import bisect
import math
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

Labels = tuple[tuple[str, str], ...]


def _fmt_labels(labels: Labels, extra: tuple[str, str] | None = None) -> str:
    items = [*labels, *([extra] if extra else [])]
    if not items:
        return ""
    inner = ",".join(f'{k}="{_escape(v)}"' for k, v in items)
    return "{" + inner + "}"


def _value(value: float) -> str:
    """A sample value without losing digits: `:g` would print a unix time as 1.76473e+09."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if float(value).is_integer() and abs(value) < 2**53:
        return str(int(value))
    return repr(float(value))


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
            yield f"{self.name}{_fmt_labels(labels)} {_value(value)}"


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
                yield f"{self.name}_bucket{_fmt_labels(labels, ('le', f'{bound:g}'))} {_value(count)}"
            yield f"{self.name}_bucket{_fmt_labels(labels, ('le', '+Inf'))} {_value(row[-1])}"
            yield f"{self.name}_sum{_fmt_labels(labels)} {_value(row[-2])}"
            yield f"{self.name}_count{_fmt_labels(labels)} {_value(row[-1])}"


@dataclass
class Gauge:
    """A value read from its owner at scrape time; `kind="counter"` for a count the owner keeps."""

    name: str
    help: str
    read: Callable[[], dict[Labels, float]]
    kind: str = "gauge"

    def render(self) -> Iterable[str]:
        yield f"# HELP {self.name} {self.help}"
        yield f"# TYPE {self.name} {self.kind}"
        for labels, value in sorted(self.read().items()):
            yield f"{self.name}{_fmt_labels(labels)} {_value(value)}"


def render(metrics: Iterable[Counter | Histogram | Gauge]) -> str:
    """One exposition document: every metric's HELP, TYPE and samples, newline-terminated."""
    lines: list[str] = []
    for metric in metrics:
        lines.extend(metric.render())
    return "\n".join(lines) + "\n"
