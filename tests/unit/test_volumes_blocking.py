"""The worker thread behind extraction and zipping must be stopped and finished before a
cancelled caller moves on (it may be writing through descriptors the caller is about to close)."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from executor_agent.fs.blocking import Cancelled, run_cancellable


async def test_cancellation_waits_for_the_worker_to_stop() -> None:
    state = {"chunks": 0, "finished": False}

    def worker(cancel: threading.Event) -> None:
        try:
            while True:
                if cancel.is_set():
                    raise Cancelled()
                state["chunks"] += 1
                time.sleep(0.01)
        finally:
            state["finished"] = True

    with pytest.raises(TimeoutError):
        await asyncio.wait_for(run_cancellable(worker), timeout=0.1)
    assert state["finished"] and state["chunks"] > 0


async def test_result_and_errors_pass_through() -> None:
    assert await run_cancellable(lambda cancel: 42) == 42

    def boom(cancel: threading.Event) -> None:
        raise ValueError("bad archive")

    with pytest.raises(ValueError, match="bad archive"):
        await run_cancellable(boom)
