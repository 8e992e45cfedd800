"""The one lock around an L1 policy, and single-flight loading of misses."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Generic, TypeVar

from .base import Cache

__all__ = ["LockedCache"]

_V = TypeVar("_V")


class _Flight(Generic[_V]):
    """One load in progress; followers wait on ``done`` and read the outcome."""

    __slots__ = ("done", "error", "stale", "value")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.value: _V | None = None
        self.error: BaseException | None = None
        # Set when the key is written or deleted during the load: the loaded value
        # may predate that write, so it is returned to the waiters but not cached.
        self.stale = False


class LockedCache:
    """A :class:`Cache` shared between threads.

    Every call into the policy happens under ``_lock``; loaders run outside it, so a
    slow SQLite read never blocks hits on other keys. Concurrent misses for one key
    call the loader once: the first caller loads, the others wait for its outcome
    (value or exception).
    """

    def __init__(self, cache: Cache) -> None:
        self._cache = cache
        # Guards self._cache (every read, write and counter of the policy, including
        # its read buffer and sketch) and self._flights (the loads in progress).
        self._lock = threading.Lock()
        self._flights: dict[str, _Flight[bytes]] = {}

    @property
    def cache(self) -> Cache:
        """The wrapped policy; touch it only while no other thread can."""
        return self._cache

    def get(self, key: str) -> bytes | None:
        with self._lock:
            return self._cache.get(key)

    def put(self, key: str, value: bytes) -> None:
        """Store ``value``; a value larger than ``max_bytes`` is simply not cached."""
        with self._lock:
            self._invalidate_flight(key)
            self._put_locked(key, value)

    def delete(self, key: str) -> bool:
        """Drop ``key``; True if it was cached."""
        with self._lock:
            self._invalidate_flight(key)
            if key in self._cache:
                del self._cache[key]
                return True
            return False

    def clear(self) -> None:
        with self._lock:
            self._cache.clear()

    def __contains__(self, key: str) -> bool:
        with self._lock:
            return key in self._cache

    def __len__(self) -> int:
        with self._lock:
            return len(self._cache)

    def stats(self) -> dict[str, int]:
        """Counters and sizes in one consistent snapshot (for a metrics collector)."""
        with self._lock:
            cache = self._cache
            return {
                "hits": cache.hits,
                "misses": cache.misses,
                "evictions": cache.evictions,
                "entries": len(cache),
                "bytes": cache.currsize,
            }

    def get_or_load(self, key: str, loader: Callable[[str], bytes | None]) -> bytes | None:
        """The cached value, or ``loader(key)`` stored and returned.

        A loader returning None (no such key) caches nothing. If the loader raises, the
        exception reaches this caller and every caller waiting on the same key.
        """
        with self._lock:
            value = self._cache.get(key)
            if value is not None:
                return value
            flight = self._flights.get(key)
            leader = flight is None
            if flight is None:
                flight = _Flight()
                self._flights[key] = flight
        if not leader:
            flight.done.wait()
            if flight.error is not None:
                raise flight.error
            return flight.value
        try:
            value = loader(key)
        except BaseException as error:
            flight.error = error
            raise
        else:
            flight.value = value
        finally:
            with self._lock:
                if flight.error is None and flight.value is not None and not flight.stale:
                    self._put_locked(key, flight.value)
                del self._flights[key]
            flight.done.set()
        return value

    def _put_locked(self, key: str, value: bytes) -> None:
        if self._cache.getsizeof(value) <= self._cache.max_bytes:
            self._cache[key] = value

    def _invalidate_flight(self, key: str) -> None:
        flight = self._flights.get(key)
        if flight is not None:
            flight.stale = True
