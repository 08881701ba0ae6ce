"""ExecutorLink keeps a submit or payload until an event shows the agent took it, and re-sends
it after a reconnect: a V0JobRequest that arrived during a short drop is not lost.
(The same thing end to end, with a real cut: tests/integration/test_fleet_ssh.py.)"""

from __future__ import annotations

from pathlib import Path

import pytest

from horde_protocol import link_frames as L
from horde_protocol.messages import V0ExecutorReadyRequest, V0JobRequest, V0VolumesReadyRequest
from miner_agent.fleet.connection import ExecutorLink, LinkDown, LinkState
from miner_agent.miner_config import LocalExecutor

JOB = "8a3c2a4e-5f0e-4a57-9c55-0d1d5b0f6a11"


class _Writer:
    def __init__(self) -> None:
        self.frames: list[str] = []

    def write(self, data: bytes) -> None:
        self.frames.append(L.decode_down(data).link)

    async def drain(self) -> None:
        pass


class _NoEvents:
    """A FleetEvents listener that ignores everything."""

    async def on_event(self, executor_name: str, event: L.Event) -> None:
        pass

    async def on_job_error(self, executor_name: str, job_uuid: str, details: str) -> None:
        pass


def _link() -> ExecutorLink:
    link = ExecutorLink(LocalExecutor(name="x", socket=Path("/nonexistent")), _NoEvents())
    link.track(JOB)
    return link


def _payload() -> L.Payload:
    request = V0JobRequest(job_uuid=JOB, executor_class="always_on.test", docker_image="img",
                           docker_run_options_preset="none", docker_run_cmd=["true"])
    return L.Payload(job_uuid=JOB, request=request)


def _up(link: ExecutorLink) -> _Writer:
    writer = _Writer()
    link._writer, link.state = writer, LinkState.UP  # type: ignore[assignment]
    return writer


async def test_payload_sent_while_down_is_resent_until_the_agent_moves_past_it() -> None:
    link = _link()
    link._last_seq[JOB] = 1  # ready seen
    link.state = LinkState.DOWN
    with pytest.raises(LinkDown):
        await link.send(_payload())
    writer = _up(link)
    await link._resend(JOB, agent_seq=1)  # the agent is still waiting for it
    assert writer.frames == ["payload"]
    await link._resend(JOB, agent_seq=2)  # the agent's log moved on: it had it
    assert writer.frames == ["payload"]


async def test_an_event_after_the_payload_confirms_it() -> None:
    link = _link()
    writer = _up(link)
    await link._deliver(L.Event(job_uuid=JOB, seq=1, message=V0ExecutorReadyRequest(job_uuid=JOB)))
    await link.send(_payload())
    await link._deliver(L.Event(job_uuid=JOB, seq=2, message=V0VolumesReadyRequest(job_uuid=JOB)))
    await link._resend(JOB, agent_seq=None)
    assert writer.frames == ["payload"]  # only the first send


async def test_submit_is_resent_only_to_an_agent_that_does_not_know_the_job() -> None:
    link = _link()
    link.keep_until_confirmed(L.Submit(job_uuid=JOB, initial=_initial()), 0)
    writer = _up(link)
    await link._resend(JOB, agent_seq=0)  # known (no events yet): an attach is enough
    assert writer.frames == []
    await link._resend(JOB, agent_seq=None)
    assert writer.frames == ["submit"]
    link.untrack(JOB)
    await link._resend(JOB, agent_seq=None)
    assert writer.frames == ["submit"]


def _initial():  # type: ignore[no-untyped-def]
    from bittensor_wallet import Keypair

    from miner_agent.selftest.simulator import ValidatorSim

    key = Keypair.create_from_mnemonic(Keypair.generate_mnemonic())
    return ValidatorSim(key, key.ss58_address, "http://127.0.0.1:1").initial_request("always_on.test", "img",
                                                                                    job_uuid=JOB)
