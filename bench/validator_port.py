"""An allowlisted validator's latency, and the miner's memory, under hostile load on the validator port (issue 10).

    sudo .venv/bin/python bench/validator_port.py [--manifests 20] [--jobs 5] [--idle 2000] [--flooders 32]

One run, four cases, one after another against the same `miner-agent run` process (with a local
`executor-agent serve` and podman behind it):
  quiet        nothing else on the port: the baseline every ratio is against
  idle         2,000 strangers' TCP sockets from 100 loopback addresses (127.0.1.x), half silent, half
               with a request header that never ends; each one the miner closes is reopened 1 s later,
               so the attacker keeps pushing 2,000 at the guard's 512-stranger cap for the whole case
  flood        32 strangers' websockets (127.0.2.x) on the allowlisted validator's path that never
               authenticate and send pre-auth frames non-stop (1 MiB junk, forged offers, forged auth
               frames, one-byte garbage, in turn), reconnecting 0.1 s after each close
  idle+flood   both at once
  quiet after  nothing again
For each case: the validator's manifest latency (connect + auth sent -> V0ExecutorManifestRequest),
its job latency (offer -> V0JobFinishedRequest of `echo`, the whole stock flow), both as ratios to
quiet, the miner's VmRSS / VmHWM from /proc/<pid>/status at the end of the case and its CPU use
during it; a last quiet case shows what is left once the attack stops. The hostile
traffic comes from a child process (this script with --hostile, at nice 19), so the validator's
event loop is not the one opening sockets; it still shares this machine's cores, and the child's
own rate is printed with it. The miner runs with the unit's LimitNOFILE (capped by this shell's hard limit).
Prints, asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import aiohttp
from bittensor_wallet import Keypair

from bench.job_overhead import ENV, IMAGE, build_image, podman_service
from horde_protocol.messages import V0ExecutorManifestRequest, V0JobRequest, ValidatorAuthForMiner
from horde_protocol.signing import sign_blob
from miner_agent.keys import create_wallet
from miner_agent.selftest.simulator import ValidatorSim

CLASS = "always_on.test"
UNIT_FILE = ROOT / "packaging" / "systemd" / "miner-agent.service"
IDLE_ADDRESSES = 100  # 20 sockets each at 2,000: under the per-address cap (32), so the total cap (512) is what acts
IDLE_SUBNET = "127.0.1"
FLOOD_SUBNET = "127.0.2"
IDLE_RECONNECT_S = 1.0  # an attacker that keeps its sockets: each one dropped comes back after this
FLOOD_RECONNECT_S = 0.1
FLOOD_JUNK_BYTES = 1024 * 1024  # one junk frame; the guard allows 8 MiB per frame, 9 MiB per stranger
HOSTILE_NICE = 19  # the lowest CPU priority for the attacking child
SETTLE_S = 2.0  # after the hostile child says it is up, before measuring (the guard's sweep runs every 1 s)
DRAIN_S = 3.0  # after it stops, before the next case (the miner closes what is left)
MANIFEST_TIMEOUT_S = 10.0  # a manifest slower than this counts as a failure (validators give up well before)
JOB_TIMEOUT_S = 60.0
START_TIMEOUT_S = 30.0
WARMUP_MANIFESTS = 5  # before the baseline: the first connections pay for imports and caches


# --- the hostile child -------------------------------------------------------------------------


@dataclass
class HostileStats:
    connects: int = 0
    refused: int = 0  # connects that failed outright
    frames: int = 0
    bytes: int = 0


async def _idle_socket(port: int, source: str, half_header: bool, stats: HostileStats) -> None:
    """Hold one socket open; when the miner closes it, open it again."""
    while True:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
        except OSError:
            stats.refused += 1
            await asyncio.sleep(IDLE_RECONNECT_S)
            continue
        stats.connects += 1
        try:
            if half_header:
                writer.write(b"GET /receipts/1.jsonl HTTP/1.1\r\nHost: miner\r\nX-Slow: ")
            while await reader.read(65536):
                pass
        except OSError:
            pass
        finally:
            writer.close()
        await asyncio.sleep(IDLE_RECONNECT_S)


def _flood_frames(kind: int, validator_hotkey: str, miner_hotkey: str, stranger: Keypair) -> list[str]:
    """What one flooding websocket sends, over and over: each kind hits another pre-auth limit."""
    if kind == 0:
        return ["x" * FLOOD_JUNK_BYTES]
    if kind == 1:
        sim = ValidatorSim(stranger, miner_hotkey, "http://127.0.0.1")
        return [sim.initial_request(CLASS, IMAGE).model_dump_json()]
    if kind == 2:
        ts = int(time.time())
        forged = ValidatorAuthForMiner(validator_hotkey=validator_hotkey, miner_hotkey=miner_hotkey, timestamp=ts,
                                       signature=sign_blob(stranger, f"{validator_hotkey}:{miner_hotkey}:{ts}"))
        return [forged.model_dump_json()]
    return ["x"]


async def _read_until_closed(ws: aiohttp.ClientWebSocketResponse) -> None:
    while (await ws.receive()).type not in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING,
                                            aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
        pass


async def _flooder(port: int, index: int, validator_hotkey: str, miner_hotkey: str, stats: HostileStats) -> None:
    source = f"{FLOOD_SUBNET}.{1 + index}"
    frames = _flood_frames(index % 4, validator_hotkey, miner_hotkey, Keypair.create_from_mnemonic(
        Keypair.generate_mnemonic()))
    url = f"ws://127.0.0.1:{port}/v0.1/validator_interface/{validator_hotkey}"
    connector = aiohttp.TCPConnector(local_addr=(source, 0), force_close=True)
    async with aiohttp.ClientSession(connector=connector) as http:
        while True:
            try:
                async with http.ws_connect(url, autoping=True, max_msg_size=0) as ws:
                    stats.connects += 1
                    answers = asyncio.create_task(_read_until_closed(ws))  # takes the miner's close
                    try:
                        while not answers.done():
                            for frame in frames:
                                await ws.send_str(frame)
                                stats.frames += 1
                                stats.bytes += len(frame)
                            await asyncio.sleep(0)
                    finally:
                        answers.cancel()
                        await asyncio.gather(answers, return_exceptions=True)
            except (aiohttp.ClientError, ConnectionError, RuntimeError, OSError):
                stats.refused += 1
            await asyncio.sleep(FLOOD_RECONNECT_S)


async def hostile(port: int, idle: int, flooders: int, validator_hotkey: str, miner_hotkey: str) -> None:
    """Run until SIGTERM; print one JSON line of what was sent, for the parent to rate."""
    stats = HostileStats()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    started = time.monotonic()
    tasks = [asyncio.create_task(_idle_socket(port, f"{IDLE_SUBNET}.{1 + i % IDLE_ADDRESSES}", bool(i % 2), stats))
             for i in range(idle)]
    tasks += [asyncio.create_task(_flooder(port, i, validator_hotkey, miner_hotkey, stats)) for i in range(flooders)]
    while stats.connects + stats.refused < min(idle, 512) + (1 if flooders else 0) and time.monotonic() - started < 30:
        await asyncio.sleep(0.05)
    print("ready", flush=True)
    await stop.wait()
    took = time.monotonic() - started
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    print(json.dumps({**stats.__dict__, "seconds": took}), flush=True)


def hostile_main(args: argparse.Namespace) -> None:
    # A real attacker's CPU is not on the miner's host; here it shares the cores, so it gets the
    # lowest priority, and the figures show the miner's own handling more than a starved CPU.
    os.nice(HOSTILE_NICE)
    need = args.idle + 4 * args.flooders + 256
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, need)), hard))
    asyncio.run(hostile(args.hostile, args.idle, args.flooders, args.validator, args.miner))


# --- the measuring parent ----------------------------------------------------------------------


@dataclass
class Case:
    name: str
    idle: int
    flooders: int
    manifests: list[float] = field(default_factory=list)
    jobs: list[float] = field(default_factory=list)
    failures: int = 0
    rss_kib: int = 0
    hwm_kib: int = 0
    cpu_pct: float = 0.0  # the miner's user + system time over the case's wall time
    hostile: dict[str, float] = field(default_factory=dict)


def unit_nofile() -> int:
    match = re.search(r"^LimitNOFILE=(\d+)", UNIT_FILE.read_text(), re.MULTILINE)
    wanted = int(match.group(1)) if match else 65536
    return min(wanted, resource.getrlimit(resource.RLIMIT_NOFILE)[1])


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (/proc/<pid>/stat fields 14 and 15, in clock ticks)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proc_status(pid: int) -> tuple[int, int]:
    """VmRSS and VmHWM in KiB."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]), int(fields["VmHWM"].split()[0])


