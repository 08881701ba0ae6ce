"""ChainDuties: the miner's periodic chain work, and the answers the rest of the miner reads from it.

Four duties, each on its own period (the stock celery schedule, behaviour.md §4):
validators every 60 s, axon announce every 30 min (never faster: subtensor rate-limits serving and
the stock miner hit it at 60 s), manifest commitment every 5 min and only when it changed, dynamic
config every 5 min. A failure is one log line and a retry next period; nothing here can take the
miner down. Readers (`validators`, `main_hotkey()`, `dynamic_config`) are plain attribute reads of
the last good values, safe to call from any request handler without awaiting the chain.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import aiohttp

from miner_agent.chain.announce import discover_public_ipv4
from miner_agent.chain.backend import BLOCK_TIME_S, ChainBackend, ChainError
from miner_agent.chain.chain_config import ChainSection
from miner_agent.chain.commitment import encode_manifest, merge_commitment
from miner_agent.chain.dynamic import DynamicConfig, load_values
from miner_agent.chain.main_hotkey import check_rotation, choose_main_hotkey, cycle_number
from miner_agent.chain.validators import ValidatorSet, load_cache, save_cache

log = logging.getLogger(__name__)

VALIDATORS_REFRESH_S = 60.0  # 1 minute, stock fetch_validators
AXON_ANNOUNCE_S = 30 * 60.0  # 30 minutes, stock announce_address_and_port
AXON_MIN_INTERVAL_S = 30 * 60.0  # 30 minutes: floor between two serve_axon attempts, whatever the period
MANIFEST_COMMIT_S = 5 * 60.0  # 5 minutes, stock commit_manifest_to_chain
DYNAMIC_CONFIG_REFRESH_S = 5 * 60.0  # 5 minutes, stock fetch_dynamic_config
BLOCK_ESTIMATE_MAX_AGE_S = 60 * 60.0  # 1 hour: past this, a stale block no longer picks the main hotkey
STOP_TIMEOUT_S = 5.0  # how long stop() waits for a duty caught mid-request


@dataclass(frozen=True)
class DutyPeriods:
    """Seconds between runs of each duty; tests shrink them, production keeps the defaults."""

    validators_s: float = VALIDATORS_REFRESH_S
    axon_s: float = AXON_ANNOUNCE_S
    manifest_s: float = MANIFEST_COMMIT_S
    dynamic_config_s: float = DYNAMIC_CONFIG_REFRESH_S


@dataclass
class DutyState:
    """Health of one duty, as data for `miner-agent status`."""

    runs: int = 0
    failures: int = 0
    last_ok_at: float | None = None  # unix time
    last_error: str | None = None


ManifestFn = Callable[[], Mapping[str, int]]
IpDiscoveryFn = Callable[[], Awaitable[str]]
DynamicListener = Callable[[DynamicConfig], Awaitable[None]]


class ChainDuties:
    def __init__(
        self,
        backend: ChainBackend,
        settings: ChainSection,
        *,
        own_hotkey: str,
        allow: Iterable[str] = (),
        manifest: ManifestFn = dict,
        listen_port: Callable[[], int] | int = 0,
        cache_path: Path | None = None,
        discover_ip: IpDiscoveryFn | None = None,
        periods: DutyPeriods = DutyPeriods(),
        monotonic: Callable[[], float] = time.monotonic,
        session: aiohttp.ClientSession | None = None,
    ) -> None:
        """`discover_ip` resolves announce_ip = "auto" (None: pass "auto" to the backend as is,
        which only the static backend accepts); `session` is used for dynamic-config URLs and is
        created on start() when needed and not given."""
        self.backend = backend
        self.settings = settings
        self.own_hotkey = own_hotkey
        self.validators = ValidatorSet(allow=frozenset(allow), blocked=frozenset(settings.blocklist))
        self.dynamic_config = DynamicConfig()
        self.on_dynamic_config: list[DynamicListener] = []
        self.state: dict[str, DutyState] = {n: DutyState() for n in ("validators", "axon", "manifest", "dynamic_config")}
        self._manifest = manifest
        self._listen_port = listen_port
        self._cache_path = cache_path
        self._discover_ip = discover_ip
        self._periods = periods
        self._monotonic = monotonic
        self._session = session
        self._own_session = False
        self._block: int | None = None
        self._warned_empty = False
        self._block_at: float = 0.0
        self._last_axon_attempt: float | None = None
        self._tasks: list[asyncio.Task[None]] = []

    # Readers -----------------------------------------------------------------------------------

    def estimated_block(self) -> int | None:
        """The last block read, advanced by wall time at 12 s per block; None when unknown or stale."""
        if self._block is None:
            return None
        age = self._monotonic() - self._block_at
        if age > BLOCK_ESTIMATE_MAX_AGE_S:
            return None
        return self._block + int(age // BLOCK_TIME_S)

    def main_hotkey(self) -> str:
        """The answer to V0MainHotkeyMessage (§5.6); our own hotkey unless rotation is configured."""
        rotation = self.settings.hotkeys_for_main_hotkey_selection
        return choose_main_hotkey(self.own_hotkey, rotation, self.estimated_block(), self.settings.netuid)

    def status(self) -> dict[str, object]:
        block = self.estimated_block()
        return {
            "backend": self.settings.backend,
            "netuid": self.settings.netuid,
            "block": block,
            "cycle": None if block is None else cycle_number(block, self.settings.netuid),
            "main_hotkey": self.main_hotkey(),
            "validators_permitted": len(self.validators.permitted),
            "validators_allowed": len(self.validators.allow),
            "validators_blocked": len(self.validators.blocked),
            "preload_job_images": len(self.dynamic_config.preload_job_images),
            "duties": {name: asdict(s) for name, s in self.state.items()},
        }

    # Duties (each one run; the loops call them, tests call them directly) -----------------------

    async def refresh_validators(self) -> None:
        """Permit list and head block. A failed read keeps the previous value (never an empty set)."""
        netuid = self.settings.netuid
        permitted = await self.backend.validator_permit_hotkeys(netuid)
        try:
            block: int | None = await self.backend.current_block()
        except ChainError as exc:  # the list is still good; rotation falls back on the estimate
            log.warning("current block not read error=%s", exc)
            block = None
        else:
            self._block, self._block_at = block, self._monotonic()
        before = self.validators.permitted
        self.validators = self.validators.with_permitted(permitted, block)
        if permitted != before:
            log.info(
                "validators refreshed netuid=%d block=%s permitted=%d added=%d removed=%d",
                netuid, block, len(permitted), len(permitted - before), len(before - permitted),
            )
        if not permitted and not self._warned_empty:  # once, not every minute
            log.warning("no validator_permit neurons on netuid=%d; only [validators] allow can connect", netuid)
        self._warned_empty = not permitted
        if self._cache_path is not None:
            try:
                save_cache(self._cache_path, permitted, block)
            except OSError as exc:
                log.warning("validator cache not written path=%s error=%r", self._cache_path, str(exc))

    async def announce_axon(self) -> bool:
        """serve_axon with our public ip:port; False when skipped (disabled or too soon)."""
        if not self.settings.announce:
            log.info("axon announce skipped reason=disabled ([chain] announce = false)")
            return False
        now = self._monotonic()
        if self._last_axon_attempt is not None and now - self._last_axon_attempt < AXON_MIN_INTERVAL_S:
            log.debug("axon announce skipped reason=rate_limit last_attempt_s_ago=%d", now - self._last_axon_attempt)
            return False
        ip = self.settings.announce_ip
        if ip == "auto" and self._discover_ip is not None:
            ip = await self._discover_ip()
        port = self.settings.announce_port
        if port == "auto":
            port = self._listen_port() if callable(self._listen_port) else self._listen_port
        self._last_axon_attempt = now
        await self.backend.serve_axon(self.settings.netuid, ip, int(port))
        log.info("axon announced netuid=%d ip=%s port=%d", self.settings.netuid, ip, port)
        return True

    async def commit_manifest(self) -> bool:
        """Write `<M:...>` into our commitment when it differs from what the chain holds."""
        if not self.settings.commit_manifest:
            return False
        payload = encode_manifest(self._manifest())
        netuid = self.settings.netuid
        current = await self.backend.read_commitment(netuid, self.own_hotkey)
        wanted = merge_commitment(current, payload)
        if wanted == current:
            log.debug("manifest commitment unchanged payload=%s", payload)
            return False
        await self.backend.write_commitment(netuid, wanted)
        log.info("manifest committed netuid=%d payload=%r bytes=%d", netuid, payload, len(wanted.encode("utf-8")))
        return True

    async def refresh_dynamic_config(self) -> None:
        values = await load_values(self.settings.dynamic_config, self._session)
        if values is None:
            return
        new = DynamicConfig.from_values(values, previous=self.dynamic_config)
        if new == self.dynamic_config:
            return
        self.dynamic_config = new
        log.info(
            "dynamic config updated source=%s keys=%d preload_job_images=%d",
            self.settings.dynamic_config.source, len(new.values), len(new.preload_job_images),
        )
        for listener in self.on_dynamic_config:
            try:
                await listener(new)
            except Exception as exc:
                log.warning("dynamic config listener failed listener=%s error=%r", getattr(listener, "__name__", listener), exc)

    # Lifecycle ---------------------------------------------------------------------------------

    async def start(self) -> None:
        """Load the cached validator list, then start the loops; returns at once (no chain wait)."""
        warning = check_rotation(self.own_hotkey, self.settings.hotkeys_for_main_hotkey_selection)
        if warning:
            log.warning(warning)
        if self._cache_path is not None:
            cached = load_cache(self._cache_path)
            if cached is not None:
                self.validators = self.validators.with_permitted(*cached)
                log.info("validators loaded from cache permitted=%d block=%s", len(cached[0]), cached[1])
        if self._session is None and self._needs_http():
            self._session, self._own_session = aiohttp.ClientSession(), True
        p = self._periods
        duties: list[tuple[str, float, Callable[[], Awaitable[object]]]] = [
            ("validators", p.validators_s, self.refresh_validators),
            ("axon", p.axon_s, self.announce_axon),
            ("manifest", p.manifest_s, self.commit_manifest),
            ("dynamic_config", p.dynamic_config_s, self.refresh_dynamic_config),
        ]
        for name, period_s, duty in duties:
            self._tasks.append(asyncio.create_task(self._every(name, period_s, duty), name=f"chain-{name}"))
        log.info(
            "chain duties started backend=%s netuid=%d validators_s=%d axon_s=%d manifest_s=%d dynamic_config_s=%d",
            self.settings.backend, self.settings.netuid, p.validators_s, p.axon_s, p.manifest_s, p.dynamic_config_s,
        )

    async def stop(self) -> None:
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=STOP_TIMEOUT_S)
        await self.backend.close()
        if self._own_session and self._session is not None:
            await self._session.close()
            self._session, self._own_session = None, False
        counts = " ".join(f"{n}={s.runs}/{s.failures}" for n, s in self.state.items())
        log.info("chain duties stopped runs/failures %s", counts)

    def _needs_http(self) -> bool:
        return self.settings.dynamic_config.source == "url"

    async def _every(self, name: str, period_s: float, duty: Callable[[], Awaitable[object]]) -> None:
        state = self.state[name]
        while True:
            state.runs += 1
            try:
                await duty()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # one line per failure, never a crash: the next period retries
                state.failures += 1
                state.last_error = f"{type(exc).__name__}: {exc}"
                log.warning("chain duty failed duty=%s retry_in_s=%d error=%s", name, period_s, state.last_error)
            else:
                state.last_ok_at, state.last_error = time.time(), None
            await asyncio.sleep(period_s)


def build_chain_duties(
    settings: ChainSection,
    *,
    keypair: object,
    allow: Iterable[str],
    manifest: ManifestFn,
    listen_port: Callable[[], int] | int,
    state_dir: Path | None = None,
) -> ChainDuties:
    """The daemon's one call: pick the backend from `[chain] backend` and wire IP discovery."""
    own_hotkey = str(getattr(keypair, "ss58_address"))
    discover: IpDiscoveryFn | None = None
    if settings.backend == "bittensor":
        from miner_agent.chain.bittensor_backend import BittensorChain

        backend: ChainBackend = BittensorChain(settings.network, keypair)
        urls = list(settings.ip_discovery_urls)

        async def _discover() -> str:
            async with aiohttp.ClientSession() as session:
                return await discover_public_ipv4(session, urls)

        discover = _discover
    else:
        from miner_agent.chain.backend import StaticChain

        backend = StaticChain(settings.static_validators_file, settings.static_block, own_hotkey=own_hotkey)
    cache = state_dir / "validators.json" if state_dir is not None and settings.backend == "bittensor" else None
    return ChainDuties(
        backend, settings, own_hotkey=own_hotkey, allow=allow, manifest=manifest,
        listen_port=listen_port, cache_path=cache, discover_ip=discover,
    )
