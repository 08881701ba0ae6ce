"""The running agent's own health: the CVE-2022-0492 probe once at start, doctor rows on request.

The probe starts a container, which takes a second or more, so it runs in the background after
the socket is up and never on a job's path; its result is kept (and logged once) for every later
`doctor` frame. A `doctor` frame gets that result plus a fresh run of the cheap host checks
(executor_agent/doctor.py), which are blocking calls and so run in a worker thread.
"""

from __future__ import annotations

import asyncio
import logging

from executor_agent.container.podman_engine import Podman
from executor_agent.cve_probe import run_probe
from executor_agent.doctor import host_checks, probe_candidates
from executor_agent.executor_config import AgentConfig
from horde_protocol.link_frames import DoctorRow

log = logging.getLogger(__name__)

PROBE_CHECK = "CVE-2022-0492"
HOST_CHECKS_TIMEOUT_S = 20.0  # the checks make a few podman API calls; the miner waits a little longer


class AgentHealth:
    def __init__(self, config: AgentConfig, engine: Podman) -> None:
        self.config = config
        self.engine = engine
        self.probe: tuple[str, str] = ("not checked", "start-up probe still running")
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._probe_once(), name="cve-probe")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _probe_once(self) -> None:
        try:
            self.probe = await run_probe(self.engine, probe_candidates(self.config))
        except Exception as exc:  # the probe must never take the agent down
            self.probe = ("FAIL", f"probe could not run: {type(exc).__name__}: {exc}")
        status, detail = self.probe
        level = logging.INFO if status == "ok" else logging.WARNING
        log.log(level, "security probe check=%s status=%s detail=%r", PROBE_CHECK, status, detail)

    async def rows(self, executor_class: str | None) -> list[DoctorRow]:
        """What a `doctor` frame is answered with: live host checks, then the start-up probe."""
        try:
            found = await asyncio.wait_for(asyncio.to_thread(host_checks, self.config, executor_class),
                                           HOST_CHECKS_TIMEOUT_S)
            rows = [DoctorRow(check=name, status=status, detail=detail) for name, status, detail in found]  # type: ignore[arg-type]
        except TimeoutError:
            rows = [DoctorRow(check="host checks", status="FAIL",
                              detail=f"did not finish within {HOST_CHECKS_TIMEOUT_S:.0f} s (is podman hung?)")]
        status, detail = self.probe
        rows.append(DoctorRow(check=PROBE_CHECK, status=status, detail=detail))  # type: ignore[arg-type]
        return rows
