"""Least frequently used, with exact per-key counts and no aging."""

from __future__ import annotations

from collections import OrderedDict

from .base import Cache, EvictHook, SizeOf

__all__ = ["LFUCache"]


class LFUCache(Cache):
    """Evicts the entry with the fewest accesses since it was inserted; ties go to the
    one accessed longest ago.

    Keys sit in one bucket per access count (an insertion-ordered dict each), so every
    operation is O(1) apart from finding the next non-empty bucket after the lowest
    one empties on a removal, which scans the distinct counts.
    """

    def __init__(
        self,
        maxsize: int,
        max_bytes: int | None = None,
        getsizeof: SizeOf | None = None,
        on_evict: EvictHook | None = None,
    ) -> None:
        super().__init__(maxsize, max_bytes, getsizeof, on_evict)
        self._count: dict[str, int] = {}
        self._buckets: dict[int, OrderedDict[str, None]] = {}
        self._min_count = 0

    def _bump(self, key: str, count: int) -> None:
        buckets = self._buckets
        bucket = buckets[count]
        del bucket[key]
        if not bucket:
            del buckets[count]
            if self._min_count == count:
                self._min_count = count + 1
        count += 1
        self._count[key] = count
        higher = buckets.get(count)
        if higher is None:
            buckets[count] = OrderedDict(((key, None),))
        else:
            higher[key] = None

    def _apply_reads(self, keys: list[str]) -> None:
        counts = self._count
        for key in keys:
            count = counts.get(key)
            if count is not None:
                self._bump(key, count)

    def _on_insert(self, key: str) -> None:
        self._count[key] = 1
        bucket = self._buckets.get(1)
        if bucket is None:
            self._buckets[1] = OrderedDict(((key, None),))
        else:
            bucket[key] = None
        self._min_count = 1

    def _on_update(self, key: str) -> None:
        self._bump(key, self._count[key])

    def _unlink(self, key: str) -> None:
        count = self._count.pop(key)
        bucket = self._buckets[count]
        del bucket[key]
        if not bucket:
            del self._buckets[count]
            if self._min_count == count:
                self._min_count = min(self._buckets, default=0)

    def _on_delete(self, key: str) -> None:
        self._unlink(key)

    def _victim(self) -> str:
        key = next(iter(self._buckets[self._min_count]))
        self._unlink(key)
        return key

    def _on_clear(self) -> None:
        self._count.clear()
        self._buckets.clear()
        self._min_count = 0
