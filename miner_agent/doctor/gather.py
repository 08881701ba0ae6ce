"""The I/O of `miner-agent doctor`: ask the chain, the running miner and the public-address
service, then hand plain values to the verdict functions.

The chain backend is built the way the daemon builds it (`build_chain_duties`), so doctor reads
the same chain the miner writes to. Every read is bounded and a failed one becomes a
"not checked" row naming why: doctor itself never fails on a broken dependency.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from typing import TypeVar

import aiohttp

from miner_agent.admin_client import AdminUnavailable, call
from miner_agent.chain.announce import IpDiscoveryError, discover_public_ipv4
from miner_agent.chain.backend import ChainBackend, ChainError
from miner_agent.chain.duties import build_chain_duties
from miner_agent.chain.dynamic import DynamicConfigError, load_values
from miner_agent.doctor.chain_checks import axon_rows, clock_row, commitment_row
from miner_agent.doctor.class_checks import WEIGHTS_KEY, classes_row
from miner_agent.doctor.executor_checks import LiveFacts, executor_rows
from miner_agent.doctor.model import CheckRow, DoctorReport, fail, not_checked, ok
from miner_agent.doctor.validator_checks import receipts_row, validators_row
from miner_agent.fleet.connection import DOCTOR_TIMEOUT_S
from miner_agent.keys import WalletError, load_hotkey
from miner_agent.miner_config import MinerConfig

CHAIN_READ_TIMEOUT_S = 30.0  # one subtensor query; a slow endpoint is a finding, not a hang
PORT_CONNECT_TIMEOUT_S = 3.0  # a local connect either succeeds at once or nothing listens
ADMIN_DOCTOR_TIMEOUT_S = DOCTOR_TIMEOUT_S + 15.0  # the miner waits up to DOCTOR_TIMEOUT_S for its agents

T = TypeVar("T")


async def _bounded(what: Awaitable[T]) -> T:
    return await asyncio.wait_for(what, CHAIN_READ_TIMEOUT_S)


async def _read(what: Awaitable[T]) -> tuple[T | None, str]:
    """(value, "") or (None, why it could not be read)."""
    try:
        return await _bounded(what), ""
    except ChainError as exc:
        return None, str(exc)
    except TimeoutError:
        return None, f"no answer within {CHAIN_READ_TIMEOUT_S:.0f} s"


async def live_facts(config: MinerConfig) -> tuple[LiveFacts | None, str]:
    try:
        _, body = await call(config.admin_socket, "GET", "/doctor", timeout_s=ADMIN_DOCTOR_TIMEOUT_S)
    except AdminUnavailable as exc:
        return None, str(exc)
    return LiveFacts.model_validate(body), ""


async def port_listening(host: str, port: int) -> bool:
    target = "127.0.0.1" if host in ("0.0.0.0", "") else "::1" if host == "::" else host
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(target, port), PORT_CONNECT_TIMEOUT_S)
    except (OSError, TimeoutError):
        return False
    writer.close()
    try:
        await writer.wait_closed()
    except OSError:
        pass
    return True


async def public_address(config: MinerConfig) -> tuple[str | None, str]:
    """This host's public IPv4 from the discovery services. The static backend is the offline
    install, which sends nothing beyond its listener: there doctor asks only services the
    config names itself."""
    settings = config.chain
    urls = list(settings.ip_discovery_urls)
    if settings.backend == "static" and "ip_discovery_urls" not in settings.model_fields_set:
        return None, "static chain backend: no lookup unless [chain] ip_discovery_urls is set in the config"
    if not urls:
        return None, "[chain] ip_discovery_urls is empty"
    try:
        async with aiohttp.ClientSession() as session:
            return await discover_public_ipv4(session, urls), ""
    except IpDiscoveryError as exc:
        return None, str(exc)


async def dynamic_weights(config: MinerConfig, live: LiveFacts | None) -> object | None:
    """The weights value from a fresh read of the configured source; the running miner's copy when
    that read fails. None when neither sets it."""
    try:
        async with aiohttp.ClientSession() as session:
            values = await load_values(config.chain.dynamic_config, session)
    except DynamicConfigError:
        values = dict(live.dynamic_values) if live is not None else None
    return (values or {}).get(WEIGHTS_KEY)


async def collateral_rows(config: MinerConfig, chain: ChainBackend) -> list[CheckRow]:
    name = "collateral"
    try:
        from miner_agent.collateral.report import collateral_report
    except ImportError:
        return [not_checked(name, "this miner-agent has no collateral support yet")]
    try:
        report = await _bounded(collateral_report(config, chain))
    except (ChainError, TimeoutError) as exc:
        return [not_checked(name, f"could not be read: {exc or 'timeout'}")]
    if not report.checked:
        return [not_checked(name, report.reason, "see `miner-agent collateral status`")]
    bad = report.below_threshold()
    if not bad:
        return [ok(name, f"enough collateral for all {len(report.rows)} validators that ask for it")]
    return [fail(f"collateral for {row.validator[:8]}…", row.problem or "below its threshold",
                 "miner-agent collateral deposit (see `miner-agent collateral status`)") for row in bad]


async def gather_report(config: MinerConfig) -> DoctorReport:
    rows: list[CheckRow] = []
    live, admin_error = await live_facts(config)
    rows.append(ok("miner-agent running", f"answers on {config.admin_socket}") if live is not None
                else fail("miner-agent running", admin_error, "systemctl start miner-agent; journalctl -u miner-agent"))
    try:
        signer = load_hotkey(config.wallet.path, config.wallet.name, config.wallet.hotkey)
    except WalletError as exc:
        rows.append(fail("hotkey", str(exc)))
        return DoctorReport(rows=rows)
    settings = config.chain
    duties = build_chain_duties(settings, keypair=signer.keypair, allow=config.validators.allow,
                                manifest=dict, listen_port=0, state_dir=None)
    chain = duties.backend
    try:
        rows += await _chain_rows(config, chain, signer.hotkey, live)
        rows += await collateral_rows(config, chain)
        configured = {str(e.executor_class.value) for e in config.executors}
        rows.append(classes_row(configured, await dynamic_weights(config, live)))
        rows.append(receipts_row(live.last_page_fetch if live else None, time.time(), miner_running=live is not None))
        chain_now, why = await _read(chain.block_timestamp())
        rows.append(clock_row(time.time(), chain_now, why))
    finally:
        await chain.close()
    if live is None:
        rows.append(not_checked("executors", "link states unknown: miner-agent is not running"))
    for facts in live.executors if live else []:
        rows += executor_rows(facts)
    return DoctorReport(rows=rows)


async def _chain_rows(config: MinerConfig, chain: ChainBackend, hotkey: str, live: LiveFacts | None) -> list[CheckRow]:
    settings = config.chain
    netuid = settings.netuid
    announced, _ = await _read(chain.read_axon(netuid, hotkey))
    public_ip, public_error = await public_address(config)
    want_ip = public_ip if settings.announce_ip == "auto" else settings.announce_ip
    port = settings.announce_port if isinstance(settings.announce_port, int) else (live.port if live else None)
    listening = await port_listening(config.miner.listen_host, port) if port else None
    rows = axon_rows(announced, announce_enabled=settings.announce, static_backend=settings.backend == "static",
                     want_ip=want_ip, want_port=port, public_ip=public_ip, public_error=public_error,
                     listening=listening)
    commitment, _ = await _read(chain.read_commitment(netuid, hotkey))
    rows.append(commitment_row(commitment, live.manifest if live else None, commit_enabled=settings.commit_manifest,
                               static_backend=settings.backend == "static"))
    permitted, why = await _read(chain.validator_permit_hotkeys(netuid))
    expected = set(permitted or (live.permitted if live else [])) | set(config.validators.allow)
    rows.append(validators_row(expected, live.last_connected if live else None, time.time()))
    return rows
