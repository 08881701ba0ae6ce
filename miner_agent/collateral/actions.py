"""The `miner-agent collateral` subcommands: read the report, plan, confirm, send, print.

Each function returns the exit status. Operator-facing failures (no key, contract refusal, RPC
down) are one sentence on stderr and status 1; nothing here prints a traceback for them.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from decimal import Decimal, InvalidOperation
from typing import Any

from miner_agent.chain.backend import ChainBackend, ChainError, ChainRejected, StaticChain
from miner_agent.collateral.keystore import (
    EvmKey,
    EvmKeyError,
    generate_evm_key,
    import_evm_key,
    key_path,
    load_evm_key,
)
from miner_agent.collateral.report import CollateralReport, CollateralRow, collateral_report
from miner_agent.keys import Signer, load_hotkey
from miner_agent.miner_config import MinerConfig

ASSOCIATE_RATE_LIMIT_BLOCKS = 7200  # subtensor's EvmKeyAssociateRateLimit on finney (collateral.md §3)
BLOCK_TIME_S = 12


class Refused(Exception):
    """A sentence for the operator; the command stops with status 1 and nothing more is sent."""


class NotConfirmed(Exception):
    """The operator (or a script without --yes) did not confirm; already said so, status 1."""


async def run(config: MinerConfig, args: argparse.Namespace) -> int:
    command = getattr(args, "collateral_command", None) or "status"
    try:
        if command == "keygen":
            return _keygen(config)
        if command == "import-key":
            return _import_key(config, args)
        signer = load_hotkey(config.wallet.path, config.wallet.name, config.wallet.hotkey)
        backend = _backend(config, signer)
        try:
            handler = {"status": _status, "associate": _associate, "fund": _fund, "deposit": _deposit,
                       "reclaim": _reclaim, "finalize": _finalize}[command]
            return await handler(config, args, signer, backend)
        finally:
            await backend.close()
    except (Refused, EvmKeyError, ChainError) as exc:
        print(f"miner-agent collateral: {exc}", file=sys.stderr)
        return 1
    except NotConfirmed:
        return 1


# --- wiring ---------------------------------------------------------------------------------------

def _backend(config: MinerConfig, signer: Signer) -> ChainBackend:
    """The same backend the daemon's chain duties use ([chain] backend), built without starting them."""
    from miner_agent.chain.duties import build_chain_duties

    return build_chain_duties(config.chain, keypair=signer.keypair, allow=(), manifest=dict, listen_port=0).backend


def _w3(config: MinerConfig, args: argparse.Namespace) -> Any:
    from miner_agent.collateral.contract import connect

    url = getattr(args, "evm_rpc", None)
    if not url and config.chain.backend == "static" and not config.collateral.evm_rpc:
        # Offline by default: a static-chain miner never reaches a public EVM it was not pointed at.
        raise Refused("static chain backend and no [collateral] evm_rpc; set it or pass --evm-rpc URL")
    url = url or config.collateral.evm_rpc_url(config.chain.network)
    if not url:
        raise Refused(f"no EVM RPC known for [chain] network {config.chain.network!r}; "
                      f"set [collateral] evm_rpc or pass --evm-rpc URL")
    return connect(url, config.collateral.rpc_timeout_s)


async def _report(config: MinerConfig, args: argparse.Namespace, signer: Signer, backend: ChainBackend,
                  w3: Any) -> CollateralReport:
    report = await collateral_report(config, backend, w3=w3, hotkey=signer.hotkey)
    if not report.checked:
        raise Refused(f"collateral not checked: {report.reason}")
    return report


def _tao_to_wei(text: str) -> int:
    try:
        wei = Decimal(text) * 10**18
    except InvalidOperation:
        raise Refused(f"amount {text!r} is not a number of TAO (e.g. 0.01)") from None
    if wei <= 0 or wei != wei.to_integral_value():
        raise Refused(f"amount {text!r} must be a positive number of TAO with at most 18 decimals")
    return int(wei)


def _confirm(args: argparse.Namespace, question: str) -> bool:
    if getattr(args, "yes", False):
        return True
    if not sys.stdin.isatty():
        print("not confirmed: stdin is not a terminal, so nothing was sent (add --yes to run from a script)",
              file=sys.stderr)
        return False
    answer = input(f"{question} [y/N] ").strip().lower()
    if answer not in ("y", "yes"):
        print("not confirmed; nothing was sent", file=sys.stderr)
        return False
    return True


