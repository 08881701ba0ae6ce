"""ChainDuties on the static backend: each duty run directly (no sleeping), then the loops."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest
from bittensor_wallet import Keypair

from miner_agent.chain.backend import ChainUnavailable, StaticChain, read_validators_file
from miner_agent.chain.chain_config import ChainSection, DynamicConfigSource
from miner_agent.chain.commitment import CommitmentTooLong
from miner_agent.chain.duties import (
    AXON_MIN_INTERVAL_S,
    BLOCK_ESTIMATE_MAX_AGE_S,
    ChainDuties,
    DutyPeriods,
    build_chain_duties,
)
from miner_agent.chain.dynamic import DynamicConfigError
from miner_agent.chain.main_hotkey import epoch_start

OWN = "5Own"
S = "spin_up-4min.gpu-24gb"
A = "always_on.gpu-24gb"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def duties(tmp_path: Path, clock: Clock | None = None, manifest: dict[str, int] | None = None,
           backend: StaticChain | None = None, **settings: object) -> ChainDuties:
    vfile = tmp_path / "validators.toml"
    if not vfile.exists():
        vfile.write_text('validators = ["v1", "v2"]\n')
    chain = backend or StaticChain(vfile, block=1_000_000, own_hotkey=OWN)
    box = manifest if manifest is not None else {S: 2}
    return ChainDuties(
        chain, ChainSection(**settings), own_hotkey=OWN, allow=["a1"], manifest=lambda: box,  # type: ignore[arg-type]
        listen_port=lambda: 8123, monotonic=clock or Clock(),
    )


def test_validators_file_formats(tmp_path: Path) -> None:
    (tmp_path / "v.json").write_text('["x", "y"]')
    (tmp_path / "w.json").write_text('{"validators": ["z"]}')
    (tmp_path / "bad.json").write_text('{"validators": [1]}')
    assert read_validators_file(tmp_path / "v.json") == {"x", "y"}
    assert read_validators_file(tmp_path / "w.json") == {"z"}
    for name in ("bad.json", "missing.toml"):
        with pytest.raises(ChainUnavailable, match=name):
            read_validators_file(tmp_path / name)


async def test_static_chain_block_and_writes() -> None:
    chain = StaticChain(clock=lambda: 1_200_000_000.0, own_hotkey=OWN)
    assert await chain.current_block() == 100_000_000
    assert await chain.validator_permit_hotkeys(12) == frozenset()
    await chain.write_commitment(12, "<M:S1>")
    assert await chain.read_commitment(12, OWN) == "<M:S1>"
    assert [w.kind for w in chain.writes] == ["commitment"]


async def test_validators_union_allow_and_blocklist(tmp_path: Path) -> None:
    d = duties(tmp_path, blocklist=["v2"])
    assert "a1" in d.validators and "v1" not in d.validators
    await d.refresh_validators()
    vs = d.validators
    assert vs.is_known("v1") and vs.is_known("v2") and vs.is_known("a1") and not vs.is_known("zz")
    assert vs.is_blacklisted("v2") and vs.active == {"v1", "a1"} and vs.block == 1_000_000


async def test_failed_refresh_keeps_the_last_good_list(tmp_path: Path) -> None:
    d = duties(tmp_path)
    await d.refresh_validators()
    (tmp_path / "validators.toml").write_text("validators = [")
    with pytest.raises(ChainUnavailable):
        await d.refresh_validators()
    assert d.validators.permitted == {"v1", "v2"}


async def test_main_hotkey_rotates_on_the_estimated_block(tmp_path: Path) -> None:
    clock = Clock()
    first = epoch_start(0, 12)
    start_of_cycle_5 = first + 5 * 722
    chain = StaticChain(block=start_of_cycle_5 - 2, own_hotkey=OWN)
    d = duties(tmp_path, clock, backend=chain, hotkeys_for_main_hotkey_selection=["h0", "h1", "h2"])
    assert d.main_hotkey() == OWN  # no block read yet: own hotkey, like the stock miner
    await d.refresh_validators()
    assert d.main_hotkey() == "h1"  # cycle 4
    clock.now += 24  # two blocks later: cycle 5
    assert d.estimated_block() == start_of_cycle_5 and d.main_hotkey() == "h2"
    clock.now += BLOCK_ESTIMATE_MAX_AGE_S
    assert d.main_hotkey() == OWN
    plain = duties(tmp_path)
    await plain.refresh_validators()
    assert plain.main_hotkey() == OWN


async def test_axon_uses_listen_port_and_never_repeats_within_30_minutes(tmp_path: Path) -> None:
    clock = Clock()
    d = duties(tmp_path, clock, announce_ip="203.0.113.7")
    chain = d.backend
    assert isinstance(chain, StaticChain)
    assert await d.announce_axon() is True
    assert chain.writes[-1].detail == {"ip": "203.0.113.7", "port": 8123}
    clock.now += AXON_MIN_INTERVAL_S - 1
    assert await d.announce_axon() is False
    clock.now += 1
    assert await d.announce_axon() is True
    assert len(chain.writes) == 2


async def test_axon_auto_ip_discovery_and_disabled(tmp_path: Path) -> None:
    d = duties(tmp_path, announce_port=9000)

    async def discover() -> str:
        return "198.51.100.4"

    d._discover_ip = discover
    await d.announce_axon()
    assert d.backend.writes[-1].detail == {"ip": "198.51.100.4", "port": 9000}  # type: ignore[attr-defined]
    off = duties(tmp_path, announce=False)
    assert await off.announce_axon() is False and off.backend.writes == []  # type: ignore[attr-defined]


async def test_manifest_committed_only_when_changed_keeping_other_data(tmp_path: Path) -> None:
    manifest = {S: 2, A: 3}
    d = duties(tmp_path, manifest=manifest)
    chain = d.backend
    assert isinstance(chain, StaticChain)
    chain.commitments[(12, OWN)] = "contact:ops@example.org<M:S1>"
    assert await d.commit_manifest() is True
    assert await chain.read_commitment(12, OWN) == "contact:ops@example.org<M:A3;S2>"
    assert await d.commit_manifest() is False
    manifest.clear()
    assert await d.commit_manifest() is True
    assert await chain.read_commitment(12, OWN) == "contact:ops@example.org<M:>"
    assert len(chain.writes) == 2
    chain.commitments[(12, OWN)] = "x" * 125
    with pytest.raises(CommitmentTooLong):
        await d.commit_manifest()
    assert len(chain.writes) == 2
    assert await duties(tmp_path, commit_manifest=False).commit_manifest() is False


async def test_dynamic_config_refresh_keeps_last_good_and_notifies(tmp_path: Path) -> None:
    path = tmp_path / "dynamic.toml"
    path.write_text('DYNAMIC_PRELOAD_DOCKER_JOB_IMAGES = ["img:1"]\n')
    d = duties(tmp_path, dynamic_config=DynamicConfigSource(source="file", path=path))
    seen: list[tuple[str, ...]] = []

    async def listener(cfg: object) -> None:
        seen.append(cfg.preload_job_images)  # type: ignore[attr-defined]

    d.on_dynamic_config.append(listener)
    await d.refresh_dynamic_config()
    await d.refresh_dynamic_config()  # unchanged: no second notification
    path.write_text("not toml [")
    with pytest.raises(DynamicConfigError):
        await d.refresh_dynamic_config()
    assert d.dynamic_config.preload_job_images == ("img:1",) and seen == [("img:1",)]


async def test_loops_run_log_failures_and_stop(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    chain = StaticChain(tmp_path / "missing.toml", block=10, own_hotkey=OWN)
    d = ChainDuties(chain, ChainSection(announce_ip="203.0.113.7"), own_hotkey=OWN, manifest=lambda: {S: 1},
                    listen_port=8000, periods=DutyPeriods(0.01, 0.01, 0.01, 0.01))
    caplog.set_level(logging.WARNING, logger="miner_agent.chain")
    await d.start()
    await asyncio.sleep(0.1)
    (tmp_path / "missing.toml").write_text('validators = ["late"]\n')
    await asyncio.sleep(0.1)
    await d.stop()
    assert d.state["validators"].failures >= 1 and d.state["validators"].last_error is None
    assert d.validators.is_known("late")
    assert d.state["axon"].runs >= 2 and len([w for w in chain.writes if w.kind == "serve_axon"]) == 1
    assert d.state["manifest"].failures == 0 and chain.commitments[(12, OWN)] == "<M:S1>"
    failures = [r.getMessage() for r in caplog.records if "chain duty failed" in r.getMessage()]
    assert failures and all("\n" not in m and "missing.toml" in m for m in failures)
    status = d.status()
    assert status["backend"] == "static" and status["block"] == 10


async def test_start_loads_the_validator_cache(tmp_path: Path) -> None:
    cache = tmp_path / "validators.json"
    cache.write_text('{"version": 1, "block": 5, "permitted": ["cached"]}')
    chain = StaticChain(tmp_path / "missing.toml", own_hotkey=OWN)
    d = ChainDuties(chain, ChainSection(), own_hotkey=OWN, cache_path=cache, periods=DutyPeriods(3600, 3600, 3600, 3600))
    await d.start()
    try:
        assert d.validators.is_known("cached")
    finally:
        await d.stop()


def test_build_chain_duties_picks_the_backend(tmp_path: Path) -> None:
    kp = Keypair.create_from_uri("//Bob")
    static = build_chain_duties(ChainSection(), keypair=kp, allow=["a"], manifest=dict, listen_port=8000,
                                state_dir=tmp_path)
    assert isinstance(static.backend, StaticChain) and static.own_hotkey == kp.ss58_address
    real = build_chain_duties(ChainSection(backend="bittensor", network="test", netuid=174), keypair=kp, allow=[],
                              manifest=dict, listen_port=8000, state_dir=tmp_path)
    assert type(real.backend).__name__ == "BittensorChain" and real._cache_path == tmp_path / "validators.json"
    assert real._discover_ip is not None


def test_chain_section_defaults_and_validation() -> None:
    cfg = ChainSection()
    assert (cfg.backend, cfg.network, cfg.netuid, cfg.announce_ip, cfg.announce_port) == ("static", "finney", 12, "auto", "auto")
    assert cfg.dynamic_config.source == "none" and cfg.blocklist == [] and cfg.hotkeys_for_main_hotkey_selection == []
    for bad in ({"announce_ip": "0.0.0.0"}, {"announce_ip": "example.org"}, {"announce_port": 0},
                {"network": "mainnet"}, {"backend": "pylon"}, {"unknown_key": 1},
                {"dynamic_config": {"source": "url", "urls": ["ftp://x"]}}):
        with pytest.raises(ValueError):
            ChainSection.model_validate(bad)
    assert ChainSection(network="wss://node.example:443", announce_port=8000).announce_port == 8000
