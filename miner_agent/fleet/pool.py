"""The executor fleet: one link per configured executor, slots, reservations, the manifest.

A job is accepted only after `reserve` has taken a slot on an executor whose link is up,
so an accept is a promise we can keep. Among free executors of the class the one idle
the longest is chosen, which spreads jobs evenly.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass, field

from executor_agent import link as L
from miner_agent.config import ExecutorEntry
from miner_agent.fleet.link import EventHandler, ExecutorLink, LinkState

log = logging.getLogger(__name__)

MANIFEST_HOLD_S = 300.0  # one manifest poll period: a link down for less still counts


@dataclass
class Fleet:
    entries: list[ExecutorEntry]
    on_event: EventHandler
    links: dict[str, ExecutorLink] = field(default_factory=dict)
    jobs: dict[str, set[str]] = field(default_factory=dict)  # executor name -> job uuids holding a slot
    drained: set[str] = field(default_factory=set)  # finish what they run, take nothing new
    _idle_since: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for entry in self.entries:
            self.links[entry.name] = ExecutorLink(entry, self.on_event)
            self.jobs[entry.name] = set()
            self._idle_since[entry.name] = 0.0

    def start(self) -> None:
        for link in self.links.values():
            link.start()

    async def stop(self) -> None:
        for link in self.links.values():
            await link.stop()

    def manifest(self, now: float | None = None) -> dict[str, int]:
        """Executors per class that are configured, not drained, and reachable.

        "Reachable" forgives a drop shorter than `MANIFEST_HOLD_S`: validators read a
        shrinking count as lost capacity and void the allowance already minted for it
        (protocol.md §5.6), so one missed keepalive must not flap the manifest.
        """
        now = time.monotonic() if now is None else now
        return dict(Counter(
            str(e.executor_class.value)
            for e in self.entries
            if e.name not in self.drained and self.links[e.name].reachable(now, MANIFEST_HOLD_S)
        ))

    def slots(self, name: str) -> int:
        hello = self.links[name].hello
        return max(1, hello.slots) if hello else 1

    def reserve(self, executor_class: str, job_uuid: str) -> str | None:
        """Take a slot for `job_uuid` on a reachable executor of the class; None when all are busy."""
        free = [
            e.name
            for e in self.entries
            if str(e.executor_class.value) == executor_class
            and e.name not in self.drained
            and self.links[e.name].state is LinkState.UP
            and len(self.jobs[e.name]) < self.slots(e.name)
        ]
        if not free:
            return None
        name = min(free, key=lambda n: self._idle_since[n])
        self.bind(name, job_uuid, last_seq=0)
        return name

    def bind(self, name: str, job_uuid: str, last_seq: int) -> None:
        """Hold a slot for a job (a new reservation, or one reloaded after a restart)."""
        self.jobs[name].add(job_uuid)
        self.links[name].track(job_uuid, last_seq)

    def release(self, name: str, job_uuid: str) -> None:
        self.jobs[name].discard(job_uuid)
        self.links[name].untrack(job_uuid)
        self._idle_since[name] = time.monotonic()

    async def submit(self, name: str, initial: object) -> None:
        await self.links[name].send(L.Submit(job_uuid=initial.job_uuid, initial=initial))  # type: ignore[attr-defined]

    async def payload(self, name: str, request: object) -> None:
        await self.links[name].send(L.Payload(job_uuid=request.job_uuid, request=request))  # type: ignore[attr-defined]

    async def cancel(self, name: str, job_uuid: str, reason: str) -> None:
        await self.links[name].send(L.Cancel(job_uuid=job_uuid, reason=reason))

    def drain(self, name: str, on: bool = True) -> None:
        if name not in self.links:
            raise KeyError(name)
        (self.drained.add if on else self.drained.discard)(name)
        log.info("executor %s executor=%s running_jobs=%d", "drained" if on else "undrained", name, len(self.jobs[name]))

    def down_for(self, name: str, now: float) -> float:
        since = self.links[name].down_since
        return 0.0 if since is None else now - since
