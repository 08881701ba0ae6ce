"""The contract's revert reasons, by 4-byte selector, as sentences an operator can act on.

web3 surfaces a custom-error revert differently per provider (ContractCustomError with `data`,
an eth-tester TransactionFailed whose text holds the bytes, a JSON-RPC error's data field), so
`revert_selector` looks in all of those places and `explain` turns the selector into a sentence.
"""

from __future__ import annotations

import re

# selector (hex, no 0x) -> (error name, what it means for the miner and what to do)
CONTRACT_ERRORS: dict[str, tuple[str, str]] = {
    "cbca5aa2": ("AmountZero", "the amount is zero; give an amount above 0"),
    "3355482c": ("BeforeDenyTimeout", "the reclaim is still inside the validator's deny window; "
                 "finalize it after its deny timeout (see `miner-agent collateral status`)"),
    "5945ea56": ("InsufficientAmount", "the deposit is below the contract's MIN_COLLATERAL_INCREASE; deposit at least that much"),
    "84ee6c0a": ("InvalidDepositMethod", "the contract takes collateral only through deposit(), not a plain transfer"),
    "5aa309bb": ("NotTrustee", "only the validator (the contract's trustee) may do this"),
    "fc9e5c02": ("PastDenyTimeout", "the deny window of this reclaim is over; it can only be finalized now"),
    "f250313b": ("ReclaimAmountTooLarge", "the amount is more than the collateral not already being reclaimed; "
                 "reclaim at most the free remainder"),
    "e39815fd": ("ReclaimAmountTooSmall", "the amount is below MIN_COLLATERAL_INCREASE and is not the whole free "
                 "remainder; reclaim more, or everything that is left"),
    "642e3ad7": ("ReclaimNotFound", "there is no pending reclaim with that id (already finalized or denied?)"),
    "90b8ec18": ("TransferFailed", "the contract could not send the funds to the receiving address"),
}

_HEX_RE = re.compile(r"0x([0-9a-fA-F]{8})")
_BYTES_RE = re.compile(r"b'((?:\\x[0-9a-fA-F]{2}|[^'\\])*)'")


def _from_bytes_repr(text: str) -> str | None:
    for match in _BYTES_RE.finditer(text):
        try:
            raw = match.group(1).encode("latin-1").decode("unicode_escape").encode("latin-1")
        except (UnicodeDecodeError, UnicodeEncodeError):
            continue
        if len(raw) >= 4 and raw[:4].hex() in CONTRACT_ERRORS:
            return raw[:4].hex()
    return None


def revert_selector(exc: BaseException) -> str | None:
    """The known 4-byte error selector carried by a revert exception, or None."""
    candidates: list[str] = []
    for attr in ("data", "message"):
        value = getattr(exc, attr, None)
        if isinstance(value, bytes):
            candidates.append("0x" + value.hex())
        elif isinstance(value, dict):
            candidates.append(str(value.get("data", "")))
        elif value is not None:
            candidates.append(str(value))
    candidates.extend(str(arg) for arg in exc.args)
    for text in candidates:
        for match in _HEX_RE.finditer(text):
            if match.group(1).lower() in CONTRACT_ERRORS:
                return match.group(1).lower()
        found = _from_bytes_repr(text)
        if found:
            return found
    return None


def explain(exc: BaseException) -> str:
    """One sentence for a failed contract call: the named error, or the provider's own text."""
    selector = revert_selector(exc)
    if selector is not None:
        name, sentence = CONTRACT_ERRORS[selector]
        return f"the contract refused ({name}): {sentence}"
    return f"the contract call failed: {exc}"
