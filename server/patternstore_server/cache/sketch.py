"""A count-min sketch of 4-bit counters, halved periodically: TinyLFU's frequency
history, which remembers keys long after they leave the cache."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Final

import numpy as np
import numpy.typing as npt

__all__ = ["FrequencySketch"]

_DEPTH: Final = 4
# Counters saturate at 15, as 4-bit counters do. Each sits in its own byte: Python
# reads and writes a byte in one operation, while packing nibbles would cost shifts
# and masks on every access; the memory (16 bytes per cache entry) does not matter.
_MAX_COUNT: Final = 15
# Halving every byte at once is a single C-level translate.
_HALVE: Final = bytes(i >> 1 for i in range(256))
# A batch of at least this many keys goes to the table at once; a smaller one joins
# the pending counts (a dict update per key beats the fixed cost of the numpy calls).
_VECTOR_MIN: Final = 24
# Pending counts are added to the table once this many keys wait (fewer for a small
# sketch, whose halving they would delay too long: at most 1/16 of a sample, at
# least 64). Adding one key to the table in Python cost ~0.6 us of a miss (four index
# computations and four read-modify-writes); in a numpy batch ~0.26 us at 128 keys,
# 0.2 at 256, 0.17 at 1024 (mostly hash() and the conversions), plus the dict update
# that counted it, ~0.06 us.
_PENDING_MAX: Final = 1024
_PENDING_MIN: Final = 64


def _ceil_pow2(n: int) -> int:
    return 1 << max(n - 1, 1).bit_length()


class FrequencySketch:
    """Estimates how often each key was seen recently (at most 15).

    Four rows of ``width`` counters; a key's four counters are taken from four
    disjoint (or, for very large caches, barely overlapping) bit ranges of its
    ``hash``. When the number of increments reaches ``10 * capacity`` every counter is
    halved, so the history ages and a phase change is forgotten within a few samples.

    Increments are buffered, as Caffeine buffers writes: a key's count waits in a dict
    of pending counts until enough keys wait to add them to the table in one numpy
    batch. Every estimate adds the key's own pending count, so the buffer changes an
    estimate only by what other pending keys would add to a counter they share (the
    count-min overcount arrives at the next flush), and a halving may come up to a
    batch late (it then ages the pending counts with the table).
    """

    def __init__(self, capacity: int) -> None:
        # Four counters per row per entry keeps collisions rare (Caffeine's density).
        width = _ceil_pow2(max(capacity, 8) * 4)
        bits = width.bit_length() - 1
        self._width = width
        self._mask = width - 1
        # Spread the four bit ranges evenly over the 64 bits of hash().
        step = max(1, min(bits, (64 - bits) // (_DEPTH - 1)))
        self._s1, self._s2, self._s3 = step, 2 * step, 3 * step
        self._o1, self._o2, self._o3 = width, 2 * width, 3 * width
        self._table = bytearray(_DEPTH * width)
        # numpy view of the same memory, for batched increments.
        self._view: npt.NDArray[np.uint8] = np.frombuffer(self._table, dtype=np.uint8)
        self._shifts = np.array([0, step, 2 * step, 3 * step], dtype=np.int64)
        self._offsets = np.array([0, width, 2 * width, 3 * width], dtype=np.int64)
        self.sample_size = 10 * max(capacity, 1)
        self._additions = 0
        # Increments not yet in the table, per key.
        self._pending: dict[str, int] = {}
        self._pending_max = min(_PENDING_MAX, max(_PENDING_MIN, self.sample_size // 16))
        # Pending increments from batches of hits (whose keys repeat, so the count of
        # distinct keys does not bound them).
        self._pending_hits = 0
        # The last victim of a duel and its count in the table alone (its pending
        # count is looked up each time), valid until the table next changes: a
        # victim that keeps winning faces one candidate per miss, and reading its
        # four counters cost more than the rest of its half of the duel (the victim
        # was the same as in the previous duel in 94% of cache_hitcost's misses).
        self._victim: str | None = None
        self._victim_count = 0

    def frequency(self, key: str) -> int:
        """The estimated count for ``key`` (the minimum of its four counters)."""
        f = self._table_count(key) + self._pending.get(key, 0)
        return f if f < _MAX_COUNT else _MAX_COUNT

    def duel(self, candidate: str, victim: str, give_up: int) -> tuple[int, int]:
        """The estimates of ``candidate`` and ``victim``, for an admission duel.

        The candidate's estimate may be replaced by a bound that decides the rule
        "admit if candidate > victim, or if candidate > give_up and ..." exactly as the
        estimate would: a lower bound above the victim's (its pending count), or an
        upper bound at most ``min(victim's, give_up)`` (its counters are read one by
        one, and most candidates are one-hit wonders decided by their first counter).
        """
        pending = self._pending
        if victim is self._victim:
            b = self._victim_count
        else:
            b = self._table_count(victim)
            self._victim = victim
            self._victim_count = b
        b += pending.get(victim, 0)
        if b > _MAX_COUNT:
            b = _MAX_COUNT
        p = pending.get(candidate, 0)
        if p > b:
            # Its pending count alone beats the victim, whatever its counters hold
            # (or both are saturated, when the cut to 15 makes it exact).
            return (p if p < _MAX_COUNT else _MAX_COUNT), b
        # The candidate is out of the duel once a counter is at most this.
        stop = (b if b < give_up else give_up) - p
        h = hash(candidate)
        m = self._mask
        t = self._table
        a = t[h & m]
        if a <= stop:
            return a + p, b
        c = t[((h >> self._s1) & m) | self._o1]
        if c <= stop:
            return c + p, b
        if c < a:
            a = c
        c = t[((h >> self._s2) & m) | self._o2]
        if c <= stop:
            return c + p, b
        if c < a:
            a = c
        c = t[((h >> self._s3) & m) | self._o3]
        if c < a:
            a = c
        a += p
        return (a if a < _MAX_COUNT else _MAX_COUNT), b

    def increment(self, key: str) -> None:
        """Count one access to ``key``."""
        pending = self._pending
        pending[key] = pending.get(key, 0) + 1
        if len(pending) >= self._pending_max:
            self.flush()

    def increment_many(self, keys: Sequence[str]) -> None:
        """Count one access to each of ``keys`` (duplicates count each time)."""
        if len(keys) >= _VECTOR_MIN:
            # Counted per distinct key first (Counter runs in C).
            self._add(Counter(keys))
        else:
            pending = self._pending
            get = pending.get
            for key in keys:
                pending[key] = get(key, 0) + 1
            self._pending_hits += len(keys)
            if len(pending) < self._pending_max and self._pending_hits < self._pending_max:
                return
            self._add_pending()
        if self._additions >= self.sample_size:
            self._halve()

    def flush(self) -> None:
        """Add the pending counts to the table (and halve it if a sample is full)."""
        self._add_pending()
        if self._additions >= self.sample_size:
            self._halve()

    def _add_pending(self) -> None:
        pending = self._pending
        if pending:
            self._add(pending)
            pending.clear()
        self._pending_hits = 0

    def _add(self, counts: Mapping[str, int]) -> None:
        distinct = len(counts)
        hashes = np.fromiter(map(hash, counts), dtype=np.int64, count=distinct)
        amounts = np.fromiter(counts.values(), dtype=np.int64, count=distinct)
        self._additions += int(amounts.sum())
        index = (((hashes[:, None] >> self._shifts) & self._mask) | self._offsets).ravel()
        # Each key's four counters raised by the key's count with ufunc.at, not a
        # fancy-index assignment, so two keys sharing a counter both count: with
        # assignment the last write wins, which at a batch per 1/16 of a sample loses
        # about 7% of a small sketch's increments (by the birthday count) and
        # narrowed the Zipf contract test's margin. The amounts are cut to 15 first,
        # so a byte could only wrap if 17 keys of one batch shared a counter.
        raises = np.minimum(amounts, _MAX_COUNT).astype(np.uint8).repeat(_DEPTH)
        view = self._view
        np.add.at(view, index, raises)
        view[index] = np.minimum(view[index], _MAX_COUNT)
        self._victim = None

    def _table_count(self, key: str) -> int:
        h = hash(key)
        m = self._mask
        t = self._table
        # Comparisons rather than min(): a builtin call costs more than three compares.
        f = t[h & m]
        c = t[((h >> self._s1) & m) | self._o1]
        if c < f:
            f = c
        c = t[((h >> self._s2) & m) | self._o2]
        if c < f:
            f = c
        c = t[((h >> self._s3) & m) | self._o3]
        if c < f:
            f = c
        return f

    def _halve(self) -> None:
        # Every access counted so far ages together, the pending ones too.
        self._add_pending()
        # In place, so the numpy view stays valid.
        self._table[:] = self._table.translate(_HALVE)
        self._additions //= 2
        self._victim = None

    def clear(self) -> None:
        """Forget every count."""
        self._view[:] = 0
        self._additions = 0
        self._pending.clear()
        self._pending_hits = 0
        self._victim = None
