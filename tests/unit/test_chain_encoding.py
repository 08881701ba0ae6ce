"""The miner's three chain writes, SCALE-encoded against recorded subtensor runtime metadata.

What this proves (docs/chain.md, "What is tested without a chain"): for the runtime in
tests/data/subtensor-metadata.hex (spec 343),
* the argument dicts the miner builds (`serve_axon_params`, `commitment_info`,
  `associate_evm_key_params`) name exactly the call's arguments, in order, with values of the
  argument types the metadata declares;
* the call bytes the miner would sign are what the SDK composes on its real path
  (BittensorChain -> Client.submit_call -> RpcSubstrate.compose -> the SDK's Rust codec); the only
  stand-in is the connection's "which metadata" lookup, answered with the recorded metadata, and the
  submit, which records the composed call instead of signing it;
* an independent encoder (scalecodec, from the same metadata) and a hand-written layout give the
  same bytes.

Not proven: that today's chain still runs this runtime, or that it accepts the signed extrinsic
(registration, rate limits, fees); those need a live chain.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import bittensor as bt
import pytest
from bittensor._transport.codec import RuntimeCodec
from bittensor_wallet import Keypair
from scalecodec.base import RuntimeConfigurationObject, ScaleBytes
from scalecodec.type_registry import load_type_registry_preset

from miner_agent.chain.bittensor_backend import (
    BittensorChain,
    associate_evm_key_params,
    commitment_info,
    serve_axon_params,
)
from miner_agent.chain.commitment import MAX_COMMITMENT_BYTES

METADATA_FILE = Path(__file__).resolve().parent.parent / "data" / "subtensor-metadata.hex"
METADATA_SHA256 = "766458bb64e9e5b771576af92deb980b791b55d7f669b1c4845b6acacffab31a"  # tests/data/README.md
SPEC_VERSION = 343
MINER = Keypair.create_from_uri("//Bob")
NETUID = 12
EVM = "0xf24FF3a9CF04c71Dbc94D0b566f7A27B94566cac"
SIGNATURE = bytes(range(65))
BLOCK = 5_199_990
TEXT = "contact<M:A3;S2>"


class Scale:
    """scalecodec's view of the metadata: the independent encoder and the type registry."""

    def __init__(self, metadata_hex: str) -> None:
        self.rc = RuntimeConfigurationObject()
        self.rc.update_type_registry(load_type_registry_preset("core"))
        self.metadata = self.rc.create_scale_object("MetadataVersioned", data=ScaleBytes(metadata_hex))
        self.metadata.decode()
        self.rc.add_portable_registry(self.metadata)
        self.types = {t["id"]: t["type"] for t in self.metadata.portable_registry.value["types"]}

    def call(self, pallet: str, function: str) -> tuple[int, dict[str, Any]]:
        """(pallet index, the call's metadata: name, index, fields)."""
        found = self.metadata.get_metadata_pallet(pallet)
        for call in found.calls:
            if call.name == function:
                return found["index"].value, call.value
        raise AssertionError(f"{pallet}.{function} is not in the metadata")

    def resolve(self, type_id: int) -> str:
        """A type as text down to primitives: newtypes (one unnamed field) are seen through."""
        spec = self.types[type_id]["def"]
        if "primitive" in spec:
            return spec["primitive"]
        if "array" in spec:
            return f"[{self.resolve(spec['array']['type'])}; {spec['array']['len']}]"
        fields = spec.get("composite", {}).get("fields", [])
        if len(fields) == 1 and fields[0]["name"] is None:
            return self.resolve(fields[0]["type"])
        return "/".join(self.types[type_id]["path"]) or str(spec)

    def encode(self, pallet: str, function: str, args: dict[str, Any]) -> bytes:
        call = self.rc.create_scale_object("Call", metadata=self.metadata)
        spelled = scalecodec_spelling(args)
        return bytes(call.encode({"call_module": pallet, "call_function": function, "call_args": spelled}).data)

    def decode(self, data: bytes) -> dict[str, Any]:
        call = self.rc.create_scale_object("Call", data=ScaleBytes(data), metadata=self.metadata)
        value = call.decode()
        return {arg["name"]: arg["value"] for arg in value["call_args"]}


def scalecodec_spelling(args: dict[str, Any]) -> dict[str, Any]:
    """The miner's argument values as scalecodec spells them; the values (and bytes) are the same.
    scalecodec reads BoundedVec<Data> as a tuple struct of one Vec, so `fields` is wrapped once."""
    spelled = hexed(args)
    if "info" in spelled:
        spelled["info"] = {"fields": [spelled["info"]["fields"]]}
    return spelled


