"""`miner-agent doctor`'s verdicts, each from the condition a user would meet (pure functions)."""

from __future__ import annotations

from executor_agent.cve_probe import CONTAINED_LINE, ESCAPED_LINE, probe_verdict
from executor_agent.doctor import parse_toolkit_version, toolkit_verdict
from miner_agent.doctor.chain_checks import axon_rows, clock_row, commitment_row
from miner_agent.doctor.class_checks import classes_row, parse_class_weights
from miner_agent.doctor.executor_checks import AgentCheck, ExecutorFacts, executor_rows
from miner_agent.doctor.model import CheckRow, DoctorReport
from miner_agent.doctor.render import render_table
from miner_agent.doctor.validator_checks import receipts_row, validators_row

PUBLIC = "203.0.113.7"
NOW = 1_800_000_000.0


def _axon(announced: tuple[str, int] | None, **changes: object) -> dict[str, CheckRow]:
    args: dict[str, object] = dict(announce_enabled=True, static_backend=False, want_ip=PUBLIC, want_port=8000,
                                   public_ip=PUBLIC, public_error="", listening=True)
    args.update(changes)
    return {row.check: row for row in axon_rows(announced, **args)}  # type: ignore[arg-type]


def test_axon_matching_the_config_and_public_address_passes() -> None:
    rows = _axon((PUBLIC, 8000))
    assert [r.result for r in rows.values()] == ["ok", "ok", "ok"]


def test_wrong_axon_fails_and_names_both_addresses() -> None:
    rows = _axon(("198.51.100.9", 9000))
    row = rows["axon on chain"]
    assert row.result == "FAIL" and "198.51.100.9:9000" in row.detail and PUBLIC in row.detail and "8000" in row.detail
    assert rows["axon IP is public"].result == "FAIL" and f'announce_ip = "{PUBLIC}"' in rows["axon IP is public"].fix


def test_missing_axon_and_closed_port() -> None:
    rows = _axon(None, listening=False)
    assert rows["axon on chain"].result == "FAIL" and rows["axon port listening"].result == "FAIL"
    assert _axon(None, static_backend=True)["axon on chain"].result == "not checked"
    assert _axon((PUBLIC, 8000), public_ip=None, public_error="no service")["axon IP is public"].result == "not checked"


def test_commitment_against_the_current_manifest() -> None:
    manifest = {"always_on.cpu.8c.16gb": 2}
    assert commitment_row("<M:C2>", manifest, commit_enabled=True).result == "ok"
    stale = commitment_row("other<M:C1>", manifest, commit_enabled=True)
    assert stale.result == "FAIL" and "<M:C1>" in stale.detail and "<M:C2>" in stale.detail
    assert commitment_row("", manifest, commit_enabled=False).fix == "set [chain] commit_manifest = true"
    assert commitment_row("<M:C2>", None, commit_enabled=True).result == "not checked"
    # Static backend: the running miner's commitment is only in its memory; a staged one is still judged.
    assert commitment_row("", manifest, commit_enabled=True, static_backend=True).result == "not checked"
    assert commitment_row("<M:C1>", manifest, commit_enabled=True, static_backend=True).result == "FAIL"
    assert commitment_row("", manifest, commit_enabled=True).result == "FAIL"


def test_clock_skew_thresholds() -> None:
    assert clock_row(NOW, NOW - 5).result == "ok"
    assert clock_row(NOW, NOW - 45).result == "warn"
    assert clock_row(NOW, NOW + 90).result == "FAIL"  # behind by 90 s: validator auth refused
    ahead = clock_row(NOW, NOW - 7200)
    assert ahead.result == "FAIL" and "over an hour ahead" in ahead.detail and "timedatectl" in ahead.fix
    assert clock_row(NOW, None, "chain down").result == "not checked"


def test_validator_connections() -> None:
    permitted = {"5Aaaaaaaaaa", "5Bbbbbbbbbb"}
    assert validators_row(permitted, {"5Aaaaaaaaaa": NOW - 60, "5Bbbbbbbbbb": NOW - 10}, NOW).result == "ok"
    some = validators_row(permitted, {"5Aaaaaaaaaa": NOW - 60}, NOW)
    assert some.result == "warn" and "never connected: 5Bbbbbbb" in some.detail
    none = validators_row(permitted, {"5Aaaaaaaaaa": NOW - 7200}, NOW)
    assert none.result == "FAIL" and "0 of 2" in none.detail
    assert validators_row(set(), {}, NOW).result == "warn"
    assert validators_row(permitted, None, NOW).result == "not checked"


