"""The SSH setup `executor-agent authorize-miner` writes, under Debian's real sshd on loopback,
and the miner's link reporting each way it can fail in words that say what to check.

The sshd reads the very files authorize() wrote (the authorized_keys line and the Match
drop-in, for root here: the test has no executor-agent account). The "agent" is a unix
socket that sends a hello frame, which is all the link needs to come up.
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncssh
import pytest

from executor_agent import authorize as A
from horde_protocol import link_frames as L
from miner_agent.fleet import connection as link_module
from miner_agent.fleet.connection import ExecutorLink, LinkState
from miner_agent.miner_config import SshExecutor

SSHD = "/usr/sbin/sshd"
LOOPBACK = "127.0.0.1"
START_TIMEOUT_S = 10.0
ERROR_TIMEOUT_S = 15.0
SHORT_CONNECT_TIMEOUT_S = 1.0  # for the host that never answers
OLD_RECIPE = """\
Match User root
    AllowTcpForwarding no
    AllowStreamLocalForwarding local
    X11Forwarding no
    AllowAgentForwarding no
    PermitTTY no
"""  # what docs/operator-guide.md said before authorize-miner: refuses the socket channel


def _keygen(path: Path) -> str:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", path.name, "-f", str(path)],
                   check=True, capture_output=True, timeout=START_TIMEOUT_S)
    return path.with_suffix(".pub").read_text().strip()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


@dataclass
class Host:
    dir: Path
    port: int
    host_key: str
    client_key: Path
    socket: Path
    dropin: Path
    sshd: subprocess.Popen[bytes] | None = None

    def entry(self, **changes: object) -> SshExecutor:
        fields: dict[str, object] = {
            "name": "ex1", "executor_class": "always_on.test", "mode": "ssh", "host": LOOPBACK, "port": self.port,
            "user": "root", "key_path": self.client_key, "host_key": self.host_key, "socket": self.socket}
        return SshExecutor.model_validate(fields | changes)

    def start_sshd(self) -> None:
        config = self.dir / "sshd_config"
        config.write_text(
            f"Port {self.port}\nListenAddress {LOOPBACK}\nHostKey {self.dir / 'host_ed25519'}\n"
            f"PidFile {self.dir / 'sshd.pid'}\nAuthorizedKeysFile {self.dir / 'authorized_keys'}\n"
            "PasswordAuthentication no\nKbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\n"
            f"UsePAM no\nStrictModes no\nLogLevel VERBOSE\nInclude {self.dropin}\n")
        Path("/run/sshd").mkdir(exist_ok=True)
        with open(self.dir / "sshd.log", "ab") as log:  # the child keeps its own copy of the descriptor
            self.sshd = subprocess.Popen([SSHD, "-D", "-e", "-f", str(config)], stderr=log)
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                socket.create_connection((LOOPBACK, self.port), timeout=1).close()
                return
            except OSError:
                if self.sshd.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError((self.dir / "sshd.log").read_text()[-2000:]) from None
                time.sleep(0.05)

    def stop_sshd(self) -> None:
        if self.sshd is not None:
            self.sshd.terminate()
            self.sshd.wait(START_TIMEOUT_S)
            self.sshd = None


@pytest.fixture
def host() -> Iterator[Host]:
    """sshd on 127.0.0.1:<free port> with authorize-miner's files for a fresh client key."""
    base = Path(tempfile.mkdtemp(prefix="ch-ssh15-"))  # short: unix socket paths are limited to 107 bytes
    host_key = " ".join(_keygen(base / "host_ed25519").split()[:2])
    client_pub = _keygen(base / "client_ed25519")
    h = Host(base, _free_port(), host_key, base / "client_ed25519", base / "agent.sock", base / "executor-agent.conf")
    A.authorize(A.parse_public_key(client_pub), A.Target(
        user="root", socket=h.socket, dropin=h.dropin, host_key=base / "host_ed25519.pub",
        authorized_keys=base / "authorized_keys", sshd_config=None, reload=False),
        run=lambda argv: subprocess.CompletedProcess(argv, 0, "", ""))  # sshd -t runs at start_sshd
    h.start_sshd()
    try:
        yield h
    finally:
        h.stop_sshd()
        subprocess.run(["rm", "-rf", str(base)], check=False)


