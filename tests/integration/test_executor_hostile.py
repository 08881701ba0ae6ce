"""Hostile and greedy job containers against real podman: floods, disk fill, fork bomb,
memory, the GPU preset without and with a CDI spec, and what cleanup leaves behind."""

from __future__ import annotations

import asyncio
import os
import stat
import time
import tracemalloc
import uuid
from pathlib import Path

import pytest

from executor_agent.executor_config import AgentConfig
from horde_protocol.link_frames import Payload, Submit
from tests.fixtures.podman import LinkClient, agent_with, containers_with_label, podman_cli
from tests.integration.test_executor_agent import initial, job_request, run_job, types

pytestmark = pytest.mark.podman

CDI_DIRS = (Path("/etc/cdi"), Path("/var/run/cdi"))
FAKE_CDI_SPEC = """\
cdiVersion: "0.5.0"
kind: nvidia.com/gpu
devices:
  - name: all
    containerEdits:
      deviceNodes:
        - path: /dev/fakegpu0
          hostPath: /dev/fakegpu0
      env:
        - FAKE_GPU=visible
"""
# The fake GPU's node, made on the host for the test like a real /dev/nvidia0 (a copy of
# /dev/null). Its host path equals its container path, as in the specs `nvidia-ctk cdi generate`
# writes: in a job's user namespace runc cannot mknod, so it bind-mounts the node from that path.
FAKE_GPU_NODE = Path("/dev/fakegpu0")
NULL_DEVICE = (1, 3)
MIB = 1024 * 1024




def vm_hwm_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


async def test_stdout_flood_keeps_agent_memory_bounded(agent_config: AgentConfig, busybox_image: str) -> None:
    flood = 50 * MIB
    line = "0123456789" * 7 + "abcdefghi"  # 80 chars with the newline
    cmd = ["/bin/sh", "-c", f"yes {line} | head -c {flood}; echo the-end >&2"]
    async with agent_with(agent_config, keep_job_dirs=True) as (agent, client):
        Path("/proc/self/clear_refs").write_text("5")  # reset the peak RSS (VmHWM) of this process
        rss_before = vm_hwm_kib()
        tracemalloc.start()
        started = time.monotonic()
        # podman 4.3 serves a 50 MiB log in ~8-12 s on a 2-core VM, inside the execution budget
        job_uuid = str(uuid.uuid4())
        timing = {"allowed_leeway": 5, "download_time_limit": 10, "execution_time_limit": 90,
                  "upload_time_limit": 30, "streaming_start_time_limit": 0}
        await client.send(Submit(job_uuid=job_uuid, initial=initial(job_uuid, busybox_image, timing=timing)))
        await client.send(Payload(job_uuid=job_uuid, request=job_request(job_uuid, busybox_image, cmd)))
        events = await client.recv_events(job_uuid, timeout_s=150)
        took = time.monotonic() - started
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        rss_peak_delta_mib = (vm_hwm_kib() - rss_before) / 1024
        finished = events[-1].message
        assert finished.message_type == "V0JobFinishedRequest", finished
        out = finished.docker_process_stdout
        assert len(out) == 1_000_005 and out.startswith(line[:20]) and out[500_000:500_005] == " ... "
        assert out.endswith("\n") and finished.docker_process_stderr == "the-end\n"
        full = agent.config.jobs_dir / job_uuid / "output" / "stdout.txt"
        assert full.stat().st_size == flood  # the whole stream, streamed to disk
        print(f"\n50 MiB stdout flood: python heap peak {peak / MIB:.1f} MiB, "
              f"process RSS peak growth {rss_peak_delta_mib:.1f} MiB, job took {took:.1f} s")
        assert peak < 24 * MIB, f"agent held {peak / MIB:.1f} MiB while reading a 50 MiB log"
    for cid in containers_with_label(job_uuid):
        podman_cli("rm", "-f", cid)


@pytest.mark.parametrize("where", ["/output/fill", "/tmp/fill"])
async def test_disk_fill_is_killed_at_the_limit(agent_config: AgentConfig, busybox_image: str, where: str) -> None:
    cmd = ["/bin/sh", "-c", f"echo writing; dd if=/dev/zero of={where} bs=1M count=64 2>/dev/null; sleep 30"]
    async with agent_with(agent_config, container={"disk_limit_mib": 16, "disk_check_interval_s": 0.2}) as (_, client):
        started = time.monotonic()
        job_uuid, events = await run_job(client, busybox_image, cmd)
        failed = events[-1].message
        assert types(events) == ["V0ExecutorReadyRequest", "V0VolumesReadyRequest", "V0JobFailedRequest"]
        assert (failed.reason, failed.stage, failed.docker_process_exit_status) == (
            "nonzero_return_code", "execution", 137)
        assert failed.message.startswith("Job container exceeded its disk limit of 16 MiB (it used ")
        assert failed.docker_process_stdout == "writing\n"
        assert time.monotonic() - started < 15, "killed long before the 30 s sleep ended"
        await asyncio.sleep(0.3)
        assert containers_with_label(job_uuid) == []


async def test_fork_bomb_is_contained_by_pids_limit(agent_config: AgentConfig, busybox_image: str) -> None:
    bomb = "f(){ f|f& }; f; sleep 2; set -- /proc/[0-9]*; echo procs=$#"
    async with agent_with(agent_config, container={"pids_limit": 64}) as (_, client):
        job_uuid, events = await run_job(client, busybox_image, ["/bin/sh", "-c", bomb])
        result = events[-1].message
        assert "can't fork" in (result.docker_process_stderr or ""), result
        # The bomb's own shell may or may not get a process slot for its last commands, so
        # the job itself may end either way; what matters is the limit held.
        if result.message_type == "V0JobFinishedRequest":
            procs = int(result.docker_process_stdout.split("procs=")[1].split()[0])
            assert procs <= 64
        else:
            assert result.message_type == "V0JobFailedRequest", result
        # the host is fine: the next job runs normally
        _, events = await run_job(client, busybox_image, ["echo", "after"])
        assert events[-1].message.docker_process_stdout == "after\n"


