"""Embedding vectors stored as float32, float16, int16 or int8.

Blob layout::

    version (0x01) | kind | body

    kind 0x00 float32  body = n x float32 LE                          exact
    kind 0x01 float16  body = n x float16 LE                          lossy
    kind 0x02 int16    body = offset f32 | scale f32 | n x uint16 LE  lossy
    kind 0x03 int8     body = offset f32 | scale f32 | n x uint8      lossy
    kind 0x04 int8     body = offset f32 | scale f32 | zstd(n x uint8) lossy

The kind travels with every row, so changing ``embedding_storage`` never makes an
older row unreadable. Integer kinds map [min, max] of each vector linearly onto the
codes (value = offset + code * scale). Vectors a lossy kind cannot represent
(NaN or infinity anywhere; float16 beyond +-65504; empty) are stored as float32,
so ``encode`` never fails on a finite or non-finite float32 input.

``int8`` writes kind 0x04 when it is smaller than 0x03: the same codes, entropy-coded
by a magicless zstd frame (no content size, checksum or dict id) made with the fixed
dictionary of ``_int8_tables``, whose Huffman table fits the bell-shaped codes of
real-valued vectors (about 372 bytes for 384 codes). Same values, same error bound.
"""

from __future__ import annotations

import struct
import threading
from collections.abc import Sequence
from typing import Final

import numpy as np
import numpy.typing as npt
import zstandard

from ._format import CodecError
from ._int8_tables import int8_dictionary

__all__ = [
    "EMBEDDING_STORAGES",
    "VERSION",
    "decode",
    "encode",
    "int8_codes",
    "max_abs_error_bound",
    "stored_kind",
]

VERSION: Final = 0x01

_KIND_FLOAT32: Final = 0x00
_KIND_FLOAT16: Final = 0x01
_KIND_INT16: Final = 0x02
_KIND_INT8: Final = 0x03
_KIND_INT8_CODED: Final = 0x04  # written for storage "int8", never chosen by name

_KINDS: Final[dict[str, int]] = {
    "float32": _KIND_FLOAT32,
    "float16": _KIND_FLOAT16,
    "int16": _KIND_INT16,
    "int8": _KIND_INT8,
}
_NAMES: Final[dict[int, str]] = {kind: name for name, kind in _KINDS.items()}
_NAMES[_KIND_INT8_CODED] = "int8"
EMBEDDING_STORAGES: Final = tuple(_KINDS)

# Highest code of each integer kind: codes run 0..levels.
_LEVELS: Final[dict[int, int]] = {_KIND_INT16: 65535, _KIND_INT8: 255}
_CODE_DTYPES: Final[dict[int, str]] = {_KIND_INT16: "<u2", _KIND_INT8: "u1"}
_FLOAT16_MAX: Final = 65504.0
_FLOAT32_MAX: Final = float(np.finfo(np.float32).max)
_PARAMS: Final = struct.Struct("<ff")  # offset, scale
# More codes than any embedding the server accepts; bounds what a corrupt frame may
# make the decompressor allocate.
_MAX_CODES: Final = 1 << 20

_FloatArray = npt.NDArray[np.float32]


def encode(vec: npt.ArrayLike | Sequence[float], storage: str) -> bytes:
    """Encode a 1-d vector under ``storage`` (one of ``EMBEDDING_STORAGES``)."""
    kind = _KINDS.get(storage)
    if kind is None:
        raise ValueError(f"embedding storage must be one of {EMBEDDING_STORAGES}, got {storage!r}")
    values = np.asarray(vec, dtype=np.float32)
    if values.ndim != 1:
        raise ValueError(f"embedding must be 1-d, got shape {values.shape}")
    kind = _representable_kind(values, kind)
    header = bytes([VERSION, kind])
    if kind == _KIND_FLOAT32:
        return header + values.astype("<f4").tobytes()
    if kind == _KIND_FLOAT16:
        return header + values.astype("<f2").tobytes()
    body = _quantise(values, kind)
    if kind == _KIND_INT8:
        coded = _int8_compressor().compress(body[_PARAMS.size :])
        if len(coded) < len(body) - _PARAMS.size:
            return bytes([VERSION, _KIND_INT8_CODED]) + body[: _PARAMS.size] + coded
    return header + body


def int8_codes(vec: npt.ArrayLike) -> bytes:
    """The raw uint8 codes int8 storage quantises ``vec`` to (for training the table)."""
    return _quantise(np.asarray(vec, dtype=np.float32), _KIND_INT8)[_PARAMS.size :]


# zstd contexts are not thread-safe: one pair per thread, built on first use.
_local = threading.local()


def _int8_compressor() -> zstandard.ZstdCompressor:
    compressor: zstandard.ZstdCompressor | None = getattr(_local, "compressor", None)
    if compressor is None:
        params = zstandard.ZstdCompressionParameters.from_level(
            3,
            format=zstandard.FORMAT_ZSTD1_MAGICLESS,
            # The codes' count is the frame's output length: no need to store it.
            write_content_size=0,
            write_dict_id=0,
            write_checksum=0,
        )
        compressor = zstandard.ZstdCompressor(
            dict_data=int8_dictionary(), compression_params=params
        )
        _local.compressor = compressor
    return compressor


def _int8_decompressor() -> zstandard.ZstdDecompressor:
    decompressor: zstandard.ZstdDecompressor | None = getattr(_local, "decompressor", None)
    if decompressor is None:
        decompressor = zstandard.ZstdDecompressor(
            dict_data=int8_dictionary(), format=zstandard.FORMAT_ZSTD1_MAGICLESS
        )
        _local.decompressor = decompressor
    return decompressor


