"""Processes killed mid-job (SIGKILL: no cleanup, no goodbye) with the fleet behind real sshd
in the netns lab, and what the validator sees afterwards.

* the executor agent dies while its container runs and is started again: the new agent
  finds the container by its label, reattaches it and the result reaches the validator;
* the miner dies while a job runs and is started again: the validator, reconnecting and
  authenticating again, gets the messages it is owed (kept in SQLite; the link re-attached
  from the last seq the miner stored); when the executor host is gone too, it gets an
  honest V0HordeFailedRequest executor_disconnected instead.

The miner of the last two runs as a subprocess (`miner-agent run`) under `nsenter
--net=<ctl>`; the validator simulator runs on the test's thread, switched into ctl, so it
reaches the miner on ctl's own loopback.
"""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest

from miner_agent.fleet.connection import LinkState
from miner_agent.miner_config import MinerConfig
from miner_agent.selftest.simulator import ValidatorSim
from tests.fixtures.miner import sim_for
from tests.fixtures.netns import NetnsLab
from tests.fixtures.podman import REPO_ROOT
from tests.integration.fleet_helpers import (
    CLASS,
    LINK_UP_TIMEOUT_S,
    PROGRESS,
    _poll,
    assert_once_in_order,
    begin,
    container_running,
    finish,
    job,
    link_state,
    manifest,
    ssh_entries,
    types,
)

pytestmark = pytest.mark.podman

MINER_AGENT = REPO_ROOT / ".venv" / "bin" / "miner-agent"
MINER_START_TIMEOUT_S = 20.0
LOST_AFTER_S = 5.0
OWED_TIMEOUT_S = 20.0


async def test_agent_sigkill_mid_job_and_restart_delivers_the_result(
        in_ctl, executor_hosts, ssh_client_key, miner_config, start_miner, busybox_image, validator_key) -> None:
    config = miner_config.model_copy(update={"executors": ssh_entries(executor_hosts, ssh_client_key)})
    agent = await start_miner(config)
    for name in executor_hosts:
        assert await agent.ctx.fleet.links[name].wait_up(LINK_UP_TIMEOUT_S), agent.ctx.fleet.links[name].last_error
    sim = sim_for(agent, validator_key)
    initial, request = job(sim, busybox_image)
    uuid = str(initial.job_uuid)
    async with await begin(sim, initial, request) as session:
        host = executor_hosts[agent.ctx.service.jobs[uuid].executor_name]
        await container_running(host, uuid)
        host.kill_agent()
        await link_state(agent, host.name, LinkState.DOWN, LINK_UP_TIMEOUT_S)
        host.start_agent()
        finished = await finish(session)
    assert finished.message_type == "V0JobFinishedRequest", finished
    assert finished.docker_process_stdout == "ok\n"
    assert_once_in_order(types(session))
    assert f"job resumed job={uuid}" in host.agent_log.read_text()  # reattached, not re-run


class MinerProcess:
    """`miner-agent run` in the ctl namespace, on a fixed port of ctl's loopback."""

    def __init__(self, lab: NetnsLab, config: MinerConfig, workdir: Path) -> None:
        self.lab, self.config = lab, config
        self.config_path = workdir / "miner.toml"
        self.log_path = workdir / "miner.log"
        self.proc: subprocess.Popen[bytes] | None = None
        _write_toml(self.config_path, config)

    @property
    def db_path(self) -> Path:
        return self.config.db_path

    def start(self) -> None:
        log = open(self.log_path, "ab")
        self.proc = self.lab.spawn("ctl", [str(MINER_AGENT), "run", "--config", str(self.config_path)], log)
        log.close()

    async def wait_listening(self) -> None:
        port = self.config.miner.listen_port

        def listening() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                pytest.fail(f"miner-agent exited rc={self.proc.returncode}: {self.log_path.read_text()[-2000:]}")
            with socket.socket() as s:  # ctl's loopback: this thread is in ctl
                return s.connect_ex(("127.0.0.1", port)) == 0

        await _poll(listening, MINER_START_TIMEOUT_S, f"miner-agent not listening: {self.log_path}")

    def kill(self) -> None:
        assert self.proc is not None and self.proc.poll() is None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def messages(self, job_uuid: str) -> list[tuple[str, bool]]:
        """(message_type, delivered) of what the miner owes/owed the validator, from its SQLite."""
        with sqlite3.connect(f"file:{self.db_path}?mode=ro", uri=True) as db:
            rows = db.execute("SELECT message_json, delivered FROM job_messages WHERE job_uuid=? ORDER BY n",
                              (job_uuid,)).fetchall()
        return [(json.loads(text)["message_type"], bool(delivered)) for text, delivered in rows]


