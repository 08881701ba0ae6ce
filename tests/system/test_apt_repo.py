"""The apt repository, as an operator lives it, on a real Debian with systemd as PID 1:
add the key and the source exactly as the README says, `apt install` version N from
`stable`, `apt upgrade` to N+1 while a validator's long job runs (its result still reaches
the validator), then switch the host to `preprod` as the README says and get preprod's N+2.

The repository is built on the test host by scripts/build-apt-repo.sh from every suite's
build (Debian 12 and 13 side by side, as it is published), signed with a throwaway key, and
the machine's part of it is copied into the machine, which has no network: it is served there
by `python3 -m http.server` on the machine's own loopback. N+1 and N+2 are the built .debs
with a raised Version (apt_fixtures.rewrite_version), so no second build is needed.

It runs on one suite, APT_SUITE: what it tests is apt's and the repository's behaviour, which
the package tests' second suite would only repeat (CI time). Debian 13 because it is Debian's
stable release, what a new operator installs, and its apt verifies signatures with sqv rather
than gpgv. The tests of this module share one machine and run in file order.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.system.apt_fixtures import (
    build_apt_repo,
    deb_field,
    make_signing_key,
    next_version,
    readme_blocks,
    rewrite_version,
    run_long,
    with_repo_url,
)
from tests.system.conftest import Machine
from tests.system.test_packages import DEMO_IMAGE, FAKE_CDI_SPEC, VALIDATOR_WALLETS, allow_a_new_validator, wait_active

HERE = Path(__file__).resolve().parent
PACKAGES = ("miner-agent", "executor-agent")
SERVED_DIR = "/srv/miner-agent-apt"  # in the machine
HTTP_PORT = 8080  # on the machine's loopback; the miner has 8000, the preload registry 5000
REPO_URL = f"http://127.0.0.1:{HTTP_PORT}"
HTTP_UNIT = "systest-apt-http"
VALIDATOR_UNIT = "systest-validator"
JOB_REPORT = "/root/upgrade-job.jsonl"
JOB_SLEEP_S = 60  # the job outlasts the upgrade (25 s measured on 2 busy cores) and the agents' restarts
SERVE_TIMEOUT_S = 15.0
CONTAINER_TIMEOUT_S = 90.0  # accept, image check, volume, container start
OUTCOME_TIMEOUT_S = 240.0
APT_TIMEOUT_S = 300.0  # an apt run unpacks two ~150 MiB trees on a 2-core machine
# The test's shell is no terminal, so nobody answers apt's "Do you want to continue?"; an
# operator does. The README's commands themselves run unchanged.
ASSUME_YES = 'APT::Get::Assume-Yes "true";\n'

APT_SUITE = "trixie"

pytestmark = [pytest.mark.system, pytest.mark.podman, pytest.mark.parametrize("suite", [APT_SUITE], indirect=True)]


@dataclass
class AptRepo:
    """The repository on the test host: its directory, signing key, and the builds of N, N+1
    and N+2 for every suite (steps[i][suite][package] is a .deb)."""

    root: Path
    gnupghome: Path
    key: str
    steps: list[dict[str, dict[str, Path]]] = field(default_factory=list)

    @property
    def www(self) -> Path:
        return self.root / "www"

    def version(self, step: int, suite: str) -> str:
        return deb_field(self.steps[step][suite]["miner-agent"], "Version")

    def publish(self, channel: str, step: int) -> None:
        """Every suite's build of `step` into `channel`; the script sorts them by release."""
        debs = [deb for builds in self.steps[step].values() for deb in builds.values()]
        build_apt_repo("publish", "--key", self.key, "--suite", channel, "--repo", self.root, *debs,
                       gnupghome=self.gnupghome)

    def promote(self) -> None:
        build_apt_repo("promote", "--key", self.key, "--repo", self.root, gnupghome=self.gnupghome)

    def listing(self) -> set[tuple[str, ...]]:
        out = build_apt_repo("list", "--repo", self.root, gnupghome=self.gnupghome)
        return {tuple(line.split("\t")) for line in out.splitlines()}


@pytest.fixture(scope="module")
def repo(all_debs: dict[str, dict[str, Path]]) -> Iterator[AptRepo]:
    with tempfile.TemporaryDirectory(prefix="miner-agent-apt-") as tmp:
        root = Path(tmp)
        gnupghome = root / "gnupg"
        started = time.monotonic()
        apt = AptRepo(root / "repo", gnupghome, make_signing_key(gnupghome), [dict(all_debs)])
        for step in (1, 2):
            builds: dict[str, dict[str, Path]] = {}
            for suite, debs in all_debs.items():
                version = next_version(apt.version(step - 1, suite))
                (root / version).mkdir()
                builds[suite] = {p: rewrite_version(debs[p], root / version, version) for p in PACKAGES}
            apt.steps.append(builds)
        versions = [apt.version(step, suite) for step in range(3) for suite in all_debs]
        print(f"\nkey and versions {versions} took {time.monotonic() - started:.1f} s")
        try:
            yield apt
        finally:  # the gpg-agent that signing started for this GNUPGHOME
            subprocess.run(["gpgconf", "--kill", "gpg-agent"], env={**os.environ, "GNUPGHOME": str(gnupghome)},
                           check=False, capture_output=True)


