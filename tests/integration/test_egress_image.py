"""A job image on a registry jobs may not reach is refused before podman pulls it, as the job's own
failure; the same image with the registry allowed is pulled (and fails only because nothing
listens there), and a local image still runs under the default public-only rules. No packet
leaves loopback: the refused names are literal loopback addresses."""

from __future__ import annotations

import pytest

from executor_agent.daemon.job_container import PULL_FAILED_MESSAGE, REGISTRY_REFUSED_MESSAGE
from executor_agent.executor_config import EgressSettings, ImagePolicy
from tests.fixtures.podman import agent_with
from tests.integration.test_executor_agent import run_job, types

pytestmark = pytest.mark.podman

NOTHING_LISTENS = "127.0.0.1:9/none/job:1"  # the discard port: closed on this host
PULL = ImagePolicy.LOCAL_OR_PULL  # the tests' agents never pull unless told to


async def test_a_loopback_registry_is_refused_as_the_jobs_failure(agent_config, podman_socket) -> None:
    async with agent_with(agent_config, egress=EgressSettings(), image_policy=PULL) as (_, client):  # public only
        _, events = await run_job(client, NOTHING_LISTENS, ["true"])
    assert types(events) == ["V0JobFailedRequest"], events
    failed = events[-1].message
    assert failed.stage == "executor_startup"
    assert failed.message.startswith(REGISTRY_REFUSED_MESSAGE) and "127.0.0.1:9" in failed.message, failed.message


async def test_an_allowed_registry_is_pulled_from(agent_config, podman_socket) -> None:
    allowed = EgressSettings(allow=["127.0.0.1:9"])
    async with agent_with(agent_config, egress=allowed, image_policy=PULL) as (_, client):
        _, events = await run_job(client, NOTHING_LISTENS, ["true"])
    assert types(events) == ["V0HordeFailedRequest"], events  # podman tried, nothing answered
    assert events[-1].message.message == PULL_FAILED_MESSAGE


async def test_a_local_image_needs_no_pull_and_no_check(agent_config, busybox_image) -> None:
    async with agent_with(agent_config, egress=EgressSettings(), image_policy=PULL) as (_, client):
        _, events = await run_job(client, busybox_image, ["echo", "local"])
    assert types(events)[-1] == "V0JobFinishedRequest", events[-1].message
