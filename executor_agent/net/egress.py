"""Where a job's URLs may connect: public addresses only, unless the operator allows more (no SSRF).

Volume, Hugging Face and upload URLs are written by whoever submitted the job. Left alone, a URL such
as `http://127.0.0.1:<metrics port>/metrics`, `http://169.254.169.254/` (cloud metadata) or a LAN
address makes this host fetch it and hand the body to the job's author. So every connection that
such a URL causes is checked against the address it will really use:

* host names: `GuardedResolver` resolves, then drops each refused address. aiohttp connects only to
  what the resolver returned, so nothing can change between the check and the connect (DNS
  rebinding), and since the connector resolves every new connection, each redirect hop is checked.
* IP literals: aiohttp never calls the resolver for them, so a client middleware checks the host of
  every request instead; aiohttp runs middlewares once per hop, redirects included. Legacy numeric
  spellings (`127.1`, `0x7f000001`, `2130706433`) are decoded the way `inet_aton` would.

Refused: loopback, unspecified (`0.0.0.0` reaches loopback on Linux), link-local, private (RFC 1918,
fc00::/7), CGNAT, multicast, reserved and special-purpose ranges, the IPv6 forms that carry such an
IPv4 address (mapped, NAT64, 6to4), and every address of this host's own interfaces (a public IP of
this host reaches the same services as loopback). The operator's allowlist (`[egress] allow` in
executor-agent.toml) opens exceptions; see `EgressPolicy.from_entries` for its entry forms.

A refusal is `EgressRefused`; the downloaders and the uploader turn it into their job-fault errors.
The aiohttp side (the resolver, the middleware, the session) is egress_http.py, so that what only
checks addresses (the config, the registry check) does not load aiohttp.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import re
import socket
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

HOST_ADDRESSES_TTL_S = 10.0  # how long the list of this host's own addresses is reused before re-reading
FIB_TRIE_PATH = Path("/proc/net/fib_trie")  # every IPv4 route, incl. the "host LOCAL" ones of own addresses
IF_INET6_PATH = Path("/proc/net/if_inet6")  # every IPv6 address on this host's interfaces
_FIB_LOCAL_ROUTE = "/32 host LOCAL"
_LABEL = r"[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?"
_HOSTNAME = re.compile(rf"(?=.{{1,253}}$){_LABEL}(\.{_LABEL})*")  # an allowlist host name, lowercased
_INET_ATON_CHARS = re.compile(r"[0-9a-fA-FxX.]+")  # what a legacy numeric IPv4 host can be made of
DEFAULT_PORTS = {"http": 80, "https": 443}

# Special-purpose ranges (IANA registries), most specific reason first. Anything they miss that
# Python does not consider global is still refused, as "not a public address".
_REFUSED_V4: tuple[tuple[ipaddress.IPv4Network, str], ...] = tuple(
    (ipaddress.IPv4Network(net), reason) for net, reason in (
        ("0.0.0.0/8", "an unspecified address (reaches this host)"),
        ("127.0.0.0/8", "a loopback address"),
        ("169.254.0.0/16", "a link-local address (cloud metadata lives here)"),
        ("10.0.0.0/8", "a private address"),
        ("172.16.0.0/12", "a private address"),
        ("192.168.0.0/16", "a private address"),
        ("100.64.0.0/10", "a carrier-grade NAT address"),
        ("192.0.0.0/24", "an IETF protocol address"),
        ("192.0.2.0/24", "a documentation address"),
        ("198.51.100.0/24", "a documentation address"),
        ("203.0.113.0/24", "a documentation address"),
        ("192.88.99.0/24", "a 6to4 relay address"),
        ("198.18.0.0/15", "a benchmarking address"),
        ("224.0.0.0/4", "a multicast address"),
        ("240.0.0.0/4", "a reserved address"),  # includes the broadcast 255.255.255.255
    )
)
_REFUSED_V6: tuple[tuple[ipaddress.IPv6Network, str], ...] = tuple(
    (ipaddress.IPv6Network(net), reason) for net, reason in (
        ("::/128", "an unspecified address (reaches this host)"),
        ("::1/128", "a loopback address"),
        ("fe80::/10", "a link-local address"),
        ("fc00::/7", "a private (unique local) address"),
        ("fec0::/10", "a site-local address"),
        ("ff00::/8", "a multicast address"),
        ("64:ff9b:1::/48", "a local-use NAT64 address"),
        ("100::/64", "a discard address"),
        ("2001::/32", "a Teredo tunnel address"),
        ("2001:db8::/32", "a documentation address"),
        ("::/8", "a reserved address"),  # IPv4-compatible ::a.b.c.d, IPv4-translated, ...
    )
)
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")  # well-known prefix: the last 32 bits are an IPv4 address


class EgressRefused(Exception):
    """A job URL would connect where jobs may not go; str() names the address and why."""

    def __init__(self, address: IPAddress, port: int, reason: str, host: str) -> None:
        self.address = address
        self.port = port
        self.reason = reason
        self.host = host
        where = f"[{address}]:{port}" if address.version == 6 else f"{address}:{port}"
        via = "" if _normal_host(host) == str(address) else f" (URL host {host!r})"
        super().__init__(
            f"refused to connect to {where}: {reason}{via}; job URLs may only reach public addresses "
            "(the executor operator can allow more with [egress] allow)"
        )


def _normal_host(host: str) -> str:
    return host.strip("[]").rstrip(".").lower()


def _plain(address: IPAddress) -> IPAddress:
    """The address without an IPv6 zone (`fe80::1%eth0`), which would defeat network membership tests."""
    return ipaddress.IPv6Address(int(address)) if isinstance(address, ipaddress.IPv6Address) else address


def refusal_reason(address: IPAddress) -> str | None:
    """Why `address` is not public (None if it is); this host's own addresses are checked elsewhere."""
    address = _plain(address)
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:  # ::ffff:a.b.c.d is a.b.c.d on a dual-stack socket
            return refusal_reason(address.ipv4_mapped)
        if address in _NAT64:  # a NAT64 gateway forwards to the IPv4 address in the last 32 bits
            inner = refusal_reason(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
            return None if inner is None else f"{inner} in NAT64 form"
        if address.sixtofour is not None:  # 2002:a.b.c.d::/48 tunnels to a.b.c.d: its verdict is the IPv4's
            # (decided here, not by is_global: Python 3.13 calls all of 2002::/16 non-global, 3.11 does not)
            inner = refusal_reason(address.sixtofour)
            return None if inner is None else f"{inner} in 6to4 form"
        table: Iterable[tuple[IPNetwork, str]] = _REFUSED_V6
    else:
        table = _REFUSED_V4
    for network, reason in table:
        if address in network:
            return reason
    return None if address.is_global else "not a public address"


def literal_address(host: str) -> IPAddress | None:
    """The IP address a URL host spells out, or None for a host name.

    Besides canonical forms this decodes what `inet_aton` accepts (`127.1`, `0x7f000001`,
    `2130706433`, `0177.0.0.1`): some resolvers turn those into addresses without any lookup."""
    host = _normal_host(host)
    try:
        return _plain(ipaddress.ip_address(host))
    except ValueError:
        pass
    if not _INET_ATON_CHARS.fullmatch(host):
        return None
    try:
        return ipaddress.IPv4Address(socket.inet_aton(host))
    except OSError:
        return None


def _read_host_addresses() -> frozenset[IPAddress]:
    found: set[IPAddress] = set()
    try:
        last = ""
        for line in FIB_TRIE_PATH.read_text().splitlines():
            text = line.strip()
            if text.startswith("|--"):
                last = text[3:].strip()
            elif text.startswith(_FIB_LOCAL_ROUTE) and last:
                found.add(ipaddress.IPv4Address(last))
    except (OSError, ValueError) as exc:
        log.warning("event=egress_host_addresses_unreadable path=%s error=%r", FIB_TRIE_PATH, exc)
    try:
        for line in IF_INET6_PATH.read_text().splitlines():
            if line.strip():
                found.add(ipaddress.IPv6Address(int(line.split()[0], 16)))
    except FileNotFoundError:
        pass  # IPv6 disabled on this host
    except (OSError, ValueError) as exc:
        log.warning("event=egress_host_addresses_unreadable path=%s error=%r", IF_INET6_PATH, exc)
    return frozenset(found)


_host_cache: tuple[float, frozenset[IPAddress]] = (float("-inf"), frozenset())


def host_addresses() -> frozenset[IPAddress]:
    """Every address assigned to this host's interfaces (incl. secondary ones), re-read at most
    every HOST_ADDRESSES_TTL_S so an address gained by DHCP is soon refused too."""
    global _host_cache
    read_at, addresses = _host_cache
    now = time.monotonic()
    if now - read_at > HOST_ADDRESSES_TTL_S:
        addresses = _read_host_addresses()
        _host_cache = (now, addresses)
    return addresses


def _parse_port(text: str, entry: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise ValueError(f"allow entry {entry!r}: port {text!r} is not a number from 1 to 65535")
    return int(text)


@dataclass(frozen=True)
class EgressPolicy:
    """The operator's exceptions to "public addresses only". Build it with `from_entries`."""

    networks: tuple[IPNetwork, ...] = ()  # any port
    endpoints: frozenset[tuple[IPAddress, int]] = frozenset()  # one address, one port
    hosts: frozenset[tuple[str, int | None]] = frozenset()  # URL host name, port (None = any)
    own_addresses: Callable[[], frozenset[IPAddress]] = field(default=host_addresses, compare=False, repr=False)

    @classmethod
    def from_entries(cls, entries: Iterable[str]) -> EgressPolicy:
        """Parse `[egress] allow`. Each entry is one of

        * a network or address, any port: `10.0.0.0/8`, `127.0.0.1`, `fd00::/8`, `::1`;
        * an address and one port: `127.0.0.1:5000`, `[::1]:5000`;
        * a URL host name, any port or one port: `files.lan`, `registry.lan:5000` (matched
          against the URL's host name exactly, case-insensitive; whatever it resolves to is allowed).

        Raises ValueError naming the entry for anything else (a network with host bits set,
        `0x7f000001`, a port out of range)."""
        networks: list[IPNetwork] = []
        endpoints: set[tuple[IPAddress, int]] = set()
        hosts: set[tuple[str, int | None]] = set()
        for raw in entries:
            entry = raw.strip()
            if "/" in entry:
                try:
                    networks.append(ipaddress.ip_network(entry))
                except ValueError as exc:
                    raise ValueError(f"allow entry {raw!r}: not a network like 10.0.0.0/8 ({exc})") from None
                continue
            bracketed = re.fullmatch(r"\[([^\]]+)\](?::([^:]*))?", entry)
            if bracketed:
                address_text, port_text = bracketed.group(1), bracketed.group(2)
            elif entry.count(":") == 1:
                address_text, port_text = entry.split(":")
            else:
                address_text, port_text = entry, None
            port = None if port_text is None else _parse_port(port_text, raw)
            try:
                address = _plain(ipaddress.ip_address(address_text))
            except ValueError:
                address = None
            if address is not None:
                if port is None:
                    networks.append(ipaddress.ip_network(address))
                else:
                    endpoints.add((address, port))
                continue
            name = address_text.rstrip(".").lower()
            if bracketed or literal_address(name) is not None or not _HOSTNAME.fullmatch(name):
                raise ValueError(
                    f"allow entry {raw!r}: not an address, network, host name or host:port "
                    "(write IPv4 addresses as a.b.c.d and IPv6 ones in brackets when a port follows)"
                )
            hosts.add((name, port))
        return cls(networks=tuple(networks), endpoints=frozenset(endpoints), hosts=frozenset(hosts))

    def allows_name(self, host: str, port: int) -> bool:
        name = _normal_host(host)
        return (name, port) in self.hosts or (name, None) in self.hosts

    def _allows_address(self, address: IPAddress, port: int) -> bool:
        forms = [address]
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            forms.append(address.ipv4_mapped)
        return any((a, port) in self.endpoints or any(a in net for net in self.networks) for a in forms)

    def check_address(self, address: IPAddress, port: int, host: str) -> None:
        """Raise EgressRefused unless a connection to `address`:`port` (for URL host `host`) may go."""
        address = _plain(address)
        if self._allows_address(address, port):
            return
        reason = refusal_reason(address)
        if reason is None:
            own = self.own_addresses()
            mapped = address.ipv4_mapped if isinstance(address, ipaddress.IPv6Address) else None
            if address in own or (mapped is not None and mapped in own):
                reason = "an address of this host"
        if reason is not None:
            raise EgressRefused(address, port, reason, host)


PUBLIC_ONLY = EgressPolicy()  # no exceptions: the default for every job


__all__ = [
    "PUBLIC_ONLY",
    "EgressPolicy",
    "EgressRefused",
    "host_addresses",
    "literal_address",
    "refusal_reason",
]


REGISTRY_PORT = 443  # podman reaches a registry named without a port over HTTPS
REGISTRY_LOOKUP_TIMEOUT_S = 5.0  # the job author picks the name, so its DNS may be slow on purpose


class RegistryUnresolved(Exception):
    """A job image's registry name could not be checked, so the image is not pulled."""


def registry_of(image: str) -> tuple[str, int] | None:
    """The registry host and port a pull of `image` connects to, or None for a short name
    (`busybox`, `library/x`): those resolve through the operator's registries.conf search list,
    which is the operator's choice, not the job author's. As in the container tools, the first
    path component names a registry when it has a dot or a port, or is `localhost`."""
    first, sep, _ = image.partition("/")
    if not sep or not ("." in first or ":" in first or first == "localhost"):
        return None
    bracketed = re.fullmatch(r"\[([^\]]+)\](?::(\d+))?", first)
    if bracketed:
        return bracketed.group(1), int(bracketed.group(2) or REGISTRY_PORT)
    host, _, port = first.partition(":")
    return host, int(port) if port.isdigit() else REGISTRY_PORT


async def check_registry(policy: EgressPolicy, image: str) -> None:
    """Raise EgressRefused when pulling `image` would connect where a job may not reach: the
    image name is the job author's, and podman pulls as root from this host's network.

    The name is resolved here and each address checked, as for volume URLs. podman resolves it
    again for the pull and follows the registry's own redirects (blob CDNs) without us, so a
    name that changes its answer between the two lookups is not caught: operators who need that
    closed pull only preloaded images (`image_policy = "local_only"`)."""
    target = registry_of(image)
    if target is None:
        return
    host, port = target
    if policy.allows_name(host, port):
        return
    address = literal_address(host)
    if address is not None:
        policy.check_address(address, port, host)
        return
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(REGISTRY_LOOKUP_TIMEOUT_S):
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, TimeoutError) as exc:
        # Not checked is not allowed: a name that fails (or stalls) here and answers podman a
        # moment later with a private address would pull past the check.
        raise RegistryUnresolved(f"registry {host}:{port} did not resolve within {REGISTRY_LOOKUP_TIMEOUT_S:g} s: "
                                 f"{exc or type(exc).__name__}") from None
    refused: list[EgressRefused] = []
    for info in infos:
        try:
            policy.check_address(ipaddress.ip_address(info[4][0]), port, host)
        except EgressRefused as exc:
            refused.append(exc)
    if refused:  # any refused answer: podman may pick that one
        raise refused[0]
