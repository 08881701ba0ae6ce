"""Which contract a validator uses, and whether we trust it (collateral.md §1, §3 step 4).

A validator publishes `{"contract": {"address": "0x…"}}` as its commitment. The contract is used
only if its TRUSTEE() is the validator's own associated H160 (so the validator, not someone
else, can slash and deny) and its NETUID() is our netuid; otherwise a sentence says why not.
"""

from __future__ import annotations

import json

from miner_agent.collateral.contract import CollateralContract


def parse_contract_address(commitment: str) -> str | None:
    """The contract address in a validator's commitment text; None when it publishes none."""
    from eth_utils import is_address, to_checksum_address

    try:
        raw = json.loads(commitment)
    except ValueError:
        return None
    contract = raw.get("contract") if isinstance(raw, dict) else None
    address = contract.get("address") if isinstance(contract, dict) else None
    if not isinstance(address, str) or not is_address(address):
        return None
    return to_checksum_address(address)


def contract_problem(contract: CollateralContract, netuid: int, validator: str, trustee_expected: str | None) -> str:
    """"" when the contract is the validator's own on our netuid; else why it is not used."""
    where = f"contract {contract.address} of validator {validator}"
    if not contract.has_code():
        return f"{where} has no code on this EVM (wrong [collateral] evm_rpc, or not deployed); not used"
    try:
        their_netuid = contract.netuid()
    except Exception as exc:
        return f"{where} does not answer NETUID() ({type(exc).__name__}); not a collateral contract we know, not used"
    if their_netuid != netuid:
        return f"{where} is for netuid {their_netuid}, not ours ({netuid}); not used"
    trustee = contract.trustee()
    if trustee_expected is None:
        return f"{where}: the validator has no associated EVM address, so its TRUSTEE ({trustee}) cannot be checked; not used"
    if trustee.lower() != trustee_expected.lower():
        return (f"{where} has TRUSTEE {trustee}, but the validator's associated EVM address is {trustee_expected}; "
                f"someone else controls it, not used")
    return ""
