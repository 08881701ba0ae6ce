"""BittensorChain without a chain: the SDK runs for real down to its `Substrate` seam, where an
in-memory substrate records the requests and answers with recorded decoded values."""

from __future__ import annotations

import ipaddress
import socket
import subprocess
import sys
from typing import Any

import pytest

bt = pytest.importorskip("bittensor")

from bittensor_wallet import Keypair  # noqa: E402

from miner_agent.chain.backend import ChainRejected, ChainUnavailable  # noqa: E402
from miner_agent.chain.bittensor_backend import (  # noqa: E402
    BittensorChain,
    associate_evm_key_params,
    commitment_info,
    serve_axon_params,
)

MINER = Keypair.create_from_uri("//Bob")
ALICE = "5GrwvaEF5zXb26Fz9rcQpDWS57CtERHpNehXCPcNoHGKutQY"
CHARLIE = "5FLSigC9HGRKVhB9FiEo4Y3koPsNmBmLJbpXg2mp1hXcS59Y"
DAVE = "5DAAnrj7VHTznn2AWBemMuyBwZWs6FNFjdyVXUeYum3PTXFy"


@pytest.fixture(autouse=True)
def _loopback_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test here may reach anything but loopback (there is no chain)."""
    real_connect = socket.socket.connect

    def guarded(self: socket.socket, address: Any) -> Any:
        host = address[0] if isinstance(address, tuple) else None
        if host is not None and not ipaddress.ip_address(host).is_loopback:
            raise AssertionError(f"test tried to connect to {address}")
        return real_connect(self, address)

    monkeypatch.setattr(socket.socket, "connect", guarded)


def neuron(uid: int, hotkey: str, permit: bool) -> dict[str, Any]:
    """One decoded NeuronInfoRuntimeApi.get_neurons_lite record, as the codec hands it over."""
    return {
        "hotkey": hotkey, "coldkey": CHARLIE, "uid": uid, "netuid": 12, "active": True,
        "axon_info": {"block": 1, "version": 1, "ip": 0, "port": 0, "ip_type": 4, "protocol": 4,
                      "placeholder1": 0, "placeholder2": 0},
        "prometheus_info": {"block": 0, "version": 0, "ip": 0, "port": 0, "ip_type": 0},
        "stake": [[CHARLIE, 1_000_000_000]], "rank": 0, "emission": 0, "incentive": 0, "consensus": 0,
        "trust": 0, "validator_trust": 0, "dividends": 0, "last_update": 5_000_000,
        "validator_permit": permit, "pruning_score": 65535,
    }


# CommitmentOf(12, <hotkey>) as decoded from a live node: one Raw field, hex payload.
RECORDED_COMMITMENT = {"block": 5_123_456, "deposit": 0,
                       "info": {"fields": [{"Raw16": "0x" + b"contact<M:A1;S2>".hex()}]}}
EVM = "0xf24FF3a9CF04c71Dbc94D0b566f7A27B94566cac"  # collateral.md's example H160 (EIP-55 checksummed)
# Storage values in the shape the SDK's codec decodes them to (checked against the recorded runtime
# metadata: Uids u16, Axons AxonInfo, Timestamp.Now u64 ms, AssociatedEvmAddress (H160, u64)).
RECORDED_STORAGE: dict[tuple, Any] = {
    ("SubtensorModule", "Uids", 12, MINER.ss58_address): 7,
    ("SubtensorModule", "Axons", 12, MINER.ss58_address): {
        "block": 5_100_000, "version": 1, "ip": 3405803783, "port": 8000, "ip_type": 4, "protocol": 4,
        "placeholder1": 0, "placeholder2": 0},
    ("SubtensorModule", "Axons", 12, ALICE): {  # registered, never served: the chain's zeroed default
        "block": 0, "version": 0, "ip": 0, "port": 0, "ip_type": 0, "protocol": 0,
        "placeholder1": 0, "placeholder2": 0},
    ("Timestamp", "Now"): 1_764_626_400_500,
    ("SubtensorModule", "AssociatedEvmAddress", 12, 7): (EVM.lower(), 5_150_000),
}


class RecordingSubstrate:
    """The part of bittensor's `Substrate` contract BittensorChain reaches; records every request."""

    def __init__(self) -> None:
        self.token_symbols: dict[int, str] = {}
        self.requests: list[tuple] = []
        self.connects = 0
        self.closes = 0
        self.neurons = [neuron(0, ALICE, True), neuron(1, MINER.ss58_address, False), neuron(2, DAVE, True)]
        self.commitment: dict[str, Any] | None = RECORDED_COMMITMENT
        self.storage = dict(RECORDED_STORAGE)
        self.submit_result = bt.ExtrinsicResult(success=True, message="included")
        self.fail_next: Exception | None = None

    def balance(self, rao: int, netuid: int = 0) -> Any:
        return bt.Balance(rao, netuid)

    async def connect(self) -> None:
        self.connects += 1

    async def close(self) -> None:
        self.closes += 1

    def _maybe_fail(self) -> None:
        if self.fail_next is not None:
            exc, self.fail_next = self.fail_next, None
            raise exc

    async def block_number(self) -> int:
        self._maybe_fail()
        self.requests.append(("block_number",))
        return 5_200_000

    async def runtime_call(self, api: str, method: str, params: list, block_hash: str | None = None) -> Any:
        self._maybe_fail()
        self.requests.append(("runtime_call", api, method, params))
        return self.neurons

    async def query(self, module: str, item: str, params: list | None = None, block_hash: str | None = None) -> Any:
        self._maybe_fail()
        self.requests.append(("query", module, item, params))
        if (module, item) == ("Commitments", "CommitmentOf"):
            return self.commitment
        return self.storage.get((module, item, *(params or [])))  # an unset Optional item decodes to None

    async def compose(self, call: Any) -> Any:
        self.requests.append(("compose", call.module, call.function, call.params))
        return ("composed", call)

    async def submit(self, call: Any, keypair: Any, **kwargs: Any) -> Any:
        self._maybe_fail()
        self.requests.append(("submit", call, keypair.ss58_address, kwargs))
        return self.submit_result


