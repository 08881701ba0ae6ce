"""Runs the job machines: validator requests in, executor events in, actions out.

This is the only place that joins the pure `JobMachine` to its edges: the fleet (executor
links), the job and receipt stores, and the validators' websockets (`Outbox`). It is also the
miner's whole offer policy: every reason an offer is declined (blacklisted validator, bad
§12 signature, duplicate, bad receipt, no free executor, storage failure) is decided here, so
the websocket handler only parses and authenticates.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from pydantic import BaseModel, TypeAdapter

from horde_protocol import link_frames as L
from horde_protocol.enums import JobRejectionReason
from horde_protocol.messages import (
    GenericError,
    MinerToValidatorMessage,
    V0AcceptJobRequest,
    V0DeclineJobRequest,
    V0InitialJobRequest,
    V0JobAcceptedReceiptRequest,
    V0JobFinishedReceiptRequest,
    V0JobRequest,
    V0StreamingJobReadyRequest,
    validator_signature_ok,
)
from miner_agent.fleet.connection import LinkDown
from miner_agent.fleet.pool import Fleet
from miner_agent.jobs.decline import SplicedText, decline_json
from miner_agent.jobs.job_store import JobSnapshot, JobStore
from miner_agent.jobs.machine import (
    Action,
    Budget,
    JobMachine,
    JobRequestRefused,
    JobState,
    Release,
    ToExecutor,
    ToValidator,
)
from miner_agent.metrics import MinerMetrics
from miner_agent.miner_config import LOOPBACK_ADDRESS, ExecutorEntry, streaming_address
from miner_agent.receipts.receipt_store import ReceiptRejected, ReceiptStore

log = logging.getLogger(__name__)

TICK_S = 1.0
STORAGE_ERRORS = (sqlite3.Error, OSError)  # a full disk, a read-only state dir


class ValidatorSink(Protocol):
    validator_hotkey: str

    @property
    def closed(self) -> bool: ...

    async def send_text(self, text: str | SplicedText) -> bool: ...


@dataclass
class Outbox:
    """Open, authenticated validator sessions, newest last, per validator hotkey."""

    sessions: dict[str, list[ValidatorSink]] = field(default_factory=dict)

    def add(self, sink: ValidatorSink) -> None:
        self.sessions.setdefault(sink.validator_hotkey, []).append(sink)

    def remove(self, sink: ValidatorSink) -> None:
        live = self.sessions.get(sink.validator_hotkey, [])
        if sink in live:
            live.remove(sink)

    def pick(self, validator: str, preferred: ValidatorSink | None) -> ValidatorSink | None:
        if preferred is not None and not preferred.closed:
            return preferred
        live = [s for s in self.sessions.get(validator, []) if not s.closed]
        return live[-1] if live else None

    def count(self) -> int:
        return sum(len(v) for v in self.sessions.values())


@dataclass
class Job:
    machine: JobMachine
    validator: str
    executor_name: str
    sink: ValidatorSink | None
    initial: V0InitialJobRequest
    executor_class: str = ""
    created_unix: float = field(default_factory=time.time)
    request: V0JobRequest | None = None
    last_executor_seq: int = 0
    executor_endpoint: str | None = None
    stage_started: float = field(default_factory=time.monotonic)
    # Each step saves a snapshot, but the requests (an inline volume can be megabytes) rarely
    # change: their JSON is kept with the object it was made from and remade only for a new one.
    _dumped: dict[str, tuple[BaseModel, str]] = field(default_factory=dict, repr=False)

    def _json(self, key: str, model: BaseModel) -> str:
        kept = self._dumped.get(key)
        if kept is None or kept[0] is not model:
            kept = self._dumped[key] = (model, model.model_dump_json())
        return kept[1]

    @property
    def streaming_ip(self) -> str | None:
        """streaming_details.executor_ip as sent to the executor (it signs its certificate for it)."""
        details = self.initial.streaming_details
        return details.executor_ip if details is not None else None

    def snapshot(self) -> JobSnapshot:
        """The row to store. Once the job has ended nothing reads its requests again, so the
        stored copies lose what may be secret: the job's env, volume and upload URLs (presigned)."""
        m = self.machine
        if m.state.terminal:
            initial_json = self.initial.model_copy(update={"volume": None}).model_dump_json()
            request_json = None
        else:
            initial_json = self._json("initial", self.initial)
            request_json = self._json("request", self.request) if self.request is not None else None
        return JobSnapshot(
            job_uuid=m.job_uuid, validator_hotkey=self.validator, executor_class=self.executor_class,
            executor_name=self.executor_name, state=m.state, initial_json=initial_json,
            created_unix=self.created_unix, request_json=request_json,
            last_executor_seq=self.last_executor_seq, executor_endpoint=self.executor_endpoint,
            progress=m.progress, deadline_unix=m.deadline,
        )


