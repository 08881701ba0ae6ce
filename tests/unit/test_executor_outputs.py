"""Inline results: stdout/stderr truncation and the artifacts rule, as the stock executor."""

from __future__ import annotations

import base64
from pathlib import Path

from executor_agent.outputs.collect import (
    MAX_ARTIFACT_BYTES,
    MAX_RESULT_CHARS,
    collect_artifacts,
    truncate_output,
    write_full_outputs,
)


def test_short_output_unchanged() -> None:
    text = "x" * MAX_RESULT_CHARS
    assert truncate_output(text) is text


def test_long_output_keeps_head_and_tail() -> None:
    text = "a" * 600_000 + "b" * 400_001
    out = truncate_output(text)
    assert out == "a" * 500_000 + " ... " + "a" * 99_999 + "b" * 400_001
    assert len(out) == 1_000_005


def test_full_outputs_written(tmp_path: Path) -> None:
    write_full_outputs(tmp_path / "out", "o" * 2_000_000, "e")
    assert len((tmp_path / "out" / "stdout.txt").read_text()) == 2_000_000
    assert (tmp_path / "out" / "stderr.txt").read_text() == "e"


def test_artifacts_rule(tmp_path: Path) -> None:
    (tmp_path / "small.json").write_bytes(b'{"ok": true}')
    (tmp_path / "limit.bin").write_bytes(b"x" * MAX_ARTIFACT_BYTES)  # not strictly smaller: skipped
    (tmp_path / "just_under.bin").write_bytes(b"y" * (MAX_ARTIFACT_BYTES - 1))
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "nested.txt").write_text("no")
    (tmp_path / "link").symlink_to("/etc/hostname")
    result = collect_artifacts(tmp_path, "/artifacts/")
    assert sorted(result) == ["/artifacts/just_under.bin", "/artifacts/small.json"]
    assert base64.b64decode(result["/artifacts/small.json"]) == b'{"ok": true}'


def test_missing_artifacts_dir(tmp_path: Path) -> None:
    assert collect_artifacts(tmp_path / "nope", "/a") == {}
