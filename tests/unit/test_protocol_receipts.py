"""Receipt payloads, the canonical signing blob (protocol.md §4.4, §4.6) and sr25519 round trips."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from bittensor_wallet import Keypair
from pydantic import TypeAdapter, ValidationError

from horde_protocol.receipts import (
    JobAcceptedReceiptPayload,
    JobFinishedReceiptPayload,
    JobStartedReceiptPayload,
    Receipt,
    ReceiptPayload,
    countersign,
    receipt_blob,
    receipt_problems,
)
from horde_protocol.signing import sign_blob, verify_blob

J = "3f1c2a9e-8d4b-4c55-9b0e-2f6a1d7c8e90"
PAYLOAD = TypeAdapter(ReceiptPayload)
ALICE = Keypair.create_from_uri("//Alice")  # plays the miner
BOB = Keypair.create_from_uri("//Bob")  # plays the validator


def test_started_blob_matches_the_section_4_4_example() -> None:
    payload = PAYLOAD.validate_json(
        f'{{"job_uuid":"{J}","miner_hotkey":"5G...","validator_hotkey":"5F...","timestamp":"2026-01-21T12:00:00.123456Z",'
        '"receipt_type":"JobStartedReceipt","executor_class":"always_on.llm.a6000","is_organic":true,"ttl":7}')
    assert isinstance(payload, JobStartedReceiptPayload)
    assert receipt_blob(payload) == (
        '{"executor_class": "always_on.llm.a6000", "is_organic": true, "job_uuid": "3f1c2a9e-8d4b-4c55-9b0e-2f6a1d7c8e90", '
        '"miner_hotkey": "5G...", "receipt_type": "JobStartedReceipt", "timestamp": "2026-01-21T12:00:00.123456Z", '
        '"ttl": 7, "validator_hotkey": "5F..."}')


def test_finished_blob_non_ascii_zero_microseconds_and_utc_offset_input() -> None:
    payload = PAYLOAD.validate_json(
        '{"receipt_type":"JobFinishedReceipt","job_uuid":"j","miner_hotkey":"5Gminér☃😀","validator_hotkey":"5F",'
        '"timestamp":"2026-01-21T12:11:00.000001+00:00","time_started":"2026-01-21T12:00:00.000000+00:00",'
        '"time_took_us":0,"score_str":"0.000000"}')
    assert isinstance(payload, JobFinishedReceiptPayload)
    assert payload.block_numbers == []  # default, and present in the blob
    assert receipt_blob(payload) == (
        '{"block_numbers": [], "job_uuid": "j", "miner_hotkey": "5Gmin\\u00e9r\\u2603\\ud83d\\ude00", '
        '"receipt_type": "JobFinishedReceipt", "score_str": "0.000000", "time_started": "2026-01-21T12:00:00Z", '
        '"time_took_us": 0, "timestamp": "2026-01-21T12:11:00.000001Z", "validator_hotkey": "5F"}')


def test_accepted_blob_short_fraction_and_non_utc_offset() -> None:
    payload = PAYLOAD.validate_python({
        "receipt_type": "JobAcceptedReceipt", "job_uuid": J, "miner_hotkey": "m", "validator_hotkey": "v",
        "timestamp": "2026-01-21T12:00:00.5+00:00", "time_accepted": "2026-01-21T14:00:00+02:00", "ttl": 300,
        "ignored": "x",
    })
    assert receipt_blob(payload) == (
        f'{{"job_uuid": "{J}", "miner_hotkey": "m", "receipt_type": "JobAcceptedReceipt", '
        '"time_accepted": "2026-01-21T14:00:00+02:00", "timestamp": "2026-01-21T12:00:00.500000Z", "ttl": 300, '
        '"validator_hotkey": "v"}')


@pytest.mark.parametrize(("value", "text"), [
    (datetime(2026, 1, 21, 12, 0, 0, tzinfo=timezone.utc), "2026-01-21T12:00:00Z"),
    (datetime(2026, 1, 21, 12, 0, 0, 500000, tzinfo=timezone.utc), "2026-01-21T12:00:00.500000Z"),
    (datetime(2026, 1, 21, 12, 0, 0, 1, tzinfo=timezone(timedelta(0))), "2026-01-21T12:00:00.000001Z"),
    (datetime(2026, 1, 21, 7, 0, 0, tzinfo=timezone(timedelta(hours=-5))), "2026-01-21T07:00:00-05:00"),
    (datetime(2026, 1, 21, 12, 0, 0, 123000, tzinfo=timezone(timedelta(hours=5, minutes=30))),
     "2026-01-21T12:00:00.123000+05:30"),
])
def test_datetime_text_is_section_4_6(value: datetime, text: str) -> None:
    """pydantic's JSON mode is the formatter; this pins it (a pydantic upgrade that changes it breaks here)."""
    payload = JobAcceptedReceiptPayload(job_uuid=J, miner_hotkey="m", validator_hotkey="v", timestamp=value,
                                        time_accepted=value, ttl=1)
    assert payload.model_dump(mode="json")["timestamp"] == text
    assert f'"timestamp":"{text}"' in payload.model_dump_json()
    assert f'"timestamp": "{text}"' in receipt_blob(payload)


