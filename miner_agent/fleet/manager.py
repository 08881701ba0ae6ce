"""Executor-manager plugins: executors started on demand, one per job, by operator code.

This is the stock miner's `BaseExecutorManager` contract (behaviour.md §1.2) carried
over so an operator who wrote a custom manager can port it method for method:

    stock (v1, sync or async)                      here (async)
    start_new_executor(token, executor_class, t)   start_new_executor(token, executor_class, timeout_s) -> ManagedExecutor
    kill_executor(executor)                        kill_executor(executor)
    wait_for_executor(executor, timeout)           wait_for_executor(executor, timeout_s) -> exit status or None
    get_manifest()                                 get_manifest() -> {executor_class: count}
    get_executor_public_address(executor)          get_executor_public_address(executor) -> str | None

One difference is deliberate: a stock executor dials back to the miner with the token;
ours is dialled. `start_new_executor` therefore returns, in `ManagedExecutor.endpoint`,
how to reach the executor agent it started: its unix socket on this host
(`LocalExecutor`) or an SSH host with a pinned key (`SshExecutor`). The miner links to
it exactly like a configured `[[executors]]` entry, runs the one job, then calls
`kill_executor`.

Configured as:

    [executor_manager]
    class_path = "my_package.managers:MyManager"    # or my_package.managers.MyManager
    [executor_manager.options]                       # passed to the constructor as a dict
    anything = "you need"
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

from agent_common.plugin_loader import PluginError, load_plugin
from horde_protocol.enums import ExecutorClass
from miner_agent.miner_config import LocalExecutor, SshExecutor


class ExecutorUnavailable(Exception):
    """Raise from start_new_executor when an executor cannot be started (the job is horde-failed
    with `executor_spinup_failed`, as the stock miner does)."""


class ManagerLoadError(Exception):
    """The configured class_path cannot be imported or is not a BaseExecutorManager."""


@dataclass
class ManagedExecutor:
    """An executor a manager started: how to reach its agent, plus the manager's own data."""

    endpoint: LocalExecutor | SshExecutor
    handle: Any = None
    public_address: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class BaseExecutorManager(ABC):
    """Subclass this and name it in `[executor_manager] class_path`."""

    def __init__(self, options: dict[str, Any]) -> None:
        self.options = options

    @abstractmethod
    async def start_new_executor(self, token: str, executor_class: ExecutorClass, timeout_s: float) -> ManagedExecutor:
        """Start an executor agent for one job; return how to reach it. `timeout_s` is the class's
        spin-up time: the validator waits that long (plus 5 s) for the executor to be ready."""

    @abstractmethod
    async def kill_executor(self, executor: ManagedExecutor) -> None:
        """Stop it for good; called once the job has ended (or could not start)."""

    @abstractmethod
    async def wait_for_executor(self, executor: ManagedExecutor, timeout_s: float) -> object | None:
        """Wait up to `timeout_s`; a non-None status if it has exited, None while it runs."""

    @abstractmethod
    def get_manifest(self) -> dict[ExecutorClass, int]:
        """How many executors of each class this manager can run at once."""

    async def get_executor_public_address(self, executor: ManagedExecutor) -> str | None:
        return executor.public_address


def load_manager(class_path: str, options: dict[str, Any]) -> BaseExecutorManager:
    """Import `module:Class` (or `module.Class`) and instantiate it with `options`."""
    try:
        return load_plugin("executor_manager.class_path", class_path, BaseExecutorManager, options)
    except PluginError as exc:
        raise ManagerLoadError(str(exc)) from None
