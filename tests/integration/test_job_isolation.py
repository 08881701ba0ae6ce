"""Container root is not host root (issue 10, item 6), proven against real podman and real files.

The attack: a job runs as root in its image, copies a binary into /output and makes it
setuid; /output lies on this host, so before the fix the file was setuid *host root* and any
local user who ran it got euid 0. The payload here is the host's coreutils `env`, shipped in
the job's volume (busybox, the test image, drops privileges when run setuid, so it would prove
nothing): run setuid, `env cat /proc/self/status` shows the euid the kernel gave. A control runs
the same attack with the pre-fix container arguments and must get euid 0, so the test can tell.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import re
import shutil
import stat
import subprocess
import tempfile
import time
import uuid
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from executor_agent.container.job_spec import JOB_CAPABILITIES, USERNS_SIZE
from executor_agent.container.podman_engine import Podman
from executor_agent.daemon.job_container import USERNS_MESSAGE
from executor_agent.daemon.jobdirs import JOBS_DIR_MODE, SHARED_DIR_MODE
from executor_agent.executor_config import AgentConfig
from tests.fixtures.httpserver import LocalHttpServer, respond
from tests.fixtures.podman import (
    CONTAINERS_CONF,
    SOCKET_APPEAR_TIMEOUT_S,
    agent_with,
    containers_with_label,
    podman_cli,
)
from tests.integration.test_executor_agent import run_job

pytestmark = pytest.mark.podman

PAYLOAD = Path("/usr/bin/env")  # coreutils: keeps the euid it was given (busybox would drop it)
# A local user with no privilege at all. Not `setpriv --reuid`: it keeps root's capabilities
# until its exec, so the exec's own path lookup still passes 0700 directories.
UNPRIVILEGED = ["runuser", "-u", "nobody", "--"]
RUN_TIMEOUT_S = 30.0
# Linux capability numbers (linux/capability.h) of what a job keeps, for CapEff in /proc.
CAP_NUMBERS = {"CHOWN": 0, "DAC_OVERRIDE": 1, "FOWNER": 3, "KILL": 5, "SETGID": 6, "SETUID": 7}
SETUID_ROOT_ATTACK = ("cp /volume/env /output/env && chmod 4755 /output/env && "
                      "cp /bin/busybox /output/sh && chmod 4755 /output/sh")
PROBE = (f"{SETUID_ROOT_ATTACK}; echo uid=$(id -u); echo uid_map=$(cat /proc/self/uid_map); "
         "mount | grep -E ' /(volume|output|art) '; grep -E '^(NoNewPrivs|CapEff|CapBnd):' /proc/self/status; "
         "echo result > /output/r.txt; mkdir -m 0700 /output/private && echo secret > /output/private/s.txt; "
         "chmod 0600 /output/private/s.txt; echo art > /art/one.txt")


@pytest.fixture
def podman_without_subids(tmp_path: Path) -> Iterator[str]:
    """A real podman API service that sees empty /etc/subuid and /etc/subgid (bind-mounted in
    its own mount namespace; the host's files are untouched): a host nobody set up."""
    empty = tmp_path / "empty-subids"
    empty.write_text("")
    sock = Path(tempfile.mkdtemp(prefix="ch-nosubid-")) / "podman.sock"
    script = (f"mount --bind {empty} /etc/subuid && mount --bind {empty} /etc/subgid && "
              f"exec podman system service --time=0 unix://{sock}")
    for path in (Path("/etc/subuid"), Path("/etc/subgid")):
        path.touch(exist_ok=True)  # a bind mount needs a file to cover
    proc = subprocess.Popen(["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
                            env={**os.environ, "CONTAINERS_CONF": str(CONTAINERS_CONF)}, cwd=sock.parent,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + SOCKET_APPEAR_TIMEOUT_S
        while not sock.exists():
            assert proc.poll() is None and time.monotonic() < deadline, "podman service did not start"
            time.sleep(0.05)
        yield f"unix://{sock}"
    finally:
        proc.terminate()
        proc.wait(RUN_TIMEOUT_S)
        shutil.rmtree(sock.parent, ignore_errors=True)


def payload_volume() -> dict[str, Any]:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("env", PAYLOAD.read_bytes())
    return {"volume_type": "inline", "contents": base64.b64encode(buf.getvalue()).decode()}




@contextlib.contextmanager
def reachable_link(target: Path) -> Iterator[Path]:
    """A hard link to `target` (same inode: same owner and mode bits) in a directory any local
    user can pass through; the job dirs themselves are closed to them (JOBS_DIR_MODE)."""
    holder = Path(tempfile.mkdtemp(prefix="ch-suid-", dir="/tmp"))
    try:
        holder.chmod(0o711)
        link = holder / target.name
        os.link(target, link)
        yield link
    finally:
        shutil.rmtree(holder, ignore_errors=True)


def run_unprivileged(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*UNPRIVILEGED, *argv], check=False, capture_output=True, text=True, timeout=RUN_TIMEOUT_S)


def status_ids(status_text: str, key: str) -> list[int]:
    """[real, effective, saved, fs] of a /proc/<pid>/status `Uid:`/`Gid:` line."""
    line = next(line for line in status_text.splitlines() if line.startswith(f"{key}:"))
    return [int(x) for x in line.split()[1:]]


def euid_when_run_by_nobody(binary: Path) -> int:
    with reachable_link(binary) as link:
        done = run_unprivileged(str(link), "cat", "/proc/self/status")
    assert done.returncode == 0, done.stderr
    return status_ids(done.stdout, "Uid")[1]


def remove_setuid_files(*roots: Path) -> None:
    for root in roots:
        for path in root.rglob("*") if root.exists() else ():
            if path.is_file() and not path.is_symlink() and path.stat().st_mode & stat.S_ISUID:
                path.unlink()


async def test_a_root_job_cannot_leave_a_setuid_root_binary(agent_config: AgentConfig, busybox_image: str,
                                                            http_server: LocalHttpServer) -> None:
    upload_url = http_server.route("PUT", "/out.zip", respond(200, body=b"stored"))
    async with agent_with(agent_config, keep_job_dirs=True) as (_agent, client):
        job_uuid, events = await run_job(client, busybox_image, ["/bin/sh", "-c", PROBE],
                                         init_kw={"volume": payload_volume()}, artifacts_dir="/art",
                                         output_upload={"output_upload_type": "zip_and_http_put", "url": upload_url})
        other_uuid, other_events = await run_job(client, busybox_image, ["/bin/sh", "-c", "touch /output/t"])
    try:
        finished = events[-1].message
        assert finished.message_type == "V0JobFinishedRequest", finished
        assert other_events[-1].message.message_type == "V0JobFinishedRequest", other_events[-1].message
        out = finished.docker_process_stdout
        jobs_dir = agent_config.jobs_dir
        output = jobs_dir / job_uuid / "output"

        # Inside: root, but in a user namespace whose root is an unprivileged host uid.
        assert "uid=0\n" in out, out
        inner, host_root, size = (int(x) for x in re.search(r"uid_map=\s*(\d+)\s+(\d+)\s+(\d+)", out).groups())
        assert (inner, size) == (0, USERNS_SIZE) and host_root >= 65536, out
        # Every bind nosuid,nodev; no new privileges; only the kept capabilities, bounding set too.
        for target in ("/volume", "/output", "/art"):
            options = re.search(rf" on {target} type \S+ \(([^)]*)\)", out).group(1).split(",")
            assert "nosuid" in options and "nodev" in options, (target, options)
        assert re.search(r"NoNewPrivs:\s+1\n", out), out
        kept = sum(1 << CAP_NUMBERS[name] for name in JOB_CAPABILITIES)
        assert int(re.search(r"CapEff:\s+([0-9a-f]+)", out).group(1), 16) == kept, out
        assert int(re.search(r"CapBnd:\s+([0-9a-f]+)", out).group(1), 16) == kept, out

        # On the host: the job dirs are closed to other users, and the binaries are not root's.
        assert stat.S_IMODE(jobs_dir.stat().st_mode) == JOBS_DIR_MODE == 0o700
        assert stat.S_IMODE(output.stat().st_mode) == SHARED_DIR_MODE
        for name in ("env", "sh"):
            st = (output / name).stat()
            assert st.st_uid == host_root and st.st_uid != 0 and st.st_gid != 0, (name, st)
        assert (output / "env").stat().st_mode & stat.S_ISUID  # the bit is there: it is the owner that is not root
        denied = run_unprivileged(str(output / "env"), "true")
        assert denied.returncode != 0 and "Permission denied" in denied.stderr, denied
        # Run anyway (through a link, as if the directories were open): euid is the mapped uid, never 0.
        assert euid_when_run_by_nobody(output / "env") == host_root
        # Another job got another host range: jobs cannot touch each other's files either.
        other_owner = (jobs_dir / other_uuid / "output" / "t").stat().st_uid
        assert other_owner != host_root and other_owner >= 65536

        # And the root job's output still arrives: artifacts, the upload, its 0600 file in a 0700 dir.
        assert finished.artifacts == {"/art/one.txt": base64.b64encode(b"art\n").decode()}
        assert json.loads(finished.upload_results["output.zip"])["body"] == "stored"
        [put] = http_server.requests_to("/out.zip")
        with zipfile.ZipFile(io.BytesIO(put.body)) as zf:
            names = set(zf.namelist())
            assert zf.read("r.txt") == b"result\n" and zf.read("private/s.txt") == b"secret\n", names
    finally:
        remove_setuid_files(agent_config.jobs_dir)
        for uid in (job_uuid, other_uuid):
            for container in containers_with_label(uid):
                podman_cli("rm", "-f", container)


async def test_control_the_same_attack_without_the_isolation_yields_host_root(
        tmp_path: Path, podman_socket: str, busybox_image: str) -> None:
    """The pre-fix container arguments (no user namespace, plain binds, default capabilities):
    the same job leaves a setuid-root `env`, and nobody running it gets euid 0. This is what
    the test above would see if the isolation were gone."""
    volume, output = tmp_path / "volume", tmp_path / "output"
    volume.mkdir()
    output.mkdir()
    shutil.copy(PAYLOAD, volume / "env")
    pm = Podman(podman_socket)
    kwargs = {"image": busybox_image, "name": f"ch-control-{uuid.uuid4()}", "network_mode": "none",
              "command": ["/bin/sh", "-c", "cp /volume/env /output/env && chmod 4755 /output/env"],
              "mounts": [{"type": "bind", "source": str(volume), "target": "/volume", "read_only": True},
                         {"type": "bind", "source": str(output), "target": "/output", "read_only": False}]}
    container_id = await pm.start_container(kwargs)
    try:
        assert await pm.wait(container_id, RUN_TIMEOUT_S) == 0
        st = (output / "env").stat()
        assert st.st_uid == 0 and st.st_mode & stat.S_ISUID
        assert euid_when_run_by_nobody(output / "env") == 0
    finally:
        remove_setuid_files(output)
        await pm.remove(container_id)
        await pm.close()


async def test_a_host_without_subordinate_ids_refuses_the_job_instead_of_running_it_as_root(
        agent_config: AgentConfig, busybox_image: str, podman_without_subids: str) -> None:
    config = agent_config.model_copy(update={"podman_url": podman_without_subids})
    async with agent_with(config, keep_job_dirs=True) as (_agent, client):
        job_uuid, events = await run_job(client, busybox_image, ["/bin/sh", "-c", "echo ran > /output/ran"])
    failed = events[-1].message
    assert (failed.message_type, failed.reason, failed.message) == (
        "V0HordeFailedRequest", "generic_error", USERNS_MESSAGE)
    assert "could not find enough available IDs" in failed.context["podman_error"]
    assert not (config.jobs_dir / job_uuid / "output" / "ran").exists()
    assert containers_with_label(job_uuid) == []  # nothing half-made is left behind
