"""L3: serialised QueryPatterns replies, keyed by the normalised query.

Coherence contract (see the README's Consistency section):

- A store or delete invalidates, before its reply, every cached reply it could change:
  those of its type (old and new type for a type change) and every any-type reply. It
  invalidates again when the write commits, so a reply computed from SQLite between the
  two cannot outlive the commit.
- A reply is only cached if no invalidation touched its type while it was computed
  (an epoch per type and one for any-type queries, read before the query ran).
- Confidence changes do not invalidate: a cached reply may lag them by at most
  ``max_staleness_s``, after which it is recomputed.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable

__all__ = ["QueryCache"]


class QueryCache:
    """Not thread-safe: the server touches it from the event loop thread only."""

    def __init__(
        self,
        max_entries: int,
        max_staleness_s: float,
        *,
        timer: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_entries = max_entries
        self.max_staleness_s = max_staleness_s
        self._timer = timer
        # key -> (type, computed at, reply), least recently used first.
        self._data: OrderedDict[Hashable, tuple[str, float, bytes]] = OrderedDict()
        self._by_type: dict[str, set[Hashable]] = {}
        self._epochs: dict[str, int] = {}
        self._any_epoch = 0
        # Bumped by clear(): part of every typed epoch, so a reply computed across a
        # clear() is refused even for a type never invalidated before.
        self._generation = 0
        self.currsize = 0
        self.hits = 0
        self.misses = 0
        self.evictions = 0

    def __len__(self) -> int:
        return len(self._data)

    def epoch(self, qtype: str) -> int:
        """Read before computing a reply; hand back to put()."""
        # Both counters only grow, so their sum changes whenever either does.
        return self._generation + self._epochs.get(qtype, 0) if qtype else self._any_epoch

    def get(self, key: Hashable) -> bytes | None:
        entry = self._data.get(key)
        if entry is None:
            self.misses += 1
            return None
        if self._timer() - entry[1] > self.max_staleness_s:
            self._remove(key)
            self.misses += 1
            return None
        self._data.move_to_end(key)
        self.hits += 1
        return entry[2]

    def now(self) -> float:
        """This cache's clock: read with epoch(), before computing a reply."""
        return self._timer()

    def put(
        self,
        key: Hashable,
        qtype: str,
        reply: bytes,
        epoch: int,
        computed_at: float | None = None,
    ) -> bool:
        """Cache ``reply`` unless a write touched ``qtype`` since ``epoch`` was read.

        ``computed_at`` (``now()`` when the query began) is when its data was read: its
        age counts from then, so a query that ran for a while is not served for the
        whole staleness bound again on top of that.
        """
        if self.max_entries <= 0 or epoch != self.epoch(qtype):
            return False
        if key in self._data:
            self._remove(key)
        stamp = self._timer() if computed_at is None else computed_at
        self._data[key] = (qtype, stamp, reply)
        self._by_type.setdefault(qtype, set()).add(key)
        self.currsize += len(reply)
        while len(self._data) > self.max_entries:
            self._remove(next(iter(self._data)))
            self.evictions += 1
        return True

    def invalidate(self, types: Iterable[str]) -> None:
        """A pattern of each of these types was stored or deleted."""
        for qtype in set(types):
            self._epochs[qtype] = self._epochs.get(qtype, 0) + 1
            for key in list(self._by_type.get(qtype, ())):
                self._remove(key)
        self._any_epoch += 1
        for key in list(self._by_type.get("", ())):
            self._remove(key)

    def clear(self) -> None:
        self._data.clear()
        self._by_type.clear()
        self.currsize = 0
        self._any_epoch += 1
        self._generation += 1

    def _remove(self, key: Hashable) -> None:
        qtype, _, reply = self._data.pop(key)
        self.currsize -= len(reply)
        keys = self._by_type[qtype]
        keys.discard(key)
        if not keys:
            del self._by_type[qtype]