def _representable_kind(values: _FloatArray, kind: int) -> int:
    """Fall back to float32 where the lossy kind would lose more than its stated bound."""
    if kind == _KIND_FLOAT32:
        return kind
    if values.size == 0 or not np.isfinite(values).all():
        return _KIND_FLOAT32
    if kind == _KIND_FLOAT16 and float(np.abs(values).max()) > _FLOAT16_MAX:
        return _KIND_FLOAT32
    return kind


def _quantise(values: _FloatArray, kind: int) -> bytes:
    levels = _LEVELS[kind]
    low = float(values.min())
    span = float(values.max()) - low
    scale = np.float32(span / levels)
    # Rounding the scale to float32 may shrink it; nudge it up so code ``levels``
    # still reaches the maximum and no value is clipped.
    while float(scale) * levels < span:
        scale = np.nextafter(scale, np.float32(np.inf))
    if scale > 0:
        # No clip needed: x - low is in [0, span] and span / scale <= levels, so the
        # rounded codes stay in 0..levels.
        codes = np.rint((values.astype(np.float64) - low) / float(scale))
    else:
        codes = np.zeros(values.shape, dtype=np.float64)
    return _PARAMS.pack(low, float(scale)) + codes.astype(_CODE_DTYPES[kind]).tobytes()


def decode(blob: bytes) -> _FloatArray:
    """The float32 vector of a blob of any kind (a fresh, writable array)."""
    if len(blob) < 2:
        raise CodecError(f"embedding blob of {len(blob)} bytes has no header")
    if blob[0] != VERSION:
        raise CodecError(f"unknown embedding format version 0x{blob[0]:02x}")
    kind = blob[1]
    body = memoryview(blob)[2:]
    if kind == _KIND_FLOAT32:
        return _frombuffer(body, "<f4").astype(np.float32)
    if kind == _KIND_FLOAT16:
        return _frombuffer(body, "<f2").astype(np.float32)
    if kind in _LEVELS or kind == _KIND_INT8_CODED:
        if len(body) < _PARAMS.size:
            raise CodecError("quantised embedding blob is missing offset and scale")
        offset, scale = (float(param) for param in _PARAMS.unpack_from(body))
        if kind == _KIND_INT8_CODED:
            codes = np.frombuffer(_int8_decode(body[_PARAMS.size :]), dtype="u1")
        else:
            codes = _frombuffer(body[_PARAMS.size :], _CODE_DTYPES[kind])
        # float64 arithmetic, one rounding to float32 at the end: keeps the error at
        # scale/2 plus half an ulp of the result. The scale is rounded up, so a vector
        # reaching float32's largest value would decode a hair above it, to inf: clamp.
        restored = offset + codes.astype(np.float64) * scale
        return np.clip(restored, -_FLOAT32_MAX, _FLOAT32_MAX).astype(np.float32)
    raise CodecError(f"unknown embedding storage kind 0x{kind:02x}")


def _int8_decode(frame: memoryview) -> bytes:
    try:
        # max_output_size bounds only frames that state no size (ours): one that claims
        # a size gets a buffer of that size up front, so a 20-byte rotten blob claiming
        # 2**50 raised MemoryError (INTERNAL) instead of DATA_LOSS. Check the claim first.
        claimed = zstandard.get_frame_parameters(
            frame, zstandard.FORMAT_ZSTD1_MAGICLESS
        ).content_size
        if claimed != zstandard.CONTENTSIZE_UNKNOWN and claimed > _MAX_CODES:
            raise CodecError(
                f"int8 embedding frame claims {claimed} bytes, more than the {_MAX_CODES} allowed"
            )
        return _int8_decompressor().decompress(frame, max_output_size=_MAX_CODES)
    except zstandard.ZstdError as exc:
        raise CodecError(f"corrupt int8 embedding frame: {exc}") from exc


def _frombuffer(body: memoryview, dtype: str) -> npt.NDArray[np.generic]:
    itemsize = np.dtype(dtype).itemsize
    if len(body) % itemsize:
        raise CodecError(f"embedding body of {len(body)} bytes is not a whole number of {dtype}")
    return np.frombuffer(body, dtype=dtype)


def stored_kind(blob: bytes) -> str:
    """The storage a blob was actually written with (after any float32 fallback)."""
    if len(blob) < 2 or blob[0] != VERSION or blob[1] not in _NAMES:
        raise CodecError("not an embedding blob")
    return _NAMES[blob[1]]


def max_abs_error_bound(vec: npt.ArrayLike | Sequence[float], storage: str) -> float:
    """The guaranteed worst-case |decode(encode(vec)) - vec| for this vector.

    float32: 0. float16: half an ulp of the largest magnitude, at least 2**-25
    (float16's subnormal step). int16/int8: half a quantisation step,
    (max - min) / (2 * levels), plus half a float32 ulp of the largest magnitude
    for the final rounding. Vectors that fall back to float32 are exact.
    """
    kind = _KINDS.get(storage)
    if kind is None:
        raise ValueError(f"embedding storage must be one of {EMBEDDING_STORAGES}, got {storage!r}")
    values = np.asarray(vec, dtype=np.float32)
    kind = _representable_kind(values, kind)
    if kind == _KIND_FLOAT32:
        return 0.0
    magnitude = float(np.abs(values).max())
    if kind == _KIND_FLOAT16:
        return max(magnitude * 2.0**-11, 2.0**-25)
    span = float(values.max()) - float(values.min())
    # 2**-22 covers the float32 rounding of the scale (up to two ulps up); 2**-50 the
    # float64 arithmetic of decode; 2**-149 a result that rounds to a float32 subnormal.
    step_error = span / (2 * _LEVELS[kind]) * (1 + 2.0**-22)
    return step_error + magnitude * (2.0**-24 + 2.0**-50) + 2.0**-149
