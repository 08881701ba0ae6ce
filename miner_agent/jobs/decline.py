"""The busy decline's text, built from its excuses' page lines in pieces that recur.

In a burst of offers to a busy class every decline hands over nearly the same excuses (each
stored JobStarted receipt of the class, protocol.md §5.3), so one decline is mostly the previous
one plus a receipt. The text is the same as pydantic's, kept in pieces (`SplicedText`):
the per-message head and tail, and between them blocks of excuse lines that the next declines
repeat verbatim, which the websocket writer compresses once and reuses (ws_deflate.py) instead of
compressing 30-60 KB per decline; the head and tail it sends uncompressed.

Blocks are content-defined: a block ends after a line whose hash is 0 modulo
`EXCUSE_BLOCK_MEAN_LINES` (or after `EXCUSE_BLOCK_MAX_LINES` lines), so a receipt expiring at
the front or an offer's own receipt left out in the middle changes only the block it is in, and
the blocks after it stay the same strings.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from horde_protocol.messages import V0DeclineJobRequest
from horde_protocol.receipts import Receipt

# Mean excuse lines per shared block. The lines after the last block go uncompressed with the
# tail (ws_deflate.deflate_spliced), so smaller blocks send fewer raw bytes there; larger ones
# compress better, as each block starts with no history. Measured on 643-byte receipt lines in a
# simulated burst of 100 declines, 8 lines a block: ~10 us of zlib and 14.5 KB sent per decline,
# against ~220 us and 10.5 KB compressed whole; 4 lines a block made no difference to the bench.
EXCUSE_BLOCK_MEAN_LINES = 8
EXCUSE_BLOCK_MAX_LINES = 32  # a run of lines without a boundary ends here, so no block grows past ~20 KB

_EMPTY_RECEIPTS = '"receipts":[]'


@dataclass(frozen=True)
class SplicedText:
    """A message text kept as how it is put together: `head` and `tail` belong to this message
    alone; each of `blocks` (excuse lines, comma-joined, with a leading comma unless it is the
    first) recurs in other messages as it is. `str()` joins them into the text, which a socket with
    permessage-deflate never needs: its writer compresses the pieces (ws_deflate.py)."""

    head: str
    blocks: tuple[tuple[str, ...], ...]
    tail: str

    @staticmethod
    def block_text(block: tuple[str, ...], first: bool) -> str:
        return ",".join(block) if first else "," + ",".join(block)

    def __str__(self) -> str:
        return self.head + "".join(self.block_text(b, n == 0) for n, b in enumerate(self.blocks)) + self.tail


def excuse_blocks(lines: Sequence[str]) -> tuple[list[tuple[str, ...]], list[str]]:
    """`lines` cut into whole blocks, and the lines after the last block's end. The cut after a
    line depends only on that line and on the lines since the previous cut, never on the position
    in the list. The blocks are tuples of the same line objects, so that finding a block again
    (ws_deflate's cache) hashes a few cached string hashes, not kilobytes of text."""
    blocks: list[tuple[str, ...]] = []
    start = 0
    for i, line in enumerate(lines):
        if hash(line) % EXCUSE_BLOCK_MEAN_LINES == 0 or i + 1 - start >= EXCUSE_BLOCK_MAX_LINES:
            blocks.append(tuple(lines[start:i + 1]))
            start = i + 1
    return blocks, list(lines[start:])


def decline_json(decline: V0DeclineJobRequest, receipt_lines: Sequence[str]) -> str | SplicedText:
    """The decline's JSON with `receipt_lines` as its `receipts`, byte for byte what pydantic
    writes for the same Receipt objects (a list of their compact JSON, comma-joined), without
    serialising each excuse again: in a burst of busy declines that cost grew as n². With excuses
    it is a `SplicedText`: the head up to the list's bracket, the blocks of the lines, and the
    lines after the last block with the rest.

    `decline` comes without receipts. Inside a JSON string a quote is escaped, so the empty list's
    key can only appear once, as the key; anything else falls back to pydantic."""
    text = decline.model_dump_json()
    if not receipt_lines:
        return text
    if decline.receipts or text.count(_EMPTY_RECEIPTS) != 1:
        receipts = [Receipt.model_validate_json(line) for line in receipt_lines]
        return decline.model_copy(update={"receipts": [*decline.receipts, *receipts]}).model_dump_json()
    before, after = text.split(_EMPTY_RECEIPTS)
    head = before + '"receipts":['
    blocks, rest = excuse_blocks(receipt_lines)
    tail = ("," if blocks and rest else "") + ",".join(rest) + "]" + after
    return SplicedText(head, tuple(blocks), tail)
