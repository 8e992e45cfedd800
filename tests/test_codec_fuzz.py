"""Fuzz the codecs' decoders: any bytes either decode or raise CodecError, nothing else.

Three generators per decoder: arbitrary bytes, a valid format prefix followed by
arbitrary bytes (to get past the first check), and valid blobs mutated (bytes flipped,
truncated, extended). The bugs the fuzzing found (huge claimed sizes) are fixed and have
their own tests at the end; the fuzz targets no longer skip those inputs.
"""

from __future__ import annotations

import contextlib
import struct
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from patternstore_server.codecs import CodecError, embedding, payload, trajectory
from patternstore_server.codecs._format import decode_varint, encode_varint

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Dictionaries 0x02 blobs may name: raw content, and one with a zstd dictionary's magic
# followed by garbage. Id 5 is named by a prefix below but not supplied.
_RAW_DICT = b'{"step": 1, "tool": "ruff", "args": ["--fix"]}' * 64
DICTIONARIES = {1: _RAW_DICT, 2: b"\x37\xa4\x30\xec" + bytes(range(256)) * 4}


def _payload(blob: bytes) -> Any:
    return payload.decode(blob, DICTIONARIES)


DECODERS: dict[str, Callable[[bytes], Any]] = {
    "payload": _payload,
    "payload.dictionary_id": payload.dictionary_id,
    "embedding": embedding.decode,
    "embedding.stored_kind": embedding.stored_kind,
    "trajectory": trajectory.decode,
    "varint": lambda blob: decode_varint(blob, 0),
}


def _valid_blobs() -> dict[str, list[bytes]]:
    vec = np.linspace(-1, 1, 16, dtype=np.float32)
    traj = np.arange(24, dtype=np.float64) / 7
    return {
        "payload": [
            payload.PayloadEncoder(3).encode(b'{"a": 1}' * 40),
            payload.PayloadEncoder(3).encode(b"x"),
            payload.PayloadEncoder(3, payload.PayloadDictionary(1, _RAW_DICT)).encode(
                b'{"step": 7, "tool": "ruff", "args": ["--fix"]}' * 3
            ),
        ],
        "embedding": [embedding.encode(vec, s) for s in embedding.EMBEDDING_STORAGES],
        "trajectory": [trajectory.encode(traj, 3), trajectory.encode(np.zeros(6), 2)],
        "varint": [encode_varint(300), encode_varint(2**63)],
    }


VALID = _valid_blobs()
VALID["payload.dictionary_id"] = VALID["payload"]
VALID["embedding.stored_kind"] = VALID["embedding"]
PREFIXES = {
    "payload": [b"\x00", b"\x01", b"\x02\x01", b"\x02\x02", b"\x02\x05"],
    "payload.dictionary_id": [b"\x02"],
    "embedding": [b"\x01\x00", b"\x01\x01", b"\x01\x02", b"\x01\x03"],
    "embedding.stored_kind": [b"\x01"],
    "trajectory": [b"\x00\x01", b"\x01\x02", b"\x02\x03", b"\x03\x01", b"\x00", b"\x01"],
    "varint": [b"\x80"],
}


def _check(name: str, blob: bytes) -> None:
    with contextlib.suppress(CodecError):
        DECODERS[name](blob)


@st.composite
def _mutated(draw: st.DrawFn, name: str) -> bytes:
    blob = bytearray(draw(st.sampled_from(VALID[name])))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(("flip", "truncate", "extend", "set")))
        if op == "flip" and blob:
            i = draw(st.integers(0, len(blob) - 1))
            blob[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and blob:
            blob[draw(st.integers(0, len(blob) - 1))] = draw(st.integers(0, 255))
        elif op == "truncate":
            del blob[draw(st.integers(0, len(blob))) :]
        else:
            blob += draw(st.binary(max_size=16))
    return bytes(blob)


@pytest.mark.parametrize("name", list(DECODERS))
@FUZZ
@given(data=st.data())
def test_decoders_raise_only_codec_error(name: str, data: st.DataObject) -> None:
    blob = data.draw(
        st.one_of(
            st.binary(max_size=256),
            st.tuples(st.sampled_from(PREFIXES[name]), st.binary(max_size=256)).map(
                lambda t: t[0] + t[1]
            ),
            _mutated(name),
        )
    )
    _check(name, blob)


def test_valid_blobs_still_decode() -> None:
    """The fuzz seeds are real blobs: a check that the mutations start from truth."""
    # Each seed decodes to the value _valid_blobs encoded.
    assert [_payload(blob) for blob in VALID["payload"]] == [
        b'{"a": 1}' * 40,
        b"x",
        b'{"step": 7, "tool": "ruff", "args": ["--fix"]}' * 3,
    ]
    vec = np.linspace(-1, 1, 16, dtype=np.float32)
    for blob in VALID["embedding"]:
        # Exact for float32; the lossy kinds stay within 1/127 of the largest component.
        np.testing.assert_allclose(embedding.decode(blob), vec, atol=1 / 127)
    values, dims = trajectory.decode(VALID["trajectory"][0])
    assert dims == 3
    np.testing.assert_allclose(values, np.arange(24, dtype=np.float64) / 7, atol=1e-6)
    assert [DECODERS["varint"](blob)[0] for blob in VALID["varint"]] == [300, 2**63]


# -- bugs found ------------------------------------------------------------------------


def test_trajectory_with_huge_dims_raises_codec_error() -> None:
    with pytest.raises(CodecError):
        trajectory.decode(b"\x00" + encode_varint(2**63))


def _bomb(content_size: int) -> bytes:
    """A magicless zstd frame that claims content_size bytes and holds one raw byte."""
    descriptor = 0xE0  # 8-byte content size, single segment
    last_raw_block = (1 | 0 << 1 | 1 << 3).to_bytes(3, "little")
    return bytes([descriptor]) + struct.pack("<Q", content_size) + last_raw_block + b"a"


@pytest.mark.parametrize(
    "decode",
    [
        lambda b: payload.decode(b"\x01" + b, {}),
        lambda b: trajectory.decode(b"\x01\x01" + b),
        # int8 embedding codes (kind 0x04): once MemoryError, so INTERNAL not DATA_LOSS.
        lambda b: embedding.decode(bytes([1, 4]) + struct.pack("<ff", 0, 1) + b),
    ],
    ids=["payload", "trajectory", "embedding-int8"],
)
def test_a_zstd_frame_claiming_a_huge_size_raises_codec_error(
    decode: Callable[[bytes], Any],
) -> None:
    with pytest.raises(CodecError):
        decode(_bomb(2**50))
