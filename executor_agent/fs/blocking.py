"""Running blocking file work (zip, unzip) off the event loop without losing cancellation safety.

`asyncio.to_thread` cannot stop a thread: if the caller's deadline cancels us, the thread would go
on writing into a directory or reading a descriptor we are about to close. Here the worker gets a
`threading.Event` it checks between chunks; on cancellation we set it and wait (shielded) for the
thread to notice, then let the cancellation continue.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class Cancelled(Exception):
    """Raised by a worker that saw its cancel event; never escapes `run_cancellable`."""


async def run_cancellable(fn: Callable[[threading.Event], T]) -> T:
    """Run `fn(cancel_event)` in the default thread pool; return its result or raise its error."""
    cancel = threading.Event()
    future = asyncio.get_running_loop().run_in_executor(None, fn, cancel)
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        cancel.set()
        with contextlib.suppress(Exception):
            await future  # a chunk at most; the descriptors it uses must outlive it
        raise
