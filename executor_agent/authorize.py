"""`executor-agent authorize-miner`: let one miner key in over SSH, for the agent socket only.

The settings live here, once, because OpenSSH's rules are easy to get wrong by hand: on
OpenSSH 9.2 a `direct-streamlocal` channel (the miner's link to the agent socket) is checked
against the same permission set as local TCP forwarding, so `AllowTcpForwarding no` refuses
the socket too ("Received request to connect to path ..., but the request was denied").
So TCP forwarding stays `local` and `PermitOpen` (plus the key's own `permitopen`) narrows
what it may open to the agent socket alone: a TCP target never matches a path, and a
different socket path is refused. `restrict` does not stop a command from running, so the
key and the Match block both force `nologin`. docs/operator-guide.md shows exactly what
`render_authorized_line` and `render_dropin` produce; a unit test keeps the two equal.
"""

from __future__ import annotations

import base64
import binascii
import os
import pwd
import struct
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict

DEFAULT_USER = "executor-agent"
DEFAULT_SOCKET = Path("/run/executor-agent/agent.sock")
DEFAULT_DROPIN = Path("/etc/ssh/sshd_config.d/executor-agent.conf")
DEFAULT_HOST_KEY = Path("/etc/ssh/ssh_host_ed25519_key.pub")
SSHD = "/usr/sbin/sshd"
NOLOGIN = "/usr/sbin/nologin"
RELOAD_COMMAND = ("systemctl", "reload", "ssh")  # Debian's unit is ssh.service
COMMAND_TIMEOUT_S = 30.0
SSH_DIR_MODE = 0o700
AUTHORIZED_KEYS_MODE = 0o600
DROPIN_MODE = 0o644
MAX_KEY_LINE_CHARS = 16_384  # far above an RSA-16384 public key; a pasted file is refused early

# Public key types OpenSSH accepts in authorized_keys (certificates and FIDO keys included).
KEY_TYPES = frozenset({
    "ssh-ed25519", "ssh-rsa", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com", "sk-ecdsa-sha2-nistp256@openssh.com",
    "ssh-ed25519-cert-v01@openssh.com", "ssh-rsa-cert-v01@openssh.com",
})


class AuthorizeError(Exception):
    """Something the operator has to fix; the message says what."""


class PublicKey(BaseModel):
    """One OpenSSH public key as pasted from the miner host's `id_ed25519.pub`."""

    model_config = ConfigDict(frozen=True)

    key_type: str
    blob: str  # base64, as in the .pub file
    comment: str = ""

    @property
    def line(self) -> str:
        return " ".join(part for part in (self.key_type, self.blob, self.comment) if part)


def parse_public_key(text: str) -> PublicKey:
    """Accept exactly one public key line; refuse a private key, options, or garbage.

    The blob is decoded and its embedded type name compared with the stated one, so a
    truncated paste or a key of the wrong kind is caught here, not by sshd at login."""
    text = text.strip()
    if "PRIVATE KEY" in text:
        raise AuthorizeError("that is a private key: paste the miner's public key (the .pub file), "
                             "and treat this private key as leaked")
    if not text or "\n" in text or len(text) > MAX_KEY_LINE_CHARS:
        raise AuthorizeError("expected one public key line like 'ssh-ed25519 AAAA... miner-agent'")
    parts = text.split(maxsplit=2)
    if parts[0] not in KEY_TYPES:
        raise AuthorizeError(f"not a public key: {parts[0][:40]!r} is not an SSH key type "
                             f"(paste the line without authorized_keys options)")
    if len(parts) < 2:
        raise AuthorizeError(f"{parts[0]} key without its base64 part")
    try:
        raw = base64.b64decode(parts[1], validate=True)
        (name_len,) = struct.unpack(">I", raw[:4])
        embedded = raw[4:4 + name_len].decode("ascii")
    except (binascii.Error, struct.error, UnicodeDecodeError):
        raise AuthorizeError("the key's base64 part is damaged (truncated paste?)") from None
    if embedded != parts[0]:
        raise AuthorizeError(f"the key says {parts[0]} but its data is {embedded[:40]!r} (damaged paste?)")
    return PublicKey(key_type=parts[0], blob=parts[1], comment=parts[2] if len(parts) > 2 else "")


def _permitopen(socket: Path) -> str:
    # Brackets: sshd splits host from port at ':' or '/', so a bare path reads as "missing host".
    return f"[{socket}]:*"


def render_authorized_line(key: PublicKey, socket: Path = DEFAULT_SOCKET) -> str:
    """The key's authorized_keys line: no pty, agent or X11 forwarding, no command, and
    channels to the agent socket only, even if the sshd drop-in were missing."""
    options = f'restrict,port-forwarding,permitopen="{_permitopen(socket)}",command="{NOLOGIN}"'
    return f"{options} {key.line}"


