"""Pure verdicts on what the chain says about us: the axon, the manifest commitment, the clock.

Validators dial the axon ip:port from the chain, read the manifest from our commitment to know
what to offer, and date receipts by the chain's clock; each can be wrong without the miner
noticing. Inputs are plain values gathered elsewhere (miner_agent/doctor/gather.py).
"""

from __future__ import annotations

from collections.abc import Mapping

from miner_agent.chain.commitment import encode_manifest, manifest_from_commitment
from miner_agent.doctor.model import CheckRow, fail, not_checked, ok, warn

CLOCK_WARN_S = 30.0  # above two block times of noise in the head block's timestamp
# Validators sign their auth frame with their clock; we refuse one older than 10 s or more than
# 5 s ahead (miner_agent/protocol/auth.py), so a minute of skew locks every validator out. The
# receipts we countersign are dropped when dated over an hour ahead of the validator's clock.
CLOCK_FAIL_S = 60.0
RECEIPT_FUTURE_LIMIT_S = 3600.0
NTP_FIX = "turn on time sync: timedatectl set-ntp true (systemd-timesyncd or chrony)"


def axon_rows(
    announced: tuple[str, int] | None,
    *,
    announce_enabled: bool,
    static_backend: bool,
    want_ip: str | None,
    want_port: int | None,
    public_ip: str | None,
    public_error: str,
    listening: bool | None,
) -> list[CheckRow]:
    """Three rows: the axon equals what we configured; the port listens; the IP is our public one.

    `want_ip` is announce_ip (or the discovered address for "auto", None when that failed);
    `want_port` the configured or bound port (None: unknown, the miner is not running);
    `listening` None when the port is unknown.
    """
    rows: list[CheckRow] = []
    if announced is None:
        if static_backend:
            rows.append(not_checked("axon on chain", "static chain backend: nothing is announced, and the static "
                                    "file has no [axons] entry for our hotkey",
                                    "set [chain] backend = \"bittensor\" to serve validators on the real chain"))
        else:
            rows.append(fail("axon on chain", "our hotkey has no axon on chain: validators cannot find us",
                             "keep [chain] announce = true and the miner running; it announces every 30 min"))
    elif not announce_enabled:
        rows.append(warn("axon on chain", f"chain has {announced[0]}:{announced[1]}; [chain] announce = false, "
                         "so the miner does not keep it current", "set [chain] announce = true"))
    else:
        problems = []
        if want_ip is not None and announced[0] != want_ip:
            problems.append(f"IP {announced[0]} is not the configured/discovered {want_ip}")
        if want_port is not None and announced[1] != want_port:
            problems.append(f"port {announced[1]} is not our port {want_port}")
        where = f"{announced[0]}:{announced[1]}"
        if problems:
            rows.append(fail("axon on chain", f"chain announces {where}: " + "; ".join(problems),
                             "wait for the next announce (30 min) or restart miner-agent; check [chain] "
                             "announce_ip / announce_port"))
        else:
            rows.append(ok("axon on chain", f"chain announces {where}, as configured"))
    if listening is None:
        rows.append(not_checked("axon port listening", "port unknown: miner-agent is not running",
                                "systemctl start miner-agent"))
    elif listening:
        rows.append(ok("axon port listening", f"port {want_port} accepts connections here"))
    else:
        rows.append(fail("axon port listening", f"nothing accepts connections on port {want_port} here",
                         "systemctl status miner-agent; check [miner] listen_host / listen_port"))
    if public_ip is None:
        rows.append(not_checked("axon IP is public", f"public address unknown: {public_error}",
                                "check [chain] ip_discovery_urls"))
    elif announced is None:
        rows.append(not_checked("axon IP is public", f"this host's public address is {public_ip}; no axon to compare"))
    elif announced[0] != public_ip:
        rows.append(fail("axon IP is public", f"chain announces {announced[0]} but this host's public address is "
                         f"{public_ip}: validators dial the wrong host",
                         f"set [chain] announce_ip = \"{public_ip}\" (or \"auto\") and restart miner-agent"))
    else:
        rows.append(ok("axon IP is public", f"{public_ip} is this host's public address"))
    return rows


def commitment_row(on_chain: str | None, manifest: Mapping[str, int] | None, *, commit_enabled: bool,
                   static_backend: bool = False) -> CheckRow:
    """Our knowledge commitment carries the manifest the running miner advertises now.

    With the static backend the running miner's commitment lives in its own memory, out of
    doctor's reach, so an empty one is "not checked" unless the static file stages one."""
    name = "manifest commitment"
    if manifest is None:
        return not_checked(name, "current manifest unknown: miner-agent is not running", "systemctl start miner-agent")
    want = encode_manifest(manifest)
    if on_chain is None:
        return not_checked(name, "the commitment could not be read from the chain")
    found = manifest_from_commitment(on_chain)
    if found is None and static_backend:
        return not_checked(name, "static chain backend: the miner's commitment is not on any chain, and the static "
                           "file has no [commitments] entry for our hotkey",
                           "set [chain] backend = \"bittensor\" to publish the manifest on the real chain")
    if found is None:
        fix = "set [chain] commit_manifest = true" if not commit_enabled else "the miner commits every 5 min; " \
              "look for 'chain duty failed duty=manifest' in journalctl -u miner-agent"
        return fail(name, f"no manifest in our commitment (validators that read it see no executors); "
                    f"want <M:{want}>", fix)
    have = encode_manifest(found)
    if have != want:
        return fail(name, f"chain has <M:{have}>, the miner advertises <M:{want}>",
                    "wait 5 min for the next commit; if it stays, check the manifest duty in journalctl -u miner-agent")
    return ok(name, f"<M:{want}> on chain matches the current manifest")


def clock_row(local_unix: float, chain_unix: float | None, error: str = "") -> CheckRow:
    """Local clock against the head block's timestamp (positive skew: we are ahead)."""
    name = "clock vs chain"
    if chain_unix is None:
        return not_checked(name, f"block timestamp not read: {error}")
    skew = local_unix - chain_unix
    shown = f"local clock is {abs(skew):.0f} s {'ahead of' if skew >= 0 else 'behind'} the chain's block time"
    if skew > RECEIPT_FUTURE_LIMIT_S:
        return fail(name, f"{shown}: validators drop receipts dated over an hour ahead, and refuse to "
                    "authenticate", NTP_FIX)
    if abs(skew) > CLOCK_FAIL_S:
        return fail(name, f"{shown}: validator auth frames (10 s window) are refused", NTP_FIX)
    if abs(skew) > CLOCK_WARN_S:
        return warn(name, shown, NTP_FIX)
    return ok(name, shown)
