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
  submit_call(serve_axon)        -> extrinsic SubtensorModule.serve_axon, signed by the hotkey
  submit_call(set_commitment)    -> extrinsic Commitments.set_commitment, signed by the hotkey
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
        raise ChainUnavailable("neuron_uid: not implemented for the bittensor backend yet")

    async def read_axon(self, netuid: int, hotkey: str) -> tuple[str, int] | None:
        raise ChainUnavailable("read_axon: not implemented for the bittensor backend yet")

    async def block_timestamp(self) -> float:
        raise ChainUnavailable("block_timestamp: not implemented for the bittensor backend yet")

    async def associated_evm_address(self, netuid: int, uid: int) -> tuple[str, int] | None:
        raise ChainUnavailable("associated_evm_address: not implemented for the bittensor backend yet")

    async def associate_evm_key(self, netuid: int, evm_address: str, block_number: int, signature: bytes) -> None:
        raise ChainUnavailable("associate_evm_key: not implemented for the bittensor backend yet")

    async def _submit(self, client: Any, call: Any) -> Any:
        # Inclusion, not finalization: we only need to know it landed, and the next period
        # re-reads the chain anyway.
        return await client.submit_call(
            call, self._keypair, signer="hotkey", wait_for_inclusion=True, wait_for_finalization=False
        )

    @staticmethod
    def _check(result: Any, what: str) -> None:
        if not getattr(result, "success", False):
            message = getattr(result, "message", "") or "no message"
            raise ChainRejected(f"{what}: chain refused: {message}")

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is None:
            return
        try:
            await client.close()
        except Exception as exc:  # closing a broken connection may fail too; nothing to do about it
            log.debug("chain close failed network=%s error=%r", self.network, exc)
