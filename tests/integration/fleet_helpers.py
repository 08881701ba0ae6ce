"""Driving one job through a miner whose executors sit behind SSH in the netns lab.

Shared by the fleet tests: a job is started step by step so a test can break something
(cut a host, kill a process) at a known point, then the validator's frames are checked
for "every message exactly once, in order".
"""

from __future__ import annotations

import asyncio
import time
import uuid as uuidlib
from typing import Any

import pytest

from horde_protocol.messages import (
    ExecutorTimingDetails,
    V0AcceptJobRequest,
    V0ExecutorManifestRequest,
    V0ExecutorReadyRequest,
    V0JobRequest,
    V0VolumesReadyRequest,
)
from miner_agent.fleet.connection import LinkState
from miner_agent.selftest.simulator import SimSession, ValidatorSim
from tests.fixtures.sshd import ClientKey, ExecutorHost

CLASS = "always_on.test"
OTHER_CLASS = "always_on.cpu.8c.16gb"
SLEEP_JOB = ["sh", "-c", "sleep 4; echo ok"]  # long enough to break something while it runs
PROGRESS = ["V0AcceptJobRequest", "V0ExecutorReadyRequest", "V0VolumesReadyRequest", "V0ExecutionDoneRequest"]
OPTIONAL = "V0MachineSpecsRequest"  # an agent may report specs after a successful job
TIMING = ExecutorTimingDetails(allowed_leeway=5, download_time_limit=10, execution_time_limit=20,
                               upload_time_limit=10, streaming_start_time_limit=0)
LINK_UP_TIMEOUT_S = 15.0
STAGE_TIMEOUT_S = 15.0
CONTAINER_START_TIMEOUT_S = 15.0
POLL_S = 0.1


def job(sim: ValidatorSim, image: str, cmd: list[str] | None = None, executor_class: str = CLASS) -> tuple[Any, Any]:
    initial = sim.initial_request(executor_class, image, job_uuid=str(uuidlib.uuid4()), timing=TIMING)
    request = V0JobRequest(job_uuid=initial.job_uuid, executor_class=executor_class, docker_image=image,
                           docker_run_options_preset="none", docker_run_cmd=cmd or SLEEP_JOB)
    return initial, request


def budget_s() -> float:
    """How long the validator waits after executor readiness (protocol.md §5.2)."""
    t = TIMING
    return t.allowed_leeway + t.download_time_limit + t.execution_time_limit + t.upload_time_limit


async def offer(sim: ValidatorSim, initial: Any) -> tuple[SimSession, str]:
    """Connect, read the manifest, send the offer; returns the session and the reply type."""
    session = await sim.connect()
    await session.recv_until(V0ExecutorManifestRequest, timeout_s=10)
    await session.send(initial)
    reply = await session.recv_until(V0AcceptJobRequest, timeout_s=7, or_outcome=True)
    return session, reply.type


async def begin(sim: ValidatorSim, initial: Any, request: Any) -> SimSession:
    """Run the stock flow up to V0VolumesReadyRequest (the container is about to start)."""
    session, reply = await offer(sim, initial)
    try:
        assert reply == "V0AcceptJobRequest", session.received[-1].message
        await session.send(sim.accepted_receipt(str(initial.job_uuid)))
        ready = await session.recv_until(V0ExecutorReadyRequest, timeout_s=STAGE_TIMEOUT_S, or_outcome=True)
        assert ready.type == "V0ExecutorReadyRequest", ready.message
        await session.send(request)
        volumes = await session.recv_until(V0VolumesReadyRequest, timeout_s=STAGE_TIMEOUT_S, or_outcome=True)
        assert volumes.type == "V0VolumesReadyRequest", volumes.message
    except BaseException:
        await session.close()
        raise
    return session


async def finish(session: SimSession, timeout_s: float | None = None) -> Any:
    """Wait for the terminal frame; returns it."""
    return (await session.recv_until(or_outcome=True, timeout_s=timeout_s or budget_s() + 5)).message


async def manifest(sim: ValidatorSim) -> dict[str, int]:
    async with await sim.connect() as session:
        got = (await session.recv_until(V0ExecutorManifestRequest, timeout_s=10)).message.manifest
    return {str(k): v for k, v in got.items()}


def types(*sessions: SimSession) -> list[str]:
    """Every frame the validator got on these sessions, in order, manifests left out."""
    return [r.type for s in sessions for r in s.received if r.type != "V0ExecutorManifestRequest"]


def assert_once_in_order(got: list[str], last: str = "V0JobFinishedRequest", progress: list[str] = PROGRESS) -> None:
    assert [t for t in got if t != OPTIONAL] == [*progress, last], got
    assert got.count(OPTIONAL) <= 1 and (OPTIONAL not in got or got.index(OPTIONAL) == len(got) - 2), got


async def container_running(host: ExecutorHost, job_uuid: str) -> None:
    """Wait until the agent recorded the started container (running.json): mid-job for real."""
    path = host.jobs_dir / job_uuid / "running.json"
    await _poll(path.exists, CONTAINER_START_TIMEOUT_S, f"container of job {job_uuid} on {host.name} never started")


async def link_state(agent: Any, name: str, state: LinkState, timeout_s: float) -> float:
    """Wait for an executor link to reach a state; returns the monotonic time it did."""
    link = agent.ctx.fleet.links[name]
    await _poll(lambda: link.state is state, timeout_s, f"link {name} is {link.state.value}, not {state.value}")
    return time.monotonic()


async def _poll(ready: Any, timeout_s: float, failure: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not ready():
        if time.monotonic() > deadline:
            pytest.fail(failure)
        await asyncio.sleep(POLL_S)


def sshd_accepted(host: ExecutorHost) -> int:
    """Logins sshd accepted with our client key (from ctl's address)."""
    return host.sshd_log.read_text().count("Accepted publickey for root from 10.231.0.1 ")


def ssh_entries(hosts: dict[str, ExecutorHost], key: ClientKey, executor_class: str = CLASS) -> list[Any]:
    return [h.entry(key, executor_class) for h in hosts.values()]

