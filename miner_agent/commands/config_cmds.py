"""`miner-agent config check|set` and `executors add|remove`: file edits, no running miner needed."""

from __future__ import annotations

import argparse

from miner_agent.commands.config_check import problems
from miner_agent.commands.config_edit import (
    add_executor,
    parse_value,
    read_document,
    remove_executor,
    set_key,
    write_document,
)
from miner_agent.miner_config import ConfigError, load_config

RESTART_HINT = "takes effect at the next start: systemctl restart miner-agent"


def config_command(args: argparse.Namespace) -> int:
    path = args.config
    if args.command == "config" and args.config_command == "check":
        config = load_config(path)
        found = problems(config)
        for level, message in found:
            print(f"{level:7}  {message}")
        errors = sum(level == "error" for level, _ in found)
        print(f"{path}: {'OK' if not errors else f'{errors} error(s)'}")
        return 1 if errors else 0
    doc = read_document(path)
    if args.command == "config":
        set_key(doc, args.key, parse_value(args.value))
        write_document(doc, path)
        print(f"{path}: {args.key} = {args.value} ({RESTART_HINT})")
        return 0
    if not args.name:
        raise ConfigError(f"executors {args.action} needs an executor NAME")
    if args.action == "remove":
        remove_executor(doc, args.name)
    else:
        entry = {"name": args.name, "executor_class": args.executor_class, "mode": args.mode, "socket": args.socket}
        if args.mode == "ssh":
            entry.update(host=args.host, port=args.port, user=args.user, key_path=args.key_path, host_key=args.host_key)
        add_executor(doc, entry)
    write_document(doc, path)
    print(f"{path}: executor {args.name} {'removed' if args.action == 'remove' else 'added'} ({RESTART_HINT})")
    return 0
