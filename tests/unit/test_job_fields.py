"""The job-field checks (executor_agent/daemon/job_fields.py) with a table of bad inputs: every
field a job author controls that would otherwise reach podman, the disk or a socket malformed."""

from __future__ import annotations

from typing import Any

import pytest

from executor_agent.daemon.job_fields import (
    MAX_ARG_STRLEN_BYTES,
    MAX_ENV_VARS,
    MAX_EXEC_ARGS_BYTES,
    MAX_RAW_SCRIPT_BYTES,
    initial_problem,
    request_problem,
)
from horde_protocol.enums import JobFailureReason
from horde_protocol.messages import V0InitialJobRequest, V0JobRequest

CLASS = "always_on.test"
UNKNOWN, DOWNLOAD, UPLOAD = JobFailureReason.UNKNOWN, JobFailureReason.DOWNLOAD_FAILED, JobFailureReason.UPLOAD_FAILED
URL = "https://bucket.example/o?X-Amz-Signature=abc"


def request(**fields: Any) -> V0JobRequest:
    return V0JobRequest.model_validate({
        "job_uuid": "00000000-0000-0000-0000-000000000001", "executor_class": CLASS,
        "docker_image": "ghcr.io/org/job:1.0", "docker_run_options_preset": "none",
        "docker_run_cmd": ["python", "-c", "print(1)"], **fields,
    })


def initial(**fields: Any) -> V0InitialJobRequest:
    return V0InitialJobRequest.model_validate({
        "job_uuid": "00000000-0000-0000-0000-000000000001", "executor_class": CLASS,
        "job_started_receipt_payload": {
            "job_uuid": "00000000-0000-0000-0000-000000000001", "miner_hotkey": "5Gm", "validator_hotkey": "5Fv",
            "timestamp": "2026-01-21T12:00:00Z", "receipt_type": "JobStartedReceipt", "executor_class": CLASS,
            "is_organic": True, "ttl": 7,
        },
        "job_started_receipt_signature": "0x00", **fields,
    })


def single_put(**fields: Any) -> dict[str, Any]:
    return {"output_upload_type": "single_file_put", "url": URL, "relative_path": "out.bin", **fields}


GOOD_REQUESTS: list[dict[str, Any]] = [
    {},
    {"env": {"TOKEN": "s3cr3t", "EMPTY": "", "lower_case": "x", "WITH SPACE": "ok", "UNI_É": "ü"}},
    {"docker_run_cmd": []},  # the image's CMD
    {"docker_run_cmd": ["sh", "-c", ""]},  # an empty argument is an argument
    {"raw_script": "print('hi')", "docker_run_cmd": []},
    {"artifacts_dir": "/artifacts"},
    {"artifacts_dir": "/home/user/art/"},
    {"artifacts_dir": "/outputs"},  # a prefix of /output as a string, not as a path
    {"docker_image": "python"},
    {"docker_image": "localhost:5000/team/img:tag-1.2_3"},
    {"docker_image": "[::1]:5000/img"},
    {"docker_image": "docker.io/library/python@sha256:" + "a" * 64},
    {"docker_image": "my-registry.example.com/a__b/c.d/e-f:latest@sha256:" + "0" * 64},
    {"volume": {"volume_type": "multi_volume", "volumes": [
        {"volume_type": "inline", "contents": "UEsFBgAAAAAAAAAAAAAAAAAAAAAAAA=="},
        {"volume_type": "single_file", "url": URL, "relative_path": "models/a.bin"},
        {"volume_type": "zip_url", "contents": URL, "relative_path": "data"},
        {"volume_type": "huggingface_volume", "repo_id": "org/model"},
    ]}},
    {"output_upload": single_put(signed_headers={"Content-Type": "application/octet-stream", "x-amz-acl": "private"})},
    {"output_upload": {"output_upload_type": "zip_and_http_post", "url": URL, "form_fields": {"key": "a/b", "policy": "x"}}},
    {"output_upload": {"output_upload_type": "multi_upload", "uploads": [single_put()],
                       "system_output": {"output_upload_type": "zip_and_http_put", "url": URL}}},
]


@pytest.mark.parametrize("fields", GOOD_REQUESTS)
def test_good_requests_pass(fields: dict[str, Any]) -> None:
    assert request_problem(request(**fields)) is None


