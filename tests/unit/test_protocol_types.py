"""Enums (protocol.md §2.1, §2.2), volumes and uploads (§8), relative-path checks."""

from __future__ import annotations

import pytest
from pydantic import TypeAdapter, ValidationError

from horde_protocol.enums import (
    DEFAULT_EXECUTOR_CLASS,
    EXECUTOR_CLASS_BY_SHORT_CODE,
    STOCK_DEFAULT_EXECUTOR_CLASS,
    DockerRunOptionsPreset,
    ExecutorClass,
    HordeFailureReason,
    JobFailureReason,
    JobParticipantType,
    JobRejectionReason,
    JobStage,
    UnauthorizedErrorCode,
)
from horde_protocol.paths import relative_path_problem
from horde_protocol.uploads import MultiUpload, OutputUpload, ZipAndHttpPostUpload
from horde_protocol.volumes import HuggingfaceVolume, MultiVolume, Volume
from tests.conformance.samples import UPLOADS, VOLUMES


def test_executor_classes_and_their_specs() -> None:
    assert [c.value for c in ExecutorClass] == [
        "spin_up-4min.gpu-24gb", "always_on.gpu-24gb", "always_on.llm.a6000", "always_on.test", "always_on.cpu.8c.16gb"]
    table = {c.value: (c.spec.short_code, c.spec.spin_up_time_s, c.spec.has_gpu) for c in ExecutorClass}
    assert table == {
        "spin_up-4min.gpu-24gb": ("S", 240, True),
        "always_on.gpu-24gb": ("A", 3, True),
        "always_on.llm.a6000": ("L", 30, True),
        "always_on.test": ("T", 3, False),
        "always_on.cpu.8c.16gb": ("C", 30, False),
    }
    assert EXECUTOR_CLASS_BY_SHORT_CODE["L"] is ExecutorClass.always_on__llm__a6000
    # ours is the class production weights (always_on.cpu.8c.16gb=100 since 2026-01); the stock
    # default stays for the migration of a stock config
    assert DEFAULT_EXECUTOR_CLASS == "always_on.cpu.8c.16gb"
    assert STOCK_DEFAULT_EXECUTOR_CLASS == "spin_up-4min.gpu-24gb"
    assert str(ExecutorClass.always_on__test) == "always_on.test"


def test_enum_values_are_the_wire_strings() -> None:
    assert {e.value for e in JobParticipantType} == {"unknown", "sdk", "facilitator", "validator", "miner", "executor"}
    assert {e.value for e in JobStage} == {"unknown", "executor_startup", "volume_download", "streaming_startup",
                                           "execution", "result_upload"}
    assert {e.value for e in JobFailureReason} == {"unknown", "timeout", "nonzero_return_code", "download_failed",
                                                   "upload_failed"}
    assert len(HordeFailureReason) == 15 and "security_check_failed" in {e.value for e in HordeFailureReason}
    assert {e.value for e in JobRejectionReason} == {"unknown", "busy", "invalid_signature", "invalid_receipt",
                                                     "no_miner_for_job", "validator_blacklisted"}
    assert {e.value for e in DockerRunOptionsPreset} == {"nvidia_all", "none"}
    assert {e.value for e in UnauthorizedErrorCode} == {"TOKEN_TOO_OLD", "UNKNOWN_VALIDATOR", "VALIDATOR_INACTIVE"}


@pytest.mark.parametrize("enum", [JobParticipantType, JobStage, JobFailureReason, HordeFailureReason,
                                  JobRejectionReason])
def test_lenient_enums(enum) -> None:
    assert enum("surely_not_a_value") is enum("unknown")
    assert enum(42) is enum("unknown")
    assert TypeAdapter(enum).validate_json('"brand_new"') is enum("unknown")


@pytest.mark.parametrize("enum", [ExecutorClass, DockerRunOptionsPreset, UnauthorizedErrorCode])
def test_strict_enums(enum) -> None:
    with pytest.raises(ValueError):
        enum("unknown")
    with pytest.raises(ValidationError):
        TypeAdapter(enum).validate_json('"unknown"')


def test_every_volume_and_upload_round_trips() -> None:
    volume, upload = TypeAdapter(Volume), TypeAdapter(OutputUpload)
    for v in VOLUMES:
        assert volume.dump_json(volume.validate_json(volume.dump_json(v))) == volume.dump_json(v)
    for u in UPLOADS:
        assert upload.dump_json(upload.validate_json(upload.dump_json(u))) == upload.dump_json(u)


def test_volume_wire_forms() -> None:
    volume = TypeAdapter(Volume)
    hf = volume.validate_json('{"volume_type":"huggingface_volume","repo_id":"r"}')
    assert isinstance(hf, HuggingfaceVolume)
    assert volume.dump_json(hf) == (b'{"volume_type":"huggingface_volume","repo_id":"r","repo_type":null,'
                                    b'"revision":null,"relative_path":null,"allow_patterns":null,"token":null}')
    assert "hf_x" not in repr(VOLUMES[3])  # secrets stay out of logs
    multi = volume.validate_json('{"volume_type":"multi_volume","volumes":[{"volume_type":"zip_url","contents":"u"}]}')
    assert isinstance(multi, MultiVolume)
    for bad in ['{"volume_type":"multi_volume","volumes":[{"volume_type":"multi_volume","volumes":[]}]}',
                '{"volume_type":"nfs","path":"/x"}', '{"contents":"x"}', '{"volume_type":"single_file","url":"u"}']:
        with pytest.raises(ValidationError):
            volume.validate_json(bad)


def test_upload_wire_forms() -> None:
    upload = TypeAdapter(OutputUpload)
    assert upload.dump_json(upload.validate_json('{"output_upload_type":"single_file_post","url":"u","relative_path":'
                                                 '"a"}')) == (b'{"output_upload_type":"single_file_post","url":"u",'
                                                             b'"form_fields":null,"relative_path":"a",'
                                                             b'"signed_headers":null}')
    multi = upload.validate_json('{"output_upload_type":"multi_upload","uploads":[],"system_output":{"url":"s"}}')
    assert isinstance(multi, MultiUpload) and isinstance(multi.system_output, ZipAndHttpPostUpload)
    for bad in ['{"output_upload_type":"multi_upload","uploads":[{"output_upload_type":"zip_and_http_put","url":"u"}]}',
                '{"output_upload_type":"s3","url":"u"}', '{"url":"u"}']:
        with pytest.raises(ValidationError):
            upload.validate_json(bad)


@pytest.mark.parametrize(("path", "ok"), [
    ("a", True), ("out/a.txt", True), ("é/" + "x" * 255, True), ("..a/b..", True),
    ("", False), ("/etc/passwd", False), ("a/../b", False), ("./a", False), ("a//b", False), ("a/", False),
    ("a\\b", False), ("a\0b", False), ("x" * 256, False), ("é" * 128, False),
])
def test_relative_path_problem(path: str, ok: bool) -> None:
    assert (relative_path_problem(path) is None) is ok
