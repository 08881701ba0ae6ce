"""Who may open the executor agent's socket (issue 10, item 7): its owner and the members of
`socket_group`, nobody else; checked with real sockets and a real unprivileged user. The
packaged groups themselves (executor-agent-link, executor-agent-podman) are proven under
systemd in tests/system/test_packages.py."""

from __future__ import annotations

import asyncio
import grp
import os
import stat
from pathlib import Path

import pytest

from executor_agent.daemon.server import SOCKET_MODE, AgentStartError, ExecutorAgent
from executor_agent.executor_config import LINK_GROUP, AgentConfig

pytestmark = pytest.mark.podman

NOBODY_GROUP = "nogroup"  # Debian's group of the user nobody
PROBE_TIMEOUT_S = 20.0
# Debian's interpreter (the pyenv one lives under /root, which nobody cannot enter). Connects,
# prints the first line the agent sends (its Hello) or the error.
PROBE = ("import socket, sys\n"
         "s = socket.socket(socket.AF_UNIX)\n"
         "try:\n"
         "    s.connect(sys.argv[1]); print(s.makefile().readline().strip())\n"
         "except OSError as exc:\n"
         "    print(type(exc).__name__)\n")


async def connect_as_nobody(path: Path) -> str:
    proc = await asyncio.create_subprocess_exec("runuser", "-u", "nobody", "--", "/usr/bin/python3", "-c", PROBE,
                                                str(path), stdout=asyncio.subprocess.PIPE)
    out, _ = await asyncio.wait_for(proc.communicate(), PROBE_TIMEOUT_S)
    return out.decode().strip()


async def started(config: AgentConfig, **updates: object) -> ExecutorAgent:
    agent = ExecutorAgent(config.model_copy(update=updates))
    await agent.start()
    config.socket_path.parent.chmod(0o711)  # as the unit's RuntimeDirectoryMode: passable, not listable
    return agent


async def test_members_of_socket_group_connect_and_others_are_refused(agent_config: AgentConfig) -> None:
    agent = await started(agent_config, socket_group=NOBODY_GROUP)
    try:
        st = agent_config.socket_path.stat()
        assert st.st_gid == grp.getgrnam(NOBODY_GROUP).gr_gid
        assert stat.S_IMODE(st.st_mode) == SOCKET_MODE == 0o660
        assert '"link":"hello"' in (await connect_as_nobody(agent_config.socket_path)).replace(" ", "")
    finally:
        await agent.stop()
    agent = await started(agent_config, socket_group="")  # the agent's own group (root's here)
    try:
        assert agent_config.socket_path.stat().st_gid == os.getegid()
        assert await connect_as_nobody(agent_config.socket_path) == "PermissionError"
    finally:
        await agent.stop()


async def test_unset_socket_group_is_the_packaged_group_when_it_exists(agent_config: AgentConfig) -> None:
    try:
        expected = grp.getgrnam(LINK_GROUP).gr_gid
    except KeyError:
        expected = os.getegid()  # not a packaged host: the agent's own group
    agent = await started(agent_config)
    try:
        assert agent_config.socket_group is None and agent_config.socket_path.stat().st_gid == expected
    finally:
        await agent.stop()


async def test_a_socket_group_that_does_not_exist_stops_the_start(agent_config: AgentConfig) -> None:
    agent = ExecutorAgent(agent_config.model_copy(update={"socket_group": "ch-test-no-such-group"}))
    with pytest.raises(AgentStartError, match="socket_group 'ch-test-no-such-group': no such group"):
        await agent.start()
    assert not agent_config.socket_path.exists()
    await agent.podman.close()
