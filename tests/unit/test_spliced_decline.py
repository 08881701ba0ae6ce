"""Busy declines built from recurring pieces (miner_agent/jobs/decline.py) and compressed piece by
piece (ws_deflate.deflate_spliced): the text is pydantic's, a decline in a burst compresses only
what is new in it, and what a decoder reads is the text."""

from __future__ import annotations

import random
import string
import zlib

import pytest

from horde_protocol.enums import JobRejectionReason
from horde_protocol.messages import V0DeclineJobRequest
from horde_protocol.receipts import Receipt, receipt_blob
from horde_protocol.signing import sign_blob
from miner_agent.jobs import decline as decline_mod
from miner_agent.jobs.decline import SplicedText, decline_json, excuse_blocks
from miner_agent.server import ws_deflate
from miner_agent.server.ws_deflate import DEFLATE_TRAILER, deflate_spliced
from tests.unit.test_receipt_group_commit import MINER, _started

DECLINE = V0DeclineJobRequest(job_uuid="0c1f5a1e-3b7d-4d8e-9a55-2f4f8e6b7c10", reason=JobRejectionReason.BUSY,
                              message="all executors of the class are busy")


def _lines(n: int, seed: int = 14) -> list[str]:
    rnd = random.Random(seed)
    return ['{"x":"' + "".join(rnd.choices(string.hexdigits, k=600)) + '"}' for _ in range(n)]


def _inflate(data: bytes, window_bits: int = 15) -> str:
    """As a permessage-deflate receiver does (RFC 7692 §7.2.2): the trailer back on, a fresh decoder."""
    return zlib.decompressobj(-window_bits).decompress(data + DEFLATE_TRAILER).decode()


def test_the_spliced_decline_is_the_text_pydantic_writes() -> None:
    lines = _lines(60)
    text = decline_json(DECLINE, lines)
    assert isinstance(text, SplicedText)
    assert text.head + "".join(text.block_text(b, n == 0) for n, b in enumerate(text.blocks)) + text.tail == str(text)
    # pydantic, given the same receipts: the lines here are not receipts, so compare the structure
    expected = DECLINE.model_dump_json().replace('"receipts":[]', '"receipts":[' + ",".join(lines) + "]")
    assert str(text) == expected
    assert len(text.blocks) >= 1 and text.head.endswith('"receipts":[') and text.blocks[0][0] == lines[0]


def test_a_real_receipt_list_round_trips_through_pydantic() -> None:
    receipts = []
    for _ in range(20):
        payload, signature = _started()
        receipts.append(Receipt(payload=payload, validator_signature=signature,
                                miner_signature=sign_blob(MINER, receipt_blob(payload))))
    text = decline_json(DECLINE, [r.model_dump_json() for r in receipts])
    assert str(text) == DECLINE.model_copy(update={"receipts": receipts}).model_dump_json()
    assert V0DeclineJobRequest.model_validate_json(str(text)).receipts == receipts


def _after_next_content_cut(blocks: list[tuple[str, ...]], lines: list[str], index: int) -> list[tuple[str, ...]]:
    """The blocks that start after the first line past `index` whose hash makes a cut."""
    cut = next(line for line in lines[index + 1:] if hash(line) % decline_mod.EXCUSE_BLOCK_MEAN_LINES == 0)
    ends = [b[-1] for b in blocks]
    return blocks[ends.index(cut) + 1:]


def test_blocks_do_not_move_when_a_line_leaves_the_front_or_the_middle() -> None:
    """Wherever the cuts fall (they depend on the process's string hashes), every block from the
    first content cut after the removed line on is the same tuple as before."""
    lines = _lines(300)
    blocks, _ = excuse_blocks(lines)
    assert len(blocks) >= len(lines) // decline_mod.EXCUSE_BLOCK_MAX_LINES
    assert all(len(b) <= decline_mod.EXCUSE_BLOCK_MAX_LINES for b in blocks)
    for removed in (0, 100):
        shorter = lines[:removed] + lines[removed + 1:]
        kept = _after_next_content_cut(blocks, lines, removed)
        assert kept and excuse_blocks(shorter)[0][-len(kept):] == kept


@pytest.mark.parametrize("window_bits", [15, 9])
def test_a_burst_of_declines_compresses_each_shared_block_once_and_decodes_whole(
        monkeypatch: pytest.MonkeyPatch, window_bits: int) -> None:
    monkeypatch.setattr(ws_deflate, "_shared_segments", {})
    compressed: list[int] = []
    real = ws_deflate._full_flushed
    monkeypatch.setattr(ws_deflate, "_full_flushed", lambda data, wb: compressed.append(len(data)) or real(data, wb))
    lines = _lines(120)
    fresh = whole = 0
    for n in range(2, 121):
        text = decline_json(DECLINE, lines[:n])
        compressed.clear()
        assert _inflate(b"".join(deflate_spliced(text, window_bits)), window_bits) == str(text)
        if n > 60:  # the earlier blocks all came before: at most the one block this line closed
            assert len(compressed) <= 1
            fresh, whole = fresh + sum(compressed), whole + len(str(text))
    assert fresh < whole / 5  # where the cuts fall depends on the process's string hashes
    assert len(ws_deflate._shared_segments) == len(excuse_blocks(lines)[0])


def test_the_kept_segments_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ws_deflate, "_shared_segments", {})
    monkeypatch.setattr(ws_deflate, "SHARED_SEGMENTS_KEPT", 5)
    for seed in range(10):
        text = decline_json(DECLINE, _lines(80, seed))
        assert _inflate(b"".join(deflate_spliced(text, 15))) == str(text)
    assert len(ws_deflate._shared_segments) == 5


@pytest.mark.parametrize("n", [1, 2, 3, 9])
def test_short_excuse_lists_splice_and_decode(n: int) -> None:
    """However the few lines fall (no block, a block and no rest, blocks and a rest)."""
    for seed in range(20):
        lines = _lines(n, seed)
        text = decline_json(DECLINE, lines)
        assert str(text) == DECLINE.model_dump_json().replace('"receipts":[]', '"receipts":[' + ",".join(lines) + "]")
        assert _inflate(b"".join(deflate_spliced(text, 15))) == str(text)


def test_a_decline_ends_as_permessage_deflate_wants() -> None:
    """With the trailer a receiver adds back, the stream is complete: nothing left half-read."""
    text = decline_json(DECLINE, _lines(30))
    decoder = zlib.decompressobj(-15)
    assert decoder.decompress(b"".join(deflate_spliced(text, 15)) + DEFLATE_TRAILER) == str(text).encode()
    assert decoder.unconsumed_tail == b"" and decoder.flush() == b""
    # and a decoder given the bytes without the trailer has no more to give after it
    probe = zlib.decompressobj(-15)
    probe.decompress(b"".join(deflate_spliced(text, 15)) + DEFLATE_TRAILER + b"\x03\x00")  # a final empty block
    assert probe.eof


def test_stored_blocks_carry_any_length() -> None:
    data = bytes(random.Random(3).getrandbits(8) for _ in range(70_000))
    for chunk in (b"", b"x", data[:65_535], data):
        stream = ws_deflate.stored_block(chunk) + zlib.compressobj(1, zlib.DEFLATED, -15).flush(zlib.Z_SYNC_FLUSH)
        assert zlib.decompressobj(-15).decompress(stream) == chunk