def _never_blacklisted(hotkey: str) -> bool:
    return False


@dataclass
class JobService:
    fleet: Fleet
    jobs_db: JobStore
    receipts: ReceiptStore
    metrics: MinerMetrics = field(default_factory=MinerMetrics)
    executor_lost_after_s: float = 60.0  # [miner] executor_lost_after_s
    is_blacklisted: Callable[[str], bool] = _never_blacklisted  # the chain's validator blocklist
    outbox: Outbox = field(default_factory=Outbox)
    jobs: dict[str, Job] = field(default_factory=dict)
    _ticker: asyncio.Task[None] | None = None
    _launches: set[asyncio.Task[None]] = field(default_factory=set)
    # Offers between their receipt's insert and its durable page, by job_uuid: a second offer of the
    # same job waits for the first, so it is judged as if they had come one after the other. The
    # value is the future it waits on, made only then (an Event per offer was ~2 % of an offer's CPU).
    _offers_in_flight: dict[str, asyncio.Future[None] | None] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.fleet.subscribe(self)

    # -- lifecycle ----------------------------------------------------------------------

    def restore(self) -> int:
        """Reload unfinished jobs after a restart from their snapshots; their links re-attach
        from the last seq seen."""
        now = time.time()
        for row in self.jobs_db.unfinished():
            initial = V0InitialJobRequest.model_validate_json(row.initial_json)
            budget = Budget.from_initial(initial)
            # A row from schema 1 kept no deadline: the whole budget from the offer is the honest bound.
            deadline = row.deadline_unix or max(now, row.created_unix + budget.total())
            machine = JobMachine(row.job_uuid, budget, started_at=row.created_unix,
                                 streaming=initial.streaming_details is not None, state=row.state,
                                 progress=row.progress, deadline=deadline)
            request = V0JobRequest.model_validate_json(row.request_json) if row.request_json else None
            self.jobs[row.job_uuid] = Job(
                machine, row.validator_hotkey, row.executor_name, None, initial, row.executor_class,
                created_unix=row.created_unix, request=request, last_executor_seq=row.last_executor_seq,
                executor_endpoint=row.executor_endpoint,
            )
            if row.executor_endpoint:
                saved = json.loads(row.executor_endpoint)
                endpoint = TypeAdapter(ExecutorEntry).validate_python(saved["endpoint"])
                self.fleet.adopt(endpoint, row.executor_class, row.job_uuid, row.last_executor_seq, saved.get("extra"))
            elif row.executor_name in self.fleet.links:
                self.fleet.bind(row.executor_name, row.job_uuid, row.last_executor_seq)
            else:
                continue  # its executor is gone from the config; the ticker fails it honestly
            link = self.fleet.links[row.executor_name]
            if row.last_executor_seq == 0:  # the submit may never have reached the agent
                link.keep_until_confirmed(L.Submit(job_uuid=row.job_uuid, initial=initial), 0)
            if request is not None and row.state is JobState.RUNNING:
                link.keep_until_confirmed(L.Payload(job_uuid=row.job_uuid, request=request), row.last_executor_seq)
        if self.jobs:
            log.info("jobs restored count=%d", len(self.jobs))
        return len(self.jobs)

    def start(self) -> None:
        self._ticker = asyncio.create_task(self._tick_loop(), name="job-ticker")

    async def stop(self) -> None:
        for task in [self._ticker, *self._launches]:
            if task is not None:
                task.cancel()
        await asyncio.gather(*[t for t in [self._ticker, *self._launches] if t], return_exceptions=True)

    # -- validator side -----------------------------------------------------------------

    async def on_session(self, sink: ValidatorSink) -> None:
        """A validator authenticated: adopt its jobs and send what it is still owed."""
        self.outbox.add(sink)
        for job in self.jobs.values():
            if job.validator == sink.validator_hotkey and (job.sink is None or job.sink.closed):
                job.sink = sink
        for job_uuid, n, text in self.jobs_db.undelivered(sink.validator_hotkey):
            if await sink.send_text(text):
                self.jobs_db.mark_delivered(job_uuid, n)

    def on_session_closed(self, sink: ValidatorSink) -> None:
        self.outbox.remove(sink)

    async def offer(self, sink: ValidatorSink, initial: V0InitialJobRequest, raw: dict[str, Any]) -> None:
        """A V0InitialJobRequest: accept with a reserved slot, or decline, within the 7 s.

        `raw` is the object the frame arrived as, which the optional §12 signature covers."""
        received = time.monotonic()
        uuid, validator = str(initial.job_uuid), sink.validator_hotkey
        executor_class = str(initial.executor_class.value)
        if self.is_blacklisted(validator):
            log.info("job declined job=%s validator=%s reason=validator_blacklisted", uuid, validator)
            await self._decline(sink, uuid, JobRejectionReason.VALIDATOR_BLACKLISTED,
                                "this miner does not take jobs from this validator", cls=executor_class)
            return
        if validator_signature_ok(raw, validator) is False:
            log.warning("bad validator_signature validator=%s job=%s type=%s", validator, uuid, initial.kind())
            await self._decline(sink, uuid, JobRejectionReason.INVALID_SIGNATURE, "validator_signature does not verify")
            return
        while uuid in self._offers_in_flight:
            earlier = self._offers_in_flight[uuid]
            if earlier is None:
                earlier = self._offers_in_flight[uuid] = asyncio.get_running_loop().create_future()
            await asyncio.shield(earlier)  # a waiter cancelled must not cancel it for the others
        self._offers_in_flight[uuid] = None
        try:
            await self._offer(sink, initial, received)
        except STORAGE_ERRORS as exc:
            # Nothing was promised yet (_offer undoes its reservation): say so at once rather
            # than let the offer time out, and keep the socket.
            log.error("job declined job=%s validator=%s reason=storage_failure error=%r", uuid, validator, str(exc))
            await self._decline(sink, uuid, JobRejectionReason.UNKNOWN, f"miner storage failure, job not taken: {exc}",
                                cls=executor_class)
        finally:
            if (waiting := self._offers_in_flight.pop(uuid)) is not None:
                waiting.set_result(None)

    async def _offer(self, sink: ValidatorSink, initial: V0InitialJobRequest, received: float) -> None:
        uuid, validator = str(initial.job_uuid), sink.validator_hotkey
        executor_class = str(initial.executor_class.value)
        if uuid in self.jobs or self.jobs_db.exists(uuid):
            await sink.send_text(GenericError(details=f"Job {uuid} already exists").model_dump_json())
            return
        payload = initial.job_started_receipt_payload
        try:
            if str(payload.job_uuid) != uuid:
                raise ReceiptRejected(f"receipt is for job {payload.job_uuid}, not {uuid}")
            # Durable before any answer; a burst of offers shares the page writes (group commit).
            await self.receipts.accept_durable(payload, initial.job_started_receipt_signature, validator)
        except ReceiptRejected as exc:
            log.warning("job declined job=%s validator=%s reason=invalid_receipt details=%r", uuid, validator, str(exc))
            await self._decline(sink, uuid, JobRejectionReason.INVALID_RECEIPT, f"JobStartedReceipt rejected: {exc}",
                                cls=executor_class)
            return
        name = self.fleet.reserve(executor_class, uuid)
        if name is None:
            excuses = self.receipts.excuse_lines(executor_class, payload.timestamp.timestamp(), uuid)
            log.info("job declined job=%s validator=%s reason=busy class=%s excuses=%d", uuid, validator, executor_class, len(excuses))
            await self._decline(sink, uuid, JobRejectionReason.BUSY, "all executors of the class are busy", excuses,
                                cls=executor_class)
            self.metrics.accept_latency.observe(time.monotonic() - received, outcome="declined")
            return
        machine = JobMachine(uuid, Budget.from_initial(initial), time.time(), streaming=initial.streaming_details is not None)
        job = Job(machine, validator, name, sink, self._with_executor_ip(initial, name), executor_class,
                  created_unix=machine.started_at)
        self.jobs[uuid] = job
        try:
            await self._commit(job, [ToValidator(V0AcceptJobRequest(job_uuid=uuid))])  # recorded, then sent
        except STORAGE_ERRORS:
            self.jobs.pop(uuid, None)
            self.fleet.release(name, uuid)
            raise
        log.info("job accepted job=%s validator=%s class=%s executor=%s", uuid, validator, executor_class, name)
        self.metrics.accept_latency.observe(time.monotonic() - received, outcome="accepted")
        self.metrics.jobs.inc(outcome="accepted", executor_class=executor_class)
        if self.fleet.is_managed(name):
            # A manager may take the whole spin-up time; the websocket must not wait for it.
            task = asyncio.get_running_loop().create_task(self._launch_managed(uuid, name), name=f"launch-{uuid}")
            self._launches.add(task)
            task.add_done_callback(self._launches.discard)
            return
        try:
            await self.fleet.submit(name, job.initial)
        except LinkDown as exc:
            await self._spinup_failed(uuid, str(exc))

    async def _launch_managed(self, uuid: str, name: str) -> None:
        job = self.jobs[uuid]
        try:
            executor = await self.fleet.start_managed(name, uuid, job.machine.budget.readiness)
            job.executor_endpoint = json.dumps({
                "endpoint": executor.endpoint.model_dump(mode="json"), "extra": executor.extra,
            })
            job.initial = self._with_executor_ip(job.initial, name)
            await self._commit(job, [])
            await self.fleet.submit(name, job.initial)
        except Exception as exc:  # the manager is operator code: any failure is a spin-up failure
            await self._spinup_failed(uuid, f"{type(exc).__name__}: {exc}")

    async def _spinup_failed(self, uuid: str, error: str) -> None:
        job = self.jobs.get(uuid)
        if job is None:
            return
        log.error("job spin-up failed job=%s validator=%s executor=%s error=%r", uuid, job.validator, job.executor_name, error)
        await self._run(job, job.machine.on_spinup_failed())

    async def job_request(self, sink: ValidatorSink, request: V0JobRequest, raw: dict[str, Any]) -> None:
        uuid = str(request.job_uuid)
        if validator_signature_ok(raw, sink.validator_hotkey) is False:
            log.warning("bad validator_signature validator=%s job=%s type=%s", sink.validator_hotkey, uuid, request.kind())
            await sink.send_text(GenericError(details=f"Invalid validator_signature on V0JobRequest for job {uuid}")
                                 .model_dump_json())
            return
        job = self.jobs.get(uuid)
        if job is None or job.validator != sink.validator_hotkey:
            await sink.send_text(GenericError(details=f"Unknown job {uuid}").model_dump_json())
            return
        try:
            actions = job.machine.on_job_request(request, time.time())
        except JobRequestRefused as exc:
            await sink.send_text(GenericError(details=str(exc)).model_dump_json())
            return
        job.request = request
        await self._run(job, actions)

    def on_receipt(self, sink: ValidatorSink, message: V0JobAcceptedReceiptRequest | V0JobFinishedReceiptRequest) -> None:
        try:
            self.receipts.accept(message.payload, message.signature, sink.validator_hotkey)
        except ReceiptRejected as exc:
            # Stock behaviour: no reply; the log says why.
            log.warning(
                "receipt dropped type=%s job=%s validator=%s reason=%r",
                message.message_type, message.payload.job_uuid, sink.validator_hotkey, str(exc),
            )

    # -- executor side (FleetEvents) ----------------------------------------------------

    async def on_event(self, executor_name: str, event: L.Event) -> None:
        job = self.jobs.get(event.job_uuid)
        if job is None:
            log.warning("event for an unknown job dropped executor=%s job=%s", executor_name, event.job_uuid)
            return
        message = event.message
        if isinstance(message, V0StreamingJobReadyRequest):
            message = self._sign_streaming_ready(job, message)
        # The seq is saved with what the event produced, in one transaction: a crash before it makes
        # the agent replay the event, and the restored machine drops what was already recorded.
        job.last_executor_seq = event.seq
        await self._run(job, job.machine.on_executor_message(message, time.time()))

    def _with_executor_ip(self, initial: V0InitialJobRequest, name: str) -> V0InitialJobRequest:
        """Fill streaming_details.executor_ip (protocol.md §5.5 step 2): the executor puts it
        in its certificate's SAN, and the same address goes into the ready message."""
        details = initial.streaming_details
        if details is None:
            return initial
        link = self.fleet.links.get(name)
        address = streaming_address(link.entry) if link is not None else LOOPBACK_ADDRESS
        return initial.model_copy(update={"streaming_details": details.model_copy(update={"executor_ip": address})})

    def _sign_streaming_ready(self, job: Job, ready: V0StreamingJobReadyRequest) -> V0StreamingJobReadyRequest:
        """Set `ip` and sign f"{job_uuid}:{ip}:{port}:{public_key}" with our hotkey (§4.5)."""
        ready = ready.model_copy(update={"ip": job.streaming_ip or LOOPBACK_ADDRESS})
        return ready.model_copy(update={"miner_signature": self.receipts.signer.sign(ready.signature_blob())})

    async def on_job_error(self, executor_name: str, job_uuid: str, details: str) -> None:
        """The agent refused a frame about one of our jobs (no slot, unknown job): end it now
        rather than let the validator wait out its budget."""
        job = self.jobs.get(job_uuid)
        if job is None or job.executor_name != executor_name:
            return
        log.error("executor refused a frame job=%s validator=%s executor=%s details=%r",
                  job_uuid, job.validator, executor_name, details)
        if job.machine.state is JobState.SUBMITTED:
            await self._run(job, job.machine.on_spinup_failed())
        else:
            await self._run(job, job.machine.on_executor_lost(time.time(), f"Executor lost the job: {details}"))

    async def _tick_loop(self) -> None:
        while True:
            await asyncio.sleep(TICK_S)
            try:
                await self.tick(time.time(), time.monotonic())
            except Exception:
                log.exception("job ticker failed")

    async def tick(self, now: float, mono_now: float) -> None:
        for job in list(self.jobs.values()):
            if self.fleet.down_for(job.executor_name, mono_now) >= self.executor_lost_after_s:
                details = f"Executor {job.executor_name} unreachable for over {self.executor_lost_after_s:g} s"
                await self._run(job, job.machine.on_executor_lost(now, details))
            else:
                await self._run(job, job.machine.on_tick(now))

    # -- actions ------------------------------------------------------------------------

    async def _run(self, job: Job, actions: Sequence[Action]) -> None:
        """Save the step (snapshot and the messages it owes) in one transaction, then act."""
        uuid = job.machine.job_uuid
        if self.jobs.get(uuid) is not job:
            return
        for line in job.machine.log:
            log.warning("job=%s validator=%s %s", uuid, job.validator, line)
        job.machine.log.clear()
        await self._commit(job, actions)
        for action in actions:
            if isinstance(action, ToExecutor):
                await self._to_executor(job, action)
            elif isinstance(action, Release):
                self.metrics.jobs.inc(outcome=action.outcome.value, executor_class=job.executor_class)
                self.metrics.count_failures([a.message for a in actions if isinstance(a, ToValidator)],
                                            job.executor_class)
                self.fleet.release(job.executor_name, uuid)
                self.jobs.pop(uuid, None)
                log.info("job ended job=%s validator=%s outcome=%s executor=%s", uuid, job.validator,
                         action.outcome.value, job.executor_name)

    async def _commit(self, job: Job, actions: Sequence[Action]) -> None:
        """Persist the job with the validator messages among `actions`, then send those."""
        messages = [a.message for a in actions if isinstance(a, ToValidator)]
        numbers = self.jobs_db.save(job.snapshot(), [m.model_dump_json() for m in messages])
        for message, n in zip(messages, numbers, strict=True):
            await self._to_validator(job, message, n)

    async def _to_executor(self, job: Job, action: ToExecutor) -> None:
        uuid = job.machine.job_uuid
        try:
            if action.request is not None:
                job.stage_started = time.monotonic()  # the download stage starts with the payload
                await self.fleet.payload(job.executor_name, action.request)
            if action.cancel is not None:
                await self.fleet.cancel(job.executor_name, uuid, action.cancel)
        except LinkDown as exc:
            # The payload is kept in SQLite; the watchdog or link-loss rule ends the job honestly.
            log.error("job=%s validator=%s could not reach executor: %s", uuid, job.validator, exc)

    async def _to_validator(self, job: Job, message: MinerToValidatorMessage, n: int) -> None:
        """Send one message already recorded as number `n` of the job, and mark it delivered."""
        uuid = job.machine.job_uuid
        stage = message.closes_stage
        if stage is not None:
            now = time.monotonic()
            self.metrics.stage_duration.observe(now - job.stage_started, stage=stage.value,
                                                executor_class=job.executor_class)
            job.stage_started = now
        sink = self.outbox.pick(job.validator, job.sink)
        if sink is not None and await sink.send_text(message.model_dump_json()):
            try:
                self.jobs_db.mark_delivered(uuid, n)
            except STORAGE_ERRORS as exc:  # it went out; at worst it goes out again on a reconnect
                log.warning("job=%s message %s sent but not marked delivered: %s", uuid, message.kind(), exc)
        else:
            log.warning("job=%s message %s kept until the validator reconnects", uuid, message.kind())

    async def _decline(self, sink: ValidatorSink, uuid: str, reason: JobRejectionReason, message: str,
                       receipt_lines: Sequence[str] = (), cls: str = "") -> None:
        """`receipt_lines`: the excuses as `Receipt.model_dump_json()` texts (ReceiptStore.excuse_lines)."""
        self.metrics.jobs.inc(outcome=f"declined_{reason.value}", executor_class=cls)
        decline = V0DeclineJobRequest(job_uuid=uuid, reason=reason, message=message)
        await sink.send_text(decline_json(decline, receipt_lines))

