"""`miner-agent`: the operator's command line. Parsing and printing only; the work is elsewhere."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from agent_common.logs import setup_logging
from agent_common.private import set_daemon_umask
from miner_agent import __version__
from miner_agent.admin_client import AdminUnavailable
from miner_agent.commands import collateral_cmds, doctor_cmds
from miner_agent.fleet.manager import ManagerLoadError
from miner_agent.keys import WalletError
from miner_agent.miner_config import DEFAULT_CONFIG_PATH, ConfigError, load_config

EPILOG = """\
examples:
  miner-agent run --config /etc/miner-agent/miner-agent.toml
      serve validators on the configured port (what the systemd unit runs)
  miner-agent status --config miner.toml
      executors with their link state and jobs, running jobs, the manifest validators see
  miner-agent executors drain gpu-1 --config miner.toml
      let gpu-1 finish its job and take no new one (undrain to bring it back)
  miner-agent self-test --config /etc/miner-agent/miner-agent.toml --image python:3.11-slim
      run one real job per advertised executor class as a validator would; exit 0 if all checks pass
  miner-agent config set miner.listen_port 8001 --config miner.toml
      change one key; comments and order in the file are kept, the result is validated first
  miner-agent demo-job --config miner.toml --validator-wallet-path ./wallets --validator-wallet validator
      act as a validator from the allowlist and send one small job through this miner

