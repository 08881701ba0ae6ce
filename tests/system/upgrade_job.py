"""Run inside the test machine with the installed venv: a validator whose long job must
outlive an `apt upgrade` of both agents.

The upgrade restarts miner-agent, which closes this validator's socket with 1001; a real
validator reconnects, and so does this one, until the job's outcome arrives (the miner
keeps what it owes a validator in SQLite until a socket of that validator took it).
Everything it imports is imported at start, because the upgrade replaces the venv's files
under it.

usage: /opt/miner-agent/venv/bin/python upgrade_job.py CONFIG VALIDATOR_WALLETS IMAGE SLEEP_S REPORT
Appends one JSON line per event to REPORT (`container_running` is the test's cue to
upgrade) and a last line with `"event": "done"` and what the validator received.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import aiohttp

from horde_protocol.enums import EXECUTOR_CLASS_SPECS
from horde_protocol.messages import (
    ExecutorTimingDetails,
    V0AcceptJobRequest,
    V0ExecutorManifestRequest,
    V0ExecutorReadyRequest,
    V0JobFinishedRequest,
    V0JobRequest,
)
from miner_agent.keys import load_hotkey
from miner_agent.miner_config import load_config
from miner_agent.selftest.simulator import Received, SimSession, ValidatorSim, inline_zip

CONTAINER_APPEAR_TIMEOUT_S = 60.0
RECONNECT_EVERY_S = 0.5
OUTCOME_TIMEOUT_S = 240.0  # the job's sleep plus two agent restarts, with room
ACCEPT_TIMEOUT_S = 7.0  # the validator's reservation limit
READY_TIMEOUT_S = 60.0
JOB_LABEL = "io.computehorde.job-uuid"
CONNECTION_ERRORS = (ConnectionError, OSError, aiohttp.ClientError, asyncio.TimeoutError)


class Report:
    def __init__(self, path: Path) -> None:
        self.path = path

    def event(self, name: str, **fields: object) -> None:
        with self.path.open("a") as out:
            out.write(json.dumps({"event": name, "at": time.time(), **fields}) + "\n")


async def container_of(job_uuid: str) -> str:
    """The job container's ID once podman lists it running ('' until then)."""
    proc = await asyncio.create_subprocess_exec(
        "podman", "ps", "--filter", f"label={JOB_LABEL}={job_uuid}", "--filter", f"name=ch-{job_uuid}-job",
        "--format", "{{.ID}}", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL)
    out, _ = await proc.communicate()
    return out.decode().strip() if proc.returncode == 0 else ""


async def watch_container(job_uuid: str, report: Report) -> None:
    deadline = time.monotonic() + CONTAINER_APPEAR_TIMEOUT_S
    while time.monotonic() < deadline:
        if container := await container_of(job_uuid):
            report.event("container_running", container=container)
            return
        await asyncio.sleep(0.2)
    report.event("container_never_ran")


async def reconnect(sim: ValidatorSim, report: Report, deadline: float) -> SimSession:
    while True:
        try:
            session = await sim.connect()
            await session.recv_until(V0ExecutorManifestRequest, timeout_s=10)
            report.event("reconnected")
            return session
        except CONNECTION_ERRORS as exc:
            if time.monotonic() > deadline:
                raise TimeoutError(f"the miner did not take this validator back: {exc!r}") from exc
            await asyncio.sleep(RECONNECT_EVERY_S)


async def outcome_of(sim: ValidatorSim, session: SimSession, job_uuid: str, started: datetime,
                     report: Report) -> list[Received]:
    """Every frame about the job until one ends it, across as many reconnects as it takes."""
    received: list[Received] = []
    deadline = time.monotonic() + OUTCOME_TIMEOUT_S
    while True:
        try:
            item = await session.recv(max(0.01, deadline - time.monotonic()))
        except CONNECTION_ERRORS as exc:
            report.event("socket_closed", error=repr(exc)[:200])
            await session.http.close()
            session = await reconnect(sim, report, deadline)
            continue
        if getattr(item.message, "job_uuid", None) != job_uuid:
            continue
        received.append(item)
        if item.message.outcome is not None:
            score = 1.0 if isinstance(item.message, V0JobFinishedRequest) else 0.0
            await session.send(sim.finished_receipt(job_uuid, started, score))
            await asyncio.sleep(0.05)
            await session.close()
            return received


async def run(config_path: str, wallets: str, image: str, sleep_s: int, report: Report) -> None:
    started = datetime.now(UTC)
    config = load_config(Path(config_path))
    miner = load_hotkey(config.wallet.path, config.wallet.name, config.wallet.hotkey)
    validator = load_hotkey(Path(wallets), "validator", "default")
    sim = ValidatorSim(validator.keypair, miner.hotkey, f"http://127.0.0.1:{config.miner.listen_port}")
    executor_class = config.executors[0].executor_class
    timing = ExecutorTimingDetails(allowed_leeway=5, download_time_limit=20, execution_time_limit=sleep_s + 60,
                                   upload_time_limit=20, streaming_start_time_limit=0)
    initial = sim.initial_request(executor_class.value, image, volume=inline_zip({"in.txt": b"kept\n"}), timing=timing)
    job_uuid = str(initial.job_uuid)
    request = V0JobRequest(
        job_uuid=job_uuid, executor_class=executor_class.value, docker_image=image,
        docker_run_options_preset="nvidia_all" if EXECUTOR_CLASS_SPECS[executor_class].has_gpu else "none",
        docker_run_cmd=["sh", "-c", f"sleep {sleep_s}; cat /volume/in.txt; echo survived the upgrade"],
    )
    session = await sim.connect()
    await session.recv_until(V0ExecutorManifestRequest, timeout_s=10)
    await session.send(initial)
    first = await session.recv_until(V0AcceptJobRequest, timeout_s=ACCEPT_TIMEOUT_S, or_outcome=True)
    if not isinstance(first.message, V0AcceptJobRequest):
        report.event("done", job_uuid=job_uuid, types=[first.type], stdout="", last=first.message.model_dump_json())
        return
    await session.send(sim.accepted_receipt(job_uuid))
    ready = await session.recv_until(V0ExecutorReadyRequest, timeout_s=READY_TIMEOUT_S, or_outcome=True)
    received = [first, ready]
    if isinstance(ready.message, V0ExecutorReadyRequest):
        await session.send(request)
        report.event("job_sent", job_uuid=job_uuid)
        watcher = asyncio.create_task(watch_container(job_uuid, report))
        received += await outcome_of(sim, session, job_uuid, started, report)
        watcher.cancel()
    last = received[-1].message
    report.event("done", job_uuid=job_uuid, types=[r.type for r in received],
                 stdout=getattr(last, "docker_process_stdout", "") or "", last=last.model_dump_json()[:2000])


def main() -> None:
    config_path, wallets, image, sleep_s, report_path = sys.argv[1:6]
    report = Report(Path(report_path))
    try:
        asyncio.run(run(config_path, wallets, image, int(sleep_s), report))
    except Exception as exc:  # the test waits for a "done" line: say what went wrong instead of hanging it
        report.event("done", error=repr(exc)[:2000], types=[], stdout="")
        raise


if __name__ == "__main__":
    main()