@pytest.fixture
async def agent_socket(host: Host) -> AsyncIterator[Path]:
    """A stand-in agent: says hello, then keeps the link open."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(L.encode(L.Hello(agent_version="test", slots=1)))
        await writer.drain()
        await reader.read()
        writer.close()

    server = await asyncio.start_unix_server(serve, path=str(host.socket))
    try:
        yield host.socket
    finally:
        server.close()


class NoEvents:
    async def on_event(self, executor_name: str, event: L.Event) -> None:
        raise AssertionError("no jobs in these tests")

    async def on_job_error(self, executor_name: str, job_uuid: str, details: str) -> None:
        raise AssertionError("no jobs in these tests")


async def _first_error(entry: SshExecutor) -> str:
    link = ExecutorLink(entry, NoEvents())
    link.start()
    try:
        deadline = time.monotonic() + ERROR_TIMEOUT_S
        while not link.last_error and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert link.state is not LinkState.UP
        return link.last_error
    finally:
        await link.stop()


async def test_the_link_comes_up_through_the_written_setup(host: Host, agent_socket: Path) -> None:
    link = ExecutorLink(host.entry(), NoEvents())
    link.start()
    try:
        assert await link.wait_up(START_TIMEOUT_S), link.last_error
        assert link.hello is not None and link.hello.agent_version == "test"
    finally:
        await link.stop()


async def test_the_setup_allows_nothing_but_the_agent_socket(host: Host, agent_socket: Path) -> None:
    """No TCP channel (not even to sshd itself), no other socket, no command, no remote forward."""
    async with asyncssh.connect(LOOPBACK, port=host.port, username="root", client_keys=[str(host.client_key)],
                                known_hosts=None) as conn:
        reader, writer = await conn.open_unix_connection(str(agent_socket))
        assert (await reader.readline()).startswith(b'{"link"')
        writer.close()
        with pytest.raises(asyncssh.ChannelOpenError):
            await conn.open_connection(LOOPBACK, host.port)
        with pytest.raises(asyncssh.ChannelOpenError):
            await conn.open_unix_connection("/run/podman/podman.sock")
        with pytest.raises(asyncssh.ChannelListenError):
            await conn.forward_remote_port(LOOPBACK, 0, LOOPBACK, 9)
        with pytest.raises(asyncssh.ChannelListenError):
            await conn.forward_remote_path(str(host.dir / "remote.sock"), str(host.dir / "local.sock"))
        result = await conn.run("id", check=False, timeout=START_TIMEOUT_S)
        assert result.exit_status != 0 and "uid=" not in str(result.stdout)


async def test_the_old_recipe_is_refused_and_the_error_names_the_settings(host: Host, agent_socket: Path) -> None:
    """The issue's setup: login works, the channel is refused; the error says what to check."""
    host.stop_sshd()
    host.dropin.write_text(OLD_RECIPE)
    host.start_sshd()
    error = await _first_error(host.entry())
    assert "login to root@127.0.0.1" in error and "refused the channel" in error, error
    assert "AllowTcpForwarding local" in error and "permitopen" in error and str(agent_socket) in error, error
    assert "must exist" in error, error


async def test_a_socket_path_the_host_does_not_allow_is_reported_as_a_refused_channel(host: Host) -> None:
    error = await _first_error(host.entry(socket=host.dir / "elsewhere.sock"))
    assert "refused the channel to " + str(host.dir / "elsewhere.sock") in error, error


async def test_a_changed_host_key_gets_its_own_sentence(host: Host, agent_socket: Path) -> None:
    other = " ".join(_keygen(host.dir / "other_host").split()[:2])
    error = await _first_error(host.entry(host_key=other))
    assert error.startswith("host key of 127.0.0.1 does not match the pinned host_key of executor ex1"), error


async def test_a_refused_key_gets_its_own_sentence(host: Host, agent_socket: Path) -> None:
    _keygen(host.dir / "stranger")
    error = await _first_error(host.entry(key_path=host.dir / "stranger"))
    assert error.startswith(f"ssh login refused for root@127.0.0.1:{host.port}"), error
    assert "authorize-miner" in error, error


async def test_a_port_nobody_listens_on_gets_its_own_sentence(host: Host) -> None:
    error = await _first_error(host.entry(port=_free_port()))
    assert error.startswith("nothing accepts connections at 127.0.0.1:"), error


async def test_a_host_that_never_answers_is_reported_unreachable(host: Host, monkeypatch: pytest.MonkeyPatch) -> None:
    """A listener that never speaks SSH stands in for a dead host (no packet leaves loopback)."""
    monkeypatch.setattr(link_module, "CONNECT_TIMEOUT_S", SHORT_CONNECT_TIMEOUT_S)
    with socket.socket() as silent:
        silent.bind((LOOPBACK, 0))
        silent.listen()
        error = await _first_error(host.entry(port=silent.getsockname()[1]))
    assert error.startswith("executor host 127.0.0.1:") and "unreachable" in error, error