def test_receipt_page_fetches() -> None:
    assert receipts_row(NOW - 120, NOW, miner_running=True).result == "ok"
    assert receipts_row(NOW - 3 * 3600, NOW, miner_running=True).result == "warn"
    assert receipts_row(None, NOW, miner_running=True).result == "warn"
    assert receipts_row(None, NOW, miner_running=False).result == "not checked"


def test_class_weights_parse_like_the_validator() -> None:
    weights, problems = parse_class_weights("spin_up-4min.gpu-24gb=99, always_on.llm.a6000=1,bogus=3,x")
    assert weights == {"spin_up-4min.gpu-24gb": 99.0, "always_on.llm.a6000": 1.0}
    assert len(problems) == 2


def test_class_weighted_zero_or_absent_earns_nothing() -> None:
    zero = classes_row({"always_on.cpu.8c.16gb"}, "always_on.cpu.8c.16gb=0,spin_up-4min.gpu-24gb=100")
    assert zero.result == "warn" and "always_on.cpu.8c.16gb earns nothing" in zero.detail
    assert "weighted: spin_up-4min.gpu-24gb=100" in zero.detail
    # no value in the dynamic config: production's is assumed, which gives the old default nothing
    old_default = classes_row({"spin_up-4min.gpu-24gb"}, None)
    assert old_default.result == "warn" and "assumed" in old_default.detail
    assert classes_row({"always_on.cpu.8c.16gb"}, "always_on.cpu.8c.16gb=100").result == "ok"


def test_toolkit_version_gate() -> None:
    out = "NVIDIA Container Toolkit CLI version 1.17.4\ncommit: 9b69590c\n"
    assert parse_toolkit_version(out) == (1, 17, 4)
    assert toolkit_verdict(True, out, "nvidia-ctk")[0] == "ok"
    old = toolkit_verdict(True, "NVIDIA Container Toolkit CLI version 1.16.2\n", "nvidia-ctk")
    assert old[0] == "FAIL" and "older than 1.17.4" in old[1]
    missing = toolkit_verdict(True, None, None)
    assert missing[0] == "FAIL" and "apt-get install nvidia-container-toolkit" in missing[1]
    assert toolkit_verdict(False, None, None)[0] == "not checked"


def test_cve_probe_verdicts() -> None:
    assert probe_verdict(0, CONTAINED_LINE + "\n", "img")[0] == "ok"
    assert probe_verdict(0, ESCAPED_LINE + "\n", "img")[0] == "FAIL"
    assert probe_verdict(None, "", "img")[0] == "FAIL"
    assert probe_verdict(127, "sh: not found", "img")[0] == "FAIL"


def _executor(**changes: object) -> ExecutorFacts:
    base = dict(name="gpu-1", executor_class="always_on.cpu.8c.16gb", link="up", slots=2, agent_version="0.1.0",
                agent_checks=[AgentCheck(check="podman API", status="ok", detail="podman 4.3.1")])
    base.update(changes)
    return ExecutorFacts(**base)  # type: ignore[arg-type]


def test_executor_rows() -> None:
    assert [r.result for r in executor_rows(_executor())] == ["ok", "ok"]
    down = executor_rows(_executor(link="down", down_for_s=42, last_error="connection refused", agent_checks=None))
    assert len(down) == 1 and down[0].result == "FAIL" and "connection refused" in down[0].detail
    old = executor_rows(_executor(agent_checks=None, agent_too_old=True, doctor_error="malformed frame"))
    assert old[1].result == "not checked" and "agent too old to report" in old[1].detail
    bad = executor_rows(_executor(agent_checks=[AgentCheck(check="disk", status="FAIL", detail="3 GiB free")]))
    assert bad[1].check == "executor gpu-1: disk" and bad[1].result == "FAIL"


def test_exit_code_and_table() -> None:
    report = DoctorReport(rows=[CheckRow(check="a", result="ok", detail="fine"),
                                CheckRow(check="b", result="warn", detail="hm", fix="look")])
    assert report.exit_code() == 0
    report.rows.append(CheckRow(check="c", result="FAIL", detail="broken", fix="mend it"))
    assert report.exit_code() == 1
    table = render_table(report)
    assert "broken. Fix: mend it" in table and table.splitlines()[-1] == "doctor: 1 failed, 1 warning(s), 3 checks"


async def test_static_backend_asks_no_discovery_service_unless_configured() -> None:
    """The offline install sends nothing beyond its listener; doctor keeps to that."""
    from miner_agent.doctor.gather import public_address
    from miner_agent.miner_config import MinerConfig

    ip, why = await public_address(MinerConfig())
    assert ip is None and "ip_discovery_urls" in why
