"""Runs INSIDE .venv-oracle (compute-horde 0.0.27, the validators' own models); never imported by our code.

Reads one JSON request on stdin, writes one JSON answer on stdout:

    request  {"parse": {direction: [frame, ...]}, "blobs": [payload_json, ...],
              "receipts": [page_line, ...], "signed_frames": [[frame, validator_ss58], ...]}
    answer   {"parse": {direction: [{"ok": bool, "dump" | "error": str}, ...]}, "blobs": [str, ...],
              "receipts": [[validator_ok, miner_ok], ...], "signed_frames": [bool, ...],
              "emitted": {direction: [frame, ...]}, "emitted_receipts": [{"payload", "blob", "signature"}, ...],
              "keys": {"validator": ss58, "miner": ss58}}

"emitted" frames are built here with the oracle's own classes, with every field the oracle knows set.
"""

from __future__ import annotations

import datetime as dt
import json
import sys

import bittensor
from compute_horde import protocol_messages as pm
from compute_horde.receipts.schemas import (
    JobAcceptedReceiptPayload,
    JobFinishedReceiptPayload,
    JobStartedReceiptPayload,
    Receipt,
)
from compute_horde_core import output_upload as ou
from compute_horde_core import volume as vol
from compute_horde_core.executor_class import ExecutorClass
from compute_horde_core.streaming import StreamingDetails
from pydantic import TypeAdapter

ADAPTERS = {
    "miner_to_validator": TypeAdapter(pm.MinerToValidatorMessage),
    "miner_to_executor": TypeAdapter(pm.MinerToExecutorMessage),
    "executor_to_miner": TypeAdapter(pm.ExecutorToMinerMessage),
}
PAYLOAD = TypeAdapter(
    JobStartedReceiptPayload | JobAcceptedReceiptPayload | JobFinishedReceiptPayload
)
VALIDATOR = bittensor.Keypair.create_from_uri("//Bob")
MINER = bittensor.Keypair.create_from_uri("//Alice")
J = "7d0c6a7e-52b1-4f0e-9a43-0c1e2d3f4a5b"
T0 = dt.datetime(2026, 1, 21, 12, 0, 0, 654321, tzinfo=dt.UTC)
T1 = dt.datetime(2026, 1, 21, 12, 30, tzinfo=dt.UTC)


def parse(direction: str, frame: str) -> dict:
    try:
        if direction == "validator_to_miner":
            message = pm.parse_validator_to_miner_message(frame)
        else:
            message = ADAPTERS[direction].validate_json(frame)
    except Exception as exc:  # noqa: BLE001 - any refusal is the answer
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    return {"ok": True, "dump": message.model_dump_json()}


def sign(blob: str) -> str:
    return f"0x{VALIDATOR.sign(blob).hex()}"


def emitted_receipts() -> list:
    keys = {"job_uuid": J, "miner_hotkey": MINER.ss58_address, "validator_hotkey": VALIDATOR.ss58_address}
    payloads = [
        JobStartedReceiptPayload(**keys, timestamp=T0, executor_class=ExecutorClass.always_on__test,
                                 is_organic=True, ttl=7),
        JobStartedReceiptPayload(**keys, timestamp=T1, executor_class=ExecutorClass.spin_up_4min__gpu_24gb,
                                 is_organic=False, ttl=0),
        JobAcceptedReceiptPayload(**keys, timestamp=T1, time_accepted=T0, ttl=265),
        JobFinishedReceiptPayload(**keys, timestamp=T1, time_started=T0, time_took_us=1_799_345_679,
                                  score_str="130.000000", block_numbers=[5000000, 5000001]),
        JobFinishedReceiptPayload(**{**keys, "miner_hotkey": "5Gminér☃"}, timestamp=T1, time_started=T1,
                                  time_took_us=0, score_str="0.000000"),
    ]
    return [{"payload": p.model_dump_json(), "blob": p.blob_for_signing(), "signature": sign(p.blob_for_signing())}
            for p in payloads]


