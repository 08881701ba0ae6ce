"""The doctor frame pair over a real link: a current agent's rows come back, an agent that
predates the frame is reported as too old (either by its Hello or by its error answer), and
a silent one times out. The agents are small fakes on a unix socket speaking the link protocol."""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from horde_protocol import link_frames as L
from miner_agent.fleet.connection import AgentTooOld, ExecutorLink
from miner_agent.miner_config import LocalExecutor

Answer = Callable[[bytes], L.LinkFrame | None]


class _NoEvents:
    async def on_event(self, executor_name: str, event: L.Event) -> None:
        pass

    async def on_job_error(self, executor_name: str, job_uuid: str, details: str) -> None:
        pass


async def _fake_agent(path: Path, hello: L.Hello, answer: Answer) -> asyncio.AbstractServer:
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(L.encode(hello))
        while line := await reader.readline():
            reply = answer(line)
            if reply is not None:
                writer.write(L.encode(reply))
                await writer.drain()
        writer.close()

    return await asyncio.start_unix_server(serve, path=str(path))


def _old_agent_answer(line: bytes) -> L.LinkFrame:
    """What an agent from before `doctor` says: it cannot parse the frame."""
    return L.LinkError(details=f"malformed frame: line: Input tag {L.decode_down(line).link!r} found using 'link' "
                               "does not match any of the expected tags: 'submit', 'payload', 'attach', 'cancel', 'ping'")


def _current_agent_answer(line: bytes) -> L.LinkFrame:
    frame = L.decode_down(line)
    assert isinstance(frame, L.Doctor) and frame.executor_class == "always_on.cpu.8c.16gb"
    return L.DoctorReport(nonce=frame.nonce, rows=[L.DoctorRow(check="CVE-2022-0492", status="ok", detail="contained")])


@pytest.fixture
async def link_to() -> AsyncIterator[Callable[..., object]]:
    made: list[tuple[asyncio.AbstractServer, ExecutorLink]] = []

    async def start(hello: L.Hello, answer: Answer) -> ExecutorLink:
        path = Path(tempfile.mkdtemp(prefix="ld-")) / "agent.sock"
        server = await _fake_agent(path, hello, answer)
        link = ExecutorLink(LocalExecutor(name="x", socket=path), _NoEvents())
        link.start()
        assert await link.wait_up(5)
        made.append((server, link))
        return link

    yield start
    for server, link in made:
        await link.stop()
        server.close()


async def test_current_agent_reports_its_rows(link_to) -> None:
    link = await link_to(L.Hello(agent_version="9", features=[L.FEATURE_DOCTOR]), _current_agent_answer)
    report = await link.doctor("always_on.cpu.8c.16gb", timeout_s=5)
    assert [(r.check, r.status) for r in report.rows] == [("CVE-2022-0492", "ok")]


async def test_agent_without_the_feature_is_too_old_without_asking(link_to) -> None:
    asked: list[bytes] = []
    link = await link_to(L.Hello(agent_version="0.0.9"), lambda line: asked.append(line))
    with pytest.raises(AgentTooOld, match="0.0.9"):
        await link.doctor("always_on.cpu.8c.16gb", timeout_s=5)
    assert asked == []


async def test_agent_that_cannot_parse_the_frame_is_too_old(link_to) -> None:
    link = await link_to(L.Hello(agent_version="9", features=[L.FEATURE_DOCTOR]), _old_agent_answer)
    with pytest.raises(AgentTooOld, match="malformed frame"):
        await link.doctor("always_on.cpu.8c.16gb", timeout_s=5)


async def test_silent_agent_times_out(link_to) -> None:
    link = await link_to(L.Hello(agent_version="9", features=[L.FEATURE_DOCTOR]), lambda line: None)
    with pytest.raises(TimeoutError):
        await link.doctor("always_on.cpu.8c.16gb", timeout_s=0.3)
    assert link._doctor_waiters == {}
