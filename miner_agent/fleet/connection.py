"""One persistent link to one executor agent, local (unix socket) or over SSH.

The link reconnects by itself with capped exponential backoff. After every (re)connect
it re-attaches the jobs it has in flight with the last event sequence number it saw, so
the agent replays exactly what was missed; events at or below that number are dropped
here, which makes delivery exactly-once toward the job machine.

SSH mode opens one asyncssh connection per executor host with the host key pinned from
the config (never trust on first use) and runs the link over a streamlocal channel to
the agent's unix socket: no per-job handshake, no TCP port on the executor host.
"""

from __future__ import annotations

import asyncio
import enum
import errno
import logging
import socket
import sys
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from pydantic import ValidationError

from horde_protocol import link_frames as L
from miner_agent.miner_config import LocalExecutor, SshExecutor

if TYPE_CHECKING:
    import asyncssh  # imported for real only by an SSH link (_open): ~20 MiB resident a local-only miner spares

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 10.0
RECONNECT_MIN_S = 0.2
RECONNECT_MAX_S = 10.0
SSH_KEEPALIVE_INTERVAL_S = 5.0
SSH_KEEPALIVE_COUNT_MAX = 3  # three missed keepalives (15 s) mark the link down
DOCTOR_TIMEOUT_S = 30.0  # the agent's checks are bounded at 20 s (executor_agent/daemon/health.py)


class AgentTooOld(Exception):
    """The agent does not answer `doctor` frames (it predates them)."""


class LinkState(str, enum.Enum):
    CONNECTING = "connecting"
    UP = "up"
    DOWN = "down"
    CLOSED = "closed"


class LinkDown(Exception):
    """The executor agent is not reachable right now."""


class FleetEvents(Protocol):
    """What the links report upward (the job service implements it)."""

    async def on_event(self, executor_name: str, event: L.Event) -> None:
        """One job event, exactly once and in seq order per job."""

    async def on_job_error(self, executor_name: str, job_uuid: str, details: str) -> None:
        """The agent refused a frame about a tracked job in a way that means it cannot run there."""


FATAL_ERROR_CODES = frozenset({"busy", "unknown_job"})  # the job cannot run on that agent