@pytest.fixture
def sub() -> RecordingSubstrate:
    return RecordingSubstrate()


@pytest.fixture
def chain(sub: RecordingSubstrate) -> BittensorChain:
    return BittensorChain("finney", MINER, substrate=sub)


async def test_validator_permit_hotkeys_asks_neurons_lite_and_keeps_permits(chain: BittensorChain, sub: RecordingSubstrate) -> None:
    assert await chain.validator_permit_hotkeys(12) == {ALICE, DAVE}
    assert sub.requests == [("runtime_call", "NeuronInfoRuntimeApi", "get_neurons_lite", [12])]
    assert sub.connects == 1


async def test_current_block(chain: BittensorChain, sub: RecordingSubstrate) -> None:
    assert await chain.current_block() == 5_200_000
    await chain.current_block()
    assert sub.connects == 1  # one connection, reused


async def test_read_commitment_decodes_raw_fields(chain: BittensorChain, sub: RecordingSubstrate) -> None:
    assert await chain.read_commitment(12, MINER.ss58_address) == "contact<M:A1;S2>"
    assert sub.requests[-1] == ("query", "Commitments", "CommitmentOf", [12, MINER.ss58_address])
    sub.commitment = None
    assert await chain.read_commitment(12, MINER.ss58_address) == ""


async def test_serve_axon_builds_the_hotkey_signed_extrinsic(chain: BittensorChain, sub: RecordingSubstrate) -> None:
    await chain.serve_axon(12, "203.0.113.7", 8000)
    compose, submit = sub.requests
    assert compose == ("compose", "SubtensorModule", "serve_axon", {
        "netuid": 12, "version": 1, "ip": 3405803783, "port": 8000, "ip_type": 4, "protocol": 4,
        "placeholder1": 0, "placeholder2": 0,
    })
    assert submit[2] == MINER.ss58_address
    assert submit[3]["wait_for_inclusion"] is True and submit[3]["wait_for_finalization"] is False


async def test_write_commitment_sends_one_raw_field(chain: BittensorChain, sub: RecordingSubstrate) -> None:
    await chain.write_commitment(12, "hi<M:S2>")
    assert sub.requests[0] == ("compose", "Commitments", "set_commitment",
                               {"netuid": 12, "info": {"fields": [{"Raw8": b"hi<M:S2>"}]}})
    assert sub.requests[1][2] == MINER.ss58_address


async def test_chain_refusal_is_chain_rejected(chain: BittensorChain, sub: RecordingSubstrate) -> None:
    sub.submit_result = bt.ExtrinsicResult(success=False, message="ServingRateLimitExceeded")
    with pytest.raises(ChainRejected, match="ServingRateLimitExceeded"):
        await chain.serve_axon(12, "203.0.113.7", 8000)


async def test_transport_failure_is_unavailable_and_reconnects(chain: BittensorChain, sub: RecordingSubstrate) -> None:
    await chain.current_block()
    sub.fail_next = bt.RpcConnectionError("connection closed")
    with pytest.raises(ChainUnavailable, match="connection closed"):
        await chain.validator_permit_hotkeys(12)
    assert sub.closes == 1
    assert await chain.validator_permit_hotkeys(12) == {ALICE, DAVE}
    assert sub.connects == 2


async def test_neuron_uid_reads_uids_and_none_when_unregistered(chain: BittensorChain, sub: RecordingSubstrate) -> None:
    assert await chain.neuron_uid(12, MINER.ss58_address) == 7
    assert sub.requests[-1] == ("query", "SubtensorModule", "Uids", [12, MINER.ss58_address])
    assert await chain.neuron_uid(12, DAVE) is None


async def test_read_axon_gives_ip_text_and_port_and_none_before_serving(chain: BittensorChain, sub: RecordingSubstrate) -> None:
    assert await chain.read_axon(12, MINER.ss58_address) == ("203.0.113.7", 8000)
    assert sub.requests[-1] == ("query", "SubtensorModule", "Axons", [12, MINER.ss58_address])
    assert await chain.read_axon(12, ALICE) is None  # zeroed AxonInfo
    assert await chain.read_axon(12, DAVE) is None  # no entry at all


