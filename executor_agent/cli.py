"""`executor-agent` command line: parse, configure logging, hand over to the daemon.

Holds no logic of its own. Errors are one line on stderr and exit status 2, never a
traceback, because under systemd that line is what `systemctl status` shows.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from agent_common.logs import setup_logging
from agent_common.private import set_daemon_umask
from executor_agent import __version__
from executor_agent.executor_config import DEFAULT_CONFIG_PATH, ConfigError, load_config

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
    _add_preload_parser(sub)
    _add_specs_parser(sub)
    _add_authorize_parser(sub)
    doctor = sub.add_parser("doctor", help="check that this host can run jobs (podman, disk, GPU/CDI, images, CVE probe)",
                            description="Checks the podman API service, the job and socket directories, free "
                            "disk, the GPU, its CDI spec and nvidia-container-toolkit >= 1.17.4 (GPU classes), "
                            "user namespaces, the preloaded job images, the job-runner plugin, and runs the "
                            "CVE-2022-0492 container-escape probe validators expect, one line each. "
                            "Exit status 1 if any check failed.",
                            epilog=f"example:\n  sudo -u executor-agent executor-agent doctor --config {DEFAULT_CONFIG_PATH}\n",
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    doctor.add_argument("--config", type=Path, default=None, metavar="FILE",
                        help=f"TOML config (default: {DEFAULT_CONFIG_PATH} if it exists, else built-in defaults)")
    doctor.add_argument("--class", dest="executor_class", default=None, metavar="CLASS",
                        help="the executor class the miner advertises this host as; GPU checks apply to GPU "
                        "classes (default: to a host with nvidia-smi)")
    return parser


# --- preload (executor_agent/preload.py; run by executor-agent-preload.timer) ---------------

PRELOAD_EPILOG = f"""\
example:
  executor-agent preload --config {DEFAULT_CONFIG_PATH}

  Pulls [preload] images from the config plus the miner dynamic config's
  DYNAMIC_PRELOAD_DOCKER_JOB_IMAGES, one journal line per image. Exit 1 if any failed.