def test_naive_datetimes_are_rejected() -> None:
    with pytest.raises(ValidationError):
        JobStartedReceiptPayload(job_uuid=J, miner_hotkey="m", validator_hotkey="v", timestamp=datetime(2026, 1, 1),
                                 executor_class="always_on.test", is_organic=True, ttl=7)


def test_receipt_type_is_strict_and_discriminates() -> None:
    base = {"job_uuid": J, "miner_hotkey": "m", "validator_hotkey": "v", "timestamp": "2026-01-21T12:00:00Z"}
    with pytest.raises(ValidationError):
        PAYLOAD.validate_python({**base, "receipt_type": "JobStartedReceipts", "executor_class": "always_on.test",
                                 "is_organic": True, "ttl": 1})
    with pytest.raises(ValidationError):  # fields of another type
        PAYLOAD.validate_python({**base, "receipt_type": "JobFinishedReceipt", "executor_class": "always_on.test",
                                 "is_organic": True, "ttl": 1})


def test_page_line_round_trip_matches_appendix_a() -> None:
    line = (
        f'{{"payload":{{"job_uuid":"{J}","miner_hotkey":"5GminerYYYY","validator_hotkey":"5FvaliXXXX",'
        '"timestamp":"2026-01-21T12:00:00.123456Z","receipt_type":"JobStartedReceipt",'
        '"executor_class":"spin_up-4min.gpu-24gb","is_organic":true,"ttl":7},'
        '"validator_signature":"0x...","miner_signature":"0x..."}'
    )
    receipt = Receipt.model_validate_json(line)
    assert receipt.page_line() == line + "\n"


def test_sign_countersign_verify_round_trip() -> None:
    payload = JobFinishedReceiptPayload(
        job_uuid=J, miner_hotkey=ALICE.ss58_address, validator_hotkey=BOB.ss58_address,
        timestamp=datetime(2026, 1, 21, 12, 11, tzinfo=timezone.utc),
        time_started=datetime(2026, 1, 21, 12, 0, 0, 100000, tzinfo=timezone.utc),
        time_took_us=660_400_000, score_str="720.000000", block_numbers=[7412001],
    )
    validator_signature = sign_blob(BOB, receipt_blob(payload))
    assert len(validator_signature) == 130 and validator_signature.startswith("0x")
    receipt = countersign(payload, validator_signature, ALICE)
    assert receipt.validator_signature_ok() and receipt.miner_signature_ok()
    # What a puller sees: the page line parsed back still verifies.
    again = Receipt.model_validate_json(receipt.page_line())
    assert again.validator_signature_ok() and again.miner_signature_ok()
    # Signatures are randomized, yet both verify.
    assert sign_blob(BOB, receipt_blob(payload)) != validator_signature
    forged = receipt.model_copy(update={"payload": payload.model_copy(update={"score_str": "9999.000000"})})
    assert not forged.validator_signature_ok() and not forged.miner_signature_ok()
    swapped = receipt.model_copy(update={"miner_signature": validator_signature})
    assert not swapped.miner_signature_ok()


