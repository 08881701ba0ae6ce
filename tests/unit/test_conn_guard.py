"""ConnectionGuard's rules without sockets: who is refused, who is dropped to make room, and when."""

from __future__ import annotations

from miner_agent.server.conn_guard import ConnectionGuard


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_an_address_at_its_cap_is_refused_others_are_not() -> None:
    guard = ConnectionGuard(per_address=2, total=10, new_per_address_per_s=1e9)  # the rate is tested below
    assert guard.opened("a1", "10.0.0.1") == [] and guard.opened("a2", "10.0.0.1") == []
    assert guard.opened("a3", "10.0.0.1") == ["a3"]
    assert guard.opened("b1", "10.0.0.2") == []
    guard.closed("a1")
    assert guard.opened("a4", "10.0.0.1") == []  # a slot came back


def test_at_the_total_the_oldest_without_a_header_makes_room() -> None:
    guard = ConnectionGuard(per_address=10, total=3)
    for key in ("v", "h1", "h2"):
        guard.opened(key, key)
    guard.header_complete("v")  # the validator's upgrade request arrived; the others are idle
    assert guard.opened("h3", "h3") == ["h1"]
    assert guard.opened("h4", "h4") == ["h2"]
    assert guard.opened("h5", "h5") == ["h3"]
    guard.header_complete("h4")
    guard.header_complete("h5")
    assert guard.opened("h6", "h6") == ["v"]  # all sent headers: the oldest goes
    assert guard.stats.evicted_total_cap == 4


def test_authenticated_connections_leave_the_books() -> None:
    guard = ConnectionGuard(per_address=1, total=1, bytes_per_conn=10, new_per_address_per_s=1e9)
    guard.opened("v", "10.0.0.1")
    guard.authenticated("v")
    assert guard.unauthenticated == 0
    assert guard.received("v", 10_000) == []  # its session limits apply now, not ours
    assert guard.opened("x", "10.0.0.1") == []


def test_byte_budgets_per_connection_and_in_all() -> None:
    guard = ConnectionGuard(per_address=10, total=10, bytes_per_conn=100, bytes_total=150)
    guard.opened("a", "1")
    guard.opened("b", "2")
    assert guard.received("a", 100) == []
    assert guard.received("a", 1) == ["a"]  # over its own budget
    assert guard.pre_auth_bytes == 0
    guard.opened("c", "3")
    assert guard.received("b", 90) == [] and guard.received("c", 50) == []
    assert guard.received("c", 20) == ["b"]  # over the total: the biggest sender goes first
    assert guard.pre_auth_bytes == 70


def test_a_header_must_arrive_in_time() -> None:
    clock = Clock()
    guard = ConnectionGuard(header_timeout_s=10, clock=clock)
    guard.opened("slow", "1")
    guard.opened("fast", "2")
    guard.header_complete("fast")
    clock.now += 9.9
    assert guard.expired() == []
    clock.now += 0.2
    assert guard.expired() == ["slow"]
    assert guard.unauthenticated == 1 and guard.stats.closed_header_timeout == 1


def test_an_address_that_reconnects_as_fast_as_it_is_dropped_is_slowed_down() -> None:
    clock = Clock()
    guard = ConnectionGuard(per_address=4, total=100, new_per_address_per_s=2.0, clock=clock)
    for i in range(4):  # the burst
        assert guard.opened(f"c{i}", "1") == []
        guard.closed(f"c{i}")
    assert guard.opened("c4", "1") == ["c4"]  # no tokens left, although no socket is open
    assert guard.opened("other", "2") == []
    clock.now += 0.5  # one token back
    assert guard.opened("c5", "1") == []
    assert guard.opened("c6", "1") == ["c6"]


def test_an_ipv6_host_counts_as_its_slash_64_and_mapped_ipv4_as_ipv4() -> None:
    from miner_agent.server.conn_guard import source_of

    assert source_of(("2001:db8:1:2:aaaa::1", 443, 0, 0)) == source_of(("2001:db8:1:2:ffff::9", 443, 0, 0))
    assert source_of(("2001:db8:1:2::1", 1, 0, 0)) == "2001:db8:1:2::/64"
    assert source_of(("2001:db8:1:3::1", 1, 0, 0)) != source_of(("2001:db8:1:2::1", 1, 0, 0))
    assert source_of(("::ffff:192.0.2.7", 1, 0, 0)) == source_of(("192.0.2.7", 1)) == "192.0.2.7"
    assert source_of(None) == "unknown"


def test_many_addresses_prune_the_token_map_at_most_once_a_second() -> None:
    clock = Clock()
    guard = ConnectionGuard(per_address=2, total=2, new_per_address_per_s=1.0, clock=clock)
    for i in range(20):
        guard.opened(f"k{i}", f"a{i}")
        guard.closed(f"k{i}")
    assert len(guard._tokens) == 20  # nothing is full yet: all kept, one prune attempt at most
    clock.now += 10  # every bucket has refilled
    guard.opened("late", "fresh")
    assert set(guard._tokens) == {"fresh"}
