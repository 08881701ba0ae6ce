"""permessage-deflate without the server's context takeover: no zlib state kept per socket.

aiohttp keeps one zlib compressor per socket for its whole life (context takeover, RFC 7692
§7.1.1). A compressor holds about 80 KiB resident once it has sent anything (its 64 KiB hash
table is cleared at creation, the window and buffers are touched as data passes), so 1,000 idle
validator sockets held ~100 MiB for compressors that sent one manifest each (issue 14).

Here the miner answers the validator's offer of permessage-deflate with
`server_no_context_takeover`, which the extension lets a server add to any offer (§7.1.1.1;
the stock client, python `websockets`, accepts it, and so does aiohttp's), and compresses each
message on its own: one compressor for the whole process, flushed with Z_FULL_FLUSH after every
message, which clears its history: no message refers back to another. The sockets keep nothing; the process keeps one compressor (~260 KiB) per window size in use. A busy decline with many
excuses (35-55 KB) is compressed on the loop, as aiohttp would not (see OFF_LOOP_MIN_BYTES); only
a message of `OFF_LOOP_MIN_BYTES` or more (a large job result) goes to a thread of our own,
where zlib releases the GIL. A per-socket lock keeps messages in the order they were sent, and
as no message refers back to another, a send cancelled mid-way leaves nothing to corrupt.

A `SplicedText` (a busy decline, miner_agent/jobs/decline.py) is compressed piece by piece, each
piece ended by a full flush, so each piece's compressed bytes stand on their own and can be put
side by side into one message: the deflate stream of the whole text, as a decoder reads it. The
recurring blocks are compressed once and kept (`SHARED_SEGMENTS_KEPT`); the head and the tail go
as stored blocks, so a decline in a burst compresses nothing but a block it is the first to use.

This leans on aiohttp internals (WebSocketResponse._handshake and _pre_start, WebSocketWriter's
send lock, frame writer and flow control; aiohttp 3.14, pinned by the lock file): an upgrade that
changes them fails tests/conformance/test_ws_deflate_oracle.py.

What the validator sends us is unchanged: its compressor keeps its context (we do not ask for
`client_no_context_takeover`, which would make every validator's messages larger).
"""

from __future__ import annotations

import asyncio
import struct
import threading
import zlib
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from aiohttp import WSMsgType, hdrs, web
from aiohttp.client_exceptions import ClientConnectionResetError

# aiohttp's own writer and extension header builder: the framing, masking and flow control stay theirs.
from aiohttp.http import WebSocketWriter, ws_ext_gen
from aiohttp.web_request import BaseRequest
from multidict import CIMultiDict

from miner_agent.jobs.decline import SplicedText

CONTROL_OPCODE_MIN = 8  # RFC 6455 §5.5: opcodes 8-15 are control frames, never compressed
COMPRESSED_RSV = 0x40  # RSV1: this message is compressed (RFC 7692 §6)
DEFLATE_TRAILER = b"\x00\x00\xff\xff"  # removed from each message's end (RFC 7692 §7.2.1)
STORED_BLOCK_MAX_BYTES = 65535  # a stored block's LEN is 16 bits (RFC 1951 §3.2.4)
STORED_BLOCK_HEADER = b"\x00"  # BFINAL 0, BTYPE 00, then padding: at a byte boundary, one zero byte
LEVEL = 1  # zlib's fastest level, what aiohttp uses: the CPU per busy decline matters more than bytes
MEM_LEVEL = 8  # zlib's default; smaller levels measured slower on decline JSON for no real memory gain here
# At or above this many bytes a message is compressed on the deflate thread, below on the loop. Not
# aiohttp's 16 KiB: in a burst of busy declines (35-55 KB each) the loop never idles, so a thread that
# finished waits for the GIL up to the 5 ms switch interval, one decline after another (measured: p99
# 440 ms against 180 ms on the loop). Compressing 256 KiB of JSON takes ~2 ms, the most the loop gives up.
OFF_LOOP_MIN_BYTES = 256 * 1024
DEFLATE_THREADS = 1  # one core for the loop, one for compression on a 2-core host
# Compressed recurring blocks kept, newest use last: a burst of 100 declines needs ~13 blocks of
# 8 excuses (~2.5 KB each compressed), so 512 outlast any burst while old receipts' blocks age out.
# They hold ~1.3 MB of segments (at most ~10 MB with 32-line blocks) and keep their lines alive:
# mostly the same strings as ReceiptStore's EXCUSE_LINES_KEPT (~3 MB).
SHARED_SEGMENTS_KEPT = 512

