"""The validator handshake (protocol.md §4.2), as pure functions of the frame and the clock.

Checks run in the stock miner's order and give its reason texts, because validators'
operators read them in their logs.
"""

from __future__ import annotations

from collections.abc import Callable

from horde_protocol.messages import ValidatorAuthForMiner

AUTH_MAX_AGE_S = 10  # stock AUTH_MESSAGE_MAX_AGE
# The stock miner has no upper bound, so a captured auth frame dated far ahead works as a bearer
# token until then. Honest validators stamp `now`; this allows their clock to run a little fast.
AUTH_MAX_FUTURE_S = 5


def auth_blob(validator_hotkey: str, miner_hotkey: str, timestamp: int) -> str:
    return f"{validator_hotkey}:{miner_hotkey}:{timestamp}"


def check_auth(
    msg: ValidatorAuthForMiner,
    path_hotkey: str,
    own_hotkey: str,
    now: float,
    verify: Callable[[str, str, str], bool],
    max_age_s: int = AUTH_MAX_AGE_S,
    max_future_s: int = AUTH_MAX_FUTURE_S,
) -> str | None:
    """None when the handshake is good, else the reason (stock wording where stock has one)."""
    if msg.timestamp < now - max_age_s:
        return "msg too old"
    if msg.timestamp > now + max_future_s:
        return f"msg from the future (timestamp {msg.timestamp} is more than {max_future_s} s ahead)"
    if msg.miner_hotkey != own_hotkey:
        return f"wrong miner hotkey ({own_hotkey}!={msg.miner_hotkey})"
    if msg.validator_hotkey != path_hotkey:
        return f"wrong validator hotkey ({path_hotkey}!={msg.validator_hotkey})"
    if not verify(path_hotkey, auth_blob(msg.validator_hotkey, msg.miner_hotkey, msg.timestamp), msg.signature):
        return "Signature mismatches"
    return None


def refusal_details(path_hotkey: str, reason: str) -> str:
    return f"Validator {path_hotkey} not authenticated due to: {reason}"
