"""A burst of closed validator sockets is followed by one heap trim, not one per socket."""

from __future__ import annotations

import asyncio

import pytest

from miner_agent.server import mem_trim
from miner_agent.server.mem_trim import HeapTrimmer, _glibc_trim


async def test_a_burst_of_closes_costs_one_trim(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mem_trim, "TRIM_DELAY_S", 0.05)
    monkeypatch.setattr(mem_trim, "TRIM_MIN_INTERVAL_S", 1.0)
    calls: list[int] = []
    trimmer = HeapTrimmer(lambda: calls.append(1))
    for _ in range(1000):
        trimmer.closed()
    assert calls == []  # not on the close itself
    await asyncio.sleep(0.2)
    assert calls == [1]
    trimmer.closed()  # a later burst gets its own, once TRIM_MIN_INTERVAL_S has passed since the first
    await asyncio.sleep(0.1)
    assert calls == [1]
    await asyncio.sleep(1.2)
    assert calls == [1, 1]


def test_this_glibc_host_has_malloc_trim() -> None:
    """The CI machine and the .debs' targets are Debian (glibc): the trim must be found there."""
    trim = _glibc_trim()
    assert trim is not None
    trim()