def serve(box: Machine, repo: AptRepo) -> None:
    """The machine's release of the repository as it is now (the key and www/<codename>: all
    its apt fetches), served on the machine's loopback like a static web host."""
    started = time.monotonic()
    box.sh(f"rm -rf {SERVED_DIR} && mkdir -p {SERVED_DIR}")
    box.copy_in(repo.www / "miner-agent.asc", f"{SERVED_DIR}/miner-agent.asc")
    box.copy_in(repo.www / box.suite, f"{SERVED_DIR}/{box.suite}")
    if box.sh(f"systemctl is-active {HTTP_UNIT}", check=False).out.strip() != "active":
        box.sh(f"systemd-run --quiet --unit={HTTP_UNIT} /usr/bin/python3 -m http.server --bind 127.0.0.1 "
               f"--directory {SERVED_DIR} {HTTP_PORT}")
    probe = f"/usr/bin/python3 -c 'import urllib.request; urllib.request.urlopen(\"{REPO_URL}/miner-agent.asc\")'"
    deadline = time.monotonic() + SERVE_TIMEOUT_S
    while box.sh(probe, check=False).rc != 0:
        assert time.monotonic() < deadline, box.sh(f"journalctl -u {HTTP_UNIT} --no-pager -n 20", check=False).out
        time.sleep(0.3)
    print(f"\nserving the repository took {time.monotonic() - started:.1f} s")


def installed(box: Machine) -> dict[str, str]:
    out = box.sh("dpkg-query -W -f '${Package} ${Version}\\n' " + " ".join(PACKAGES)).out
    return dict(line.split() for line in out.splitlines())


def apt_warnings(output: str) -> list[str]:
    """apt's W:/E: lines about our repository (the machine's Debian mirror is unreachable, so
    warnings about deb.debian.org are expected and left out)."""
    return [line for line in output.splitlines() if re.match(r"^[WE]:", line) and "deb.debian.org" not in line
            and "Some index files failed to download" not in line]


def timed(box: Machine, command: str, what: str) -> str:
    started = time.monotonic()
    out = run_long(box, f"export DEBIAN_FRONTEND=noninteractive\n{command}", APT_TIMEOUT_S).out
    print(f"\n{what} took {time.monotonic() - started:.1f} s")
    return out


def job_events(box: Machine) -> list[dict[str, object]]:
    text = box.sh(f"cat {JOB_REPORT} 2>/dev/null || true").out
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def wait_event(box: Machine, name: str, timeout_s: float) -> dict[str, object]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        events = job_events(box)
        for event in events:
            if event["event"] == name:
                return event
        if any(e["event"] == "done" for e in events):
            raise AssertionError(f"the validator ended before {name!r}: {events}")
        time.sleep(0.5)
    log = box.sh(f"journalctl -u {VALIDATOR_UNIT} --no-pager -n 30 -o cat", check=False).out
    raise AssertionError(f"no {name!r} from the validator after {timeout_s} s: {job_events(box)}\n{log}")


def test_the_readmes_steps_install_version_n_from_stable(machine: Machine, repo: AptRepo) -> None:
    n = repo.version(0, machine.suite)
    repo.publish("stable", 0)
    # Each release's build went to that release's repository, and preprod exists, empty.
    assert {(suite, "stable", p, repo.version(0, suite)) for suite in repo.steps[0] for p in PACKAGES} | \
        {(suite, "preprod", p, "") for suite in repo.steps[0] for p in PACKAGES} == repo.listing()
    serve(machine, repo)
    machine.sh(f"cat > /etc/apt/apt.conf.d/90systest-assume-yes <<'EOF'\n{ASSUME_YES}EOF")
    machine.sh(f"mkdir -p /etc/cdi && cat > /etc/cdi/fake-nvidia.yaml <<'EOF'\n{FAKE_CDI_SPEC}EOF")
    machine.sh("test -e /dev/fakegpu0 || mknod -m 0666 /dev/fakegpu0 c 1 3")

    install, _switch = readme_blocks()
    out = timed(machine, with_repo_url(install, REPO_URL), "the README's key, source and apt install")
    assert apt_warnings(out) == [], out
    assert installed(machine) == {p: n for p in PACKAGES}
    sources = machine.sh("cat /etc/apt/sources.list.d/miner-agent.sources").out
    assert f"URIs: {REPO_URL}/{machine.suite}\n" in sources and "Suites: stable\n" in sources, sources
    assert "Signed-By: /etc/apt/keyrings/miner-agent.asc" in sources, sources
    policy = machine.sh("apt-cache policy miner-agent").out
    assert f"{REPO_URL}/{machine.suite} stable/main" in policy, policy
    wait_active(machine, "executor-agent.service")