def spawn(command: list[str], log: Path) -> subprocess.Popen[bytes]:
    """A daemon of ours, its output into `log` (kept for the error message if it does not come up)."""
    with open(log, "wb") as out:
        return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=ENV)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def wait_for(check: Callable[[], Awaitable[bool]], what: str, proc: subprocess.Popen[bytes],
                   log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while not await check():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"{what} did not come up:\n{log.read_text()[-3000:]}")
        await asyncio.sleep(0.1)


async def port_open(port: int) -> bool:
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return False
    writer.close()
    return True


async def manifest_latency(sim: ValidatorSim) -> float:
    t0 = time.monotonic()
    async with await sim.connect() as session:
        first = await session.recv(MANIFEST_TIMEOUT_S)
    if not isinstance(first.message, V0ExecutorManifestRequest):
        raise ConnectionError(f"first frame {first.type}")
    return first.at - t0


async def job_latency(sim: ValidatorSim) -> float:
    initial = sim.initial_request(CLASS, IMAGE)
    request = V0JobRequest(job_uuid=initial.job_uuid, executor_class=CLASS, docker_image=IMAGE,
                           docker_run_options_preset="none", docker_run_cmd=["echo", "hi"])
    t0 = time.monotonic()
    received = await asyncio.wait_for(sim.run_job(initial, request), JOB_TIMEOUT_S)
    if received[-1].type != "V0JobFinishedRequest":
        raise ConnectionError(f"job ended with {received[-1].type}")
    return received[-1].at - t0


