"""L2: serialised patterns kept zstd-compressed, bounded in bytes of memory, with a TTL.

Entries leave in insertion order (FIFO), which is also expiry order, so both the byte
bound and the TTL are enforced by popping from one end. Values are compressed with the
payload codec (a format byte in front; a trained dictionary plugs in through the
encoder), so a value that does not shrink is kept raw at the cost of one byte.
"""

from __future__ import annotations

import sys
import time
from collections import OrderedDict
from collections.abc import Callable

from ..codecs import payload

__all__ = ["ENTRY_OVERHEAD", "CompressedCache"]

# What an entry costs beside its compressed value and its key's characters: the key's
# str header, the ordered dict's slot and link, the tuple, the expiry float, the size int
# and the bytes header. tracemalloc, after 40,000 puts through a 2 MiB L2 (FIFO churn
# leaves the dict's table larger than a fresh one): 312 bytes an entry. Counting only
# the compressed bytes let a 64 MiB L2 of 480-byte patterns (149 bytes compressed)
# occupy 2.8 times its bound.
ENTRY_OVERHEAD = 320


_EMPTY_STR = sys.getsizeof("")


def _charge(key: str, blob: bytes) -> int:
    # The key's real size past an ASCII str's header: len(key) undercounted ids outside
    # ASCII, stored at 2-4 bytes a character (helper-26: emoji ids took 1.36x the bound).
    return len(blob) + sys.getsizeof(key) - _EMPTY_STR + ENTRY_OVERHEAD


class CompressedCache:
    """Not thread-safe: the server touches it from the event loop thread only."""

    def __init__(
        self,
        max_bytes: int,
        ttl_s: float,
        *,
        level: int = 3,
        timer: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_bytes = max_bytes
        self.ttl_s = ttl_s
        self._timer = timer
        self._encoder = payload.PayloadEncoder(level=level)
        # key -> (expires at, compressed value, decompressed size), oldest insertion
        # first. One tuple an entry: a side dict of sizes cost ~100 bytes an entry more.
        self._data: OrderedDict[str, tuple[float, bytes, int]] = OrderedDict()
        self.currsize = 0
        self.raw_bytes = 0  # what the entries held occupy decompressed, for the ratio
        self.hits = 0
        self.misses = 0
        self.evictions = 0
        self.expirations = 0

    def __len__(self) -> int:
        return len(self._data)

    def __contains__(self, key: object) -> bool:
        return key in self._data

    def get(self, key: str) -> bytes | None:
        entry = self._data.get(key)
        if entry is None:
            self.misses += 1
            return None
        if entry[0] <= self._timer():
            self._remove(key)
            self.expirations += 1
            self.misses += 1
            return None
        self.hits += 1
        return payload.decode(entry[1], {})

    def put(self, key: str, value: bytes) -> None:
        blob = self._encoder.encode(value)
        if _charge(key, blob) > self.max_bytes:
            self.discard(key)  # too big to keep, and an older value must not stay
            return
        if key in self._data:
            self._remove(key)
        self._data[key] = (self._timer() + self.ttl_s, blob, len(value))
        self.currsize += _charge(key, blob)
        self.raw_bytes += len(value)
        self._shrink()

    def discard(self, key: str) -> None:
        if key in self._data:
            self._remove(key)

    def clear(self) -> None:
        self._data.clear()
        self.currsize = self.raw_bytes = 0

    def purge_expired(self) -> int:
        """Drop entries whose TTL passed (they sit at the old end); return how many."""
        now = self._timer()
        n = 0
        while self._data:
            key, (expires, _, _) = next(iter(self._data.items()))
            if expires > now:
                break
            self._remove(key)
            n += 1
        self.expirations += n
        return n

    def _shrink(self) -> None:
        self.purge_expired()
        while self.currsize > self.max_bytes:
            key = next(iter(self._data))
            self._remove(key)
            self.evictions += 1

    def _remove(self, key: str) -> None:
        _, blob, raw_size = self._data.pop(key)
        self.currsize -= _charge(key, blob)
        self.raw_bytes -= raw_size
