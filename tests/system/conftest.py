"""System-test fixtures: the two .debs of each Debian suite, built once, and a machine of that
suite (Debian 12 bookworm, Debian 13 trixie) with real systemd.

Every test that uses `debs` or `machine` runs once per suite: both come from the session fixture
`suite` (params SUITES). A test meant for one suite only says so with
`@pytest.mark.parametrize("suite", ["trixie"], indirect=True)`.

The machine is a podman container booting /sbin/init (test-environment.md §4), privileged
and with the host's cgroup tree mounted read-write, because the executor agent inside it
runs its job containers through its own podman (nested podman needs both on a cgroup-v1
host). It has no network: the registry for the preload test runs on its loopback.

Nothing here skips. What the tests need is installed with apt when missing (as root), or
the session fails with the command to run.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
CONTAINERS_CONF = REPO / "packaging" / "podman" / "containers.conf"
IMAGE_REPO = "localhost/miner-agent-systest"
BOOT_TIMEOUT_S = 60.0
BUILD_TIMEOUT_S = 900.0
# Both suites' .debs, built side by side: from nothing (debootstrap of two build roots, one at a
# time, and every wheel from PyPI) this took about 10 minutes on the loaded 2-core dev machine.
DEBS_BUILD_TIMEOUT_S = 1200.0
EXEC_TIMEOUT_S = 180.0
HOST_TOOLS = {"debootstrap": "debootstrap", "podman": "podman", "dpkg-deb": "dpkg"}
SUITES = ("bookworm", "trixie")
# What each suite's packages are built with and named after (scripts/build-debs.sh).
SUITE_PYTHON = {"bookworm": "3.11", "trixie": "3.13"}
SUITE_TAG = {"bookworm": "deb12", "trixie": "deb13"}
# systemd 256+ (trixie has 257) refuses to boot on a cgroup-v1 host such as this one unless told to;
# in a container it reads that from $SYSTEMD_PROC_CMDLINE instead of the host kernel's command line.
# Bookworm's systemd 252 boots as it always did.
MACHINE_ENV = {"bookworm": {},
               "trixie": {"SYSTEMD_PROC_CMDLINE": "systemd.unified_cgroup_hierarchy=0 SYSTEMD_CGROUP_ENABLE_LEGACY_FORCE=1"}}


def _env() -> dict[str, str]:
    return {**os.environ, "CONTAINERS_CONF": str(CONTAINERS_CONF)}


def _ensure_host_tools() -> None:
    missing = sorted({pkg for tool, pkg in HOST_TOOLS.items() if shutil.which(tool) is None})
    if not missing:
        return
    if os.geteuid() != 0:
        pytest.fail(f"system tests need {' '.join(missing)}: run  sudo apt-get install {' '.join(missing)}")
    subprocess.run(["apt-get", "update", "-qq"], check=True)
    subprocess.run(["apt-get", "install", "-y", "-qq", *missing], check=True,
                   env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"}, stdout=subprocess.DEVNULL)


def _image_tag(suite: str) -> str:
    """A tag that changes whenever the image recipe does, so a cached image is always current."""
    digest = hashlib.sha256()
    for path in [HERE / "build-image.sh", HERE / "Containerfile", *sorted((HERE / "image").iterdir())]:
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return f"{IMAGE_REPO}:{suite}-{digest.hexdigest()[:12]}"


@pytest.fixture(scope="session", params=SUITES)
def suite(request: pytest.FixtureRequest) -> str:
    """The Debian suite the packages are built for and the machine runs."""
    return request.param


@pytest.fixture(scope="session")
def systest_image(suite: str) -> str:
    """The booted-machine image of `suite`, built on first use (about 70 s) and kept for later runs."""
    if os.geteuid() != 0:
        pytest.fail("system tests run podman with --privileged and need root (CI runs as root)")
    _ensure_host_tools()
    tag = _image_tag(suite)
    exists = subprocess.run(["podman", "image", "exists", tag], env=_env())
    if exists.returncode != 0:
        done = subprocess.run(["bash", str(HERE / "build-image.sh"), tag, suite], env=_env(), capture_output=True,
                              text=True, timeout=BUILD_TIMEOUT_S)
        if done.returncode != 0:
            pytest.fail(f"building the {suite} system-test image failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return tag


@pytest.fixture(scope="session")
def all_debs() -> Iterator[dict[str, dict[str, Path]]]:
    """{suite: {'miner-agent': path, 'executor-agent': path}} for every suite, built by the command
    operators use (`SUITE=... bash scripts/build-debs.sh OUTDIR`), the suites side by side: each
    in its own cached build root, sharing one pip cache."""
    _ensure_host_tools()
    out = Path(tempfile.mkdtemp(prefix="miner-agent-debs-"))
    started = time.monotonic()
    builds = {}
    for name in SUITES:
        (out / name).mkdir()
        builds[name] = subprocess.Popen(["bash", str(REPO / "scripts" / "build-debs.sh"), str(out / name)],
                                        env={**os.environ, "SUITE": name}, stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, text=True)
    found: dict[str, dict[str, Path]] = {}
    try:
        for name, build in builds.items():
            output, _ = build.communicate(timeout=DEBS_BUILD_TIMEOUT_S)
            if build.returncode != 0:
                pytest.fail(f"SUITE={name} scripts/build-debs.sh failed:\n{output[-5000:]}")
            found[name] = {p.name.split("_")[0]: p for p in (out / name).glob("*.deb")}
            assert set(found[name]) == {"miner-agent", "executor-agent"}, f"unexpected build output: {found[name]}"
            print(f"\n{output.strip()}")
        print(f"build-debs for {', '.join(SUITES)} took {time.monotonic() - started:.1f} s")
        yield found
    finally:
        for build in builds.values():
            if build.poll() is None:
                build.kill()
        shutil.rmtree(out, ignore_errors=True)


@pytest.fixture(scope="session")
def debs(suite: str, all_debs: dict[str, dict[str, Path]]) -> dict[str, Path]:
    """{'miner-agent': path, 'executor-agent': path} of `suite`."""
    return all_debs[suite]


@dataclass
class Run:
    rc: int
    out: str
    err: str


class Machine:
    """A booted container of a Debian suite; `sh` runs a bash command line in it as root."""

    def __init__(self, name: str, suite: str) -> None:
        self.name = name
        self.suite = suite

    def sh(self, command: str, check: bool = True, timeout: float = EXEC_TIMEOUT_S) -> Run:
        done = subprocess.run(["podman", "--log-level=error", "exec", self.name, "bash", "-c", command], env=_env(),
                              capture_output=True, text=True, timeout=timeout)
        result = Run(done.returncode, done.stdout, done.stderr)
        if check and done.returncode != 0:
            raise AssertionError(f"in {self.name}: `{command}` exited {done.returncode}\n"
                                 f"stdout: {done.stdout[-3000:]}\nstderr: {done.stderr[-3000:]}")
        return result

    def copy_in(self, source: Path, target: str) -> None:
        subprocess.run(["podman", "cp", str(source), f"{self.name}:{target}"], env=_env(), check=True)

    def unit(self, unit: str, prop: str) -> str:
        return self.sh(f"systemctl show -p {prop} --value {unit}").out.strip()

    def journal(self, unit: str) -> str:
        return self.sh(f"journalctl -u {unit} --no-pager -o cat").out


@pytest.fixture(scope="module")
def machine(systest_image: str, suite: str) -> Iterator[Machine]:
    name = f"miner-agent-systest-{suite}-{os.getpid()}"
    subprocess.run(["podman", "rm", "-f", name], env=_env(), capture_output=True)
    subprocess.run(
        ["podman", "run", "-d", "--name", name, "--privileged", "--systemd=always", "--network", "none",
         "--cgroupns=host", "-v", "/sys/fs/cgroup:/sys/fs/cgroup:rw", "--label", "io.miner-agent.systest=1",
         *(arg for key, value in MACHINE_ENV[suite].items() for arg in ("-e", f"{key}={value}")), systest_image],
        env=_env(), check=True, capture_output=True,
    )
    box = Machine(name, suite)
    try:
        deadline = time.monotonic() + BOOT_TIMEOUT_S
        state = ""
        while time.monotonic() < deadline:
            state = box.sh("systemctl is-system-running", check=False).out.strip()
            if state in ("running", "degraded"):
                break
            time.sleep(0.3)
        else:
            pytest.fail(f"systemd in the test machine did not finish booting: {state!r}")
        yield box
    finally:
        # Job containers inside die with the machine; their cgroups on the host tree go too.
        box.sh("podman rm -af -t 0 >/dev/null 2>&1 || true", check=False)
        subprocess.run(["podman", "rm", "-f", "-t", "5", name], env=_env(), capture_output=True)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "system: boots a Debian 12 or 13 machine with systemd and installs the .debs")
