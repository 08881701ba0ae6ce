"""What every request handler reaches through the aiohttp app: one object, built once."""

from __future__ import annotations

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

    def main_hotkey(self) -> str:
        """The hotkey that should get the coldkey's main share; rotation comes with the chain duties."""
        return self.signer.hotkey


CTX = web.AppKey("miner_context", MinerContext)
