"""The executor fleet: one link per configured executor, slots, reservations, the manifest.

A job is accepted only after `reserve` has taken a slot on an executor whose link is up,
so an accept is a promise we can keep. Among free executors of the class the one idle
the longest is chosen, which spreads jobs evenly. Configured executors go first; when
an executor-manager plugin is configured it supplies one more executor per job, up to
its own manifest, started after the accept (fleet/manager.py).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import Counter
from dataclasses import dataclass, field

from horde_protocol import link_frames as L
from horde_protocol.enums import ExecutorClass
from horde_protocol.messages import V0InitialJobRequest, V0JobRequest
from miner_agent.fleet.connection import ExecutorLink, FleetEvents, LinkState
from miner_agent.fleet.manager import BaseExecutorManager, ExecutorUnavailable, ManagedExecutor
from miner_agent.miner_config import ExecutorEntry, LocalExecutor, SshExecutor

log = logging.getLogger(__name__)

MANIFEST_HOLD_S = 300.0  # one manifest poll period: a link down for less still counts


@dataclass
class Fleet:
    entries: list[ExecutorEntry]
    links: dict[str, ExecutorLink] = field(default_factory=dict)
    jobs: dict[str, set[str]] = field(default_factory=dict)  # executor name -> job uuids holding a slot
    drained: set[str] = field(default_factory=set)  # finish what they run, take nothing new
    # A link down for less still counts in the manifest; the daemon caps it at
    # executor_lost_after_s, since past that the executor's jobs are failed anyway.
    manifest_hold_s: float = MANIFEST_HOLD_S
    manager: BaseExecutorManager | None = None
    managed_class: dict[str, str] = field(default_factory=dict)  # manager executor name -> class, reserve..retire
    managed: dict[str, ManagedExecutor] = field(default_factory=dict)  # started ones
    _idle_since: dict[str, float] = field(default_factory=dict)
    _retiring: set[asyncio.Task[None]] = field(default_factory=set)
    # Who hears the links' job events: the job service subscribes itself when it is built.
    listener: FleetEvents | None = None

    def __post_init__(self) -> None:
        for entry in self.entries:
            self.links[entry.name] = ExecutorLink(entry, self)
            self.jobs[entry.name] = set()
            self._idle_since[entry.name] = 0.0

    def subscribe(self, listener: FleetEvents) -> None:
        self.listener = listener

    async def on_event(self, executor_name: str, event: L.Event) -> None:
        if self.listener is None:
            log.warning("job event with no listener dropped executor=%s job=%s", executor_name, event.job_uuid)
            return
        await self.listener.on_event(executor_name, event)

    async def on_job_error(self, executor_name: str, job_uuid: str, details: str) -> None:
        if self.listener is not None:
            await self.listener.on_job_error(executor_name, job_uuid, details)

    def start(self) -> None:
        for link in self.links.values():
            link.start()

    async def stop(self) -> None:
        """Close every link; manager-started executors keep running and are re-adopted on restart."""
        for link in list(self.links.values()):
            await link.stop()
        if self._retiring:
            await asyncio.gather(*self._retiring, return_exceptions=True)

    def manifest(self, now: float | None = None) -> dict[str, int]:
        """Executors per class that are configured, not drained, and reachable.

        "Reachable" forgives a drop shorter than `MANIFEST_HOLD_S`: validators read a
        shrinking count as lost capacity and void the allowance already minted for it
        (protocol.md §5.6), so one missed keepalive must not flap the manifest.
        """
        now = time.monotonic() if now is None else now
        counts = Counter(
            str(e.executor_class.value)
            for e in self.entries
            if e.name not in self.drained and self.links[e.name].reachable(now, self.manifest_hold_s)
        )
        for cls, n in self._manager_manifest().items():
            counts[cls] += n
        return dict(counts)

    def _manager_manifest(self) -> dict[str, int]:
        if self.manager is None:
            return {}
        try:
            return {str(ExecutorClass(k).value): int(v) for k, v in self.manager.get_manifest().items() if int(v) > 0}
        except Exception:
            log.exception("executor manager get_manifest failed; advertising none of its executors")
            return {}

    def slots(self, name: str) -> int:
        if name not in self.links:
            return 1
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
        if free:
            # Least loaded first (jobs per slot), then the one idle the longest.
            name = min(free, key=lambda n: (len(self.jobs[n]) / self.slots(n), self._idle_since[n]))
            self.bind(name, job_uuid, last_seq=0)
            return name
        in_use = sum(1 for c in self.managed_class.values() if c == executor_class)
        if in_use < self._manager_manifest().get(executor_class, 0):
            name = f"managed-{job_uuid}"
            self.managed_class[name] = executor_class
            self.jobs[name] = {job_uuid}
            return name
        return None

    def is_managed(self, name: str) -> bool:
        return name in self.managed_class

    async def start_managed(self, name: str, job_uuid: str, timeout_s: float) -> ManagedExecutor:
        """Have the manager start the executor reserved as `name`, and link to it within `timeout_s`."""
        assert self.manager is not None
        executor = await self.manager.start_new_executor(job_uuid, ExecutorClass(self.managed_class[name]), timeout_s)
        executor.endpoint = executor.endpoint.model_copy(update={"name": name})
        self.managed[name] = executor
        link = self._add_link(executor.endpoint, job_uuid, last_seq=0)
        if not await link.wait_up(timeout_s):
            raise ExecutorUnavailable(f"executor {name} did not answer within {timeout_s:g} s: {link.last_error}")
        return executor

    def adopt(self, endpoint: LocalExecutor | SshExecutor, executor_class: str, job_uuid: str, last_seq: int,
              extra: dict | None = None) -> None:
        """After a restart: link again to a manager-started executor a job still runs on."""
        self.managed_class[endpoint.name] = executor_class
        self.managed[endpoint.name] = ManagedExecutor(endpoint=endpoint, extra=extra or {})
        self.jobs[endpoint.name] = {job_uuid}
        self._add_link(endpoint, job_uuid, last_seq)

    def _add_link(self, endpoint: LocalExecutor | SshExecutor, job_uuid: str, last_seq: int) -> ExecutorLink:
        link = ExecutorLink(endpoint, self)
        link.track(job_uuid, last_seq)
        self.links[endpoint.name] = link
        link.start()
        return link

    async def _retire(self, name: str) -> None:
        link = self.links.pop(name, None)
        if link is not None:
            await link.stop()
        executor = self.managed.pop(name, None)
        self.managed_class.pop(name, None)
        self.jobs.pop(name, None)
        if executor is not None and self.manager is not None:
            try:
                await self.manager.kill_executor(executor)
            except Exception:
                log.exception("executor manager kill_executor failed executor=%s", name)

    def bind(self, name: str, job_uuid: str, last_seq: int) -> None:
        """Hold a slot for a job (a new reservation, or one reloaded after a restart)."""
        self.jobs[name].add(job_uuid)
        self.links[name].track(job_uuid, last_seq)

    def release(self, name: str, job_uuid: str) -> None:
        if self.is_managed(name):
            task = asyncio.get_running_loop().create_task(self._retire(name), name=f"retire-{name}")
            self._retiring.add(task)
            task.add_done_callback(self._retiring.discard)
            return
        if name not in self.jobs:
            return
        self.jobs[name].discard(job_uuid)
        self.links[name].untrack(job_uuid)
        self._idle_since[name] = time.monotonic()

    async def submit(self, name: str, initial: V0InitialJobRequest) -> None:
        await self.links[name].send(L.Submit(job_uuid=initial.job_uuid, initial=initial))

    async def payload(self, name: str, request: V0JobRequest) -> None:
        await self.links[name].send(L.Payload(job_uuid=request.job_uuid, request=request))

    async def cancel(self, name: str, job_uuid: str, reason: str) -> None:
        await self.links[name].send(L.Cancel(job_uuid=job_uuid, reason=reason))

    def drain(self, name: str, on: bool = True) -> None:
        if name not in self.links:
            raise KeyError(name)
        (self.drained.add if on else self.drained.discard)(name)
        log.info("executor %s executor=%s running_jobs=%d", "drained" if on else "undrained", name, len(self.jobs[name]))

    def down_for(self, name: str, now: float) -> float:
        """Seconds the executor has been unreachable; infinite for one that is not ours any more."""
        if name not in self.links:
            return 0.0 if name in self.managed_class else math.inf
        since = self.links[name].down_since
        return 0.0 if since is None else now - since
