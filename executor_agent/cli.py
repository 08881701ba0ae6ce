"""`executor-agent` command line: parse, configure logging, hand over to the daemon.

Holds no logic of its own. Errors are one line on stderr and exit status 2, never a
traceback, because under systemd that line is what `systemctl status` shows.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path

from executor_agent import __version__
from executor_agent.config import DEFAULT_CONFIG_PATH, ConfigError, load_config
from executor_agent.logs import setup_logging

EXIT_USAGE = 2

DESCRIPTION = """\
Run ComputeHorde jobs in podman containers on this host, for a miner agent that
connects to the unix socket directly or through SSH.
"""

EPILOG = f"""\
example:
  executor-agent serve --config {DEFAULT_CONFIG_PATH}

  A minimal config (every key is optional):
    socket_path = "/run/executor-agent/agent.sock"
    jobs_dir = "/var/lib/executor-agent/jobs"
    podman_url = "unix:///run/podman/podman.sock"
    slots = 1

  Needs the podman API service: systemctl enable --now podman.socket
"""

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="executor-agent", description=DESCRIPTION, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"executor-agent {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    serve = sub.add_parser("serve", help="listen on the agent socket and run jobs until SIGTERM",
                           description="Listen on the agent socket and run jobs until SIGTERM or SIGINT.",
                           epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    serve.add_argument("--config", type=Path, default=None, metavar="FILE",
                       help=f"TOML config (default: {DEFAULT_CONFIG_PATH} if it exists, else built-in defaults)")
    serve.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    return parser


def _run(coro_factory: object) -> None:
    try:
        import uvloop
    except ImportError:
        asyncio.run(coro_factory())  # type: ignore[operator]
    else:
        uvloop.run(coro_factory())  # type: ignore[operator]


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command != "serve":
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    setup_logging(args.log_level)
    from executor_agent.daemon.server import AgentStartError, serve

    try:
        config = load_config(args.config)
        _run(lambda: serve(config))
    except (ConfigError, AgentStartError) as exc:
        print(f"executor-agent: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
