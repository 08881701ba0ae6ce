"""sr25519 hotkeys: load the miner's from a bittensor wallet, sign and verify text blobs.

The signing primitive itself lives in horde_protocol.signing (`verify` is re-exported
here so the miner has one place to import key operations from).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from bittensor_wallet import Keypair, Wallet

from horde_protocol.signing import sign_blob
from horde_protocol.signing import verify_blob as verify


class WalletError(Exception):
    """The hotkey could not be loaded; the message says which file and what to do."""


@dataclass(frozen=True)
class Signer:
    keypair: Keypair

    @property
    def hotkey(self) -> str:
        return self.keypair.ss58_address

    def sign(self, blob: str) -> str:
        return sign_blob(self.keypair, blob)


def load_hotkey(wallets_path: Path, name: str, hotkey: str) -> Signer:
    """The miner's hotkey from a standard wallet directory (<path>/<name>/hotkeys/<hotkey>)."""
    path = wallets_path.expanduser()
    file = path / name / "hotkeys" / hotkey
    if not file.exists():
        raise WalletError(
            f"hotkey file {file} not found; create it with `btcli wallet new_hotkey` "
            f"or set [wallet] path/name/hotkey in the config"
        )
    try:
        keypair = Wallet(name=name, hotkey=hotkey, path=str(path)).get_hotkey()
    except Exception as exc:
        raise WalletError(f"hotkey file {file} could not be read: {exc}") from None
    return Signer(keypair)


def create_wallet(wallets_path: Path, name: str, hotkey: str) -> Signer:
    """Create an unencrypted coldkey + hotkey pair (quickstart and tests); keeps existing files."""
    path = wallets_path.expanduser()
    wallet = Wallet(name=name, hotkey=hotkey, path=str(path))
    if not (path / name / "coldkeypub.txt").exists():
        wallet.create_new_coldkey(use_password=False, overwrite=False, suppress=True)
    if not (path / name / "hotkeys" / hotkey).exists():
        wallet.create_new_hotkey(use_password=False, overwrite=False, suppress=True)
    return Signer(wallet.get_hotkey())


__all__ = ["Signer", "WalletError", "create_wallet", "load_hotkey", "verify"]
