"""Image GC against a real podman, in a storage of its own (a GC test must never touch the
images of the shared test storage): age and disk-pressure removal, the preload list, an
image a running container uses, and the collector running inside the agent."""

from __future__ import annotations

import asyncio
import io
import os
import shutil
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from executor_agent.container.podman_engine import Podman
from executor_agent.executor_config import AgentConfig
from executor_agent.imagegc import DiskUsage, GcPolicy, ImageGc, ImageUsage
from tests.fixtures.podman import CONTAINERS_CONF

pytestmark = pytest.mark.podman

DAY = 86400.0
T0 = 1_900_000_000.0
POLICY = GcPolicy(min_age_s=3600, max_age_s=7 * DAY, disk_high_percent=85, disk_low_percent=70)


class IsolatedPodman:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.url = f"unix://{root}/podman.sock"

    def cli(self, *args: str, check: bool = True) -> str:
        done = subprocess.run(["podman", "--root", str(self.root / "storage"), "--runroot", str(self.root / "run"),
                               *args], env={**os.environ, "CONTAINERS_CONF": str(CONTAINERS_CONF)},
                              capture_output=True, text=True, timeout=60, check=check)
        return done.stdout

    def make_image(self, ref: str) -> None:
        """A distinct tiny image (busybox plus a file naming it), so each has its own id."""
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            tar.add(shutil.which("busybox") or "/bin/busybox", arcname="bin/busybox")
            tar.addfile(_symlink("bin/sh", "busybox"))
            data = ref.encode()
            info = tarfile.TarInfo("name.txt")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        path = self.root / "img.tar"
        path.write_bytes(buf.getvalue())
        self.cli("import", "--change", 'CMD ["/bin/sh"]', str(path), ref)

    def images(self) -> set[str]:
        return set(self.cli("images", "--format", "{{.Repository}}:{{.Tag}}").split())


def _symlink(name: str, target: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = tarfile.SYMTYPE, target
    return info


@pytest.fixture
def isolated_podman() -> Iterator[IsolatedPodman]:
    root = Path(tempfile.mkdtemp(prefix="ch-gc-"))
    iso = IsolatedPodman(root)
    sock = root / "podman.sock"
    proc = subprocess.Popen(["podman", "--root", str(root / "storage"), "--runroot", str(root / "run"),
                             "system", "service", "--time=0", iso.url],
                            env={**os.environ, "CONTAINERS_CONF": str(CONTAINERS_CONF)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 15
    while not sock.exists():
        assert proc.poll() is None and time.monotonic() < deadline, "isolated podman service did not start"
        time.sleep(0.05)
    try:
        yield iso
    finally:
        iso.cli("rm", "-a", "-f", check=False)
        proc.terminate()
        proc.wait(10)
        iso.cli("system", "reset", "--force", check=False)
        shutil.rmtree(root, ignore_errors=True)


def gc_for(iso: IsolatedPodman, tmp_path: Path, *, preload: list[str], disk: DiskUsage | None = None,
           policy: GcPolicy = POLICY) -> ImageGc:
    return ImageGc(Podman(iso.url), policy, ImageUsage(tmp_path / "usage.json"), protected_refs=lambda: preload,
                   active_refs=lambda: [], disk_usage=lambda _path: disk or DiskUsage(100, 10))


async def test_age_rule_with_preload_and_running_container(isolated_podman: IsolatedPodman, tmp_path: Path) -> None:
    iso = isolated_podman
    for name in ("old", "preloaded", "running", "young"):
        iso.make_image(f"localhost/gc-{name}:1")
    iso.cli("run", "-d", "--name", "gc-runner", "--network", "none", "localhost/gc-running:1", "/bin/busybox", "sleep", "120")
    try:
        gc = gc_for(iso, tmp_path, preload=["localhost/gc-preloaded:1"])
        assert (await gc.run_once(now=T0)).removed == []  # everything first seen now
        gc.usage.touch_ref("localhost/gc-young:1", T0 + 8 * DAY - 60)  # a job used it a minute ago
        report = await gc.run_once(now=T0 + 8 * DAY)
        assert report.removed == ["localhost/gc-old:1"]
        assert {"localhost/gc-preloaded:1", "localhost/gc-running:1", "localhost/gc-young:1"} <= iso.images()
        assert "localhost/gc-old:1" not in iso.images()
    finally:
        iso.cli("rm", "-f", "gc-runner", check=False)


async def test_disk_pressure_removes_least_recently_used(isolated_podman: IsolatedPodman, tmp_path: Path) -> None:
    iso = isolated_podman
    for name in ("lru-a", "lru-b", "lru-keep"):
        iso.make_image(f"localhost/gc-{name}:1")
    policy = GcPolicy(min_age_s=3600, max_age_s=0, disk_high_percent=85, disk_low_percent=70)
    gc = gc_for(iso, tmp_path, preload=["localhost/gc-lru-keep:1"],
                disk=DiskUsage(total_bytes=100 * 2**30, used_bytes=90 * 2**30), policy=policy)
    await gc.run_once(now=T0)
    gc.usage.touch_ref("localhost/gc-lru-b:1", T0 + 3600)
    report = await gc.run_once(now=T0 + 3 * 3600)
    assert report.removed == ["localhost/gc-lru-a:1", "localhost/gc-lru-b:1"]  # least recently used first
    assert "localhost/gc-lru-keep:1" in iso.images()


async def test_collector_runs_inside_the_agent(isolated_podman: IsolatedPodman, agent_config: AgentConfig,
                                               tmp_path: Path) -> None:
    from executor_agent.daemon.server import ExecutorAgent

    isolated_podman.make_image("localhost/gc-agent:1")
    gc_settings = agent_config.image_gc.model_copy(update={"interval_s": 0.2})
    config: Any = agent_config.model_copy(update={"podman_url": isolated_podman.url, "image_gc": gc_settings})
    agent = ExecutorAgent(config)
    await agent.start()
    try:
        usage_file = config.jobs_dir.parent / "image-usage.json"
        for _ in range(50):
            if usage_file.exists():
                break
            await asyncio.sleep(0.1)
        assert usage_file.exists(), "the periodic collector never ran"
        assert "localhost/gc-agent:1" in isolated_podman.images()  # first seen now: kept
    finally:
        await agent.stop()