async def measure(case: Case, sim: ValidatorSim, miner_pid: int, port: int, manifests: int, jobs: int) -> None:
    child = None
    if case.idle or case.flooders:
        child = await asyncio.create_subprocess_exec(
            sys.executable, __file__, "--hostile", str(port), "--idle", str(case.idle), "--flooders",
            str(case.flooders), "--validator", sim.hotkey, "--miner", sim.miner_hotkey,
            stdout=asyncio.subprocess.PIPE)
        assert child.stdout is not None
        line = await asyncio.wait_for(child.stdout.readline(), START_TIMEOUT_S)
        assert line.strip() == b"ready", line
        await asyncio.sleep(SETTLE_S)
    cpu0, wall0 = cpu_seconds(miner_pid), time.monotonic()
    try:
        for _ in range(manifests):
            try:
                case.manifests.append(await manifest_latency(sim))
            except (TimeoutError, ConnectionError, aiohttp.ClientError):
                case.failures += 1
        for _ in range(jobs):
            try:
                case.jobs.append(await job_latency(sim))
            except (TimeoutError, ConnectionError, aiohttp.ClientError):
                case.failures += 1
        case.rss_kib, case.hwm_kib = proc_status(miner_pid)
        case.cpu_pct = 100 * (cpu_seconds(miner_pid) - cpu0) / (time.monotonic() - wall0)
    finally:
        if child is not None:
            child.send_signal(signal.SIGTERM)
            out, _ = await asyncio.wait_for(child.communicate(), 30)
            with contextlib.suppress(ValueError, IndexError):
                case.hostile = json.loads(out.decode().strip().splitlines()[-1])
            await asyncio.sleep(DRAIN_S)


def write_configs(tmp: Path, podman_url: str, port: int, validator: str) -> tuple[Path, Path, Path]:
    wallets = tmp / "wallets"
    create_wallet(wallets, "miner", "default")
    sock = Path(tempfile.mkdtemp(prefix="bench-vp-"))
    agent_sock = sock / "agent.sock"
    agent_toml = tmp / "agent.toml"
    agent_toml.write_text(f'socket_path = "{agent_sock}"\njobs_dir = "{tmp / "jobs"}"\npodman_url = "{podman_url}"\n'
                          'image_policy = "local_only"\nslots = 1\n')
    miner_toml = tmp / "miner.toml"
    miner_toml.write_text(
        f'[miner]\nlisten_host = "127.0.0.1"\nlisten_port = {port}\nstate_dir = "{tmp / "state"}"\n'
        f'admin_socket = "{sock / "admin.sock"}"\nmetrics_enabled = false\n'
        f'[wallet]\npath = "{wallets}"\nname = "miner"\nhotkey = "default"\n'
        f'[validators]\nallow = ["{validator}"]\n'
        f'[[executors]]\nname = "local"\nexecutor_class = "{CLASS}"\nmode = "local"\nsocket = "{agent_sock}"\n')
    return agent_toml, miner_toml, agent_sock


