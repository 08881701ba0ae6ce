"""Chain duties of the miner: validator list, axon announce, manifest commitment, main hotkey,
dynamic configuration. See docs/chain.md.

Importing this package never imports bittensor; only BittensorChain does, on first use.
"""

from __future__ import annotations

from miner_agent.chain.backend import (
    ChainBackend,
    ChainError,
    ChainRejected,
    ChainUnavailable,
    ChainWrite,
    StaticChain,
)
from miner_agent.chain.chain_config import ChainSection, DynamicConfigSource
from miner_agent.chain.duties import ChainDuties, DutyPeriods, build_chain_duties
from miner_agent.chain.dynamic import DynamicConfig
from miner_agent.chain.validators import ValidatorSet

__all__ = [
    "ChainBackend",
    "ChainDuties",
    "ChainError",
    "ChainRejected",
    "ChainSection",
    "ChainUnavailable",
    "ChainWrite",
    "DutyPeriods",
    "DynamicConfig",
    "DynamicConfigSource",
    "StaticChain",
    "ValidatorSet",
    "build_chain_duties",
]