def emitted_frames() -> dict:
    started = JobStartedReceiptPayload(job_uuid=J, miner_hotkey=MINER.ss58_address,
                                       validator_hotkey=VALIDATOR.ss58_address, timestamp=T0,
                                       executor_class=ExecutorClass.always_on__llm__a6000, is_organic=True, ttl=7)
    timing = pm.V0InitialJobRequest.ExecutorTimingDetails(allowed_leeway=5, download_time_limit=60,
                                                          execution_time_limit=3600, upload_time_limit=60,
                                                          streaming_start_time_limit=30)
    volumes = [
        vol.InlineVolume(contents="UEsFBgAAAAAAAAAAAAAAAAAAAAAAAA==", relative_path="x"),
        vol.ZipUrlVolume(contents="https://example.invalid/a.zip"),
        vol.SingleFileVolume(url="https://example.invalid/f", relative_path="f"),
        vol.HuggingfaceVolume(repo_id="o/r", repo_type="model", revision="v1", allow_patterns=["*.py"], token="t"),
        vol.MultiVolume(volumes=[vol.ZipUrlVolume(contents="u", relative_path="z"),
                                 vol.HuggingfaceVolume(repo_id="o/r", allow_patterns="*")]),
    ]
    uploads = [
        ou.ZipAndHttpPostUpload(url="https://example.invalid/p", form_fields={"a": "b"}),
        ou.ZipAndHttpPutUpload(url="https://example.invalid/q"),
        ou.SingleFilePostUpload(url="u", relative_path="d/e.txt", form_fields={"f": "g"}, signed_headers={"h": "i"}),
        ou.SingleFilePutUpload(url="u", relative_path="e.txt", signed_headers={"h": "i"}),
        ou.MultiUpload(uploads=[ou.SingleFilePostUpload(url="u", relative_path="k")],
                       system_output=ou.ZipAndHttpPostUpload(url="s", form_fields={"x": "y"})),
    ]
    initial = [pm.V0InitialJobRequest(
        job_uuid=J, executor_class=ExecutorClass.always_on__llm__a6000, docker_image="img:1", timeout_seconds=None,
        volume=v, job_started_receipt_payload=started, job_started_receipt_signature=sign(started.blob_for_signing()),
        streaming_details=StreamingDetails(public_key="PEM\n", executor_ip="192.0.2.1"), executor_timing=timing,
    ) for v in volumes]
    jobs = [pm.V0JobRequest(
        job_uuid=J, executor_class=ExecutorClass.always_on__cpu__8c__16gb, docker_image="img:2", raw_script="print(1)",
        docker_run_options_preset="none", docker_run_cmd=[], env={"K": "ü"}, volume=volumes[0], output_upload=u,
        artifacts_dir="/a",
    ) for u in uploads]
    receipt = Receipt(payload=started, validator_signature=sign(started.blob_for_signing()),
                      miner_signature=f"0x{MINER.sign(started.blob_for_signing()).hex()}")
    finished_payload = PAYLOAD.validate_json(emitted_receipts()[3]["payload"])
    executor = [
        pm.GenericError(details="boom"),
        pm.V0ExecutorFailedRequest(job_uuid=J),
        pm.V0StreamingJobNotReadyRequest(job_uuid=J, executor_token="t"),
        pm.V0ExecutorReadyRequest(job_uuid=J),
        pm.V0StreamingJobReadyRequest(job_uuid=J, public_key="PEM\n", port=6006),
        pm.V0VolumesReadyRequest(job_uuid=J),
        pm.V0ExecutionDoneRequest(job_uuid=J),
        pm.V0JobFailedRequest(job_uuid=J, message="Upload failed", reason="upload_failed", stage="result_upload",
                              docker_process_exit_status=0, docker_process_stdout="o", docker_process_stderr="e",
                              context={"n": 1.25, "l": [None, True]}),
        pm.V0JobFinishedRequest(job_uuid=J, docker_process_stdout="ø", docker_process_stderr="",
                                artifacts={"/a/b": "Yg=="}, upload_results={"k": "{}"}),
        pm.V0MachineSpecsRequest(job_uuid=J, specs={"specs": {"cpu": {"count": 8, "clocks": [3.5]}}}),
        pm.V0HordeFailedRequest(job_uuid=J, reported_by="executor", message="Failed to pull docker image",
                                reason="generic_error", context=None),
    ]
    return {
        "validator_to_miner": [
            pm.GenericError(),
            pm.ValidatorAuthForMiner(validator_hotkey=VALIDATOR.ss58_address, miner_hotkey=MINER.ss58_address,
                                     timestamp=1768996800, signature=sign("x")),
            *initial,
            initial[0].signed(VALIDATOR),
            *jobs,
            jobs[-1].signed(VALIDATOR),
            pm.V0JobAcceptedReceiptRequest(payload=PAYLOAD.validate_json(emitted_receipts()[2]["payload"]),
                                           signature=sign("y")),
            pm.V0JobFinishedReceiptRequest(payload=finished_payload, signature=sign("z")),
            pm.V0MainHotkeyMessage(),
        ],
        "miner_to_executor": [pm.GenericError(details="x"), *initial, *jobs],
        "executor_to_miner": executor,
        "miner_to_validator": [
            *executor,
            pm.UnauthorizedError(code=pm.UnauthorizedError.Code.TOKEN_TOO_OLD),
            pm.V0ExecutorManifestRequest(manifest={ExecutorClass.always_on__test: 3, ExecutorClass.always_on__gpu_24gb: 0}),
            pm.V0MainHotkeyMessage(main_hotkey=MINER.ss58_address),
            pm.V0DeclineJobRequest(job_uuid=J, message="busy", reason="busy", receipts=[receipt], context={"a": "b"}),
            pm.V0AcceptJobRequest(job_uuid=J),
            pm.V0StreamingJobReadyRequest(job_uuid=J, executor_token=None, public_key="PEM", ip="198.51.100.9",
                                          port=6001, miner_signature="0x00"),
        ],
    }


def main() -> None:
    request = json.load(sys.stdin)
    answer = {
        "parse": {d: [parse(d, f) for f in frames] for d, frames in request.get("parse", {}).items()},
        "blobs": [PAYLOAD.validate_json(p).blob_for_signing() for p in request.get("blobs", [])],
        "receipts": [
            [r.verify_validator_signature(), r.verify_miner_signature()]
            for r in (Receipt.model_validate_json(line) for line in request.get("receipts", []))
        ],
        "signed_frames": [
            pm.parse_validator_to_miner_message(frame).is_signed_by(hotkey)
            for frame, hotkey in request.get("signed_frames", [])
        ],
        "emitted": {d: [m.model_dump_json() for m in ms] for d, ms in emitted_frames().items()},
        "emitted_receipts": emitted_receipts(),
        "keys": {"validator": VALIDATOR.ss58_address, "miner": MINER.ss58_address},
    }
    json.dump(answer, sys.stdout)


if __name__ == "__main__":
    main()
