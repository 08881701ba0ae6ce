"""`miner-agent self-test`: act as a validator against the running miner and report.

The key comes from the miner's admin socket (a one-time validator hotkey the public port
accepts for ten minutes), so no real validator's key is needed and nobody without
access to the socket can use it. Every executor class the manifest advertises gets one
real job; the checks are the ones a stock validator applies: manifest first, progress
order and budgets, all three receipts published with valid signatures, main hotkey.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import aiohttp
from bittensor_wallet import Keypair

from horde_protocol.enums import EXECUTOR_CLASS_SPECS, ExecutorClass
from horde_protocol.messages import (
    ExecutorTimingDetails,
    V0ExecutorManifestRequest,
    V0JobFinishedRequest,
    V0JobRequest,
    V0MainHotkeyMessage,
)
from horde_protocol.receipts import Receipt
from miner_agent.admin_client import call
from miner_agent.miner_config import MinerConfig
from miner_agent.receipts.receipt_store import PAGE_TIME_S
from miner_agent.selftest.checks import progress_problems, receipt_problems
from miner_agent.selftest.simulator import ValidatorSim

MARKER = "miner-agent self-test ok"
SELFTEST_TIMING = ExecutorTimingDetails(
    allowed_leeway=5, download_time_limit=30, execution_time_limit=60, upload_time_limit=30,
    streaming_start_time_limit=0,
)


@dataclass
class Check:
    name: str
    ok: bool
    took_s: float
    detail: str = ""


class SelfTest:
    def __init__(self, config: MinerConfig, args: argparse.Namespace) -> None:
        self.config, self.args = config, args
        self.checks: list[Check] = []

    async def step(self, name: str, body: Callable[[], Awaitable[str | list[str] | None]]) -> bool:
        """Run one check, print its line as soon as it is known, keep it for the table."""
        print(f"  {name} ...", end="", flush=True)
        t0 = time.monotonic()
        try:
            result = await body()
            problems = result if isinstance(result, list) else []
            detail = "; ".join(problems) if problems else (result if isinstance(result, str) else "")
            ok = not problems
        except Exception as exc:  # a check that raises is a failed check with its reason
            ok, detail = False, f"{type(exc).__name__}: {exc}"
        took = time.monotonic() - t0
        self.checks.append(Check(name, ok, took, detail))
        print(f" {'ok' if ok else 'FAIL'} ({took:.2f} s){': ' + detail if detail else ''}")
        return ok

    async def run(self) -> int:
        _, key = await call(self.config.admin_socket, "POST", "/selftest/key")
        if not self.args.image:
            if not key.get("preload_images"):
                print("miner-agent: no job image to test with: pass --image (an image present on the executors)")
                return 2
            self.args.image = key["preload_images"][0]
        keypair = Keypair.create_from_mnemonic(key["mnemonic"])
        host = self.args.host
        sim = ValidatorSim(keypair, key["miner_hotkey"], f"http://{host}:{key['port']}")
        print(f"self-test of miner {key['miner_hotkey']} at {sim.base_url} as validator {keypair.ss58_address}")
        try:
            manifest: dict[str, int] = {}

            async def handshake() -> str:
                async with await sim.connect() as session:
                    first = await session.recv(10)
                    if not isinstance(first.message, V0ExecutorManifestRequest):
                        raise AssertionError(f"first frame was {first.type}, not the manifest")
                    manifest.update({str(k): v for k, v in first.message.manifest.items() if v > 0})
                    await session.send(V0MainHotkeyMessage())
                    answer = await session.recv_until(V0MainHotkeyMessage, timeout_s=10)
                    if not answer.message.main_hotkey:
                        raise AssertionError("no main hotkey in the answer")
                if not manifest:
                    return ["manifest advertises no executor: check `miner-agent status`"]
                return f"manifest {manifest}"

            await self.step("auth, manifest, main hotkey", handshake)
            await self.step("/version", lambda: self._version(sim.base_url))
            for executor_class in sorted(manifest):
                await self._job(sim, executor_class)
        finally:
            await call(self.config.admin_socket, "DELETE", f"/selftest/key/{keypair.ss58_address}")
        self._table()
        return 0 if self.checks and all(c.ok for c in self.checks) else 1

    async def _version(self, base_url: str) -> str:
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{base_url}/version", timeout=aiohttp.ClientTimeout(total=5)) as resp:
                body = await resp.json()
                return f"miner_version {body['miner_version']}"

    async def _job(self, sim: ValidatorSim, executor_class: str) -> None:
        has_gpu = EXECUTOR_CLASS_SPECS[ExecutorClass(executor_class)].has_gpu
        initial = sim.initial_request(executor_class, self.args.image, timing=SELFTEST_TIMING)
        request = V0JobRequest(
            job_uuid=initial.job_uuid, executor_class=executor_class, docker_image=self.args.image,
            docker_run_options_preset="nvidia_all" if has_gpu else "none",
            docker_run_cmd=["sh", "-c", f"echo {MARKER}"],
        )
        received: list = []

        async def job() -> list[str]:
            sent_at = time.monotonic()
            received.extend(await sim.run_job(initial, request, readiness_timeout_s=60))
            problems = progress_problems(received, sent_at, executor_class, SELFTEST_TIMING)
            last = received[-1].message if received else None
            if last is not None and isinstance(received[-1].message, V0JobFinishedRequest) and MARKER not in last.docker_process_stdout:
                problems.append(f"stdout was {last.docker_process_stdout[:200]!r}")
            return problems

        if not await self.step(f"job on {executor_class} ({self.args.image})", job):
            return

        async def receipts() -> list[str]:
            await asyncio.sleep(0.2)
            return receipt_problems(await self._receipts(sim.base_url), str(initial.job_uuid), sim.hotkey, sim.miner_hotkey)

        await self.step(f"receipts of the {executor_class} job", receipts)

    async def _receipts(self, base_url: str) -> list[Receipt]:
        page = int(time.time() // PAGE_TIME_S)
        out: list[Receipt] = []
        async with aiohttp.ClientSession() as http:
            for p in (page - 1, page):
                async with http.get(f"{base_url}/receipts/{p}.jsonl", allow_redirects=False) as resp:
                    if resp.status == 200:
                        out += [Receipt.model_validate_json(line) for line in (await resp.text()).splitlines()]
        return out

    def _table(self) -> None:
        width = max(len(c.name) for c in self.checks) if self.checks else 10
        print()
        print(f"{'CHECK'.ljust(width)}  RESULT  TIME")
        for c in self.checks:
            print(f"{c.name.ljust(width)}  {'pass' if c.ok else 'FAIL':6}  {c.took_s:6.2f} s  {c.detail if not c.ok else ''}".rstrip())
        failed = sum(not c.ok for c in self.checks)
        print(f"\nself-test: {len(self.checks) - failed} checks passed, {failed} failed")


async def self_test(config: MinerConfig, args: argparse.Namespace) -> int:
    return await SelfTest(config, args).run()
