"""`miner-agent demo-job`: one small job through a running miner, printed as it happens."""

from __future__ import annotations

import argparse
import time

from horde_protocol.enums import EXECUTOR_CLASS_SPECS
from horde_protocol.messages import V0JobFinishedRequest, V0JobRequest
from miner_agent.keys import load_hotkey
from miner_agent.miner_config import MinerConfig
from miner_agent.selftest.simulator import ValidatorSim, inline_zip


async def demo_job(config: MinerConfig, args: argparse.Namespace) -> int:
    miner = load_hotkey(config.wallet.path, config.wallet.name, config.wallet.hotkey)
    validator = load_hotkey(args.validator_wallet_path, args.validator_wallet, args.validator_hotkey)
    sim = ValidatorSim(validator.keypair, miner.hotkey, f"http://{args.host}:{config.miner.listen_port}")
    executor_class = config.executors[0].executor_class
    initial = sim.initial_request(
        executor_class.value, args.image, volume=inline_zip({"greeting.txt": b"hello from the volume\n"})
    )
    request = V0JobRequest(
        job_uuid=initial.job_uuid,
        executor_class=executor_class.value,
        docker_image=args.image,
        docker_run_options_preset="nvidia_all" if EXECUTOR_CLASS_SPECS[executor_class].has_gpu else "none",
        docker_run_cmd=["sh", "-c", "cat /volume/greeting.txt; echo job ran on $(hostname)"],
    )
    t0 = time.monotonic()
    print(f"validator {sim.hotkey} -> miner {miner.hotkey} at {sim.base_url}, job {initial.job_uuid}")
    received = await sim.run_job(initial, request)
    for item in received:
        print(f"  +{item.at - t0:6.3f}s  {item.type}")
    last = received[-1].message if received else None
    if isinstance(last, V0JobFinishedRequest):
        print("stdout:\n" + "\n".join("  | " + line for line in last.docker_process_stdout.splitlines()))
        print("job finished: OK")
        return 0
    print(f"job did not finish: {last.model_dump_json() if last is not None else 'no answer'}")
    return 1
