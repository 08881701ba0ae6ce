"""Job image names are the job author's too: which registry a pull would reach, and whether the
egress rules let it (executor_agent/net/egress.py). No packet leaves: names are literal addresses
or `localhost` (resolved from /etc/hosts), and short names never resolve here."""

from __future__ import annotations

import pytest

from executor_agent.net.egress import PUBLIC_ONLY, EgressPolicy, EgressRefused, check_registry, registry_of


@pytest.mark.parametrize(("image", "target"), [
    ("busybox", None),
    ("library/busybox:1", None),
    ("docker.io/library/busybox:1", ("docker.io", 443)),
    ("localhost/none:latest", ("localhost", 443)),
    ("localhost:5000/x", ("localhost", 5000)),
    ("127.0.0.1:9108/metrics:latest", ("127.0.0.1", 9108)),
    ("[::1]:5000/x@sha256:" + "0" * 64, ("::1", 5000)),
    ("169.254.169.254/latest", ("169.254.169.254", 443)),
])
def test_the_registry_a_pull_reaches(image: str, target: tuple[str, int] | None) -> None:
    assert registry_of(image) == target


@pytest.mark.parametrize("image", ["127.0.0.1:9108/metrics:latest", "[::1]:5000/x:1", "localhost:5000/x:1",
                                   "10.0.0.7/x:1", "169.254.169.254/x:1"])
async def test_a_registry_jobs_may_not_reach_is_refused(image: str) -> None:
    with pytest.raises(EgressRefused, match="refused to connect"):
        await check_registry(PUBLIC_ONLY, image)


async def test_short_names_and_operator_allowed_registries_pass() -> None:
    await check_registry(PUBLIC_ONLY, "busybox:latest")  # registries.conf decides: the operator's list
    allowed = EgressPolicy.from_entries(["127.0.0.1:5000", "localhost:5001"])
    await check_registry(allowed, "127.0.0.1:5000/x:1")
    await check_registry(allowed, "localhost:5001/x:1")
    with pytest.raises(EgressRefused):
        await check_registry(allowed, "127.0.0.1:5002/x:1")


async def test_a_registry_name_that_does_not_resolve_is_not_pulled_unchecked(monkeypatch) -> None:
    """Failing the first lookup must not skip the check (the name could answer podman's lookup a
    moment later with a private address). The lookup is stubbed: no DNS query leaves the machine."""
    import asyncio
    import socket

    from executor_agent.net.egress import RegistryUnresolved

    async def no_such_name(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(asyncio.get_running_loop(), "getaddrinfo", no_such_name)
    with pytest.raises(RegistryUnresolved, match="did not resolve"):
        await check_registry(PUBLIC_ONLY, "registry.example/x:1")
