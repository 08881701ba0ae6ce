"""`miner-agent config check`: what in a valid config will still not work, said plainly."""

from __future__ import annotations

import os
from pathlib import Path

import asyncssh
from bittensor_wallet import Keypair

from miner_agent.keys import WalletError, load_hotkey
from miner_agent.miner_config import LocalExecutor, MinerConfig, SshExecutor


def problems(config: MinerConfig) -> list[tuple[str, str]]:
    """(level, message) pairs; level is "error" (will not work) or "warning" (check it)."""
    out: list[tuple[str, str]] = []
    try:
        signer = load_hotkey(config.wallet.path, config.wallet.name, config.wallet.hotkey)
        out.append(("ok", f"hotkey {signer.hotkey} loads from {config.wallet.path}/{config.wallet.name}"))
    except WalletError as exc:
        out.append(("error", str(exc)))
    if not config.validators.allow:
        out.append(("warning", "[validators] allow is empty: no validator can connect until you add hotkeys"))
    for hotkey in config.validators.allow:
        try:
            Keypair(ss58_address=hotkey)
        except Exception:
            out.append(("error", f"[validators] allow: {hotkey!r} is not an SS58 address"))
    state = config.miner.state_dir
    parent = state if state.exists() else state.parent
    if not os.access(parent, os.W_OK):
        out.append(("error", f"state_dir {state}: {parent} is not writable by this user"))
    if not config.executors and not config.executor_manager.class_path:
        out.append(("warning", "no [[executors]] and no [executor_manager]: the manifest will be empty"))
    for e in config.executors:
        out.extend(_executor_problems(e))
    return out


def _executor_problems(e: LocalExecutor | SshExecutor) -> list[tuple[str, str]]:
    if isinstance(e, LocalExecutor):
        if not e.socket.exists():
            return [("warning", f"executor {e.name}: no socket at {e.socket} yet; is executor-agent running here?")]
        return [("ok", f"executor {e.name}: socket {e.socket} exists")]
    out: list[tuple[str, str]] = []
    key = Path(e.key_path).expanduser()
    if not key.exists():
        out.append(("error", f"executor {e.name}: key_path {key} does not exist"))
    else:
        try:
            asyncssh.read_private_key(str(key))
        except (asyncssh.KeyImportError, OSError) as exc:
            out.append(("error", f"executor {e.name}: key_path {key} is not a usable private key: {exc}"))
    try:
        asyncssh.import_public_key(e.host_key.strip())
    except asyncssh.KeyImportError:
        out.append(("error", f"executor {e.name}: host_key is not a public key line; copy it from "
                             f"/etc/ssh/ssh_host_ed25519_key.pub on {e.host}"))
    return out or [("ok", f"executor {e.name}: ssh {e.user}@{e.host}:{e.port} key and pinned host key parse")]
