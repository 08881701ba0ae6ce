"""What a stranger can make the validator port hold before proving who it is.

Anyone on the internet can open the axon port. Until a connection has authenticated as a
validator (a websocket whose `ValidatorAuthForMiner` checked out) it is a stranger's, and every
stranger's connection is bounded here, at the transport, before aiohttp parses a byte of it:

* time: a connection must deliver a complete HTTP request header within `HEADER_TIMEOUT_S`
  (slowloris, idle TCP); a websocket then has `AUTH_TIMEOUT_S` to authenticate (the handler's
  own timer, not frame arrival, enforces that);
* sockets (an "address" is an IPv4 address or an IPv6 /64): new connections per source address come from a token bucket (a burst of
  `UNAUTH_PER_ADDRESS`, then `NEW_CONNS_PER_ADDRESS_PER_S`), at most `UNAUTH_PER_ADDRESS`
  unauthenticated connections per source address and
  `UNAUTH_TOTAL` in all; at the total a stranger is dropped to make room (the oldest of those
  that never finished a request header, else the oldest), so a flood of idle sockets cannot lock
  out a validator that connects and authenticates at once, even when the flood's backlog is
  accepted after the validator's socket;
* bytes: at most `PRE_AUTH_BYTES_PER_CONN` received per connection before auth, and
  `PRE_AUTH_BYTES_TOTAL` across all of them (over it, the biggest sender goes first), so
  pre-auth frames cannot fill memory.

Plain HTTP (receipt pages, /version) never authenticates: those connections stay strangers for
life and are bounded the same way, plus aiohttp's keep-alive timeout (`KEEPALIVE_TIMEOUT_S`).

`ConnectionGuard` is pure bookkeeping (keys, sizes, a clock) and says which connections to
close; `GuardedProtocol` and `GuardedTCPSite` are the I/O edge that feeds it and closes them.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from agent_common.logs import LineBudget

log = logging.getLogger(__name__)

HEADER_TIMEOUT_S = 10.0  # connect -> complete first request header (stock validators send at once)
AUTH_TIMEOUT_S = 60.0  # websocket upgrade -> ValidatorAuthForMiner checked (the stock wait)
KEEPALIVE_TIMEOUT_S = 15.0  # idle HTTP keep-alive connection (receipt-page fetchers) is closed after this
UNAUTH_PER_ADDRESS = 32  # a validator opens a few at a time (manifest polls, a job, receipt pages)
UNAUTH_TOTAL = 512  # strangers' sockets in all; far below LimitNOFILE (65536) in the unit
# New connections per source address: a burst of UNAUTH_PER_ADDRESS, then this many per second.
# Without it a stranger that reconnects as fast as it is dropped pushed 170-320 MiB/s through the
# pre-auth path (bench/validator_port.py); validators open a few connections a minute.
NEW_CONNS_PER_ADDRESS_PER_S = 10.0
PRE_AUTH_MAX_FRAME_BYTES = 8 * 1024 * 1024  # one frame before auth: an offer with a ~6 MiB inline zip (base64)
PRE_AUTH_QUEUE_BYTES = 8 * 1024 * 1024  # frames queued until the handshake, in all
PRE_AUTH_BYTES_PER_CONN = PRE_AUTH_QUEUE_BYTES + 1024 * 1024  # the queue, the upgrade request and the auth frame
PRE_AUTH_BYTES_TOTAL = 64 * 1024 * 1024  # all strangers together may make us buffer this much
SWEEP_INTERVAL_S = 1.0  # how often header deadlines are checked
TOKEN_PRUNE_INTERVAL_S = 1.0  # the token map is pruned at most this often
IPV6_SOURCE_PREFIX = 64  # one IPv6 host usually holds a whole /64: count strangers per /64


def source_of(peer: object) -> str:
    """The "address" the per-address bounds count: the IPv4 address (also when it arrives
    IPv4-mapped on a dual-stack socket), or the IPv6 /64 it comes from."""
    if not (isinstance(peer, tuple) and peer):
        return "unknown"
    try:
        address = ipaddress.ip_address(str(peer[0]).split("%", 1)[0])
    except ValueError:
        return str(peer[0])
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.ip_network(f"{address}/{IPV6_SOURCE_PREFIX}", strict=False))
    return str(address)


@dataclass
class _Stranger:
    address: str
    opened: float
    received: int = 0
    header_seen: bool = False


@dataclass
class GuardStats:
    """Counters for /metrics and the logs."""

    refused_per_address: int = 0
    evicted_total_cap: int = 0
    closed_header_timeout: int = 0
    closed_byte_budget: int = 0


@dataclass
class ConnectionGuard:
    """Bookkeeping of unauthenticated connections; each method returns the keys to close now."""

    per_address: int = UNAUTH_PER_ADDRESS
    total: int = UNAUTH_TOTAL
    bytes_per_conn: int = PRE_AUTH_BYTES_PER_CONN
    bytes_total: int = PRE_AUTH_BYTES_TOTAL
    header_timeout_s: float = HEADER_TIMEOUT_S
    clock: Callable[[], float] = time.monotonic
    new_per_address_per_s: float = NEW_CONNS_PER_ADDRESS_PER_S
    stats: GuardStats = field(default_factory=GuardStats)
    _tokens: dict[str, tuple[float, float]] = field(default_factory=dict)  # address -> (tokens, at)
    _pruned_at: float = -float("inf")
    _strangers: OrderedDict[Hashable, _Stranger] = field(default_factory=OrderedDict)  # oldest first
    _per_address: dict[str, int] = field(default_factory=dict)
    _bytes: int = 0

    @property
    def unauthenticated(self) -> int:
        return len(self._strangers)

    @property
    def pre_auth_bytes(self) -> int:
        return self._bytes

    def opened(self, key: Hashable, address: str) -> list[Hashable]:
        """A new connection. Returns `[key]` to refuse it (its address is at its cap), or the
        oldest strangers to drop so it fits under the total."""
        if self._per_address.get(address, 0) >= self.per_address or not self._take_token(address):
            self.stats.refused_per_address += 1
            return [key]
        close: list[Hashable] = []
        while len(self._strangers) >= self.total:
            victim = next((k for k, v in self._strangers.items() if not v.header_seen), None)
            if victim is None:
                victim = next(iter(self._strangers))
            self._forget(victim)
            self.stats.evicted_total_cap += 1
            close.append(victim)
        self._strangers[key] = _Stranger(address, self.clock())
        self._per_address[address] = self._per_address.get(address, 0) + 1
        return close

    def _take_token(self, address: str) -> bool:
        """Token bucket per address: UNAUTH_PER_ADDRESS at once, refilled at new_per_address_per_s."""
        now = self.clock()
        tokens, at = self._tokens.get(address, (float(self.per_address), now))
        tokens = min(float(self.per_address), tokens + (now - at) * self.new_per_address_per_s)
        if tokens < 1.0:
            self._tokens[address] = (tokens, now)
            return False
        self._tokens[address] = (tokens - 1.0, now)
        if len(self._tokens) > 4 * self.total and now - self._pruned_at >= TOKEN_PRUNE_INTERVAL_S:
            # Forget full buckets (they equal a new one), at most once a second: many addresses
            # must not turn every new connection into a walk over the whole map.
            self._pruned_at = now
            self._tokens = {a: v for a, v in self._tokens.items() if v[0] + (now - v[1]) * self.new_per_address_per_s
                            < self.per_address}
        return True

    def received(self, key: Hashable, nbytes: int) -> list[Hashable]:
        """Bytes arrived on a connection; over a budget, who must go."""
        stranger = self._strangers.get(key)
        if stranger is None:
            return []  # authenticated: the frame-size limit of the session applies
        stranger.received += nbytes
        self._bytes += nbytes
        if stranger.received > self.bytes_per_conn:
            self._forget(key)
            self.stats.closed_byte_budget += 1
            return [key]
        close: list[Hashable] = []
        while self._bytes > self.bytes_total and self._strangers:
            biggest = max(self._strangers, key=lambda k: self._strangers[k].received)
            self._forget(biggest)
            self.stats.closed_byte_budget += 1
            close.append(biggest)
        return close

    def header_complete(self, key: Hashable) -> None:
        stranger = self._strangers.get(key)
        if stranger is not None:
            stranger.header_seen = True

    def authenticated(self, key: Hashable) -> None:
        """A validator proved itself on this connection: it is no longer counted or timed here."""
        self._forget(key)

    def closed(self, key: Hashable) -> None:
        self._forget(key)

    def expired(self) -> list[Hashable]:
        """Connections that have not completed a request header in time."""
        cutoff = self.clock() - self.header_timeout_s
        late = [k for k, s in self._strangers.items() if not s.header_seen and s.opened <= cutoff]
        for key in late:
            self._forget(key)
            self.stats.closed_header_timeout += 1
        return late

    def _forget(self, key: Hashable) -> None:
        stranger = self._strangers.pop(key, None)
        if stranger is None:
            return
        self._bytes -= stranger.received
        left = self._per_address.get(stranger.address, 0) - 1
        if left > 0:
            self._per_address[stranger.address] = left
        else:
            self._per_address.pop(stranger.address, None)


# ---------------------------------------------------------------- the I/O edge


class GuardedProtocol(asyncio.Protocol):
    """Sits between the event loop and aiohttp's RequestHandler for one connection: tells the
    guard what happens and closes the transport when the guard says so."""

    def __init__(self, inner: Any, edge: GuardEdge) -> None:
        self.inner = inner
        self.edge = edge
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        address = source_of(transport.get_extra_info("peername"))
        self.inner.connection_made(transport)
        self.edge.close_all(self.edge.guard.opened(transport, address), reason="connection cap")

    def data_received(self, data: bytes) -> None:
        close = self.edge.guard.received(self.transport, len(data))
        if self.transport in close:
            self.edge.close_all(close, reason="pre-auth byte budget")
            return
        self.inner.data_received(data)
        if close:
            self.edge.close_all(close, reason="pre-auth byte budget")

    def eof_received(self) -> bool | None:
        return self.inner.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self.edge.guard.closed(self.transport)
        self.inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()


@dataclass
class GuardEdge:
    """The guard with what it needs to act: closing transports, a sweep task, log lines that are
    rate-limited (one summary per `LOG_EVERY_S`, not one line per refused socket)."""

    guard: ConnectionGuard = field(default_factory=ConnectionGuard)
    _sweeper: asyncio.Task[None] | None = None
    _dropped: dict[str, int] = field(default_factory=dict)
    _lines: LineBudget = field(default_factory=LineBudget)

    def close_all(self, keys: list[Hashable], reason: str) -> None:
        for key in keys:
            # uvloop's transports are not asyncio.Transport subclasses: duck-type the abort.
            transport: Any = key
            if not transport.is_closing():
                transport.abort()
            self._dropped[reason] = self._dropped.get(reason, 0) + 1
        if keys:
            self._maybe_log()

    def _maybe_log(self) -> None:
        if self._lines.allow(time.monotonic()) is None:
            return  # counted in _dropped, summarised in the next line
        counts = " ".join(f"{k.replace(' ', '_')}={v}" for k, v in sorted(self._dropped.items()))
        log.warning("unauthenticated connections dropped %s unauthenticated_open=%d pre_auth_bytes=%d",
                    counts, self.guard.unauthenticated, self.guard.pre_auth_bytes)
        self._dropped.clear()

    def start(self) -> None:
        self._sweeper = asyncio.create_task(self._sweep(), name="conn-guard-sweep")

    async def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            await asyncio.gather(self._sweeper, return_exceptions=True)

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_INTERVAL_S)
            self.close_all(self.guard.expired(), reason="header timeout")


class GuardedTCPSite(web.TCPSite):
    """aiohttp's TCPSite with every accepted connection wrapped in a GuardedProtocol."""

    def __init__(self, runner: web.BaseRunner, host: str, port: int, edge: GuardEdge, backlog: int = 1024) -> None:
        super().__init__(runner, host, port, backlog=backlog)
        self.edge = edge

    async def start(self) -> None:
        await web.BaseSite.start(self)
        server = self._runner.server
        assert server is not None
        edge = self.edge
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: GuardedProtocol(server(), edge), self._host, self._port,
            backlog=self._backlog, reuse_address=self._reuse_address, reuse_port=self._reuse_port,
        )
        self._bound_port = self._server.sockets[0].getsockname()[1] if self._server.sockets else self._port
        edge.start()

    async def stop(self) -> None:
        await self.edge.stop()
        await super().stop()


@web.middleware
async def header_seen(request: web.Request, handler: Callable[[web.Request], Any]) -> Any:
    """A request reached the app: its connection delivered a complete header in time."""
    edge: GuardEdge | None = request.app.get(GUARD)
    if edge is not None and request.transport is not None:
        edge.guard.header_complete(request.transport)
    return await handler(request)


GUARD = web.AppKey("conn_guard", GuardEdge)
