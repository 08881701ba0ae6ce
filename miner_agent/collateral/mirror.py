"""The substrate account that holds an H160's EVM balance (collateral.md §3 step 3).

Subtensor maps an EVM address to the account blake2_256("evm:" || 20 address bytes); TAO sent to
that account's SS58 form (prefix 42) is the H160's balance on the EVM side.
"""

from __future__ import annotations

import hashlib

SS58_PREFIX = 42
EVM_MIRROR_TAG = b"evm:"


def evm_mirror_ss58(address: str) -> str:
    from bittensor_wallet import Keypair

    raw = bytes.fromhex(address.removeprefix("0x"))
    if len(raw) != 20:
        raise ValueError(f"{address!r} is not a 20-byte H160 address")
    account = hashlib.blake2b(EVM_MIRROR_TAG + raw, digest_size=32).digest()
    return Keypair(public_key=account.hex(), ss58_format=SS58_PREFIX).ss58_address