_pool: ThreadPoolExecutor | None = None
_loop_compressors = threading.local()  # window bits -> the compressor messages on this thread share
# (window bits, a block's lines) -> its compressed bytes. Keyed by the line objects, not the block's
# text: hashing and comparing kilobytes per block per decline cost more than compressing them.
_shared_segments: dict[tuple[int, bool, tuple[str, ...]], bytes] = {}  # (.., first in its list?, ..)


def deflate_message(payload: bytes, window_bits: int) -> bytes:
    """One message's compressed bytes, independent of every other message (no context takeover),
    by a fresh compressor: for the deflate thread, where messages may be compressed side by side."""
    compressor = zlib.compressobj(LEVEL, zlib.DEFLATED, -window_bits, MEM_LEVEL)
    data = compressor.compress(payload) + compressor.flush(zlib.Z_SYNC_FLUSH)
    return data.removesuffix(DEFLATE_TRAILER)


def _full_flushed(data: bytes, window_bits: int) -> bytes:
    """`data` compressed by the compressor every socket of this thread shares, ended by a full
    flush (its empty stored block, the `DEFLATE_TRAILER`, included). The flush clears the
    compressor's history, so the bytes refer to nothing before them and decode the same wherever
    they stand; sharing saves setting up a compressor per message (~100 us each: 4 x 64 KiB
    touched anew)."""
    shared: dict[int, Any] = _loop_compressors.__dict__
    compressor = shared.get(window_bits)
    if compressor is None:
        compressor = shared[window_bits] = zlib.compressobj(LEVEL, zlib.DEFLATED, -window_bits, MEM_LEVEL)
    try:
        return compressor.compress(data) + compressor.flush(zlib.Z_FULL_FLUSH)
    except BaseException:  # out of memory mid-message: what it took in must not lead the next message
        del shared[window_bits]
        raise


def deflate_on_loop(payload: bytes, window_bits: int) -> bytes:
    """`deflate_message` by the thread's shared compressor (`_full_flushed`)."""
    return _full_flushed(payload, window_bits).removesuffix(DEFLATE_TRAILER)


def stored_block(data: bytes) -> bytes:
    """`data` as deflate stored blocks (RFC 1951 §3.2.4), at a byte boundary, not final: copied,
    not compressed, and without a compressed segment's own cost (~10 us of Huffman trees)."""
    out = []
    for i in range(0, len(data), STORED_BLOCK_MAX_BYTES):
        chunk = data[i:i + STORED_BLOCK_MAX_BYTES]
        out.append(STORED_BLOCK_HEADER + struct.pack("<HH", len(chunk), len(chunk) ^ 0xFFFF) + chunk)
    return b"".join(out)


def deflate_spliced(text: SplicedText, window_bits: int) -> list[bytes]:
    """The compressed message of `text`, as segments to be sent one after another: each block's,
    compressed once and then taken from `_shared_segments`, between the head and the tail, which
    go stored. The message ends as RFC 7692 §7.2.1 wants, with an empty stored block whose last
    four bytes (`DEFLATE_TRAILER`) are left off for the receiver to add back.

    Stored, because these two are this message's alone: the head is ~150 bytes, and compressing
    the tail (the lines after the last block, ~5 KB on average) was the last zlib work left in a
    decline, ~10 % of an offer's CPU in a burst, for ~3 KB fewer bytes on the wire."""
    segments = [stored_block(text.head.encode("utf-8"))]
    for n, block in enumerate(text.blocks):
        key = (window_bits, n == 0, block)
        segment = _shared_segments.pop(key, None)  # popped and put back: the dict's end is the newest
        if segment is None:
            segment = _full_flushed(text.block_text(block, n == 0).encode("utf-8"), window_bits)
            if len(_shared_segments) >= SHARED_SEGMENTS_KEPT:
                del _shared_segments[next(iter(_shared_segments))]
        _shared_segments[key] = segment
        segments.append(segment)
    segments.append(stored_block(text.tail.encode("utf-8")) + STORED_BLOCK_HEADER)
    return segments


