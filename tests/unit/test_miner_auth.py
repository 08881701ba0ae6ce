"""The handshake rules of protocol.md §4.2, without sockets."""

from __future__ import annotations

from bittensor_wallet import Keypair

from horde_protocol.messages import ValidatorAuthForMiner
from horde_protocol.signing import sign_blob
from miner_agent.keys import verify
from miner_agent.protocol.auth import AUTH_MAX_FUTURE_S, auth_blob, check_auth, refusal_details

VALIDATOR = Keypair.create_from_uri("//Alice")
MINER = Keypair.create_from_uri("//Bob")
OTHER = Keypair.create_from_uri("//Charlie")
NOW = 1_768_996_800


def auth(ts: int = NOW, signer: Keypair = VALIDATOR, miner: str = MINER.ss58_address,
         validator: str = VALIDATOR.ss58_address) -> ValidatorAuthForMiner:
    return ValidatorAuthForMiner(
        validator_hotkey=validator, miner_hotkey=miner, timestamp=ts,
        signature=sign_blob(signer, auth_blob(validator, miner, ts)),
    )


def check(msg: ValidatorAuthForMiner, now: float = NOW) -> str | None:
    return check_auth(msg, VALIDATOR.ss58_address, MINER.ss58_address, now, verify)


def test_good_handshake_passes() -> None:
    assert check(auth()) is None


def test_blob_is_colon_joined_decimal() -> None:
    assert auth_blob("5A", "5B", 1768996800) == "5A:5B:1768996800"


def test_ten_seconds_old_is_still_fresh_eleven_is_not() -> None:
    assert check(auth(ts=NOW - 10)) is None
    assert check(auth(ts=NOW - 11)) == "msg too old"


def test_a_clock_a_little_fast_passes_but_a_far_future_stamp_is_no_bearer_token() -> None:
    """The stock miner accepts any future timestamp, so a captured frame dated an hour ahead keeps
    authenticating for that hour. We allow AUTH_MAX_FUTURE_S of skew (issue 10 item 3)."""
    assert AUTH_MAX_FUTURE_S == 5
    assert check(auth(ts=NOW + 5)) is None
    assert check(auth(ts=NOW + 6)) == f"msg from the future (timestamp {NOW + 6} is more than 5 s ahead)"
    assert check(auth(ts=NOW + 3600)) is not None


def test_wrong_miner_hotkey_names_both() -> None:
    reason = check(auth(miner=OTHER.ss58_address))
    assert reason == f"wrong miner hotkey ({MINER.ss58_address}!={OTHER.ss58_address})"


def test_validator_hotkey_must_match_the_path() -> None:
    reason = check(auth(validator=OTHER.ss58_address, signer=OTHER))
    assert reason == f"wrong validator hotkey ({VALIDATOR.ss58_address}!={OTHER.ss58_address})"


def test_signature_by_another_key_is_refused() -> None:
    assert check(auth(signer=OTHER)) == "Signature mismatches"


def test_garbage_signature_is_refused_not_raised() -> None:
    msg = auth().model_copy(update={"signature": "0xnothex"})
    assert check(msg) == "Signature mismatches"
    msg = auth().model_copy(update={"signature": "deadbeef"})
    assert check(msg) == "Signature mismatches"


def test_refusal_text_is_the_stock_wording() -> None:
    assert refusal_details("5X", "msg too old") == "Validator 5X not authenticated due to: msg too old"
