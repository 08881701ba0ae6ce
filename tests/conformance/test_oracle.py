"""Conformance against the validators' own models: PyPI compute-horde 0.0.27, run in .venv-oracle.

The oracle is a test-only tool in a separate venv (scripts/oracle-venv.sh); this process never
imports it, it talks to tests/conformance/oracle_driver.py over stdin/stdout. Checked both ways:

* every frame our models write parses in the oracle's unions and comes back byte-identical;
* every frame, receipt blob and signature the oracle writes parses/verifies here, byte-identical;
* a set of edge frames is accepted or refused by both alike (the few intended differences are listed).
"""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import pytest
from bittensor_wallet import Keypair
from pydantic import TypeAdapter, ValidationError

from horde_protocol.messages import (
    dump,
    parse_executor_to_miner,
    parse_miner_to_executor,
    parse_miner_to_validator,
    parse_validator_frame,
    parse_validator_to_miner,
    validator_signature_blob,
    validator_signature_ok,
)
from horde_protocol.receipts import JobFinishedReceiptPayload, ReceiptPayload, countersign, receipt_blob
from horde_protocol.signing import sign_blob, verify_blob
from tests.conformance import samples

ROOT = Path(__file__).resolve().parents[2]
ORACLE_PYTHON = ROOT / ".venv-oracle" / "bin" / "python"
DRIVER = Path(__file__).with_name("oracle_driver.py")
ORACLE_TIMEOUT_S = 120  # importing bittensor 9 + Django-free compute_horde takes a few seconds

PARSERS = {
    "validator_to_miner": parse_validator_to_miner,
    "miner_to_validator": parse_miner_to_validator,
    "miner_to_executor": parse_miner_to_executor,
    "executor_to_miner": parse_executor_to_miner,
}
ALICE = Keypair.create_from_uri("//Alice")  # miner
BOB = Keypair.create_from_uri("//Bob")  # validator
J = samples.JOB
FAILED = '{"message_type":"V0JobFailedRequest","job_uuid":"%s",%%s}' % J
HORDE = '{"message_type":"V0HordeFailedRequest","job_uuid":"%s","message":"m",%%s}' % J
MANIFEST = '{"message_type":"V0ExecutorManifestRequest","manifest":%s}'
INITIAL = json.loads(dump(samples.initial_request()))
JOB = json.loads(dump(samples.job_request()))


def _with(base: dict, path: tuple, value: object) -> str:
    frame = json.loads(json.dumps(base))
    target = frame
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return json.dumps(frame)