def _deflate_pool() -> ThreadPoolExecutor:
    global _pool
    if _pool is None:
        _pool = ThreadPoolExecutor(max_workers=DEFLATE_THREADS, thread_name_prefix="ws-deflate")
    return _pool


class PerMessageDeflateWriter(WebSocketWriter):
    """aiohttp's writer, with each data message compressed on its own (see the module docstring)."""

    async def send_frame(self, message: bytes | SplicedText, opcode: int, compress: int | None = None) -> None:
        if opcode >= CONTROL_OPCODE_MIN or not self.compress:
            if isinstance(message, SplicedText):
                message = str(message).encode("utf-8")
            await super().send_frame(message, opcode, compress)
            return
        if self._closing:
            raise ClientConnectionResetError("Cannot write to closing transport")
        async with self._send_lock:  # in order: a small message does not overtake a large one
            data: bytes | list[bytes]
            if isinstance(message, SplicedText):  # at most a block it is the first to use: on the loop
                data = deflate_spliced(message, self.compress)
            elif len(message) < OFF_LOOP_MIN_BYTES:
                data = deflate_on_loop(message, self.compress)  # nothing between compress and flush
            else:
                data = await asyncio.get_running_loop().run_in_executor(
                    _deflate_pool(), deflate_message, message, self.compress)
            self._write_websocket_frame(data, opcode, COMPRESSED_RSV)
        # aiohttp's flow control, as in WebSocketWriter.send_frame: wait when the transport is full.
        if self._output_size > self._limit:
            self._output_size = 0
            if self.protocol._paused:
                await self.protocol._drain_helper()

    def _write_websocket_frame(self, message: bytes | list[bytes], opcode: int, rsv: int) -> None:
        """aiohttp's frame, in one transport write: it writes a large frame's header and payload
        apart, which uvloop sends as two send() calls and two segments (TCP_NODELAY); the copy of a
        20 KB compressed decline costs far less than the second system call. `message` may come as
        the segments of a spliced decline, joined here with the header in one copy."""
        parts = message if isinstance(message, list) else [message]
        if self.use_mask:  # a client's frame; the miner only serves
            super()._write_websocket_frame(b"".join(parts), opcode, rsv)
            return
        length = sum(len(part) for part in parts)
        first = 0x80 | rsv | opcode  # FIN, then RSV1 when compressed, then the opcode (RFC 6455 §5.2)
        if length < 126:
            header = struct.pack("!BB", first, length)
        elif length < 65536:
            header = struct.pack("!BBH", first, 126, length)
        else:
            header = struct.pack("!BBQ", first, 127, length)
        if self.transport.is_closing():
            raise ClientConnectionResetError("Cannot write to closing transport")
        self.transport.write(b"".join([header, *parts]))
        self._output_size += len(header) + length


class StatelessDeflateResponse(web.WebSocketResponse):
    """A WebSocketResponse that negotiates permessage-deflate with server_no_context_takeover."""

    async def send_str(self, data: str | SplicedText, compress: int | None = None) -> None:  # type: ignore[override]
        """aiohttp's, and a `SplicedText`: to our writer as it is, with its pieces, or joined."""
        if isinstance(data, SplicedText):
            if isinstance(self._writer, PerMessageDeflateWriter):
                await self._writer.send_frame(data, WSMsgType.TEXT, compress)
                return
            data = str(data)
        await super().send_str(data, compress)

    def _handshake(self, request: BaseRequest) -> tuple[CIMultiDict[str], str | None, int, bool]:
        headers, protocol, window_bits, _ = super()._handshake(request)
        if window_bits:  # the client offered the extension, and aiohttp took it (with its window size)
            headers[hdrs.SEC_WEBSOCKET_EXTENSIONS] = ws_ext_gen(compress=window_bits, isserver=True,
                                                                server_notakeover=True)
        return headers, protocol, window_bits, True

    def _pre_start(self, request: BaseRequest) -> tuple[str | None, WebSocketWriter]:
        protocol, writer = super()._pre_start(request)  # without deflate too: its frames go out in one write
        return protocol, PerMessageDeflateWriter(writer.protocol, writer.transport, compress=writer.compress,
                                                 notakeover=bool(writer.compress), limit=self._writer_limit)
