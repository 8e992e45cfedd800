"""The base every L1 policy shares: storage, size accounting, counters, buffered reads.

A policy subclass decides only *order*: which key is the victim when the cache is over
its bounds, and how reads and writes move keys in its own structures. Everything a
caller can observe (values, sizes in bytes, the two bounds, the counters, the eviction
hook) lives here, once.

Not thread-safe: wrap in :class:`~patternstore_server.cache.locked.LockedCache`.
"""

from __future__ import annotations

import sys
from abc import abstractmethod
from collections.abc import Callable, Iterator, MutableMapping, Sequence
from typing import Final, Protocol, TypeVar, overload

__all__ = ["Cache", "EvictHook", "SizeOf"]

EvictHook = Callable[[str, bytes], None]
SizeOf = Callable[[bytes], int]

_T = TypeVar("_T")

# Hits are recorded in a plain list and applied to the policy in one batch before the
# next write, delete or eviction (like Caffeine's read buffer): the hit path costs a
# dict lookup and an append. The buffer is lossy, as Caffeine's is: when it fills,
# its older half goes to the policy's ``_apply_dropped_reads`` (which may keep only
# part of it; still counted in ``hits``), and the write that ends the run applies the
# newest 64 to 127 in full. Applying every hit costs several times the lookup itself
# in pure Python (see DESIGN.md).
_READ_BUFFER_SIZE: Final = 128
_READ_BUFFER_KEEP: Final = _READ_BUFFER_SIZE // 2


class _Sizes(Protocol):
    """Each entry's size, as Cache uses it: read or removed while the entry is still in
    ``_data``, set after it is stored there."""

    def __getitem__(self, key: str) -> int: ...
    def __setitem__(self, key: str, size: int) -> None: ...
    def pop(self, key: str) -> int: ...
    def clear(self) -> None: ...


class _ValueLengths:
    """Sizes that are the values' lengths, computed on demand instead of stored."""

    __slots__ = ("_cache",)

    def __init__(self, cache: Cache) -> None:
        # The cache, not its dict: a policy may replace ``_data`` (LRU keeps its values
        # in its OrderedDict).
        self._cache = cache

    def __getitem__(self, key: str) -> int:
        return len(self._cache._data[key])

    def __setitem__(self, key: str, size: int) -> None:
        pass

    def pop(self, key: str) -> int:
        return len(self._cache._data[key])

    def clear(self) -> None:
        pass


