"""A real miner on loopback and a validator simulator with real keys: handshake, manifest,
malformed frames, main hotkey, receipts pages. No executor is running here, so every job
offer is declined as busy: that is the honest answer and it exercises the decline path."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest
from bittensor_wallet import Keypair

from horde_protocol.messages import (
    GenericError,
    V0AcceptJobRequest,
    V0DeclineJobRequest,
    V0ExecutorManifestRequest,
    V0MainHotkeyMessage,
)
from horde_protocol.receipts import Receipt, receipt_blob
from horde_protocol.signing import verify_blob
from tests.fixtures.miner import sim_for


async def _closed_with_error(session, expected: str) -> None:
    got = await session.recv(5)
    assert got.type == "GenericError"
    assert got.message.details == expected
    frame = await session.ws.receive(timeout=5)
    assert frame.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
    assert session.ws.close_code == 1000


async def test_unknown_validator_is_refused_and_closed(miner_config, start_miner) -> None:
    agent = await start_miner(miner_config)
    stranger = Keypair.create_from_uri("//Mallory")
    sim = sim_for(agent, stranger)
    async with await sim.connect() as session:
        await _closed_with_error(session, f"Unknown validator: {stranger.ss58_address}")


async def test_stale_auth_is_refused(miner_config, start_miner, validator_key) -> None:
    agent = await start_miner(miner_config)
    sim = sim_for(agent, validator_key)
    import time

    async with await sim.connect(authenticate=False) as session:
        await session.send(sim.auth(timestamp=int(time.time()) - 30))
        await _closed_with_error(session, f"Validator {sim.hotkey} not authenticated due to: msg too old")


async def test_bad_signature_is_refused(miner_config, start_miner, validator_key) -> None:
    agent = await start_miner(miner_config)
    sim = sim_for(agent, validator_key)
    async with await sim.connect(authenticate=False) as session:
        await session.send(sim.auth(signer=Keypair.create_from_uri("//Eve")))
        await _closed_with_error(session, f"Validator {sim.hotkey} not authenticated due to: Signature mismatches")


async def test_wrong_miner_hotkey_is_refused(miner_config, start_miner, validator_key) -> None:
    agent = await start_miner(miner_config)
    sim = sim_for(agent, validator_key)
    sim.miner_hotkey = Keypair.create_from_uri("//Bob").ss58_address
    async with await sim.connect() as session:
        got = await session.recv(5)
        assert got.type == "GenericError" and "wrong miner hotkey" in got.message.details


async def test_manifest_first_then_queued_frames_replayed(miner_config, start_miner, validator_key) -> None:
    agent = await start_miner(miner_config)
    sim = sim_for(agent, validator_key)
    async with await sim.connect(authenticate=False) as session:
        await session.send(V0MainHotkeyMessage(main_hotkey=None))  # before auth: queued, not refused
        await session.send(sim.auth())
        first = await session.recv(5)
        assert first.type == "V0ExecutorManifestRequest"
        # The only configured executor has no agent running: it is not advertised.
        assert first.message.manifest == {}
        answer = await session.recv(5)
        assert answer.type == "V0MainHotkeyMessage"
        assert answer.message.main_hotkey == agent.ctx.signer.hotkey


async def test_malformed_frames_get_generic_error_and_socket_stays_open(miner_config, start_miner, validator_key) -> None:
    agent = await start_miner(miner_config)
    sim = sim_for(agent, validator_key)
    async with await sim.connect() as session:
        await session.recv_until(V0ExecutorManifestRequest)
        for bad in ["not json", '{"message_type": "V0Bogus"}', '{"message_type": "V0JobRequest"}', "[1,2]",
                    json.dumps({"message_type": "V0ExecutorManifestRequest", "manifest": {}})]:
            await session.send(bad)
            got = await session.recv(5)
            assert got.type == "GenericError", bad
            assert got.message.details.startswith("Malformed message"), got.message.details
        await session.send(V0MainHotkeyMessage())
        assert (await session.recv(5)).type == "V0MainHotkeyMessage"


async def test_version_endpoint(miner_config, start_miner) -> None:
    agent = await start_miner(miner_config)
    async with aiohttp.ClientSession() as http:
        async with http.get(f"http://127.0.0.1:{agent.port}/version") as resp:
            assert resp.status == 200
            body = await resp.json()
    assert set(body) == {"miner_version", "runner_version"}


async def _offer(sim, executor_class: str = "always_on.test", **kw):
    initial = sim.initial_request(executor_class, "localhost/none:latest", **kw)
    async with await sim.connect() as session:
        await session.recv_until(V0ExecutorManifestRequest)
        await session.send(initial)
        reply = await session.recv_until(V0AcceptJobRequest, V0DeclineJobRequest, GenericError, timeout_s=7)
    return initial, reply


async def _page_lines(port: int) -> tuple[str, list[Receipt]]:
    import time

    page = int(time.time() // 300)
    async with aiohttp.ClientSession() as http:
        async with http.get(f"http://127.0.0.1:{port}/receipts/{page}.jsonl",
                            headers={"Accept-Encoding": "gzip"}) as resp:
            assert resp.status == 200
            text = await resp.text()
    return text, [Receipt.model_validate_json(line) for line in text.splitlines()]


async def test_offer_without_free_executor_is_declined_busy_but_receipt_kept(miner_config, start_miner, validator_key) -> None:
    agent = await start_miner(miner_config)
    sim = sim_for(agent, validator_key)
    first, reply = await _offer(sim)
    assert reply.type == "V0DeclineJobRequest" and reply.message.reason == "busy"
    _, lines = await _page_lines(agent.port)
    assert [str(r.payload.job_uuid) for r in lines] == [str(first.job_uuid)]
    for r in lines:
        blob = receipt_blob(r.payload)
        assert verify_blob(validator_key.ss58_address, blob, r.validator_signature)
        assert verify_blob(agent.ctx.signer.hotkey, blob, r.miner_signature)
    # A second offer within the first receipt's ttl carries it as an excuse.
    _, reply2 = await _offer(sim)
    assert reply2.type == "V0DeclineJobRequest" and reply2.message.reason == "busy"
    assert [str(r.payload.job_uuid) for r in reply2.message.receipts] == [str(first.job_uuid)]
    assert verify_blob(agent.ctx.signer.hotkey, receipt_blob(reply2.message.receipts[0].payload),
                       reply2.message.receipts[0].miner_signature)


async def test_the_same_offer_twice_at_once_is_judged_one_after_the_other(miner_config, start_miner,
                                                                          validator_key) -> None:
    """Sent at once on two sockets of the validator: both are answered (the second waits for the
    first's receipt to be durable), and the receipt is stored and published once."""
    agent = await start_miner(miner_config)
    sim = sim_for(agent, validator_key)
    initial = sim.initial_request("always_on.test", "localhost/none:latest")
    async with await sim.connect() as one, await sim.connect() as two:
        for session in (one, two):
            await session.recv_until(V0ExecutorManifestRequest)
        await asyncio.gather(one.send(initial), two.send(initial))
        replies = await asyncio.gather(*(s.recv_until(V0AcceptJobRequest, V0DeclineJobRequest, GenericError,
                                                       timeout_s=7) for s in (one, two)))
    assert [(r.type, r.message.reason) for r in replies] == [("V0DeclineJobRequest", "busy")] * 2
    assert [r.message.receipts for r in replies] == [[], []]  # its own receipt is no excuse for itself
    _, lines = await _page_lines(agent.port)
    assert [str(r.payload.job_uuid) for r in lines] == [str(initial.job_uuid)]
    assert agent.ctx.receipts.count() == 1 and agent.ctx.service._offers_in_flight == {}


async def test_receipt_with_bad_signature_is_declined_and_not_stored(miner_config, start_miner, validator_key) -> None:
    agent = await start_miner(miner_config)
    sim = sim_for(agent, validator_key)
    initial = sim.initial_request("always_on.test", "img")
    initial = initial.model_copy(update={"job_started_receipt_signature": "0x" + "00" * 64})
    async with await sim.connect() as session:
        await session.recv_until(V0ExecutorManifestRequest)
        await session.send(initial)
        reply = await session.recv(5)
    assert reply.type == "V0DeclineJobRequest"
    assert reply.message.reason == "invalid_receipt"
    assert agent.ctx.receipts.count() == 0


async def test_bad_validator_signature_on_initial_request_is_declined(miner_config, start_miner, validator_key) -> None:
    agent = await start_miner(miner_config)
    sim = sim_for(agent, validator_key)
    initial = sim.initial_request("always_on.test", "img").model_copy(update={"validator_signature": "0x" + "11" * 64})
    async with await sim.connect() as session:
        await session.recv_until(V0ExecutorManifestRequest)
        await session.send(initial)
        reply = await session.recv(5)
    assert (reply.type, reply.message.reason) == ("V0DeclineJobRequest", "invalid_signature")


async def test_receipt_pages_support_range_like_a_static_server(miner_config, start_miner, validator_key) -> None:
    agent = await start_miner(miner_config)
    sim = sim_for(agent, validator_key)
    await _offer(sim)
    text, _ = await _page_lines(agent.port)
    size = len(text.encode())
    import time

    url = f"http://127.0.0.1:{agent.port}/receipts/{int(time.time() // 300)}.jsonl"
    async with aiohttp.ClientSession() as http:
        async with http.get(url, headers={"Range": "bytes=10-", "Accept-Encoding": ""}) as resp:
            assert resp.status == 206
            assert resp.headers["Content-Range"] == f"bytes 10-{size - 1}/{size}"
            assert (await resp.read()) == text.encode()[10:]
        async with http.get(url, headers={"Range": f"bytes={size}-", "Accept-Encoding": ""}) as resp:
            assert resp.status == 416
        async with http.get(f"http://127.0.0.1:{agent.port}/receipts/1.jsonl") as resp:
            assert resp.status == 404
        for bad in ["..%2Fminer.sqlite3", "abc.jsonl", "1.json", "%2Fetc%2Fpasswd"]:
            async with http.get(f"http://127.0.0.1:{agent.port}/receipts/{bad}", allow_redirects=False) as resp:
                assert resp.status == 404, bad


async def test_restart_keeps_receipts_and_repairs_a_damaged_page(miner_config, start_miner, validator_key) -> None:
    agent = await start_miner(miner_config)
    sim = sim_for(agent, validator_key)
    first, _ = await _offer(sim)
    text_before, _ = await _page_lines(agent.port)
    await agent.stop()
    page_file = next(miner_config.receipts_dir.glob("*.jsonl"))
    page_file.write_text("")  # as if a crash lost the page after the SQLite commit
    again = await start_miner(miner_config)
    text_after, lines = await _page_lines(again.port)
    assert text_after == text_before
    assert str(lines[0].payload.job_uuid) == str(first.job_uuid)


async def test_accepted_and_finished_receipts_are_countersigned(miner_config, start_miner, validator_key) -> None:
    from datetime import UTC, datetime

    agent = await start_miner(miner_config)
    sim = sim_for(agent, validator_key)
    async with await sim.connect() as session:
        await session.recv_until(V0ExecutorManifestRequest)
        await session.send(sim.accepted_receipt("11111111-2222-4333-8444-555555555555"))
        await session.send(sim.finished_receipt("11111111-2222-4333-8444-555555555555", datetime.now(UTC), 2.5))
        bad = sim.finished_receipt("11111111-2222-4333-8444-666666666666", datetime.now(UTC), 1.0)
        await session.send(bad.model_copy(update={"signature": "0x" + "22" * 64}))
        await session.send(V0MainHotkeyMessage())
        await session.recv_until(V0MainHotkeyMessage)  # the receipts were handled before this answer
    _, lines = await _page_lines(agent.port)
    types = sorted(str(r.payload.receipt_type) for r in lines)
    assert types == ["JobAcceptedReceipt", "JobFinishedReceipt"]
    for r in lines:
        assert verify_blob(agent.ctx.signer.hotkey, receipt_blob(r.payload), r.miner_signature)


async def test_blocklisted_validator_connects_but_its_jobs_are_declined(miner_config, start_miner, validator_key) -> None:
    from miner_agent.chain.chain_config import ChainSection

    config = miner_config.model_copy(update={"chain": ChainSection(blocklist=[validator_key.ss58_address])})
    agent = await start_miner(config)
    initial, reply = await _offer(sim_for(agent, validator_key))
    assert (reply.type, reply.message.reason) == ("V0DeclineJobRequest", "validator_blacklisted")
    assert agent.ctx.receipts.count() == 0  # declined before the receipt is even looked at (stock order)


async def test_validators_from_the_chain_backend_may_connect(miner_config, start_miner, tmp_path) -> None:
    """The static chain backend stands in for validator_permit neurons read from the chain."""
    from miner_agent.chain.chain_config import ChainSection

    chain_validator = Keypair.create_from_uri("//ChainValidator")
    listing = tmp_path / "validators.toml"
    listing.write_text(f'validators = ["{chain_validator.ss58_address}"]\n')
    config = miner_config.model_copy(update={"chain": ChainSection(static_validators_file=listing)})
    agent = await start_miner(config)
    for _ in range(50):  # the first refresh runs right after start
        if chain_validator.ss58_address in agent.ctx.validators:
            break
        await asyncio.sleep(0.02)
    async with await sim_for(agent, chain_validator).connect() as session:
        assert (await session.recv(5)).type == "V0ExecutorManifestRequest"


async def test_archived_pages_are_served_gzipped_and_ranges_stay_plain(miner_config, start_miner, validator_key) -> None:
    import time

    from miner_agent.receipts.maintenance import ReceiptMaintenance

    agent = await start_miner(miner_config)
    await _offer(sim_for(agent, validator_key))
    plain, _ = await _page_lines(agent.port)
    ReceiptMaintenance(agent.ctx.receipts.conn, agent.ctx.receipts.pages_dir).archive(time.time() + 3 * 300)
    url = f"http://127.0.0.1:{agent.port}/receipts/{int(time.time() // 300)}.jsonl"
    async with aiohttp.ClientSession() as http:
        async with http.get(url, headers={"Accept-Encoding": "gzip"}) as resp:
            assert resp.status == 200 and resp.headers.get("Content-Encoding") == "gzip"
            assert await resp.text() == plain  # the client inflates it, as validators' do
        async with http.get(url, headers={"Range": "bytes=5-", "Accept-Encoding": ""}) as resp:
            assert resp.status == 206 and "Content-Encoding" not in resp.headers
            assert await resp.read() == plain.encode()[5:]


@pytest.fixture
def tiny_state_dir(tmp_path):
    """A 2 MiB tmpfs for the miner's state, so the test can fill the disk for real."""
    import subprocess

    mount = tmp_path / "tiny"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], check=True)
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