def _own_key(config: MinerConfig, report: CollateralReport) -> EvmKey:
    """The local EVM key, refused unless it is the one validators read for our uid."""
    key = load_evm_key(key_path(config.wallet))
    if report.associated_h160 is None:
        raise Refused(f"our uid has no associated EVM address yet; run `miner-agent collateral associate` first "
                      f"(deposits from {key.address} would not be seen)")
    if report.associated_h160.lower() != key.address.lower():
        raise Refused(f"the local EVM key {key.address} is not the address associated with our uid "
                      f"({report.associated_h160}); validators read only the associated one. Run "
                      f"`miner-agent collateral associate`, or use the key file of {report.associated_h160}")
    return key


def _row(report: CollateralReport, validator: str) -> CollateralRow:
    for row in report.rows:
        if row.validator == validator:
            if not row.contract_ok:
                raise Refused(f"validator {validator}: {row.problem}")
            return row
    raise Refused(f"{validator} is not a permitted validator on netuid {report.netuid}")


# --- keys -----------------------------------------------------------------------------------------

def _keygen(config: MinerConfig) -> int:
    key = generate_evm_key(key_path(config.wallet))
    print(f"EVM key created: {key.address}\n  file {key.path} (mode 0600; back it up: it owns the collateral)\n"
          f"next: miner-agent collateral associate")
    return 0


def _import_key(config: MinerConfig, args: argparse.Namespace) -> int:
    source = args.private_key_file
    try:
        text = sys.stdin.read() if str(source) == "-" else source.read_text()
    except OSError as exc:
        raise Refused(f"cannot read {source}: {exc.strerror or exc}") from None
    key = import_evm_key(key_path(config.wallet), text)
    print(f"EVM key imported: {key.address}\n  file {key.path} (mode 0600)")
    return 0


# --- status ---------------------------------------------------------------------------------------

async def _status(config: MinerConfig, args: argparse.Namespace, signer: Signer, backend: ChainBackend) -> int:
    from miner_agent.collateral.contract import format_tao
    from miner_agent.commands.admin_cmds import _table

    try:
        w3 = _w3(config, args)
    except Refused as exc:
        report = CollateralReport(checked=False, reason=str(exc), netuid=config.chain.netuid,
                                  threshold_wei=config.collateral.threshold_wei, hotkey=signer.hotkey)
    else:
        report = await collateral_report(config, backend, w3=w3, hotkey=signer.hotkey)
    if getattr(args, "json", False):
        print(json.dumps({**report.model_dump(), "ok": report.ok}, indent=2))
        return 0 if report.ok else 1
    if not report.checked:
        print(f"collateral: not checked ({report.reason})")
        return 1
    balance = "-" if report.evm_balance_wei is None else f"{format_tao(report.evm_balance_wei)} TAO"
    print(f"hotkey {report.hotkey}  uid {report.uid if report.uid is not None else 'not registered'}  "
          f"netuid {report.netuid}")
    print(f"associated H160 {report.associated_h160 or 'none (run: miner-agent collateral associate)'}  "
          f"local key {report.key_h160 or 'none (run: miner-agent collateral keygen)'}  balance {balance}")
    print(f"threshold {format_tao(report.threshold_wei)} TAO per validator")
    if report.key_h160 and report.associated_h160 and report.key_h160.lower() != report.associated_h160.lower():
        print(f"warning: the local key {report.key_h160} is not the associated address; its deposits do not count")
    print()
    rows = [[row.validator, row.contract or "-",
             "-" if row.collateral_wei is None else format_tao(row.collateral_wei),
             " ".join(f"#{r.reclaim_id}:{format_tao(r.amount_wei)}" for r in row.pending_reclaims) or "-",
             _state(row)] for row in report.rows]
    if rows:
        print(_table(rows, ["VALIDATOR", "CONTRACT", "COLLATERAL TAO", "PENDING RECLAIMS", "STATE"]))
    else:
        print(f"no validator with a permit on netuid {report.netuid}")
    problems = [f"{row.validator}: {row.problem}" for row in report.rows if row.problem]
    if problems:
        print()
        print("\n".join(problems))
    return 0 if report.ok else 1


def _state(row: CollateralRow) -> str:
    if row.ok:
        return "ok"
    if row.contract is None:
        return "FILTERED (no contract)"
    if not row.contract_ok:
        return "FILTERED (contract refused)"
    return "FILTERED"


# --- associate --------------------------------------------------------------------------------------

