"""L1 cache policies: a bounded map from pattern id to serialised pattern.

``make_cache(policy, ...)`` builds one of the policies (``adaptive`` = W-TinyLFU with a
hill-climbed window, ``lru``, ``lfu``); wrap it in :class:`LockedCache` to share it
between threads. See ``DESIGN.md`` for the invariants and the trace-replay figures.
"""

from __future__ import annotations

from .base import Cache, EvictHook, SizeOf
from .lfu import LFUCache
from .locked import LockedCache
from .lru import LRUCache
from .sketch import FrequencySketch
from .tinylfu import TinyLFUCache

__all__ = [
    "POLICIES",
    "Cache",
    "EvictHook",
    "FrequencySketch",
    "LFUCache",
    "LRUCache",
    "LockedCache",
    "SizeOf",
    "TinyLFUCache",
    "make_cache",
]

POLICIES: dict[str, type[Cache]] = {
    "adaptive": TinyLFUCache,
    "lru": LRUCache,
    "lfu": LFUCache,
}


def make_cache(
    policy: str,
    max_entries: int,
    max_bytes: int | None,
    getsizeof: SizeOf = len,
    on_evict: EvictHook | None = None,
) -> Cache:
    """A cache of at most ``max_entries`` entries and ``max_bytes`` bytes.

    Raises ValueError for a policy not in ``POLICIES``.
    """
    try:
        cls = POLICIES[policy]
    except KeyError:
        known = ", ".join(sorted(POLICIES))
        raise ValueError(f"unknown cache policy {policy!r} (known: {known})") from None
    return cls(max_entries, max_bytes, getsizeof, on_evict)
