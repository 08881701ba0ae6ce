"""`miner-agent status`: the table keeps an error's first clause, and the whole sentence (what
to check) is printed under it for each executor that is not up."""

from __future__ import annotations

from miner_agent.commands.admin_cmds import _executor_table

CHANNEL_ERROR = ("ssh login to executor-agent@10.0.0.5:22 works but sshd refused the channel to "
                 "/run/executor-agent/agent.sock (open failed); check on the host: the sshd drop-in needs "
                 "AllowTcpForwarding local")


def _executor(name: str, link: str, last_error: str) -> dict[str, object]:
    return {"name": name, "executor_class": "always_on.test", "mode": "ssh", "link": link, "drained": False,
            "running_jobs": [], "slots": 1, "last_error": last_error}


def test_a_down_executor_gets_its_whole_error_under_the_table() -> None:
    out = _executor_table({"executors": [_executor("gpu-1", "down", CHANNEL_ERROR), _executor("gpu-2", "up", "")]})
    table, _, why = out.partition("\n\n")
    assert "refused the channel to /run/executor-agent/agent.sock (open failed)" in table
    assert "AllowTcpForwarding" not in table
    assert why == f"gpu-1 is down: {CHANNEL_ERROR}"


def test_a_short_error_stays_in_the_table_alone() -> None:
    out = _executor_table({"executors": [_executor("local", "down", "no executor agent listening on /x")]})
    assert "no executor agent listening on /x" in out and "\n\n" not in out