# name: (direction, frame). Both sides must agree on accept/refuse and on the re-serialized text.
EDGE_FRAMES = {
    "lenient_unknown_reason_and_stage": ("executor_to_miner", FAILED % '"reason":"cosmic","stage":"nine"'),
    "lenient_non_string_reason": ("executor_to_miner", HORDE % '"reported_by":"alien","reason":7'),
    "legacy_aliases": ("executor_to_miner", FAILED % '"error_detail":"d","error_type":"timeout"'),
    "alias_and_field": ("executor_to_miner", FAILED % '"message":"a","error_detail":"b","error_type":"timeout"'),
    "unknown_keys": ("executor_to_miner", FAILED % '"new":{"x":[1]},"stage":"execution"'),
    "missing_message_type": ("executor_to_miner", '{"job_uuid":"x"}'),
    "decline_unknown_reason": ("miner_to_validator",
                               '{"message_type":"V0DeclineJobRequest","job_uuid":"x","reason":"tired"}'),
    "manifest_unknown_class": ("miner_to_validator", MANIFEST % '{"always_on.gpu-80gb":1}'),
    "manifest_string_count": ("miner_to_validator", MANIFEST % '{"always_on.test":"3"}'),
    "manifest_float_count": ("miner_to_validator", MANIFEST % '{"always_on.test":3.0}'),
    "manifest_fraction_count": ("miner_to_validator", MANIFEST % '{"always_on.test":2.5}'),
    "manifest_negative_count": ("miner_to_validator", MANIFEST % '{"always_on.test":-1}'),
    "unauthorized_unknown_code": ("miner_to_validator", '{"message_type":"UnauthorizedError","code":"NOPE"}'),
    "preset_unknown": ("validator_to_miner", _with(JOB, ("docker_run_options_preset",), "gpu")),
    "volume_untagged": ("validator_to_miner", _with(INITIAL, ("volume",), {"url": "u", "relative_path": "r"})),
    "volume_nested_multi": ("validator_to_miner", _with(
        INITIAL, ("volume",), {"volume_type": "multi_volume", "volumes": [{"volume_type": "multi_volume",
                                                                           "volumes": []}]})),
    "system_output_untagged": ("validator_to_miner", _with(
        JOB, ("output_upload",), {"output_upload_type": "multi_upload", "uploads": [], "system_output": {"url": "s"}})),
    "upload_path_traversal": ("validator_to_miner", _with(
        JOB, ("output_upload",), {"output_upload_type": "single_file_put", "url": "u", "relative_path": "../x"})),
    "receipt_naive_timestamp": ("validator_to_miner", _with(
        INITIAL, ("job_started_receipt_payload", "timestamp"), "2026-01-21T12:00:00")),
    "receipt_plus_zero_offset": ("validator_to_miner", _with(
        INITIAL, ("job_started_receipt_payload", "timestamp"), "2026-01-21T12:00:00.5+00:00")),
    "receipt_year_1999": ("validator_to_miner", _with(
        INITIAL, ("job_started_receipt_payload", "timestamp"), "1999-01-21T12:00:00Z")),
    "receipt_uppercase_uuid": ("validator_to_miner", _with(
        INITIAL, ("job_started_receipt_payload", "job_uuid"), J.upper())),
    "receipt_unknown_class": ("validator_to_miner", _with(
        INITIAL, ("job_started_receipt_payload", "executor_class"), "always_on.gpu-80gb")),
    "initial_signed_field": ("validator_to_miner", _with(INITIAL, ("validator_signature",), "0xab")),
    "duplicate_keys": ("validator_to_miner", '{"message_type":"V0MainHotkeyMessage","main_hotkey":"a",'
                                             '"main_hotkey":"b"}'),
    "other_direction": ("validator_to_miner", '{"message_type":"V0AcceptJobRequest","job_uuid":"x"}'),
    "not_json": ("validator_to_miner", "{nope"),
}
# Where we are deliberately more lenient or stricter than 0.0.27, as (our verdict, oracle verdict).
INTENDED_DIFFERENCES = {
    # Miner->validator is parsed only by our tests and fakes; our own manifests must never go negative.
    "manifest_negative_count": (False, True),
    # 0.0.27's stricter checks (§12); reference-code validators send these, so the miner must not refuse
    # the frame. horde_protocol.paths / receipts.receipt_problems apply them where it matters.
    "upload_path_traversal": (True, False),
    "receipt_year_1999": (True, False),
    "receipt_uppercase_uuid": (True, False),
}


def _ours(direction: str, frame: str) -> str | None:
    try:
        return dump(PARSERS[direction](frame))
    except ValidationError:
        return None


def _our_signed_frames() -> list[list[str]]:
    frames = []
    for message in (samples.job_request(), samples.initial_request()):
        content = json.loads(dump(message))
        content["validator_signature"] = sign_blob(BOB, validator_signature_blob(content))
        frames.append([json.dumps(content), BOB.ss58_address])
    return frames


def _our_receipts() -> list[str]:
    odd = JobFinishedReceiptPayload(
        job_uuid=J, miner_hotkey=ALICE.ss58_address, validator_hotkey=BOB.ss58_address,
        timestamp=datetime(2026, 2, 1, tzinfo=timezone.utc), time_started=datetime(2026, 2, 1, tzinfo=timezone.utc),
        time_took_us=0, score_str="0.000000")
    payloads = [p.model_copy(update={"miner_hotkey": ALICE.ss58_address, "validator_hotkey": BOB.ss58_address})
                for p in samples.RECEIPT_PAYLOADS] + [odd]
    return [countersign(p, sign_blob(BOB, receipt_blob(p)), ALICE).page_line() for p in payloads]


BLOB_PAYLOADS = [p.model_dump_json() for p in samples.RECEIPT_PAYLOADS] + [
    samples.FINISHED.model_copy(update={"miner_hotkey": "5Gmïnér😀", "validator_hotkey": "ü"}).model_dump_json(),
]


