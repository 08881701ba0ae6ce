"""Pure verdicts on each executor: its link, its capacity, and its agent's own doctor rows."""

from __future__ import annotations

from pydantic import BaseModel, Field

from miner_agent.doctor.model import CheckRow, fail, not_checked, ok, warn


class AgentCheck(BaseModel):
    check: str
    status: str
    detail: str = ""


class ExecutorFacts(BaseModel):
    """One executor as the running miner sees it (the admin socket's /doctor)."""

    name: str
    executor_class: str
    link: str  # up / connecting / down / closed
    last_error: str = ""
    down_for_s: float = 0.0
    slots: int = 1
    running_jobs: int = 0
    drained: bool = False
    agent_version: str | None = None
    agent_checks: list[AgentCheck] | None = None  # None: not reported (doctor_error says why)
    doctor_error: str = ""
    agent_too_old: bool = False


def executor_rows(facts: ExecutorFacts) -> list[CheckRow]:
    prefix = f"executor {facts.name}"
    if facts.link != "up":
        return [fail(f"{prefix}: link", f"link {facts.link} for {facts.down_for_s:.0f} s: "
                     f"{facts.last_error or 'not connected yet'}",
                     "systemctl status executor-agent on its host; `miner-agent status` shows the link")]
    capacity = f"{facts.executor_class}, {facts.slots} slot(s), {facts.running_jobs} running, " \
               f"agent {facts.agent_version or '?'}"
    rows = [warn(f"{prefix}: link", f"up but drained ({capacity}): takes no new job",
                 f"miner-agent executors undrain {facts.name}") if facts.drained
            else ok(f"{prefix}: link", f"up ({capacity})")]
    if facts.agent_too_old:
        rows.append(not_checked(f"{prefix}: agent doctor", f"agent too old to report ({facts.doctor_error})",
                                "upgrade executor-agent on that host, or run `executor-agent doctor` there"))
    elif facts.agent_checks is None:
        rows.append(warn(f"{prefix}: agent doctor", f"no report: {facts.doctor_error}",
                         "run `executor-agent doctor` on that host"))
    else:
        bad = [c for c in facts.agent_checks if c.status in ("FAIL", "warn")]
        for check in bad:
            row = fail if check.status == "FAIL" else warn
            rows.append(row(f"{prefix}: {check.check}", check.detail, "see `executor-agent doctor` on that host"))
        if not bad:
            rows.append(ok(f"{prefix}: agent doctor", f"{len(facts.agent_checks)} checks ok or not applicable"))
    return rows


class LiveFacts(BaseModel):
    """What only the running miner knows, as its admin socket serves it (GET /doctor)."""

    hotkey: str
    port: int
    manifest: dict[str, int]
    executors: list[ExecutorFacts] = Field(default_factory=list)
    permitted: list[str] = Field(default_factory=list)
    allowed: list[str] = Field(default_factory=list)
    last_connected: dict[str, float] = Field(default_factory=dict)
    last_page_fetch: float | None = None
    receipts: int = 0
    dynamic_values: dict[str, object] = Field(default_factory=dict)
