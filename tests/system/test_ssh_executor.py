"""The operator guide's "Executors on other hosts" steps, as written, on a real Debian 12 with
systemd and Debian's own sshd: both packages installed, the guide's shell blocks run (with
the real key pasted where the guide shows `AAAA...`), its `[[executors]]` block added to the
miner's config, and a job run through the installed miner over SSH.

The test reads the blocks out of docs/operator-guide.md, so the guide and the test cannot
drift apart. The machine has no network; inside it the test makes a network namespace for
the miner host (a veth pair, 10.99.0.1 executor side, 10.99.0.2 miner side) and runs
miner-agent.service in it, so the miner reaches the executor only through sshd and its
streamlocal channel, as across two hosts.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from tests.system.conftest import Machine
from tests.system.test_packages import (
    ACTIVE_TIMEOUT_S,
    DEMO_IMAGE,
    FAKE_CDI_SPEC,
    VALIDATOR_WALLETS,
    allow_a_new_validator,
)

REPO = Path(__file__).resolve().parents[2]
GUIDE = REPO / "docs" / "operator-guide.md"
SECTION = "## Executors on other hosts"
KEY_PLACEHOLDER = "'ssh-ed25519 AAAA... miner-agent'"
MINER_NETNS = "minerhost"
EXECUTOR_HOST = "10.99.0.1"  # the guide's 10.0.0.5: the machine's own end of the veth
MINER_HOST = "10.99.0.2"  # miner-agent.service's end, in MINER_NETNS
MINER_NETNS_SETUP = f"""\
ip netns add {MINER_NETNS}
ip link add v-exec type veth peer name eth0 netns {MINER_NETNS}
ip addr add {EXECUTOR_HOST}/24 dev v-exec && ip link set v-exec up
ip -n {MINER_NETNS} addr add {MINER_HOST}/24 dev eth0
ip -n {MINER_NETNS} link set eth0 up && ip -n {MINER_NETNS} link set lo up
mkdir -p /etc/systemd/system/miner-agent.service.d
printf '[Service]\\nNetworkNamespacePath=/run/netns/{MINER_NETNS}\\n' \
  > /etc/systemd/system/miner-agent.service.d/50-systest-netns.conf
