"""The packages on a real Debian 12 and a real Debian 13 with systemd as PID 1, each suite's own
build, in the order an operator lives it: install, configure, a job, a restart mid-job, a
preload run, an upgrade, remove, purge.

The tests of this module share one machine per suite and run in file order, first for one
suite, then for the other; each starts from the state the previous one left (a failure early
makes the later ones fail too, loudly).
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest

from tests.system.conftest import SUITE_PYTHON, SUITE_TAG, Machine

HERE = Path(__file__).resolve().parent
UNITS = ["miner-agent.service", "executor-agent.service", "executor-agent-preload.service",
         "executor-agent-preload.timer"]
DEMO_IMAGE = "localhost/miner-agent-demo:latest"
REGISTRY_IMAGE = "127.0.0.1:5000/systest/preload-dynamic:1"
CONFIG_IMAGE = "127.0.0.1:5000/systest/preload-config:1"
MAX_EXPOSURE = {"miner-agent.service": 2.0, "executor-agent.service": 2.5}
ACTIVE_TIMEOUT_S = 30.0
VALIDATOR_WALLETS = "/root/validator-wallets"
# As `nvidia-ctk cdi generate` writes it, the device's host path is its container path: in a job's
# user namespace runc bind-mounts the node from there (it cannot mknod). The test makes the node.
FAKE_CDI_SPEC = """\
cdiVersion: "0.5.0"
kind: nvidia.com/gpu
devices:
- name: all
  containerEdits:
    deviceNodes:
    - path: /dev/fakegpu0
"""
FAKE_GPU_NODE = "mknod -m 0666 /dev/fakegpu0 c 1 3"  # a copy of /dev/null, like /dev/nvidia0 (0666)
LINK_GROUP = "executor-agent-link"  # the agent socket's group; a local miner-agent is in it
PODMAN_GROUP = "executor-agent-podman"  # the podman socket's group; only the agent's units hold it
SUBIDS = "containers:2147483647:2147483648"
# Connects to a unix socket and prints the first line it answers (after a GET for podman's API),
# or the error's name.
SOCKET_PROBE = """\
import socket, sys
s = socket.socket(socket.AF_UNIX)
try:
    s.connect(sys.argv[1])
    if sys.argv[2:] == ["http"]:
        s.sendall(b"GET /_ping HTTP/1.0\\r\\nHost: d\\r\\n\\r\\n")
    print(s.makefile().readline().strip())
except OSError as exc:
    print(type(exc).__name__)
"""
PROBE_PATH = "/usr/local/bin/socket-probe.py"
# Imports every module of the executor agent and the two shared packages in the package's venv,
# and lists what in its site-packages belongs to the miner only.
BOUNDARY_PROBE = """\
import importlib, json, pkgutil, sysconfig
from pathlib import Path
failed, count = [], 0
for top in ("executor_agent", "horde_protocol", "agent_common"):
    for info in pkgutil.walk_packages(importlib.import_module(top).__path__, top + "."):
        if info.name.endswith(".__main__"):
            continue  # runs the command line
        count += 1
        try:
            importlib.import_module(info.name)
        except Exception as exc:
            failed.append(f"{info.name}: {type(exc).__name__}: {exc}")
