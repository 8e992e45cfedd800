"""zstd for the opaque ``data`` payload, with an optional trained dictionary.

Blob layout (first byte = format, see DESIGN.md)::

    0x00 | data                          stored raw: compression did not shrink it
    0x01 | zstd frame                    zstd, no dictionary
    0x02 | varint dict_id | zstd frame   zstd with the dictionary stored under dict_id

Frames are magicless and carry the content size but no checksum: on records of a
few hundred bytes the 4 bytes a row are a visible share. A corrupt frame does not
always fail to decode (helper-29: 29% of single-bit flips decoded to other bytes), so
the storage layer checks every decoded payload against its content key (the BLAKE2b
of the raw bytes, which the blob is stored under): that is the checksum.
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import zstandard

from ._format import (
    CodecError,
    bounded_decompress,
    decode_varint,
    encode_varint,
    magicless_params,
    zstd_compressor,
    zstd_decompressor,
)

__all__ = [
    "DEFAULT_DICT_SIZE",
    "DEFAULT_LEVEL",
    "FORMAT_RAW",
    "FORMAT_ZSTD",
    "FORMAT_ZSTD_DICT",
    "PayloadDictionary",
    "PayloadEncoder",
    "RatioTracker",
    "decode",
    "dictionary_id",
    "saved_fraction",
    "train_dictionary",
]

FORMAT_RAW = 0x00
FORMAT_ZSTD = 0x01
FORMAT_ZSTD_DICT = 0x02

DEFAULT_LEVEL = 3
# Larger than any payload the server accepts (1 MiB): a frame claiming more is corrupt.
MAX_PAYLOAD_BYTES = 16 * 1024 * 1024
# Measured on tests/corpus.py: 16 KiB -> 76.7 % saved, 32 KiB -> 77.2 %, 64 KiB -> 77.5 %.
# 32 KiB is where the curve flattens; each thread holds one copy per live dictionary.
DEFAULT_DICT_SIZE = 32 * 1024


@dataclass(frozen=True, slots=True)
class PayloadDictionary:
    """A trained dictionary and the id the database stores it under (ids are never reused)."""

    dict_id: int
    data: bytes

    def __post_init__(self) -> None:
        if self.dict_id < 0:
            raise ValueError(f"dict_id must be >= 0, got {self.dict_id}")


class PayloadEncoder:
    """Encodes payloads at one level with at most one dictionary.

    Immutable once built: to switch dictionaries, build a new encoder and swap the
    reference. Safe to share between threads (each thread gets its own zstd context).
    """

    def __init__(
        self, level: int = DEFAULT_LEVEL, dictionary: PayloadDictionary | None = None
    ) -> None:
        if not 1 <= level <= zstandard.MAX_COMPRESSION_LEVEL:
            raise ValueError(
                f"zstd level must be 1..{zstandard.MAX_COMPRESSION_LEVEL}, got {level}"
            )
        self._level = level
        self._dictionary = dictionary
        if dictionary is None:
            self._header = bytes([FORMAT_ZSTD])
        else:
            self._header = bytes([FORMAT_ZSTD_DICT]) + encode_varint(dictionary.dict_id)
        # Guards nothing shared: each thread's compressor lives only in its own slot.
        self._local = threading.local()

    @property
    def level(self) -> int:
        return self._level

    @property
    def dictionary(self) -> PayloadDictionary | None:
        return self._dictionary

    def encode(self, data: bytes) -> bytes:
        frame = self._compressor().compress(data)
        if len(self._header) + len(frame) >= 1 + len(data):
            return bytes([FORMAT_RAW]) + data
        return self._header + frame

    def _compressor(self) -> zstandard.ZstdCompressor:
        if self._dictionary is None:
            return zstd_compressor(self._level)
        compressor: zstandard.ZstdCompressor | None = getattr(self._local, "compressor", None)
        if compressor is None:
            compressor = zstandard.ZstdCompressor(
                dict_data=zstandard.ZstdCompressionDict(self._dictionary.data),
                compression_params=magicless_params(self._level, len(self._dictionary.data)),
            )
            self._local.compressor = compressor
        return compressor


# Per thread: dict_id -> (dictionary bytes, decompressor). The bytes are kept to notice a
# caller passing different content under a known id (a bug, but not one to hide).
_local = threading.local()


def _dict_decompressor(dict_id: int, data: bytes) -> zstandard.ZstdDecompressor:
    cache: dict[int, tuple[bytes, zstandard.ZstdDecompressor]] | None = getattr(
        _local, "decompressors", None
    )
    if cache is None:
        cache = {}
        _local.decompressors = cache
    entry = cache.get(dict_id)
    if entry is not None and (entry[0] is data or entry[0] == data):
        return entry[1]
    decompressor = zstandard.ZstdDecompressor(
        dict_data=zstandard.ZstdCompressionDict(data),
        format=zstandard.FORMAT_ZSTD1_MAGICLESS,
    )
    cache[dict_id] = (data, decompressor)
    return decompressor


def decode(blob: bytes, dictionaries: Mapping[int, bytes]) -> bytes:
    """Payload bytes from a blob of any format; ``dictionaries`` maps dict_id -> bytes.

    Only format 0x02 looks the id up, so callers may pass ``{}`` when no
    dictionary has ever been trained.
    """
    if not blob:
        raise CodecError("empty payload blob: no format byte")
    fmt = blob[0]
    try:
        if fmt == FORMAT_RAW:
            return blob[1:]
        if fmt == FORMAT_ZSTD:
            return bounded_decompress(zstd_decompressor(), blob[1:], MAX_PAYLOAD_BYTES)
        if fmt == FORMAT_ZSTD_DICT:
            dict_id, start = decode_varint(blob, 1)
            data = dictionaries.get(dict_id)
            if data is None:
                raise CodecError(f"payload needs dictionary {dict_id}, which was not supplied")
            return bounded_decompress(
                _dict_decompressor(dict_id, data), blob[start:], MAX_PAYLOAD_BYTES
            )
    except zstandard.ZstdError as exc:
        raise CodecError(f"corrupt zstd payload (format 0x{fmt:02x}): {exc}") from exc
    raise CodecError(f"unknown payload format byte 0x{fmt:02x}")


def dictionary_id(blob: bytes) -> int | None:
    """The dictionary a blob needs, or None: lets the server keep every referenced one."""
    if blob and blob[0] == FORMAT_ZSTD_DICT:
        return decode_varint(blob, 1)[0]
    return None


def train_dictionary(
    samples: Sequence[bytes], dict_size: int = DEFAULT_DICT_SIZE, level: int = DEFAULT_LEVEL
) -> bytes:
    """Train a zstd dictionary on a sample of stored payloads.

    zstd needs many samples (hundreds) totalling well over ``dict_size``; with too few
    it fails, and this raises ``ValueError`` so the caller can wait for more data.
    """
    # The stub asks for a list of its own buffer union, and list is invariant.
    usable: list[bytes | bytearray | memoryview] = [sample for sample in samples if sample]
    if not usable:
        raise ValueError("cannot train a dictionary on no non-empty samples")
    try:
        trained = zstandard.train_dictionary(dict_size, usable, level=level)
    except zstandard.ZstdError as exc:
        raise ValueError(
            f"dictionary training failed on {len(usable)} samples "
            f"({sum(map(len, usable))} bytes): {exc}; store more payloads first"
        ) from exc
    return trained.as_bytes()


def saved_fraction(encoder: PayloadEncoder, samples: Iterable[bytes]) -> float:
    """1 - stored/raw over ``samples``: the baseline for a ``RatioTracker``.

    Measure it on payloads the dictionary was not trained on, or it flatters.
    """
    raw = 0
    stored = 0
    for sample in samples:
        raw += len(sample)
        stored += len(encoder.encode(sample))
    if raw == 0:
        return 0.0
    return 1.0 - stored / raw


class RatioTracker:
    """Tells the server when the current dictionary has gone stale.

    Records (raw, stored) sizes of recent writes in a sliding window; ``drifted()`` is
    true once the window is full and its saved fraction has fallen more than
    ``tolerance`` (absolute, 0.05 = 5 points) below the baseline measured when the
    dictionary was trained. Without a baseline (no dictionary yet) it never drifts:
    the first training is triggered by sample count, not by ratio.
    """

    def __init__(self, window: int = 1000, tolerance: float = 0.05) -> None:
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        if not 0.0 < tolerance < 1.0:
            raise ValueError(f"tolerance must be in (0, 1), got {tolerance}")
        self._window = window
        self._tolerance = tolerance
        # Guards _sizes, _raw_total, _stored_total and _baseline: writers record from
        # several request threads while the flusher asks drifted().
        self._lock = threading.Lock()
        self._sizes: collections.deque[tuple[int, int]] = collections.deque()
        self._raw_total = 0
        self._stored_total = 0
        self._baseline: float | None = None

    def record(self, raw_size: int, stored_size: int) -> None:
        with self._lock:
            self._sizes.append((raw_size, stored_size))
            self._raw_total += raw_size
            self._stored_total += stored_size
            if len(self._sizes) > self._window:
                old_raw, old_stored = self._sizes.popleft()
                self._raw_total -= old_raw
                self._stored_total -= old_stored

    def __len__(self) -> int:
        """Writes in the window now."""
        with self._lock:
            return len(self._sizes)

    def reset(self, baseline: float | None) -> None:
        """Start over after a (re)train, with that dictionary's measured saved fraction."""
        with self._lock:
            self._sizes.clear()
            self._raw_total = 0
            self._stored_total = 0
            self._baseline = baseline

    @property
    def baseline(self) -> float | None:
        with self._lock:
            return self._baseline

    @property
    def saved(self) -> float | None:
        """Saved fraction over the window, None before anything was recorded."""
        with self._lock:
            return self._saved_locked()

    def drifted(self) -> bool:
        with self._lock:
            saved = self._saved_locked()
            if self._baseline is None or saved is None or len(self._sizes) < self._window:
                return False
            return saved < self._baseline - self._tolerance

    def _saved_locked(self) -> float | None:
        if self._raw_total == 0:
            return None
        return 1.0 - self._stored_total / self._raw_total
