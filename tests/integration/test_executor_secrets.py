"""Secrets at rest on the executor host, against real podman, files and sockets: a job's env,
its volume's presigned URL and its upload's presigned URL. While the job runs, the only file
that holds any of them is running.json, 0600, with the upload URL alone (a resume needs it);
once the job has ended no file under the jobs dir holds any of them, kept job dirs included.
And the daemon's 077 umask, which keeps such files private, does not lock the job out of what
it is given."""

from __future__ import annotations

import asyncio
import logging
import os
import stat
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent_common.private import DAEMON_UMASK
from executor_agent.daemon.recovery import STATE_FILE
from executor_agent.executor_config import AgentConfig
from horde_protocol.link_frames import Payload, Submit
from tests.fixtures.httpserver import LocalHttpServer, respond, serve_bytes
from tests.fixtures.podman import LinkClient, containers_with_label, podman_cli
from tests.integration.test_executor_agent import initial, job_request, run_job
from tests.integration.test_executor_hostile import agent_with

pytestmark = pytest.mark.podman

ENV_SECRET = "s3cr3t"
UPLOAD_SIGNATURE = "uPl0adS1gnature"
VOLUME_SIGNATURE = "v0lumeS1gnature"
STATE_APPEAR_TIMEOUT_S = 10.0
TYPICAL_UMASK = 0o022  # what a shell or a unit without UMask= gives: write_text() would make 0644


@pytest.fixture
def typical_umask() -> Iterator[None]:
    old = os.umask(TYPICAL_UMASK)
    try:
        yield
    finally:
        os.umask(old)


def files_holding(root: Path, needles: tuple[str, ...]) -> list[str]:
    found = []
    for dirpath, _dirs, names in os.walk(root):
        for name in names:
            path = Path(dirpath) / name
            if path.is_symlink() or not path.is_file():
                continue
            data = path.read_bytes()
            found += [f"{path.relative_to(root)}: {n}" for n in needles if n.encode() in data]
    return found


async def wait_for(path: Path) -> None:
    deadline = asyncio.get_running_loop().time() + STATE_APPEAR_TIMEOUT_S
    while not path.exists():
        assert asyncio.get_running_loop().time() < deadline, f"{path} never appeared"
        await asyncio.sleep(0.02)


@pytest.mark.parametrize("keep", [False, True], ids=["cleaned", "keep_job_dirs"])
async def test_no_secret_outlives_the_job(agent_config: AgentConfig, busybox_image: str, http_server: LocalHttpServer,
                                          typical_umask: None, caplog: pytest.LogCaptureFixture, keep: bool) -> None:
    caplog.set_level(logging.DEBUG)
    volume_url = http_server.route("GET", "/model.bin", serve_bytes(b"weights")) + f"?X-Amz-Signature={VOLUME_SIGNATURE}"
    upload_url = http_server.route("PUT", "/result", respond(200)) + f"?X-Amz-Signature={UPLOAD_SIGNATURE}"
    # the command must not spell the secret itself: it is stored with the request
    cmd = ["/bin/sh", "-c", 'test "${#TOKEN}" = 6 && cat /volume/model.bin > /output/result; sleep 1.5; echo done']
    needles = (ENV_SECRET, UPLOAD_SIGNATURE, VOLUME_SIGNATURE)
    async with agent_with(agent_config, keep_job_dirs=keep) as (agent, client):
        job_uuid = str(uuid.uuid4())
        job_root = agent.config.jobs_dir / job_uuid
        await client.send(Submit(job_uuid=job_uuid, initial=initial(job_uuid, busybox_image)))
        await client.send(Payload(job_uuid=job_uuid, request=job_request(
            job_uuid, busybox_image, cmd, env={"TOKEN": ENV_SECRET},
            volume={"volume_type": "single_file", "url": volume_url, "relative_path": "model.bin"},
            output_upload={"output_upload_type": "single_file_put", "url": upload_url, "relative_path": "result"})))

        await wait_for(job_root / STATE_FILE)
        mode = stat.S_IMODE((job_root / STATE_FILE).stat().st_mode)
        assert mode == 0o600, f"running.json is {mode:o} under umask {TYPICAL_UMASK:03o}"
        # while it runs: only running.json holds a secret, and only the upload URL a resume needs
        assert files_holding(job_root, needles) == [f"{STATE_FILE}: {UPLOAD_SIGNATURE}"]

        events = await client.recv_events(job_uuid, timeout_s=60)
        finished = events[-1].message
        assert finished.message_type == "V0JobFinishedRequest", finished
        assert finished.docker_process_stdout == "done\n"  # the env reached the job, the volume too
        assert [r.body for r in http_server.requests_to("/result")] == [b"weights"]
        await asyncio.sleep(0.3)  # cleanup runs right after the terminal event

        assert (job_root / "events.jsonl").exists()
        assert files_holding(agent.config.jobs_dir, needles) == []
        assert not (job_root / STATE_FILE).exists()
    logged = caplog.text
    assert ENV_SECRET not in logged and UPLOAD_SIGNATURE not in logged and VOLUME_SIGNATURE not in logged
    for cid in containers_with_label(job_uuid):
        podman_cli("rm", "-f", cid)


async def test_the_daemon_umask_still_lets_the_job_read_its_script(link_client: LinkClient, busybox_image: str) -> None:
    # `executor-agent serve` runs with umask 077 (agent_common/private.py); the job's root is
    # another host uid (a user namespace), so a 0600 /script.py was "Permission denied"
    old = os.umask(DAEMON_UMASK)
    try:
        _, events = await run_job(link_client, busybox_image, [], raw_script="echo from-script")
    finally:
        os.umask(old)
    finished = events[-1].message
    assert finished.message_type == "V0JobFinishedRequest", finished
    assert finished.docker_process_stdout == "from-script\n"