def test_what_verify_accepts() -> None:
    blob = "5Fvali:5Gminer:1768996800"
    signature = sign_blob(BOB, blob)
    bob = BOB.ss58_address
    assert verify_blob(bob, blob, signature)
    assert verify_blob(bob, blob, "0x" + signature[2:].upper())  # hex case does not matter
    assert verify_blob(bob, blob, "0x" + BOB.sign(f"<Bytes>{blob}</Bytes>".encode()).hex())  # Polkadot.js wrapping
    assert verify_blob(bob, blob, "0x" + BOB.sign(blob).hex())  # a str-signed blob (what validators do) verifies
    # The raw library wants bytes or a 0x-hex str and raises on anything else; verify_blob says False.
    assert Keypair(ss58_address=bob).verify(blob.encode(), bytes.fromhex(signature[2:]))
    with pytest.raises(ValueError):
        Keypair(ss58_address=bob).verify(blob, signature[2:])
    for junk in (signature[2:], "", "0x", "0xzz", "0x1234", signature + "00", None):
        assert verify_blob(bob, blob, junk) is False
    assert verify_blob("5Fnotanaddress", blob, signature) is False
    assert verify_blob(ALICE.ss58_address, blob, signature) is False
    assert verify_blob(bob, blob + " ", signature) is False


def test_sign_blob_signs_text_even_when_it_looks_like_hex() -> None:
    """bittensor-wallet would hex-decode a str starting with 0x; sign_blob always signs the UTF-8 text."""
    signature = sign_blob(ALICE, "0x1234")
    assert verify_blob(ALICE.ss58_address, "0x1234", signature)
    assert Keypair(ss58_address=ALICE.ss58_address).verify(b"0x1234", signature)


def test_receipt_problems_apply_the_newer_bounds() -> None:
    ok = JobFinishedReceiptPayload(job_uuid=J, miner_hotkey="m", validator_hotkey="v",
                                   timestamp=datetime(2026, 1, 1, tzinfo=timezone.utc),
                                   time_started=datetime(2026, 1, 1, tzinfo=timezone.utc), time_took_us=0,
                                   score_str="0.000000", block_numbers=[0, 2**32])
    assert receipt_problems(ok) == []
    bad = ok.model_copy(update={
        "job_uuid": J.upper(), "time_started": datetime(1999, 12, 31, tzinfo=timezone.utc), "time_took_us": -1,
        "score_str": "1e3", "block_numbers": [2**32 + 1],
    })
    problems = receipt_problems(bad)
    assert len(problems) == 5, problems
    assert receipt_problems(ok.model_copy(update={"score_str": "1" * 257}))
    assert receipt_problems(ok.model_copy(update={"block_numbers": [1] * 10_001}))
    assert receipt_problems(ok.model_copy(update={"timestamp": datetime(2100, 1, 1, tzinfo=timezone.utc)}))
    assert receipt_problems(ok.model_copy(update={"job_uuid": "not-a-uuid"}))
    started = JobStartedReceiptPayload(job_uuid=J, miner_hotkey="m", validator_hotkey="v", timestamp=ok.timestamp,
                                       executor_class="always_on.test", is_organic=True, ttl=30 * 24 * 3600)
    assert receipt_problems(started) == []
    assert receipt_problems(started.model_copy(update={"ttl": 30 * 24 * 3600 + 1}))
    # Parsing stays lenient: stock validators' receipts are never refused at the frame level.
    assert PAYLOAD.validate_json(bad.model_dump_json()).time_took_us == -1
