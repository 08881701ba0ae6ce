"""One instance of every message, volume and upload variant with every field filled, per direction.

Shared by the unit tests (round trips) and the oracle conformance test (the validators' own models must
parse each and write it back byte-exactly).
"""

from __future__ import annotations

from datetime import datetime, timezone

from horde_protocol.enums import ExecutorClass
from horde_protocol.messages import (
    ExecutorTimingDetails,
    GenericError,
    MachineSpecs,
    StreamingDetails,
    UnauthorizedError,
    V0AcceptJobRequest,
    V0DeclineJobRequest,
    V0ExecutionDoneRequest,
    V0ExecutorFailedRequest,
    V0ExecutorManifestRequest,
    V0ExecutorReadyRequest,
    V0HordeFailedRequest,
    V0InitialJobRequest,
    V0JobAcceptedReceiptRequest,
    V0JobFailedRequest,
    V0JobFinishedReceiptRequest,
    V0JobFinishedRequest,
    V0JobRequest,
    V0MachineSpecsRequest,
    V0MainHotkeyMessage,
    V0StreamingJobNotReadyRequest,
    V0StreamingJobReadyRequest,
    V0VolumesReadyRequest,
    ValidatorAuthForMiner,
)
from horde_protocol.receipts import (
    JobAcceptedReceiptPayload,
    JobFinishedReceiptPayload,
    JobStartedReceiptPayload,
    Receipt,
)
from horde_protocol.uploads import (
    MultiUpload,
    SingleFilePostUpload,
    SingleFilePutUpload,
    ZipAndHttpPostUpload,
    ZipAndHttpPutUpload,
)
from horde_protocol.volumes import HuggingfaceVolume, InlineVolume, MultiVolume, SingleFileVolume, ZipUrlVolume

JOB = "3f1c2a9e-8d4b-4c55-9b0e-2f6a1d7c8e90"
OTHER_JOB = "0b6f3c52-1e7a-4d8e-a2c4-5f9b7d3e1a60"
MINER = "5GrwvaEF5zXb26Fz9rcQpDWS57CtERHpNehXCPcNoHGKutQY"  # //Alice
VALIDATOR = "5FHneW46xGXgs5mUiveU4sbTyGBzmstUspZC92UhjJM694ty"  # //Bob
SIG = "0x" + "ab" * 64
T0 = datetime(2026, 1, 21, 12, 0, 0, 123456, tzinfo=timezone.utc)
T1 = datetime(2026, 1, 21, 12, 11, 0, tzinfo=timezone.utc)

STARTED = JobStartedReceiptPayload(
    job_uuid=JOB, miner_hotkey=MINER, validator_hotkey=VALIDATOR, timestamp=T0,
    executor_class=ExecutorClass.always_on__llm__a6000, is_organic=True, ttl=7,
)
ACCEPTED = JobAcceptedReceiptPayload(
    job_uuid=JOB, miner_hotkey=MINER, validator_hotkey=VALIDATOR, timestamp=T1, time_accepted=T0, ttl=300,
)
FINISHED = JobFinishedReceiptPayload(
    job_uuid=JOB, miner_hotkey=MINER, validator_hotkey=VALIDATOR, timestamp=T1, time_started=T0,
    time_took_us=660_400_000, score_str="720.000000", block_numbers=[7412001, 7412002],
)
RECEIPT = Receipt(
    payload=STARTED.model_copy(update={"job_uuid": OTHER_JOB}), validator_signature=SIG, miner_signature=SIG
)

VOLUMES = [
    InlineVolume(contents="UEsFBgAAAAAAAAAAAAAAAAAAAAAAAA==", relative_path="in"),
    ZipUrlVolume(contents="https://example.invalid/in.zip"),
    SingleFileVolume(url="https://example.invalid/in.txt", relative_path="in.txt"),
    HuggingfaceVolume(repo_id="org/model", repo_type="dataset", revision="main", relative_path="hf",
                      allow_patterns=["*.json", "*.txt"], token="hf_x"),
    HuggingfaceVolume(repo_id="org/model", allow_patterns="*.bin"),
    MultiVolume(volumes=[
        InlineVolume(contents="UEsFBgAAAAAAAAAAAAAAAAAAAAAAAA=="),
        SingleFileVolume(url="https://example.invalid/a", relative_path="a"),
    ]),
]
UPLOADS = [
    ZipAndHttpPostUpload(url="https://example.invalid/post", form_fields={"key": "k", "policy": "p"}),
    ZipAndHttpPutUpload(url="https://example.invalid/put"),
    SingleFilePostUpload(url="https://example.invalid/p1", relative_path="out/a.txt", form_fields={"k": "v"},
                         signed_headers={"x-amz-acl": "private"}),
    SingleFilePutUpload(url="https://example.invalid/p2", relative_path="b.txt", signed_headers={"h": "v"}),
    MultiUpload(
        uploads=[SingleFilePutUpload(url="https://example.invalid/p3", relative_path="c.txt")],
        system_output=ZipAndHttpPutUpload(url="https://example.invalid/sys"),
    ),
    MultiUpload(uploads=[], system_output=ZipAndHttpPostUpload(url="https://example.invalid/sys2")),
]


def initial_request(**update: object) -> V0InitialJobRequest:
    """A validated request (model_copy would skip validation and leave plain strings in enum fields)."""
    fields = dict(
        job_uuid=JOB, executor_class=ExecutorClass.always_on__llm__a6000, docker_image="python:3.11-slim",
        timeout_seconds=300, volume=VOLUMES[2], job_started_receipt_payload=STARTED,
        job_started_receipt_signature=SIG,
        executor_timing=ExecutorTimingDetails(allowed_leeway=5, download_time_limit=60, execution_time_limit=600,
                                              upload_time_limit=60, streaming_start_time_limit=0),
    )
    return V0InitialJobRequest(**{**fields, **update})


