"""The job registry: which jobs this host knows, who listens to them, and their event logs.

Connections come and go (SSH drops, miner restarts); jobs do not. The registry owns
each job (a JobRun task), numbers its upward messages 1, 2, ..., appends each to the
job's events.jsonl, and only then hands it to every subscribed connection. A
subscriber is anything with a non-blocking `deliver(frame)`; the socket server's
connections queue frames for their own writer task, so a slow miner never stalls a job.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import uuid
from dataclasses import dataclass, field
from typing import Any, Protocol

from executor_agent.container.engine import ContainerState, EngineError, EngineNotFound
from executor_agent.container.tls_proxy import StreamingError
from executor_agent.daemon.deps import JobDeps
from executor_agent.daemon.eventlog import EVENTS_FILE, EventLog
from executor_agent.daemon.job import Emit, JobRun
from executor_agent.daemon.jobdirs import JobDirs
from executor_agent.daemon.recovery import RESTART_MESSAGE, RunningState, drop_running_state, load_running_state
from executor_agent.daemon.streaming_job import discard_endpoint_files, network_name
from horde_protocol.enums import HordeFailureReason, JobParticipantType, JobStage
from horde_protocol.link_frames import AgentToMinerFrame, Event, JobSummary, Payload, Submit
from horde_protocol.messages import (
    ExecutorToMinerMessage,
    Outcome,
    V0HordeFailedRequest,
    V0InitialJobRequest,
    V0JobFailedRequest,
    V0StreamingJobReadyRequest,
)

log = logging.getLogger(__name__)


DETACH_TIMEOUT_S = 10.0  # agent stop waits this long for job tasks (and a running cleanup) to end
CONTAINER_DONE_STATES = frozenset({"exited", "stopped", "dead"})  # nothing left to serve: the run reports the exit
STREAMING_RESUME_MESSAGE = "Executor agent restarted and could not serve the streaming job again: {why}"
READY_TYPE = "V0StreamingJobReadyRequest"


class Subscriber(Protocol):
    def deliver(self, frame: AgentToMinerFrame) -> None: ...


class RegistryError(Exception):
    """A frame the registry cannot act on; the server answers it with a LinkError carrying `code`."""

    def __init__(self, details: str, code: str = "") -> None:
        super().__init__(details)
        self.code = code


@dataclass
class JobEntry:
    """What the registry keeps per job: its log, its run (None once ended or when loaded
    from disk after a restart), its listeners and when it finished."""

    job_uuid: str
    dirs: JobDirs
    events: EventLog
    run: JobRun | None = None
    subscribers: set[Subscriber] = field(default_factory=set)
    finished_at: float | None = None

    @property
    def active(self) -> bool:
        return self.run is not None and not self.events.finished


@dataclass
class Counters:
    """Jobs submitted here, and how they ended (logged when the agent stops)."""

    submitted: int = 0
    finished: int = 0
    failed: int = 0  # the job's fault (V0JobFailedRequest)
    horde_failed: int = 0  # ours: a horde failure, or any other failed outcome

    def count(self, terminal: ExecutorToMinerMessage) -> None:
        if terminal.outcome is Outcome.FINISHED:
            self.finished += 1
        elif isinstance(terminal, V0JobFailedRequest):
            self.failed += 1
        else:
            self.horde_failed += 1


def check_job_uuid(job_uuid: str) -> str:
    """The uuid names a directory: accept only the canonical UUID text (no path tricks)."""
    try:
        canonical = str(uuid.UUID(job_uuid))
    except (ValueError, AttributeError, TypeError):
        raise RegistryError(f"job_uuid {job_uuid!r} is not a UUID") from None
    if canonical != job_uuid.lower():
        raise RegistryError(f"job_uuid {job_uuid!r} is not in canonical UUID form")
    return job_uuid


class JobRegistry:
    """Every job this host knows. `deps` (built once by AgentServices) goes to each JobRun."""

    def __init__(self, deps: JobDeps) -> None:
        self.deps = deps
        self.config = deps.config
        self.engine = deps.engine
        self.clock = deps.clock
        self.jobs: dict[str, JobEntry] = {}
        self.counters = Counters()
        self._reapers: set[asyncio.Task[None]] = set()

    # --- loading -------------------------------------------------------------------

    def load_existing(self) -> None:
        """Know the jobs whose logs are on disk, so a late attach after a restart replays
        them; unfinished ones stay unfinished until someone recovers or cancels them."""
        if not self.config.jobs_dir.is_dir():
            return
        for path in sorted(self.config.jobs_dir.iterdir()):
            log_path = path / EVENTS_FILE
            if not log_path.is_file() or path.name in self.jobs:
                continue
            entry = JobEntry(path.name, JobDirs(path), EventLog(log_path))
            if entry.events.finished:
                discard_endpoint_files(path)  # a crash after the end, before the run's last step
                entry.finished_at = self.clock()
                self._schedule_forget(entry)
            self.jobs[path.name] = entry
        log.info("jobs loaded count=%d unfinished=%d", len(self.jobs),
                 sum(not e.events.finished for e in self.jobs.values()))

    async def recover(self) -> None:
        """Resume unfinished jobs whose container is still known to podman (a streaming job
        with its endpoint served again); end the rest with a horde failure so each job still
        gets exactly one terminal event."""
        if not self.config.keep_job_dirs:
            await self._reap_finished()
        for entry in [e for e in self.jobs.values() if not e.events.finished and e.run is None]:
            state = load_running_state(entry.dirs.root)
            containers = await self.engine.job_containers(entry.job_uuid)
            container = next((c for c in containers if state is not None and c.container_id == state.container_id),
                             None)
            if state is not None and container is not None:
                failure = await self._resume(entry, state, container)
                if failure is None:
                    continue
                stage, message, context = failure
            else:
                last = entry.events.read()
                stage = (JobStage.EXECUTION if state is not None
                         else JobStage.VOLUME_DOWNLOAD if last else JobStage.EXECUTOR_STARTUP).value
                message, context = RESTART_MESSAGE.format(stage=stage), {"stage": stage}
            for found in containers:
                await self.engine.remove(found.container_id)
            self.publish(entry, V0HordeFailedRequest(
                job_uuid=entry.job_uuid, reported_by=JobParticipantType.EXECUTOR,
                reason=HordeFailureReason.GENERIC_ERROR, message=message, context=context))
            discard_endpoint_files(entry.dirs.root)
            drop_running_state(entry.dirs.root)  # it holds upload URLs: gone once the job ended, kept dirs or not
            if not self.config.keep_job_dirs:
                entry.dirs.remove_work()
            self._schedule_forget(entry)
            log.warning("job ended by restart job=%s stage=%s why=%s", entry.job_uuid, stage, message)
        await self._reap_networks()

    async def _resume(self, entry: JobEntry, state: RunningState,
                      container: ContainerState) -> tuple[str, str, dict[str, Any]] | None:
        """Start the job's run from its container. A streaming job whose container still runs
        gets its endpoint back first: the same port and certificate the validator pinned.
        Returns (stage, message, context) of the horde failure when it cannot go on."""
        run = JobRun(state.initial, entry.dirs, self.deps, self._emitter(entry))
        if run.streaming is not None and container.status not in CONTAINER_DONE_STATES:
            endpoint = state.streaming
            if endpoint is None:  # stopped during the /health wait: the endpoint was never announced
                stage = JobStage.STREAMING_STARTUP.value
                return stage, RESTART_MESSAGE.format(stage=stage), {"stage": stage}
            try:
                await run.streaming.resume(endpoint, state.container_id)
            except (StreamingError, EngineError) as exc:  # EngineError: the container went meanwhile
                await run.streaming.close(remove_network=False)
                stage = JobStage.EXECUTION.value
                return stage, STREAMING_RESUME_MESSAGE.format(why=exc), {"stage": stage, "port": endpoint.port}
            if not any(e.message.message_type == READY_TYPE for e in entry.events.read()):
                # a crash between recording the endpoint and logging its announcement: announce it once
                assert run.streaming.cert is not None
                self.publish(entry, V0StreamingJobReadyRequest(job_uuid=entry.job_uuid, port=endpoint.port,
                                                               public_key=run.streaming.cert.cert_pem))
        self._begin(entry, run, state)
        return None

    async def _reap_finished(self) -> None:
        """Remove labelled containers of jobs that already ended here (a stop during
        cleanup, or a crash). Containers of jobs we have no dir for are left alone: they
        may belong to another agent sharing this podman service."""
        for container in await self.engine.job_containers():
            try:
                job_uuid = await self.engine.job_label_of(container.container_id)
            except EngineNotFound:
                continue  # removed since the listing (by the agent that owns it, or an operator)
            entry = self.jobs.get(job_uuid or "")
            if entry is not None and entry.events.finished:
                log.info("reaping container job=%s container=%s", job_uuid, container.container_id[:12])
                await self.engine.remove(container.container_id)

    async def _reap_networks(self) -> None:
        """Remove the streaming networks of jobs that ended here while the agent was down
        (a crash or a stop between the container's end and the job's cleanup)."""
        if self.config.keep_job_dirs:
            return
        for entry in self.jobs.values():
            name = network_name(entry.job_uuid)
            if entry.events.finished and await self.engine.network_exists(name):
                log.info("reaping network job=%s network=%s", entry.job_uuid, name)
                await self.engine.remove_network(name)

    def _emitter(self, entry: JobEntry) -> Emit:
        async def emit(message: ExecutorToMinerMessage) -> None:
            self.publish(entry, message)

        return emit

    def _start_run(self, entry: JobEntry, initial: V0InitialJobRequest) -> None:
        self._begin(entry, JobRun(initial, entry.dirs, self.deps, self._emitter(entry)))

    def _begin(self, entry: JobEntry, run: JobRun, resume: RunningState | None = None) -> None:
        entry.run = run
        task = run.start(resume)
        task.add_done_callback(lambda _t: self._run_done(entry))

    # --- frames --------------------------------------------------------------------

    def summaries(self) -> list[JobSummary]:
        return [JobSummary(job_uuid=e.job_uuid, last_seq=e.events.last_seq, finished=e.events.finished)
                for e in self.jobs.values()]

    def active_count(self) -> int:
        return sum(e.active for e in self.jobs.values())

    def submit(self, frame: Submit, subscriber: Subscriber) -> None:
        job_uuid = check_job_uuid(frame.job_uuid)
        if frame.initial.job_uuid != job_uuid:
            raise RegistryError(f"submit for job {job_uuid} carries an initial request for job "
                                f"{frame.initial.job_uuid}")
        if job_uuid in self.jobs or (self.config.jobs_dir / job_uuid).exists():
            raise RegistryError(f"job {job_uuid} was already submitted; attach to it instead")
        if self.active_count() >= self.config.slots:
            raise RegistryError(f"busy: all {self.config.slots} slots of this executor are in use", code="busy")
        dirs = JobDirs(self.config.jobs_dir / job_uuid)
        dirs.root.mkdir(parents=True, exist_ok=False)
        entry = JobEntry(job_uuid, dirs, EventLog(dirs.root / EVENTS_FILE))
        entry.subscribers.add(subscriber)
        self.jobs[job_uuid] = entry
        self._start_run(entry, frame.initial)
        self.counters.submitted += 1
        log.info("job submitted job=%s image=%s", job_uuid, frame.initial.docker_image)

    def payload(self, frame: Payload) -> None:
        entry = self._known(frame.job_uuid)
        if entry.run is None or entry.events.finished:
            raise RegistryError(f"job {frame.job_uuid} has already ended; payload ignored")
        if frame.request.job_uuid != frame.job_uuid:
            raise RegistryError(f"payload for job {frame.job_uuid} carries a request for job "
                                f"{frame.request.job_uuid}")
        if not entry.run.give_payload(frame.request):
            raise RegistryError(f"job {frame.job_uuid} already has its payload; duplicate ignored")

    def attach(self, job_uuid: str, since_seq: int, subscriber: Subscriber) -> None:
        """Replay events after since_seq, then deliver live ones. No await between the
        read and the subscription, so nothing can be published in the gap."""
        entry = self._known(job_uuid)
        for event in entry.events.read(since_seq):
            subscriber.deliver(event)
        if not entry.events.finished:
            entry.subscribers.add(subscriber)

    def cancel(self, job_uuid: str, reason: str) -> None:
        entry = self._known(job_uuid)
        if entry.run is None or not entry.run.cancel(reason):
            raise RegistryError(f"job {job_uuid} has already ended; nothing to cancel")
        log.info("job cancel requested job=%s reason=%s", job_uuid, reason or "-")

    def unsubscribe(self, subscriber: Subscriber) -> None:
        for entry in self.jobs.values():
            entry.subscribers.discard(subscriber)

    def _known(self, job_uuid: str) -> JobEntry:
        entry = self.jobs.get(job_uuid)
        if entry is None:
            raise RegistryError(f"unknown job {job_uuid}; submit it first", code="unknown_job")
        return entry

    # --- events --------------------------------------------------------------------

    def publish(self, entry: JobEntry, message: ExecutorToMinerMessage) -> Event:
        """Number, log, then fan out one upward message (in that order, always)."""
        event = Event(job_uuid=entry.job_uuid, seq=entry.events.last_seq + 1, message=message)
        entry.events.append(event)
        for subscriber in list(entry.subscribers):
            subscriber.deliver(event)
        if entry.events.finished:
            entry.subscribers.clear()
            entry.finished_at = self.clock()
            self.counters.count(message)
        log.info("event job=%s seq=%d type=%s", entry.job_uuid, event.seq, message.message_type)
        return event

    def _run_done(self, entry: JobEntry) -> None:
        task = entry.run.task if entry.run is not None else None
        if task is not None and not task.cancelled() and task.exception() is not None:
            log.error("job task crashed job=%s error=%r", entry.job_uuid, task.exception())
        if entry.events.finished:
            entry.run = None
            discard_endpoint_files(entry.dirs.root)  # after the job's cleanup: no agent will serve it again
            self._schedule_forget(entry)

    def _schedule_forget(self, entry: JobEntry) -> None:
        """After the retention period, drop the job and its dir (events log included)."""
        if self.config.keep_job_dirs:
            return

        async def forget() -> None:
            await asyncio.sleep(self.config.finished_job_retention_s)
            self.jobs.pop(entry.job_uuid, None)
            await asyncio.to_thread(shutil.rmtree, entry.dirs.root, True)

        task = asyncio.get_running_loop().create_task(forget())
        self._reapers.add(task)
        task.add_done_callback(self._reapers.discard)

    # --- shutdown ------------------------------------------------------------------

    async def detach_all(self) -> int:
        """Agent stop: end our tasks, leave containers running for the next agent."""
        runs = [e.run for e in self.jobs.values() if e.run is not None and e.run.task is not None
                and not e.run.task.done()]
        for run in runs:
            run.detach()
        for task in self._reapers:
            task.cancel()
        pending = [r.task for r in runs if r.task] + list(self._reapers)
        if pending:
            await asyncio.wait(pending, timeout=DETACH_TIMEOUT_S)
        return len(runs)
