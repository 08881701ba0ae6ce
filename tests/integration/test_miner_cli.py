"""`miner-agent` as an operator runs it: real processes, real exit codes, real output."""

from __future__ import annotations

from tests.fixtures.miner import run_cli, write_config


async def test_status_lists_executors_and_exits_nonzero_when_one_is_down(miner_config, start_miner, tmp_path) -> None:
    await start_miner(miner_config)
    cfg = write_config(tmp_path / "miner.toml", miner_config)
    code, out, err = await run_cli("status", "--config", str(cfg))
    assert code == 1, err  # the only executor has no agent: that is worth a non-zero status
    assert "local" in out and "always_on.test" in out and "no executor agent listening" in out
    assert "no running jobs" in out


async def test_drain_and_undrain(miner_config, start_miner, tmp_path) -> None:
    agent = await start_miner(miner_config)
    cfg = write_config(tmp_path / "miner.toml", miner_config)
    code, out, _ = await run_cli("executors", "drain", "local", "--config", str(cfg))
    assert code == 0 and "executor local drained" in out
    assert "local" in agent.ctx.fleet.drained
    code, _, err = await run_cli("executors", "drain", "nope", "--config", str(cfg))
    assert code == 1 and "no executor named 'nope' (configured: local)" in err
    code, out, _ = await run_cli("executors", "undrain", "local", "--config", str(cfg))
    assert code == 0 and "local" not in agent.ctx.fleet.drained


async def test_drain_survives_a_restart(miner_config, start_miner, tmp_path) -> None:
    agent = await start_miner(miner_config)
    cfg = write_config(tmp_path / "miner.toml", miner_config)
    assert (await run_cli("executors", "drain", "local", "--config", str(cfg)))[0] == 0
    await agent.stop()
    again = await start_miner(miner_config)
    assert "local" in again.ctx.fleet.drained


async def test_status_without_a_running_miner_is_one_clear_line(miner_config, tmp_path) -> None:
    cfg = write_config(tmp_path / "miner.toml", miner_config)
    code, out, err = await run_cli("status", "--config", str(cfg))
    assert code == 1 and out == ""
    assert err.startswith("miner-agent: no admin socket at") and err.count("\n") == 1


async def test_bad_config_is_one_line_exit_2(tmp_path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[miner]\nlisten_port = 'eighty'\n")
    code, _, err = await run_cli("run", "--config", str(bad))
    assert code == 2 and "miner.listen_port" in err and "Traceback" not in err
    code, _, err = await run_cli("run", "--config", str(tmp_path / "missing.toml"))
    assert code == 2 and "no such file" in err
    bad.write_text("[[executors]]\nname = 'a'\nmode = 'ssh'\nhost = 'h'\n")
    code, _, err = await run_cli("run", "--config", str(bad))
    assert code == 2 and "executors.0" in err
    bad.write_text("[[executors]]\nname = 'a'\nmode = 'ssh'\nhost = 'h'\nkey_path = '/k'\nhost_key = 'AAAA'\n")
    code, _, err = await run_cli("run", "--config", str(bad))
    assert code == 2 and "executors.0.ssh.host_key" in err and "public key line" in err


async def test_missing_wallet_is_one_clear_line(miner_config, tmp_path) -> None:
    cfg = miner_config.model_copy(update={"wallet": miner_config.wallet.model_copy(update={"name": "nobody"})})
    code, _, err = await run_cli("run", "--config", str(write_config(tmp_path / "m.toml", cfg)))
    assert code == 2 and "hotkey file" in err and "not found" in err and "Traceback" not in err


async def test_help_teaches_with_examples() -> None:
    code, out, _ = await run_cli("--help")
    assert code == 0 and "examples:" in out and "miner-agent run --config" in out


COMMENTED = """\
# Operator notes: do not lose me.
[miner]
listen_port = 8000   # the axon port
state_dir = "{state}"

[wallet]
path = "{wallets}"
name = "miner"

[validators]
allow = []  # filled from the chain later
"""


def _commented(tmp_path, miner_config):
    path = tmp_path / "commented.toml"
    path.write_text(COMMENTED.format(state=tmp_path / "state", wallets=miner_config.wallet.path))
    return path


async def test_config_set_keeps_comments_and_refuses_bad_values(tmp_path, miner_config) -> None:
    path = _commented(tmp_path, miner_config)
    code, out, err = await run_cli("config", "set", "miner.listen_port", "8001", "--config", str(path))
    assert code == 0, err
    text = path.read_text()
    assert "# Operator notes: do not lose me." in text and "# the axon port" in text and "# filled from" in text
    assert "listen_port = 8001" in text
    before = path.read_text()
    code, _, err = await run_cli("config", "set", "miner.listen_port", "eighty", "--config", str(path))
    assert code == 2 and "miner.listen_port" in err and "nothing was changed" in err
    assert path.read_text() == before
    code, _, _ = await run_cli("config", "set", "validators.allow", '["5GrwvaEF5zXb26Fz9rcQpDWS57CtERHpNehXCPcNoHGKutQY"]',
                               "--config", str(path))
    assert code == 0 and '"5GrwvaEF5zXb26Fz9rcQpDWS57CtERHpNehXCPcNoHGKutQY"' in path.read_text()


async def test_executors_add_and_remove_edit_the_file(tmp_path, miner_config) -> None:
    from miner_agent.miner_config import SshExecutor, load_config

    path = _commented(tmp_path, miner_config)
    key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"
    code, out, err = await run_cli("executors", "add", "gpu-1", "--mode", "ssh", "--host", "10.0.0.5",
                                   "--key-path", "/etc/miner-agent/id_ed25519", "--host-key", key,
                                   "--config", str(path))
    assert code == 0, err
    entry = load_config(path).executors[0]
    assert isinstance(entry, SshExecutor) and (entry.host, entry.port, entry.host_key) == ("10.0.0.5", 22, key)
    assert "# Operator notes" in path.read_text()
    code, _, err = await run_cli("executors", "add", "gpu-1", "--config", str(path))
    assert code == 2 and "already exists" in err
    code, _, err = await run_cli("executors", "add", "gpu-2", "--mode", "ssh", "--config", str(path))
    assert code == 2 and "nothing was changed" in err  # ssh without host/key/host_key
    code, _, _ = await run_cli("executors", "remove", "gpu-1", "--config", str(path))
    assert code == 0 and load_config(path).executors == []
    code, _, err = await run_cli("executors", "remove", "gpu-9", "--config", str(path))
    assert code == 2 and "no executor named 'gpu-9'" in err


async def test_config_check_reports_what_will_not_work(tmp_path, miner_config) -> None:
    good = write_config(tmp_path / "good.toml", miner_config)
    code, out, _ = await run_cli("config", "check", "--config", str(good))
    assert code == 0 and out.strip().endswith("OK") and "hotkey" in out
    bad = miner_config.model_copy(update={"validators": miner_config.validators.model_copy(update={"allow": ["nope"]})})
    code, out, _ = await run_cli("config", "check", "--config", str(write_config(tmp_path / "bad.toml", bad)))
    assert code == 1 and "'nope' is not an SS58 address" in out
