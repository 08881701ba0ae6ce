"""Printing for `miner-agent status` and `miner-agent executors`: tables for people, --json for scripts."""

from __future__ import annotations

import argparse
import json
import sys

from miner_agent.admin_client import call
from miner_agent.collateral.duty import status_line
from miner_agent.miner_config import MinerConfig


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    lines = ["  ".join(str(x).ljust(w) for x, w in zip(r, widths)).rstrip() for r in [header, *rows]]
    return "\n".join(lines)


def _executor_rows(status: dict) -> list[list[str]]:
    # The column keeps the error's first clause; the whole sentence (what to check) goes below.
    return [
        [e["name"], e["executor_class"], e["mode"], e["link"] + (" (drained)" if e["drained"] else ""),
         f"{len(e['running_jobs'])}/{e['slots']}", e["last_error"].split("; ", 1)[0]]
        for e in status["executors"]
    ]


def _executor_table(status: dict) -> str:
    """The table, then for each executor whose link is not up its full error, which names what to check."""
    table = _table(_executor_rows(status), ["EXECUTOR", "CLASS", "MODE", "LINK", "JOBS", "LAST ERROR"])
    why = [f"{e['name']} is {e['link']}: {e['last_error']}" for e in status["executors"]
           if e["link"] != "up" and "; " in e["last_error"]]
    return "\n".join([table, *(["", *why] if why else [])])


async def status_command(config: MinerConfig, args: argparse.Namespace) -> int:
    _, status = await call(config.admin_socket, "GET", "/status")
    if args.json:
        print(json.dumps(status, indent=2))
        return 0
    print(f"miner-agent {status['version']}  hotkey {status['hotkey']}  port {status['port']}")
    print(f"manifest: {json.dumps(status['manifest'])}   receipts stored: {status['receipts']}   "
          f"validator connections: {status['validator_connections']}")
    print(status_line(status.get("collateral")))
    print()
    print(_executor_table(status))
    print()
    jobs = [[j["job_uuid"], j["validator"], j["executor"], j["state"]] for j in status["jobs"]]
    print(_table(jobs, ["JOB", "VALIDATOR", "EXECUTOR", "STATE"]) if jobs else "no running jobs")
    down = [e for e in status["executors"] if e["link"] != "up"]
    return 1 if down else 0


async def executors_command(config: MinerConfig, args: argparse.Namespace) -> int:
    if args.action == "list":
        _, status = await call(config.admin_socket, "GET", "/status")
        print(_executor_table(status))
        return 0
    if not args.name:
        print(f"miner-agent: executors {args.action} needs an executor NAME (see `miner-agent executors list`)",
              file=sys.stderr)
        return 2
    code, body = await call(config.admin_socket, "POST", f"/executors/{args.name}/{args.action}")
    if code != 200:
        print(f"miner-agent: {body.get('error', body)}", file=sys.stderr)
        return 1
    verb = "drained: finishes its" if body["drained"] else "undrained: takes new jobs again; running"
    print(f"executor {body['name']} {verb} {body['running_jobs']} running job(s)")
    return 0
