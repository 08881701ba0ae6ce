"""The shipped units raise the descriptor limit: at systemd's default of 1,024 a few hundred idle
strangers' sockets are enough to starve validators, receipt pages and SQLite of descriptors."""

from __future__ import annotations

from pathlib import Path

import pytest

UNITS = Path(__file__).resolve().parents[2] / "packaging" / "systemd"


@pytest.mark.parametrize("unit", ["miner-agent.service", "executor-agent.service"])
def test_unit_sets_a_descriptor_limit_for_real_traffic(unit: str) -> None:
    lines = [line.strip() for line in (UNITS / unit).read_text().splitlines()]
    values = [line.split("=", 1)[1] for line in lines if line.startswith("LimitNOFILE=")]
    assert values and int(values[-1]) >= 65536
