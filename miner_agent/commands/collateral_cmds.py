"""`miner-agent collateral`: the miner's side of the validators' collateral contracts (issue 11).

This module holds only the argument parser and the dispatch, so `--help` never imports web3;
the work lives in miner_agent/collateral/ (actions.py for these commands).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from miner_agent.miner_config import DEFAULT_CONFIG_PATH, MinerConfig

DESCRIPTION = """\
Validators send organic jobs (the only ones that score) only to miners with at least 0.01 TAO of
collateral in the validator's own EVM contract. These commands use the miner's hotkey (never the
coldkey) and an EVM (H160) key kept at <wallets>/<wallet>/h160/<hotkey> (mode 0600).

first time:  keygen -> associate -> fund (send TAO to the printed address) -> deposit --all -> status
"""

EPILOG = """\
examples:
  miner-agent collateral                       one row per validator: contract, collateral, threshold
  miner-agent collateral status --json         the same for scripts; exit 1 while a validator filters us out
  miner-agent collateral keygen                create the EVM key (or: import-key --private-key-file FILE)
  miner-agent collateral associate             link the EVM key to our uid on chain (once per ~24 h)
  miner-agent collateral fund                  where to send TAO for the deposits and gas; moves nothing
  miner-agent collateral deposit --all --amount 0.01
  miner-agent collateral reclaim --validator 5F... --amount 0.01
  miner-agent collateral finalize              finish every reclaim whose deny window is over

walk-through: docs/collateral.md; settings: [collateral] in docs/configuration.md
"""


def _common(p: argparse.ArgumentParser, suppress: bool) -> None:
    """--config and --evm-rpc on `collateral` and on each subcommand (either position works)."""
    default = argparse.SUPPRESS if suppress else None
    p.add_argument("--config", type=Path, default=argparse.SUPPRESS if suppress else DEFAULT_CONFIG_PATH,
                   help=f"TOML config (default {DEFAULT_CONFIG_PATH})")
    p.add_argument("--evm-rpc", metavar="URL", default=default,
                   help="EVM JSON-RPC URL; overrides [collateral] evm_rpc and the [chain] network default")


def _confirmable(p: argparse.ArgumentParser) -> None:
    p.add_argument("--yes", action="store_true", help="send without asking (scripts); value and gas are still printed")


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "collateral", help="collateral in the validators' EVM contracts: status, associate, deposit, reclaim",
        description=DESCRIPTION, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    _common(p, suppress=False)
    p.add_argument("--json", action="store_true", help="status as JSON")
    s = p.add_subparsers(dest="collateral_command", metavar="SUBCOMMAND")

    status = s.add_parser("status", help="(default) one row per permitted validator; exit 1 while any would filter us out")
    _common(status, suppress=True)
    status.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="print JSON")

    assoc = s.add_parser("associate", help="associate_evm_key: link the EVM key to our uid, signed by the hotkey",
                         description="Signs the current block with the EVM key and sends SubtensorModule."
                         "associate_evm_key signed by the hotkey. The chain allows one association per uid "
                         "every 7200 blocks (about 24 h); inside that window it says when to retry.")
    _common(assoc, suppress=True)
    assoc.add_argument("--force", action="store_true", help="send even if the chain already has this key for our uid")

    fund = s.add_parser("fund", help="print the SS58 address that funds the EVM key and how much is missing; moves nothing")
    _common(fund, suppress=True)

    dep = s.add_parser("deposit", help="deposit() into one validator's contract, or into all verified ones",
                       description="Shows value and gas, asks, then sends deposit() with the EVM key. Only contracts "
                       "whose TRUSTEE and NETUID check out are used.")
    _common(dep, suppress=True)
    which = dep.add_mutually_exclusive_group(required=True)
    which.add_argument("--validator", metavar="HOTKEY", help="the validator's hotkey (SS58)")
    which.add_argument("--all", action="store_true", help="every permitted validator with a verified contract")
    dep.add_argument("--amount", metavar="TAO", required=True, help="TAO per contract, e.g. 0.01")
    _confirmable(dep)

    rec = s.add_parser("reclaim", help="start taking collateral back (the validator may deny it during its window)",
                       description="Sends reclaimCollateral(amount, url, md5). The validator can deny it until its "
                       "deny timeout; after that, `finalize` pays it out. Collateral being reclaimed still counts "
                       "until finalized.")
    _common(rec, suppress=True)
    rec.add_argument("--validator", metavar="HOTKEY", required=True, help="the validator's hotkey (SS58)")
    rec.add_argument("--amount", metavar="TAO", required=True, help="TAO to take back, e.g. 0.01")
    rec.add_argument("--url", default="", help="optional URL of a document explaining the reclaim")
    rec.add_argument("--md5", default="", metavar="HEX", help="md5 of the document at --url (32 hex); default 16 zero bytes")
    _confirmable(rec)

    fin = s.add_parser("finalize", help="finalizeReclaim for reclaims whose deny window is over")
    _common(fin, suppress=True)
    fin.add_argument("--validator", metavar="HOTKEY", help="only this validator's contract")
    fin.add_argument("--id", type=int, dest="reclaim_id", metavar="N", help="only this reclaim id (tried even if early)")
    _confirmable(fin)

    keygen = s.add_parser("keygen", help="create the EVM key at <wallets>/<wallet>/h160/<hotkey> (mode 0600)")
    _common(keygen, suppress=True)
    imp = s.add_parser("import-key", help="store an existing EVM private key at the stock path (mode 0600)")
    _common(imp, suppress=True)
    imp.add_argument("--private-key-file", type=Path, required=True, metavar="FILE",
                     help="file holding the 0x hex private key ('-' reads stdin); never pass a key as an argument")


async def collateral_command(config: MinerConfig, args: argparse.Namespace) -> int:
    from miner_agent.collateral.actions import run

    return await run(config, args)
