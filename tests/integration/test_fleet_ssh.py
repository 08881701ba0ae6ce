"""The miner's SSH fleet with real parts: two executor hosts in network namespaces, each a
real sshd (its own host key) in front of a real executor agent on real podman. The miner
runs in-process on the test's thread, switched into the ctl namespace (`in_ctl`), so its
asyncssh client reaches 10.231.0.2/.3 from inside the lab and never from the root one.

Hosts are cut off by taking their veth down in the switch namespace: no FIN, no RST,
the packets just stop, as when a cable or a switch port dies.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from horde_protocol.messages import V0ExecutorReadyRequest, V0HordeFailedRequest
from miner_agent.fleet import connection as link_module
from miner_agent.fleet import pool as pool_module
from miner_agent.fleet.connection import LinkState
from tests.fixtures.miner import sim_for
from tests.integration.fleet_helpers import (
    CLASS,
    LINK_UP_TIMEOUT_S,
    OTHER_CLASS,
    PROGRESS,
    assert_once_in_order,
    begin,
    budget_s,
    container_running,
    finish,
    job,
    link_state,
    manifest,
    offer,
    ssh_entries,
    sshd_accepted,
    types,
)

pytestmark = pytest.mark.podman

KEEPALIVE_S, KEEPALIVE_COUNT = 1.0, 3  # the miner notices a silent host after about 3 s
CUT_S = 7.0  # longer than the keepalive detection and than the rest of the job (sleep 4)
LOST_AFTER_S = 5.0  # [miner] executor_lost_after_s for the host that never comes back
TICK_SLACK_S = 4.0  # keepalive timing jitter, the 1 s job ticker, a loaded 2-core CI machine


@pytest.fixture
def fast_keepalive(monkeypatch: pytest.MonkeyPatch) -> None:
    """SSH keepalive 1 s x 3 instead of 5 s x 3, so a cut is noticed in seconds."""
    monkeypatch.setattr(link_module, "SSH_KEEPALIVE_INTERVAL_S", KEEPALIVE_S)
    monkeypatch.setattr(link_module, "SSH_KEEPALIVE_COUNT_MAX", KEEPALIVE_COUNT)


@pytest.fixture
def lab_miner(in_ctl, executor_hosts, ssh_client_key, miner_config, start_miner):  # type: ignore[no-untyped-def]
    """Start an in-process miner in ctl with ssh executors (both hosts by default)."""

    async def start(entries=None, up=("ex1", "ex2"), **miner_changes):  # type: ignore[no-untyped-def]
        config = miner_config.model_copy(update={
            "executors": entries if entries is not None else ssh_entries(executor_hosts, ssh_client_key),
            "miner": miner_config.miner.model_copy(update=miner_changes),
        })
        agent = await start_miner(config)
        for name in up:
            link = agent.ctx.fleet.links[name]
            assert await link.wait_up(LINK_UP_TIMEOUT_S), f"executor {name}: {link.last_error}"
        return agent

    return start


@pytest.mark.parametrize("agent_slots", [2])
async def test_two_concurrent_jobs_go_to_different_hosts_over_ssh(lab_miner, executor_hosts, busybox_image,
                                                                   validator_key) -> None:
    """Fair choice: with room on both hosts, two jobs at once are spread over both."""
    agent = await lab_miner()
    sim = sim_for(agent, validator_key)
    first, second = job(sim, busybox_image), job(sim, busybox_image)
    results = await asyncio.gather(sim.run_job(*first), sim.run_job(*second))
    for received in results:
        assert_once_in_order([r.type for r in received])
        assert received[-1].message.docker_process_stdout == "ok\n"
    ran_on = {name: sorted(p.name for p in host.jobs_dir.iterdir()) for name, host in executor_hosts.items()}
    assert sorted(sum(ran_on.values(), [])) == sorted([str(first[0].job_uuid), str(second[0].job_uuid)])
    assert all(len(jobs) == 1 for jobs in ran_on.values()), ran_on
    for host in executor_hosts.values():  # each went through that host's sshd, from ctl
        assert sshd_accepted(host) == 1, host.sshd_log.read_text()[-2000:]


async def test_wrong_pinned_host_key_keeps_the_link_down_and_names_the_host(
        lab_miner, executor_hosts, ssh_client_key, busybox_image, validator_key, caplog) -> None:
    """A changed host key is a clear error naming the host and the fix; nothing is trusted."""
    ex1, ex2 = executor_hosts["ex1"], executor_hosts["ex2"]
    entries = [ex1.entry(ssh_client_key, CLASS, host_key=ex2.host_key), ex2.entry(ssh_client_key, OTHER_CLASS)]
    agent = await lab_miner(entries, up=("ex2",))
    link = agent.ctx.fleet.links["ex1"]
    deadline = time.monotonic() + LINK_UP_TIMEOUT_S
    while not link.last_error and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    await asyncio.sleep(1.0)  # a few reconnect attempts: still refused
    assert link.state is not LinkState.UP
    assert "10.231.0.2" in link.last_error and "ex1" in link.last_error, link.last_error
    assert "update host_key in the config" in link.last_error, link.last_error
    assert any("10.231.0.2" in r.getMessage() and r.levelname == "WARNING" for r in caplog.records)
    assert sshd_accepted(ex1) == 0  # we never logged in to the impostor
    sim = sim_for(agent, validator_key)
    assert await manifest(sim) == {OTHER_CLASS: 1}  # 0 for the class whose only host is untrusted
    initial, _ = job(sim, busybox_image)
    session, reply = await offer(sim, initial)
    await session.close()
    assert (reply, session.received[-1].message.reason) == ("V0DeclineJobRequest", "busy")
    assert not ex1.jobs_dir.exists() or not any(ex1.jobs_dir.iterdir())


async def test_link_cut_mid_job_and_restored_delivers_every_message_once(
        lab_miner, netns_lab, executor_hosts, fast_keepalive, busybox_image, validator_key, caplog) -> None:
    """The host vanishes while its container runs and comes back: the link re-attaches since
    the last seq it saw and the validator gets each message exactly once, in order."""
    agent = await lab_miner()
    sim = sim_for(agent, validator_key)
    initial, request = job(sim, busybox_image)
    uuid = str(initial.job_uuid)
    session = await begin(sim, initial, request)
    async with session:
        name = agent.ctx.service.jobs[uuid].executor_name
        await container_running(executor_hosts[name], uuid)
        cut_at = time.monotonic()
        netns_lab.cut(name)
        try:
            await link_state(agent, name, LinkState.DOWN, KEEPALIVE_S * KEEPALIVE_COUNT + TICK_SLACK_S)
            assert await manifest(sim) == {CLASS: 2}  # a short drop does not shrink the manifest
            await asyncio.sleep(max(0.0, cut_at + CUT_S - time.monotonic()))
        finally:
            netns_lab.restore(name)
            restored_at = time.time()
        finished = await finish(session)
    assert finished.message_type == "V0JobFinishedRequest", finished
    assert finished.docker_process_stdout == "ok\n"
    assert_once_in_order(types(session))
    assert agent.ctx.fleet.links[name].state is LinkState.UP
    # The job ended while the host was cut off (its last event was logged before the restore),
    # and the link really went down and came back: the end came by replay after the re-attach.
    assert (executor_hosts[name].jobs_dir / uuid / "events.jsonl").stat().st_mtime < restored_at
    assert any(f"executor link down executor={name}" in r.getMessage() for r in caplog.records)
    assert sshd_accepted(executor_hosts[name]) == 2  # a second SSH login after the cut


async def test_host_that_never_comes_back_fails_its_job_and_the_rest_keeps_serving(
        lab_miner, netns_lab, executor_hosts, fast_keepalive, busybox_image, validator_key,
        monkeypatch) -> None:
    """A host gone for good: an honest horde failure within the budget, capacity drops, and
    the other host still takes and finishes jobs."""
    monkeypatch.setattr(pool_module, "MANIFEST_HOLD_S", LOST_AFTER_S)
    agent = await lab_miner(executor_lost_after_s=LOST_AFTER_S)
    sim = sim_for(agent, validator_key)
    initial, request = job(sim, busybox_image)
    uuid = str(initial.job_uuid)
    async with await begin(sim, initial, request) as session:
        name = agent.ctx.service.jobs[uuid].executor_name
        other = "ex2" if name == "ex1" else "ex1"
        await container_running(executor_hosts[name], uuid)
        cut_at = time.monotonic()
        netns_lab.cut(name)
        failed = await finish(session, timeout_s=budget_s())
        took = time.monotonic() - cut_at
    assert failed.message_type == "V0HordeFailedRequest", failed
    assert (failed.reason, failed.reported_by) == ("executor_disconnected", "miner")
    assert name in failed.message
    # noticed by keepalive (~3 s), then executor_lost_after_s, then the next tick
    assert took < KEEPALIVE_S * KEEPALIVE_COUNT + LOST_AFTER_S + TICK_SLACK_S, took
    assert_once_in_order(types(session), last="V0HordeFailedRequest", progress=PROGRESS[:3])
    assert await manifest(sim) == {CLASS: 1}  # capacity dropped once the hold ran out
    # The other host takes the next job; with its only slot taken, a third is declined busy.
    initial2, request2 = job(sim, busybox_image)
    async with await begin(sim, initial2, request2) as session2:
        assert agent.ctx.service.jobs[str(initial2.job_uuid)].executor_name == other
        initial3, _ = job(sim, busybox_image)
        session3, reply = await offer(sim, initial3)
        await session3.close()
        assert reply == "V0DeclineJobRequest"
        finished = await finish(session2)
    assert finished.message_type == "V0JobFinishedRequest" and finished.docker_process_stdout == "ok\n"



async def test_job_request_arriving_while_the_host_is_cut_off_reaches_it_after_the_reconnect(
        lab_miner, netns_lab, executor_hosts, ssh_client_key, fast_keepalive, busybox_image, validator_key) -> None:
    """The validator's V0JobRequest comes while the executor's link is down (a short drop):
    it is kept and sent after the reconnect, so the job still runs and finishes."""
    agent = await lab_miner([executor_hosts["ex1"].entry(ssh_client_key, CLASS)], up=("ex1",))
    sim = sim_for(agent, validator_key)
    initial, request = job(sim, busybox_image, ["echo", "ok"])
    session, reply = await offer(sim, initial)
    async with session:
        assert reply == "V0AcceptJobRequest"
        await session.send(sim.accepted_receipt(str(initial.job_uuid)))
        ready = await session.recv_until(V0ExecutorReadyRequest, V0HordeFailedRequest, timeout_s=15)
        assert ready.type == "V0ExecutorReadyRequest", ready.message
        netns_lab.cut("ex1")
        try:
            await link_state(agent, "ex1", LinkState.DOWN, KEEPALIVE_S * KEEPALIVE_COUNT + TICK_SLACK_S)
            await session.send(request)
            await asyncio.sleep(0.5)
        finally:
            netns_lab.restore("ex1")
        finished = await finish(session)
    assert finished.message_type == "V0JobFinishedRequest", finished
    assert finished.docker_process_stdout == "ok\n"
    assert_once_in_order(types(session))
