"""W-TinyLFU with an adaptive window: the "adaptive" L1 policy."""

from __future__ import annotations

import random
import sys
from collections import OrderedDict, deque
from typing import ClassVar, Final

from .base import Cache, EvictHook, SizeOf
from .sketch import FrequencySketch

__all__ = ["TinyLFUCache"]

_Order = OrderedDict[str, None]

# Runs an iterator to its end in C (the itertools "consume" recipe): ``map`` over a
# bound method then costs no Python frame per key.
_consume: Final = deque[None](maxlen=0).extend
# Below this many buffered hits a Python loop applies them faster than the C passes
# (whose fixed cost is about a microsecond).
_C_PASSES_MIN: Final = 24


class TinyLFUCache(Cache):
    """An LRU admission window in front of a segmented LRU main region.

    New keys enter the window. The window's oldest key, when pushed out, becomes a
    *candidate* for the main region's probation segment: it stays only if the
    frequency sketch says it was seen more often than probation's oldest key (the
    *victim*); otherwise the candidate itself is evicted. A hit in probation promotes
    the key to the protected segment (80% of the main region).

    The window's size climbs along the hit-rate gradient measured by two small ghost
    lists (keys only, ``ghost_share`` of ``maxsize`` each): a miss on a recently
    *rejected candidate* is a hit a larger window would have had, a miss on a recently
    evicted *main* key is one a larger main region would have had; each moves the
    window one entry that way. Caffeine's sample-based climber (``sample_climber``) is
    kept for comparison but off: it adapts too slowly for the recency-heavy traces
    (see DESIGN.md).

    Hits the read buffer drops (a run of hits with no write between, see ``base``)
    are applied lazily: the key is marked, and a marked key is promoted when it comes
    to probation's head, or moved to its region's tail instead of leaving the window
    or protected from the head (a second chance, as CLOCK gives). Marking is one
    C-level set update per dropped hit; the repositioning is paid on misses, once per
    mark.
    """

    initial_window: ClassVar[float] = 0.01
    protected_share: ClassVar[float] = 0.8
    ghost_share: ClassVar[float] = 0.1
    # The window is only resized once the target moved this share of maxsize away:
    # each resize moves keys between regions, and jittering by one entry on every
    # ghost hit would let keys into the main region without an admission duel.
    resize_quantum: ClassVar[float] = 0.01
    hashdos_min: ClassVar[int] = 6
    sample_climber: ClassVar[bool] = False
    climb_step: ClassVar[float] = 0.0625
    climb_decay: ClassVar[float] = 0.98
    climb_restart: ClassVar[float] = 0.05
    sample_factor: ClassVar[float] = 10.0

    def __init__(
        self,
        maxsize: int,
        max_bytes: int | None = None,
        getsizeof: SizeOf | None = None,
        on_evict: EvictHook | None = None,
        *,
        seed: int = 0,
    ) -> None:
        super().__init__(maxsize, max_bytes, getsizeof, on_evict)
        self._window: _Order = OrderedDict()
        self._probation: _Order = OrderedDict()
        self._protected: _Order = OrderedDict()
        self._sketch = FrequencySketch(maxsize)
        # A candidate that cannot win the duel nor reach the hash-flooding guard loses
        # either way: the sketch stops reading its counters there.
        self._duel_give_up = self.hashdos_min - 1
        # The class setting read once: an instance attribute loads faster.
        self._sampling = self.sample_climber
        # The fast miss path below is for a cache full by entries (and not used with
        # the sample climber, which counts every miss).
        self._fast_from = sys.maxsize if self._sampling else maxsize
        # Cached keys with a dropped hit not yet applied (see the class docstring).
        # Always a subset of the cached keys: a key leaving the cache loses its mark.
        self._marked: set[str] = set()
        # The key the current write pushed out of the window, until it wins or loses.
        self._candidate: str | None = None
        self._window_target = maxsize * self.initial_window
        self._window_max = 0
        self._protected_max = 0
        self._set_limits()
        self._quantum = max(1.0, self.resize_quantum * maxsize)
        self._ghost_size = max(1, int(self.ghost_share * maxsize))
        self._rejected: _Order = OrderedDict()
        self._evicted_main: _Order = OrderedDict()
        self._sample_size = max(1, int(self.sample_factor * maxsize))
        self._sample_hits = 0
        self._sample_misses = 0
        self._prev_hit_rate = 0.0
        self._step = -self.climb_step * maxsize
        # Seeded: the only randomness is the rare admission of a frequent candidate
        # that loses, which must not make replays differ from run to run.
        self._rng = random.Random(seed)

    @property
    def window_size(self) -> int:
        """The admission window's current limit in entries (for the metrics)."""
        return self._window_max

    # -- the miss path ---------------------------------------------------------------

    def __setitem__(self, key: str, value: bytes) -> None:
        """Store ``value``.

        A new key on a cache full by entries and not by bytes (the steady state of a
        miss being filled) takes the path below: the base's write, ``_on_insert``,
        ``_shrink``, ``_victim`` and ``_admit`` inlined into one call, which halves
        the cost of a miss. Anything else (an overwrite, a cache not yet full, the
        byte bound binding, where more than one entry may have to go) takes the
        general path, which must decide the same.
        """
        data = self._data
        if key in data or len(data) < self._fast_from:
            self._general_setitem(key, value)
            return
        size = self._getsizeof(value)
        if self._currsize + size > self._max_bytes:
            # (The general path computes the size again: the same function of the
            # same value.)
            self._general_setitem(key, value)
            return
        if self._reads:
            # The policy must see earlier hits before it picks a victim.
            self._drain_reads()
        sketch = self._sketch
        sketch.increment(key)
        # Only a window resize can evict (and so make room) before this key's own
        # eviction below.
        resized = False
        if key in self._rejected:
            del self._rejected[key]
            self._move_window(1.0)
            resized = True
        elif key in self._evicted_main:
            del self._evicted_main[key]
            self._move_window(-1.0)
            resized = True
        window = self._window
        window[key] = None
        data[key] = value
        sizes = self._sizes
        sizes[key] = size
        if len(window) <= self._window_max:
            # No candidate (the window grew above): the main region gives up a key.
            self._currsize += size
            if len(data) > self._maxsize:
                self._shrink()
            return
        marked = self._marked
        # (popitem's argument passed by position: a keyword costs more.)
        candidate = self._pop_window() if marked else window.popitem(False)[0]
        probation = self._probation
        if resized and len(data) <= self._maxsize:
            # The window shrank above and its evictions made room.
            self._currsize += size
            probation[candidate] = None
            return
        # The duel: the candidate against probation's oldest key.
        victim = self._probation_head() if marked else next(iter(probation), None)
        if victim is None:
            victim = next(iter(self._protected), None)
        if victim is None:
            admitted = False
        else:
            candidate_freq, victim_freq = sketch.duel(candidate, victim, self._duel_give_up)
            admitted = candidate_freq > victim_freq or (
                # Caffeine's hash-flooding guard, as in _admit.
                candidate_freq > self._duel_give_up and self._rng.random() < 1 / 128
            )
        if admitted:
            assert victim is not None
            if victim in probation:
                del probation[victim]
            else:
                del self._protected[victim]
            probation[candidate] = None
            ghost = self._evicted_main
            loser = victim
            if marked:
                marked.discard(victim)
        else:
            ghost = self._rejected
            loser = candidate
        ghost[loser] = None
        if len(ghost) > self._ghost_size:
            ghost.popitem(False)
        # One update of the byte count for the insert and the eviction.
        self._currsize += size - sizes.pop(loser)
        lost = data.pop(loser)
        self.evictions += 1
        if self._on_evict is not None:
            self._on_evict(loser, lost)

    def _general_setitem(self, key: str, value: bytes) -> None:
        try:
            super().__setitem__(key, value)
        finally:
            # A candidate only faces victims in the write that pushed it out of the
            # window; cleared here so the fast path above need not.
            self._candidate = None

    # -- policy hooks ----------------------------------------------------------------

    def _apply_reads(self, keys: list[str]) -> None:
        self._sketch.increment_many(keys)
        if self._sampling:
            self._sample_hits += len(keys)
            if self._sample_hits + self._sample_misses >= self._sample_size:
                self._climb()
        marked = self._marked
        probation = self._probation
        protected = self._protected
        window = self._window
        if len(keys) < _C_PASSES_MIN:
            for key in keys:
                if marked:
                    # Applied now, so no longer owed a lazy move.
                    marked.discard(key)
                if key in protected:
                    protected.move_to_end(key)
                elif key in window:
                    window.move_to_end(key)
                elif key in probation:
                    self._promote(key)
            return
        # Only each key's last hit decides its place: the distinct keys in the order
        # of their last hit (deduplicated in C).
        distinct = list(dict.fromkeys(reversed(keys)))
        distinct.reverse()
        if marked:
            marked.difference_update(distinct)
        # A probation hit is promoted; then every protected key hit (just promoted or
        # not) moves to the end in hit order, the order one-by-one application gives.
        # filter/map run the moves in C, which pays off on long batches.
        for key in list(filter(probation.__contains__, distinct)):
            del probation[key]
            protected[key] = None
        _consume(map(protected.move_to_end, filter(protected.__contains__, distinct)))
        _consume(map(window.move_to_end, filter(window.__contains__, distinct)))
        # Protected's overflow is demoted once for the batch (one by one, a key at the
        # head could be demoted and then promoted again by its own later hit).
        self._demote_overflow()

    def _apply_dropped_reads(self, keys: list[str]) -> None:
        # Only marked (see the class docstring). Applying these hits in full costs
        # several times the hits themselves; not applying them at all cost up to 8
        # points of hit ratio on loop-like traces (gli at 1000 entries), where keys
        # are hit once per long run of hits and must still be promoted. Dropping
        # their sketch increments and window moves cost nothing measurable.
        self._marked.update(keys)

    def _on_insert(self, key: str) -> None:
        # A candidate only faces victims in the write that pushed it out of the window.
        self._candidate = None
        self._sketch.increment(key)
        if key in self._rejected:
            del self._rejected[key]
            self._move_window(1.0)
        elif key in self._evicted_main:
            del self._evicted_main[key]
            self._move_window(-1.0)
        if self._sampling:
            self._sample_misses += 1
            if self._sample_hits + self._sample_misses >= self._sample_size:
                self._climb()
        window = self._window
        window[key] = None
        if len(window) > self._window_max:
            candidate = self._pop_window()
            self._probation[candidate] = None
            self._candidate = candidate

    def _on_update(self, key: str) -> None:
        self._candidate = None
        self._sketch.increment(key)
        self._marked.discard(key)
        if key in self._protected:
            self._protected.move_to_end(key)
        elif key in self._window:
            self._window.move_to_end(key)
        elif key in self._probation:
            self._promote(key)

    def _on_delete(self, key: str) -> None:
        if self._candidate == key:
            self._candidate = None
        self._marked.discard(key)
        for region in (self._window, self._probation, self._protected):
            if key in region:
                del region[key]
                return

    def _victim(self) -> str:
        probation = self._probation
        candidate = self._candidate
        if candidate is not None:
            victim = self._probation_head()
            if victim is None or victim == candidate:
                victim = next(iter(self._protected), None)
            if victim is None or not self._admit(candidate, victim):
                self._candidate = None
                del probation[candidate]
                ghost = self._rejected
                ghost[candidate] = None
                if len(ghost) > self._ghost_size:
                    del ghost[next(iter(ghost))]
                return candidate
            # The candidate stays and faces the next victim if more must go.
            if victim in probation:
                del probation[victim]
            else:
                del self._protected[victim]
        elif probation:
            # No duel: the window is within its limit, so the main region is over.
            victim = self._probation_head()
            assert victim is not None
            del probation[victim]
        elif self._protected:
            victim = self._protected.popitem(last=False)[0]
        else:
            victim = self._window.popitem(last=False)[0]
            # Not reached with a marked key by any sequence the fuzzing found (a marked
            # window key is given its second chance first), but _marked must stay a
            # subset of the cached keys whatever the path.
            self._marked.discard(victim)
            return victim
        self._marked.discard(victim)
        ghost = self._evicted_main
        ghost[victim] = None
        if len(ghost) > self._ghost_size:
            del ghost[next(iter(ghost))]
        return victim

    def _on_clear(self) -> None:
        self._window.clear()
        self._probation.clear()
        self._protected.clear()
        self._marked.clear()
        self._candidate = None

    # -- helpers ---------------------------------------------------------------------

    def _pop_window(self) -> str:
        """Remove and return the window's oldest key; a marked key gets a second
        chance at the window's tail instead."""
        window = self._window
        marked = self._marked
        while True:
            key = window.popitem(last=False)[0]
            if key not in marked:
                return key
            marked.discard(key)
            window[key] = None

    def _probation_head(self) -> str | None:
        """Probation's oldest key, after promoting the marked keys ahead of it."""
        probation = self._probation
        marked = self._marked
        while True:
            head = next(iter(probation), None)
            if head is None or head not in marked:
                return head
            marked.discard(head)
            del probation[head]
            self._protected[head] = None
            self._demote_overflow()

    def _promote(self, key: str) -> None:
        del self._probation[key]
        self._protected[key] = None
        self._demote_overflow()

    def _demote_overflow(self) -> None:
        """Move protected's oldest keys to probation until protected fits; a marked
        key gets a second chance at protected's tail instead."""
        protected = self._protected
        probation = self._probation
        marked = self._marked
        while len(protected) > self._protected_max:
            key = protected.popitem(last=False)[0]
            if key in marked:
                marked.discard(key)
                protected[key] = None
            else:
                probation[key] = None

    def _admit(self, candidate: str, victim: str) -> bool:
        candidate_freq, victim_freq = self._sketch.duel(candidate, victim, self._duel_give_up)
        if candidate_freq > victim_freq:
            return True
        # A frequent candidate that loses may be an attacker's collision on the
        # victim's counters (Caffeine's hash-flooding guard): admit one in 128.
        return candidate_freq > self._duel_give_up and self._rng.random() < 1 / 128

    def _set_limits(self) -> None:
        maxsize = self._maxsize
        self._window_max = min(maxsize, max(0, round(self._window_target)))
        self._protected_max = int(self.protected_share * (maxsize - self._window_max))

    def _move_window(self, amount: float) -> None:
        target = min(float(self._maxsize), max(0.0, self._window_target + amount))
        self._window_target = target
        if abs(target - self._window_max) >= self._quantum:
            self._set_limits()
            self._rebalance()

    def _climb(self) -> None:
        """One step of Caffeine's hill climber on the last sample's hit rate."""
        requests = self._sample_hits + self._sample_misses
        hit_rate = self._sample_hits / requests
        change = hit_rate - self._prev_hit_rate
        amount = self._step if change >= 0 else -self._step
        if abs(change) >= self.climb_restart:
            sign = 1.0 if amount >= 0 else -1.0
            self._step = sign * self.climb_step * self._maxsize
        else:
            self._step = self.climb_decay * amount
        self._prev_hit_rate = hit_rate
        self._sample_hits = 0
        self._sample_misses = 0
        self._window_target = min(float(self._maxsize), max(0.0, self._window_target + amount))
        self._set_limits()
        self._rebalance()

    def _rebalance(self) -> None:
        """Bring the regions within new limits. A grown window fills from new keys
        while the main region gives up victims; a shrunken window pushes its oldest
        keys out through the admission duel, as a full window does."""
        window = self._window
        while len(window) > self._window_max:
            key = self._pop_window()
            self._probation[key] = None
            if len(self._data) >= self._maxsize:
                # Cache full: the loser is evicted now, leaving a slot for the next miss.
                self._candidate = key
                loser = self._victim()
                self._candidate = None
                value = self._remove(loser)
                self.evictions += 1
                if self._on_evict is not None:
                    self._on_evict(loser, value)
        self._demote_overflow()