def _write_toml(path: Path, config: MinerConfig) -> None:
    q = json.dumps  # a JSON string is a valid TOML basic string
    m, w = config.miner, config.wallet
    lines = [
        "[miner]", f"listen_host = {q(m.listen_host)}", f"listen_port = {m.listen_port}",
        f"state_dir = {q(str(m.state_dir))}", f"admin_socket = {q(str(config.admin_socket))}",
        "metrics_enabled = false", f"executor_lost_after_s = {m.executor_lost_after_s}",
        "[wallet]", f"path = {q(str(w.path))}", f"name = {q(w.name)}", f"hotkey = {q(w.hotkey)}",
        "[validators]", f"allow = {json.dumps(list(config.validators.allow))}",
    ]
    for e in config.executors:
        lines += ["[[executors]]", f"name = {q(e.name)}", f"executor_class = {q(e.executor_class.value)}",
                  'mode = "ssh"', f"host = {q(e.host)}", f"port = {e.port}", f"user = {q(e.user)}",
                  f"key_path = {q(str(e.key_path))}", f"host_key = {q(e.host_key)}", f"socket = {q(str(e.socket))}"]
    path.write_text("\n".join(lines) + "\n")


def _free_port() -> int:
    with socket.socket() as s:  # on ctl's loopback: this thread is in ctl
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def miner_process(in_ctl, executor_hosts, ssh_client_key, miner_config, tmp_path):  # type: ignore[no-untyped-def]
    """A miner-agent process (not started) for ex1 only, so the job's host is known."""
    config = miner_config.model_copy(update={
        "executors": [executor_hosts["ex1"].entry(ssh_client_key, CLASS)],
        "miner": miner_config.miner.model_copy(update={"listen_port": _free_port(),
                                                       "executor_lost_after_s": LOST_AFTER_S}),
    })
    miner = MinerProcess(in_ctl, config, tmp_path)
    yield miner
    miner.stop()


async def _sim(miner: MinerProcess, validator_key) -> ValidatorSim:  # type: ignore[no-untyped-def]
    from miner_agent.keys import load_hotkey

    w = miner.config.wallet
    hotkey = load_hotkey(w.path, w.name, w.hotkey).hotkey
    return ValidatorSim(validator_key, hotkey, f"http://127.0.0.1:{miner.config.miner.listen_port}")


async def _started_with_job(miner: MinerProcess, executor_hosts, validator_key, busybox_image):  # type: ignore[no-untyped-def]
    """Start the miner, wait for ex1's link (manifest), begin a job and wait for its container."""
    miner.start()
    await miner.wait_listening()
    sim = await _sim(miner, validator_key)
    deadline = time.monotonic() + LINK_UP_TIMEOUT_S
    while await manifest(sim) != {CLASS: 1}:
        assert time.monotonic() < deadline, miner.log_path.read_text()[-2000:]
        await asyncio.sleep(0.2)
    initial, request = job(sim, busybox_image)
    session = await begin(sim, initial, request)
    await container_running(executor_hosts["ex1"], str(initial.job_uuid))
    return sim, session, str(initial.job_uuid)


async def test_miner_sigkill_mid_job_and_restart_validator_gets_the_result(
        miner_process, executor_hosts, busybox_image, validator_key) -> None:
    miner = miner_process
    sim, first, uuid = await _started_with_job(miner, executor_hosts, validator_key, busybox_image)
    miner.kill()
    await first.close()
    miner.start()
    await miner.wait_listening()

    def owed() -> bool:  # the restarted miner re-attached and stored the result for the validator
        return ("V0JobFinishedRequest", False) in miner.messages(uuid)

    await _poll(owed, OWED_TIMEOUT_S, f"the restarted miner never got the result: {miner.log_path}")
    async with await sim.connect() as second:  # a new socket, a new auth, as a validator would
        finished = await finish(second)
    assert finished.message_type == "V0JobFinishedRequest", finished
    assert finished.docker_process_stdout == "ok\n"
    assert types(first) == PROGRESS[:3]
    assert_once_in_order(types(first, second))
    assert all(delivered for _, delivered in miner.messages(uuid))


async def test_miner_sigkill_and_host_gone_is_an_honest_horde_failure(
        miner_process, netns_lab, executor_hosts, busybox_image, validator_key) -> None:
    miner = miner_process
    sim, first, uuid = await _started_with_job(miner, executor_hosts, validator_key, busybox_image)
    miner.kill()
    await first.close()
    netns_lab.cut("ex1")  # and the executor host is gone while the miner is down
    miner.start()
    started = time.monotonic()
    await miner.wait_listening()
    async with await sim.connect() as second:
        failed = await finish(second, timeout_s=LOST_AFTER_S + 10)
    assert failed.message_type == "V0HordeFailedRequest", failed
    assert (failed.reason, failed.reported_by) == ("executor_disconnected", "miner")
    assert time.monotonic() - started < LOST_AFTER_S + 5
    assert_once_in_order(types(first, second), last="V0HordeFailedRequest", progress=PROGRESS[:3])
