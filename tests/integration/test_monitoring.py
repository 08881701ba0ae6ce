"""What /metrics tells an operator, read from real agents: the facts the alert rules and the
dashboard (packaging/prometheus/, packaging/grafana/) are written against.

A real miner on loopback and a validator simulator with real keys; for the job and executor
samples, a real executor agent running a busybox job in podman."""

from __future__ import annotations

import asyncio
import json
import re
import time
from pathlib import Path

import aiohttp
import pytest

from horde_protocol.messages import V0JobRequest
from miner_agent.daemon import MinerAgent
from miner_agent.miner_config import LocalExecutor
from tests.fixtures.miner import sim_for

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "packaging" / "grafana" / "computehorde-miner.json"
CLASS = "always_on.test"
SCRAPE_TIMEOUT_S = 5.0
BIND_WAIT_S = 5.0

Sample = tuple[str, dict[str, str], float]
_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$')
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


async def scrape(port: int) -> tuple[list[Sample], dict[str, str]]:
    """The samples and the `# TYPE` of every metric family, parsed from the exposition text."""
    async with aiohttp.ClientSession() as http:
        async with http.get(f"http://127.0.0.1:{port}/metrics", timeout=aiohttp.ClientTimeout(SCRAPE_TIMEOUT_S)) as r:
            assert r.status == 200 and r.content_type == "text/plain"
            text = await r.text()
    samples: list[Sample] = []
    types: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            types[name] = kind
        elif line and not line.startswith("#"):
            m = _SAMPLE.match(line)
            assert m, f"not an exposition line: {line!r}"
            samples.append((m.group(1), dict(_LABEL.findall(m.group(2) or "")), float(m.group(3))))
    return samples, types


def value(samples: list[Sample], name: str, **labels: str) -> float:
    found = [v for n, ls, v in samples if n == name and all(ls.get(k) == w for k, w in labels.items())]
    assert len(found) == 1, f"{name}{labels}: {found}"
    return found[0]


def exported_names(types: dict[str, str]) -> set[str]:
    """Every name a query may use: a histogram's series are its _bucket, _sum and _count."""
    names = set(types)
    for name, kind in types.items():
        if kind == "histogram":
            names |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
    return names