def render_dropin(user: str = DEFAULT_USER, socket: Path = DEFAULT_SOCKET) -> str:
    """The sshd drop-in for the agent user (see the module docstring for why each line)."""
    return (
        f"# Written by executor-agent authorize-miner: the miner may open the agent socket, nothing else.\n"
        f"Match User {user}\n"
        f"    AllowTcpForwarding local\n"
        f"    PermitOpen {_permitopen(socket)}\n"
        f"    AllowStreamLocalForwarding local\n"
        f"    PermitListen none\n"
        f"    X11Forwarding no\n"
        f"    AllowAgentForwarding no\n"
        f"    PermitTTY no\n"
        f"    ForceCommand {NOLOGIN}\n"
    )


def merge_authorized_keys(existing: str, line: str, key: PublicKey) -> str:
    """`existing` with `line` in place of any earlier line for the same key blob (so a rerun,
    or a rerun after the options changed, leaves one line), other keys untouched."""
    kept = [old for old in existing.splitlines() if key.blob not in old.split()]
    return "\n".join([*kept, line]) + "\n"


Runner = Callable[[Sequence[str]], subprocess.CompletedProcess[str]]


def _run(argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S, check=False)


@dataclass(frozen=True)
class Target:
    """Where the files go (the defaults are a Debian executor host's)."""

    user: str = DEFAULT_USER
    socket: Path = DEFAULT_SOCKET
    dropin: Path = DEFAULT_DROPIN
    host_key: Path = DEFAULT_HOST_KEY
    authorized_keys: Path | None = None  # None: ~user/.ssh/authorized_keys
    sshd_config: Path | None = None  # for `sshd -t -f`; None: sshd's own default
    reload: bool = True


@dataclass(frozen=True)
class Outcome:
    authorized_keys: Path
    keys_changed: bool
    dropin_changed: bool
    reloaded: bool
    host_key_line: str


def _write_private(path: Path, text: str, mode: int, uid: int, gid: int) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(tmp, mode)
    os.chown(tmp, uid, gid)
    os.replace(tmp, path)


def authorize(key: PublicKey, target: Target = Target(), run: Runner = _run) -> Outcome:
    """Write both files, prove them with `sshd -t`, reload sshd; put both back if sshd says no."""
    try:
        account = pwd.getpwnam(target.user)
    except KeyError:
        raise AuthorizeError(f"no user {target.user!r} on this host: install the executor-agent package first") from None
    keys_path = target.authorized_keys or Path(account.pw_dir) / ".ssh" / "authorized_keys"
    keys_path.parent.mkdir(mode=SSH_DIR_MODE, parents=True, exist_ok=True)
    os.chown(keys_path.parent, account.pw_uid, account.pw_gid)
    os.chmod(keys_path.parent, SSH_DIR_MODE)

    old_keys = keys_path.read_text() if keys_path.exists() else None
    new_keys = merge_authorized_keys(old_keys or "", render_authorized_line(key, target.socket), key)
    old_dropin = target.dropin.read_text() if target.dropin.exists() else None
    new_dropin = render_dropin(target.user, target.socket)
    if not target.dropin.parent.is_dir():
        raise AuthorizeError(f"{target.dropin.parent} does not exist: is openssh-server installed?")

    keys_changed, dropin_changed = new_keys != old_keys, new_dropin != old_dropin
    if keys_changed:
        _write_private(keys_path, new_keys, AUTHORIZED_KEYS_MODE, account.pw_uid, account.pw_gid)
    if dropin_changed:
        _write_private(target.dropin, new_dropin, DROPIN_MODE, 0, 0)
    check = run([SSHD, "-t", *(["-f", str(target.sshd_config)] if target.sshd_config else [])])
    if check.returncode != 0:
        _restore(keys_path, old_keys, target.dropin, old_dropin, account)
        raise AuthorizeError(f"sshd -t rejected the configuration, nothing changed: {check.stderr.strip()}")
    reloaded = False
    if target.reload and (keys_changed or dropin_changed):
        done = run(RELOAD_COMMAND)
        if done.returncode != 0:
            raise AuthorizeError(f"files written but '{' '.join(RELOAD_COMMAND)}' failed: {done.stderr.strip()}")
        reloaded = True
    return Outcome(keys_path, keys_changed, dropin_changed, reloaded, _host_key_line(target.host_key))


def _restore(keys_path: Path, old_keys: str | None, dropin: Path, old_dropin: str | None,
             account: pwd.struct_passwd) -> None:
    for path, old, mode, uid, gid in ((keys_path, old_keys, AUTHORIZED_KEYS_MODE, account.pw_uid, account.pw_gid),
                                      (dropin, old_dropin, DROPIN_MODE, 0, 0)):
        if old is None:
            path.unlink(missing_ok=True)
        else:
            _write_private(path, old, mode, uid, gid)


def _host_key_line(path: Path) -> str:
    """Type and base64 only: the form `host_key` takes in the miner's config."""
    try:
        return " ".join(path.read_text().split()[:2])
    except FileNotFoundError:
        raise AuthorizeError(f"no host key at {path}: is openssh-server installed?") from None
