"""Config loading: defaults, units, one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from executor_agent.executor_config import AgentConfig, ConfigError, ImagePolicy, load_config


def test_defaults() -> None:
    c = AgentConfig()
    assert c.socket_path == Path("/run/executor-agent/agent.sock")
    assert c.jobs_dir == Path("/var/lib/executor-agent/jobs")
    assert c.podman_url == "unix:///run/podman/podman.sock"
    assert (c.slots, c.keep_job_dirs, c.image_policy) == (1, False, ImagePolicy.LOCAL_OR_PULL)


def test_load(tmp_path: Path) -> None:
    p = tmp_path / "a.toml"
    p.write_text('slots = 4\nimage_policy = "local_only"\n[container]\npids_limit = 100\n')
    c = load_config(p)
    assert (c.slots, c.image_policy, c.container.pids_limit) == (4, ImagePolicy.LOCAL_ONLY, 100)


@pytest.mark.parametrize("text, expected", [
    ("slots = 0", "slots: Input should be greater than or equal to 1"),
    ("sluts = 1", "sluts: Extra inputs are not permitted"),
    ("slots = ", "not valid TOML"),
    ("[container]\nmemory_limit_mib = -1", "container.memory_limit_mib"),
])
def test_errors_are_one_line(tmp_path: Path, text: str, expected: str) -> None:
    p = tmp_path / "a.toml"
    p.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(p)
    assert expected in str(info.value) and "\n" not in str(info.value)
    assert str(info.value).startswith(str(p))


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        load_config(tmp_path / "missing.toml")