site = Path(sysconfig.get_paths()["purelib"])
names = sorted(p.name for p in site.iterdir())
print(json.dumps({"modules": count, "failed": failed, "names": names}))
"""
# Distributions and import packages the executor package must not carry (issue 13).
MINER_ONLY = {"bittensor", "web3", "eth_account", "asyncssh", "miner_agent", "scalecodec",
              "async_substrate_interface", "tomlkit"}
# The project's own metadata (pyproject's name is miner-agent), in both packages' venvs.
PROJECT_DIST_INFO = "miner_agent-"
# The executor package is the smaller one by far (docs/packaging.md has both sizes): at most this
# share of the miner's Installed-Size.
EXECUTOR_SIZE_SHARE_MAX = 0.6

pytestmark = [pytest.mark.system, pytest.mark.podman]

state: dict[str, str] = {}


def allow_a_new_validator(box: Machine) -> str:
    """The miner's hotkey and a validator's wallet, made with the installed package's own code, and the
    validator allowlisted in the packaged config (the miner is not restarted); returns its hotkey."""
    validator = box.sh(
        "/opt/miner-agent/venv/bin/python -c '"
        "from pathlib import Path; from miner_agent.keys import create_wallet; "
        "create_wallet(Path(\"/etc/miner-agent/wallets\"), \"default\", \"default\"); "
        f"print(create_wallet(Path(\"{VALIDATOR_WALLETS}\"), \"validator\", \"default\").hotkey)'"
    ).out.strip()
    box.sh("chown -R miner-agent:miner-agent /etc/miner-agent/wallets/default")
    box.sh(f"sed -i 's|^#allow = \\[\\]|allow = [\"{validator}\"]|' /etc/miner-agent/miner-agent.toml")
    return validator


def wait_active(box: Machine, unit: str, timeout_s: float = ACTIVE_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if box.sh(f"systemctl is-active {unit}", check=False).out.strip() == "active":
            return
        time.sleep(0.3)
    status = box.sh(f"systemctl status --no-pager -n 20 {unit}", check=False).out
    raise AssertionError(f"{unit} is not active:\n{status}")


def test_install_without_a_hotkey_starts_the_executor_and_explains_the_miner(machine: Machine,
                                                                             debs: dict[str, Path]) -> None:
    for name, path in debs.items():
        machine.copy_in(path, f"/root/{name}.deb")
    machine.sh(f"mkdir -p /etc/cdi && cat > /etc/cdi/fake-nvidia.yaml <<'EOF'\n{FAKE_CDI_SPEC}EOF")
    machine.sh(f"test -e /dev/fakegpu0 || {FAKE_GPU_NODE}")
    started = time.monotonic()
    run = machine.sh("DEBIAN_FRONTEND=noninteractive apt-get install -y "
                     "/root/executor-agent.deb /root/miner-agent.deb 2>&1")
    print(f"\napt-get install of both packages took {time.monotonic() - started:.1f} s")
    assert "put the miner hotkey under /etc/miner-agent/wallets" in run.out
    wait_active(machine, "executor-agent.service")
    assert machine.sh("systemctl is-enabled executor-agent.service miner-agent.service "
                      "executor-agent-preload.timer").out.split() == ["enabled"] * 3
    # Without a hotkey the miner exits 2 with one line naming the file, and is not restarted.
    assert machine.unit("miner-agent", "ExecMainStatus") == "2"
    assert machine.unit("miner-agent", "NRestarts") == "0"
    assert "hotkey file /etc/miner-agent/wallets/default/hotkeys/default not found" in machine.journal("miner-agent")
    for user, home in (("miner-agent", "/var/lib/miner-agent"), ("executor-agent", "/var/lib/executor-agent")):
        entry = machine.sh(f"getent passwd {user}").out.split(":")
        assert entry[5] == home and entry[6].strip() == "/usr/sbin/nologin"
    # The miner reaches the agent's socket through its own group, and nothing of podman's.
    miner_groups = machine.sh("id -nG miner-agent").out.split()
    assert LINK_GROUP in miner_groups, miner_groups
    assert "executor-agent" not in miner_groups and PODMAN_GROUP not in miner_groups, miner_groups
    assert machine.sh(f"getent group {PODMAN_GROUP}").out.strip().split(":")[3] == ""  # no member at all
    assert machine.sh("stat -c '%U %G %a' /run/executor-agent/agent.sock").out.split() == \
        ["executor-agent", LINK_GROUP, "660"]
    assert machine.sh("stat -c '%G %a' /run/podman/podman.sock").out.split() == [PODMAN_GROUP, "660"]
    assert machine.sh("stat -c '%a' /run/podman /run/executor-agent").out.split() == ["711", "711"]
    # Subordinate ids for the job containers' user namespaces, once each.
    for path in ("/etc/subuid", "/etc/subgid"):
        assert machine.sh(f"grep '^containers:' {path}").out.splitlines() == [SUBIDS], path


def test_each_package_is_its_suites_build_and_carries_only_its_agent(machine: Machine) -> None:
    """The executor package's venv imports every executor_agent module with what it carries and
    holds nothing of the miner's (bittensor, web3, miner_agent); both run on the suite's python3."""
    python = SUITE_PYTHON[machine.suite]
    sizes = {}
    for pkg in ("executor-agent", "miner-agent"):
        fields = machine.sh(f"dpkg-query -W -f '${{Version}}|${{Depends}}|${{Installed-Size}}' {pkg}").out.split("|")
        assert fields[0].endswith(f"+{SUITE_TAG[machine.suite]}"), fields
        assert f"python3 (>= {python})" in fields[1], fields
        sizes[pkg] = int(fields[2])
        assert machine.sh(f"/opt/{pkg}/venv/bin/python --version").out.split()[1].startswith(python + ".")
    print(f"\n{machine.suite}: Installed-Size executor-agent {sizes['executor-agent']} KiB, "
          f"miner-agent {sizes['miner-agent']} KiB")
    assert sizes["executor-agent"] <= EXECUTOR_SIZE_SHARE_MAX * sizes["miner-agent"], sizes
    machine.sh(f"cat > /root/boundary-probe.py <<'EOF'\n{BOUNDARY_PROBE}EOF")
    report = json.loads(machine.sh("/opt/executor-agent/venv/bin/python /root/boundary-probe.py").out)
    assert report["modules"] > 20 and report["failed"] == [], report["failed"]
    carried = {name.split("-")[0].removesuffix(".py").lower() for name in report["names"]
               if not name.startswith(PROJECT_DIST_INFO)}
    assert not carried & MINER_ONLY, sorted(carried & MINER_ONLY)
    assert machine.sh("test ! -e /opt/executor-agent/venv/bin/miner-agent && "
                      "test ! -e /opt/miner-agent/venv/bin/executor-agent && "
                      "! ls -d /opt/miner-agent/venv/lib/python3*/site-packages/executor_agent", check=False).rc == 0


def test_configured_miner_is_active_and_logs_to_the_journal(machine: Machine) -> None:
    validator = allow_a_new_validator(machine)
    state["validator"] = validator
    # A GPU class, so the job below takes the nvidia_all preset to the fake CDI device (the default
    # class, always_on.cpu.8c.16gb, has no GPU).
    machine.sh("miner-agent executors add local --class spin_up-4min.gpu-24gb --config /etc/miner-agent/miner-agent.toml")
    machine.sh("systemctl restart miner-agent")
    wait_active(machine, "miner-agent.service")
    assert machine.unit("miner-agent", "StatusText").startswith("serving validators on port 8000")
    assert machine.unit("executor-agent", "StatusText").startswith("listening on /run/executor-agent/agent.sock")
    assert machine.unit("miner-agent", "WatchdogUSec") == "30s"
    assert machine.unit("executor-agent", "WatchdogUSec") == "30s"
    log = machine.journal("miner-agent")
    assert re.search(r"miner-agent started hotkey=\S+ listen=0\.0\.0\.0:8000", log), log
    # The <6> prefix became the journal priority instead of staying in the text.
    entries = [json.loads(line) for line in machine.sh(
        "journalctl -u miner-agent -o json --no-pager -g 'miner-agent started'").out.splitlines()]
    assert entries and entries[-1]["PRIORITY"] == "6" and not entries[-1]["MESSAGE"].startswith("<")
    assert entries[-1]["SYSLOG_IDENTIFIER"] == "miner-agent"


def test_only_the_executor_agents_units_reach_the_podman_socket(machine: Machine) -> None:
    """Podman's socket is root-equivalent: the internet-facing miner must not reach it, nor an SSH
    login as executor-agent (the remote miner's socket forwarding, groups from /etc/group); the
    agent's units hold its group through SupplementaryGroups= only."""
    machine.sh(f"cat > {PROBE_PATH} <<'EOF'\n{SOCKET_PROBE}EOF\nchmod 0755 {PROBE_PATH}")
    podman = f"/usr/bin/python3 {PROBE_PATH} /run/podman/podman.sock http"
    agent = f"/usr/bin/python3 {PROBE_PATH} /run/executor-agent/agent.sock"
    assert machine.sh(f"runuser -u miner-agent -- {podman}").out.strip() == "PermissionError"
    assert machine.sh(f"runuser -u executor-agent -- {podman}").out.strip() == "PermissionError"
    assert machine.sh(f"runuser -u nobody -- {podman}").out.strip() == "PermissionError"
    as_the_unit = ("systemd-run --quiet --wait --pipe -p User=executor-agent -p Group=executor-agent "
                   f"-p 'SupplementaryGroups={PODMAN_GROUP} {LINK_GROUP}' {podman}")
    assert machine.sh(as_the_unit).out.strip() == "HTTP/1.0 200 OK"
    pid = machine.unit("executor-agent", "MainPID")
    gid = machine.sh(f"getent group {PODMAN_GROUP}").out.split(":")[2]
    assert gid in machine.sh(f"grep '^Groups:' /proc/{pid}/status").out.split()
    # The agent's own socket: the local miner connects (the agent's Hello), others do not.
    assert '"link":"hello"' in machine.sh(f"runuser -u miner-agent -- {agent}").out.replace(" ", "")
    assert machine.sh(f"runuser -u nobody -- {agent}").out.strip() == "PermissionError"


def test_units_verify_cleanly_and_are_hardened(machine: Machine) -> None:
    paths = " ".join(f"/lib/systemd/system/{unit}" for unit in UNITS)
    run = machine.sh(f"systemd-analyze verify {paths}", check=False)
    assert run.rc == 0 and run.err == "" and run.out == "", run
    for unit, ceiling in MAX_EXPOSURE.items():
        text = machine.sh(f"systemd-analyze security --no-pager {unit}", check=False).out
        score = float(re.search(r"Overall exposure level for \S+: ([\d.]+)", text).group(1))
        print(f"\n{unit}: exposure {score}")
        assert score <= ceiling, text


def test_demo_job_runs_through_the_installed_agents(machine: Machine) -> None:
    machine.sh(f"podman import -q --change 'CMD [\"/bin/sh\"]' /opt/systest/busybox-rootfs.tar {DEMO_IMAGE}")
    run = machine.sh(f"miner-agent demo-job --config /etc/miner-agent/miner-agent.toml "
                     f"--validator-wallet-path {VALIDATOR_WALLETS} --validator-wallet validator --image {DEMO_IMAGE}")
    assert "job finished: OK" in run.out and "hello from the volume" in run.out, run.out
    job_uuid = re.search(r"job ([0-9a-f-]{36})", run.out).group(1)
    job_lines = [line for line in machine.journal("miner-agent").splitlines() if job_uuid in line]
    assert job_lines, "the miner logged nothing about the job"
    assert all(state["validator"] in line for line in job_lines), job_lines
    assert any(job_uuid in line for line in machine.journal("executor-agent").splitlines())


def test_restarting_the_executor_agent_mid_job_loses_nothing(machine: Machine) -> None:
    machine.copy_in(HERE / "restart_job.py", "/root/restart_job.py")
    run = machine.sh(f"cd /root && /opt/miner-agent/venv/bin/python restart_job.py "
                     f"/etc/miner-agent/miner-agent.toml {VALIDATOR_WALLETS} {DEMO_IMAGE}")
    report = json.loads(run.out.strip().splitlines()[-1])
    assert report["container"], report
    # conmon (the container's parent) lives with the podman service, never in our unit.
    assert "executor-agent.service" not in report["conmon_cgroup"] and "podman.service" in report["conmon_cgroup"]
    assert report["restart_rc"] == 0 and report["agent_pid_before"] != report["agent_pid_after"], report
    # The container ran to its end (exit 0, full output, checked below) through the restart. The restart
    # itself currently lasts until the job's container exits (the agent's podman wait thread
    # holds the process), so it must stay under TimeoutStopSec=30s to end without SIGKILL.
    assert report["restart_s"] < 30, report
    print(f"\nsystemctl restart executor-agent mid-job took {report['restart_s']} s")
    assert report["types"][-1] == "V0JobFinishedRequest", report
    assert "kept" in report["stdout"] and "survived" in report["stdout"], report
    assert "fakegpu0" in report["stdout"], "the nvidia_all preset did not reach the CDI device"
    # It ran in a user namespace: container root is an unprivileged host uid.
    uid_map = re.search(r"^\s*0\s+(\d+)\s+(\d+)\s*$", report["stdout"], re.MULTILINE)
    assert uid_map and int(uid_map.group(1)) >= 65536 and int(uid_map.group(2)) == 65536, report["stdout"]
    assert f"job resumed job={report['job_uuid']}" in machine.journal("executor-agent")


def test_preload_timer_pulls_from_a_loopback_registry(machine: Machine) -> None:
    timers = machine.sh("systemctl list-timers --all --no-pager executor-agent-preload.timer").out
    assert "executor-agent-preload.timer" in timers and "executor-agent-preload.service" in timers
    assert machine.unit("executor-agent-preload.timer", "RandomizedDelayUSec") == "15min"
    assert machine.unit("executor-agent-preload.timer", "Persistent") == "yes"
    wait_active(machine, "docker-registry.service")
    for ref in (REGISTRY_IMAGE, CONFIG_IMAGE):
        machine.sh(f"podman push -q {DEMO_IMAGE} {ref} && podman rmi -f {ref} >/dev/null 2>&1 || true")
        assert machine.sh(f"podman image exists {ref}", check=False).rc == 1
    dynamic = {"DYNAMIC_PRELOAD_DOCKER_JOB_IMAGES": {"description": "test", "items": [
        {"value": ["127.0.0.1:5000/systest/old:1"], "effective_from": None},
        {"value": [REGISTRY_IMAGE], "effective_from": "2020-01-01T00:00:00Z"},
        {"value": ["127.0.0.1:5000/systest/future:1"], "effective_from": "2999-01-01T00:00:00Z"}]}}
    machine.sh(f"cat > /srv/dynamic-config.json <<'EOF'\n{json.dumps(dynamic)}\nEOF")
    machine.sh("printf '%s\\n' 'images = [\"" + CONFIG_IMAGE + "\"]' "
               "'dynamic_config_url = \"file:///srv/dynamic-config.json\"' "
               ">> /etc/executor-agent/executor-agent.toml")
    started = time.monotonic()
    machine.sh("systemctl start executor-agent-preload.service")
    print(f"\npreload run took {time.monotonic() - started:.1f} s")
    assert machine.unit("executor-agent-preload.service", "Result") == "success"
    for ref in (REGISTRY_IMAGE, CONFIG_IMAGE):
        assert machine.sh(f"podman image exists {ref}", check=False).rc == 0, ref
    log = machine.journal("executor-agent-preload")
    assert f"preload pulled image={REGISTRY_IMAGE} result=new" in log, log
    assert "preload finished images=2 new=2 updated=0 unchanged=0 failed=0" in log, log
    assert "future" not in log and "old:1" not in log


def test_upgrade_keeps_an_edited_config_and_restarts_the_agents(machine: Machine) -> None:
    before = {u: machine.unit(u, "MainPID") for u in ("miner-agent", "executor-agent")}
    machine.sh("DEBIAN_FRONTEND=noninteractive apt-get install -y --reinstall "
               "/root/executor-agent.deb /root/miner-agent.deb")
    assert state["validator"] in machine.sh("cat /etc/miner-agent/miner-agent.toml").out
    assert "dynamic-config.json" in machine.sh("cat /etc/executor-agent/executor-agent.toml").out
    for unit, pid in before.items():
        wait_active(machine, unit)
        assert machine.unit(unit, "MainPID") != pid, f"{unit} was not restarted by the upgrade"
    # Minutes of uptime passed under WatchdogSec=30s: the pings from the event loop work.
    assert machine.unit("miner-agent", "NRestarts") == "0"
    assert machine.unit("executor-agent", "NRestarts") == "0"
    assert "watchdog" not in machine.sh("journalctl --no-pager -o cat -u miner-agent -u executor-agent").out


def test_remove_stops_the_units_and_keeps_config_and_state(machine: Machine) -> None:
    machine.sh("DEBIAN_FRONTEND=noninteractive apt-get remove -y miner-agent executor-agent")
    for unit in ("miner-agent", "executor-agent", "executor-agent-preload.timer"):
        assert machine.sh(f"systemctl is-active {unit}", check=False).out.strip() in ("inactive", "unknown")
    assert machine.sh("test ! -e /usr/bin/miner-agent && test ! -e /opt/miner-agent && test ! -e /opt/executor-agent "
                      "&& test ! -e /lib/systemd/system/miner-agent.service", check=False).rc == 0
    assert machine.sh("test -f /etc/miner-agent/miner-agent.toml && test -f /etc/executor-agent/executor-agent.toml "
                      "&& test -f /var/lib/miner-agent/miner.sqlite3 && test -d /var/lib/executor-agent",
                      check=False).rc == 0
    assert machine.sh("dpkg-query -W -f '${db:Status-Abbrev}' miner-agent").out.strip() == "rc"


def test_purge_removes_config_and_state_but_not_keys_or_users(machine: Machine) -> None:
    run = machine.sh("DEBIAN_FRONTEND=noninteractive apt-get purge -y miner-agent executor-agent 2>&1")
    assert "kept /etc/miner-agent/wallets (it holds keys)" in run.out
    assert machine.sh("test ! -e /etc/miner-agent/miner-agent.toml && test ! -e /etc/executor-agent "
                      "&& test ! -e /var/lib/miner-agent && test ! -e /var/lib/executor-agent", check=False).rc == 0
    assert machine.sh("test -f /etc/miner-agent/wallets/default/hotkeys/default", check=False).rc == 0
    leftovers = machine.sh("find /etc/systemd/system /var/lib/systemd/deb-systemd-helper-enabled "
                           "/var/lib/systemd/deb-systemd-helper-masked -name '*-agent*'", check=False).out
    assert leftovers.strip() == "", leftovers
    assert machine.sh("dpkg-query -W miner-agent executor-agent", check=False).rc != 0
    assert machine.sh("getent passwd miner-agent executor-agent", check=False).out.count("\n") == 2
