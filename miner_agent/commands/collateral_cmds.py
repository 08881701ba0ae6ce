"""`miner-agent collateral`: the miner's side of the validators' collateral contracts (issue 11).

This module holds only the argument parser and the dispatch, so `--help` never imports web3;
the work lives in miner_agent/collateral/.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from miner_agent.miner_config import DEFAULT_CONFIG_PATH, MinerConfig


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("collateral", help="collateral in the validators' EVM contracts: status, associate, deposit, reclaim")
    p.add_argument("--config", type=Path, default=DEFAULT_CONFIG_PATH)


async def collateral_command(config: MinerConfig, args: argparse.Namespace) -> int:
    print("miner-agent collateral: not implemented yet")
    return 2
