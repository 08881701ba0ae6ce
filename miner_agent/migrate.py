"""`miner-agent config import-docker-config`: the stock miner's executor list, as our TOML.

The stock docker-compose miner describes executors in a YAML file
(DOCKER_EXECUTORS_CONFIG_PATH, behaviour.md §1.4): a mapping of server name to
`executor_class`, `mode` (local | ssh) and, for ssh, `host`, `ssh_port`, `username`,
`key_path`. Its settings live in a `.env` (behaviour.md §5.1). This module turns both into
a miner-agent.toml fragment: `[[executors]]` entries and the [miner] / [wallet] keys
that have an equivalent.

The YAML is read by a small parser for exactly that shape (a two-level block mapping of
scalars, comments allowed), not by PyYAML: the stock file never needs more, and anything
else is refused with the line number, so nothing is silently mis-read.

One thing cannot be carried over: the stock miner never checked SSH host keys. We pin
them, so every ssh entry gets a commented `host_key` line to fill in, and the config does
not load until it is (`executors.N.host_key: Field required`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from horde_protocol.enums import STOCK_DEFAULT_EXECUTOR_CLASS, ExecutorClass

STOCK_VENDOR_DIR = "/root/vendor"  # where the stock compose mounts HOST_VENDOR_DIR (SSH keys live there)
STOCK_DEFAULT_CLASS_LITERAL = "DEFAULT_EXECUTOR_CLASS"  # the YAML may name the setting instead of a class
SERVER_KEYS = {"executor_class", "mode", "host", "ssh_port", "username", "key_path"}
_NAME_OK = re.compile(r"^[A-Za-z0-9_.-]+$")


class MigrationError(Exception):
    """The input cannot be converted; str() names the file, the line and what to do."""


@dataclass
class Conversion:
    toml: str
    notes: list[str] = field(default_factory=list)


# --- the YAML subset ---------------------------------------------------------------------------


def _scalar(raw: str, where: str) -> str:
    text = raw.strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
        return text[1:-1]
    if text and text[0] in "[{&*!|>":
        raise MigrationError(f"{where}: only plain scalars are supported here, got {text!r}")
    return re.sub(r"\s+#.*$", "", text)  # a trailing comment


def parse_docker_config(text: str, source: str = "docker_config.yaml") -> dict[str, dict[str, str]]:
    """`name:` lines at column 0, each followed by indented `key: value` lines."""
    servers: dict[str, dict[str, str]] = {}
    current: dict[str, str] | None = None
    indent: int | None = None
    for number, line in enumerate(text.splitlines(), start=1):
        where = f"{source}:{number}"
        stripped = line.strip()
        if not stripped or stripped.startswith("#") or stripped in ("---", "..."):
            continue
        if "\t" in line[: len(line) - len(line.lstrip())]:
            raise MigrationError(f"{where}: tabs in indentation; YAML needs spaces")
        key, sep, value = stripped.partition(":")
        if not sep or (value and not value[0].isspace()):
            raise MigrationError(f"{where}: expected `key: value`, got {stripped!r}")
        key = _scalar(key, where)
        depth = len(line) - len(line.lstrip(" "))
        if depth == 0:
            if value.strip() and not value.strip().startswith("#"):
                raise MigrationError(f"{where}: server {key!r} must be a mapping (its keys on the next lines)")
            if key in servers:
                raise MigrationError(f"{where}: server {key!r} appears twice")
            current, indent = servers.setdefault(key, {}), None
            continue
        if current is None:
            raise MigrationError(f"{where}: indented line before any server name")
        if indent is None:
            indent = depth
        elif depth != indent:
            raise MigrationError(f"{where}: nested mappings are not part of the stock format")
        if key in current:
            raise MigrationError(f"{where}: key {key!r} appears twice")
        current[key] = _scalar(value, where)
    if not servers:
        raise MigrationError(f"{source}: no servers found (expected `name:` with indented keys)")
    return servers


def parse_env(text: str) -> dict[str, str]:
    """A docker-compose .env: KEY=value lines, optional `export`, quotes, comments."""
    env: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.removeprefix("export ").partition("=")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        else:
            value = re.sub(r"\s+#.*$", "", value)
        env[key.strip()] = value
    return env


# --- conversion ------------------------------------------------------------------------------


def _q(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _executor_class(raw: str, default_class: str, where: str) -> str:
    value = default_class if raw == STOCK_DEFAULT_CLASS_LITERAL else raw
    try:
        return ExecutorClass(value).value
    except ValueError:
        known = ", ".join(c.value for c in ExecutorClass)
        raise MigrationError(f"{where}: executor_class {value!r} is not one of {known}") from None


def _key_path(raw: str, vendor_dir: Path | None, notes: list[str], name: str) -> str:
    if vendor_dir is not None and (raw == STOCK_VENDOR_DIR or raw.startswith(STOCK_VENDOR_DIR + "/")):
        return str(vendor_dir / raw[len(STOCK_VENDOR_DIR) + 1:])
    if raw.startswith(STOCK_VENDOR_DIR + "/"):
        notes.append(f"executor {name}: key_path {raw} is the path inside the stock container; "
                     "pass --vendor-dir (your HOST_VENDOR_DIR) or edit it to the host path")
    return raw


def convert(servers: dict[str, dict[str, str]], env: dict[str, str] | None = None,
            vendor_dir: Path | None = None, source: str = "docker_config.yaml") -> Conversion:
    """The TOML text for these servers (and .env settings), plus notes for the operator."""
    env = env or {}
    notes: list[str] = []
    vendor = vendor_dir or (Path(env["HOST_VENDOR_DIR"]) if env.get("HOST_VENDOR_DIR") else None)
    default_class = env.get("DEFAULT_EXECUTOR_CLASS") or STOCK_DEFAULT_EXECUTOR_CLASS.value  # what the stock miner said
    lines = [f"# Converted from {source} by `miner-agent config import-docker-config`.",
             "# Keys not written here keep their defaults (docs/configuration.md).", ""]
    if env.get("BITTENSOR_MINER_PORT"):
        lines += ["[miner]", f"listen_port = {int(env['BITTENSOR_MINER_PORT'])}   # BITTENSOR_MINER_PORT", ""]
    wallet = [(k, env[e]) for k, e in (("path", "BITTENSOR_WALLET_DIRECTORY"), ("name", "BITTENSOR_WALLET_NAME"),
                                       ("hotkey", "BITTENSOR_WALLET_HOTKEY_NAME")) if env.get(e)]
    if wallet:
        lines.append("[wallet]")
        lines += [f"{k} = {_q(v)}" for k, v in wallet]
        lines.append("")
    if env.get("HOST_WALLET_DIR"):
        notes.append(f"HOST_WALLET_DIR={env['HOST_WALLET_DIR']}: copy the hotkey file from there into the "
                     "[wallet] path (packaged default /etc/miner-agent/wallets), owned by miner-agent, mode 0600")
    locals_seen = 0
    for index, (name, server) in enumerate(servers.items(), start=1):
        where = f"{source}: server {name!r}"
        unknown = set(server) - SERVER_KEYS
        if unknown:
            raise MigrationError(f"{where}: unknown keys {', '.join(sorted(unknown))}")
        if not _NAME_OK.match(name):
            raise MigrationError(f"{where}: names may only use letters, digits, '_', '.', '-'")
        if "executor_class" not in server:
            raise MigrationError(f"{where}: executor_class is required")
        mode = server.get("mode", "local")
        klass = _executor_class(server["executor_class"], default_class, where)
        lines += ["[[executors]]", f"name = {_q(name)}", f"executor_class = {_q(klass)}", f"mode = {_q(mode)}"]
        if mode == "local":
            locals_seen += 1
            if locals_seen > 1:
                raise MigrationError(f"{where}: more than one local server (the stock miner refuses this too)")
        elif mode == "ssh":
            missing = [k for k in ("host", "username", "key_path") if not server.get(k)]
            if missing:
                raise MigrationError(f"{where}: mode ssh needs {', '.join(missing)}")
            lines += [f"host = {_q(server['host'])}", f"port = {int(server.get('ssh_port', '22'))}",
                      f"user = {_q(server['username'])}",
                      f"key_path = {_q(_key_path(server['key_path'], vendor, notes, name))}",
                      f"# host_key = \"ssh-ed25519 AAAA...\"   # REQUIRED: run `ssh-keyscan -t ed25519 {server['host']}`"
                      " on a trusted path, check the fingerprint, paste the key line here"]
            notes.append(f"executor {name}: fill in host_key (the stock miner did not check host keys; we pin them)")
            if server["username"] != "executor-agent":
                notes.append(f"executor {name}: user {server['username']!r} opened docker.sock in the stock setup; "
                             "with executor-agent installed there, `executor-agent` is the least-privileged login")
        else:
            raise MigrationError(f"{where}: mode {mode!r} is neither local nor ssh")
        lines.append("")
    if env.get("DEBUG_AUTO_REMOVE_EXECUTOR_CONTAINERS", "").lower() in ("false", "0", "no"):
        notes.append("DEBUG_AUTO_REMOVE_EXECUTOR_CONTAINERS=False: set keep_job_dirs = true in "
                     "/etc/executor-agent/executor-agent.toml on the executor hosts")
    if env.get("HF_ACCESS_TOKEN"):
        notes.append("HF_ACCESS_TOKEN is set: it is not copied into this file (secrets stay out of configs)")
    return Conversion("\n".join(lines).rstrip() + "\n", notes)


def import_docker_config(path: Path, env_path: Path | None = None, vendor_dir: Path | None = None) -> Conversion:
    """Read the files and convert; every problem is a MigrationError naming the file."""
    try:
        text = path.read_text()
        env_text = env_path.read_text() if env_path is not None else ""
    except OSError as exc:
        raise MigrationError(f"{exc.filename}: {exc.strerror}") from None
    return convert(parse_docker_config(text, str(path)), parse_env(env_text), vendor_dir, str(path))