async def test_memory_limit_is_exit_137(agent_config: AgentConfig, busybox_image: str) -> None:
    # dd allocates and touches a 200 MiB buffer; the 32 MiB cgroup limit kills it. On cgroup v1
    # podman's OOMKilled flag stays false, so the agent reports only what it knows: exit 137.
    cmd = ["/bin/sh", "-c", "echo start; dd if=/dev/zero of=/dev/null bs=200M count=1"]
    async with agent_with(agent_config, container={"memory_limit_mib": 32}) as (_, client):
        _, events = await run_job(client, busybox_image, cmd)
        failed = events[-1].message
        assert (failed.message_type, failed.reason, failed.docker_process_exit_status) == (
            "V0JobFailedRequest", "nonzero_return_code", 137)
        assert failed.message == "Job container exited with non-zero exit code: 137"
        assert failed.docker_process_stdout == "start\n"


async def test_gpu_preset_needs_cdi_and_reaches_the_device(link_client: LinkClient, busybox_image: str) -> None:
    existing = [p for d in CDI_DIRS if d.is_dir() for p in d.iterdir() if "nvidia.com/gpu" in p.read_text()]
    if existing:
        pytest.skip(f"this host has a real nvidia.com/gpu CDI spec ({existing[0]}); the fake would conflict")
    cmd = ["/bin/sh", "-c", "test -c /dev/fakegpu0 && echo device-ok; echo env=$FAKE_GPU"]
    _, events = await run_job(link_client, busybox_image, cmd, docker_run_options_preset="nvidia_all")
    failed = events[-1].message
    assert (failed.message_type, failed.reason) == ("V0HordeFailedRequest", "generic_error")
    assert failed.message.startswith("GPU requested (docker_run_options_preset nvidia_all) but the CDI device "
                                     "nvidia.com/gpu=all is not configured on this executor host")
    assert "nvidia-ctk cdi generate" in failed.message

    made_dir = not CDI_DIRS[0].exists()
    spec = CDI_DIRS[0] / "ch-test-fake-gpu.yaml"
    CDI_DIRS[0].mkdir(parents=True, exist_ok=True)
    spec.write_text(FAKE_CDI_SPEC)
    os.mknod(FAKE_GPU_NODE, 0o666 | stat.S_IFCHR, os.makedev(*NULL_DEVICE))
    try:
        _, events = await run_job(link_client, busybox_image, cmd, docker_run_options_preset="nvidia_all")
    finally:
        FAKE_GPU_NODE.unlink()
        spec.unlink()
        if made_dir:
            CDI_DIRS[0].rmdir()
    finished = events[-1].message
    assert finished.message_type == "V0JobFinishedRequest", finished
    assert finished.docker_process_stdout == "device-ok\nenv=visible\n"


@pytest.mark.parametrize("keep", [False, True])
async def test_cleanup_removes_or_keeps_container_and_dirs(agent_config: AgentConfig, busybox_image: str,
                                                           keep: bool) -> None:
    cmd = ["/bin/sh", "-c", "echo kept > /output/result.txt; echo out"]
    async with agent_with(agent_config, keep_job_dirs=keep) as (agent, client):
        job_uuid, events = await run_job(client, busybox_image, cmd)
        assert events[-1].message.message_type == "V0JobFinishedRequest"
        await asyncio.sleep(0.3)  # cleanup runs right after the terminal event
        job_dir = agent.config.jobs_dir / job_uuid
        left = containers_with_label(job_uuid)
        try:
            assert (job_dir / "events.jsonl").exists()  # always: a late attach replays it
            if keep:
                assert len(left) == 1
                assert (job_dir / "output" / "result.txt").read_text() == "kept\n"
                assert (job_dir / "output" / "stdout.txt").read_text() == "out\n"
            else:
                assert left == []
                assert sorted(p.name for p in job_dir.iterdir()) == ["events.jsonl"]
        finally:
            for cid in left:
                podman_cli("rm", "-f", cid)


async def test_env_key_with_equals_is_the_jobs_failure(link_client: LinkClient, busybox_image: str) -> None:
    # podman 4.3 would start it with A = "B=x"; newer podman refuses the container, which read as our failure
    job_uuid, events = await run_job(link_client, busybox_image, ["env"], env={"A=B": "x", "OK": "1"})
    failed = events[-1].message
    assert types(events) == ["V0ExecutorReadyRequest", "V0JobFailedRequest"]
    assert (failed.reason, failed.stage) == ("unknown", "volume_download")
    assert failed.message == "Invalid job request: env key 'A=B' contains '='; a variable name cannot hold it"
    assert failed.docker_process_exit_status is None
    assert containers_with_label(job_uuid) == []  # refused before any container existed


async def test_invalid_image_reference_fails_the_job_at_startup(link_client: LinkClient, busybox_image: str) -> None:
    job_uuid = str(uuid.uuid4())
    await link_client.send(Submit(job_uuid=job_uuid, initial=initial(job_uuid, "Not A/Valid:Ref:x")))
    (event,) = await link_client.recv_events(job_uuid)
    failed = event.message
    assert (failed.message_type, failed.reason, failed.stage) == ("V0JobFailedRequest", "unknown", "executor_startup")
    assert failed.message.startswith("Invalid job request: docker_image 'Not A/Valid:Ref:x' is not a valid image")
