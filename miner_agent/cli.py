"""`miner-agent`: the operator's command line. Parsing and printing only; the work is elsewhere."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from miner_agent import __version__
from miner_agent.config import DEFAULT_CONFIG_PATH, ConfigError, load_config
from miner_agent.fleet.manager import ManagerLoadError
from miner_agent.keys import WalletError
from executor_agent.logs import setup_logging

EPILOG = """\
examples:
  miner-agent run --config /etc/miner-agent/miner-agent.toml
      serve validators on the configured port (what the systemd unit runs)
  miner-agent status --config miner.toml
      executors with their link state and jobs, running jobs, the manifest validators see
  miner-agent executors drain gpu-1 --config miner.toml
      let gpu-1 finish its job and take no new one (undrain to bring it back)
  miner-agent demo-job --config miner.toml --validator-wallet-path ./wallets --validator-wallet validator
      act as a validator from the allowlist and send one small job through this miner

configuration keys and their defaults are listed in the README, section 'Configuration'.
"""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="miner-agent",
        description="A systemd-native ComputeHorde (Bittensor SN12) miner: serves validators and runs their "
        "jobs on executor agents over SSH or a local socket.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"miner-agent {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    run = sub.add_parser("run", help="serve validators until stopped (SIGTERM/SIGINT)")
    run.add_argument("--config", type=Path, default=DEFAULT_CONFIG_PATH, help=f"TOML config (default {DEFAULT_CONFIG_PATH})")
    run.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    status = sub.add_parser("status", help="show executors, running jobs, manifest and receipts of the running miner")
    status.add_argument("--config", type=Path, default=DEFAULT_CONFIG_PATH)
    status.add_argument("--json", action="store_true", help="print the raw JSON")
    ex = sub.add_parser("executors", help="list executors, or drain/undrain one on the running miner")
    ex.add_argument("action", choices=["list", "drain", "undrain"])
    ex.add_argument("name", nargs="?", help="executor name (for drain/undrain)")
    ex.add_argument("--config", type=Path, default=DEFAULT_CONFIG_PATH)
    demo = sub.add_parser(
        "demo-job",
        help="send one job to a running miner as an allowlisted validator and print every message",
        description="Connects to the miner named in --config as the validator whose wallet you give, "
        "runs `echo` in the image, and prints each protocol message with its time. Exit 0 when the job finished.",
    )
    demo.add_argument("--config", type=Path, default=DEFAULT_CONFIG_PATH)
    demo.add_argument("--validator-wallet-path", type=Path, required=True, help="wallets directory of the validator key")
    demo.add_argument("--validator-wallet", default="validator", help="wallet name (default validator)")
    demo.add_argument("--validator-hotkey", default="default", help="hotkey name (default default)")
    demo.add_argument("--image", default="localhost/miner-agent-demo:latest", help="job image present on the executor")
    demo.add_argument("--host", default="127.0.0.1", help="miner address to connect to (default 127.0.0.1)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command is None:
        _parser().print_help()
        return 2
    try:
        if args.command == "run":
            return _run(args)
        if args.command in ("status", "executors"):
            from miner_agent.admin_client import AdminUnavailable
            from miner_agent.cli_admin import executors_command, status_command

            try:
                command = status_command if args.command == "status" else executors_command
                return asyncio.run(command(load_config(args.config), args))
            except AdminUnavailable as exc:
                print(f"miner-agent: {exc}", file=sys.stderr)
                return 1
        if args.command == "demo-job":
            from miner_agent.selftest.demo import demo_job

            return asyncio.run(demo_job(load_config(args.config), args))
    except (ConfigError, WalletError, ManagerLoadError) as exc:
        print(f"miner-agent: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 2


def _run(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    setup_logging("debug" if args.verbose else "info")
    from miner_agent.daemon import serve

    try:
        import uvloop

        uvloop.run(serve(config))
    except ImportError:
        asyncio.run(serve(config))
    except OSError as exc:
        print(f"miner-agent: cannot listen on {config.miner.listen_host}:{config.miner.listen_port}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
