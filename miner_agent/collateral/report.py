"""The collateral report: one row per validator with a permit, saying whether it would keep us.

`collateral_report` is what `miner-agent collateral status`, the running miner's periodic check and
`miner-agent doctor` all read, so the three never disagree. It never raises for a chain or EVM
failure: such a failure becomes `checked=False` (nothing could be read) or one row's `problem`.
"""

from __future__ import annotations

from pydantic import BaseModel, Field

from miner_agent.chain.backend import ChainBackend
from miner_agent.miner_config import MinerConfig


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
    ok: bool = False
    problem: str = ""  # one operator sentence; "" when ok


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


async def collateral_report(config: MinerConfig, chain: ChainBackend) -> CollateralReport:
    """Read every permitted validator's contract and our collateral in it (stub until the EVM side lands)."""
    return CollateralReport(checked=False, reason="collateral check not implemented yet", netuid=config.chain.netuid,
                            threshold_wei=config.collateral.threshold_wei)