async def run(args: argparse.Namespace, tmp: Path, podman_url: str) -> list[Case]:
    from miner_agent.keys import load_hotkey

    validator = Keypair.create_from_mnemonic(Keypair.generate_mnemonic())
    port = free_port()
    agent_toml, miner_toml, agent_sock = write_configs(tmp, podman_url, port, validator.ss58_address)
    agent_log, miner_log = tmp / "agent.log", tmp / "miner.log"
    nofile = unit_nofile()
    procs: list[subprocess.Popen[bytes]] = []
    try:
        procs.append(spawn([sys.executable, "-m", "executor_agent", "serve", "--config", str(agent_toml)], agent_log))

        async def agent_up() -> bool:
            return agent_sock.exists()

        await wait_for(agent_up, "executor-agent serve", procs[0], agent_log)
        procs.append(spawn([sys.executable, "-m", "miner_agent", "run", "--config", str(miner_toml)], miner_log))
        resource.prlimit(procs[1].pid, resource.RLIMIT_NOFILE, (nofile, nofile))  # what the unit gives it
        await wait_for(lambda: port_open(port), "miner-agent run", procs[1], miner_log)
        miner_hotkey = load_hotkey(tmp / "wallets", "miner", "default").hotkey
        sim = ValidatorSim(validator, miner_hotkey, f"http://127.0.0.1:{port}")
        for _ in range(60):  # the miner's link to the executor agent comes up just after its port
            try:
                await job_latency(sim)  # also the warm-up: first image check, first container
                break
            except (TimeoutError, ConnectionError, aiohttp.ClientError):
                await asyncio.sleep(0.5)
        for _ in range(WARMUP_MANIFESTS):
            await manifest_latency(sim)
        cases = [Case("quiet", 0, 0), Case("idle", args.idle, 0), Case("flood", 0, args.flooders),
                 Case("idle+flood", args.idle, args.flooders), Case("quiet after", 0, 0)]
        for case in cases:
            await measure(case, sim, procs[1].pid, port, args.manifests, args.jobs)
            print(f"  measured {case.name}", file=sys.stderr, flush=True)
        print(f"miner-agent run pid {procs[1].pid}, LimitNOFILE {nofile}; "
              f"{len(miner_log.read_bytes().splitlines())} miner log lines in all")
        return cases
    finally:
        for proc in reversed(procs):
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()


def report(cases: list[Case]) -> None:
    quiet = cases[0]
    base_m = statistics.median(quiet.manifests)
    base_j = statistics.median(quiet.jobs)
    print(f"{'case':11} {'manifest p50':>12} {'max':>8} {'x quiet':>7}  {'job p50':>8} {'max':>8} {'x quiet':>7}  "
          f"{'fail':>4}  {'VmRSS':>8} {'VmHWM':>8} {'CPU':>5}  hostile: connects/s  frames/s   MiB/s")
    for c in cases:
        m50, j50 = statistics.median(c.manifests or [float("nan")]), statistics.median(c.jobs or [float("nan")])
        h = c.hostile
        secs = h.get("seconds") or 1.0
        hostile = (f"{h.get('connects', 0) / secs:9.0f} {h.get('frames', 0) / secs:9.0f} "
                   f"{h.get('bytes', 0) / secs / 2**20:7.1f}" if h else f"{'-':>9} {'-':>9} {'-':>7}")
        print(f"{c.name:11} {m50 * 1000:9.1f} ms {max(c.manifests or [0]) * 1000:5.0f} ms {m50 / base_m:6.2f}x  "
              f"{j50 * 1000:5.0f} ms {max(c.jobs or [0]) * 1000:5.0f} ms {j50 / base_j:6.2f}x  {c.failures:4d}  "
              f"{c.rss_kib / 1024:5.0f} MiB {c.hwm_kib / 1024:5.0f} MiB {c.cpu_pct:4.0f}%  {hostile}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--manifests", type=int, default=20, help="manifest connections per case")
    parser.add_argument("--jobs", type=int, default=5, help="echo jobs per case")
    parser.add_argument("--idle", type=int, default=2000, help="strangers' idle sockets in the idle cases")
    parser.add_argument("--flooders", type=int, default=32, help="strangers' pre-auth websockets in the flood cases")
    parser.add_argument("--hostile", type=int, help=argparse.SUPPRESS)  # the child: the miner's port
    parser.add_argument("--validator", help=argparse.SUPPRESS)
    parser.add_argument("--miner", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.hostile is not None:
        hostile_main(args)
        return
    build_image()
    with tempfile.TemporaryDirectory(prefix="bench-vp-") as tmp, podman_service(Path(tmp)) as podman_url:
        cases = asyncio.run(run(args, Path(tmp), podman_url))
    report(cases)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
