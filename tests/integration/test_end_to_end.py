"""Validator simulator -> real miner agent (websocket on loopback) -> real executor agent
(unix socket) -> real podman container, and back. Real sr25519 keys for every signature."""

from __future__ import annotations

import time

import aiohttp
import pytest

from horde_protocol.messages import (
    ExecutorTimingDetails,
    V0AcceptJobRequest,
    V0DeclineJobRequest,
    V0ExecutorManifestRequest,
    V0ExecutorReadyRequest,
    V0JobRequest,
)
from horde_protocol.receipts import Receipt, receipt_blob
from horde_protocol.signing import verify_blob
from miner_agent.miner_config import LocalExecutor
from miner_agent.selftest.simulator import inline_zip
from tests.fixtures.miner import sim_for

pytestmark = pytest.mark.podman

CLASS = "always_on.test"
PROGRESS = ["V0AcceptJobRequest", "V0ExecutorReadyRequest", "V0VolumesReadyRequest", "V0ExecutionDoneRequest"]


@pytest.fixture
def agent_config(agent_config):
    """One slot, as a stock executor has, so the busy path is reachable."""
    return agent_config.model_copy(update={"slots": 1})


@pytest.fixture
def e2e_config(miner_config, agent_config):
    local = LocalExecutor(name="local", executor_class=CLASS, socket=agent_config.socket_path)
    return miner_config.model_copy(update={"executors": [local]})


async def _ready_miner(start_miner, config):
    agent = await start_miner(config)
    assert await agent.ctx.fleet.links["local"].wait_up(10), agent.ctx.fleet.links["local"].last_error
    return agent


def _job(sim, image, cmd, timing=None, volume=None):
    initial = sim.initial_request(CLASS, image, volume=volume, timing=timing)
    request = V0JobRequest(job_uuid=initial.job_uuid, executor_class=CLASS, docker_image=image,
                           docker_run_options_preset="none", docker_run_cmd=cmd)
    return initial, request


def _types(received) -> list[str]:
    return [r.type for r in received]


