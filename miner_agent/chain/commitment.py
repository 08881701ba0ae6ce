"""The manifest in the miner's knowledge commitment: `<other data><M:A3;S2>` (protocol.md §10).

Pure text functions. The envelope carries `<code><count>` pairs, codes from §2.1 sorted, joined
by `;`; an empty manifest is `<M:>` (how a miner says "paused"). Whatever else the operator keeps
in the commitment survives untouched, and the whole commitment must fit in 128 UTF-8 bytes,
the size of the largest Raw field the Commitments pallet accepts.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from horde_protocol.enums import EXECUTOR_CLASS_BY_SHORT_CODE, EXECUTOR_CLASS_SPECS, ExecutorClass

MAX_COMMITMENT_BYTES = 128
ENVELOPE = re.compile(r"<M:([^>]*)>")


class CommitmentTooLong(ValueError):
    """The merged commitment would not fit on chain; nothing should be written."""


def encode_manifest(manifest: Mapping[str, int] | Mapping[ExecutorClass, int]) -> str:
    """`{"spin_up-4min.gpu-24gb": 2, "always_on.gpu-24gb": 3}` -> `A3;S2`.

    Raises ValueError for an unknown class or a negative count: both would make validators
    distrust the whole envelope, so they are bugs to surface, not values to publish.
    """
    pairs: list[tuple[str, int]] = []
    for cls, count in manifest.items():
        spec = EXECUTOR_CLASS_SPECS.get(ExecutorClass(cls))
        if spec is None:  # pragma: no cover - ExecutorClass() already rejects unknown strings
            raise ValueError(f"no short code for executor class {cls!r}")
        if not isinstance(count, int) or count < 0:
            raise ValueError(f"executor class {cls}: count {count!r} is not a non-negative integer")
        pairs.append((spec.short_code, count))
    return ";".join(f"{code}{count}" for code, count in sorted(pairs))


def envelope(payload: str) -> str:
    return f"<M:{payload}>"


def split_commitment(text: str) -> tuple[str, str | None]:
    """(other data with every envelope removed and outer whitespace stripped, first envelope's
    payload or None when there is no envelope)."""
    match = ENVELOPE.search(text)
    if match is None:
        return text.strip(), None
    return ENVELOPE.sub("", text).strip(), match.group(1)


def merge_commitment(current: str, payload: str) -> str:
    """The commitment to write: `current` minus any old envelope, plus `<M:payload>` at the end.

    Raises CommitmentTooLong when the result exceeds MAX_COMMITMENT_BYTES; the caller logs and
    skips the write rather than truncating someone else's data.
    """
    other, _ = split_commitment(current)
    merged = f"{other}{envelope(payload)}"
    size = len(merged.encode("utf-8"))
    if size > MAX_COMMITMENT_BYTES:
        raise CommitmentTooLong(
            f"commitment would be {size} bytes (limit {MAX_COMMITMENT_BYTES}): "
            f"shorten the other data in the hotkey's commitment ({len(other.encode('utf-8'))} bytes)"
        )
    return merged


def parse_manifest_payload(payload: str) -> dict[ExecutorClass, int]:
    """What a validator reads from `A3;S2`: unknown codes and malformed pairs are skipped."""
    manifest: dict[ExecutorClass, int] = {}
    for fragment in payload.split(";"):
        fragment = fragment.strip()
        code, count = fragment[:1], fragment[1:]
        cls = EXECUTOR_CLASS_BY_SHORT_CODE.get(code)
        if cls is None or not (count.isascii() and count.isdigit()):
            continue
        manifest[cls] = int(count)
    return manifest


def manifest_from_commitment(text: str) -> dict[ExecutorClass, int] | None:
    """The manifest in the first envelope of a commitment, or None when there is no envelope."""
    _, payload = split_commitment(text)
    return None if payload is None else parse_manifest_payload(payload)
