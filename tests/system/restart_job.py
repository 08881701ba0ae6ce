"""Run inside the test machine with the installed venv: one job whose container is
restarted-around. A validator (the simulator) sends a job that sleeps; once its container
runs, `systemctl restart executor-agent`; the job must still finish with its output.

usage: /opt/miner-agent/venv/bin/python restart_job.py CONFIG VALIDATOR_WALLETS IMAGE
Prints one JSON object: what happened, for the test to assert on.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path

from horde_protocol.enums import EXECUTOR_CLASS_SPECS
from horde_protocol.messages import V0JobRequest
from miner_agent.keys import load_hotkey
from miner_agent.miner_config import load_config
from miner_agent.selftest.simulator import ValidatorSim, inline_zip

CONTAINER_APPEAR_TIMEOUT_S = 30.0
JOB_LABEL = "io.computehorde.job-uuid"


def sh(*args: str) -> str:
    done = subprocess.run(args, capture_output=True, text=True, check=False)
    return done.stdout.strip() if done.returncode == 0 else f"error rc={done.returncode}: {done.stderr.strip()[-300:]}"


async def main() -> None:
    config = load_config(Path(sys.argv[1]))
    image = sys.argv[3]
    miner = load_hotkey(config.wallet.path, config.wallet.name, config.wallet.hotkey)
    validator = load_hotkey(Path(sys.argv[2]), "validator", "default")
    sim = ValidatorSim(validator.keypair, miner.hotkey, f"http://127.0.0.1:{config.miner.listen_port}")
    executor_class = config.executors[0].executor_class
    initial = sim.initial_request(executor_class.value, image, volume=inline_zip({"in.txt": b"kept\n"}))
    request = V0JobRequest(
        job_uuid=initial.job_uuid, executor_class=executor_class.value, docker_image=image,
        docker_run_options_preset="nvidia_all" if EXECUTOR_CLASS_SPECS[executor_class].has_gpu else "none",
        docker_run_cmd=["sh", "-c", ("sleep 8; cat /volume/in.txt; echo survived; ls /dev | grep fakegpu || true; "
                                     "cat /proc/self/uid_map")],
    )
    job = asyncio.create_task(sim.run_job(initial, request))
    report: dict[str, object] = {"job_uuid": str(initial.job_uuid), "validator": sim.hotkey}
    deadline = time.monotonic() + CONTAINER_APPEAR_TIMEOUT_S
    container = ""
    while (not container or container.startswith("error")) and time.monotonic() < deadline and not job.done():
        container = sh("podman", "ps", "--filter", f"label={JOB_LABEL}={initial.job_uuid}",
                       "--filter", f"name=ch-{initial.job_uuid}-job", "--format", "{{.ID}}")
        await asyncio.sleep(0.2)
    report["container"] = container
    if container:
        conmon = sh("podman", "inspect", "--format", "{{.State.ConmonPid}}", container)
        report["conmon_cgroup"] = Path(f"/proc/{conmon}/cgroup").read_text() if conmon.isdigit() else ""
        report["agent_pid_before"] = sh("systemctl", "show", "-p", "MainPID", "--value", "executor-agent")
        t0 = time.monotonic()
        restart = subprocess.run(["systemctl", "restart", "executor-agent"], capture_output=True, text=True)
        report["restart_s"] = round(time.monotonic() - t0, 2)
        report["restart_rc"] = restart.returncode
        report["agent_pid_after"] = sh("systemctl", "show", "-p", "MainPID", "--value", "executor-agent")
        report["container_state_after_restart"] = sh("podman", "inspect", "--format", "{{.State.Status}}", container)
    received = await job
    report["types"] = [r.type for r in received]
    last = received[-1].message if received else None
    report["stdout"] = getattr(last, "docker_process_stdout", "") or ""
    report["last"] = last.model_dump_json() if last is not None else ""
    print(json.dumps(report))


if __name__ == "__main__":
    asyncio.run(main())
