"""One validator's collateral contract over web3: its reads, and our three transactions.

Transactions are planned first (value, gas limit, gas price: what the operator confirms), checked
with an eth_call so a revert shows its sentence before any gas is spent, then signed with the EVM
key and sent as legacy transactions (gasPrice = eth_gasPrice), as the stock scripts do.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from typing import Any

from miner_agent.collateral.errors import explain
from miner_agent.collateral.keystore import EvmKey
from miner_agent.collateral.report import PendingReclaim

ABI_FILE = "collateral_abi.json"
RECEIPT_TIMEOUT_S = 120.0  # ten 12 s blocks: a transaction not mined by then is reported, not waited on
ZERO_MD5 = b"\x00" * 16  # reclaim without a justification document (collateral.md §3 step 7)
WEI_PER_TAO = 10**18


class EvmUnavailable(Exception):
    """The EVM JSON-RPC endpoint could not be reached or did not answer."""


class ContractRefused(Exception):
    """The contract (or the chain) refused a call; the message is the operator's sentence."""


@cache
def collateral_abi() -> list[dict[str, Any]]:
    """The validators' collateral ABI the miner ships (functions, events, errors; collateral.md §2)."""
    return json.loads(resources.files("miner_agent.collateral").joinpath(ABI_FILE).read_text())


def connect(url: str, timeout_s: float):  # noqa: ANN201 - web3.Web3, imported lazily
    """A synchronous Web3 for an http(s):// or ws(s):// JSON-RPC URL."""
    from web3 import Web3

    if url.startswith(("ws://", "wss://")):
        return Web3(Web3.LegacyWebSocketProvider(url, websocket_timeout=timeout_s))
    return Web3(Web3.HTTPProvider(url, request_kwargs={"timeout": timeout_s}))


def format_tao(wei: int) -> str:
    """Wei as TAO for people: up to 9 decimals (rao precision), trailing zeros dropped."""
    whole, frac = divmod(wei, WEI_PER_TAO)
    text = f"{whole}.{frac:018d}"[: len(str(whole)) + 10].rstrip("0").rstrip(".")
    return text + ("…" if frac % 10**9 else "")


@dataclass
class TxPlan:
    """A transaction ready to confirm and send: what it does and what it may cost."""

    action: str  # "deposit" | "reclaim" | "finalize"
    contract: str
    value_wei: int
    gas: int
    gas_price_wei: int
    tx: dict[str, Any] = field(repr=False)
    description: str = ""

    @property
    def max_fee_wei(self) -> int:
        return self.gas * self.gas_price_wei

    def summary(self) -> str:
        value = f"  value {format_tao(self.value_wei)} TAO ({self.value_wei} wei)" if self.value_wei else ""
        return (f"{self.description}\n  contract {self.contract}{value}  gas limit {self.gas} at "
                f"{self.gas_price_wei / 1e9:g} gwei = at most {format_tao(self.max_fee_wei)} TAO")