BAD_REQUESTS: list[tuple[str, dict[str, Any], JobFailureReason, str]] = [
    # env
    ("env key with =", {"env": {"A=B": "x"}}, UNKNOWN, "env key 'A=B' contains '='"),
    ("empty env key", {"env": {"": "x"}}, UNKNOWN, "env has an empty key"),
    ("NUL in env key", {"env": {"A\0B": "x"}}, UNKNOWN, "env key 'A\\x00B' contains a NUL byte"),
    ("NUL in env value", {"env": {"A": "x\0y"}}, UNKNOWN, "env['A'] contains a NUL byte"),
    ("env value over MAX_ARG_STRLEN", {"env": {"A": "x" * MAX_ARG_STRLEN_BYTES}}, UNKNOWN, "env['A'] is longer than"),
    ("too many env vars", {"env": {f"V{i}": "" for i in range(MAX_ENV_VARS + 1)}}, UNKNOWN, "variables, more than"),
    ("env and args over the exec budget", {"env": {f"V{i}": "x" * 100_000 for i in range(11)}}, UNKNOWN,
     f"more than the limit of {MAX_EXEC_ARGS_BYTES}"),
    # command
    ("NUL in docker_run_cmd", {"docker_run_cmd": ["sh", "-c", "echo\0"]}, UNKNOWN,
     "docker_run_cmd[2] contains a NUL byte"),
    ("empty program", {"docker_run_cmd": ["", "x"]}, UNKNOWN, "docker_run_cmd[0] is empty"),
    ("argument over MAX_ARG_STRLEN", {"docker_run_cmd": ["echo", "y" * MAX_ARG_STRLEN_BYTES]}, UNKNOWN,
     "docker_run_cmd[1] is longer than"),
    # image
    ("empty image", {"docker_image": ""}, UNKNOWN, "docker_image is empty"),
    ("uppercase repository", {"docker_image": "Library/Python"}, UNKNOWN, "is not a valid image reference"),
    ("space in image", {"docker_image": "python 3"}, UNKNOWN, "is not a valid image reference"),
    ("option as image", {"docker_image": "--privileged"}, UNKNOWN, "is not a valid image reference"),
    ("NUL in image", {"docker_image": "python\0"}, UNKNOWN, "is not a valid image reference"),
    ("bad tag", {"docker_image": "python:3.11:slim"}, UNKNOWN, "is not a valid image reference"),
    ("short digest", {"docker_image": "python@sha256:abc"}, UNKNOWN, "is not a valid image reference"),
    ("name over 255", {"docker_image": "a" * 256}, UNKNOWN, "repository name longer than 255"),
    # raw script
    ("huge raw_script", {"raw_script": "#" * (MAX_RAW_SCRIPT_BYTES + 1)}, UNKNOWN,
     f"raw_script has {MAX_RAW_SCRIPT_BYTES + 1} bytes"),
    # artifacts_dir
    ("relative artifacts_dir", {"artifacts_dir": "art"}, UNKNOWN, "artifacts_dir 'art' is not an absolute path"),
    ("artifacts_dir with ..", {"artifacts_dir": "/art/../etc"}, UNKNOWN, "has a '.' or '..' component"),
    ("artifacts_dir is root", {"artifacts_dir": "//"}, UNKNOWN, "is the container's root directory"),
    ("artifacts_dir is /volume", {"artifacts_dir": "/volume"}, UNKNOWN, "is /volume or inside it"),
    ("artifacts_dir inside /output", {"artifacts_dir": "/output//art"}, UNKNOWN, "is /output or inside it"),
    ("artifacts_dir on /proc", {"artifacts_dir": "/proc/self"}, UNKNOWN, "is /proc or inside it"),
    ("artifacts_dir over /script.py", {"artifacts_dir": "/script.py"}, UNKNOWN, "is /script.py or inside it"),
    ("NUL in artifacts_dir", {"artifacts_dir": "/a\0b"}, UNKNOWN, "contains a NUL byte"),
    # volumes
    ("volume path escapes", {"volume": {"volume_type": "inline", "contents": "", "relative_path": "../x"}},
     DOWNLOAD, "volume.relative_path '../x' has a '..' component"),
    ("absolute single_file path", {"volume": {"volume_type": "single_file", "url": URL, "relative_path": "/etc/x"}},
     DOWNLOAD, "volume.relative_path '/etc/x' is absolute"),
    ("empty single_file path", {"volume": {"volume_type": "single_file", "url": URL, "relative_path": ""}},
     DOWNLOAD, "volume.relative_path is empty"),
    ("sub-volume path with backslash", {"volume": {"volume_type": "multi_volume", "volumes": [
        {"volume_type": "zip_url", "contents": URL},
        {"volume_type": "huggingface_volume", "repo_id": "o/m", "relative_path": "a\\b"}]}},
     DOWNLOAD, "volume.volumes[1].relative_path 'a\\\\b' contains a backslash"),
    ("file:// volume", {"volume": {"volume_type": "zip_url", "contents": "file:///etc/shadow"}}, DOWNLOAD,
     "volume.contents is not an http(s) URL"),
    # uploads
    ("upload path escapes", {"output_upload": single_put(relative_path="../../etc/shadow")}, UPLOAD,
     "output_upload.relative_path '../../etc/shadow' has a '..' component"),
    ("CRLF in signed header", {"output_upload": single_put(signed_headers={"X-A": "v\r\nHost: evil"})}, UPLOAD,
     "output_upload.signed_headers['X-A'] contains a line break"),
    ("bad header name", {"output_upload": single_put(signed_headers={"Bad Name": "v"})}, UPLOAD,
     "invalid header name 'Bad Name'"),
    ("multi upload path", {"output_upload": {"output_upload_type": "multi_upload",
                                            "uploads": [single_put(), single_put(relative_path="a//b")]}},
     UPLOAD, "output_upload.uploads[1].relative_path 'a//b' has an empty component"),
    ("upload to ftp", {"output_upload": {"output_upload_type": "zip_and_http_put", "url": "ftp://h/x"}}, UPLOAD,
     "output_upload.url is not an http(s) URL"),
    ("CRLF in form field name", {"output_upload": {"output_upload_type": "zip_and_http_post", "url": URL,
                                                   "form_fields": {"a\r\nb": "1"}}}, UPLOAD, "contains a line break"),
]