"""


def _add_preload_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    preload = sub.add_parser("preload", help="pull the job images listed for preloading, then exit",
                             description="Pull the job images validators use, so jobs never wait on a registry.",
                             epilog=PRELOAD_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    preload.add_argument("--config", type=Path, default=None, metavar="FILE",
                         help=f"TOML config (default: {DEFAULT_CONFIG_PATH} if it exists, else built-in defaults)")
    preload.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])


def _preload(args: argparse.Namespace) -> int:
    from executor_agent.preload import PreloadError, exit_status, run_preload

    setup_logging(args.log_level)
    try:
        config = load_config(args.config)
        return exit_status(asyncio.run(run_preload(config)))
    except (ConfigError, PreloadError) as exc:
        print(f"executor-agent: {exc}", file=sys.stderr)
        return EXIT_USAGE

# --- end preload -------------------------------------------------------------------------------


# --- specs (executor_agent/specs.py) -----------------------------------------------------------

def _add_specs_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    specs = sub.add_parser("specs", help="print this host's machine specs (as sent to validators) as JSON",
                           description="Probe GPU (nvidia-smi), CPU, RAM, disk and OS the way the agent does, "
                           "and print the V0MachineSpecsRequest payload as JSON.",
                           epilog=f"example:\n  executor-agent specs --config {DEFAULT_CONFIG_PATH}\n",
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    specs.add_argument("--config", type=Path, default=None, metavar="FILE",
                       help=f"TOML config (default: {DEFAULT_CONFIG_PATH} if it exists, else built-in defaults)")


def _specs(args: argparse.Namespace) -> int:
    import json

    from executor_agent.specs import collect_specs, sources_from_config

    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"executor-agent: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print(json.dumps(collect_specs(sources_from_config(config)), indent=2))
    return 0

# --- end specs ---------------------------------------------------------------------------------


# --- authorize-miner (executor_agent/authorize.py) ---------------------------------------------

AUTHORIZE_EPILOG = """\
example (as root, on the executor host; the key is the miner host's id_ed25519.pub):
  executor-agent authorize-miner 'ssh-ed25519 AAAAC3Nza... miner-agent'

  Writes ~executor-agent/.ssh/authorized_keys (the key may open the agent socket and
  nothing else: no shell, no TTY, no TCP or agent forwarding) and the sshd drop-in
  /etc/ssh/sshd_config.d/executor-agent.conf, checks them with 'sshd -t', reloads ssh,
  and prints the host_key line for the miner's [[executors]] entry. Safe to rerun.
"""


def _add_authorize_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    from executor_agent import authorize as A

    auth = sub.add_parser("authorize-miner", help="let a miner's SSH key reach the agent socket (and nothing else)",
                          description="Authorize one miner public key for SSH mode, idempotently.",
                          epilog=AUTHORIZE_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    auth.add_argument("public_key", metavar="PUBLIC_KEY", help="one line: 'ssh-ed25519 AAAA... comment'")
    auth.add_argument("--config", type=Path, default=None, metavar="FILE",
                      help=f"agent TOML config, for socket_path (default: {DEFAULT_CONFIG_PATH} if it exists)")
    auth.add_argument("--user", default=A.DEFAULT_USER, help="the account the miner logs in as (default: %(default)s)")
    auth.add_argument("--authorized-keys", type=Path, default=None, metavar="FILE",
                      help="default: ~USER/.ssh/authorized_keys")
    auth.add_argument("--sshd-dropin", type=Path, default=A.DEFAULT_DROPIN, metavar="FILE",
                      help="default: %(default)s")
    auth.add_argument("--sshd-config", type=Path, default=None, metavar="FILE",
                      help="main sshd config passed to 'sshd -t -f' (default: sshd's own)")
    auth.add_argument("--host-key", type=Path, default=A.DEFAULT_HOST_KEY, metavar="FILE",
                      help="host public key to print for pinning (default: %(default)s)")
    auth.add_argument("--no-reload", action="store_true", help="write and check, but do not reload ssh")


def _authorize(args: argparse.Namespace) -> int:
    from executor_agent import authorize as A

    try:
        key = A.parse_public_key(args.public_key)
        socket = load_config(args.config).socket_path
        target = A.Target(user=args.user, socket=socket, dropin=args.sshd_dropin, host_key=args.host_key,
                          authorized_keys=args.authorized_keys, sshd_config=args.sshd_config,
                          reload=not args.no_reload)
        outcome = A.authorize(key, target)
    except (ConfigError, A.AuthorizeError) as exc:
        print(f"executor-agent: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except PermissionError as exc:
        print(f"executor-agent: {exc.filename}: permission denied (run as root)", file=sys.stderr)
        return EXIT_USAGE
    changed = outcome.keys_changed or outcome.dropin_changed
    print(f"{'authorized' if changed else 'already authorized'}: {key.line} in {outcome.authorized_keys}"
          f"{'; ssh reloaded' if outcome.reloaded else ''}")
    print(f"pin this host key in the miner's [[executors]] entry:\nhost_key = \"{outcome.host_key_line}\"")
    return 0

# --- end authorize-miner -----------------------------------------------------------------------


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
    if args.command == "preload":
        return _preload(args)
    if args.command == "specs":
        return _specs(args)
    if args.command == "authorize-miner":
        return _authorize(args)
    if args.command == "doctor":
        from executor_agent.doctor import run_doctor

        try:
            return run_doctor(load_config(args.config), executor_class=args.executor_class)
        except ConfigError as exc:
            print(f"executor-agent: {exc}", file=sys.stderr)
            return EXIT_USAGE
    if args.command != "serve":
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    setup_logging(args.log_level)
    # Job dirs and sockets get their modes set explicitly where a container or the miner needs
    # access; everything else (running.json with env and presigned URLs, events) is ours alone.
    set_daemon_umask()
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
