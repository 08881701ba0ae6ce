"""Finding the public IPv4 to announce when `[chain] announce_ip = "auto"`.

Validators dial the axon's IPv4 straight from the chain, so the address must be the one the
internet sees, not an interface address behind NAT. Like the stock miner (which let the bittensor
SDK do it), we ask plain-text "what is my IP" services, first answer wins.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Sequence

import aiohttp

log = logging.getLogger(__name__)

DISCOVERY_TIMEOUT_S = 10.0  # per service
MAX_ANSWER_BYTES = 256  # an IPv4 in text is at most 15 bytes plus whitespace


class IpDiscoveryError(Exception):
    """No service gave a usable public IPv4; the message says what to set instead."""


def parse_ipv4_answer(body: bytes) -> str | None:
    """The IPv4 in a service's answer, or None when it is not a usable one."""
    try:
        address = ipaddress.IPv4Address(body.decode("ascii").strip())
    except (UnicodeDecodeError, ValueError):
        return None
    if address.is_unspecified or address.is_loopback or address.is_multicast:
        return None
    return str(address)


async def discover_public_ipv4(
    session: aiohttp.ClientSession, urls: Sequence[str], timeout_s: float = DISCOVERY_TIMEOUT_S
) -> str:
    failures: list[str] = []
    for url in urls:
        try:
            async with session.get(url, timeout=aiohttp.ClientTimeout(total=timeout_s)) as resp:
                body = await resp.content.read(MAX_ANSWER_BYTES)
                status = resp.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            failures.append(f"{url}: {type(exc).__name__}")
            continue
        ip = parse_ipv4_answer(body) if status == 200 else None
        if ip is None:
            failures.append(f"{url}: HTTP {status}, no IPv4 in the answer")
            continue
        if ipaddress.IPv4Address(ip).is_private:
            log.warning("public ip discovery returned a private address ip=%s url=%s", ip, url)
        return ip
    raise IpDiscoveryError(
        "could not detect the public IPv4 (" + "; ".join(failures or ["no ip_discovery_urls"]) + "); "
        "set [chain] announce_ip to the address validators should dial"
    )
