"""The coordinator of the pattern tiers: L1 (decoded, adaptive) over L2 (compressed, TTL).

Lookup: L1, then L2, then the caller's loader (SQLite), whose result fills L1. L2 is a
*victim* tier, exclusive of L1: it receives L1's capacity evictions (including the
candidates W-TinyLFU refuses to admit), and an L2 hit moves the entry back to L1. So a
pattern is held once, decoded or compressed, never both: an inclusive L2 held a second,
compressed copy of every L1 entry (25 MiB of 72 MiB held after the bench's mix over
1,000,000 patterns) without adding a hit. A write invalidates both tiers before its
reply is sent. Not thread-safe: used from the event loop thread only.
"""

from __future__ import annotations

from collections.abc import Sequence

from .base import Cache
from .l2 import CompressedCache

__all__ = ["PatternTiers"]


class PatternTiers:
    def __init__(self, l1: Cache, l2: CompressedCache | None) -> None:
        self.l1 = l1
        self.l2 = l2

    def get(self, key: str) -> bytes | None:
        data = self.l1.get(key)
        if data is not None or self.l2 is None:
            return data
        return self.get_l2(key)

    def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        found = self.l1.get_many(keys)
        if self.l2 is not None and None in found:
            for i, key in enumerate(keys):
                if found[i] is None:
                    found[i] = self.get_l2(key)
        return found

    def get_l2(self, key: str) -> bytes | None:
        """L2 only (after an L1 miss), moving a hit to L1."""
        l2 = self.l2
        assert l2 is not None
        data = l2.get(key)
        if data is not None and self.l1.getsizeof(data) <= self.l1.max_bytes:
            # Out of L2 first: the L1 insert may evict, and its victims land in L2.
            l2.discard(key)
            self.l1[key] = data
        return data

    def fill(self, key: str, data: bytes) -> None:
        """Cache what was read from SQLite (or from the pending state): L1, or L2 for a
        pattern larger than all of L1."""
        if self.l1.getsizeof(data) <= self.l1.max_bytes:
            self.l1[key] = data
        elif self.l2 is not None:
            self.l2.put(key, data)

    def __contains__(self, key: str) -> bool:
        return key in self.l1 or (self.l2 is not None and key in self.l2)

    def invalidate(self, key: str) -> None:
        if key in self.l1:
            del self.l1[key]
        if self.l2 is not None:
            self.l2.discard(key)

    def clear(self) -> None:
        self.l1.clear()
        if self.l2 is not None:
            self.l2.clear()

    def figures(self) -> list[tuple[str, int, int, int, int, int]]:
        """(tier, hits, misses, evictions, entries, bytes) for l1 and l2."""
        c = self.l1
        out = [("l1", c.hits, c.misses, c.evictions, len(c), c.currsize)]
        if self.l2 is not None:
            m = self.l2
            out.append(("l2", m.hits, m.misses, m.evictions, len(m), m.currsize))
        return out
