"""A trivial job through an executor reached over SSH, against the same container through the
podman API directly, measured in one run (interleaved, so load drift hits both alike).

    sudo .venv/bin/python bench/ssh_mode.py [--jobs 20]

  baseline  podman API (the agent's own engine, podman-py): create + start + wait + logs + remove
            of the same job container (JobContainerSpec: `IMG echo hi`, no network, its own user
            namespace, /volume and /output binds), with no agent, miner or SSH in the way
  ssh       validator simulator -> miner-agent websocket -> SSH (Debian's sshd on 127.0.0.1,
            set up by `executor-agent authorize-miner`'s code, for root) -> streamlocal channel
            -> executor-agent -> the same podman API -> V0JobFinishedRequest
  local     the same miner and agent, through the agent's socket directly (a second executor
            entry of another class on the same agent), to show what SSH itself adds
and printed as ratios of medians. Needs root (sshd, podman). Prints, asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bittensor_wallet import Keypair

from bench.job_overhead import IMAGE, build_image, podman_service
from executor_agent import authorize as A
from executor_agent.container.job_spec import JobContainerSpec
from executor_agent.container.podman_engine import Podman
from executor_agent.daemon.server import ExecutorAgent
from executor_agent.executor_config import AgentConfig
from horde_protocol.messages import V0JobRequest
from miner_agent.daemon import MinerAgent
from miner_agent.keys import create_wallet
from miner_agent.miner_config import (
    LocalExecutor,
    MinerConfig,
    MinerSection,
    SshExecutor,
    ValidatorsSection,
    WalletSection,
)
from miner_agent.selftest.simulator import ValidatorSim

CLASS = "always_on.test"
LOCAL_CLASS = "always_on.cpu.8c.16gb"  # no GPU: the same `none` preset as CLASS
LOOPBACK = "127.0.0.1"
START_TIMEOUT_S = 15.0
JOB_TIMEOUT_S = 60.0
WARMUP_JOBS = 2  # first container start pays for image layers and podman caches; not counted


def _keygen(path: Path) -> str:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True, capture_output=True)
    return path.with_suffix(".pub").read_text().strip()


def start_sshd(tmp: Path, socket_path: Path) -> tuple[subprocess.Popen[bytes], int, str, Path]:
    """sshd on loopback with exactly the files authorize-miner writes; (process, port, host key, client key)."""
    host_key = " ".join(_keygen(tmp / "host_ed25519").split()[:2])
    client = tmp / "client_ed25519"
    dropin = tmp / "executor-agent.conf"
    A.authorize(A.parse_public_key(_keygen(client)), A.Target(
        user="root", socket=socket_path, dropin=dropin, host_key=tmp / "host_ed25519.pub",
        authorized_keys=tmp / "authorized_keys", reload=False),
        run=lambda argv: subprocess.CompletedProcess(argv, 0, "", ""))  # sshd itself checks it below
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        port = int(s.getsockname()[1])
    config = tmp / "sshd_config"
    config.write_text(
        f"Port {port}\nListenAddress {LOOPBACK}\nHostKey {tmp / 'host_ed25519'}\nPidFile {tmp / 'sshd.pid'}\n"
        f"AuthorizedKeysFile {tmp / 'authorized_keys'}\nPasswordAuthentication no\nPermitRootLogin prohibit-password\n"
        f"UsePAM no\nStrictModes no\nInclude {dropin}\n")
    Path("/run/sshd").mkdir(exist_ok=True)
    subprocess.run(["/usr/sbin/sshd", "-t", "-f", str(config)], check=True)
    sshd = subprocess.Popen(["/usr/sbin/sshd", "-D", "-e", "-f", str(config)], stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        try:
            socket.create_connection((LOOPBACK, port), timeout=1).close()
            return sshd, port, host_key, client
        except OSError:
            if sshd.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("sshd did not start") from None
            time.sleep(0.05)


async def direct(engine: Podman, tmp: Path) -> float:
    t0 = time.perf_counter()
    job_dir = tmp / "direct" / str(uuid.uuid4())
    (job_dir / "volume").mkdir(parents=True)
    (job_dir / "output").mkdir()
    cid = await engine.start_job(JobContainerSpec(job_uuid=job_dir.name, image=IMAGE, command=["echo", "hi"],
                                                  volume_dir=job_dir / "volume", output_dir=job_dir / "output"))
    assert await engine.wait(cid, JOB_TIMEOUT_S) == 0
    await engine.logs(cid)
    await engine.remove(cid)
    return time.perf_counter() - t0


async def through_miner(sim: ValidatorSim, executor_class: str) -> float:
    initial = sim.initial_request(executor_class, IMAGE)
    request = V0JobRequest(job_uuid=initial.job_uuid, executor_class=executor_class, docker_image=IMAGE,
                           docker_run_options_preset="none", docker_run_cmd=["echo", "hi"])
    t0 = time.monotonic()
    received = await sim.run_job(initial, request)
    assert received[-1].type == "V0JobFinishedRequest", received[-1].message
    return received[-1].at - t0


async def run(n: int, tmp: Path, podman_url: str) -> None:
    sock_dir = Path(tempfile.mkdtemp(prefix="bench-ssh-"))  # short: unix socket paths are limited to 107 bytes
    agent_socket = sock_dir / "a.sock"
    sshd, port, host_key, client_key = start_sshd(tmp, agent_socket)
    wallets = tmp / "wallets"
    miner_key = create_wallet(wallets, "miner", "default")
    validator = Keypair.create_from_mnemonic(Keypair.generate_mnemonic())
    agent = ExecutorAgent(AgentConfig(socket_path=agent_socket, jobs_dir=tmp / "jobs", podman_url=podman_url,
                                      image_policy="local_only"))
    await agent.start()
    miner = MinerAgent(MinerConfig(
        miner=MinerSection(listen_host=LOOPBACK, listen_port=0, state_dir=tmp / "state", metrics_enabled=False,
                           admin_socket=sock_dir / "admin.sock"),
        wallet=WalletSection(path=wallets, name="miner", hotkey="default"),
        validators=ValidatorsSection(allow=[validator.ss58_address]),
        executors=[SshExecutor(name="ssh", executor_class=CLASS, mode="ssh", host=LOOPBACK, port=port, user="root",
                               key_path=client_key, host_key=host_key, socket=agent_socket),
                   LocalExecutor(name="local", executor_class=LOCAL_CLASS, socket=agent_socket)],
    ))
    await miner.start()
    try:
        for name, link in miner.ctx.fleet.links.items():
            if not await link.wait_up(START_TIMEOUT_S):
                raise RuntimeError(f"{name} link did not come up: {link.last_error}")
        sim = ValidatorSim(validator, miner_key.hotkey, f"http://{LOOPBACK}:{miner.port}")
        engine = Podman(podman_url)
        for _ in range(WARMUP_JOBS):
            await direct(engine, tmp)
            await through_miner(sim, CLASS)
            await through_miner(sim, LOCAL_CLASS)
        base, ssh, local = [], [], []
        for _ in range(n):
            base.append(await direct(engine, tmp))
            ssh.append(await through_miner(sim, CLASS))
            local.append(await through_miner(sim, LOCAL_CLASS))
        med_base, med_ssh, med_local = statistics.median(base), statistics.median(ssh), statistics.median(local)
        print(f"jobs: {n} each, interleaved ({WARMUP_JOBS} warm-up each not counted)")
        print(f"  podman API directly        median {med_base * 1000:7.1f} ms")
        print(f"  miner -> SSH -> agent      median {med_ssh * 1000:7.1f} ms   ratio {med_ssh / med_base:.2f}x")
        print(f"  miner -> socket -> agent   median {med_local * 1000:7.1f} ms   ratio {med_local / med_base:.2f}x"
              f"   (SSH / socket {med_ssh / med_local:.2f}x)")
    finally:
        await miner.stop()
        await agent.stop()
        sshd.terminate()
        sshd.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=20)
    args = parser.parse_args()
    build_image()
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp, podman_service(Path(tmp)) as podman_url:
        asyncio.run(run(args.jobs, Path(tmp), podman_url))


if __name__ == "__main__":
    main()