@dataclass
class ExecutorLink:
    entry: LocalExecutor | SshExecutor
    events: FleetEvents
    state: LinkState = LinkState.CONNECTING
    hello: L.Hello | None = None
    last_error: str = ""
    down_since: float | None = field(default_factory=time.monotonic)
    last_up: float | None = None  # monotonic time the link was last seen up
    _last_seq: dict[str, int] = field(default_factory=dict)
    # submit/payload frames with the last seq seen when they were sent; dropped once a later
    # event proves the agent has them, re-sent after a reconnect until then
    _unconfirmed: dict[str, list[tuple[int, L.Submit | L.Payload]]] = field(default_factory=dict)
    _writer: asyncio.StreamWriter | asyncssh.SSHWriter | None = None
    _ssh: asyncssh.SSHClientConnection | None = None
    _task: asyncio.Task[None] | None = None
    _up: asyncio.Event = field(default_factory=asyncio.Event)
    _doctor_waiters: dict[int, asyncio.Future[L.DoctorReport]] = field(default_factory=dict)
    _doctor_nonce: int = 0

    @property
    def name(self) -> str:
        return self.entry.name

    def reachable(self, now: float, hold_s: float) -> bool:
        """Up now, or up within the last `hold_s` seconds (a short drop is forgiven)."""
        if self.state is LinkState.UP:
            return True
        return self.last_up is not None and now - self.last_up < hold_s

    def track(self, job_uuid: str, last_seq: int = 0) -> None:
        """Follow a job's events on this link (re-attached after every reconnect)."""
        self._last_seq.setdefault(job_uuid, last_seq)

    def untrack(self, job_uuid: str) -> None:
        self._last_seq.pop(job_uuid, None)
        self._unconfirmed.pop(job_uuid, None)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"link-{self.name}")

    async def stop(self) -> None:
        self.state = LinkState.CLOSED
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self._close_transport()

    async def wait_up(self, timeout_s: float) -> bool:
        try:
            await asyncio.wait_for(self._up.wait(), timeout_s)
            return True
        except TimeoutError:
            return False

    def keep_until_confirmed(self, frame: L.Submit | L.Payload, at_seq: int) -> None:
        """Re-send `frame` after every reconnect until an event after `at_seq` shows the agent
        has it. `send` does this itself; a restarted miner calls it for a reloaded job whose
        submit or payload may never have reached the agent."""
        self._unconfirmed.setdefault(frame.job_uuid, []).append((at_seq, frame))

    async def send(self, frame: L.LinkFrame) -> None:
        if isinstance(frame, L.Submit | L.Payload) and frame.job_uuid in self._last_seq:
            # Kept even when the write fails or lands in a dying connection.
            self.keep_until_confirmed(frame, self._last_seq[frame.job_uuid])
        await self._write(frame)

    async def _write(self, frame: L.LinkFrame) -> None:
        writer = self._writer
        if self.state is not LinkState.UP or writer is None:
            raise LinkDown(f"executor {self.name}: link is {self.state.value} ({self.last_error or 'not connected yet'})")
        try:
            writer.write(L.encode(frame))
            await writer.drain()
        except (OSError, ConnectionError, *_ssh_errors()) as exc:
            raise LinkDown(f"executor {self.name}: send failed: {exc}") from None

    async def doctor(self, executor_class: str | None, timeout_s: float = DOCTOR_TIMEOUT_S) -> L.DoctorReport:
        """The agent's own check rows. Raises LinkDown, AgentTooOld, or TimeoutError."""
        hello = self.hello
        if self.state is LinkState.UP and hello is not None and L.FEATURE_DOCTOR not in hello.features:
            raise AgentTooOld(f"executor agent {hello.agent_version} does not report its checks")
        self._doctor_nonce += 1
        nonce = self._doctor_nonce
        waiter: asyncio.Future[L.DoctorReport] = asyncio.get_running_loop().create_future()
        self._doctor_waiters[nonce] = waiter
        try:
            await self._write(L.Doctor(nonce=nonce, executor_class=executor_class))
            return await asyncio.wait_for(waiter, timeout_s)
        finally:
            self._doctor_waiters.pop(nonce, None)

    def _doctor_answer(self, frame: L.DoctorReport | L.LinkError) -> None:
        """Resolve the waiting doctor request; an untagged error while one waits is the answer of
        an agent that cannot parse the frame."""
        if isinstance(frame, L.DoctorReport):
            waiter = self._doctor_waiters.get(frame.nonce)
            if waiter is not None and not waiter.done():
                waiter.set_result(frame)
            return
        for waiter in self._doctor_waiters.values():
            if not waiter.done():
                waiter.set_exception(AgentTooOld(f"executor agent answered: {frame.details}"))

    # -- connection loop ----------------------------------------------------------------

    async def _run(self) -> None:
        delay = RECONNECT_MIN_S
        while self.state is not LinkState.CLOSED:
            try:
                reader, self._writer = await asyncio.wait_for(self._open(), CONNECT_TIMEOUT_S)
                await self._session(reader)
                delay = RECONNECT_MIN_S
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # every failure is logged and retried; the loop is the supervisor
                self.last_error = _describe(exc, self.entry)
            finally:
                self._up.clear()
                await self._close_transport()
            if self.state is LinkState.CLOSED:
                break
            if self.state is LinkState.UP or self.down_since is None:
                self.down_since = time.monotonic()
            if self.state is LinkState.UP:
                self.last_up = time.monotonic()
            self.state = LinkState.DOWN
            log.warning("executor link down executor=%s error=%r retry_in_s=%.1f", self.name, self.last_error, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, RECONNECT_MAX_S)

    async def _open(self) -> tuple[asyncio.StreamReader | asyncssh.SSHReader, asyncio.StreamWriter | asyncssh.SSHWriter]:
        entry = self.entry
        if isinstance(entry, LocalExecutor):
            return await asyncio.open_unix_connection(str(entry.socket), limit=L.MAX_FRAME_BYTES)
        import asyncssh

        host_id = entry.host if entry.port == 22 else f"[{entry.host}]:{entry.port}"
        self._ssh = await asyncssh.connect(
            entry.host,
            port=entry.port,
            username=entry.user,
            client_keys=[str(entry.key_path.expanduser())],
            known_hosts=asyncssh.import_known_hosts(f"{host_id} {entry.host_key.strip()}\n"),
            keepalive_interval=SSH_KEEPALIVE_INTERVAL_S,
            keepalive_count_max=SSH_KEEPALIVE_COUNT_MAX,
        )
        return await self._ssh.open_unix_connection(str(entry.socket))

    async def _session(self, reader: asyncio.StreamReader | asyncssh.SSHReader) -> None:
        first = await reader.readline()
        hello = L.decode_up(first)
        if not isinstance(hello, L.Hello):
            raise ConnectionError(f"expected hello, got {hello.link}")
        self.hello = hello
        self.state = LinkState.UP
        self.last_error = ""
        self.down_since = None
        self._up.set()
        log.info("executor link up executor=%s agent_version=%s slots=%d", self.name, hello.agent_version, hello.slots)
        known = {job.job_uuid: job.last_seq for job in hello.jobs}
        for job_uuid, seq in list(self._last_seq.items()):
            await self._resend(job_uuid, known.get(job_uuid))
            if job_uuid in known or seq > 0 or self._unconfirmed.get(job_uuid):
                await self._write(L.Attach(job_uuid=job_uuid, since_seq=seq))
            # else: reserved here but its submit is not sent yet; attaching would only earn
            # an "unknown job" from the agent.
        while True:
            line = await reader.readline()
            if not line:
                raise ConnectionError("executor agent closed the link")
            try:
                frame = L.decode_up(line)
            except ValidationError as exc:
                log.error("executor sent a malformed frame executor=%s error=%s", self.name, exc.errors()[0]["msg"])
                continue
            if isinstance(frame, L.Event):
                await self._deliver(frame)
            elif isinstance(frame, L.DoctorReport):
                self._doctor_answer(frame)
            elif isinstance(frame, L.LinkError) and frame.job_uuid is None and "doctor" in frame.details \
                    and self._doctor_waiters:
                self._doctor_answer(frame)
            elif isinstance(frame, L.LinkError):
                log.error("executor reported an error executor=%s job=%s code=%s details=%r",
                          self.name, frame.job_uuid, frame.code or "-", frame.details)
                tracked = frame.job_uuid is not None and frame.job_uuid in self._last_seq
                if tracked and frame.code in FATAL_ERROR_CODES:
                    await self.events.on_job_error(self.name, frame.job_uuid, frame.details)

    async def _deliver(self, event: L.Event) -> None:
        seen = self._last_seq.get(event.job_uuid)
        if seen is None:
            log.warning("event for an untracked job dropped executor=%s job=%s seq=%d", self.name, event.job_uuid, event.seq)
            return
        if event.seq <= seen:
            return  # replayed after a re-attach: already delivered
        self._last_seq[event.job_uuid] = event.seq
        if pending := self._unconfirmed.get(event.job_uuid):
            # The agent answers a submit (ready) or a payload (volumes ready) only after taking it.
            pending[:] = [(at, frame) for at, frame in pending if at >= event.seq]
        await self.events.on_event(self.name, event)

    async def _resend(self, job_uuid: str, agent_seq: int | None) -> None:
        """Re-send what the agent may have missed (sent while the link was down, or into a
        connection that was dying): a submit it does not know, a payload it has not used."""
        pending = self._unconfirmed.get(job_uuid, [])
        pending[:] = [(at, frame) for at, frame in pending if agent_seq is None or agent_seq <= at]
        for _, frame in pending:
            if isinstance(frame, L.Submit) and agent_seq is not None:
                continue  # the agent has the job
            log.info("re-sending after reconnect executor=%s job=%s frame=%s", self.name, job_uuid, frame.link)
            await self._write(frame)

    async def _close_transport(self) -> None:
        writer, self._writer = self._writer, None
        if writer is not None:
            try:
                writer.close()
            except Exception:
                pass
        ssh, self._ssh = self._ssh, None
        if ssh is not None:
            ssh.close()


