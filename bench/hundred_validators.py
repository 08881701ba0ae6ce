"""A hundred validators at once: accept latency, memory per connection, idle footprint (issue 14).

    sudo .venv/bin/python bench/hundred_validators.py [--validators 100] [--rounds 5] [--sockets 1000]
                                                     [--range-clients 32]

One run against one `miner-agent run` process (a one-slot `executor-agent serve` with podman behind it),
the client in this process, every socket from its own loopback source address (127.0.3.x and up) so the
per-address guard never throttles the run; the validators' sockets negotiate permessage-deflate, as the stock
client does (--no-deflate: without). Printed, one after another:
  idle        VmRSS of both daemons once the miner's link to the agent is up, before any validator
  offers      N allowlisted validators, each authenticated on its own socket, send an offer at the same
              moment; the time from sending to V0AcceptJobRequest / V0DeclineJobRequest, p50 and p99, and
              as a ratio to a plain websocket round trip (V0MainHotkeyMessage) measured just before; R
              rounds (the slot is taken by a warm-up offer, so all are busy declines, each with the
              other offers' receipts as excuses), the median round printed with the miner's CPU per offer
  sockets     M authenticated validator sockets (N validators, M/N each) held open: the miner's VmRSS
              with them, and after they are closed
  range       C clients fetch the newest receipt page as validators do (protocol.md 6.4: `Range:
              bytes=<checkpoint>-`, empty Accept-Encoding; 206 moves the checkpoint, 416 is nothing new, 404 a page with no receipt yet)
              as fast as they can: the
              requests per second alone (the baseline) and while bursts of offers run, and the ratio
Prints, asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid as uuidlib
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import aiohttp
from bittensor_wallet import Keypair

from bench.job_overhead import IMAGE, build_image, podman_service
from bench.validator_port import cpu_seconds, free_port, port_open, proc_status, spawn, wait_for
from horde_protocol.messages import (
    ExecutorTimingDetails,
    V0InitialJobRequest,
    V0MainHotkeyMessage,
    ValidatorAuthForMiner,
)
from horde_protocol.receipts import JobStartedReceiptPayload, receipt_blob
from horde_protocol.signing import sign_blob
from miner_agent.keys import create_wallet, load_hotkey

CLASS = "always_on.test"
FIRST_SUBNET = 3  # 127.<3..>.x: source addresses of the validators' sockets
ADDRESSES_PER_SUBNET = 250
ANSWER_TIMEOUT_S = 30.0  # validators give 7 s; a slower answer is still printed
RTT_SAMPLES = 20
RANGE_SECONDS = 3.0  # each range case runs this long
BURST_PAUSE_S = 0.2  # between offer bursts in the range case
PAGE_TIME_S = 300  # the miner's receipt page length
SETTLE_S = 2.0  # after closing sockets, before reading the memory given back
# The offers' receipt TTL, and the pause between rounds: each round's declines carry that round's receipts
# as excuses, not the earlier rounds' too (which would make round k's declines k times larger).
RESERVATION_TTL_S = 2
ROUND_PAUSE_S = RESERVATION_TTL_S + 1.0


def source_address(k: int) -> str:
    return f"127.0.{FIRST_SUBNET + k // ADDRESSES_PER_SUBNET}.{k % ADDRESSES_PER_SUBNET + 1}"


@dataclass
class Validator:
    keypair: Keypair
    miner_hotkey: str

    @property
    def hotkey(self) -> str:
        return self.keypair.ss58_address

    def auth(self) -> str:
        ts = int(time.time())
        blob = f"{self.hotkey}:{self.miner_hotkey}:{ts}"
        return ValidatorAuthForMiner(validator_hotkey=self.hotkey, miner_hotkey=self.miner_hotkey, timestamp=ts,
                                     signature=sign_blob(self.keypair, blob)).model_dump_json()

    def offer(self) -> str:
        """A signed organic offer, serialised before the clock starts."""
        job_uuid = str(uuidlib.uuid4())
        payload = JobStartedReceiptPayload(job_uuid=job_uuid, miner_hotkey=self.miner_hotkey,
                                           validator_hotkey=self.hotkey, timestamp=datetime.now(UTC),
                                           executor_class=CLASS, is_organic=True, ttl=RESERVATION_TTL_S)
        return V0InitialJobRequest(
            job_uuid=job_uuid, executor_class=CLASS, docker_image=IMAGE, timeout_seconds=300,
            job_started_receipt_payload=payload,
            job_started_receipt_signature=sign_blob(self.keypair, receipt_blob(payload)),
            executor_timing=ExecutorTimingDetails(allowed_leeway=5, download_time_limit=10, execution_time_limit=20,
                                                  upload_time_limit=10, streaming_start_time_limit=0),
        ).model_dump_json()


@dataclass
class Socket:
    ws: aiohttp.ClientWebSocketResponse
    http: aiohttp.ClientSession

    async def until(self, *kinds: str) -> float:
        """Read frames until one whose message_type is in `kinds`; when it arrived (monotonic)."""
        while True:
            frame = await self.ws.receive(timeout=ANSWER_TIMEOUT_S)
            if frame.type is not aiohttp.WSMsgType.TEXT:
                raise ConnectionError(f"miner closed: {frame.type.name} {frame.extra!r}")
            at = time.monotonic()
            if any(f'"message_type":"{k}"' in frame.data for k in kinds):  # the miner writes compact JSON
                return at

    async def close(self) -> None:
        await self.ws.close()
        await self.http.close()


DEFLATE_WINDOW_BITS = 15  # permessage-deflate as the stock client (python `websockets`) offers it by default
DEFLATE = True  # --no-deflate turns it off


async def connect(base: str, validator: Validator, k: int) -> Socket:
    connector = aiohttp.TCPConnector(local_addr=(source_address(k), 0))
    http = aiohttp.ClientSession(connector=connector)
    ws = await http.ws_connect(f"{base.replace('http', 'ws', 1)}/v0.1/validator_interface/{validator.hotkey}",
                               max_msg_size=50 * 1024 * 1024, timeout=aiohttp.ClientWSTimeout(ws_close=5),
                               compress=DEFLATE_WINDOW_BITS if DEFLATE else 0)
    sock = Socket(ws, http)
    await ws.send_str(validator.auth())
    await sock.until("V0ExecutorManifestRequest")
    return sock


async def offers_case(socks: list[tuple[Validator, Socket]]) -> list[float]:
    """Every socket sends one offer at the same moment; seconds to each one's answer."""
    texts = [v.offer() for v, _ in socks]

    async def one(sock: Socket, text: str) -> float:
        t0 = time.monotonic()
        await sock.ws.send_str(text)
        return await sock.until("V0AcceptJobRequest", "V0DeclineJobRequest") - t0

    return sorted(await asyncio.gather(*(one(s, t) for (_, s), t in zip(socks, texts, strict=True))))