async def _associate(config: MinerConfig, args: argparse.Namespace, signer: Signer, backend: ChainBackend) -> int:
    from miner_agent.collateral.association import recover_association, sign_association

    netuid = config.chain.netuid
    key = load_evm_key(key_path(config.wallet))
    uid = await backend.neuron_uid(netuid, signer.hotkey)
    if uid is None:
        raise Refused(f"hotkey {signer.hotkey} is not registered on netuid {netuid}; register it before associating")
    current = await backend.associated_evm_address(netuid, uid)
    if current is not None and current[0].lower() == key.address.lower() and not args.force:
        print(f"uid {uid} is already associated with {key.address} (since block {current[1]}); nothing sent")
        return 0
    block = await backend.current_block()
    signature = sign_association(key.private_key, bytes(signer.keypair.public_key), block)
    if recover_association(signature, bytes(signer.keypair.public_key), block) != key.address:
        raise Refused("the association signature does not recover to the EVM key; nothing sent")
    try:
        await backend.associate_evm_key(netuid, key.address, block, signature)
    except ChainRejected as exc:
        if "rate" in str(exc).lower() and current is not None:
            retry = current[1] + ASSOCIATE_RATE_LIMIT_BLOCKS
            hours = max(0, retry - block) * BLOCK_TIME_S / 3600
            raise Refused(f"the chain allows one association per uid every {ASSOCIATE_RATE_LIMIT_BLOCKS} blocks; "
                          f"the last one was at block {current[1]}, so retry at block {retry} "
                          f"(in about {hours:.1f} h). Chain said: {exc}") from None
        raise
    where = " (static chain backend: recorded, not sent)" if isinstance(backend, StaticChain) else ""
    print(f"associated {key.address} with uid {uid} on netuid {netuid}, signed at block {block}{where}")
    return 0


# --- fund -------------------------------------------------------------------------------------------

async def _fund(config: MinerConfig, args: argparse.Namespace, signer: Signer, backend: ChainBackend) -> int:
    from miner_agent.collateral.contract import CollateralContract, format_tao
    from miner_agent.collateral.mirror import evm_mirror_ss58

    key = load_evm_key(key_path(config.wallet))
    print(f"EVM key {key.address}\nfund it by sending TAO (e.g. `btcli wallet transfer`) to its SS58 mirror:\n"
          f"  {evm_mirror_ss58(key.address)}")
    w3 = _w3(config, args)
    report = await _report(config, args, signer, backend, w3)
    gas_price = int(w3.eth.gas_price)
    needed, deposits = 0, 0
    for row in report.rows:
        if row.contract_ok and not row.ok and row.contract:
            minimum = CollateralContract(w3, row.contract).min_collateral_increase()
            needed += max(row.threshold_wei - (row.collateral_wei or 0), minimum)
            deposits += 1
    gas = deposits * config.collateral.deposit_gas * gas_price
    balance = report.evm_balance_wei or 0
    missing = max(0, needed + gas - balance)
    print(f"balance {format_tao(balance)} TAO; {deposits} deposit(s) needed: {format_tao(needed)} TAO "
          f"+ gas up to {format_tao(gas)} TAO")
    if missing:
        print(f"missing: {format_tao(missing)} TAO")
    elif deposits:
        print("nothing missing: run `miner-agent collateral deposit`")
    else:
        print("nothing missing: every verified contract already holds the threshold")
    return 0


# --- transactions -----------------------------------------------------------------------------------

def _send(args: argparse.Namespace, plans: list[Any], contracts: list[Any], key: EvmKey) -> list[Any]:
    from miner_agent.collateral.contract import ContractRefused, format_tao

    for plan in plans:
        print(plan.summary())
    if len(plans) > 1:
        total = sum(p.value_wei for p in plans)
        fees = sum(p.max_fee_wei for p in plans)
        print(f"total {format_tao(total)} TAO + gas up to {format_tao(fees)} TAO")
    if not _confirm(args, f"send {len(plans)} transaction(s)?"):
        raise NotConfirmed
    receipts = []
    for plan, contract in zip(plans, contracts):
        try:
            receipt = contract.send(plan, key)
        except ContractRefused as exc:
            raise Refused(str(exc)) from None
        print(f"{plan.action} sent: tx 0x{bytes(receipt['transactionHash']).hex()} in block {receipt['blockNumber']}, "
              f"gas used {receipt['gasUsed']}")
        receipts.append(receipt)
    return receipts


def _plan_or_refuse(make: Any) -> Any:
    from miner_agent.collateral.contract import ContractRefused, EvmUnavailable

    try:
        return make()
    except (ContractRefused, EvmUnavailable) as exc:
        raise Refused(str(exc)) from None


