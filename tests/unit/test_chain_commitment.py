"""Manifest commitment text (protocol.md §10): `<other><M:A3;S2>`, <= 128 UTF-8 bytes."""

from __future__ import annotations

import pytest

from horde_protocol.enums import ExecutorClass
from miner_agent.chain.commitment import (
    MAX_COMMITMENT_BYTES,
    CommitmentTooLong,
    encode_manifest,
    manifest_from_commitment,
    merge_commitment,
    parse_manifest_payload,
    split_commitment,
)

S = ExecutorClass.spin_up_4min__gpu_24gb
A = ExecutorClass.always_on__gpu_24gb
L = ExecutorClass.always_on__llm__a6000
T = ExecutorClass.always_on__test
C = ExecutorClass.always_on__cpu__8c__16gb


def test_codes_sorted_by_code_not_by_class_name() -> None:
    assert encode_manifest({S.value: 2, A.value: 3}) == "A3;S2"
    assert encode_manifest({T: 1, S: 4, L: 1, C: 2, A: 7}) == "A7;C2;L1;S4;T1"


def test_empty_manifest_is_empty_payload_and_pause_envelope() -> None:
    assert encode_manifest({}) == ""
    assert merge_commitment("", "") == "<M:>"


def test_unknown_class_and_negative_count_are_refused() -> None:
    with pytest.raises(ValueError):
        encode_manifest({"always_on.gpu-80gb": 1})
    with pytest.raises(ValueError):
        encode_manifest({S.value: -1})


def test_merge_keeps_other_data_and_appends_envelope_at_the_end() -> None:
    assert merge_commitment("hello", "S1") == "hello<M:S1>"
    assert merge_commitment("<M:A1>hello", "S1") == "hello<M:S1>"
    assert merge_commitment("  a<M:A1>b<M:L2>  ", "S1") == "ab<M:S1>"


def test_merge_refuses_over_128_bytes_counting_utf8_bytes() -> None:
    payload = "S1"
    room = MAX_COMMITMENT_BYTES - len("<M:S1>")
    assert len(merge_commitment("x" * room, payload).encode()) == MAX_COMMITMENT_BYTES
    with pytest.raises(CommitmentTooLong):
        merge_commitment("x" * (room + 1), payload)
    # "é" is two bytes: half as many characters fit.
    with pytest.raises(CommitmentTooLong):
        merge_commitment("é" * (room // 2 + 1), payload)


def test_split_reads_the_first_envelope() -> None:
    assert split_commitment("abc") == ("abc", None)
    assert split_commitment("x<M:A1>y<M:S9>") == ("xy", "A1")


def test_parse_ignores_unknown_codes_and_bad_pairs() -> None:
    assert parse_manifest_payload("A3;S2") == {A: 3, S: 2}
    assert parse_manifest_payload("A3;Z9;S;Sx;L-1; C4 ;T²") == {A: 3, C: 4}
    assert parse_manifest_payload("") == {}


def test_manifest_from_commitment_round_trip() -> None:
    manifest = {S.value: 2, A.value: 3}
    text = merge_commitment("other", encode_manifest(manifest))
    assert manifest_from_commitment(text) == {A: 3, S: 2}
    assert manifest_from_commitment("no envelope") is None
    assert manifest_from_commitment("<M:>") == {}
