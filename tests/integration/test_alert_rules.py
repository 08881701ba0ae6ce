"""The alert rules in packaging/prometheus/ load in Prometheus and fire when they should.

`promtool check rules` is Prometheus's own parser; `promtool test rules` replays the series in
rules.test.yml through the real rule engine and compares every alert (labels and rendered
annotations) at each evaluation time. promtool comes from Debian's prometheus package, which
`scripts/bootstrap.sh --test` installs (its daemon left stopped and disabled)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RULES_DIR = ROOT / "packaging" / "prometheus"
RULE_FILES = sorted(RULES_DIR.glob("*.rules.yml"))
MONITORING_DOC = ROOT / "docs" / "monitoring.md"
PROMTOOL_TIMEOUT_S = 60.0


def _promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        pytest.fail("promtool is missing: run `sudo bash scripts/bootstrap.sh --test` "
                    "(or `apt-get install --no-install-recommends prometheus`)", pytrace=False)
    return found


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([_promtool(), *args], cwd=RULES_DIR, capture_output=True, text=True,
                          timeout=PROMTOOL_TIMEOUT_S)


def _alerts(path: Path) -> list[str]:
    return re.findall(r"^\s+- alert: (\w+)$", path.read_text(), flags=re.M)


def test_promtool_accepts_both_rule_files() -> None:
    assert [p.name for p in RULE_FILES] == ["executor-agent.rules.yml", "miner-agent.rules.yml"]
    done = _run("check", "rules", *(p.name for p in RULE_FILES))
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_alert_fires_in_its_promtool_case() -> None:
    done = _run("test", "rules", "rules.test.yml")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout + done.stderr
    # A case per alert in which it fires: an alert_rule_test naming it with a non-empty exp_alerts.
    cases = (RULES_DIR / "rules.test.yml").read_text()
    firing = set(re.findall(r"alertname: (\w+)\n\s+exp_alerts:\n\s+- exp_labels", cases))
    alerts = {a for p in RULE_FILES for a in _alerts(p)}
    assert alerts - firing == set(), "alerts without a case that makes them fire"


def test_every_alert_has_a_wait_a_severity_and_a_runbook_section() -> None:
    doc = MONITORING_DOC.read_text()
    anchors = {re.sub(r"[^a-z0-9]", "", h.lower()) for h in re.findall(r"^#+ (.+)$", doc, flags=re.M)}
    for path in RULE_FILES:
        text = path.read_text()
        blocks = re.split(r"^\s+- alert: ", text, flags=re.M)[1:]
        assert blocks, path
        for block in blocks:
            name = block.split("\n", 1)[0]
            assert re.search(r"^\s+for: \d+[smh]$", block, flags=re.M), f"{name}: no `for:`"
            assert re.search(r"^\s+severity: (critical|warning)$", block, flags=re.M), f"{name}: no severity"
            assert "summary:" in block and "description:" in block, f"{name}: no summary/description"
            links = re.findall(r"docs/monitoring\.md#([a-z0-9]+)", block)
            assert links, f"{name}: the description links no section of docs/monitoring.md"
            assert set(links) <= anchors, f"{name}: docs/monitoring.md has no section {links}"
