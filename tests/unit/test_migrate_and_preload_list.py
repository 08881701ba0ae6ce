"""The pure halves of `miner-agent config import-docker-config` and `executor-agent preload`."""

from __future__ import annotations

import tomllib
from datetime import datetime, timezone
from pathlib import Path

import asyncssh
import pytest

from executor_agent.preload import PreloadError, images_from_dynamic_config, plan
from miner_agent.migrate import MigrationError, convert, parse_docker_config, parse_env
from miner_agent.miner_config import MinerConfig

STOCK_YAML = """\
# the stock miner's docker_config.yaml
self:
  executor_class: DEFAULT_EXECUTOR_CLASS
  mode: local

worker-1:
  executor_class: "always_on.llm.a6000"
  mode: ssh
  host: 10.0.0.5
  ssh_port: 2222
  username: ubuntu   # docker group
  key_path: /root/vendor/id_ed25519
"""
STOCK_ENV = """\
BITTENSOR_MINER_PORT=8123
BITTENSOR_WALLET_NAME="miner"
export BITTENSOR_WALLET_HOTKEY_NAME=hk
DEFAULT_EXECUTOR_CLASS=always_on.test
HOST_VENDOR_DIR=/home/op/vendor
HF_ACCESS_TOKEN=hf_secret
"""
NOW = datetime(2026, 6, 1, tzinfo=timezone.utc)


def test_stock_yaml_and_env_become_a_config_that_only_lacks_the_pinned_host_key() -> None:
    result = convert(parse_docker_config(STOCK_YAML), parse_env(STOCK_ENV))
    raw = tomllib.loads(result.toml)
    assert raw["miner"] == {"listen_port": 8123}
    assert raw["wallet"] == {"name": "miner", "hotkey": "hk"}
    local, remote = raw["executors"]
    assert local == {"name": "self", "executor_class": "always_on.test", "mode": "local"}
    assert remote["port"] == 2222 and remote["user"] == "ubuntu"
    assert remote["key_path"] == "/home/op/vendor/id_ed25519"
    assert "host_key" not in remote and "ssh-keyscan -t ed25519 10.0.0.5" in result.toml
    assert "hf_secret" not in result.toml
    remote["host_key"] = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode().strip()
    MinerConfig.model_validate(raw)  # once pinned, it loads


@pytest.mark.parametrize("text, fragment", [
    ("a:\n  mode: local\n", "executor_class is required"),
    ("a:\n  executor_class: nope\n", "is not one of"),
    ("a:\n  executor_class: always_on.test\n  gpu:\n    x: 1\n", "nested mappings"),
    ("a: [1, 2]\n", "must be a mapping"),
    ("a:\n  executor_class: always_on.test\nb:\n  executor_class: always_on.test\n", "more than one local"),
    ("a:\n  executor_class: always_on.test\n  mode: ssh\n", "mode ssh needs host, username, key_path"),
])
def test_anything_outside_the_stock_shape_is_refused_with_its_place(text: str, fragment: str) -> None:
    with pytest.raises(MigrationError, match=fragment):
        convert(parse_docker_config(text, "dc.yaml"), source="dc.yaml")


def test_cli_prints_toml_and_notes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from miner_agent.commands.main import main

    (tmp_path / "dc.yaml").write_text(STOCK_YAML)
    assert main(["config", "import-docker-config", str(tmp_path / "dc.yaml"), "--vendor-dir", "/srv/keys"]) == 0
    out, err = capsys.readouterr()
    assert 'key_path = "/srv/keys/id_ed25519"' in out and "fill in host_key" in err
    (tmp_path / "bad.yaml").write_text("a:\n\tmode: local\n")
    assert main(["config", "import-docker-config", str(tmp_path / "bad.yaml")]) == 2
    assert "bad.yaml:2: tabs in indentation" in capsys.readouterr().err


def test_dynamic_config_last_applicable_item_wins() -> None:
    doc = {"DYNAMIC_PRELOAD_DOCKER_JOB_IMAGES": {"description": "", "items": [
        {"value": ["old/image:1"], "effective_from": None},
        {"value": '["a/b:1", "c/d"]', "effective_from": "2026-01-01T00:00:00Z"},
        {"value": ["future/image:1"], "effective_from": "2027-01-01T00:00:00"},
    ]}, "DYNAMIC_OTHER": {"items": []}}
    assert images_from_dynamic_config(doc, NOW) == ["a/b:1", "c/d"]
    assert images_from_dynamic_config({}, NOW) == []
    assert plan(["c/d:latest", "x/y"], ["a/b:1", "c/d"]) == ["c/d:latest", "x/y:latest", "a/b:1"]


@pytest.mark.parametrize("doc, fragment", [
    ([], "not a JSON object"),
    ({"DYNAMIC_PRELOAD_DOCKER_JOB_IMAGES": {"items": {}}}, "items is not a list"),
    ({"DYNAMIC_PRELOAD_DOCKER_JOB_IMAGES": {"items": [{"value": [1]}]}}, "not a list of image names"),
    ({"DYNAMIC_PRELOAD_DOCKER_JOB_IMAGES": {"items": [{"value": [], "effective_from": "soon"}]}}, "is not a date"),
])
def test_a_malformed_dynamic_config_is_named(doc: object, fragment: str) -> None:
    with pytest.raises(PreloadError, match=fragment):
        images_from_dynamic_config(doc, NOW)
