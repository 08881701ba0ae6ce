"""The miner's job state machine: order, duplicates, terminal messages, watchdog. No sockets."""

from __future__ import annotations

import pytest

from horde_protocol.messages import (
    ExecutorTimingDetails,
    GenericError,
    V0ExecutionDoneRequest,
    V0ExecutorFailedRequest,
    V0ExecutorReadyRequest,
    V0JobFinishedRequest,
    V0JobRequest,
    V0StreamingJobNotReadyRequest,
    V0VolumesReadyRequest,
)
from miner_agent.jobs.machine import (
    WATCHDOG_GRACE_S,
    Budget,
    JobMachine,
    JobRequestRefused,
    JobState,
    Release,
    ToExecutor,
    ToValidator,
)

UUID = "3f1c2a9e-8d4b-4c55-9b0e-2f6a1d7c8e90"
BUDGET = Budget(readiness=8, leeway=5, download=10, execution=20, upload=10, streaming=0)


def machine() -> JobMachine:
    return JobMachine(UUID, BUDGET, started_at=1000.0)


def request() -> V0JobRequest:
    return V0JobRequest(job_uuid=UUID, executor_class="always_on.test", docker_image="img",
                        docker_run_options_preset="none", docker_run_cmd=[])


def sent(actions: list) -> list[str]:
    return [a.message.message_type for a in actions if isinstance(a, ToValidator)]


def test_happy_path_forwards_in_order_and_releases() -> None:
    m = machine()
    assert sent(m.on_executor_message(V0ExecutorReadyRequest(job_uuid=UUID, executor_token="tok"), 1001)) == [
        "V0ExecutorReadyRequest"]
    assert m.state is JobState.WAITING_FOR_PAYLOAD
    acts = m.on_job_request(request(), 1002)
    assert isinstance(acts[0], ToExecutor) and acts[0].request is not None
    assert sent(m.on_executor_message(V0VolumesReadyRequest(job_uuid=UUID), 1003)) == ["V0VolumesReadyRequest"]
    assert sent(m.on_executor_message(V0ExecutionDoneRequest(job_uuid=UUID), 1004)) == ["V0ExecutionDoneRequest"]
    acts = m.on_executor_message(
        V0JobFinishedRequest(job_uuid=UUID, docker_process_stdout="hi", docker_process_stderr=""), 1005)
    assert sent(acts) == ["V0JobFinishedRequest"] and isinstance(acts[-1], Release)
    assert m.state is JobState.FINISHED


def test_ready_is_relayed_without_the_executor_token() -> None:
    acts = machine().on_executor_message(V0ExecutorReadyRequest(job_uuid=UUID, executor_token="secret"), 1001)
    assert acts[0].message.executor_token is None


def test_duplicates_and_out_of_order_progress_are_dropped() -> None:
    m = machine()
    m.on_executor_message(V0ExecutorReadyRequest(job_uuid=UUID), 1001)
    assert m.on_executor_message(V0ExecutorReadyRequest(job_uuid=UUID), 1001) == []
    m.on_executor_message(V0ExecutionDoneRequest(job_uuid=UUID), 1002)
    assert m.on_executor_message(V0VolumesReadyRequest(job_uuid=UUID), 1003) == []
    assert any("duplicate or late" in line for line in m.log)


def test_nothing_after_the_end() -> None:
    m = machine()
    m.on_executor_message(GenericError(details="boom"), 1001)
    assert m.on_executor_message(V0ExecutorReadyRequest(job_uuid=UUID), 1002) == []
    assert m.on_tick(99999) == []


def test_executor_generic_error_becomes_horde_failure() -> None:
    acts = machine().on_executor_message(GenericError(details=None), 1001)
    msg = acts[0].message
    assert msg.message_type == "V0HordeFailedRequest"
    assert (msg.reported_by, msg.reason) == ("executor", "generic_error")
    assert msg.message == "Received GenericError from the executor with no details"


def test_legacy_messages_map_like_the_stock_miner() -> None:
    msg = machine().on_executor_message(V0ExecutorFailedRequest(job_uuid=UUID), 1)[0].message
    assert (msg.message_type, msg.reason, msg.message) == (
        "V0HordeFailedRequest", "generic_error", "Legacy executor failure (V0ExecutorFailedRequest)")
    msg = machine().on_executor_message(V0StreamingJobNotReadyRequest(job_uuid=UUID), 1)[0].message
    assert (msg.message_type, msg.stage, msg.reason) == ("V0JobFailedRequest", "streaming_startup", "unknown")


def test_job_request_before_ready_is_refused() -> None:
    with pytest.raises(JobRequestRefused):
        machine().on_job_request(request(), 1001)


def test_watchdog_fires_only_after_the_budget_plus_grace() -> None:
    m = machine()
    m.on_executor_message(V0ExecutorReadyRequest(job_uuid=UUID), 1000)  # deadline 1000+5+10
    m.on_job_request(request(), 1000)
    m.on_executor_message(V0VolumesReadyRequest(job_uuid=UUID), 1001)  # +20 -> 1035
    assert m.on_tick(1035 + WATCHDOG_GRACE_S - 0.1) == []
    acts = m.on_tick(1035 + WATCHDOG_GRACE_S + 0.1)
    assert any(isinstance(a, ToExecutor) and a.cancel for a in acts)
    assert sent(acts) == ["V0HordeFailedRequest"] and m.state is JobState.FAILED


def test_lost_executor_is_an_honest_horde_failure() -> None:
    acts = machine().on_executor_lost(1001, "gone")
    msg = acts[0].message
    assert (msg.reported_by, msg.reason, msg.message) == ("miner", "executor_disconnected", "gone")


def test_budget_from_initial_request_uses_class_spin_up() -> None:
    import datetime as dt

    from horde_protocol.messages import V0InitialJobRequest
    from horde_protocol.receipts import JobStartedReceiptPayload

    payload = JobStartedReceiptPayload(job_uuid=UUID, miner_hotkey="m", validator_hotkey="v",
                                       timestamp=dt.datetime.now(dt.UTC), executor_class="always_on.test",
                                       is_organic=True, ttl=7)
    initial = V0InitialJobRequest(job_uuid=UUID, executor_class="always_on.test", job_started_receipt_payload=payload,
                                  job_started_receipt_signature="0x00",
                                  executor_timing=ExecutorTimingDetails(allowed_leeway=5, download_time_limit=1,
                                                                        execution_time_limit=2, upload_time_limit=3,
                                                                        streaming_start_time_limit=0))
    b = Budget.from_initial(initial)
    assert (b.readiness, b.leeway, b.download, b.execution, b.upload) == (8, 5, 1, 2, 3)
