"""The real chain: subtensor through the bittensor SDK (11.x, the bittensor-core rewrite).

`bittensor` is imported inside `_client()` only, so a miner in static mode never pays for the
import (or needs the package installed). Every read and write goes through the SDK's `Client`
on top of a `Substrate`: the SDK's own seam between its typed layer and the websocket RPC
transport. Production uses `bittensor.RpcSubstrate`; tests pass an in-memory substrate that
returns recorded decoded values, so request building and response parsing are exercised here
without a chain.

Calls used (SDK name -> chain):
  neurons.neurons(netuid)        -> runtime API NeuronInfoRuntimeApi.get_neurons_lite(netuid)
  block()                        -> chain head number
  identity.commitment(netuid, hk)-> storage Commitments.CommitmentOf(netuid, hotkey)
  neurons.uid(hk, netuid)        -> storage SubtensorModule.Uids(netuid, hotkey)
  query(Axons, [netuid, hk])     -> storage SubtensorModule.Axons(netuid, hotkey)
  timestamp()                    -> storage Timestamp.Now (milliseconds)
  neurons.associated_evm_key(..) -> storage SubtensorModule.AssociatedEvmAddress(netuid, uid)
  submit_call(serve_axon)        -> extrinsic SubtensorModule.serve_axon, signed by the hotkey
  submit_call(set_commitment)    -> extrinsic Commitments.set_commitment, signed by the hotkey
  submit_call(associate_evm_key) -> extrinsic SubtensorModule.associate_evm_key, signed by the hotkey

The argument dicts of the three extrinsics come from `serve_axon_params`, `commitment_info` and
`associate_evm_key_params`; tests/unit/test_chain_encoding.py encodes them with the SDK's codec
against recorded runtime metadata and checks the bytes with scalecodec.
"""

from __future__ import annotations

import asyncio
import importlib
import ipaddress
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from miner_agent.chain.backend import ChainError, ChainRejected, ChainUnavailable
from miner_agent.chain.commitment import MAX_COMMITMENT_BYTES

log = logging.getLogger(__name__)

READ_TIMEOUT_S = 60.0  # neurons_lite of a full subnet is the largest read (a few hundred KiB)
WRITE_TIMEOUT_S = 120.0  # submit + wait for inclusion: normally one or two 12 s blocks
AXON_PROTOCOL = 4  # the value bittensor's own axon has always served with
AXON_VERSION = 1  # free-form on chain; validators do not read it
IP_TYPE_V4 = 4
# subtensor's EvmKeyAssociateRateLimit on finney: one association per uid per 7200 blocks (~24 h
# at 12 s blocks); fast-blocks local chains use 1. Not a runtime constant, so it is named here.
EVM_ASSOCIATE_RATE_LIMIT_BLOCKS = 7200
EVM_SIGNATURE_BYTES = 65  # r || s || v, as eth-account signs
U64_MAX = 2**64 - 1
U16_MAX = 2**16 - 1
# Chain error names whose generic text would not tell the operator what to do next.
RATE_LIMITED_ERRORS = {
    "EvmKeyAssociateRateLimitExceeded": (
        f"rate-limited (EvmKeyAssociateRateLimitExceeded): the chain takes one EVM key association per uid "
        f"every {EVM_ASSOCIATE_RATE_LIMIT_BLOCKS} blocks (about 24 h on finney); retry "
        f"{EVM_ASSOCIATE_RATE_LIMIT_BLOCKS} blocks after the block AssociatedEvmAddress records"
    ),
}


def serve_axon_params(netuid: int, ip: str, port: int) -> dict[str, int]:
    """Arguments of SubtensorModule.serve_axon for an IPv4 axon (validators require IPv4)."""
    try:
        address = ipaddress.IPv4Address(ip)
    except ValueError:
        raise ChainRejected(f"serve_axon: {ip!r} is not an IPv4 address; set [chain] announce_ip") from None
    if address.is_unspecified:
        raise ChainRejected("serve_axon: 0.0.0.0 tells validators we are not serving; set [chain] announce_ip")
    if not 1 <= port <= 65535:
        raise ChainRejected(f"serve_axon: port {port} is outside 1..65535")
    return {
        "netuid": netuid,
        "version": AXON_VERSION,
        "ip": int(address),
        "port": port,
        "ip_type": IP_TYPE_V4,
        "protocol": AXON_PROTOCOL,
        "placeholder1": 0,
        "placeholder2": 0,
    }


def commitment_info(text: str) -> dict[str, Any]:
    """`CommitmentInfo` for set_commitment: one `Raw<n>` field holding the UTF-8 bytes.

    The shape mirrors what the chain returns for CommitmentOf (`{"fields": [{"Raw4": "0x..."}]}`);
    Raw0..Raw128 are the Data variants, hence the 128-byte cap.
    """
    data = text.encode("utf-8")
    if len(data) > MAX_COMMITMENT_BYTES:
        raise ChainRejected(f"commitment is {len(data)} bytes; the chain takes at most {MAX_COMMITMENT_BYTES}")
    return {"fields": [{f"Raw{len(data)}": data}]}


