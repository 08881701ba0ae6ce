"""The executor agent's unix-socket server and its process lifecycle.

One connection = one miner link (direct, or an SSH streamlocal channel). The agent
speaks first (Hello), then answers frames line by line. A bad line never closes the
connection: it gets a LinkError naming what was wrong, because dropping the link would
also drop the event stream of every job on it. Each connection has its own outgoing
queue and writer task, so publishing an event never waits on a slow reader.
"""

from __future__ import annotations

import asyncio
import grp
import logging
import os
import signal
from pathlib import Path

from pydantic import ValidationError

from executor_agent import __version__
from executor_agent.container.podman_engine import Podman
from executor_agent.daemon.health import AgentHealth
from executor_agent.daemon.jobdirs import prepare_jobs_dir
from executor_agent.daemon.registry import JobRegistry, RegistryError
from executor_agent.daemon.services import AgentServices, JobRunnerError
from executor_agent.executor_config import LINK_GROUP, AgentConfig
from horde_protocol.link_frames import (
    FEATURE_DOCTOR,
    MAX_FRAME_BYTES,
    AgentToMinerFrame,
    Attach,
    Cancel,
    Doctor,
    DoctorReport,
    Hello,
    LinkError,
    Payload,
    Ping,
    Pong,
    Submit,
    decode_down,
    encode,
)

log = logging.getLogger(__name__)

# Owner and group may connect; the group is `socket_group` (on a packaged host executor-agent-link,
# which holds a local miner-agent and nothing else). The unit's RuntimeDirectory is 0711: anyone
# may pass, no one may list, and this mode decides who connects.
SOCKET_MODE = 0o660
SOCKET_DIR_MODE = 0o755
WATCHDOG_PING_S = 10.0  # well inside the unit's WatchdogSec=30s; sent from the event loop
CONNECTION_CLOSE_TIMEOUT_S = 5.0  # stop() waits this long for reader loops to notice the close
MAX_ERROR_DETAIL_CHARS = 300  # enough to name the field and the problem, short enough for a log line


class AgentStartError(Exception):
    """The agent cannot start; str() is one line that says what to fix."""


