"""The podman runner against a real podman API service (no mocks)."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from executor_agent.container.job_spec import JobContainerSpec, normalize_image
from executor_agent.container.podman_engine import Podman
from executor_agent.daemon.jobdirs import SHARED_DIR_MODE
from tests.fixtures.podman import containers_with_label

pytestmark = pytest.mark.podman


def _spec(tmp_path: Path, image: str, command: list[str], **kw: object) -> JobContainerSpec:
    (tmp_path / "volume").mkdir(exist_ok=True)
    (tmp_path / "output").mkdir(exist_ok=True)
    # as JobDirs.create makes it: container root is an unprivileged host uid (user namespace)
    (tmp_path / "output").chmod(SHARED_DIR_MODE)
    return JobContainerSpec(
        job_uuid=str(uuid.uuid4()), image=image, command=command,
        volume_dir=tmp_path / "volume", output_dir=tmp_path / "output", **kw,  # type: ignore[arg-type]
    )


async def test_run_separates_streams_and_exit_code(tmp_path: Path, podman_socket: str, busybox_image: str) -> None:
    pm = Podman(podman_socket)
    (tmp_path / "volume").mkdir()
    (tmp_path / "volume" / "in.txt").write_text("input")
    spec = _spec(
        tmp_path, busybox_image,
        ["/bin/sh", "-c", "cat /volume/in.txt; echo err >&2; echo x > /output/o.txt; "
         "touch /volume/w 2>/dev/null || echo ro; echo $FOO; exit 7"],
        env={"FOO": "bar"}, pids_limit=100, memory_limit_mib=64,
    )
    cid = await pm.start_job(spec)
    assert await pm.wait(cid, 10) == 7
    out, err = await pm.logs(cid)
    assert out == "inputro\nbar\n"
    assert err == "err\n"
    assert (tmp_path / "output" / "o.txt").read_text() == "x\n"
    assert containers_with_label(spec.job_uuid)
    await pm.remove(cid)
    assert containers_with_label(spec.job_uuid) == []
    await pm.close()


async def test_wait_timeout_then_kill(tmp_path: Path, podman_socket: str, busybox_image: str) -> None:
    pm = Podman(podman_socket)
    spec = _spec(tmp_path, busybox_image, ["sleep", "30"])
    cid = await pm.start_job(spec)
    assert await pm.wait(cid, 0.3) is None
    await pm.kill(cid)
    state = await pm.state(cid)
    assert state is not None and state.status == "exited"
    await pm.remove(cid)
    await pm.remove(cid)  # idempotent
    await pm.close()


async def test_image_presence(podman_socket: str, busybox_image: str) -> None:
    pm = Podman(podman_socket)
    assert await pm.image_exists("localhost/ch-test-busybox")
    assert not await pm.ensure_image("localhost/ch-test-missing", pull=False, timeout_s=5)
    assert not await pm.ensure_image("localhost/ch-test-missing:1", pull=True, timeout_s=20)
    await pm.close()


def test_normalize_image() -> None:
    assert normalize_image("python") == "python:latest"
    assert normalize_image("python:3.11") == "python:3.11"
    assert normalize_image("localhost:5000/a/b") == "localhost:5000/a/b:latest"
    assert normalize_image("a/b@sha256:abc") == "a/b@sha256:abc"


def test_gpu_preset_maps_to_cdi(tmp_path: Path) -> None:
    spec = _spec(tmp_path, "img", [], gpu_preset="nvidia_all")
    assert spec.create_kwargs()["devices"] == ["nvidia.com/gpu=all"]
    assert _spec(tmp_path, "img", []).create_kwargs()["devices"] == []


async def test_kill_exited_container_is_fine(tmp_path: Path, podman_socket: str, busybox_image: str) -> None:
    pm = Podman(podman_socket)
    cid = await pm.start_job(_spec(tmp_path, busybox_image, ["true"]))
    assert await pm.wait(cid, 10) == 0
    await pm.kill(cid)
    await pm.remove(cid)
    await pm.kill(cid)  # gone altogether
    await pm.close()