@pytest.mark.parametrize(("fields", "reason", "text"), [b[1:] for b in BAD_REQUESTS], ids=[b[0] for b in BAD_REQUESTS])
def test_bad_requests_name_the_field(fields: dict[str, Any], reason: JobFailureReason, text: str) -> None:
    problem = request_problem(request(**fields))
    assert problem is not None
    assert problem.reason is reason
    assert text in problem.message, problem.message
    prefix = {DOWNLOAD: "Download failed: ", UPLOAD: "Upload failed: "}.get(reason, "")
    assert problem.message.startswith(prefix + "Invalid job request: ")


def test_messages_never_carry_env_values_or_urls() -> None:
    problem = request_problem(request(env={"A": "s3cr3t\0"}))
    assert problem is not None and "s3cr3t" not in problem.message
    problem = request_problem(request(output_upload=single_put(url="ftp://h/x?X-Amz-Signature=sig")))
    assert problem is not None and "sig" not in problem.message


def test_the_initial_volume_is_checked_when_the_request_has_none() -> None:
    bad = {"volume_type": "single_file", "url": URL, "relative_path": "../x"}
    problem = request_problem(request(), initial(volume=bad))
    assert problem is not None and problem.field == "volume.relative_path"
    assert request_problem(request(volume={"volume_type": "inline", "contents": ""}), initial(volume=bad)) is None


def test_non_string_values_are_problems_not_crashes() -> None:
    built = request().model_copy(update={"env": {"A": 1, 2: "b"}, "docker_run_cmd": ["sh", None]})
    problem = request_problem(built)
    assert problem is not None and problem.message == "Invalid job request: env['A'] is not a string"
    problem = request_problem(request().model_copy(update={"docker_run_cmd": ["sh", None]}))
    assert problem is not None and problem.message == "Invalid job request: docker_run_cmd[1] is not a string"


@pytest.mark.parametrize(("image", "ok"), [("python:3.11", True), ("", True), ("UPPER", False), ("a b", False)])
def test_initial_image_is_checked(image: str, ok: bool) -> None:
    problem = initial_problem(initial(docker_image=image))
    assert (problem is None) is ok
    if problem is not None:
        assert problem.field == "docker_image" and problem.reason is UNKNOWN
