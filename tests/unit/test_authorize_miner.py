"""`executor-agent authorize-miner`: key parsing, the two files it writes, idempotency, and
the operator guide showing exactly those files (so the docs and the command cannot drift)."""

from __future__ import annotations

import base64
import re
import stat
import struct
import subprocess
from collections.abc import Sequence
from pathlib import Path

import pytest

from executor_agent import authorize as A
from executor_agent.cli import main

REPO = Path(__file__).resolve().parents[2]
GUIDE = REPO / "docs" / "operator-guide.md"


def _ed25519_line(fill: int, comment: str) -> str:
    """An ed25519 public key line in OpenSSH's wire format (a fixed 32-byte point)."""
    blob = struct.pack(">I", 11) + b"ssh-ed25519" + struct.pack(">I", 32) + bytes([fill]) * 32
    return f"ssh-ed25519 {base64.b64encode(blob).decode()} {comment}"


KEY = _ed25519_line(1, "miner-agent")
OTHER = _ed25519_line(2, "other")


def _guide_block(marker: str) -> str:
    match = re.search(rf"<!-- authorize-miner:{marker} -->\n```\n(.*?)```", GUIDE.read_text(), re.DOTALL)
    assert match, f"docs/operator-guide.md lost its authorize-miner:{marker} block"
    return match.group(1)


def test_the_operator_guide_shows_exactly_what_the_command_writes() -> None:
    placeholder = A.PublicKey(key_type="ssh-ed25519", blob="AAAA...", comment="miner-agent")
    assert _guide_block("authorized_keys") == A.render_authorized_line(placeholder) + "\n"
    assert _guide_block("dropin") == A.render_dropin()


def test_the_dropin_keeps_tcp_forwarding_at_local_and_narrows_it_to_the_socket() -> None:
    dropin = A.render_dropin("executor-agent", Path("/run/x/agent.sock"))
    assert "AllowTcpForwarding local" in dropin and "AllowTcpForwarding no" not in dropin
    assert "PermitOpen [/run/x/agent.sock]:*" in dropin and "ForceCommand /usr/sbin/nologin" in dropin
    assert all(line in dropin for line in ("PermitTTY no", "AllowAgentForwarding no", "X11Forwarding no"))


@pytest.mark.parametrize("text, says", [
    ("-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEA\n-----END OPENSSH PRIVATE KEY-----", "private key"),
    ("", "one public key line"),
    (f"{KEY}\n{OTHER}", "one public key line"),
    ("restrict,port-forwarding " + KEY, "not a public key"),
    ("ssh-ed25519", "without its base64"),
    ("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHn0dYBLMfV3t0Vt!! x", "damaged"),
    ("ssh-ed25519 " + KEY.split()[1][:-3] + " x", "damaged"),
    ("ssh-rsa " + KEY.split()[1], "its data is 'ssh-ed25519'"),
])
def test_anything_but_one_public_key_line_is_refused(text: str, says: str) -> None:
    with pytest.raises(A.AuthorizeError, match=re.escape(says)):
        A.parse_public_key(text)


def test_a_public_key_parses_with_its_comment() -> None:
    key = A.parse_public_key(f"  {KEY}\n")
    assert (key.key_type, key.comment, key.line) == ("ssh-ed25519", "miner-agent", KEY)


def test_merging_replaces_the_same_key_and_keeps_others() -> None:
    key = A.parse_public_key(KEY)
    other_line = A.render_authorized_line(A.parse_public_key(OTHER))
    old = f"{other_line}\nssh-ed25519 {key.blob} miner-agent\n"
    merged = A.merge_authorized_keys(old, A.render_authorized_line(key), key)
    assert merged == f"{other_line}\n{A.render_authorized_line(key)}\n"
    assert A.merge_authorized_keys(merged, A.render_authorized_line(key), key) == merged