class Cache(MutableMapping[str, bytes]):
    """A bounded map from key to serialised value, evicting by a policy.

    Bounds: at most ``maxsize`` entries and at most ``max_bytes`` bytes, where an
    entry's size is ``getsizeof(value)`` (the serialised length by default).
    ``on_evict(key, value)`` is called for every entry evicted by capacity, never for
    an explicit delete, an overwrite or :meth:`clear`.
    """

    def __init__(
        self,
        maxsize: int,
        max_bytes: int | None = None,
        getsizeof: SizeOf | None = None,
        on_evict: EvictHook | None = None,
    ) -> None:
        if maxsize < 1:
            raise ValueError(f"maxsize must be at least 1, not {maxsize}")
        if max_bytes is not None and max_bytes < 0:
            raise ValueError(f"max_bytes must not be negative, not {max_bytes}")
        self._maxsize = maxsize
        self._max_bytes = sys.maxsize if max_bytes is None else max_bytes
        self._getsizeof: SizeOf = len if getsizeof is None else getsizeof
        self._on_evict = on_evict
        self._data: dict[str, bytes] = {}
        # With a custom getsizeof, sizes are stored rather than recomputed on removal,
        # so one that is not a pure function of the value cannot corrupt currsize. The
        # default (len of bytes) is pure: its sizes are read off the values instead,
        # since a dict of sizes and their int objects cost ~100 bytes an entry, a third
        # of the L1 structures (10 MiB at 100,000 entries, measured with tracemalloc).
        self._sizes: _Sizes = _ValueLengths(self) if getsizeof in (None, len) else {}
        self._currsize = 0
        self._reads: list[str] = []
        # Hits applied to the policy or dropped from a full read buffer.
        self._counted_hits = 0
        self.misses = 0
        self.evictions = 0

    # -- bounds and counters ---------------------------------------------------------

    @property
    def maxsize(self) -> int:
        """The entry bound."""
        return self._maxsize

    @property
    def max_bytes(self) -> int:
        """The byte bound (``sys.maxsize`` when unbounded)."""
        return self._max_bytes

    @property
    def currsize(self) -> int:
        """Bytes held, the sum of ``getsizeof`` over the values."""
        return self._currsize

    @property
    def hits(self) -> int:
        """Lookups that found their key (including ones still in the read buffer)."""
        return self._counted_hits + len(self._reads)

    def getsizeof(self, value: bytes) -> int:
        """The size an entry holding ``value`` counts against ``max_bytes``."""
        return self._getsizeof(value)

    # -- reads -----------------------------------------------------------------------

    def __getitem__(self, key: str) -> bytes:
        try:
            value = self._data[key]
        except KeyError:
            self.misses += 1
            raise
        reads = self._reads
        reads.append(key)
        if len(reads) >= _READ_BUFFER_SIZE:
            self._read_buffer_full()
        return value

    @overload
    def get(self, key: str) -> bytes | None: ...

    @overload
    def get(self, key: str, default: bytes | _T) -> bytes | _T: ...

    def get(self, key: str, default: object = None) -> object:
        """The value for ``key`` or ``default``, counting a hit or a miss."""
        # dict.get rather than try/except: a raised KeyError costs more than the
        # whole rest of a miss.
        value = self._data.get(key)
        if value is None:
            self.misses += 1
            return default
        reads = self._reads
        reads.append(key)
        if len(reads) >= _READ_BUFFER_SIZE:
            self._read_buffer_full()
        return value

    def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        """``get`` for each key (None for a miss), counting hits and misses in bulk.

        A GetPatterns(100) on L1 hits was 0.7 us per id through ``get``; one list
        comprehension and one buffer extend bring the caller's share down to a dict
        lookup per id (the policy's bookkeeping is unchanged, applied from the buffer).
        """
        lookup = self._data.get
        found = [lookup(key) for key in keys]
        missed = found.count(None)
        self.misses += missed
        reads = self._reads
        if missed:
            reads.extend([key for key, value in zip(keys, found, strict=True) if value is not None])
        else:
            reads.extend(keys)
        if len(reads) >= _READ_BUFFER_SIZE:
            self._read_buffer_full()
        return found

    def __contains__(self, key: object) -> bool:
        # A membership test is not an access: no counters, no reordering.
        return key in self._data

    def __len__(self) -> int:
        return len(self._data)

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(entries={len(self._data)}/{self._maxsize}, "
            f"bytes={self._currsize}/{self._max_bytes})"
        )

    # -- writes ----------------------------------------------------------------------

    def __setitem__(self, key: str, value: bytes) -> None:
        size = self._getsizeof(value)
        if size > self._max_bytes:
            raise ValueError(f"value of {size} bytes exceeds max_bytes={self._max_bytes}")
        if self._reads:
            # The policy must see earlier hits before it picks a victim.
            self._drain_reads()
        data = self._data
        if key in data:
            self._currsize += size - self._sizes[key]
            self._on_update(key)
        else:
            self._currsize += size
            self._on_insert(key)
        data[key] = value
        self._sizes[key] = size
        if len(data) > self._maxsize or self._currsize > self._max_bytes:
            self._shrink()

    def __delitem__(self, key: str) -> None:
        if self._reads:
            self._drain_reads()
        # The size first: _ValueLengths reads it off the value still in _data.
        self._currsize -= self._sizes.pop(key)
        del self._data[key]
        self._on_delete(key)

    def popitem(self) -> tuple[str, bytes]:
        """Remove and return the entry the policy would evict next (no hook call)."""
        if not self._data:
            raise KeyError(f"{type(self).__name__} is empty")
        if self._reads:
            self._drain_reads()
        key = self._victim()
        return key, self._remove(key)

    def clear(self) -> None:
        self._data.clear()
        self._sizes.clear()
        self._currsize = 0
        self._counted_hits += len(self._reads)
        self._reads.clear()
        self._on_clear()

    def _shrink(self) -> None:
        """Evict until both bounds hold again."""
        data = self._data
        sizes = self._sizes
        on_evict = self._on_evict
        while len(data) > self._maxsize or self._currsize > self._max_bytes:
            key = self._victim()
            self._currsize -= sizes.pop(key)
            value = data.pop(key)
            self.evictions += 1
            if on_evict is not None:
                on_evict(key, value)

    def _remove(self, key: str) -> bytes:
        self._currsize -= self._sizes.pop(key)
        return self._data.pop(key)

    def _drain_reads(self) -> None:
        reads = self._reads
        self._counted_hits += len(reads)
        self._apply_reads(reads)
        reads.clear()

    def _read_buffer_full(self) -> None:
        """Hand the older half of a full read buffer to the policy's cheap path and
        keep the newest records for the next drain."""
        reads = self._reads
        dropped = len(reads) - _READ_BUFFER_KEEP
        self._counted_hits += dropped
        self._apply_dropped_reads(reads[:dropped])
        del reads[:dropped]

    # -- what a policy provides ------------------------------------------------------

    @abstractmethod
    def _apply_reads(self, keys: list[str]) -> None:
        """Record hits on ``keys``, oldest first; a key may since have been removed."""

    def _apply_dropped_reads(self, keys: list[str]) -> None:
        """Record hits on ``keys`` (oldest first) that a full read buffer gives up.

        By default they are applied like any others; a policy may keep only what its
        hit ratio needs from a long run of hits with no write between.
        """
        self._apply_reads(keys)

    @abstractmethod
    def _on_insert(self, key: str) -> None:
        """Link a new key (already counted in ``len(self)``) into the policy's order."""

    @abstractmethod
    def _on_update(self, key: str) -> None:
        """An existing key was overwritten: treat it as an access."""

    @abstractmethod
    def _on_delete(self, key: str) -> None:
        """Unlink a key removed explicitly."""

    @abstractmethod
    def _victim(self) -> str:
        """Choose the next key to evict and unlink it from the policy's order."""

    @abstractmethod
    def _on_clear(self) -> None:
        """Forget every key (the frequency history may be kept)."""
