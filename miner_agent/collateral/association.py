"""The message the chain checks in `associate_evm_key`, and its signature (collateral.md §3 step 2).

The EVM key personal-signs (EIP-191) 64 bytes: our hotkey's 32-byte public key followed by
keccak256 of the block number as a little-endian u64. Pure functions: no chain, no files.
"""

from __future__ import annotations

HOTKEY_PUBKEY_BYTES = 32
SIGNATURE_BYTES = 65


def association_message(hotkey_pubkey: bytes, block_number: int) -> bytes:
    from eth_utils import keccak

    if len(hotkey_pubkey) != HOTKEY_PUBKEY_BYTES:
        raise ValueError(f"hotkey public key must be {HOTKEY_PUBKEY_BYTES} bytes, got {len(hotkey_pubkey)}")
    return hotkey_pubkey + keccak(block_number.to_bytes(8, "little"))


def sign_association(private_key: str, hotkey_pubkey: bytes, block_number: int) -> bytes:
    """The 65-byte r||s||v signature (v = 27/28) the extrinsic carries."""
    from eth_account import Account
    from eth_account.messages import encode_defunct

    signed = Account.sign_message(encode_defunct(primitive=association_message(hotkey_pubkey, block_number)), private_key)
    signature = bytes(signed.signature)
    assert len(signature) == SIGNATURE_BYTES
    return signature


def recover_association(signature: bytes, hotkey_pubkey: bytes, block_number: int) -> str:
    """The address that made `signature` over the association message (what the chain recovers)."""
    from eth_account import Account
    from eth_account.messages import encode_defunct

    return Account.recover_message(encode_defunct(primitive=association_message(hotkey_pubkey, block_number)),
                                   signature=signature)
