"""The collateral report: one row per validator with a permit, saying whether it would keep us.

`collateral_report` is what `miner-agent collateral status`, the running miner's periodic check and
`miner-agent doctor` all read, so the three never disagree. It never raises for a chain or EVM
failure: such a failure becomes `checked=False` (nothing could be read) or one row's `problem`.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from pydantic import BaseModel, Field

from miner_agent.chain.backend import ChainBackend, ChainError
from miner_agent.miner_config import MinerConfig

log = logging.getLogger(__name__)


class PendingReclaim(BaseModel):
    """One of our reclaims the contract still holds (it counts in `collaterals()` until finalized)."""

    reclaim_id: int
    amount_wei: int
    deny_timeout: int  # unix seconds; finalize works after it, the trustee may deny until it


class CollateralRow(BaseModel):
    """One validator's view of us: `ok` is False when that validator would filter us out."""

    validator: str  # hotkey (SS58)
    contract: str | None = None  # checksummed address from its commitment; None when it publishes none
    our_h160: str | None = None  # the H160 the chain associates with our uid (what the validator reads)
    collateral_wei: int | None = None  # collaterals(our_h160); None when it could not be read
    threshold_wei: int = 0
    pending_reclaims: list[PendingReclaim] = Field(default_factory=list)
    contract_ok: bool = False  # TRUSTEE and NETUID checked: deposits may go there
    ok: bool = False
    problem: str = ""  # one operator sentence; "" when ok (or a warning that does not filter us out)