async def round_trip(sock: Socket) -> float:
    samples = []
    for _ in range(RTT_SAMPLES):
        t0 = time.monotonic()
        await sock.ws.send_str(V0MainHotkeyMessage().model_dump_json())
        samples.append(await sock.until("V0MainHotkeyMessage") - t0)
    return statistics.median(samples)


async def range_case(base: str, clients: int, seconds: float, burst: list[tuple[Validator, Socket]] | None,
                     first_address: int) -> tuple[float, int]:
    """Requests per second of `clients` range fetchers of the newest page; (rate, answers a validator would
    take for a transfer error: anything but 206, 416 and 404)."""
    stop = time.monotonic() + seconds
    done, bad = 0, 0

    async def fetcher(k: int) -> None:
        nonlocal done, bad
        connector = aiohttp.TCPConnector(local_addr=(source_address(first_address + k), 0), limit=1)
        checkpoint, page = 0, int(time.time() // PAGE_TIME_S)
        async with aiohttp.ClientSession(connector=connector) as http:
            while time.monotonic() < stop:
                if int(time.time() // PAGE_TIME_S) != page:
                    checkpoint, page = 0, int(time.time() // PAGE_TIME_S)
                headers = {"Range": f"bytes={checkpoint}-", "Accept-Encoding": ""}
                async with http.get(f"{base}/receipts/{page}.jsonl", headers=headers) as resp:
                    await resp.read()
                    done += 1
                    if resp.status == 206:  # Content-Range: bytes <a>-<b>/<total>
                        checkpoint = int(resp.headers["Content-Range"].rsplit("/", 1)[1])
                    elif resp.status not in (416, 404):  # nothing new; no receipt on a new page yet
                        bad += 1

    async def bursts() -> None:
        while burst and time.monotonic() < stop:
            await offers_case(burst)
            await asyncio.sleep(BURST_PAUSE_S)

    t0 = time.monotonic()
    await asyncio.gather(*(fetcher(k) for k in range(clients)), bursts())
    return done / (time.monotonic() - t0), bad


def p99(values: list[float]) -> float:
    return values[max(0, int(len(values) * 0.99) - 1)]


async def run(args: argparse.Namespace, tmp: Path, podman_url: str) -> None:
    wallets = tmp / "wallets"
    create_wallet(wallets, "miner", "default")
    miner_hotkey = load_hotkey(wallets, "miner", "default").hotkey
    validators = [Validator(Keypair.create_from_mnemonic(Keypair.generate_mnemonic()), miner_hotkey)
                  for _ in range(args.validators)]
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    sock_dir = Path(tempfile.mkdtemp(prefix="bench-hv-"))
    agent_sock = sock_dir / "agent.sock"
    agent_toml, miner_toml = tmp / "agent.toml", tmp / "miner.toml"
    agent_toml.write_text(f'socket_path = "{agent_sock}"\njobs_dir = "{tmp / "jobs"}"\npodman_url = "{podman_url}"\n'
                          'image_policy = "local_only"\nslots = 1\n')
    allow = ", ".join(f'"{v.hotkey}"' for v in validators)
    miner_toml.write_text(
        f'[miner]\nlisten_host = "127.0.0.1"\nlisten_port = {port}\nstate_dir = "{tmp / "state"}"\n'
        f'admin_socket = "{sock_dir / "admin.sock"}"\nmetrics_enabled = false\n'
        f'[wallet]\npath = "{wallets}"\nname = "miner"\nhotkey = "default"\n'
        f'[validators]\nallow = [{allow}]\n'
        f'[[executors]]\nname = "local"\nexecutor_class = "{CLASS}"\nmode = "local"\nsocket = "{agent_sock}"\n')
    agent_log, miner_log = tmp / "agent.log", tmp / "miner.log"
    procs: list[subprocess.Popen[bytes]] = []
    try:
        procs.append(spawn([sys.executable, "-m", "executor_agent", "serve", "--config", str(agent_toml)], agent_log))

        async def agent_up() -> bool:
            return agent_sock.exists()

        await wait_for(agent_up, "executor-agent serve", procs[0], agent_log)
        profile = ["-m", "cProfile", "-o", str(args.profile_miner)] if args.profile_miner else []
        procs.append(spawn([sys.executable, *profile, "-m", "miner_agent", "run", "--config", str(miner_toml)],
                           miner_log))
        await wait_for(lambda: port_open(port), "miner-agent run", procs[1], miner_log)
        await asyncio.sleep(1.0)  # the miner's link to the agent comes up just after its port
        agent_pid, miner_pid = procs[0].pid, procs[1].pid
        if args.miner_cpu is not None:  # the miner alone on one core, the client and the agent on the others
            others = set(range(os.cpu_count() or 1)) - {args.miner_cpu}
            for pid in (0, agent_pid):
                os.sched_setaffinity(pid, others)
            for task in os.listdir(f"/proc/{miner_pid}/task"):  # its threads too (page writer, pools)
                os.sched_setaffinity(int(task), {args.miner_cpu})
            print(f"affinity: miner on CPU {args.miner_cpu}, bench client and executor agent on "
                  f"{','.join(map(str, sorted(others)))}")
        print(f"idle: miner-agent VmRSS {proc_status(miner_pid)[0] / 1024:.1f} MiB, "
              f"executor-agent VmRSS {proc_status(agent_pid)[0] / 1024:.1f} MiB (goal < 60 MiB each)")

        socks = [(v, await connect(base, v, k)) for k, v in enumerate(validators)]
        rtt = await round_trip(socks[0][1])
        await offers_case(socks[:1])  # warm-up: the first offer pays for first-use imports and caches
        rounds = []
        for _ in range(args.rounds):
            cpu0, own0 = cpu_seconds(miner_pid), time.process_time()
            lat = await offers_case(socks)
            rounds.append((p99(lat), statistics.median(lat), (cpu_seconds(miner_pid) - cpu0) / len(lat),
                           (time.process_time() - own0) / len(lat)))
            await asyncio.sleep(ROUND_PAUSE_S)
        print("offers: p99 of each round " + " ".join(f"{r[0] * 1000:.0f}" for r in rounds) + " ms")
        q99, q50, cpu, own = sorted(rounds)[len(rounds) // 2]
        print(f"offers: {len(socks)} simultaneous offers to a one-slot miner, median of {len(rounds)} rounds; "
              f"websocket round trip {rtt * 1000:.2f} ms; answer p50 {q50 * 1000:.1f} ms ({q50 / rtt:.0f}x), "
              f"p99 {q99 * 1000:.1f} ms ({q99 / rtt:.0f}x); miner CPU {cpu * 1000:.2f} ms per offer "
              f"(x{len(socks)} = {cpu * len(socks) * 1000:.0f} ms), the bench client's {own * 1000:.2f} ms "
              f"(goal p99 < 50 ms)")

        if "range" in args.cases:
            await range_figures(args, base, miner_pid, socks)
        if "sockets" in args.cases:
            await sockets_figures(args, base, miner_pid, validators, socks)
        else:
            for _, s in socks:
                await s.close()
    finally:
        for proc in reversed(procs):
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()


async def range_figures(args: argparse.Namespace, base: str, miner_pid: int,
                        socks: list[tuple[Validator, Socket]]) -> None:
    cpu0, t0 = cpu_seconds(miner_pid), time.monotonic()
    alone, bad_alone = await range_case(base, args.range_clients, RANGE_SECONDS, None, args.sockets)
    cpu_alone = 100 * (cpu_seconds(miner_pid) - cpu0) / (time.monotonic() - t0)
    cpu0, t0 = cpu_seconds(miner_pid), time.monotonic()
    busy, bad_busy = await range_case(base, args.range_clients, RANGE_SECONDS, socks, args.sockets)
    cpu_busy = 100 * (cpu_seconds(miner_pid) - cpu0) / (time.monotonic() - t0)
    print(f"range: {args.range_clients} clients, Range: bytes=<checkpoint>- on the newest receipt page: alone "
          f"{alone:.0f} req/s (miner CPU {cpu_alone:.0f}%), during offer bursts {busy:.0f} req/s "
          f"({busy / alone:.2f}x, miner CPU {cpu_busy:.0f}%); transfer errors {bad_alone + bad_busy} "
          f"(goal > 2000 req/s during bursts)")


async def sockets_figures(args: argparse.Namespace, base: str, miner_pid: int, validators: list[Validator],
                          socks: list[tuple[Validator, Socket]]) -> None:
    rss_before = proc_status(miner_pid)[0]
    per = max(1, args.sockets // len(validators))
    extra = [await connect(base, validators[k % len(validators)], len(validators) + k)
             for k in range(args.sockets - len(socks))]
    held = len(socks) + len(extra)
    rss_held = proc_status(miner_pid)[0]
    for _, s in socks:
        await s.close()
    for s in extra:
        await s.close()
    await asyncio.sleep(SETTLE_S)
    rss_after = proc_status(miner_pid)[0]
    print(f"sockets: {held} authenticated sockets ({per} per validator): miner VmRSS before "
          f"{rss_before / 1024:.1f} MiB, with them {rss_held / 1024:.1f} MiB "
          f"({(rss_held - rss_before) / held:.1f} KiB each), after closing {rss_after / 1024:.1f} MiB "
          f"(goal < 150 MiB held, given back after)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--validators", type=int, default=100, help="allowlisted validators, one offer each")
    parser.add_argument("--rounds", type=int, default=5, help="bursts of offers in the offers case")
    parser.add_argument("--sockets", type=int, default=1000, help="authenticated sockets held in the sockets case")
    parser.add_argument("--range-clients", type=int, default=32, help="concurrent receipt-page fetchers")
    parser.add_argument("--no-deflate", action="store_true",
                        help="no permessage-deflate (the stock validator client negotiates it)")
    parser.add_argument("--cases", default="offers,range,sockets",
                        help="comma-separated: which of offers, range, sockets to run after idle (offers always "
                             "connects the validators; a quick profile: --cases offers)")
    parser.add_argument("--miner-cpu", type=int, default=None, metavar="N",
                        help="pin the miner (all its threads) to CPU N and this bench and the agent to the others, "
                             "so the client does not take the miner's core")
    parser.add_argument("--profile-miner", type=Path, default=None, metavar="FILE",
                        help="run the miner under cProfile (its loop thread) and write the stats to FILE on exit")
    args = parser.parse_args()
    args.cases = set(args.cases.split(","))
    global DEFLATE
    DEFLATE = not args.no_deflate
    build_image()
    with tempfile.TemporaryDirectory(prefix="bench-hv-") as tmp, podman_service(Path(tmp)) as podman_url:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(run(args, Path(tmp), podman_url))


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
