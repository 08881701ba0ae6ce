"""The egress guard (egress.py) as aiohttp applies it: every connection a job's URL causes, redirect
hops included, goes only where `EgressPolicy` allows; see egress.py for what is refused and why."""

from __future__ import annotations

import ipaddress
import logging
import socket
from typing import Any

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult

from executor_agent.net.egress import DEFAULT_PORTS, EgressPolicy, EgressRefused, literal_address

log = logging.getLogger("executor_agent.net.egress")  # the egress log lines, wherever they are made


class GuardedResolver(AbstractResolver):
    """Resolves with getaddrinfo (honours /etc/hosts and nsswitch like the rest of the system) and
    returns only the addresses the policy lets a job reach; none left is an EgressRefused."""

    def __init__(self, policy: EgressPolicy, inner: AbstractResolver | None = None) -> None:
        self._policy = policy
        self._inner = inner if inner is not None else aiohttp.ThreadedResolver()

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        if self._policy.allows_name(host, port):
            return results
        kept: list[ResolveResult] = []
        refused: list[EgressRefused] = []
        for result in results:
            try:
                self._policy.check_address(ipaddress.ip_address(result["host"]), port, host)
            except EgressRefused as exc:
                refused.append(exc)
            else:
                kept.append(result)
        if refused and not kept:
            raise refused[0]
        if refused:
            log.warning("event=egress_addresses_dropped host=%s port=%d dropped=%s", host, port,
                        ",".join(str(exc.address) for exc in refused))
        return kept

    async def close(self) -> None:
        await self._inner.close()


def _literal_host_guard(policy: EgressPolicy) -> aiohttp.ClientMiddlewareType:
    """A client middleware: aiohttp calls it for each request and each redirect hop."""

    async def guard(request: aiohttp.ClientRequest, handler: aiohttp.ClientHandlerType) -> aiohttp.ClientResponse:
        url = request.url
        host = url.raw_host or ""
        address = literal_address(host)
        if address is not None:
            policy.check_address(address, url.port or DEFAULT_PORTS.get(url.scheme, 0), host)
        return await handler(request)

    return guard


def guarded_session(policy: EgressPolicy, **session_kwargs: Any) -> aiohttp.ClientSession:
    """A ClientSession whose every connection, redirects included, passes `policy`.

    Proxies from the environment are off (`trust_env=False`): a proxy would resolve and connect
    on our behalf, out of the guard's sight."""
    connector = aiohttp.TCPConnector(resolver=GuardedResolver(policy))
    return aiohttp.ClientSession(
        connector=connector, middlewares=(_literal_host_guard(policy),), trust_env=False, **session_kwargs
    )
