"""Pure verdicts on what validators did with us: connected lately, fetched our receipt pages.

The facts come from the running miner's own records (miner_agent/activity.py, read over the
admin socket): a validator hotkey absent from them never authenticated here.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping

from miner_agent.doctor.model import CheckRow, fail, not_checked, ok, warn

CONNECTED_RECENTLY_S = 3600.0  # validators reconnect within minutes; an hour of silence is a problem
PAGES_FETCHED_RECENTLY_S = 3600.0  # validators pull receipt pages every few minutes while they credit us
NAMES_SHOWN = 3  # hotkeys named in one table cell; --json has them all


def _short(hotkeys: Collection[str]) -> str:
    names = sorted(hotkeys)
    shown = ", ".join(h[:8] + "…" for h in names[:NAMES_SHOWN])
    return shown + (f" and {len(names) - NAMES_SHOWN} more" if len(names) > NAMES_SHOWN else "")


def validators_row(permitted: Collection[str], last_connected: Mapping[str, float] | None, now: float) -> CheckRow:
    """Which permitted validators connected in the last hour, and which never did."""
    name = "validator connections"
    if last_connected is None:
        return not_checked(name, "connection records unknown: miner-agent is not running", "systemctl start miner-agent")
    if not permitted:
        return warn(name, "no validator has a permit on this netuid (or the chain read failed); only [validators] "
                    "allow can connect", "check [chain] backend and netuid")
    recent = {h for h in permitted if now - last_connected.get(h, float("-inf")) <= CONNECTED_RECENTLY_S}
    never = {h for h in permitted if h not in last_connected}
    stale = set(permitted) - recent - never
    counts = f"{len(recent)} of {len(permitted)} permitted validators connected in the last hour"
    if not recent:
        return fail(name, f"{counts}; never: {len(never)}" + (f" ({_short(never)})" if never else ""),
                    "validators find us by the axon: check the axon rows above and that the port is open "
                    "from the internet (firewall, NAT port forward)")
    if never or stale:
        parts = [f"never connected: {_short(never)}"] if never else []
        parts += [f"not in the last hour: {_short(stale)}"] if stale else []
        return warn(name, f"{counts}; " + "; ".join(parts),
                    "a validator that never connects may be down or filter us (collateral, blacklist)")
    return ok(name, counts)


def receipts_row(last_fetch: float | None, now: float, *, miner_running: bool) -> CheckRow:
    """Validators credit work by fetching our receipt pages (/receipts/<page>.jsonl)."""
    name = "receipt pages fetched"
    if not miner_running:
        return not_checked(name, "fetch records unknown: miner-agent is not running", "systemctl start miner-agent")
    if last_fetch is None:
        return warn(name, "no validator has ever fetched a receipt page",
                    "validators fetch pages from miners they send jobs to; check the rows above")
    age = now - last_fetch
    if age > PAGES_FETCHED_RECENTLY_S:
        return warn(name, f"last receipt page fetched {age / 3600:.1f} h ago",
                    "validators are not crediting our receipts: check the axon and validator rows")
    return ok(name, f"last receipt page fetched {age / 60:.0f} min ago")
