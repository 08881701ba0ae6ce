"""Golden tests for the wire messages: protocol.md Appendix A frames, directions, leniency, aliases, §12."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from horde_protocol.enums import ExecutorClass, HordeFailureReason, JobFailureReason, JobStage
from horde_protocol.messages import (
    GenericError,
    UnauthorizedError,
    V0AcceptJobRequest,
    V0DeclineJobRequest,
    V0ExecutionDoneRequest,
    V0ExecutorManifestRequest,
    V0ExecutorReadyRequest,
    V0HordeFailedRequest,
    V0InitialJobRequest,
    V0JobFailedRequest,
    V0JobFinishedReceiptRequest,
    V0JobFinishedRequest,
    V0JobRequest,
    V0MainHotkeyMessage,
    V0StreamingJobReadyRequest,
    V0VolumesReadyRequest,
    ValidatorAuthForMiner,
    dump,
    malformed_details,
    parse_executor_to_miner,
    parse_miner_to_executor,
    parse_miner_to_validator,
    parse_validator_frame,
    parse_validator_to_miner,
    validator_signature_blob,
    validator_signature_ok,
)
from horde_protocol.signing import sign_blob
from horde_protocol.uploads import ZipAndHttpPutUpload
from horde_protocol.volumes import SingleFileVolume
from tests.conformance.samples import BY_DIRECTION

J = "3f1c2a9e-8d4b-4c55-9b0e-2f6a1d7c8e90"
RECEIPT_STARTED = (
    '{"job_uuid":"3f1c2a9e-8d4b-4c55-9b0e-2f6a1d7c8e90","miner_hotkey":"5GminerYYYY","validator_hotkey":"5FvaliXXXX",'
    '"timestamp":"2026-01-21T12:00:00.123456Z","receipt_type":"JobStartedReceipt",'
    '"executor_class":"spin_up-4min.gpu-24gb","is_organic":true,"ttl":7}'
)
AUTH = ('{"message_type":"ValidatorAuthForMiner","validator_hotkey":"5FvaliXXXX","miner_hotkey":"5GminerYYYY",'
        '"timestamp":1768996800,"signature":"0x5c1d"}')
MANIFEST = '{"message_type":"V0ExecutorManifestRequest","manifest":{"spin_up-4min.gpu-24gb":2,"always_on.llm.a6000":1}}'
INITIAL_BODY = (
    '"message_type":"V0InitialJobRequest","job_uuid":"3f1c2a9e-8d4b-4c55-9b0e-2f6a1d7c8e90",'
    '"executor_class":"spin_up-4min.gpu-24gb","docker_image":"python:3.11-slim","timeout_seconds":300,'
    '"volume":{"volume_type":"single_file","url":"https://example.invalid/in.txt","relative_path":"in.txt"},'
    f'"job_started_receipt_payload":{RECEIPT_STARTED},"job_started_receipt_signature":"0x...",'
    '"streaming_details":null,"executor_timing":{"allowed_leeway":5,"download_time_limit":60,'
    '"execution_time_limit":600,"upload_time_limit":60,"streaming_start_time_limit":0}'
)
JOB_BODY = (
    '"message_type":"V0JobRequest","job_uuid":"3f1c2a9e-8d4b-4c55-9b0e-2f6a1d7c8e90",'
    '"executor_class":"spin_up-4min.gpu-24gb","docker_image":"python:3.11-slim","raw_script":null,'
    '"docker_run_options_preset":"nvidia_all","docker_run_cmd":["python","-c","print(1)"],"env":{},"volume":null,'
    '"output_upload":{"output_upload_type":"zip_and_http_put","url":"https://example.invalid/presigned"},'
    '"artifacts_dir":"/artifacts"'
)
FINISHED_RECEIPT_IN = (
    '{"message_type":"V0JobFinishedReceiptRequest","payload":{"job_uuid":"3f1c2a9e-8d4b-4c55-9b0e-2f6a1d7c8e90",'
    '"miner_hotkey":"5GminerYYYY","validator_hotkey":"5FvaliXXXX","timestamp":"2026-01-21T12:11:00.5Z",'
    '"receipt_type":"JobFinishedReceipt","time_started":"2026-01-21T12:00:00.1Z","time_took_us":660400000,'
    '"score_str":"720.000000","block_numbers":[7412001,7412002]},"signature":"0x..."}'
)
JOB_FINISHED = (
    '{"message_type":"V0JobFinishedRequest","job_uuid":"3f1c2a9e-8d4b-4c55-9b0e-2f6a1d7c8e90",'
    '"docker_process_stdout":"1\\n","docker_process_stderr":"","artifacts":{"/artifacts/out.json":"eyJvayI6IHRydWV9"},'
    '"upload_results":{"output.zip":"{\\"headers\\": {\\"etag\\": \\"abc\\"}, \\"body\\": \\"\\"}"}}'
)
STREAMING = (
    '{"message_type":"V0StreamingJobReadyRequest","job_uuid":"...","executor_token":null,'
    '"public_key":"-----BEGIN CERTIFICATE-----\\n...\\n-----END CERTIFICATE-----\\n","ip":"203.0.113.7","port":6001,'
    '"miner_signature":"0x..."}'
)

# (parser, frame as in Appendix A, expected model, how our dump() writes it; None = byte-identical)
APPENDIX_A = [
    (parse_validator_to_miner, AUTH, ValidatorAuthForMiner, None),
    (parse_miner_to_validator, MANIFEST, V0ExecutorManifestRequest, None),
    # The §12 field is declared first by the reference models, so it leads the re-serialized frame.
    (parse_validator_to_miner, "{" + INITIAL_BODY + "}", V0InitialJobRequest,
     '{"validator_signature":null,' + INITIAL_BODY + "}"),
    (parse_miner_to_validator, f'{{"message_type":"V0AcceptJobRequest","job_uuid":"{J}"}}', V0AcceptJobRequest, None),
    (parse_miner_to_validator, f'{{"message_type":"V0ExecutorReadyRequest","job_uuid":"{J}","executor_token":null}}',
     V0ExecutorReadyRequest, None),
    (parse_validator_to_miner, "{" + JOB_BODY + "}", V0JobRequest, '{"validator_signature":null,' + JOB_BODY + "}"),
    (parse_miner_to_validator, f'{{"message_type":"V0VolumesReadyRequest","job_uuid":"{J}"}}', V0VolumesReadyRequest,
     None),
    (parse_miner_to_validator, f'{{"message_type":"V0ExecutionDoneRequest","job_uuid":"{J}"}}', V0ExecutionDoneRequest,
     None),
    (parse_miner_to_validator, JOB_FINISHED, V0JobFinishedRequest, None),
    # `.5Z` / `.1Z` must come back in pydantic's canonical six-digit form (§4.6).
    (parse_validator_to_miner, FINISHED_RECEIPT_IN, V0JobFinishedReceiptRequest,
     FINISHED_RECEIPT_IN.replace("12:11:00.5Z", "12:11:00.500000Z").replace("12:00:00.1Z", "12:00:00.100000Z")),
    (parse_miner_to_validator,
     '{"message_type":"V0DeclineJobRequest","job_uuid":"...","message":"","reason":"busy","receipts":[],"context":null}',
     V0DeclineJobRequest, None),
    (parse_miner_to_validator,
     '{"message_type":"V0JobFailedRequest","job_uuid":"...","message":"Job container exited with non-zero exit code: 2",'
     '"reason":"nonzero_return_code","stage":"execution","docker_process_exit_status":2,"docker_process_stdout":"",'
     '"docker_process_stderr":"Traceback...","context":null}', V0JobFailedRequest, None),
    (parse_miner_to_validator,
     '{"message_type":"V0HordeFailedRequest","job_uuid":"...","reported_by":"miner","message":"Executor failed to start",'
     '"reason":"executor_spinup_failed","context":null}', V0HordeFailedRequest, None),
    (parse_miner_to_validator, STREAMING, V0StreamingJobReadyRequest, None),
    (parse_validator_to_miner, '{"message_type":"V0MainHotkeyMessage","main_hotkey":null}', V0MainHotkeyMessage, None),
    (parse_miner_to_validator, '{"message_type":"V0MainHotkeyMessage","main_hotkey":"5GminerYYYY"}',
     V0MainHotkeyMessage, None),
]


@pytest.mark.parametrize(("parse", "frame", "model", "written"), APPENDIX_A, ids=[a[2].__name__ for a in APPENDIX_A])
def test_appendix_a_frames_parse_and_reserialize(parse, frame, model, written) -> None:
    message = parse(frame)
    assert type(message) is model
    assert dump(message) == (written or frame)
    assert dump(parse(dump(message))) == dump(message)  # stable


def test_appendix_a_details() -> None:
    initial = parse_validator_to_miner("{" + INITIAL_BODY + "}")
    assert initial.executor_class is ExecutorClass.spin_up_4min__gpu_24gb
    assert isinstance(initial.volume, SingleFileVolume)
    assert initial.executor_timing.execution_time_limit == 600
    assert initial.job_started_receipt_payload.timestamp.microsecond == 123456
    job = parse_validator_to_miner("{" + JOB_BODY + "}")
    assert isinstance(job.output_upload, ZipAndHttpPutUpload)
    assert job.docker_run_options_preset == "nvidia_all"
    manifest = parse_miner_to_validator(MANIFEST)
    assert manifest.manifest == {ExecutorClass.spin_up_4min__gpu_24gb: 2, ExecutorClass.always_on__llm__a6000: 1}
    assert manifest.total_count == 3
    auth = parse_validator_to_miner(AUTH)
    assert auth.blob() == "5FvaliXXXX:5GminerYYYY:1768996800"
    streaming = parse_miner_to_validator(STREAMING)
    assert streaming.signature_blob() == f"...:203.0.113.7:6001:{streaming.public_key}"


PARSERS = {
    "validator_to_miner": parse_validator_to_miner,
    "miner_to_validator": parse_miner_to_validator,
    "miner_to_executor": parse_miner_to_executor,
    "executor_to_miner": parse_executor_to_miner,
}


@pytest.mark.parametrize("direction", PARSERS)
def test_every_sample_round_trips(direction: str) -> None:
    for message in BY_DIRECTION[direction]:
        text = dump(message)
        assert dump(PARSERS[direction](text)) == text
        assert dump(PARSERS[direction](text.encode())) == text


@pytest.mark.parametrize("direction", PARSERS)
def test_union_rejects_other_directions_types(direction: str) -> None:
    own = {type(m).__name__ for m in BY_DIRECTION[direction]}
    foreign = {type(m).__name__ for d in BY_DIRECTION.values() for m in d} - own
    assert foreign
    for name in foreign:
        frame = next(dump(m) for d in BY_DIRECTION.values() for m in d if type(m).__name__ == name)
        with pytest.raises(ValidationError):
            PARSERS[direction](frame)


def test_allowed_lists_match_the_spec() -> None:
    own = {d: {type(m).__name__ for m in ms} for d, ms in BY_DIRECTION.items()}
    assert own["validator_to_miner"] == {"GenericError", "ValidatorAuthForMiner", "V0InitialJobRequest", "V0JobRequest",
                                         "V0JobAcceptedReceiptRequest", "V0JobFinishedReceiptRequest",
                                         "V0MainHotkeyMessage"}
    assert own["miner_to_executor"] == {"GenericError", "V0InitialJobRequest", "V0JobRequest"}
    assert len(own["miner_to_validator"]) == 16 and len(own["executor_to_miner"]) == 11
    assert own["executor_to_miner"] < own["miner_to_validator"]


@pytest.mark.parametrize("frame", [
    "", "{", "null", "[]", '"x"', "{}", '{"details":"no type"}', '{"message_type":"V9Nope"}', '{"message_type":null}',
    '{"message_type":"V0AcceptJobRequest"}', b"\xff\xfe", "[" * 5000 + "]" * 5000,
])
def test_garbage_is_a_validation_error_for_every_parser(frame) -> None:
    for parse in PARSERS.values():
        with pytest.raises(ValidationError) as info:
            parse(frame)
        assert malformed_details(info.value).startswith("Malformed message: ")
        assert str(info.value) in malformed_details(info.value)


def test_unknown_keys_are_ignored_at_every_level() -> None:
    frame = json.loads("{" + INITIAL_BODY + "}")
    frame["new_top"] = {"x": 1}
    frame["volume"]["new_in_volume"] = 1
    frame["job_started_receipt_payload"]["new_in_receipt"] = [1]
    frame["executor_timing"]["new_in_timing"] = True
    message = parse_validator_to_miner(json.dumps(frame))
    assert dump(message) == '{"validator_signature":null,' + INITIAL_BODY + "}"


def test_lenient_enums_map_unknown_values_to_unknown() -> None:
    failed = parse_executor_to_miner(
        f'{{"message_type":"V0JobFailedRequest","job_uuid":"{J}","reason":"cosmic_ray","stage":"stage_9"}}')
    assert failed.reason is JobFailureReason.UNKNOWN and failed.stage is JobStage.UNKNOWN
    horde = parse_executor_to_miner(f'{{"message_type":"V0HordeFailedRequest","job_uuid":"{J}",'
                                    '"reported_by":"alien","message":"m","reason":7}')
    assert horde.reported_by == "unknown" and horde.reason is HordeFailureReason.UNKNOWN
    decline = parse_miner_to_validator(f'{{"message_type":"V0DeclineJobRequest","job_uuid":"{J}","reason":"tired"}}')
    assert decline.reason == "unknown"
    assert '"reason":"unknown"' in dump(decline)


@pytest.mark.parametrize(("parse", "frame"), [
    (parse_miner_to_validator, '{"message_type":"V0ExecutorManifestRequest","manifest":{"always_on.gpu-80gb":1}}'),
    (parse_miner_to_validator, '{"message_type":"V0ExecutorManifestRequest","manifest":{"always_on.test":-1}}'),
    (parse_miner_to_validator, '{"message_type":"V0ExecutorManifestRequest","manifest":{"always_on.test":1.5}}'),
    (parse_miner_to_validator, '{"message_type":"UnauthorizedError","code":"TOKEN_EXPIRED"}'),
    (parse_validator_to_miner, "{" + INITIAL_BODY.replace('"spin_up-4min.gpu-24gb"', '"gpu-9000"', 1) + "}"),
    (parse_validator_to_miner, "{" + JOB_BODY.replace('"nvidia_all"', '"nvidia_some"') + "}"),
    (parse_validator_to_miner, "{" + JOB_BODY.replace('"zip_and_http_put"', '"carrier_pigeon"') + "}"),
    (parse_validator_to_miner, "{" + INITIAL_BODY.replace('"single_file"', '"floppy"') + "}"),
    (parse_validator_to_miner, FINISHED_RECEIPT_IN.replace('"JobFinishedReceipt"', '"JobDoneReceipt"')),
    (parse_validator_to_miner, FINISHED_RECEIPT_IN.replace("12:11:00.5Z", "12:11:00.5")),  # naive datetime
])
def test_strict_values_reject_the_whole_frame(parse, frame) -> None:
    with pytest.raises(ValidationError):
        parse(frame)


def test_unauthorized_error_codes() -> None:
    for code in ("TOKEN_TOO_OLD", "UNKNOWN_VALIDATOR", "VALIDATOR_INACTIVE"):
        message = parse_miner_to_validator(f'{{"message_type":"UnauthorizedError","code":"{code}"}}')
        assert isinstance(message, UnauthorizedError)
        assert dump(message) == f'{{"message_type":"UnauthorizedError","code":"{code}","details":null}}'


def test_manifest_is_written_with_class_strings() -> None:
    manifest = V0ExecutorManifestRequest(manifest={ExecutorClass.always_on__test: 0, "always_on.cpu.8c.16gb": 3})
    assert dump(manifest) == ('{"message_type":"V0ExecutorManifestRequest",'
                              '"manifest":{"always_on.test":0,"always_on.cpu.8c.16gb":3}}')
    with pytest.raises(ValidationError):
        V0ExecutorManifestRequest(manifest={ExecutorClass.always_on__test: -1})


def test_job_failed_accepts_legacy_aliases_and_writes_field_names() -> None:
    legacy = parse_executor_to_miner(f'{{"message_type":"V0JobFailedRequest","job_uuid":"{J}",'
                                     '"error_detail":"Download failed: 404","error_type":"download_failed",'
                                     '"stage":"volume_download"}')
    assert legacy.message == "Download failed: 404" and legacy.reason is JobFailureReason.DOWNLOAD_FAILED
    assert dump(legacy) == (f'{{"message_type":"V0JobFailedRequest","job_uuid":"{J}","message":"Download failed: 404",'
                            '"reason":"download_failed","stage":"volume_download","docker_process_exit_status":null,'
                            '"docker_process_stdout":null,"docker_process_stderr":null,"context":null}')
    both = parse_executor_to_miner(f'{{"message_type":"V0JobFailedRequest","job_uuid":"{J}","message":"new",'
                                   '"error_detail":"old","reason":"timeout","error_type":"upload_failed"}')
    assert (both.message, both.reason) == ("new", JobFailureReason.TIMEOUT)
    assert V0JobFailedRequest(job_uuid=J, message="m", reason="timeout").reason is JobFailureReason.TIMEOUT


def test_defaults_are_written() -> None:
    assert dump(GenericError()) == '{"message_type":"GenericError","details":null}'
    assert dump(V0DeclineJobRequest(job_uuid=J)) == (
        f'{{"message_type":"V0DeclineJobRequest","job_uuid":"{J}","message":"","reason":"unknown","receipts":[],'
        '"context":null}')


def test_validator_frame_keeps_the_received_object() -> None:
    frame = '{"message_type":"V0MainHotkeyMessage","main_hotkey":null,"extra":{"b":1,"a":"é"}}'
    message, raw = parse_validator_frame(frame)
    assert isinstance(message, V0MainHotkeyMessage)
    assert raw == {"message_type": "V0MainHotkeyMessage", "main_hotkey": None, "extra": {"b": 1, "a": "é"}}
    assert validator_signature_blob(raw) == (
        '{"extra":{"a":"\\u00e9","b":1},"main_hotkey":null,"message_type":"V0MainHotkeyMessage"}')


def test_validator_signature_blob_drops_only_the_signature() -> None:
    raw = {"validator_signature": "0xff", "z": 1.5, "a": [True, None, "☃"], "message_type": "V0JobRequest"}
    assert validator_signature_blob(raw) == '{"a":[true,null,"\\u2603"],"message_type":"V0JobRequest","z":1.5}'
    assert "validator_signature" in raw  # the caller's dict is untouched


def test_validator_signature_round_trip(alice, bob) -> None:
    body = json.loads("{" + JOB_BODY + "}")
    body["field_from_the_future"] = {"k": "ü"}  # unknown to us, still covered by the signature
    body["validator_signature"] = sign_blob(bob, validator_signature_blob(body))
    message, raw = parse_validator_frame(json.dumps(body, ensure_ascii=False).encode())
    assert message.validator_signature == body["validator_signature"]
    assert validator_signature_ok(raw, bob.ss58_address) is True
    assert validator_signature_ok(raw, alice.ss58_address) is False
    tampered = dict(raw, docker_image="evil:latest")
    assert validator_signature_ok(tampered, bob.ss58_address) is False
    assert validator_signature_ok(dict(raw, validator_signature="junk"), bob.ss58_address) is False
    assert validator_signature_ok(dict(raw, validator_signature=5), bob.ss58_address) is False
    del raw["validator_signature"]
    assert validator_signature_ok(raw, bob.ss58_address) is None  # older validators do not sign


def test_auth_signature_round_trip(alice, bob) -> None:
    from horde_protocol.signing import verify_blob

    auth = ValidatorAuthForMiner(validator_hotkey=bob.ss58_address, miner_hotkey=alice.ss58_address,
                                 timestamp=1768996800, signature="")
    auth.signature = sign_blob(bob, auth.blob())
    parsed = parse_validator_to_miner(dump(auth))
    assert verify_blob(bob.ss58_address, parsed.blob(), parsed.signature)
    assert not verify_blob(alice.ss58_address, parsed.blob(), parsed.signature)


@pytest.fixture(scope="module")
def alice():
    from bittensor_wallet import Keypair

    return Keypair.create_from_uri("//Alice")


@pytest.fixture(scope="module")
def bob():
    from bittensor_wallet import Keypair

    return Keypair.create_from_uri("//Bob")
