"""The running miner's side of doctor: its facts, with every executor agent's own report.

Served on the admin socket (GET /doctor, miner_agent/server/admin.py). The executor reports are
asked for at once, each bounded by DOCTOR_TIMEOUT_S, so one hung agent costs the answer no more
than that.
"""

from __future__ import annotations

import asyncio
import time

from miner_agent.doctor.executor_checks import AgentCheck, ExecutorFacts, LiveFacts
from miner_agent.fleet.connection import AgentTooOld, ExecutorLink, LinkDown, LinkState
from miner_agent.server.context import MinerContext


async def _executor_facts(ctx: MinerContext, link: ExecutorLink, now: float) -> ExecutorFacts:
    fleet = ctx.fleet
    entry = link.entry
    facts = ExecutorFacts(
        name=entry.name, executor_class=str(entry.executor_class.value), link=link.state.value,
        last_error=link.last_error, down_for_s=round(fleet.down_for(entry.name, now), 1),
        slots=fleet.slots(entry.name), running_jobs=len(fleet.jobs[entry.name]), drained=entry.name in fleet.drained,
        agent_version=link.hello.agent_version if link.hello else None,
    )
    if link.state is not LinkState.UP:
        return facts
    try:
        report = await link.doctor(str(entry.executor_class.value))
    except AgentTooOld as exc:
        facts.agent_too_old, facts.doctor_error = True, str(exc)
    except LinkDown as exc:
        facts.doctor_error = str(exc)
    except TimeoutError:
        facts.doctor_error = "the agent did not answer in time"
    else:
        facts.agent_checks = [AgentCheck(check=r.check, status=r.status, detail=r.detail) for r in report.rows]
    return facts


async def live_facts(ctx: MinerContext) -> LiveFacts:
    now = time.monotonic()
    executors = await asyncio.gather(*(_executor_facts(ctx, link, now) for link in ctx.fleet.links.values()))
    activity = getattr(ctx, "activity", None)
    return LiveFacts(
        hotkey=ctx.signer.hotkey,
        port=ctx.public_port,
        manifest=ctx.fleet.manifest(now),
        executors=list(executors),
        permitted=sorted(ctx.validators.permitted),
        allowed=sorted(ctx.validators.allow),
        last_connected=activity.last_connected() if activity is not None else {},
        last_page_fetch=activity.last_page_fetch() if activity is not None else None,
        receipts=ctx.receipts.count(),
        dynamic_values=dict(ctx.chain.dynamic_config.values),
    )