def job_request(**update: object) -> V0JobRequest:
    fields = dict(
        job_uuid=JOB, executor_class=ExecutorClass.spin_up_4min__gpu_24gb, docker_image="python:3.11-slim",
        raw_script="print('héllo ☃')", docker_run_options_preset="nvidia_all", docker_run_cmd=["python", "-c", "1"],
        env={"A": "1"}, volume=None, output_upload=UPLOADS[1], artifacts_dir="/artifacts",
    )
    return V0JobRequest(**{**fields, **update})


VALIDATOR_TO_MINER = [
    GenericError(details="oops"),
    GenericError(),
    ValidatorAuthForMiner(validator_hotkey=VALIDATOR, miner_hotkey=MINER, timestamp=1768996800, signature=SIG),
    initial_request(),
    initial_request(volume=None, executor_timing=None, validator_signature=SIG,
                    streaming_details=StreamingDetails(public_key="-----BEGIN CERTIFICATE-----\nx\n")),
    *[initial_request(volume=v) for v in VOLUMES],
    job_request(),
    job_request(docker_run_options_preset="none", raw_script=None, env={}, output_upload=None, artifacts_dir=None,
                validator_signature=SIG),
    *[job_request(output_upload=u) for u in UPLOADS],
    V0JobAcceptedReceiptRequest(payload=ACCEPTED, signature=SIG),
    V0JobFinishedReceiptRequest(payload=FINISHED, signature=SIG),
    V0JobFinishedReceiptRequest(payload=FINISHED.model_copy(update={"block_numbers": [], "score_str": "0.000000"}),
                                signature=SIG),
    V0MainHotkeyMessage(),
]

EXECUTOR_TO_MINER = [
    GenericError(details="x"),
    V0ExecutorFailedRequest(job_uuid=JOB),
    V0StreamingJobNotReadyRequest(job_uuid=JOB),
    V0ExecutorReadyRequest(job_uuid=JOB),
    V0StreamingJobReadyRequest(job_uuid=JOB, public_key="-----BEGIN CERTIFICATE-----\nx\n", port=6006),
    V0VolumesReadyRequest(job_uuid=JOB),
    V0ExecutionDoneRequest(job_uuid=JOB),
    V0JobFailedRequest(job_uuid=JOB, message="Job container exited with non-zero exit code: 2",
                       reason="nonzero_return_code", stage="execution", docker_process_exit_status=2,
                       docker_process_stdout="", docker_process_stderr="Traceback…", context={"a": [1, None]}),
    V0JobFailedRequest(job_uuid=JOB),
    V0JobFinishedRequest(job_uuid=JOB, docker_process_stdout="1\n", docker_process_stderr="",
                         artifacts={"/artifacts/out.json": "eyJvayI6IHRydWV9"},
                         upload_results={"output.zip": '{"headers": {"etag": "abc"}, "body": ""}'}),
    V0JobFinishedRequest(job_uuid=JOB, docker_process_stdout="", docker_process_stderr=""),
    V0MachineSpecsRequest(job_uuid=JOB, specs=MachineSpecs(specs={"gpu": {"count": 1}, "os": "Debian 12"})),
    V0HordeFailedRequest(job_uuid=JOB, reported_by="executor", message="Unhandled exception",
                         reason="unhandled_exception", context={"exception_type": "KeyError", "stage": "execution"}),
]

MINER_TO_VALIDATOR = [
    *EXECUTOR_TO_MINER,
    UnauthorizedError(code="VALIDATOR_INACTIVE", details="inactive"),
    V0ExecutorManifestRequest(manifest={c: i for i, c in enumerate(ExecutorClass)}),
    V0ExecutorManifestRequest(manifest={}),
    V0MainHotkeyMessage(main_hotkey=MINER),
    V0DeclineJobRequest(job_uuid=JOB, reason="busy", receipts=[RECEIPT], message="no free executor",
                        context={"free": 0}),
    V0DeclineJobRequest(job_uuid=JOB, reason="invalid_receipt"),
    V0AcceptJobRequest(job_uuid=JOB),
    V0ExecutorReadyRequest(job_uuid=JOB, executor_token=None),
    V0StreamingJobReadyRequest(job_uuid=JOB, public_key="-----BEGIN CERTIFICATE-----\nx\n", ip="203.0.113.7",
                               port=6001, miner_signature=SIG),
    V0HordeFailedRequest(job_uuid=JOB, reported_by="miner", message="Executor failed to start",
                         reason="executor_spinup_failed"),
]

MINER_TO_EXECUTOR = [
    GenericError(details="x"),
    initial_request(streaming_details=StreamingDetails(public_key="pem", executor_ip="198.51.100.2")),
    *[initial_request(volume=v) for v in VOLUMES],
    job_request(),
    *[job_request(output_upload=u) for u in UPLOADS],
]

BY_DIRECTION = {
    "validator_to_miner": VALIDATOR_TO_MINER,
    "miner_to_validator": MINER_TO_VALIDATOR,
    "miner_to_executor": MINER_TO_EXECUTOR,
    "executor_to_miner": EXECUTOR_TO_MINER,
}
RECEIPT_PAYLOADS = [STARTED, ACCEPTED, FINISHED]