systemctl daemon-reload
"""  # everything stays inside the machine, which has no network of its own
LINK_UP_TIMEOUT_S = 30.0
# The guide's executor class is a GPU class: its jobs get FAKE_CDI_SPEC's nvidia_all device, as in the
# package tests whose constants this test shares.

pytestmark = [pytest.mark.system, pytest.mark.podman]


def guide_blocks(lang: str) -> list[str]:
    """The ```lang blocks of the guide's SSH section, in order."""
    text = GUIDE.read_text()
    section = text[text.index(SECTION):]
    section = section[:section.index("\n## ", 1)]
    return re.findall(rf"```{lang}\n(.*?)```", section, re.DOTALL)


def as_root(block: str) -> str:
    """The machine's shell is root already and has no sudo: `sudo -u U cmd` becomes runuser."""
    block = re.sub(r"(^|\|\s*)sudo -u (\S+) ", r"\1runuser -u \2 -- ", block, flags=re.MULTILINE)
    return re.sub(r"(^|\|\s*)sudo ", r"\1", block, flags=re.MULTILINE)


def wait_for(box: Machine, command: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while box.sh(command, check=False).rc != 0:
        if time.monotonic() > deadline:
            run = box.sh(command, check=False)
            raise AssertionError(f"`{command}` still fails:\n{run.out}\n{run.err}")
        time.sleep(0.5)


def test_the_guides_ssh_steps_run_a_job_through_the_installed_packages(machine: Machine,
                                                                       debs: dict[str, Path]) -> None:
    miner_block, executor_block = guide_blocks("sh")[:2]
    (toml_block,) = guide_blocks("toml")
    assert KEY_PLACEHOLDER in executor_block, executor_block

    for name, path in debs.items():
        machine.copy_in(path, f"/root/{name}.deb")
    machine.sh(f"mkdir -p /etc/cdi && cat > /etc/cdi/fake-nvidia.yaml <<'EOF'\n{FAKE_CDI_SPEC}EOF")
    machine.sh("test -e /dev/fakegpu0 || mknod -m 0666 /dev/fakegpu0 c 1 3")
    machine.sh("DEBIAN_FRONTEND=noninteractive apt-get install -y /root/executor-agent.deb /root/miner-agent.deb")
    allow_a_new_validator(machine)

    # Miner host: the guide's key commands; the last one prints the public key.
    public_key = machine.sh(as_root(miner_block)).out.strip().splitlines()[-1]
    assert public_key.startswith("ssh-ed25519 ") and public_key.endswith(" miner-agent"), public_key
    # Executor host: the guide's one command, with that key pasted in.
    authorized = machine.sh(as_root(executor_block.replace(KEY_PLACEHOLDER, f"'{public_key}'"))).out
    host_key = re.search(r'^host_key = "(ssh-ed25519 \S+)"$', authorized, re.MULTILINE)
    assert host_key, authorized
    assert host_key.group(1) == " ".join(machine.sh("cat /etc/ssh/ssh_host_ed25519_key.pub").out.split()[:2])
    # Rerun: nothing changes, one line for the key.
    rerun = machine.sh(as_root(executor_block.replace(KEY_PLACEHOLDER, f"'{public_key}'"))).out
    assert "already authorized" in rerun, rerun
    assert machine.sh("grep -c miner-agent /var/lib/executor-agent/.ssh/authorized_keys").out.strip() == "1"

    # Miner host: the guide's [[executors]] block, with this host's address and its pinned key.
    entry = re.sub(r'^host = ".*"$', f'host = "{EXECUTOR_HOST}"', toml_block, flags=re.MULTILINE)
    entry = re.sub(r'^host_key = ".*"$', f'host_key = "{host_key.group(1)}"', entry, flags=re.MULTILINE)
    machine.sh(f"cat >> /etc/miner-agent/miner-agent.toml <<'EOF'\n\n{entry}EOF")
    machine.sh(MINER_NETNS_SETUP)
    machine.sh("systemctl restart miner-agent")
    wait_for(machine, "systemctl is-active miner-agent", ACTIVE_TIMEOUT_S)
    wait_for(machine, "miner-agent status --config /etc/miner-agent/miner-agent.toml", LINK_UP_TIMEOUT_S)
    status = machine.sh("miner-agent status --config /etc/miner-agent/miner-agent.toml").out
    assert re.search(r"^gpu-1\s+\S+\s+ssh\s+up", status, re.MULTILINE), status

    machine.sh(f"podman image exists {DEMO_IMAGE} || podman import -q --change 'CMD [\"/bin/sh\"]' "
               f"/opt/systest/busybox-rootfs.tar {DEMO_IMAGE}")
    run = machine.sh(f"miner-agent demo-job --config /etc/miner-agent/miner-agent.toml "
                     f"--validator-wallet-path {VALIDATOR_WALLETS} --validator-wallet validator --image {DEMO_IMAGE} "
                     f"--host {MINER_HOST}")
    assert "job finished: OK" in run.out, run.out
    ssh_log = machine.sh("journalctl -u ssh --no-pager -o cat").out
    assert f"Accepted publickey for executor-agent from {MINER_HOST}" in ssh_log, ssh_log
    assert "but the request was denied" not in ssh_log, ssh_log

    # The key opens the agent socket and nothing else: no command, no TCP forward.
    key = "-i /etc/miner-agent/ssh/id_ed25519 -o BatchMode=yes -o StrictHostKeyChecking=no"
    shell = machine.sh(f"ssh {key} executor-agent@{EXECUTOR_HOST} id", check=False)
    assert "uid=" not in shell.out and shell.rc != 0, (shell.out, shell.err)
    forward = machine.sh(f"ssh {key} -o ExitOnForwardFailure=yes -W 127.0.0.1:8000 executor-agent@{EXECUTOR_HOST} "
                         "</dev/null", check=False)
    assert forward.rc != 0, (forward.out, forward.err)
