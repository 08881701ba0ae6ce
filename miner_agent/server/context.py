"""What every request handler reaches through the aiohttp app: one object, built once."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from miner_agent.activity import Activity
from miner_agent.chain.duties import ChainDuties
from miner_agent.chain.validators import ValidatorSet
from miner_agent.fleet.pool import Fleet
from miner_agent.jobs.service import JobService
from miner_agent.keys import Signer
from miner_agent.metrics import MinerMetrics
from miner_agent.miner_config import MinerConfig
from miner_agent.receipts.receipt_store import ReceiptStore
from miner_agent.server.conn_guard import GuardEdge


@dataclass
class MinerContext:
    config: MinerConfig
    signer: Signer
    fleet: Fleet
    service: JobService
    receipts: ReceiptStore
    chain: ChainDuties
    metrics: MinerMetrics = field(default_factory=MinerMetrics)
    # When each validator last authenticated and when a receipt page was last served (doctor, alerts).
    activity: Activity = field(default_factory=Activity)
    # The periodic collateral check (miner_agent/collateral/duty.py); None in tests that build a bare context.
    collateral: Any = None
    # One-time self-test validator keys handed out on the admin socket: hotkey -> expiry (monotonic s).
    selftest_keys: dict[str, float] = field(default_factory=dict)

    public_port: int = 0  # the bound validator-facing port (config may say 0 = any)
    # Open validator websockets (server.validator_ws handlers), closed with 1001 at shutdown.
    validator_sockets: set[Any] = field(default_factory=set)
    # Bounds on connections that have not authenticated (server.conn_guard).
    guard: GuardEdge = field(default_factory=GuardEdge)

    def preload_images(self) -> list[str]:
        """Job images validators want preloaded (dynamic DYNAMIC_PRELOAD_DOCKER_JOB_IMAGES)."""
        return list(self.chain.dynamic_config.preload_job_images)

    def is_known_validator(self, hotkey: str) -> bool:
        if hotkey in self.validators:
            return True
        expiry = self.selftest_keys.get(hotkey)
        if expiry is not None and expiry < time.monotonic():
            del self.selftest_keys[hotkey]
            return False
        return expiry is not None

    @property
    def validators(self) -> ValidatorSet:
        return self.chain.validators

    def main_hotkey(self) -> str:
        """The hotkey that should get the coldkey's main share this cycle (stock rotation, §5.6)."""
        return self.chain.main_hotkey()


CTX = web.AppKey("miner_context", MinerContext)