class CollateralContract:
    def __init__(self, w3: Any, address: str) -> None:
        self.w3 = w3
        self.address = w3.to_checksum_address(address)
        self.contract = w3.eth.contract(address=self.address, abi=collateral_abi())

    # Reads ---------------------------------------------------------------------------------------

    def has_code(self) -> bool:
        return len(self.w3.eth.get_code(self.address)) > 0

    def netuid(self) -> int:
        return int(self.contract.functions.NETUID().call())

    def trustee(self) -> str:
        return str(self.contract.functions.TRUSTEE().call())

    def min_collateral_increase(self) -> int:
        return int(self.contract.functions.MIN_COLLATERAL_INCREASE().call())

    def decision_timeout_s(self) -> int:
        return int(self.contract.functions.DECISION_TIMEOUT().call())

    def collateral_of(self, address: str) -> int:
        return int(self.contract.functions.collaterals(self.w3.to_checksum_address(address)).call())

    def pending_reclaims(self, address: str, lookback_blocks: int) -> list[PendingReclaim]:
        """Our reclaims still held by the contract: found through our ReclaimProcessStarted events,
        kept while reclaims(id) still names us (finalize and deny delete the entry)."""
        owner = self.w3.to_checksum_address(address)
        head = self.w3.eth.block_number
        logs = self.contract.events.ReclaimProcessStarted().get_logs(
            from_block=max(0, head - lookback_blocks), to_block=head, argument_filters={"account": owner})
        pending = []
        for entry in logs:
            reclaim_id = int(entry["args"]["reclaimRequestId"])
            miner, amount, deny_timeout = self.contract.functions.reclaims(reclaim_id).call()
            if amount and str(miner).lower() == owner.lower():
                pending.append(PendingReclaim(reclaim_id=reclaim_id, amount_wei=int(amount), deny_timeout=int(deny_timeout)))
        return pending

    # Transactions ----------------------------------------------------------------------------------

    def plan_deposit(self, key: EvmKey, value_wei: int, gas: int, description: str = "") -> TxPlan:
        return self._plan("deposit", self.contract.functions.deposit(), key, value_wei, gas, description)

    def plan_reclaim(self, key: EvmKey, amount_wei: int, gas: int, url: str = "", md5: bytes = ZERO_MD5,
                     description: str = "") -> TxPlan:
        fn = self.contract.functions.reclaimCollateral(amount_wei, url, md5)
        return self._plan("reclaim", fn, key, 0, gas, description)

    def plan_finalize(self, key: EvmKey, reclaim_id: int, gas: int, description: str = "") -> TxPlan:
        return self._plan("finalize", self.contract.functions.finalizeReclaim(reclaim_id), key, 0, gas, description)

    def _plan(self, action: str, fn: Any, key: EvmKey, value_wei: int, gas: int, description: str) -> TxPlan:
        sender = {"from": key.address, "value": value_wei}
        try:
            fn.call(sender)  # the contract's rules, checked for free before anything is signed
        except Exception as exc:
            if _is_connection_error(exc):
                raise EvmUnavailable(f"EVM RPC did not answer: {exc}") from None
            raise ContractRefused(explain(exc)) from None
        gas_price = int(self.w3.eth.gas_price)
        tx = fn.build_transaction({
            **sender, "gas": gas, "gasPrice": gas_price, "chainId": int(self.w3.eth.chain_id),
            "nonce": self.w3.eth.get_transaction_count(key.address, "pending"),
        })
        return TxPlan(action, self.address, value_wei, gas, gas_price, tx, description or action)

    def send(self, plan: TxPlan, key: EvmKey) -> Any:
        """Sign, send and wait for the receipt; a reverted transaction raises ContractRefused."""
        # The nonce is read again now: plans for several contracts are all made before the first is sent.
        tx = {**plan.tx, "nonce": self.w3.eth.get_transaction_count(key.address, "pending")}
        signed = self.w3.eth.account.sign_transaction(tx, key.private_key)
        tx_hash = self.w3.eth.send_raw_transaction(signed.raw_transaction)
        receipt = self.w3.eth.wait_for_transaction_receipt(tx_hash, timeout=RECEIPT_TIMEOUT_S)
        if receipt["status"] != 1:
            raise ContractRefused(
                f"transaction 0x{bytes(tx_hash).hex()} reverted on chain after using {receipt['gasUsed']} gas; "
                f"if it used the whole limit ({plan.gas}), raise the gas in [collateral]")
        return receipt

    def events(self, receipt: Any, name: str) -> list[dict[str, Any]]:
        from web3.logs import DISCARD

        return [dict(e["args"]) for e in getattr(self.contract.events, name)().process_receipt(receipt, errors=DISCARD)]


def _is_connection_error(exc: BaseException) -> bool:
    import requests

    return isinstance(exc, (requests.exceptions.ConnectionError, requests.exceptions.Timeout, ConnectionError, TimeoutError))