async def test_full_disk_declines_clearly_keeps_the_socket_and_loses_no_receipt(
        miner_config, start_miner, validator_key, tiny_state_dir) -> None:
    config = miner_config.model_copy(update={"miner": miner_config.miner.model_copy(
        update={"state_dir": tiny_state_dir / "state"})})
    agent = await start_miner(config)
    sim = sim_for(agent, validator_key)
    filler = tiny_state_dir / "filler"
    with open(filler, "wb") as fh:  # take every free byte
        try:
            while True:
                fh.write(b"\0" * 65536)
        except OSError:
            pass
    async with await sim.connect() as session:
        await session.recv_until(V0ExecutorManifestRequest)
        await session.send(sim.initial_request("always_on.test", "img"))
        reply = await session.recv(7)
        assert (reply.type, reply.message.reason) == ("V0DeclineJobRequest", "unknown")
        assert reply.message.message.startswith("miner storage failure, job not taken")
        filler.unlink()  # space is back: the same socket works and the next offer's receipt is kept
        second = sim.initial_request("always_on.test", "img")
        await session.send(second)
        reply = await session.recv(7)
    assert (reply.type, reply.message.reason) == ("V0DeclineJobRequest", "busy")  # no executor here: honest busy
    _, lines = await _page_lines(agent.port)
    assert str(second.job_uuid) in [str(r.payload.job_uuid) for r in lines]


