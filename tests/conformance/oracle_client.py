"""Runs in .venv-oracle: compute-horde 0.0.27's own OrganicMinerClient against our miner.

Reads one JSON object on stdin's first line ({"host", "port", "miner_hotkey", "validator_uri",
"job_uuid", "executor_class"}), connects and prints `MANIFEST <json>`; then waits for a line
`offer` (the test drops the socket from the miner side before sending it, so the client's own
transport must reconnect and re-authenticate with a fresh greeting), sends a signed
V0InitialJobRequest and prints `ANSWER <message_type> <reason>`.
"""

import asyncio
import json
import sys

import django
from django.conf import settings

settings.configure(INSTALLED_APPS=["compute_horde.receipts"], DATABASES={})  # its client imports Django models
django.setup()

import bittensor  # noqa: E402
from compute_horde.miner_client.organic import MinerRejectedJob, OrganicJobDetails, OrganicMinerClient  # noqa: E402
from compute_horde_core.executor_class import ExecutorClass  # noqa: E402


def say(*parts: str) -> None:
    print(*parts, flush=True)


async def main() -> None:
    cfg = json.loads(sys.stdin.readline())
    keypair = bittensor.Keypair.create_from_uri(cfg["validator_uri"])
    client = OrganicMinerClient(cfg["miner_hotkey"], cfg["host"], cfg["port"], cfg["job_uuid"], keypair)
    await client.connect()  # also starts the client's own reader task
    manifest = await asyncio.wait_for(client.miner_manifest, 10)
    say("MANIFEST", json.dumps(manifest, sort_keys=True, default=str))
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    executor_class = ExecutorClass(cfg["executor_class"])
    details = OrganicJobDetails(job_uuid=cfg["job_uuid"], executor_class=executor_class, docker_image="img:1")
    payload, signature = client.generate_job_started_receipt_message(executor_class, 30)
    await client.send_initial_job_request(details, payload, signature)
    try:
        accepted = await asyncio.wait_for(client.job_accepted_future, 10)
        say("ANSWER", accepted.message_type, "-")
    except MinerRejectedJob as exc:
        say("ANSWER", exc.msg.message_type, str(exc.msg.reason.value if hasattr(exc.msg.reason, "value") else exc.msg.reason))
    await client.close()


asyncio.run(main())