class CollateralReport(BaseModel):
    """Everything `collateral status` shows; `checked=False` means nothing could be read (`reason`)."""

    checked: bool
    reason: str = ""  # why not checked, e.g. "static chain backend and no [collateral] evm_rpc"
    netuid: int = 0
    hotkey: str = ""
    uid: int | None = None
    associated_h160: str | None = None  # AssociatedEvmAddress(netuid, uid)
    key_h160: str | None = None  # the address of the local EVM key file, when there is one
    evm_balance_wei: int | None = None  # balance of key_h160 (pays deposits and gas)
    threshold_wei: int = 0
    rows: list[CollateralRow] = Field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when checked and no permitted validator would filter us out."""
        return self.checked and all(row.ok for row in self.rows)

    def below_threshold(self) -> list[CollateralRow]:
        return [row for row in self.rows if not row.ok]


def not_checked_reason(config: MinerConfig) -> str:
    """Why the collateral cannot be checked with this config; "" when it can."""
    if config.chain.backend == "static" and not config.collateral.evm_rpc:
        return "static chain backend and no [collateral] evm_rpc"
    if config.collateral.evm_rpc_url(config.chain.network) is None:
        return f"no EVM RPC known for network {config.chain.network!r}; set [collateral] evm_rpc"
    return ""


async def collateral_report(
    config: MinerConfig,
    chain: ChainBackend,
    *,
    w3: Any = None,
    hotkey: str | None = None,
    key_h160: str | None = None,
) -> CollateralReport:
    """Read every permitted validator's contract and our collateral in it.

    `w3` (a web3.Web3) defaults to one for the configured EVM RPC; `hotkey` to the wallet's;
    `key_h160` to the local EVM key file's address when there is one. Chain reads are awaited;
    EVM reads are blocking web3 calls and run in a worker thread, off the event loop.
    """
    settings = config.collateral
    netuid = config.chain.netuid
    report = CollateralReport(checked=False, netuid=netuid, threshold_wei=settings.threshold_wei)
    if w3 is None:
        report.reason = not_checked_reason(config)
        if report.reason:
            return report
        from miner_agent.collateral.contract import connect

        w3 = connect(str(settings.evm_rpc_url(config.chain.network)), settings.rpc_timeout_s)
    if hotkey is None:
        from miner_agent.keys import WalletError, load_hotkey

        try:
            hotkey = load_hotkey(config.wallet.path, config.wallet.name, config.wallet.hotkey).hotkey
        except WalletError as exc:
            report.reason = str(exc)
            return report
    if key_h160 is None:
        key_h160 = _local_key_address(config)
    report.hotkey, report.key_h160 = hotkey, key_h160
    try:
        validators = sorted(await chain.validator_permit_hotkeys(netuid))
        report.uid = await chain.neuron_uid(netuid, hotkey)
        association = None if report.uid is None else await chain.associated_evm_address(netuid, report.uid)
        report.associated_h160 = None if association is None else association[0]
        sides = []
        for validator in validators:
            commitment = await chain.read_commitment(netuid, validator)
            vuid = await chain.neuron_uid(netuid, validator)
            trustee = None if vuid is None else await chain.associated_evm_address(netuid, vuid)
            sides.append((validator, commitment, None if trustee is None else trustee[0]))
    except ChainError as exc:
        report.reason = f"chain not read: {exc}"
        return report
    try:
        await asyncio.to_thread(_evm_side, w3, report, sides, config)
    except Exception as exc:  # connection refused, timeout, garbage from the RPC: one sentence
        report.reason = f"EVM RPC not read: {type(exc).__name__}: {exc}"
        report.rows = []
        return report
    report.checked = True
    return report


def _local_key_address(config: MinerConfig) -> str | None:
    from miner_agent.collateral.keystore import EvmKeyError, key_path, load_evm_key

    try:
        return load_evm_key(key_path(config.wallet)).address
    except EvmKeyError:
        return None


def _evm_side(w3: Any, report: CollateralReport, sides: list[tuple[str, str, str | None]], config: MinerConfig) -> None:
    from miner_agent.collateral.contract import CollateralContract
    from miner_agent.collateral.discovery import parse_contract_address

    settings = config.collateral
    ours = report.associated_h160
    w3.eth.block_number  # reachability first: an RPC that does not answer makes the whole report unchecked
    if report.key_h160:
        report.evm_balance_wei = int(w3.eth.get_balance(report.key_h160))
    for validator, commitment, trustee in sides:
        row = CollateralRow(validator=validator, our_h160=ours, threshold_wei=settings.threshold_wei)
        report.rows.append(row)
        row.contract = parse_contract_address(commitment)
        if row.contract is None:
            row.problem = "the validator publishes no collateral contract in its commitment, so it sees no collateral from anyone"
            continue
        try:
            _fill_row(row, CollateralContract(w3, row.contract), report, trustee, settings)
        except Exception as exc:  # this contract misbehaves; the others are still read
            row.ok, row.problem = False, f"contract {row.contract} not read: {type(exc).__name__}: {exc}"


def _fill_row(row: CollateralRow, contract: Any, report: CollateralReport, trustee: str | None, settings: Any) -> None:
    """One validator's row: contract checks first, then our collateral and pending reclaims in it."""
    from miner_agent.collateral.contract import format_tao
    from miner_agent.collateral.discovery import contract_problem

    ours = report.associated_h160
    row.problem = contract_problem(contract, report.netuid, row.validator, trustee)
    if row.problem:
        return
    row.contract_ok = True
    if report.uid is None:
        row.problem = f"our hotkey {report.hotkey} is not registered on netuid {report.netuid}"
        return
    if report.uid == 0:
        row.problem = "validators skip uid 0 when they read collateral; nothing can make it count"
        return
    if ours is None:
        row.problem = "our uid has no associated EVM address; run `miner-agent collateral associate`"
        return
    row.collateral_wei = contract.collateral_of(ours)
    row.ok = row.collateral_wei >= settings.threshold_wei
    try:
        row.pending_reclaims = contract.pending_reclaims(ours, settings.reclaim_lookback_blocks)
    except Exception as exc:  # e.g. a node that caps eth_getLogs ranges: the collateral itself is still known
        log.debug("pending reclaims not read contract=%s error=%r", contract.address, exc)
        if row.ok:
            row.problem = (f"pending reclaims not read ({type(exc).__name__}); lower [collateral] "
                           f"reclaim_lookback_blocks if the EVM RPC limits log queries")
            return
    if not row.ok:
        missing = settings.threshold_wei - row.collateral_wei
        row.problem = (f"collateral {format_tao(row.collateral_wei)} TAO is below the threshold "
                       f"{format_tao(settings.threshold_wei)} TAO; deposit at least {format_tao(missing)} TAO more")
        return
    after = row.collateral_wei - sum(r.amount_wei for r in row.pending_reclaims)
    if row.pending_reclaims and after < settings.threshold_wei:
        row.problem = f"pending reclaims will leave {format_tao(after)} TAO when finalized, below the threshold"
