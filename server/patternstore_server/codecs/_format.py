"""Pieces shared by the on-disk formats: the error every decoder raises and the varint.

Kept private: callers see ``CodecError`` through the package ``__init__``.
"""

from __future__ import annotations

import threading

import zstandard

__all__ = [
    "CodecError",
    "bounded_decompress",
    "decode_varint",
    "encode_varint",
    "magicless_params",
    "zstd_compressor",
    "zstd_decompressor",
]


class CodecError(ValueError):
    """A stored blob cannot be decoded: unknown format byte, truncated, or corrupt.

    A ``ValueError`` so callers that validate input generically still catch it.
    """


def encode_varint(value: int) -> bytes:
    """Unsigned LEB128: ids and dims are small, so one byte in the common case."""
    if value < 0:
        raise ValueError(f"varint must be >= 0, got {value}")
    out = bytearray()
    while True:
        low = value & 0x7F
        value >>= 7
        if value:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


# Ten 7-bit groups cover 64 bits; a longer run is corruption, not a big number.
_MAX_VARINT_BYTES = 10


def decode_varint(blob: bytes | memoryview, offset: int) -> tuple[int, int]:
    """Return ``(value, offset just past it)``; raise ``CodecError`` when truncated."""
    value = 0
    for index in range(_MAX_VARINT_BYTES):
        position = offset + index
        if position >= len(blob):
            raise CodecError("truncated varint")
        byte = blob[position]
        value |= (byte & 0x7F) << (7 * index)
        if not byte & 0x80:
            return value, position + 1
    raise CodecError("varint longer than 10 bytes")


# zstd contexts are not thread-safe, and building one costs far more than compressing a
# small record, so each thread keeps its own, created on first use. The magic number
# is dropped from every frame (4 bytes a row): our own format byte already says what
# follows.
_local = threading.local()


def zstd_compressor(level: int) -> zstandard.ZstdCompressor:
    """This thread's dictionary-less magicless compressor for ``level``."""
    cache: dict[int, zstandard.ZstdCompressor] | None = getattr(_local, "compressors", None)
    if cache is None:
        cache = {}
        _local.compressors = cache
    compressor = cache.get(level)
    if compressor is None:
        compressor = zstandard.ZstdCompressor(compression_params=magicless_params(level))
        cache[level] = compressor
    return compressor


def bounded_decompress(decompressor: zstandard.ZstdDecompressor, frame: bytes, limit: int) -> bytes:
    """Decompress a magicless frame whose header claims at most ``limit`` bytes.

    One-shot decompression allocates the size the frame header claims before reading
    the frame, so a 14-byte corrupt blob claiming 2**50 bytes would raise MemoryError
    (or take gigabytes); check the claim first.
    """
    try:
        claimed = zstandard.get_frame_parameters(
            frame, zstandard.FORMAT_ZSTD1_MAGICLESS
        ).content_size
    except zstandard.ZstdError as exc:
        raise CodecError(f"corrupt zstd frame header: {exc}") from exc
    if claimed > limit:  # an unknown size reads as a huge number too: refuse it as well
        raise CodecError(f"zstd frame claims {claimed} bytes, more than the {limit} allowed")
    return decompressor.decompress(frame)


def zstd_decompressor() -> zstandard.ZstdDecompressor:
    """This thread's dictionary-less magicless decompressor."""
    decompressor: zstandard.ZstdDecompressor | None = getattr(_local, "decompressor", None)
    if decompressor is None:
        decompressor = zstandard.ZstdDecompressor(format=zstandard.FORMAT_ZSTD1_MAGICLESS)
        _local.decompressor = decompressor
    return decompressor


def magicless_params(level: int, dict_size: int = 0) -> zstandard.ZstdCompressionParameters:
    """Frame parameters without magic, checksum or zstd dict id: our header implies them."""
    return zstandard.ZstdCompressionParameters.from_level(
        level,
        dict_size=dict_size,
        format=zstandard.FORMAT_ZSTD1_MAGICLESS,
        # The content size lets decompress() allocate once; the dict id is ours to store.
        write_content_size=1,
        write_dict_id=0,
        write_checksum=0,
    )