def _describe(exc: BaseException, entry: LocalExecutor | SshExecutor) -> str:
    """One sentence per failure kind that names what to check, because this string is what
    the operator sees: in the `executor link down` log line and in `miner-agent status`."""
    if isinstance(entry, LocalExecutor):
        if isinstance(exc, FileNotFoundError | ConnectionRefusedError):
            return f"no executor agent listening on {entry.socket}; is executor-agent running?"
        if isinstance(exc, TimeoutError):
            return f"connect to {entry.socket} timed out after {CONNECT_TIMEOUT_S:.0f} s"
        return f"{type(exc).__name__}: {exc}"
    return _describe_ssh(exc, entry)


UNREACHABLE_ERRNOS = frozenset({errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EHOSTDOWN, errno.ETIMEDOUT})


def _ssh_errors() -> tuple[type[BaseException], ...]:
    """asyncssh's base error once an SSH link has imported asyncssh; before that no link can raise it."""
    asyncssh = sys.modules.get("asyncssh")
    return (asyncssh.Error,) if asyncssh is not None else ()


def _describe_ssh(exc: BaseException, entry: SshExecutor) -> str:
    import asyncssh

    where = f"{entry.host}:{entry.port}"
    if isinstance(exc, asyncssh.HostKeyNotVerifiable):
        return (f"host key of {entry.host} does not match the pinned host_key of executor {entry.name}"
                f"; check the host, then update host_key in the config")
    if isinstance(exc, asyncssh.PermissionDenied):
        return (f"ssh login refused for {entry.user}@{where} with key {entry.key_path}; authorize its .pub "
                f"on the host (executor-agent authorize-miner '<key>'), or check user and key_path")
    if isinstance(exc, asyncssh.ChannelOpenError):
        return (f"ssh login to {entry.user}@{where} works but sshd refused the channel to {entry.socket} "
                f"({exc.reason}); check on the host: the sshd drop-in needs AllowTcpForwarding local "
                f"(OpenSSH gates socket channels on it, 'no' refuses them) and a PermitOpen that includes "
                f"[{entry.socket}]:*, the authorized_keys line needs port-forwarding after restrict and "
                f"a permitopen for that path, and {entry.socket} must exist (executor-agent running, same "
                f"socket_path); executor-agent authorize-miner writes both files")
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve executor host {entry.host!r} ({exc.strerror}); check host in the config"
    if isinstance(exc, ConnectionRefusedError):
        return f"nothing accepts connections at {where}; is sshd running there, and is port right?"
    if isinstance(exc, TimeoutError) or (isinstance(exc, OSError) and exc.errno in UNREACHABLE_ERRNOS):
        return (f"executor host {where} unreachable (no answer within {CONNECT_TIMEOUT_S:.0f} s or no route); "
                f"check that it is up, the address, and firewalls between")
    return f"{type(exc).__name__}: {exc}"