async def _receipts(port: int) -> list[Receipt]:
    page = int(time.time() // 300)
    out: list[Receipt] = []
    async with aiohttp.ClientSession() as http:
        for p in (page - 1, page):
            async with http.get(f"http://127.0.0.1:{port}/receipts/{p}.jsonl") as resp:
                if resp.status == 200:
                    out += [Receipt.model_validate_json(line) for line in (await resp.text()).splitlines()]
    return out


async def test_job_succeeds_and_stdout_comes_back(e2e_config, start_miner, executor_agent, busybox_image,
                                                  validator_key) -> None:
    agent = await _ready_miner(start_miner, e2e_config)
    sim = sim_for(agent, validator_key)
    volume = inline_zip({"data/in.txt": b"volume says hi\n"})
    initial, request = _job(sim, busybox_image, ["sh", "-c", "cat /volume/data/in.txt; echo done >&2"], volume=volume)
    t0 = time.monotonic()
    received = await sim.run_job(initial, request)
    types = _types(received)
    assert types[:4] == PROGRESS, types
    assert types[-1] == "V0JobFinishedRequest", received[-1].message
    assert set(types[4:-1]) <= {"V0MachineSpecsRequest"}
    finished = received[-1].message
    assert finished.docker_process_stdout == "volume says hi\n"
    assert finished.docker_process_stderr == "done\n"
    # Every mandatory message came within its cumulative budget (protocol.md §5.2).
    t = initial.executor_timing
    at = {r.type: r.at - t0 for r in received}
    ready = at["V0ExecutorReadyRequest"]
    assert ready < 3 + 5  # always_on.test spin-up 3 s + startup 5 s
    assert at["V0VolumesReadyRequest"] - ready < t.allowed_leeway + t.download_time_limit
    assert at["V0ExecutionDoneRequest"] - ready < t.allowed_leeway + t.download_time_limit + t.execution_time_limit
    # All three receipts of the job are published with both signatures valid.
    mine = [r for r in await _receipts(agent.port) if str(r.payload.job_uuid) == str(initial.job_uuid)]
    assert sorted(str(r.payload.receipt_type) for r in mine) == ["JobAcceptedReceipt", "JobFinishedReceipt",
                                                                  "JobStartedReceipt"]
    for r in mine:
        blob = receipt_blob(r.payload)
        assert verify_blob(validator_key.ss58_address, blob, r.validator_signature)
        assert verify_blob(agent.ctx.signer.hotkey, blob, r.miner_signature)
    assert not agent.ctx.service.jobs  # the slot is free again


async def test_manifest_counts_reachable_executors_and_drain(e2e_config, start_miner, executor_agent,
                                                              validator_key) -> None:
    agent = await _ready_miner(start_miner, e2e_config)
    sim = sim_for(agent, validator_key)
    async with await sim.connect() as session:
        manifest = (await session.recv_until(V0ExecutorManifestRequest)).message.manifest
    assert {str(k): v for k, v in manifest.items()} == {CLASS: 1}
    agent.ctx.fleet.drain("local")
    async with await sim.connect() as session:
        assert (await session.recv_until(V0ExecutorManifestRequest)).message.manifest == {}
    assert agent.ctx.fleet.reserve(CLASS, "some-job") is None


async def test_nonzero_exit_is_reported_with_status_and_output(e2e_config, start_miner, executor_agent,
                                                                busybox_image, validator_key) -> None:
    agent = await _ready_miner(start_miner, e2e_config)
    sim = sim_for(agent, validator_key)
    initial, request = _job(sim, busybox_image, ["sh", "-c", "echo partial; echo oops >&2; exit 3"])
    received = await sim.run_job(initial, request)
    assert _types(received)[:3] == PROGRESS[:3]
    failed = received[-1].message
    assert failed.message_type == "V0JobFailedRequest"
    assert (failed.reason, failed.stage, failed.docker_process_exit_status) == ("nonzero_return_code", "execution", 3)
    assert failed.docker_process_stdout == "partial\n" and failed.docker_process_stderr == "oops\n"
    assert failed.message == "Job container exited with non-zero exit code: 3"


async def test_execution_overrun_is_a_timeout(e2e_config, start_miner, executor_agent, busybox_image,
                                              validator_key) -> None:
    agent = await _ready_miner(start_miner, e2e_config)
    sim = sim_for(agent, validator_key)
    timing = ExecutorTimingDetails(allowed_leeway=1, download_time_limit=2, execution_time_limit=2,
                                   upload_time_limit=2, streaming_start_time_limit=0)
    initial, request = _job(sim, busybox_image, ["sleep", "60"], timing=timing)
    t0 = time.monotonic()
    received = await sim.run_job(initial, request)
    failed = received[-1].message
    assert failed.message_type == "V0JobFailedRequest", failed
    assert (failed.reason, failed.stage) == ("timeout", "execution")
    assert time.monotonic() - t0 < 15


async def test_second_job_is_declined_busy_while_the_only_slot_is_taken(e2e_config, start_miner, executor_agent,
                                                                         busybox_image, validator_key) -> None:
    agent = await _ready_miner(start_miner, e2e_config)
    sim = sim_for(agent, validator_key)
    first, _ = _job(sim, busybox_image, ["true"])
    async with await sim.connect() as s1:
        await s1.recv_until(V0ExecutorManifestRequest)
        await s1.send(first)
        assert (await s1.recv_until(V0AcceptJobRequest, V0DeclineJobRequest)).type == "V0AcceptJobRequest"
        second, _ = _job(sim, busybox_image, ["true"])
        async with await sim.connect() as s2:
            await s2.recv_until(V0ExecutorManifestRequest)
            await s2.send(second)
            reply = await s2.recv_until(V0AcceptJobRequest, V0DeclineJobRequest)
    assert (reply.type, reply.message.reason) == ("V0DeclineJobRequest", "busy")
    assert [str(r.payload.job_uuid) for r in reply.message.receipts] == [str(first.job_uuid)]


async def test_restart_between_jobs_keeps_first_jobs_receipts(e2e_config, start_miner, executor_agent,
                                                              busybox_image, validator_key) -> None:
    agent = await _ready_miner(start_miner, e2e_config)
    sim = sim_for(agent, validator_key)
    first, request = _job(sim, busybox_image, ["echo", "one"])
    assert _types(await sim.run_job(first, request))[-1] == "V0JobFinishedRequest"
    await agent.stop()
    agent = await _ready_miner(start_miner, e2e_config)
    sim = sim_for(agent, validator_key)
    second, request = _job(sim, busybox_image, ["echo", "two"])
    received = await sim.run_job(second, request)
    assert received[-1].message.docker_process_stdout == "two\n"
    jobs = {str(r.payload.job_uuid) for r in await _receipts(agent.port)}
    assert {str(first.job_uuid), str(second.job_uuid)} <= jobs


async def test_executor_refusing_the_submit_fails_the_job_at_once(e2e_config, start_miner, executor_agent,
                                                                  busybox_image, validator_key, tmp_path) -> None:
    """Two miners wrongly sharing one single-slot executor: the second one's submit is refused
    as busy by the agent, and its validator hears executor_spinup_failed at once, not after
    waiting out the budget."""
    first = await _ready_miner(start_miner, e2e_config)
    second_config = e2e_config.model_copy(update={"miner": e2e_config.miner.model_copy(update={
        "state_dir": tmp_path / "second", "admin_socket": tmp_path / "second.sock"})})
    second = await _ready_miner(start_miner, second_config)
    sim1, sim2 = sim_for(first, validator_key), sim_for(second, validator_key)
    long_job, _ = _job(sim1, busybox_image, ["sleep", "5"])
    async with await sim1.connect() as s1:
        await s1.recv_until(V0ExecutorManifestRequest)
        await s1.send(long_job)
        await s1.recv_until(V0ExecutorReadyRequest)  # the agent's only slot is taken
        t0 = time.monotonic()
        initial, request = _job(sim2, busybox_image, ["true"])
        received = await sim2.run_job(initial, request)
    assert [r.type for r in received] == ["V0AcceptJobRequest", "V0HordeFailedRequest"]
    assert received[-1].message.reason == "executor_spinup_failed"
    assert time.monotonic() - t0 < 5


async def test_demo_job_command_runs_a_job_and_prints_the_messages(e2e_config, start_miner, executor_agent,
                                                                   busybox_image, tmp_path) -> None:
    from miner_agent.keys import create_wallet
    from tests.fixtures.miner import run_cli, write_config

    validator = create_wallet(tmp_path / "vwallets", "validator", "default")
    config = e2e_config.model_copy(update={"validators": e2e_config.validators.model_copy(
        update={"allow": [validator.hotkey]})})
    agent = await _ready_miner(start_miner, config)
    bound = config.model_copy(update={"miner": config.miner.model_copy(update={"listen_port": agent.port})})
    cfg = write_config(tmp_path / "miner.toml", bound)
    code, out, err = await run_cli("demo-job", "--config", str(cfg), "--validator-wallet-path",
                                   str(tmp_path / "vwallets"), "--image", busybox_image)
    assert code == 0, out + err
    for message in PROGRESS + ["V0JobFinishedRequest"]:
        assert message in out
    assert "hello from the volume" in out and out.rstrip().endswith("job finished: OK")


async def test_status_json_and_executors_list_show_a_running_job(e2e_config, start_miner, executor_agent,
                                                                  busybox_image, validator_key, tmp_path) -> None:
    import json

    from tests.fixtures.miner import run_cli, write_config

    agent = await _ready_miner(start_miner, e2e_config)
    cfg = write_config(tmp_path / "miner.toml", e2e_config)
    sim = sim_for(agent, validator_key)
    initial, _ = _job(sim, busybox_image, ["sleep", "5"])
    async with await sim.connect() as session:
        await session.recv_until(V0ExecutorManifestRequest)
        await session.send(initial)
        await session.recv_until(V0ExecutorReadyRequest)
        code, out, _ = await run_cli("status", "--json", "--config", str(cfg))
        status = json.loads(out)
        code_list, listing, _ = await run_cli("executors", "list", "--config", str(cfg))
    assert code == 0 and status["manifest"] == {CLASS: 1} and status["port"] == agent.port
    assert [j["job_uuid"] for j in status["jobs"]] == [str(initial.job_uuid)]
    assert status["jobs"][0]["state"] == "waiting_for_payload" and status["chain"]["backend"] == "static"
    assert status["executors"][0]["running_jobs"] == [str(initial.job_uuid)]
    assert code_list == 0 and listing.splitlines()[0].split() == ["EXECUTOR", "CLASS", "MODE", "LINK", "JOBS", "LAST",
                                                                "ERROR"]
    assert listing.splitlines()[1].split()[:5] == ["local", CLASS, "local", "up", "1/1"]


async def test_an_ended_jobs_secrets_are_not_kept_in_the_miners_state(e2e_config, start_miner, executor_agent,
                                                                      busybox_image, validator_key) -> None:
    """The job's env and its volume URL (presigned in real life) are scrubbed from the database once
    the job has ended, old row versions included (secure_delete + a WAL checkpoint)."""
    from miner_agent.receipts.maintenance import ReceiptMaintenance

    agent = await _ready_miner(start_miner, e2e_config)
    sim = sim_for(agent, validator_key)
    secret = "s3cr3t-token-7f3a9c"
    volume = inline_zip({"in.txt": secret.encode()[::-1]})  # inline content that is recognisable too
    initial, request = _job(sim, busybox_image, ["sh", "-c", "test -n \"$TOKEN\" && echo ok"], volume=volume)
    request = request.model_copy(update={"env": {"TOKEN": secret}})
    received = await sim.run_job(initial, request)
    assert received[-1].type == "V0JobFinishedRequest", received[-1].message
    row = agent.ctx.service.jobs_db.get(str(initial.job_uuid))
    assert row is not None and row.request_json is None and '"volume":null' in row.initial_json
    ReceiptMaintenance(agent.ctx.receipts.conn, agent.ctx.receipts.pages_dir).run_once()
    state = e2e_config.miner.state_dir
    leaked = [p for p in state.rglob("*") if p.is_file() and (secret.encode() in p.read_bytes()
                                                              or volume.contents.encode()[:40] in p.read_bytes())]
    assert leaked == []