class Sshd:
    """Records the commands authorize() runs; `sshd -t` answers `check_rc`."""

    def __init__(self, check_rc: int = 0) -> None:
        self.check_rc, self.calls = check_rc, list[list[str]]()

    def __call__(self, argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
        self.calls.append(list(argv))
        rc = self.check_rc if argv[0] == A.SSHD else 0
        return subprocess.CompletedProcess(argv, rc, "", "line 3: Bad configuration option" if rc else "")


@pytest.fixture
def target(tmp_path: Path) -> A.Target:
    (tmp_path / "sshd_config.d").mkdir()
    (tmp_path / "host.pub").write_text("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHost root@ex1\n")
    return A.Target(user="root", dropin=tmp_path / "sshd_config.d" / "executor-agent.conf",
                    host_key=tmp_path / "host.pub", authorized_keys=tmp_path / "home" / ".ssh" / "authorized_keys")


def test_authorize_writes_private_files_reloads_once_and_is_idempotent(target: A.Target) -> None:
    sshd = Sshd()
    first = A.authorize(A.parse_public_key(KEY), target, run=sshd)
    assert first.keys_changed and first.dropin_changed and first.reloaded
    assert first.host_key_line == "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHost"
    assert target.authorized_keys is not None
    assert stat.S_IMODE(target.authorized_keys.stat().st_mode) == A.AUTHORIZED_KEYS_MODE
    assert stat.S_IMODE(target.authorized_keys.parent.stat().st_mode) == A.SSH_DIR_MODE
    assert target.dropin.read_text() == A.render_dropin("root")
    again = A.authorize(A.parse_public_key(KEY), target, run=sshd)
    assert not (again.keys_changed or again.dropin_changed or again.reloaded)
    assert target.authorized_keys.read_text().count(KEY.split()[1]) == 1
    assert sshd.calls.count(list(A.RELOAD_COMMAND)) == 1 and sshd.calls.count([A.SSHD, "-t"]) == 2


def test_a_config_sshd_refuses_is_rolled_back(target: A.Target) -> None:
    assert target.authorized_keys is not None
    target.authorized_keys.parent.mkdir(parents=True)
    target.authorized_keys.write_text(OTHER + "\n")
    with pytest.raises(A.AuthorizeError, match="sshd -t rejected.*Bad configuration option"):
        A.authorize(A.parse_public_key(KEY), target, run=Sshd(check_rc=255))
    assert target.authorized_keys.read_text() == OTHER + "\n" and not target.dropin.exists()


def test_real_sshd_accepts_the_dropin(tmp_path: Path, target: A.Target) -> None:
    """Debian's sshd itself parses the Match block (no reload: nothing is running here)."""
    host_key = tmp_path / "hk"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(host_key)], check=True)
    main_config = tmp_path / "sshd_config"
    main_config.write_text(f"HostKey {host_key}\nInclude {target.dropin}\n")
    done = A.authorize(A.parse_public_key(KEY), A.Target(
        user="root", dropin=target.dropin, host_key=host_key.with_suffix(".pub"),
        authorized_keys=target.authorized_keys, sshd_config=main_config, reload=False))
    assert done.dropin_changed and not done.reloaded


def test_cli_prints_the_host_key_to_pin_and_refuses_a_private_key(
        target: A.Target, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    (tmp_path / "agent.toml").write_text('socket_path = "/run/x/agent.sock"\n')
    common = ["--config", str(tmp_path / "agent.toml"), "--user", "root", "--authorized-keys",
              str(target.authorized_keys), "--sshd-dropin", str(target.dropin), "--host-key", str(target.host_key),
              "--no-reload"]
    assert main(["authorize-miner", "-----BEGIN OPENSSH PRIVATE KEY-----", *common]) == 2
    assert "private key" in capsys.readouterr().err
    assert not target.dropin.exists()
    host_key = tmp_path / "hk"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(host_key)], check=True)
    (tmp_path / "sshd_config").write_text(f"HostKey {host_key}\nInclude {target.dropin}\n")
    for _ in range(2):
        assert main(["authorize-miner", KEY, *common, "--sshd-config", str(tmp_path / "sshd_config")]) == 0
    out = capsys.readouterr().out
    assert "already authorized" in out and 'host_key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHost"' in out
    assert 'permitopen="[/run/x/agent.sock]:*"' in target.authorized_keys.read_text()  # type: ignore[union-attr]