def associate_evm_key_params(netuid: int, evm_address: str, block_number: int, signature: bytes) -> dict[str, Any]:
    """Arguments of SubtensorModule.associate_evm_key (netuid u16, evm_key H160, block_number u64,
    signature [u8; 65]). Checked here so a malformed value is refused before a fee-free but
    rate-limited call is spent on it."""
    if not 0 <= netuid <= U16_MAX:
        raise ChainRejected(f"associate_evm_key: netuid {netuid} is outside 0..{U16_MAX}")
    hex_part = evm_address[2:] if evm_address[:2] in ("0x", "0X") else ""
    try:
        valid = len(hex_part) == 40 and len(bytes.fromhex(hex_part)) == 20
    except ValueError:
        valid = False
    if not valid:
        raise ChainRejected(f"associate_evm_key: {evm_address!r} is not an H160 address (0x and 40 hex digits)")
    if not 0 <= block_number <= U64_MAX:
        raise ChainRejected(f"associate_evm_key: block number {block_number} does not fit in a u64")
    if len(signature) != EVM_SIGNATURE_BYTES:
        raise ChainRejected(f"associate_evm_key: the EVM signature is {len(signature)} bytes; it must be "
                            f"{EVM_SIGNATURE_BYTES} (r, s, v)")
    return {"netuid": netuid, "evm_key": "0x" + hex_part.lower(), "block_number": block_number,
            "signature": bytes(signature)}


def axon_endpoint(axon: Any) -> tuple[str, int] | None:
    """(address text, port) of a decoded AxonInfo; None for a hotkey that never served (ip or port 0)."""
    if not isinstance(axon, dict):
        return None
    ip, port = int(axon.get("ip") or 0), int(axon.get("port") or 0)
    if ip == 0 or port == 0:
        return None
    if int(axon.get("ip_type") or IP_TYPE_V4) == IP_TYPE_V4:
        return str(ipaddress.IPv4Address(ip)), port
    return str(ipaddress.IPv6Address(ip)), port


