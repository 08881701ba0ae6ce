"""`miner-agent doctor`: why is this miner not earning? (issue 12).

This module holds only the argument parser and the dispatch, so `--help` stays fast; the
checks live in miner_agent/doctor/.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from miner_agent.miner_config import DEFAULT_CONFIG_PATH, MinerConfig

DESCRIPTION = """\
Checks, from this host, what validators check before they send jobs: the axon on chain (equal to
the configured IP and port, the port listening here, the IP this host's public address), the
manifest commitment, which permitted validators connected in the last hour, collateral, the
configured executor classes against DYNAMIC_EXECUTOR_CLASS_WEIGHTS, receipt page fetches, the
clock against the chain's block time, and every executor (link, capacity, its own
`executor-agent doctor`). Run it on the miner host as root or the miner-agent user: it asks the
running miner through its admin socket.

Exit status: 0 when nothing failed (warnings allowed), 1 when any check failed, 2 on a config error.
"""

EPILOG = """\
examples:
  miner-agent doctor --config /etc/miner-agent/miner-agent.toml
  miner-agent doctor --json | jq '.rows[] | select(.result == "FAIL")'

the checks, their thresholds and sample output: docs/doctor.md
"""


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("doctor", help="check what validators check before they send jobs; exit 1 if anything fails",
                       description=DESCRIPTION, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", type=Path, default=DEFAULT_CONFIG_PATH, help=f"TOML config (default {DEFAULT_CONFIG_PATH})")
    p.add_argument("--json", action="store_true", help="print the rows as JSON ({rows: [{check, result, detail, fix}]})")


async def doctor_command(config: MinerConfig, args: argparse.Namespace) -> int:
    from miner_agent.doctor.gather import gather_report
    from miner_agent.doctor.render import render_json, render_table

    report = await gather_report(config)
    print(render_json(report) if args.json else render_table(report))
    return report.exit_code()
