"""What every request handler reaches through the aiohttp app: one object, built once."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from aiohttp import web

from miner_agent.config import MinerConfig
from miner_agent.fleet.pool import Fleet
from miner_agent.jobs.service import JobService
from miner_agent.keys import Signer
from miner_agent.metrics import MinerMetrics
from miner_agent.receipts.store import ReceiptStore


@dataclass
class MinerContext:
    config: MinerConfig
    signer: Signer
    validators: frozenset[str]
    fleet: Fleet
    service: JobService
    receipts: ReceiptStore
    metrics: MinerMetrics = field(default_factory=MinerMetrics)
    # One-time self-test validator keys handed out on the admin socket: hotkey -> expiry (monotonic s).
    selftest_keys: dict[str, float] = field(default_factory=dict)

    public_port: int = 0  # the bound validator-facing port (config may say 0 = any)

    def preload_images(self) -> list[str]:
        """Job images validators announce for preloading (dynamic config); none known yet."""
        return []

    def is_known_validator(self, hotkey: str) -> bool:
        if hotkey in self.validators:
            return True
        expiry = self.selftest_keys.get(hotkey)
        if expiry is not None and expiry < time.monotonic():
            del self.selftest_keys[hotkey]
            return False
        return expiry is not None

    def main_hotkey(self) -> str:
        """The hotkey that should get the coldkey's main share; rotation comes with the chain duties."""
        return self.signer.hotkey


CTX = web.AppKey("miner_context", MinerContext)