class Connection:
    """One link connection: a reader loop plus a writer task fed by `deliver`."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, registry: JobRegistry,
                 health: AgentHealth | None = None) -> None:
        self.reader = reader
        self.writer = writer
        self.registry = registry
        self.health = health
        self.queue: asyncio.Queue[AgentToMinerFrame] = asyncio.Queue()
        self._writer_task: asyncio.Task[None] | None = None
        self._doctor_tasks: set[asyncio.Task[None]] = set()

    def deliver(self, frame: AgentToMinerFrame) -> None:
        self.queue.put_nowait(frame)

    async def serve(self) -> None:
        self._writer_task = asyncio.create_task(self._write_loop())
        self.deliver(Hello(agent_version=__version__, slots=self.registry.config.slots,
                           jobs=self.registry.summaries(), features=[FEATURE_DOCTOR] if self.health else []))
        try:
            while (line := await self._read_frame()) is not None:
                if line.strip():
                    self._dispatch(line)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self.registry.unsubscribe(self)
            await self.close()

    async def close(self) -> None:
        for task in list(self._doctor_tasks):
            task.cancel()
        if self._writer_task is not None:
            self._writer_task.cancel()
            await asyncio.gather(self._writer_task, return_exceptions=True)
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except (ConnectionError, OSError):
            pass

    async def _read_frame(self) -> bytes | None:
        """The next line, or None at EOF. An over-long line is skipped (and answered with a
        LinkError) without buffering more than MAX_FRAME_BYTES of it."""
        oversize = False
        while True:
            try:
                line = await self.reader.readuntil(b"\n")
            except asyncio.IncompleteReadError as exc:
                return None if oversize or not exc.partial else exc.partial
            except asyncio.LimitOverrunError as exc:
                await self.reader.readexactly(exc.consumed)
                oversize = True
                continue
            if oversize:
                self.deliver(LinkError(details=f"frame longer than {MAX_FRAME_BYTES} bytes; ignored"))
                oversize = False
                continue
            return line

    def _dispatch(self, line: bytes) -> None:
        try:
            frame = decode_down(line)
        except ValidationError as exc:
            self.deliver(LinkError(details=_describe(exc)))
            return
        try:
            if isinstance(frame, Submit):
                self.registry.submit(frame, self)
            elif isinstance(frame, Payload):
                self.registry.payload(frame)
            elif isinstance(frame, Attach):
                self.registry.attach(frame.job_uuid, frame.since_seq, self)
            elif isinstance(frame, Cancel):
                self.registry.cancel(frame.job_uuid, frame.reason)
            elif isinstance(frame, Ping):
                self.deliver(Pong(nonce=frame.nonce))
            elif isinstance(frame, Doctor):
                self._answer_doctor(frame)
        except RegistryError as exc:
            self.deliver(LinkError(job_uuid=getattr(frame, "job_uuid", None), details=str(exc), code=exc.code))
        except OSError as exc:
            log.error("frame failed link=%s error=%s", frame.link, exc)
            self.deliver(LinkError(job_uuid=getattr(frame, "job_uuid", None),
                                   details=f"executor host error: {exc.strerror or exc}"))

    def _answer_doctor(self, frame: Doctor) -> None:
        """The checks take a while (podman calls in a thread); answered from a task so job frames
        on this connection are never held behind them."""
        if self.health is None:
            self.deliver(LinkError(details="doctor: this agent has no health checks"))
            return
        health = self.health

        async def answer() -> None:
            rows = await health.rows(frame.executor_class)
            self.deliver(DoctorReport(nonce=frame.nonce, rows=rows))

        task = asyncio.create_task(answer(), name="doctor-answer")
        self._doctor_tasks.add(task)
        task.add_done_callback(self._doctor_tasks.discard)

    async def _write_loop(self) -> None:
        while True:
            frame = await self.queue.get()
            self.writer.write(encode(frame))
            await self.writer.drain()


def _socket_gid(setting: str | None) -> int | None:
    """The socket's group id for the `socket_group` setting; None keeps the agent's own group."""
    if setting == "":
        return None
    name = setting or LINK_GROUP
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        if setting is None:
            return None  # not a packaged host: the agent's own group
        raise AgentStartError(f"socket_group {name!r}: no such group") from None


def _describe(exc: ValidationError) -> str:
    """One line: 'malformed frame: <where>: <what>' from pydantic's first error."""
    first = exc.errors(include_url=False)[0]
    where = ".".join(str(p) for p in first.get("loc", ())) or "line"
    text = f"malformed frame: {where}: {first.get('msg', 'invalid')}"
    if exc.error_count() > 1:
        text += f" (and {exc.error_count() - 1} more)"
    return text[:MAX_ERROR_DETAIL_CHARS]


