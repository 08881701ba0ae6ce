"""The shared job deadline: leeway + per-stage budgets, unused time rolls forward."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from executor_agent.daemon.deadline import (
    DOWNLOAD,
    EXECUTION,
    NO_TIMING_MESSAGE,
    UPLOAD,
    Deadline,
    NoTiming,
    StageBudgets,
)

TIMING = SimpleNamespace(allowed_leeway=5, download_time_limit=10, execution_time_limit=100,
                         upload_time_limit=20, streaming_start_time_limit=7)


def test_stages_extend_one_deadline_and_savings_carry_over() -> None:
    d = Deadline(StageBudgets.from_initial(TIMING, 300), now=0.0)
    assert d.remaining(0.0) == 5
    assert d.enter(DOWNLOAD, now=1.0) == 14  # 5 + 10 - 1
    assert d.enter(EXECUTION, now=3.0) == 112  # download took 2 s of its 10: 8 s roll forward
    assert d.container_timeout(3.0) == 100  # the container's own limit is the tighter one
    assert d.enter(UPLOAD, now=50.0) == 85


def test_overrun_leaves_nothing() -> None:
    d = Deadline(StageBudgets.from_initial(TIMING, None), now=0.0)
    d.enter(DOWNLOAD, now=0.0)
    assert d.remaining(20.0) == 0.0


def test_streaming_adds_its_start_limit() -> None:
    d = Deadline(StageBudgets.from_initial(TIMING, None), now=0.0)
    d.enter(DOWNLOAD, now=0.0)
    assert d.enter(EXECUTION, now=0.0, streaming=True) == 5 + 10 + 100 + 7


def test_timeout_seconds_is_one_budget_for_everything() -> None:
    d = Deadline(StageBudgets.from_initial(None, 60), now=0.0)
    assert d.enter(DOWNLOAD, now=0.0) == 60
    assert d.enter(EXECUTION, now=10.0) == 50
    assert d.container_timeout(10.0) == 50  # never past the total budget
    assert d.enter(UPLOAD, now=40.0) == 20


def test_no_timing_at_all() -> None:
    with pytest.raises(NoTiming) as info:
        StageBudgets.from_initial(None, None)
    assert str(info.value) == NO_TIMING_MESSAGE
    assert NO_TIMING_MESSAGE.startswith("No timing received: ")