async def _deposit(config: MinerConfig, args: argparse.Namespace, signer: Signer, backend: ChainBackend) -> int:
    from miner_agent.collateral.contract import CollateralContract

    value = _tao_to_wei(args.amount)
    w3 = _w3(config, args)
    report = await _report(config, args, signer, backend, w3)
    key = _own_key(config, report)
    rows = [r for r in report.rows if r.contract_ok] if args.all else [_row(report, args.validator)]
    if not rows:
        raise Refused("no permitted validator has a verified contract; nothing to deposit into "
                      "(see `miner-agent collateral status`)")
    contracts = [CollateralContract(w3, str(r.contract)) for r in rows]
    plans = [_plan_or_refuse(lambda c=c, r=r: c.plan_deposit(
        key, value, config.collateral.deposit_gas, f"deposit into the contract of validator {r.validator}"))
        for c, r in zip(contracts, rows)]
    _send(args, plans, contracts, key)
    for contract, row in zip(contracts, rows):
        from miner_agent.collateral.contract import format_tao

        print(f"validator {row.validator}: collateral now {format_tao(contract.collateral_of(key.address))} TAO")
    return 0


async def _reclaim(config: MinerConfig, args: argparse.Namespace, signer: Signer, backend: ChainBackend) -> int:
    from miner_agent.collateral.contract import ZERO_MD5, CollateralContract

    amount = _tao_to_wei(args.amount)
    try:
        md5 = bytes.fromhex(args.md5) if args.md5 else ZERO_MD5
    except ValueError:
        md5 = b""
    if len(md5) != 16:
        raise Refused(f"--md5 {args.md5!r} must be 32 hex digits (the md5 of the document at --url)")
    w3 = _w3(config, args)
    report = await _report(config, args, signer, backend, w3)
    key = _own_key(config, report)
    row = _row(report, args.validator)
    contract = CollateralContract(w3, str(row.contract))
    plan = _plan_or_refuse(lambda: contract.plan_reclaim(
        key, amount, config.collateral.reclaim_gas, args.url, md5,
        f"reclaim {args.amount} TAO from the contract of validator {row.validator}"))
    (receipt,) = _send(args, [plan], [contract], key)
    for event in contract.events(receipt, "ReclaimProcessStarted"):
        when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(int(event["expirationTime"])))
        print(f"reclaim #{event['reclaimRequestId']} started; the validator may deny it until {when}; "
              f"then run `miner-agent collateral finalize`")
    return 0


async def _finalize(config: MinerConfig, args: argparse.Namespace, signer: Signer, backend: ChainBackend) -> int:
    from miner_agent.collateral.contract import CollateralContract, format_tao

    w3 = _w3(config, args)
    report = await _report(config, args, signer, backend, w3)
    key = _own_key(config, report)
    now = int(w3.eth.get_block("latest")["timestamp"])
    chosen: list[tuple[CollateralRow, int]] = []
    waiting: list[str] = []
    rows = [_row(report, args.validator)] if args.validator else [r for r in report.rows if r.contract_ok]
    for row in rows:
        for pending in row.pending_reclaims:
            if args.reclaim_id is not None and pending.reclaim_id != args.reclaim_id:
                continue
            if pending.deny_timeout < now or args.reclaim_id is not None:
                chosen.append((row, pending.reclaim_id))
            else:
                when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(pending.deny_timeout + 1))
                waiting.append(f"reclaim #{pending.reclaim_id} at validator {row.validator}: finalizable after {when}")
    if args.reclaim_id is not None and not chosen:
        if not args.validator:
            raise Refused(f"no pending reclaim #{args.reclaim_id} of ours found; pass --validator to try it anyway")
        chosen.append((_row(report, args.validator), args.reclaim_id))
    if not chosen:
        print("\n".join(waiting) if waiting else "no pending reclaims")
        return 1
    contracts = [CollateralContract(w3, str(row.contract)) for row, _ in chosen]
    plans = [_plan_or_refuse(lambda c=c, r=r, i=i: c.plan_finalize(
        key, i, config.collateral.finalize_gas, f"finalize reclaim #{i} at validator {r.validator}"))
        for c, (r, i) in zip(contracts, chosen)]
    receipts = _send(args, plans, contracts, key)
    for contract, (row, reclaim_id), receipt in zip(contracts, chosen, receipts):
        paid = contract.events(receipt, "Reclaimed")
        if paid:
            print(f"reclaim #{reclaim_id}: {format_tao(int(paid[0]['amount']))} TAO paid back to {key.address}")
        else:
            print(f"reclaim #{reclaim_id}: finalized, but nothing was paid (a slash left less than the amount)")
    for line in waiting:
        print(line)
    return 0
