"""An example executor manager: one fresh `executor-agent` process per job, on this host.

It is the shape of the stock docker manager (one executor started per job, killed after
it) without the container: `start_new_executor` writes a config for a new agent with
its own socket and job directory, starts it, and returns that socket as the endpoint.
Copy it as a starting point for managers that start cloud VMs or Slurm allocations:
only the four methods change.

    [executor_manager]
    class_path = "miner_agent.fleet.examples.subprocess_manager:SubprocessExecutorManager"
    [executor_manager.options]
    work_dir = "/var/lib/miner-agent/managed"            # one subdirectory per executor
    podman_url = "unix:///run/podman/podman.sock"
    manifest = { "always_on.test" = 2 }                   # executors it may run at once, per class
"""

from __future__ import annotations

import asyncio
import shutil
import sys
from pathlib import Path

from horde_protocol.enums import ExecutorClass
from miner_agent.fleet.manager import BaseExecutorManager, ExecutorUnavailable, ManagedExecutor
from miner_agent.miner_config import LocalExecutor

STOP_GRACE_S = 5.0  # SIGTERM, then SIGKILL


class SubprocessExecutorManager(BaseExecutorManager):
    def __init__(self, options: dict) -> None:
        super().__init__(options)
        self.work_dir = Path(options.get("work_dir", "/var/lib/miner-agent/managed"))
        self.podman_url = str(options.get("podman_url", "unix:///run/podman/podman.sock"))
        self.manifest = {ExecutorClass(k): int(v) for k, v in options.get("manifest", {}).items()}
        self.command = list(options.get("command", [sys.executable, "-m", "executor_agent", "serve"]))

    def get_manifest(self) -> dict[ExecutorClass, int]:
        return dict(self.manifest)

    async def start_new_executor(self, token: str, executor_class: ExecutorClass, timeout_s: float) -> ManagedExecutor:
        home = self.work_dir / token
        home.mkdir(parents=True, exist_ok=True)
        socket = home / "agent.sock"
        config = home / "executor-agent.toml"
        config.write_text(
            f'socket_path = "{socket}"\njobs_dir = "{home / "jobs"}"\npodman_url = "{self.podman_url}"\nslots = 1\n'
        )
        log = open(home / "agent.log", "ab")
        try:
            process = await asyncio.create_subprocess_exec(*self.command, "--config", str(config), stdout=log, stderr=log)
        except OSError as exc:
            raise ExecutorUnavailable(f"cannot run {self.command[0]}: {exc}") from None
        finally:
            log.close()
        return ManagedExecutor(
            endpoint=LocalExecutor(name=f"sub-{token}", executor_class=executor_class, socket=socket),
            handle=process,
            extra={"home": str(home), "pid": process.pid},
        )

    async def wait_for_executor(self, executor: ManagedExecutor, timeout_s: float) -> object | None:
        process: asyncio.subprocess.Process | None = executor.handle
        if process is None:
            return None
        try:
            return await asyncio.wait_for(process.wait(), timeout_s)
        except TimeoutError:
            return None

    async def kill_executor(self, executor: ManagedExecutor) -> None:
        process: asyncio.subprocess.Process | None = executor.handle
        if process is not None and process.returncode is None:
            process.terminate()
            if await self.wait_for_executor(executor, STOP_GRACE_S) is None:
                process.kill()
                await process.wait()
        elif process is None and "pid" in executor.extra:  # adopted after a miner restart
            import os
            import signal

            try:
                os.kill(int(executor.extra["pid"]), signal.SIGTERM)
            except ProcessLookupError:
                pass
        home = executor.extra.get("home")
        if home:
            shutil.rmtree(home, ignore_errors=True)
