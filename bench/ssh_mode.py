"""A trivial job through an executor reached over SSH, against the same container through the
podman API directly, measured in one run (interleaved, so load drift hits both alike).

    sudo .venv/bin/python bench/ssh_mode.py [--jobs 20]

  baseline  podman API (the agent's own engine, podman-py): create + start + wait + logs + remove
            of `IMG echo hi` with no network
  ours      validator simulator -> miner-agent websocket -> SSH (Debian's sshd on 127.0.0.1,
            set up by `executor-agent authorize-miner`'s code, for root) -> streamlocal channel
            -> executor-agent -> the same podman API -> V0JobFinishedRequest
and printed as a ratio of medians. Needs root (sshd, podman). Prints, asserts nothing.
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
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bittensor_wallet import Keypair

from bench.job_overhead import ENV, IMAGE, build_image
from executor_agent import authorize as A
from executor_agent.container.podman_engine import Podman
from executor_agent.daemon.server import ExecutorAgent
from executor_agent.executor_config import AgentConfig
from horde_protocol.messages import V0JobRequest
from miner_agent.daemon import MinerAgent
from miner_agent.keys import create_wallet
from miner_agent.miner_config import MinerConfig, MinerSection, SshExecutor, ValidatorsSection, WalletSection
from miner_agent.selftest.simulator import ValidatorSim

CLASS = "always_on.test"
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


async def direct(engine: Podman) -> float:
    t0 = time.perf_counter()
    cid = await engine.start_container({"image": IMAGE, "command": ["echo", "hi"], "network_mode": "none"})
    assert await engine.wait(cid, JOB_TIMEOUT_S) == 0
    await engine.logs(cid)
    await engine.remove(cid)
    return time.perf_counter() - t0


async def through_ssh(sim: ValidatorSim) -> float:
    initial = sim.initial_request(CLASS, IMAGE)
    request = V0JobRequest(job_uuid=initial.job_uuid, executor_class=CLASS, docker_image=IMAGE,
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
                               key_path=client_key, host_key=host_key, socket=agent_socket)],
    ))
    await miner.start()
    try:
        link = miner.ctx.fleet.links["ssh"]
        if not await link.wait_up(START_TIMEOUT_S):
            raise RuntimeError(f"ssh link did not come up: {link.last_error}")
        sim = ValidatorSim(validator, miner_key.hotkey, f"http://{LOOPBACK}:{miner.port}")
        engine = Podman(podman_url)
        for _ in range(WARMUP_JOBS):
            await direct(engine)
            await through_ssh(sim)
        base, ours = [], []
        for _ in range(n):
            base.append(await direct(engine))
            ours.append(await through_ssh(sim))
        med_base, med_ours = statistics.median(base), statistics.median(ours)
        print(f"jobs: {n} each, interleaved ({WARMUP_JOBS} warm-up each not counted)")
        print(f"  podman API directly        median {med_base * 1000:7.1f} ms")
        print(f"  miner -> SSH -> agent      median {med_ours * 1000:7.1f} ms   ratio {med_ours / med_base:.2f}x")
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
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        sock = Path(tmp) / "podman.sock"
        service = subprocess.Popen(["podman", "system", "service", "--time=0", f"unix://{sock}"], env=ENV,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            for _ in range(200):
                if sock.exists():
                    break
                time.sleep(0.05)
            asyncio.run(run(args.jobs, Path(tmp), f"unix://{sock}"))
        finally:
            service.terminate()
            service.wait()


if __name__ == "__main__":
    main()