class ExecutorAgent:
    """The agent in one object, so tests run it in-process: `await start()`, `await stop()`.

    stop() closes the socket and our tasks but never touches job containers: they run
    under the podman service and must outlive an agent restart.
    """

    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self.podman = Podman(config.podman_url)
        self.services: AgentServices | None = None  # specs, image GC, job-runner plugin; built in start()
        self.registry: JobRegistry | None = None  # built by the services, which hand it the jobs' deps
        self.health = AgentHealth(config, self.podman)  # start-up CVE probe, doctor answers
        self._server: asyncio.AbstractServer | None = None
        self._connections: dict[Connection, asyncio.Task[None]] = {}

    async def start(self) -> None:
        if not await self.podman.ping():
            raise AgentStartError(f"podman API at {self.config.podman_url} is not answering; "
                                  "start it (systemctl enable --now podman.socket) or fix podman_url")
        socket_gid = _socket_gid(self.config.socket_group)  # a missing group stops the start here, early
        try:
            prepare_jobs_dir(self.config.jobs_dir)
            self._prepare_socket_path(self.config.socket_path)
        except OSError as exc:
            raise AgentStartError(f"{exc.filename}: {exc.strerror}") from None
        try:
            self.services = AgentServices(self.config, self.podman)
        except JobRunnerError as exc:
            raise AgentStartError(str(exc)) from None
        self.registry = self.services.registry
        self.registry.load_existing()
        await self.registry.recover()
        self.services.start()
        self._server = await asyncio.start_unix_server(self._accept, path=str(self.config.socket_path),
                                                       limit=MAX_FRAME_BYTES)
        try:
            self._set_socket_access(self.config.socket_path, socket_gid)
        except OSError as exc:
            await self.stop()
            raise AgentStartError(f"{self.config.socket_path}: cannot give it the group of socket_group "
                                  f"({self.config.socket_group or LINK_GROUP!r}): {exc.strerror}; the agent must be "
                                  "a member (the unit's SupplementaryGroups=)") from None
        log.info("agent listening socket=%s slots=%d version=%s", self.config.socket_path,
                 self.config.slots, __version__)
        self.health.start()  # in the background, after the socket is up: never on a job's path

    @staticmethod
    def _prepare_socket_path(path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True, mode=SOCKET_DIR_MODE)
        if path.is_socket():
            path.unlink()  # a stale socket from a previous run; systemd's RuntimeDirectory usually clears it
        elif path.exists():
            raise OSError(17, "exists and is not a socket; remove it or change socket_path", str(path))

    @staticmethod
    def _set_socket_access(path: Path, gid: int | None) -> None:
        """Group first, then SOCKET_MODE: the group write bit is only given once the group is
        the right one (under the unit's UMask=0022 the socket starts without it)."""
        if gid is not None:
            os.chown(path, -1, gid)
        os.chmod(path, SOCKET_MODE)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        assert self.registry is not None  # the socket listens only once start() built it
        connection = Connection(reader, writer, self.registry, self.health)
        task = asyncio.current_task()
        assert task is not None
        self._connections[connection] = task
        try:
            await connection.serve()
        finally:
            self._connections.pop(connection, None)

    async def stop(self) -> int:
        """Stop accepting, drop connections, end our job tasks; returns jobs left running."""
        if self._server is not None:
            self._server.close()
        # Closing the transport ends each reader loop with EOF; cancelling the tasks that
        # asyncio's start_server made would log spurious errors on Python 3.11.
        for connection in list(self._connections):
            connection.writer.transport.abort()
        if self._connections:
            await asyncio.wait(list(self._connections.values()), timeout=CONNECTION_CLOSE_TIMEOUT_S)
        await self.health.stop()
        if self.services is not None:
            await self.services.stop()
        left = await self.registry.detach_all() if self.registry is not None else 0
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None
            self.config.socket_path.unlink(missing_ok=True)
        await self.podman.close()
        return left


async def serve(config: AgentConfig) -> None:
    """Run until SIGTERM/SIGINT (the CLI's `serve`). Tells systemd when ready, if asked to."""
    agent = ExecutorAgent(config)
    await agent.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    _notify(f"READY=1\nSTATUS=listening on {config.socket_path}, {config.slots} slot(s)")
    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), WATCHDOG_PING_S)
        except TimeoutError:
            _notify("WATCHDOG=1")
    _notify("STOPPING=1")
    left = await agent.stop()
    assert agent.registry is not None
    c = agent.registry.counters
    log.info("agent stopped submitted=%d finished=%d failed=%d horde_failed=%d left_running=%d",
             c.submitted, c.finished, c.failed, c.horde_failed, left)


def _notify(state: str) -> None:
    if not os.environ.get("NOTIFY_SOCKET"):
        return
    try:
        import sdnotify

        sdnotify.SystemdNotifier().notify(state)
    except ImportError:
        pass