class BittensorChain:
    """ChainBackend on subtensor. One connection, opened lazily, dropped after any failure so the
    next period starts from a fresh one (the SDK also rotates endpoints on its own)."""

    def __init__(self, network: str, keypair: Any, *, substrate: Any = None) -> None:
        """`keypair` is the miner hotkey (bittensor_wallet.Keypair satisfies bittensor.Signer);
        `substrate` replaces the RPC backend (tests)."""
        self.network = network
        self._keypair = keypair
        self._substrate_override = substrate
        self._client: Any = None
        self._bt: Any = None

    async def _client_or_connect(self) -> Any:
        if self._client is not None:
            return self._client
        if self._bt is None:  # ~1 s of imports: off the event loop, so validator sessions keep flowing
            self._bt = await asyncio.to_thread(importlib.import_module, "bittensor")
        bt = self._bt
        substrate = self._substrate_override
        if substrate is None:
            from bittensor import settings as bt_settings

            label, endpoint = bt_settings.resolve_endpoint(self.network)
            substrate = bt.RpcSubstrate(
                endpoint,
                fallback_endpoints=bt_settings.default_fallback_endpoints(label),
                archive_endpoints=[],  # we only read the head; pruned state is never needed
            )
        # Not Client.connect(): that also caches token symbols under ~/.bittensor, display-only.
        await substrate.connect()
        self._client = bt.Client(self.network, substrate=substrate)
        log.info("chain connected network=%s", self.network)
        return self._client

    @asynccontextmanager
    async def _guard(self, what: str) -> AsyncIterator[None]:
        """Translate every SDK/transport failure into ChainUnavailable, once, here."""
        try:
            yield
        except ChainError:
            raise
        except asyncio.CancelledError:
            raise
        except (TimeoutError, asyncio.TimeoutError):
            await self.close()
            raise ChainUnavailable(f"{what}: no answer from {self.network} in time") from None
        except ImportError as exc:
            raise ChainUnavailable(f"{what}: bittensor is not installed ({exc}); pip install 'bittensor>=11.3,<12'") from None
        except Exception as exc:  # the SDK raises its own BittensorError tree, websockets and OS errors
            await self.close()
            raise ChainUnavailable(f"{what}: {type(exc).__name__}: {exc}") from None

    async def validator_permit_hotkeys(self, netuid: int) -> frozenset[str]:
        async with self._guard(f"read neurons of netuid {netuid}"):
            client = await self._client_or_connect()
            neurons = await asyncio.wait_for(client.neurons.neurons(netuid), READ_TIMEOUT_S)
            return frozenset(n.hotkey for n in neurons if n.validator_permit)

    async def current_block(self) -> int:
        async with self._guard("read current block"):
            client = await self._client_or_connect()
            return int(await asyncio.wait_for(client.block(), READ_TIMEOUT_S))

    async def read_commitment(self, netuid: int, hotkey: str) -> str:
        async with self._guard(f"read commitment of {hotkey} on netuid {netuid}"):
            client = await self._client_or_connect()
            found = await asyncio.wait_for(client.identity.commitment(netuid, hotkey), READ_TIMEOUT_S)
            return "" if found is None else str(found.data)

    async def serve_axon(self, netuid: int, ip: str, port: int) -> None:
        params = serve_axon_params(netuid, ip, port)
        async with self._guard(f"serve_axon {ip}:{port} on netuid {netuid}"):
            client = await self._client_or_connect()
            call = self._bt.calls.SubtensorModule.serve_axon(**params)
            result = await asyncio.wait_for(self._submit(client, call), WRITE_TIMEOUT_S)
        self._check(result, f"serve_axon {ip}:{port} on netuid {netuid}")

    async def write_commitment(self, netuid: int, text: str) -> None:
        info = commitment_info(text)
        async with self._guard(f"set_commitment on netuid {netuid}"):
            client = await self._client_or_connect()
            call = self._bt.calls.Commitments.set_commitment(netuid=netuid, info=info)
            result = await asyncio.wait_for(self._submit(client, call), WRITE_TIMEOUT_S)
        self._check(result, f"set_commitment on netuid {netuid}")

    async def neuron_uid(self, netuid: int, hotkey: str) -> int | None:
        async with self._guard(f"read uid of {hotkey} on netuid {netuid}"):
            client = await self._client_or_connect()
            uid = await asyncio.wait_for(client.neurons.uid(hotkey, netuid), READ_TIMEOUT_S)
            return None if uid is None else int(uid)

    async def read_axon(self, netuid: int, hotkey: str) -> tuple[str, int] | None:
        async with self._guard(f"read axon of {hotkey} on netuid {netuid}"):
            client = await self._client_or_connect()
            axon = await asyncio.wait_for(
                client.query(self._bt.storage.SubtensorModule.Axons, [netuid, hotkey]), READ_TIMEOUT_S)
            return axon_endpoint(axon)

    async def block_timestamp(self) -> float:
        async with self._guard("read block timestamp"):
            client = await self._client_or_connect()
            return float((await asyncio.wait_for(client.timestamp(), READ_TIMEOUT_S)).timestamp())

    async def associated_evm_address(self, netuid: int, uid: int) -> tuple[str, int] | None:
        async with self._guard(f"read AssociatedEvmAddress of uid {uid} on netuid {netuid}"):
            client = await self._client_or_connect()
            found = await asyncio.wait_for(client.neurons.associated_evm_key(netuid, uid), READ_TIMEOUT_S)
            if found is None:
                return None
            from eth_utils import to_checksum_address  # eth-account's own dependency; only here

            return to_checksum_address(str(found["evm_address"])), int(found["block"])

    async def associate_evm_key(self, netuid: int, evm_address: str, block_number: int, signature: bytes) -> None:
        params = associate_evm_key_params(netuid, evm_address, block_number, signature)
        what = f"associate_evm_key {evm_address} on netuid {netuid}"
        async with self._guard(what):
            client = await self._client_or_connect()
            call = self._bt.calls.SubtensorModule.associate_evm_key(**params)
            result = await asyncio.wait_for(self._submit(client, call), WRITE_TIMEOUT_S)
        self._check(result, what)

    async def _submit(self, client: Any, call: Any) -> Any:
        # Inclusion, not finalization: we only need to know it landed, and the next period
        # re-reads the chain anyway.
        return await client.submit_call(
            call, self._keypair, signer="hotkey", wait_for_inclusion=True, wait_for_finalization=False
        )

    @staticmethod
    def _check(result: Any, what: str) -> None:
        """A failed ExtrinsicResult -> ChainRejected naming the chain's error. The SDK puts the error's
        docs in `message` and its name in `error.name`; an operator searches for the name."""
        if getattr(result, "success", False):
            return
        message = str(getattr(result, "message", "") or "no message")
        name = getattr(getattr(result, "error", None), "name", None)
        for error_name, sentence in RATE_LIMITED_ERRORS.items():
            if name == error_name or error_name in message:
                raise ChainRejected(f"{what}: {sentence}")
        if name and name not in message:
            message = f"{name}: {message}"
        raise ChainRejected(f"{what}: chain refused: {message}")

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is None:
            return
        try:
            await client.close()
        except Exception as exc:  # closing a broken connection may fail too; nothing to do about it
            log.debug("chain close failed network=%s error=%r", self.network, exc)
