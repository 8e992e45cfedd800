"""Lossless trajectories: delta along the steps on the float64 bit patterns, then zstd.

Blob layout::

    format | varint dims | body

    0x00  body = steps x dims float64 LE, row-major           (raw: nothing shrank)
    0x01  body = zstd(column-major words of zigzag(sub-delta))
    0x02  body = zstd(byte planes of column-major zigzag(sub-delta) words)
    0x03  body = zstd(byte planes of column-major xor-delta words)

Every transform works on the IEEE-754 words as uint64 (wrapping subtraction or
XOR), never on the float values, so any bit pattern comes back exactly: NaN
payloads, signalling NaNs, infinities, -0.0 and subnormals included. The first
step is kept as is; each later step stores its difference from the one before,
per column. The encoder tries each transform and keeps the smallest (different
data favours different ones: values logged at a fixed resolution give a handful
of repeating deltas, float32-origin values leave whole zero byte planes), and
falls back to raw, so a blob is at most ``1 + len(varint(dims))`` bytes larger
than the raw values.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

import numpy as np
import numpy.typing as npt
import zstandard

from ._format import (
    CodecError,
    bounded_decompress,
    decode_varint,
    encode_varint,
    zstd_compressor,
    zstd_decompressor,
)

# Larger than any trajectory the server accepts (1,000,000 float64 values).
_MAX_BODY_BYTES = 64 * 1024 * 1024

__all__ = [
    "DEFAULT_LEVEL",
    "FORMAT_RAW",
    "FORMAT_SUB_BYTE_PLANES",
    "FORMAT_SUB_WORDS",
    "FORMAT_XOR_BYTE_PLANES",
    "decode",
    "encode",
]

FORMAT_RAW: Final = 0x00
FORMAT_SUB_WORDS: Final = 0x01
FORMAT_SUB_BYTE_PLANES: Final = 0x02
FORMAT_XOR_BYTE_PLANES: Final = 0x03

DEFAULT_LEVEL: Final = 3

_Words = npt.NDArray[np.uint64]
_Floats = npt.NDArray[np.float64]


def encode(values: npt.ArrayLike, dims: int, level: int = DEFAULT_LEVEL) -> bytes:
    """Encode ``steps x dims`` float64 values (flat row-major, or shaped (steps, dims))."""
    if dims < 1:
        raise ValueError(f"dims must be >= 1, got {dims}")
    flat = np.ascontiguousarray(values, dtype="<f8").reshape(-1)
    if flat.size % dims:
        raise ValueError(f"{flat.size} values are not a whole number of steps of {dims} dims")
    header = encode_varint(dims)
    raw = bytes([FORMAT_RAW]) + header + flat.tobytes()
    if flat.size == 0:
        return raw
    words = flat.view("<u8").reshape(-1, dims)
    best = raw
    for fmt, transform in _TRANSFORMS.items():
        frame = zstd_compressor(level).compress(transform(words))
        if 1 + len(header) + len(frame) < len(best):
            best = bytes([fmt]) + header + frame
    return best


def decode(blob: bytes) -> tuple[_Floats, int]:
    """``(flat row-major float64 values, dims)`` from a blob of any format."""
    if not blob:
        raise CodecError("empty trajectory blob: no format byte")
    fmt = blob[0]
    dims, start = decode_varint(blob, 1)
    if not 1 <= dims <= _MAX_BODY_BYTES // 8:
        raise CodecError(f"trajectory blob with dims = {dims}")
    if fmt == FORMAT_RAW:
        body = blob[start:]
    elif fmt in _INVERSES:
        try:
            body = bounded_decompress(zstd_decompressor(), blob[start:], _MAX_BODY_BYTES)
        except zstandard.ZstdError as exc:
            raise CodecError(f"corrupt zstd trajectory (format 0x{fmt:02x}): {exc}") from exc
    else:
        raise CodecError(f"unknown trajectory format byte 0x{fmt:02x}")
    if len(body) % (8 * dims):
        raise CodecError(f"trajectory body of {len(body)} bytes is not whole steps of {dims} dims")
    steps = len(body) // (8 * dims)
    if fmt == FORMAT_RAW:
        words = np.frombuffer(body, dtype="<u8").reshape(steps, dims)
    else:
        words = _INVERSES[fmt](body, steps, dims)
    # np.array copies: the result is writable and never aliases the blob.
    flat_words = np.array(words, dtype=np.uint64, order="C").reshape(-1)
    return flat_words.view(np.float64), dims


# Forward transforms: (steps, dims) words -> bytes to compress.


def _sub_delta(words: _Words) -> _Words:
    deltas = words.copy()
    deltas[1:] -= words[:-1]  # uint64: wraps, so any pair of patterns round-trips
    # Zigzag moves the sign to bit 0: small negative steps become small numbers
    # instead of 0xFFFF..., which keeps the high bytes zero.
    deltas[1:] = (deltas[1:] << np.uint64(1)) ^ (np.uint64(0) - (deltas[1:] >> np.uint64(63)))
    return deltas


def _xor_delta(words: _Words) -> _Words:
    deltas = words.copy()
    deltas[1:] ^= words[:-1]
    return deltas


def _column_words(deltas: _Words) -> bytes:
    # Column-major: one column's deltas are alike, so neighbours in the stream are too.
    return np.ascontiguousarray(deltas.T, dtype="<u8").tobytes()


def _byte_planes(deltas: _Words) -> bytes:
    # Byte k of every word together: exponent and high mantissa bytes barely change
    # and compress to almost nothing even when the low bytes are noise.
    column_major = np.ascontiguousarray(deltas.T, dtype="<u8")
    return np.ascontiguousarray(column_major.view(np.uint8).reshape(-1, 8).T).tobytes()


_TRANSFORMS: Final[dict[int, Callable[[_Words], bytes]]] = {
    FORMAT_SUB_WORDS: lambda words: _column_words(_sub_delta(words)),
    FORMAT_SUB_BYTE_PLANES: lambda words: _byte_planes(_sub_delta(words)),
    FORMAT_XOR_BYTE_PLANES: lambda words: _byte_planes(_xor_delta(words)),
}


# Inverse transforms: decompressed bytes -> (steps, dims) words.


def _from_column_words(body: bytes, steps: int, dims: int) -> _Words:
    return np.frombuffer(body, dtype="<u8").reshape(dims, steps).T.astype(np.uint64)


def _from_byte_planes(body: bytes, steps: int, dims: int) -> _Words:
    planes = np.frombuffer(body, dtype=np.uint8).reshape(8, steps * dims)
    column_major = np.ascontiguousarray(planes.T).view("<u8").reshape(dims, steps)
    return column_major.T.astype(np.uint64)


def _undo_sub(deltas: _Words) -> _Words:
    zigzag = deltas[1:]
    deltas[1:] = (zigzag >> np.uint64(1)) ^ (np.uint64(0) - (zigzag & np.uint64(1)))
    return np.cumsum(deltas, axis=0, dtype=np.uint64)  # wraps like the encoder's subtraction


def _undo_xor(deltas: _Words) -> _Words:
    return np.bitwise_xor.accumulate(deltas, axis=0)


_INVERSES: Final[dict[int, Callable[[bytes, int, int], _Words]]] = {
    FORMAT_SUB_WORDS: lambda body, steps, dims: _undo_sub(_from_column_words(body, steps, dims)),
    FORMAT_SUB_BYTE_PLANES: lambda body, steps, dims: _undo_sub(
        _from_byte_planes(body, steps, dims)
    ),
    FORMAT_XOR_BYTE_PLANES: lambda body, steps, dims: _undo_xor(
        _from_byte_planes(body, steps, dims)
    ),
}
