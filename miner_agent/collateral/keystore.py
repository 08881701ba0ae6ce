"""The miner's EVM (H160) key: generated or imported once, kept where the stock tools keep it.

Path: `<wallets>/<wallet>/h160/<hotkey>`, JSON {address, private_key, public_key}, mode 0600. The
key pays for deposits and gas and owns the collateral, so a file others can read is refused rather
than used: whoever reads it can reclaim the collateral.
"""

from __future__ import annotations

import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from agent_common.private import private_open
from miner_agent.miner_config import WalletSection

OTHERS_ACCESS_BITS = stat.S_IRWXO  # any permission for "others" on the key file is refused


class EvmKeyError(Exception):
    """The EVM key file is missing, unreadable, malformed or too open; the message says what to do."""


@dataclass(frozen=True)
class EvmKey:
    address: str  # checksummed 0x H160
    private_key: str  # 0x + 64 hex
    path: Path

    def account(self):  # noqa: ANN201 - eth_account LocalAccount, imported lazily
        from eth_account import Account

        return Account.from_key(self.private_key)


def key_path(wallet: WalletSection) -> Path:
    """Where the stock tools keep the H160 key of this hotkey."""
    return wallet.path.expanduser() / wallet.name / "h160" / wallet.hotkey


def load_evm_key(path: Path) -> EvmKey:
    if not path.exists():
        raise EvmKeyError(
            f"no EVM key at {path}; create one with `miner-agent collateral keygen` "
            f"or bring yours with `miner-agent collateral import-key`"
        )
    mode = path.stat().st_mode
    if mode & OTHERS_ACCESS_BITS:
        raise EvmKeyError(
            f"EVM key file {path} is readable by other users (mode {stat.S_IMODE(mode):04o}); anyone who reads it "
            f"can take the collateral. Run `chmod 600 {path}` (and move the funds to a new key if others had access)"
        )
    try:
        raw = json.loads(path.read_text())
        private_key = str(raw["private_key"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise EvmKeyError(f"EVM key file {path} is not a JSON object with a private_key: {exc}") from None
    return _from_private_key(private_key, path, claimed=raw.get("address"))


def _from_private_key(private_key: str, path: Path, claimed: object = None) -> EvmKey:
    from eth_account import Account

    hex_key = private_key if private_key.startswith("0x") else "0x" + private_key
    try:
        account = Account.from_key(hex_key)
    except (ValueError, TypeError) as exc:
        raise EvmKeyError(f"EVM private key from {path} is not a 32-byte hex key: {exc}") from None
    if claimed is not None and str(claimed).lower() != account.address.lower():
        raise EvmKeyError(f"EVM key file {path}: address {claimed} does not belong to its private_key ({account.address})")
    return EvmKey(address=account.address, private_key=hex_key, path=path)


def _write(path: Path, key: EvmKey) -> None:
    from eth_account import Account

    public_key = Account.from_key(key.private_key)._key_obj.public_key.to_hex()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    with private_open(path) as f:
        f.write(json.dumps({"address": key.address, "private_key": key.private_key, "public_key": public_key}).encode())
        f.write(b"\n")
        f.flush()
        os.fsync(f.fileno())


def generate_evm_key(path: Path) -> EvmKey:
    """A new random key written to `path`; refuses to replace an existing file (it may hold funds)."""
    from eth_account import Account

    if path.exists():
        raise EvmKeyError(f"{path} already exists; it may own collateral, so it is not replaced (move it away first)")
    account = Account.create()
    key = EvmKey(address=account.address, private_key="0x" + bytes(account.key).hex(), path=path)
    _write(path, key)
    return key


def import_evm_key(path: Path, private_key: str) -> EvmKey:
    """Store an existing private key (hex) at `path`, same format and mode as a generated one."""
    if path.exists():
        raise EvmKeyError(f"{path} already exists; it may own collateral, so it is not replaced (move it away first)")
    key = _from_private_key(private_key.strip(), path)
    _write(path, key)
    return key