async def test_validator_and_receipt_activity_is_exported_and_survives_a_restart(miner_config, validator_key) -> None:
    before = time.time()
    first = MinerAgent(miner_config)
    await first.start()
    try:
        async with await sim_for(first, validator_key).connect() as session:
            assert (await session.recv(5)).type == "V0ExecutorManifestRequest"
        page = int(time.time() // 300)
        async with aiohttp.ClientSession() as http:  # no receipt yet: a 404, which is still a fetch
            async with http.get(f"http://127.0.0.1:{first.port}/receipts/{page}.jsonl") as resp:
                assert resp.status == 404
        samples, _ = await scrape(first.metrics_port)
    finally:
        await first.stop()
    seen = value(samples, "miner_agent_validator_last_seen_timestamp_seconds")
    fetched = value(samples, "miner_agent_receipt_pages_last_fetch_timestamp_seconds")
    assert before <= seen <= time.time() and before <= fetched <= time.time()
    assert value(samples, "miner_agent_validators_seen_last_hour") == 1
    assert value(samples, "miner_agent_validator_auth_total") == 1
    assert value(samples, "miner_agent_receipt_page_fetches_total") == 1
    # No executor agent listens on the configured socket: its link is down, by name.
    assert value(samples, "miner_agent_executor_up", executor="local", executor_class=CLASS) == 0
    assert before <= value(samples, "miner_agent_start_time_seconds") <= seen

    again = MinerAgent(miner_config)
    await again.start()
    try:
        samples, _ = await scrape(again.metrics_port)
    finally:
        await again.stop()
    # What the alerts compare with time() comes back from the database; the counters start over.
    assert value(samples, "miner_agent_validator_last_seen_timestamp_seconds") == seen
    assert value(samples, "miner_agent_receipt_pages_last_fetch_timestamp_seconds") == fetched
    assert value(samples, "miner_agent_validator_auth_total") == 0


async def test_a_self_test_connection_does_not_make_the_miner_look_seen(miner_config, start_miner) -> None:
    """`miner-agent self-test` connects with a one-time key; no validator has connected yet."""
    from bittensor_wallet import Keypair

    agent = await start_miner(miner_config)
    selftest = Keypair.create_from_mnemonic(Keypair.generate_mnemonic())
    agent.ctx.selftest_keys[selftest.ss58_address] = time.monotonic() + 60  # as the admin socket hands one out
    async with await sim_for(agent, selftest).connect() as session:
        assert (await session.recv(5)).type == "V0ExecutorManifestRequest"
    samples, _ = await scrape(agent.metrics_port)
    assert value(samples, "miner_agent_validator_auth_total") == 1
    assert value(samples, "miner_agent_validator_last_seen_timestamp_seconds") == 0
    assert value(samples, "miner_agent_validators_seen_last_hour") == 0


@pytest.fixture
def agent_config(agent_config):
    """The executor's metrics on any free loopback port (the default 9109 may be taken here)."""
    from executor_agent.executor_config import MetricsSettings

    return agent_config.model_copy(update={"slots": 1, "metrics": MetricsSettings(port=0)})


@pytest.fixture
def linked_config(miner_config, agent_config):
    local = LocalExecutor(name="local", executor_class=CLASS, socket=agent_config.socket_path)
    return miner_config.model_copy(update={"executors": [local]})


async def _executor_metrics_port(executor_agent) -> int:
    endpoint = executor_agent.services.metrics
    for _ in range(int(BIND_WAIT_S / 0.02)):
        if endpoint.bound_port is not None:
            return endpoint.bound_port
        await asyncio.sleep(0.02)
    raise AssertionError("executor agent metrics did not start listening")


@pytest.mark.podman
async def test_a_failed_job_is_counted_by_reason_on_both_agents(linked_config, start_miner, executor_agent,
                                                               busybox_image, validator_key) -> None:
    agent = await start_miner(linked_config)
    assert await agent.ctx.fleet.links["local"].wait_up(10), agent.ctx.fleet.links["local"].last_error
    sim = sim_for(agent, validator_key)
    initial = sim.initial_request(CLASS, busybox_image)
    request = V0JobRequest(job_uuid=initial.job_uuid, executor_class=CLASS, docker_image=busybox_image,
                           docker_run_options_preset="none", docker_run_cmd=["sh", "-c", "exit 3"])
    received = await sim.run_job(initial, request)
    assert received[-1].type == "V0JobFailedRequest", received[-1].message

    samples, _ = await scrape(agent.metrics_port)
    assert value(samples, "miner_agent_job_failures_total", kind="job", reason="nonzero_return_code",
                 executor_class=CLASS) == 1
    assert value(samples, "miner_agent_jobs_total", outcome="failed", executor_class=CLASS) == 1
    assert value(samples, "miner_agent_executor_up", executor="local", executor_class=CLASS) == 1

    samples, _ = await scrape(await _executor_metrics_port(executor_agent))
    assert value(samples, "executor_agent_jobs_total", outcome="submitted") == 1
    assert value(samples, "executor_agent_jobs_total", outcome="failed") == 1
    free = value(samples, "executor_agent_jobs_dir_free_bytes")
    assert 0 < free <= value(samples, "executor_agent_jobs_dir_size_bytes")
    assert 0 < value(samples, "executor_agent_jobs_dir_free_ratio") <= 1
    assert 0 < value(samples, "executor_agent_image_store_used_ratio") < 1
    assert value(samples, "executor_agent_image_gc_enabled") == 1
    assert value(samples, "executor_agent_image_gc_disk_high_ratio") == 0.85


def _dashboard_queries() -> list[str]:
    board = json.loads(DASHBOARD.read_text())
    queries = [t["expr"] for p in board["panels"] for t in p.get("targets", []) if "expr" in t]
    queries += [v["query"]["query"] if isinstance(v["query"], dict) else v["query"]
                for v in board["templating"]["list"] if v.get("type") == "query"]
    return queries


# Words a query may use that are not metrics: PromQL functions, keywords, our label names, Grafana's variables.
_NOT_METRICS = {
    "sum", "min", "max", "by", "rate", "increase", "histogram_quantile", "time", "label_values", "on", "and", "or",
    "unless", "group_left", "le", "instance", "job", "outcome", "kind", "reason", "executor", "executor_class",
    "stage", "validator", "count", "vector", "__rate_interval", "__range", "interval",
}


def _metric_names(query: str) -> set[str]:
    """Metric names in one query: identifiers outside {...} and [...], not a number, function, keyword or label."""
    bare = re.sub(r"\[[^\]]*\]", "", re.sub(r"\{[^}]*\}", "", re.sub(r'"[^"]*"', "", query)))
    bare = re.sub(r"(?<![\w.])\d+(\.\d+)?(e\d+)?", "", bare)
    return set(re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", bare)) - _NOT_METRICS


@pytest.mark.podman
async def test_every_dashboard_query_names_a_metric_the_agents_export(executor_agent, linked_config, start_miner) -> None:
    """Each metric a panel (or a variable) queries is exported by a default-configured miner or
    executor agent, read from their /metrics `# TYPE` lines. One exception, because collateral
    metrics appear only while the collateral duty runs (a chain and [collateral] configured): a
    name that docs/metrics.md documents AND that miner_agent's source spells as a string literal."""
    agent = await start_miner(linked_config)
    _, miner_types = await scrape(agent.metrics_port)
    _, executor_types = await scrape(await _executor_metrics_port(executor_agent))
    exported = exported_names(miner_types) | exported_names(executor_types)
    documented = (ROOT / "docs" / "metrics.md").read_text()
    source = "\n".join(p.read_text() for p in (ROOT / "miner_agent").rglob("*.py"))

    queries = _dashboard_queries()
    assert len(queries) >= 15
    missing: dict[str, str] = {}
    for query in queries:
        names = _metric_names(query)
        assert names, f"no metric in {query!r}"
        for name in names - exported:
            if not (f"`{name}" in documented and f'"{name}"' in source):
                missing[name] = query
    assert missing == {}, "queried but not exported (nor a documented collateral metric)"
