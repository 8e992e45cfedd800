"""Least recently used: the baseline the adaptive policy must never fall behind."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import TypeVar, overload

from .base import Cache, EvictHook, SizeOf

__all__ = ["LRUCache"]

_T = TypeVar("_T")


class LRUCache(Cache):
    """Evicts the entry read or written longest ago.

    The storage dict is itself the recency order (an ``OrderedDict``, oldest first),
    so a hit is one lookup and one C-level ``move_to_end``: cheaper than buffering.
    """

    def __init__(
        self,
        maxsize: int,
        max_bytes: int | None = None,
        getsizeof: SizeOf | None = None,
        on_evict: EvictHook | None = None,
    ) -> None:
        super().__init__(maxsize, max_bytes, getsizeof, on_evict)
        self._order: OrderedDict[str, bytes] = OrderedDict()
        self._data = self._order
        self._lru_hits = 0

    @property
    def hits(self) -> int:
        return self._lru_hits

    def __getitem__(self, key: str) -> bytes:
        order = self._order
        try:
            value = order[key]
        except KeyError:
            self.misses += 1
            raise
        order.move_to_end(key)
        self._lru_hits += 1
        return value

    @overload
    def get(self, key: str) -> bytes | None: ...

    @overload
    def get(self, key: str, default: bytes | _T) -> bytes | _T: ...

    def get(self, key: str, default: object = None) -> object:
        order = self._order
        try:
            value = order[key]
        except KeyError:
            self.misses += 1
            return default
        order.move_to_end(key)
        self._lru_hits += 1
        return value

    def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        # Applied at once like get(): the base's buffered reads are for policies whose
        # bookkeeping is costly, and this one would drop them (see _apply_reads).
        order = self._order
        lookup = order.get
        found = [lookup(key) for key in keys]
        move = order.move_to_end
        for key, value in zip(keys, found, strict=True):
            if value is not None:
                move(key)
        missed = found.count(None)
        self._lru_hits += len(found) - missed
        self.misses += missed
        return found

    def _apply_reads(self, keys: list[str]) -> None:
        # Hits are applied directly in __getitem__/get/get_many; nothing is buffered.
        pass

    def _on_insert(self, key: str) -> None:
        # The base stores the value after this call, which appends the key last.
        pass

    def _on_update(self, key: str) -> None:
        self._order.move_to_end(key)

    def _on_delete(self, key: str) -> None:
        pass

    def _victim(self) -> str:
        return next(iter(self._order))

    def _on_clear(self) -> None:
        pass