configuration keys and their defaults are listed in docs/configuration.md.
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
    ex = sub.add_parser(
        "executors",
        help="list, add, remove, drain or undrain executors",
        description="list/drain/undrain act on the running miner (admin socket); add/remove edit the config "
        "file (comments kept) and take effect at the next restart.",
        epilog="examples:\n"
        "  miner-agent executors add gpu-1 --class spin_up-4min.gpu-24gb --mode ssh --host 10.0.0.5 \\\n"
        "      --key-path /etc/miner-agent/id_ed25519 --host-key \"$(ssh-keyscan -t ed25519 10.0.0.5 | cut -d' ' -f2-)\"\n"
        "  miner-agent executors drain gpu-1",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ex.add_argument("action", choices=["list", "add", "remove", "drain", "undrain"])
    ex.add_argument("name", nargs="?", help="executor name (all actions but list)")
    ex.add_argument("--config", type=Path, default=DEFAULT_CONFIG_PATH)
    ex.add_argument("--class", dest="executor_class", default="always_on.cpu.8c.16gb",
                    help="executor class (add; default always_on.cpu.8c.16gb, the class validators weight today; "
                    "`miner-agent doctor` checks it against the current weights)")
    ex.add_argument("--mode", choices=["local", "ssh"], default="local", help="how to reach its agent (add)")
    ex.add_argument("--socket", type=Path, default=None, help="agent socket on its host (add)")
    ex.add_argument("--host", help="ssh host (add, mode ssh)")
    ex.add_argument("--port", type=int, default=None, help="ssh port (add, mode ssh; default 22)")
    ex.add_argument("--user", default=None, help="ssh user (add, mode ssh; default executor-agent)")
    ex.add_argument("--key-path", type=Path, default=None, help="private key the miner logs in with (add, mode ssh)")
    ex.add_argument("--host-key", default=None, help="pinned public host key line 'ssh-ed25519 AAAA...' (add, mode ssh)")
    st = sub.add_parser(
        "self-test",
        help="act as a validator against the running miner: one real job per advertised class, then a report",
        description="Gets a one-time validator key from the running miner's admin socket (so run it on the miner "
        "host, as root or the miner-agent user), connects to the public port like a validator, checks the "
        "manifest, runs one real job on every advertised executor class, checks the order and budgets of the "
        "progress messages, the receipts on /receipts/, /version and the main hotkey answer, and prints a table. "
        "Exit status 0 only if every check passed.",
    )
    st.add_argument("--config", type=Path, default=DEFAULT_CONFIG_PATH)
    st.add_argument("--image", default=None, help="job image to run (default: the first image of the preload list)")
    st.add_argument("--host", default="127.0.0.1", help="address of the miner's public port (default 127.0.0.1)")
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
    _add_config_parser(sub)
    collateral_cmds.add_parser(sub)
    doctor_cmds.add_parser(sub)
    return p


def _command(name: str):  # noqa: ANN202 - returns one of the async command functions
    """Import lazily: `--help` and config errors stay fast and never touch aiohttp or keys."""
    if name in ("status", "executors"):
        from miner_agent.commands.admin_cmds import executors_command, status_command

        return status_command if name == "status" else executors_command
    if name == "collateral":
        return collateral_cmds.collateral_command
    if name == "doctor":
        return doctor_cmds.doctor_command
    if name == "self-test":
        from miner_agent.selftest.run import self_test

        return self_test
    from miner_agent.selftest.demo import demo_job

    return demo_job


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    if args.command == "config" and args.config_command == "import-docker-config":
        return _config(args)
    try:
        if args.command == "run":
            return _run(args)
        if args.command == "config" or (args.command == "executors" and args.action in ("add", "remove")):
            from miner_agent.commands.config_cmds import config_command

            return config_command(args)
        config = load_config(args.config)
        return asyncio.run(_command(args.command)(config, args))
    except (ConfigError, WalletError, ManagerLoadError) as exc:
        print(f"miner-agent: {exc}", file=sys.stderr)
        return 2
    except AdminUnavailable as exc:
        print(f"miner-agent: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _run(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    setup_logging("debug" if args.verbose else "info")
    set_daemon_umask()  # everything the daemon writes (database, pages, sockets' dirs) is its own
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


# --- config import-docker-config (miner_agent/migrate.py) ---------------------------------------

def _add_config_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    config = sub.add_parser(
        "config", help="check the config, set one key (comments kept), import the stock miner's docker_config.yaml"
    )
    config_sub = config.add_subparsers(dest="config_command", metavar="SUBCOMMAND", required=True)
    check = config_sub.add_parser("check", help="validate the file and say what will still not work (exit 1 on errors)")
    check.add_argument("--config", type=Path, default=DEFAULT_CONFIG_PATH)
    setter = config_sub.add_parser("set", help="set one key; comments and order kept; validated before writing")
    setter.add_argument("key", help="dotted key, e.g. miner.listen_port or validators.allow")
    setter.add_argument("value", help="TOML value, e.g. 8001, true, '[\"5F...\"]'; anything else is a string")
    setter.add_argument("--config", type=Path, default=DEFAULT_CONFIG_PATH)
    imp = config_sub.add_parser(
        "import-docker-config",
        help="print the stock docker_config.yaml (and .env) as miner-agent.toml [[executors]] entries",
        description="Reads the stock miner's executor YAML (DOCKER_EXECUTORS_CONFIG_PATH) and, with --env, its .env, "
        "and prints the equivalent miner-agent.toml to stdout; notes on what to finish by hand go to stderr.",
        epilog="example:\n  miner-agent config import-docker-config ~/compute_horde_miner/docker_config.yaml "
        "--env ~/compute_horde_miner/.env >> /etc/miner-agent/miner-agent.toml",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    imp.add_argument("file", type=Path, metavar="FILE", help="the stock docker_config.yaml")
    imp.add_argument("--env", type=Path, default=None, metavar="FILE", help="the stock miner's .env")
    imp.add_argument("--vendor-dir", type=Path, default=None, metavar="DIR",
                     help="host directory the stock compose mounted at /root/vendor (HOST_VENDOR_DIR)")


def _config(args: argparse.Namespace) -> int:
    from miner_agent.migrate import MigrationError, import_docker_config

    try:
        result = import_docker_config(args.file, args.env, args.vendor_dir)
    except MigrationError as exc:
        print(f"miner-agent: {exc}", file=sys.stderr)
        return 2
    sys.stdout.write(result.toml)
    sys.stdout.flush()
    for note in result.notes:
        print(f"note: {note}", file=sys.stderr)
    return 0

# --- end config ---------------------------------------------------------------------------------


if __name__ == "__main__":
    sys.exit(main())
