"""Per-job overhead of the whole stack against a bare `podman run` of the same container.

    sudo .venv/bin/python bench/job_overhead.py [--jobs 20] [--offers 50]

Measured in one run, on this machine:
  baseline  `podman run --rm --network none IMG echo hi` (CLI, what an operator would time)
  ours      validator simulator -> miner-agent websocket -> executor-agent -> podman API ->
            the same container -> V0JobFinishedRequest, from sending the offer to the result
and printed as a ratio. A second section sends many offers at once to a one-slot miner
and compares the accept/decline latency with a plain websocket round trip (the
V0MainHotkeyMessage query) on the same connection type; validators give 7 s. The last
line is the resident memory growth of the process over all jobs. Prints, asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bittensor_wallet import Keypair  # noqa: E402

from executor_agent.daemon.server import ExecutorAgent  # noqa: E402
from executor_agent.executor_config import AgentConfig  # noqa: E402
from horde_protocol.messages import (
    V0AcceptJobRequest,
    V0DeclineJobRequest,
    V0ExecutorManifestRequest,
    V0JobRequest,  # noqa: E402
    V0MainHotkeyMessage,
)
from miner_agent.daemon import MinerAgent  # noqa: E402
from miner_agent.keys import create_wallet  # noqa: E402
from miner_agent.miner_config import LocalExecutor, MinerConfig, MinerSection, ValidatorsSection, WalletSection  # noqa: E402
from miner_agent.selftest.simulator import ValidatorSim  # noqa: E402

IMAGE = "localhost/miner-agent-bench:latest"
CLASS = "always_on.test"
ENV = {**os.environ, "CONTAINERS_CONF": str(ROOT / "packaging/podman/containers.conf")}


@contextlib.contextmanager
def podman_service(workdir: Path) -> Iterator[str]:
    """A podman API service of the bench's own on a socket in `workdir`; yields its URL."""
    sock = workdir / "podman.sock"
    service = subprocess.Popen(["podman", "system", "service", "--time=0", f"unix://{sock}"], env=ENV,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=workdir)
    try:
        for _ in range(200):  # up to 10 s for the socket
            if sock.exists():
                break
            time.sleep(0.05)
        yield f"unix://{sock}"
    finally:
        service.terminate()
        service.wait()


def build_image() -> None:
    if subprocess.run(["podman", "image", "exists", IMAGE], env=ENV).returncode == 0:
        return
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "r"
        (root / "bin").mkdir(parents=True)
        shutil.copy2(shutil.which("busybox") or "/bin/busybox", root / "bin/busybox")
        for applet in ("sh", "echo"):
            (root / "bin" / applet).symlink_to("busybox")
        with tarfile.open(Path(tmp) / "r.tar", "w") as tar:
            tar.add(root, arcname=".")
        subprocess.run(["podman", "import", "-q", str(Path(tmp) / "r.tar"), IMAGE], env=ENV, check=True,
                       capture_output=True)


def baseline(n: int) -> list[float]:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        subprocess.run(["podman", "run", "--rm", "--network", "none", IMAGE, "echo", "hi"], env=ENV, check=True,
                       capture_output=True)
        times.append(time.perf_counter() - t0)
    return times


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