async def test_block_timestamp_is_timestamp_now_in_seconds(chain: BittensorChain, sub: RecordingSubstrate) -> None:
    assert await chain.block_timestamp() == 1_764_626_400.5
    assert sub.requests[-1] == ("query", "Timestamp", "Now", None)


async def test_associated_evm_address_is_checksummed_with_its_block(chain: BittensorChain, sub: RecordingSubstrate) -> None:
    assert await chain.associated_evm_address(12, 7) == (EVM, 5_150_000)
    assert sub.requests[-1] == ("query", "SubtensorModule", "AssociatedEvmAddress", [12, 7])
    assert await chain.associated_evm_address(12, 8) is None


async def test_associate_evm_key_is_the_hotkey_signed_extrinsic(chain: BittensorChain, sub: RecordingSubstrate) -> None:
    signature = bytes(range(65))
    await chain.associate_evm_key(12, EVM, 5_199_990, signature)
    compose, submit = sub.requests
    assert compose == ("compose", "SubtensorModule", "associate_evm_key", {
        "netuid": 12, "evm_key": EVM.lower(), "block_number": 5_199_990, "signature": signature})
    assert submit[2] == MINER.ss58_address
    assert submit[3]["wait_for_inclusion"] is True


async def test_associate_rate_limit_says_so_and_when(chain: BittensorChain, sub: RecordingSubstrate) -> None:
    # As RpcSubstrate reports a dispatch error: the docs in `message`, the name in `error.name`.
    docs = "The EVM key association rate limit has been exceeded."
    sub.submit_result = bt.ExtrinsicResult(success=False, message=docs,
                                           error=bt.ChainError(docs, "EvmKeyAssociateRateLimitExceeded"))
    with pytest.raises(ChainRejected, match="rate-limited.*7200 blocks"):
        await chain.associate_evm_key(12, EVM, 5_199_990, bytes(65))


async def test_refusal_names_the_chain_error_when_the_docs_do_not(chain: BittensorChain, sub: RecordingSubstrate) -> None:
    sub.submit_result = bt.ExtrinsicResult(success=False, message="The hotkey is not registered in the subnet.",
                                           error=bt.ChainError("x", "HotKeyNotRegisteredInSubNet"))
    with pytest.raises(ChainRejected, match="chain refused: HotKeyNotRegisteredInSubNet: The hotkey is not registered"):
        await chain.associate_evm_key(12, EVM, 5_199_990, bytes(65))


def test_bad_association_arguments_never_reach_the_chain() -> None:
    for evm, block, sig in [("f24FF3a9CF04c71Dbc94D0b566f7A27B94566cac", 1, bytes(65)),  # no 0x
                            (EVM[:-1], 1, bytes(65)), (EVM[:-1] + "g", 1, bytes(65)),
                            (EVM, -1, bytes(65)), (EVM, 2**64, bytes(65)), (EVM, 1, bytes(64))]:
        with pytest.raises(ChainRejected):
            associate_evm_key_params(12, evm, block, sig)


def test_bad_axon_address_never_reaches_the_chain() -> None:
    for ip in ("auto", "0.0.0.0", "2001:db8::1", "10.0.0.300"):
        with pytest.raises(ChainRejected):
            serve_axon_params(12, ip, 8000)
    with pytest.raises(ChainRejected):
        serve_axon_params(12, "203.0.113.7", 0)


def test_commitment_over_128_bytes_is_refused() -> None:
    assert commitment_info("x" * 128)["fields"][0].keys() == {"Raw128"}
    with pytest.raises(ChainRejected):
        commitment_info("x" * 129)


async def test_rpc_backend_is_built_for_the_configured_network(monkeypatch: pytest.MonkeyPatch) -> None:
    built: list[tuple[str, dict[str, Any]]] = []

    class NoNetworkRpc(RecordingSubstrate):
        def __init__(self, endpoint: str, **kwargs: Any) -> None:
            super().__init__()
            built.append((endpoint, kwargs))

    monkeypatch.setattr(bt, "RpcSubstrate", NoNetworkRpc)
    chain = BittensorChain("finney", MINER)
    assert await chain.current_block() == 5_200_000
    endpoint, kwargs = built[0]
    assert endpoint == "wss://entrypoint-finney.opentensor.ai:443"
    assert kwargs["archive_endpoints"] == [] and endpoint not in kwargs["fallback_endpoints"]
    chain = BittensorChain("ws://127.0.0.1:9944", MINER)
    await chain.current_block()
    assert built[1][0] == "ws://127.0.0.1:9944"


async def test_unknown_network_is_unavailable_not_a_crash() -> None:
    with pytest.raises(ChainUnavailable, match="nowhere"):
        await BittensorChain("nowhere", MINER).current_block()


def test_importing_the_chain_package_does_not_import_bittensor() -> None:
    code = "import sys, miner_agent.chain, miner_agent.chain.bittensor_backend; print('bittensor' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