def hexed(value: Any) -> Any:
    """scalecodec takes byte arrays as 0x-hex text; the SDK takes bytes. Same bytes, other spelling."""
    if isinstance(value, bytes):
        return "0x" + value.hex()
    if isinstance(value, dict):
        return {k: hexed(v) for k, v in value.items()}
    if isinstance(value, list):
        return [hexed(v) for v in value]
    return value


@pytest.fixture(scope="module")
def metadata_hex() -> str:
    return METADATA_FILE.read_text().strip()


@pytest.fixture(scope="module")
def scale(metadata_hex: str) -> Scale:
    return Scale(metadata_hex)  # ~2 s: once per module


@pytest.fixture(scope="module")
def codec(metadata_hex: str) -> RuntimeCodec:
    return RuntimeCodec(bytes.fromhex(metadata_hex.removeprefix("0x")), spec_version=SPEC_VERSION, transaction_version=1)


class RecordedMetadataConnection:
    """Stands in for the SDK's websocket connection in its one job here: composing a call with the
    codec of the chain head's runtime (SubstrateConnection.compose_call), which is the recorded one."""

    def __init__(self, codec: RuntimeCodec) -> None:
        self.codec = codec

    async def initialize(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def compose_call(self, call_module: str, call_function: str, call_params: dict | None = None,
                           block_hash: str | None = None) -> Any:
        return self.codec.compose_call(call_module, call_function, call_params or {})


class OfflineRpcSubstrate(bt.RpcSubstrate):
    """The production Substrate, with the connection above and a submit that keeps the composed call."""

    def __init__(self, codec: RuntimeCodec) -> None:
        super().__init__("ws://127.0.0.1:9944")  # never dialled: _interface below replaces the transport
        self.codec = codec
        self.submitted: list[tuple[Any, str]] = []

    def _interface(self, endpoint: str, fallbacks: list[str]) -> Any:
        return RecordedMetadataConnection(self.codec)

    async def submit(self, call: Any, keypair: Any, **kwargs: Any) -> Any:
        self.submitted.append((call, keypair.ss58_address))
        return bt.ExtrinsicResult(success=True, message="recorded, not sent")


async def miner_call_bytes(codec: RuntimeCodec, write: Callable[[BittensorChain], Awaitable[None]]) -> bytes:
    """The call bytes one BittensorChain write hands to the signer."""
    substrate = OfflineRpcSubstrate(codec)
    chain = BittensorChain("ws://127.0.0.1:9944", MINER, substrate=substrate)
    await write(chain)
    await chain.close()
    [(call, signer)] = substrate.submitted
    assert signer == MINER.ss58_address  # signed by the hotkey
    return RuntimeCodec.call_data(call)


# (pallet, call, the miner's arguments, its write, the metadata's (name, type) list, call index)
WRITES = {
    "serve_axon": (
        "SubtensorModule", "serve_axon", serve_axon_params(NETUID, "203.0.113.7", 8000),
        lambda chain: chain.serve_axon(NETUID, "203.0.113.7", 8000),
        [("netuid", "u16"), ("version", "u32"), ("ip", "u128"), ("port", "u16"), ("ip_type", "u8"),
         ("protocol", "u8"), ("placeholder1", "u8"), ("placeholder2", "u8")],
        (7, 4),
    ),
    "set_commitment": (
        "Commitments", "set_commitment", {"netuid": NETUID, "info": commitment_info(TEXT)},
        lambda chain: chain.write_commitment(NETUID, TEXT),
        [("netuid", "u16"), ("info", "pallet_commitments/types/CommitmentInfo")],
        (18, 0),
    ),
    "set_commitment_128_bytes": (
        "Commitments", "set_commitment", {"netuid": NETUID, "info": commitment_info("x" * MAX_COMMITMENT_BYTES)},
        lambda chain: chain.write_commitment(NETUID, "x" * MAX_COMMITMENT_BYTES),
        [("netuid", "u16"), ("info", "pallet_commitments/types/CommitmentInfo")],
        (18, 0),
    ),
    "associate_evm_key": (
        "SubtensorModule", "associate_evm_key", associate_evm_key_params(NETUID, EVM, BLOCK, SIGNATURE),
        lambda chain: chain.associate_evm_key(NETUID, EVM, BLOCK, SIGNATURE),
        [("netuid", "u16"), ("evm_key", "[u8; 20]"), ("block_number", "u64"), ("signature", "[u8; 65]")],
        (7, 93),
    ),
}


def test_the_metadata_is_the_recorded_runtime(metadata_hex: str, codec: RuntimeCodec) -> None:
    assert hashlib.sha256(METADATA_FILE.read_bytes()).hexdigest() == METADATA_SHA256
    assert codec.constant("System", "Version")["spec_version"] == SPEC_VERSION


@pytest.mark.parametrize("case", list(WRITES))
async def test_the_miner_encodes_each_write_as_the_runtime_declares_it(case: str, scale: Scale, codec: RuntimeCodec) -> None:
    pallet, function, args, write, declared, (pallet_index, call_index) = WRITES[case]
    index, call = scale.call(pallet, function)
    assert (index, call["index"]) == (pallet_index, call_index)
    # Names, order and types of the arguments: the metadata's, and the miner's dict matches them.
    assert [(f["name"], scale.resolve(f["type"])) for f in call["fields"]] == declared
    assert list(args) == [name for name, _ in declared]

    sdk_bytes = await miner_call_bytes(codec, write)
    assert sdk_bytes[:2] == bytes([pallet_index, call_index])
    assert sdk_bytes == scale.encode(pallet, function, args)
    assert scale.decode(sdk_bytes) == hexed(args) | (
        {"evm_key": EVM.lower()} if function == "associate_evm_key" else {})


async def test_associate_evm_key_is_the_97_byte_call_the_pallet_decodes(codec: RuntimeCodec) -> None:
    data = await miner_call_bytes(codec, WRITES["associate_evm_key"][3])
    by_hand = (bytes([7, 93]) + struct.pack("<H", NETUID) + bytes.fromhex(EVM[2:]) + struct.pack("<Q", BLOCK)
               + SIGNATURE)
    assert data == by_hand and len(data) == 97 and data.hex().startswith("075d")


async def test_serve_axon_layout_by_hand(codec: RuntimeCodec) -> None:
    data = await miner_call_bytes(codec, WRITES["serve_axon"][3])
    ip = int.from_bytes(bytes([203, 0, 113, 7]), "big")
    assert data == bytes([7, 4]) + struct.pack("<HI", NETUID, 1) + ip.to_bytes(16, "little") + struct.pack("<HBBBB", 8000, 4, 4, 0, 0)


async def test_commitment_is_one_raw_field_of_its_length(scale: Scale, codec: RuntimeCodec) -> None:
    data = await miner_call_bytes(codec, WRITES["set_commitment"][3])
    text = TEXT.encode()
    # netuid, then CommitmentInfo.fields: a compact length of 1 (0x04) and Data::Raw<n> (variant n + 1).
    assert data == bytes([18, 0]) + struct.pack("<H", NETUID) + bytes([0x04, len(text) + 1]) + text

    # The 128-byte cap is the runtime's: Data has Raw0..Raw128 at indexes 1..129 and nothing longer.
    _, call = scale.call("Commitments", "set_commitment")
    info = scale.types[call["fields"][1]["type"]]["def"]["composite"]["fields"]
    assert [f["name"] for f in info] == ["fields"]
    bounded = scale.types[info[0]["type"]]["def"]["composite"]["fields"][0]["type"]
    data_type = scale.types[scale.types[bounded]["def"]["sequence"]["type"]]
    assert data_type["path"][-1] == "Data"
    raw = {v["name"]: v["index"] for v in data_type["def"]["variant"]["variants"] if v["name"].startswith("Raw")}
    assert raw == {f"Raw{n}": n + 1 for n in range(MAX_COMMITMENT_BYTES + 1)}


def test_the_recorded_storage_answers_are_what_the_codec_decodes(codec: RuntimeCodec) -> None:
    """test_chain_bittensor's recording substrate answers reads with hand-written decoded values;
    each is what the SDK's codec decodes from its SCALE bytes, and each key encodes, in this runtime."""
    from tests.unit.test_chain_bittensor import RECORDED_STORAGE

    for (pallet, item, *params), value in RECORDED_STORAGE.items():
        entry = codec.storage_entry(pallet, item)
        assert len(params) == len(entry.param_types), (pallet, item)
        codec.storage_key(entry, params)  # raises when a key part is not of its declared type
        decoded = codec.decode(entry.value_type, codec.encode(entry.value_type, value))
        assert decoded == value, (pallet, item)
