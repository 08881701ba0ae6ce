"""Offers that arrive together (issue 14): answered only once their receipt is on the page, the
same answers as one after the other, and a job's second offer judged after its first.

A real miner on loopback with no executor, so every offer is a busy decline: the path whose
excuses and page writes a burst shares."""

from __future__ import annotations

import asyncio
import time

from horde_protocol.messages import GenericError, V0AcceptJobRequest, V0DeclineJobRequest, V0ExecutorManifestRequest
from tests.fixtures.miner import sim_for

OFFERS = 12  # under the per-address cap on sockets that are not yet authenticated (32)


def _page_text(agent) -> str:
    path = agent.ctx.receipts.pages_dir / f"{int(time.time() // 300)}.jsonl"
    return path.read_text() if path.exists() else ""


async def test_a_burst_is_answered_after_each_receipt_is_on_the_page(miner_config, start_miner, validator_key) -> None:
    agent = await start_miner(miner_config)
    sim = sim_for(agent, validator_key)
    sessions = [await sim.connect() for _ in range(OFFERS)]
    try:
        for s in sessions:
            await s.recv_until(V0ExecutorManifestRequest)
        offers = [sim.initial_request("always_on.test", "localhost/none:latest") for _ in sessions]

        async def one(session, initial) -> tuple[str, bool, list[str]]:
            await session.send(initial)
            reply = await session.recv_until(V0AcceptJobRequest, V0DeclineJobRequest, GenericError, timeout_s=7)
            on_page = str(initial.job_uuid) in _page_text(agent)  # read as soon as the answer is in
            return reply.message.reason, on_page, [str(r.payload.job_uuid) for r in reply.message.receipts]

        results = await asyncio.gather(*(one(s, o) for s, o in zip(sessions, offers, strict=True)))
    finally:
        for s in sessions:
            await s.close()
    uuids = {str(o.job_uuid) for o in offers}
    assert all(reason == "busy" and on_page for reason, on_page, _ in results)
    for (_, _, excuses), offer in zip(results, offers, strict=True):
        assert set(excuses) <= uuids - {str(offer.job_uuid)} and len(set(excuses)) == len(excuses)
    lines = _page_text(agent).splitlines()
    assert len(lines) == OFFERS == len(set(lines))


async def test_the_same_offer_twice_at_once_gets_the_answers_it_would_one_after_the_other(
        miner_config, start_miner, validator_key) -> None:
    agent = await start_miner(miner_config)
    sim = sim_for(agent, validator_key)
    initial = sim.initial_request("always_on.test", "localhost/none:latest")
    sessions = [await sim.connect() for _ in range(2)]
    try:
        for s in sessions:
            await s.recv_until(V0ExecutorManifestRequest)
        await asyncio.gather(*(s.send(initial) for s in sessions))
        replies = [await s.recv_until(V0AcceptJobRequest, V0DeclineJobRequest, GenericError, timeout_s=7)
                   for s in sessions]
    finally:
        for s in sessions:
            await s.close()
    # A declined job is not kept, so the second is declined busy too, with no excuse of its own job.
    assert [r.type for r in replies] == ["V0DeclineJobRequest"] * 2
    assert all(r.message.reason == "busy" and r.message.receipts == [] for r in replies)
    assert _page_text(agent).count(str(initial.job_uuid)) == 1