async def test_shutdown_answers_the_frame_in_flight_then_closes_sockets_going_away(miner_config, validator_key) -> None:
    """SIGTERM path (MinerAgent.stop): an offer being handled still gets its answer, then every
    validator socket, idle or busy, closes with 1001 so the validator reconnects to the next start."""
    from miner_agent.daemon import MinerAgent

    agent = MinerAgent(miner_config)
    await agent.start()
    sim = sim_for(agent, validator_key)
    service = agent.ctx.service
    real_offer, entered, release = service.offer, asyncio.Event(), asyncio.Event()

    async def slow_offer(*args, **kwargs) -> None:  # a slow disk: the offer is mid-way when SIGTERM comes
        entered.set()
        await release.wait()
        await real_offer(*args, **kwargs)

    service.offer = slow_offer  # type: ignore[method-assign]
    busy, idle = await sim.connect(), await sim.connect()
    try:
        for session in (busy, idle):
            await session.recv_until(V0ExecutorManifestRequest)
        initial = sim.initial_request("always_on.test", "localhost/none:latest")
        await busy.send(initial)
        await asyncio.wait_for(entered.wait(), 5)
        stopping = asyncio.create_task(agent.stop())
        await asyncio.sleep(0.3)
        assert not stopping.done() and not busy.ws.closed and not idle.ws.closed  # waiting for the frame
        release.set()
        reply = await busy.recv(5)
        assert reply.type == "V0DeclineJobRequest" and reply.message.job_uuid == str(initial.job_uuid)
        for session in (busy, idle):
            frame = await session.ws.receive(timeout=5)
            assert frame.type is aiohttp.WSMsgType.CLOSE, frame
            assert session.ws.close_code == 1001
            assert frame.extra == "miner-agent is shutting down"
        await asyncio.wait_for(stopping, 10)
    finally:
        release.set()
        await busy.close()
        await idle.close()
