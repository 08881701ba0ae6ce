"""`executor-agent doctor` says when jobs cannot get a user namespace (no subordinate ids)."""

from __future__ import annotations

from pathlib import Path

from executor_agent.doctor import check_subids, subid_ranges
from executor_agent.executor_config import AgentConfig


def test_missing_or_short_ranges_fail_with_the_fix(tmp_path: Path) -> None:
    uid, gid = tmp_path / "subuid", tmp_path / "subgid"
    uid.write_text("containers:2147483647:2147483648\n")
    gid.write_text("someone:100000:65536\ncontainers:100000:1000\n")
    status, detail = check_subids(AgentConfig(), (uid, gid))
    assert status == "FAIL" and str(gid) in detail and str(uid) not in detail
    assert "containers:2147483647:2147483648" in detail


def test_the_packages_ranges_pass(tmp_path: Path) -> None:
    files = (tmp_path / "subuid", tmp_path / "subgid")
    for f in files:
        f.write_text("containers:2147483647:2147483648\n")
    status, detail = check_subids(AgentConfig(slots=4), files)
    assert status == "ok" and "32768 concurrent" in detail
    assert subid_ranges(tmp_path / "absent") == 0