async def ours(n: int, offers: int, tmp: Path, podman_url: str) -> None:
    wallets = tmp / "wallets"
    miner_key = create_wallet(wallets, "miner", "default")
    validator = Keypair.create_from_mnemonic(Keypair.generate_mnemonic())
    sock_dir = Path(tempfile.mkdtemp(prefix="bench-"))
    agent = ExecutorAgent(AgentConfig(socket_path=sock_dir / "a.sock", jobs_dir=tmp / "jobs", podman_url=podman_url,
                                      image_policy="local_only"))
    await agent.start()
    config = MinerConfig(
        miner=MinerSection(listen_host="127.0.0.1", listen_port=0, state_dir=tmp / "state", metrics_enabled=False,
                           admin_socket=sock_dir / "admin.sock"),
        wallet=WalletSection(path=wallets, name="miner", hotkey="default"),
        validators=ValidatorsSection(allow=[validator.ss58_address]),
        executors=[LocalExecutor(name="local", executor_class=CLASS, socket=sock_dir / "a.sock")],
    )
    miner = MinerAgent(config)
    await miner.start()
    await miner.ctx.fleet.links["local"].wait_up(10)
    sim = ValidatorSim(validator, miner_key.hotkey, f"http://127.0.0.1:{miner.port}")
    rss_before = rss_mib()
    try:
        totals, stages = [], {}
        for _ in range(n):
            initial = sim.initial_request(CLASS, IMAGE)
            request = V0JobRequest(job_uuid=initial.job_uuid, executor_class=CLASS, docker_image=IMAGE,
                                   docker_run_options_preset="none", docker_run_cmd=["echo", "hi"])
            t0 = time.monotonic()
            received = await sim.run_job(initial, request)
            assert received[-1].type == "V0JobFinishedRequest", received[-1].message
            totals.append(received[-1].at - t0)
            prev = t0
            for r in received:
                stages.setdefault(r.type, []).append(r.at - prev)
                prev = r.at
        base = baseline(n)
        med_ours, med_base = statistics.median(totals), statistics.median(base)
        print(f"jobs: {n}")
        print(f"  bare podman run (CLI)     median {med_base * 1000:7.1f} ms")
        print(f"  through both agents       median {med_ours * 1000:7.1f} ms   ratio {med_ours / med_base:.2f}x")
        for name, values in stages.items():
            print(f"    {name:28} median {statistics.median(values) * 1000:7.1f} ms after the previous message")
        await offers_burst(sim, offers)
        print(f"max RSS growth over {n} jobs and {offers} offers: {rss_mib() - rss_before:.1f} MiB "
              f"(max RSS {rss_mib():.0f} MiB, miner + executor agent in one process)")
    finally:
        await miner.stop()
        await agent.stop()


async def offers_burst(sim: ValidatorSim, offers: int) -> None:
    async with await sim.connect() as session:
        await session.recv_until(V0ExecutorManifestRequest)
        rtts = []
        for _ in range(20):
            t0 = time.monotonic()
            await session.send(V0MainHotkeyMessage())
            await session.recv_until(V0MainHotkeyMessage)
            rtts.append(time.monotonic() - t0)

    async def offer(k: int) -> float:
        # each simulated validator from its own loopback address, as real ones come from their own
        # hosts (one address may hold only 32 unauthenticated sockets: server/conn_guard.py)
        async with await sim.connect(source_address=f"127.0.2.{k % 250 + 1}") as s:
            await s.recv_until(V0ExecutorManifestRequest)
            initial = sim.initial_request(CLASS, IMAGE)
            t0 = time.monotonic()
            await s.send(initial)
            got = await s.recv_until(V0AcceptJobRequest, V0DeclineJobRequest)
            return got.at - t0

    latencies = sorted(await asyncio.gather(*(offer(k) for k in range(offers))))
    rtt = statistics.median(rtts)
    p50, p99 = statistics.median(latencies), latencies[int(len(latencies) * 0.99) - 1]
    print(f"{offers} simultaneous offers to a one-slot miner (1 accept, the rest busy declines with excuses):")
    print(f"  websocket round trip      median {rtt * 1000:7.2f} ms")
    print(f"  accept/decline latency    p50 {p50 * 1000:7.2f} ms ({p50 / rtt:.1f}x)   p99 {p99 * 1000:7.2f} ms "
          f"({p99 / rtt:.1f}x); validators allow 7000 ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=20)
    parser.add_argument("--offers", type=int, default=50)
    args = parser.parse_args()
    build_image()
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp, podman_service(Path(tmp)) as podman_url:
        asyncio.run(ours(args.jobs, args.offers, Path(tmp), podman_url))


if __name__ == "__main__":
    main()
