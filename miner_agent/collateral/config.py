"""The `[collateral]` section of miner-agent.toml: where the EVM is, what counts as enough, how often to look.

Kept apart from miner_config.py so the section and its defaults live beside the code that reads
them. Nothing here imports web3: the config is loaded by every `miner-agent` command.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator

# The validators' DYNAMIC_MINIMUM_COLLATERAL_AMOUNT_WEI default: 0.01 TAO (collateral.md §1).
DEFAULT_THRESHOLD_WEI = 10**16
# The validators' sync_collaterals period: checking more often shows nothing new (collateral.md §1).
DEFAULT_CHECK_PERIOD_S = 10 * 60.0
# Stock gas limits (collateral.md §5): deposit and finalize 100k, reclaim 200k (long URLs need more).
DEFAULT_DEPOSIT_GAS = 100_000
DEFAULT_RECLAIM_GAS = 200_000
DEFAULT_FINALIZE_GAS = 100_000
# How far back `status` looks for our ReclaimProcessStarted events: 7 days of 12 s blocks, longer
# than the 5-day deny window the stock deployment script sets, so no pending reclaim is missed.
DEFAULT_RECLAIM_LOOKBACK_BLOCKS = 7 * 24 * 3600 // 12
# How long one EVM JSON-RPC request may take before the check gives up on it.
DEFAULT_RPC_TIMEOUT_S = 20.0

# The EVM JSON-RPC endpoint per [chain] network, as the stock collateral scripts use them
# (collateral.md §3); a ws:// network is its own EVM endpoint (the validator sends EVM RPC there).
EVM_RPC_BY_NETWORK = {
    "finney": "https://lite.chain.opentensor.ai",
    "test": "https://test.chain.opentensor.ai",
    "local": "ws://127.0.0.1:9944",
}


class CollateralSection(BaseModel):
    """How the miner reads and moves its collateral (docs/collateral.md)."""

    model_config = ConfigDict(extra="forbid")

    # EVM JSON-RPC URL (http(s):// or ws(s)://); unset = derived from [chain] network (evm_rpc_url()).
    evm_rpc: str | None = None
    # A validator keeps us only with at least this much in its contract; we cannot read its own value.
    threshold_wei: int = Field(DEFAULT_THRESHOLD_WEI, ge=0)
    # The running miner re-reads collateral this often; 0 turns the periodic check off.
    check_period_s: float = Field(DEFAULT_CHECK_PERIOD_S, ge=0)
    deposit_gas: int = Field(DEFAULT_DEPOSIT_GAS, ge=21_000)
    reclaim_gas: int = Field(DEFAULT_RECLAIM_GAS, ge=21_000)
    finalize_gas: int = Field(DEFAULT_FINALIZE_GAS, ge=21_000)
    reclaim_lookback_blocks: int = Field(DEFAULT_RECLAIM_LOOKBACK_BLOCKS, ge=1)
    rpc_timeout_s: float = Field(DEFAULT_RPC_TIMEOUT_S, gt=0)

    @field_validator("evm_rpc")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://", "ws://", "wss://")):
            raise ValueError(f"evm_rpc {value!r} must start with http://, https://, ws:// or wss://")
        return value

    def evm_rpc_url(self, network: str) -> str | None:
        """The configured URL, else the one for `network`; None when there is no known one."""
        if self.evm_rpc:
            return self.evm_rpc
        if network.startswith(("ws://", "wss://")):
            return network
        return EVM_RPC_BY_NETWORK.get(network)