def test_apt_upgrade_mid_job_still_delivers_the_jobs_result(machine: Machine, repo: AptRepo) -> None:
    n, n1 = repo.version(0, machine.suite), repo.version(1, machine.suite)
    allow_a_new_validator(machine)
    machine.sh("systemctl restart miner-agent")
    wait_active(machine, "miner-agent.service")
    machine.sh(f"podman image exists {DEMO_IMAGE} || podman import -q --change 'CMD [\"/bin/sh\"]' "
               f"/opt/systest/busybox-rootfs.tar {DEMO_IMAGE}")

    machine.copy_in(HERE / "upgrade_job.py", "/root/upgrade_job.py")
    machine.sh(f"rm -f {JOB_REPORT} && systemd-run --quiet --unit={VALIDATOR_UNIT} "
               f"/opt/miner-agent/venv/bin/python /root/upgrade_job.py /etc/miner-agent/miner-agent.toml "
               f"{VALIDATOR_WALLETS} {DEMO_IMAGE} {JOB_SLEEP_S} {JOB_REPORT}")
    running = wait_event(machine, "container_running", CONTAINER_TIMEOUT_S)
    pids = {u: machine.unit(u, "MainPID") for u in PACKAGES}

    # N+1 goes out the way releases do: into preprod, then promoted to stable.
    repo.publish("preprod", 1)
    repo.promote()
    serve(machine, repo)
    upgrade_started = time.time()
    out = timed(machine, "apt update\napt upgrade", "apt update && apt upgrade mid-job")
    upgrade_ended = time.time()
    assert apt_warnings(out) == [], out
    assert installed(machine) == {p: n1 for p in PACKAGES}, out
    for unit, pid in pids.items():
        wait_active(machine, unit)
        assert machine.unit(unit, "MainPID") != pid, f"{unit} was not restarted by the upgrade from {n}"

    done = wait_event(machine, "done", OUTCOME_TIMEOUT_S)
    events = job_events(machine)
    print(f"\nvalidator's view: {[(e['event'], round(float(e['at']) - upgrade_started, 1)) for e in events]} "
          f"(s from the upgrade's start; it took {upgrade_ended - upgrade_started:.1f} s)")
    assert done["types"] and done["types"][-1] == "V0JobFinishedRequest", done
    assert "kept" in done["stdout"] and "survived the upgrade" in done["stdout"], done
    # The job was running before the upgrade began, the upgrade's restart of miner-agent closed
    # the validator's socket while it waited, and the result came over the socket it reopened.
    names = [e["event"] for e in events]
    assert float(running["at"]) < upgrade_started < float(done["at"]), events
    assert "socket_closed" in names and names.index("socket_closed") < names.index("reconnected") < names.index("done")
    job_lines = [line for line in machine.journal("executor-agent").splitlines() if str(done["job_uuid"]) in line]
    print("\nexecutor-agent on the job:\n" + "\n".join(job_lines))


def test_switching_to_preprod_as_the_readme_says_installs_preprods_version(machine: Machine,
                                                                           repo: AptRepo) -> None:
    n1, n2 = repo.version(1, machine.suite), repo.version(2, machine.suite)
    repo.publish("preprod", 2)
    serve(machine, repo)
    machine.sh("apt update 2>&1")
    # On stable nothing is newer than what is installed.
    assert re.search(rf"Candidate: {re.escape(n1)}$", machine.sh("apt-cache policy miner-agent").out, re.MULTILINE)

    _install, switch = readme_blocks()
    out = timed(machine, switch, "the README's switch to preprod")
    assert apt_warnings(out) == [], out
    assert "Suites: preprod\n" in machine.sh("cat /etc/apt/sources.list.d/miner-agent.sources").out
    policy = machine.sh("apt-cache policy miner-agent executor-agent").out
    assert policy.count(f"Installed: {n2}") == 2 and policy.count(f"Candidate: {n2}") == 2, policy
    assert "preprod/main" in policy and "stable/main" not in policy, policy
    assert installed(machine) == {p: n2 for p in PACKAGES}
    for unit in PACKAGES:
        wait_active(machine, unit)