@pytest.fixture(scope="module")
def oracle() -> dict:
    if not ORACLE_PYTHON.exists():
        pytest.fail(f"the oracle venv {ORACLE_PYTHON.parent.parent} is missing: run scripts/oracle-venv.sh "
                    "(about 35 s, 390 MB) and re-run the conformance tests", pytrace=False)
    request = {
        "parse": {d: [dump(m) for m in ms] for d, ms in samples.BY_DIRECTION.items()},
        "blobs": BLOB_PAYLOADS,
        "receipts": _our_receipts(),
        "signed_frames": _our_signed_frames(),
    }
    for direction, frame in EDGE_FRAMES.values():
        request["parse"].setdefault(direction, []).append(frame)
    done = subprocess.run([str(ORACLE_PYTHON), str(DRIVER)], input=json.dumps(request), capture_output=True,
                          text=True, timeout=ORACLE_TIMEOUT_S, cwd=ROOT)
    if done.returncode != 0:
        pytest.fail(f"oracle driver failed (rc={done.returncode}); if the venv is broken, delete .venv-oracle and "
                    f"run scripts/oracle-venv.sh\n{done.stderr[-4000:]}", pytrace=False)
    return json.loads(done.stdout)


@pytest.mark.parametrize("direction", PARSERS)
def test_oracle_parses_every_frame_we_write_byte_exactly(oracle: dict, direction: str) -> None:
    ours = [dump(m) for m in samples.BY_DIRECTION[direction]]
    for frame, verdict in zip(ours, oracle["parse"][direction]):
        assert verdict.get("ok"), f"oracle refused {frame}: {verdict.get('error')}"
        assert verdict["dump"] == frame


def test_edge_frames_get_the_same_verdict(oracle: dict) -> None:
    offsets = {d: len(samples.BY_DIRECTION[d]) for d in PARSERS}
    seen = {d: 0 for d in PARSERS}
    for name, (direction, frame) in EDGE_FRAMES.items():
        verdict = oracle["parse"][direction][offsets[direction] + seen[direction]]
        seen[direction] += 1
        ours = _ours(direction, frame)
        expected = INTENDED_DIFFERENCES.get(name)
        if expected is not None:
            assert (ours is not None, verdict["ok"]) == expected, name
            continue
        assert (ours is not None) == verdict["ok"], f"{name}: ours={ours} oracle={verdict}"
        if ours is not None:
            assert ours == verdict["dump"], name


def test_receipt_blobs_are_byte_identical(oracle: dict) -> None:
    payload = TypeAdapter(ReceiptPayload)
    for text, theirs in zip(BLOB_PAYLOADS, oracle["blobs"], strict=True):
        assert receipt_blob(payload.validate_json(text)) == theirs


def test_oracle_verifies_our_signatures(oracle: dict) -> None:
    assert oracle["receipts"] and all(v == [True, True] for v in oracle["receipts"])
    assert oracle["signed_frames"] == [True, True]


@pytest.mark.parametrize("direction", PARSERS)
def test_we_reproduce_every_oracle_frame(oracle: dict, direction: str) -> None:
    emitted = oracle["emitted"][direction]
    assert emitted
    for frame in emitted:
        assert dump(PARSERS[direction](frame)) == frame


def test_we_verify_oracle_receipts_and_blobs(oracle: dict) -> None:
    payload = TypeAdapter(ReceiptPayload)
    for item in oracle["emitted_receipts"]:
        parsed = payload.validate_json(item["payload"])
        assert parsed.model_dump_json() == item["payload"]
        assert receipt_blob(parsed) == item["blob"]
        assert verify_blob(oracle["keys"]["validator"], receipt_blob(parsed), item["signature"])


def test_we_verify_the_oracle_validator_signature(oracle: dict) -> None:
    signed = [f for f in oracle["emitted"]["validator_to_miner"] if '"validator_signature":"0x' in f]
    assert len(signed) == 2
    for frame in signed:
        message, raw = parse_validator_frame(frame)
        assert validator_signature_ok(raw, oracle["keys"]["validator"]) is True
        assert validator_signature_ok(raw, oracle["keys"]["miner"]) is False
        assert message.validator_signature == raw["validator_signature"]
    unsigned = next(f for f in oracle["emitted"]["validator_to_miner"] if '"validator_signature":null' in f)
    assert validator_signature_ok(parse_validator_frame(unsigned)[1], oracle["keys"]["validator"]) is None


def test_oracle_is_never_imported_here() -> None:
    """Runtime code must never depend on the oracle; it is only in .venv-oracle."""
    assert "compute_horde" not in sys.modules
