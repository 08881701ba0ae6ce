"""sr25519 signatures as the ComputeHorde wire writes them (protocol.md §4.1): `0x` + lowercase hex.

The blob is always signed and verified as UTF-8 *bytes*: bittensor-wallet reads a `str` that starts
with `0x` as hex, which would silently sign something else. (No blob of this protocol starts with
`0x`, so bytes and str give the same result for every blob a validator signs.)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported on first verify: an executor agent never signs, and it costs ~3 MiB resident
    from bittensor_wallet import Keypair


def sign_blob(keypair: Keypair, blob: str) -> str:
    """The `0x`-hex signature of `blob` by `keypair` (randomized: two calls give different text)."""
    return "0x" + keypair.sign(blob.encode("utf-8")).hex()


def verify_blob(ss58_address: str, blob: str, signature: str) -> bool:
    """True if `signature` (`0x`-hex, either case) is `ss58_address`'s over `blob`, or over
    `<Bytes>blob</Bytes>` as Polkadot.js signs. A malformed address or signature is False, never an
    exception: a peer must not be able to crash a verifier with junk."""
    if not isinstance(signature, str) or not signature.startswith("0x"):
        return False
    from bittensor_wallet import Keypair

    try:
        return bool(Keypair(ss58_address=ss58_address).verify(blob.encode("utf-8"), signature))
    except (ValueError, TypeError):
        return False


__all__ = ["sign_blob", "verify_blob"]
