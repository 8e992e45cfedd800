"""A count-min sketch of 4-bit counters, halved periodically: TinyLFU's frequency
history, which remembers keys long after they leave the cache."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
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
# Below this many keys a Python loop beats the fixed cost of the numpy calls.
_VECTOR_MIN: Final = 24


def _ceil_pow2(n: int) -> int:
    return 1 << max(n - 1, 1).bit_length()


class FrequencySketch:
    """Estimates how often each key was seen recently (at most 15).

    Four rows of ``width`` counters; a key's four counters are taken from four
    disjoint (or, for very large caches, barely overlapping) bit ranges of its
    ``hash``. When the number of increments reaches ``10 * capacity`` every counter is
    halved, so the history ages and a phase change is forgotten within a few samples.
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

    def frequency(self, key: str) -> int:
        """The estimated count for ``key`` (the minimum of its four counters)."""
        h = hash(key)
        m = self._mask
        t = self._table
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

    def frequencies(self, first: str, second: str) -> tuple[int, int]:
        """``frequency`` of two keys in one call (the admission duel's hot path)."""
        m = self._mask
        t = self._table
        s1, s2, s3 = self._s1, self._s2, self._s3
        o1, o2, o3 = self._o1, self._o2, self._o3
        # frequency() inlined twice, with comparisons rather than min(): a builtin
        # call per key costs more than the three compares.
        h = hash(first)
        a = t[h & m]
        c = t[((h >> s1) & m) | o1]
        if c < a:
            a = c
        c = t[((h >> s2) & m) | o2]
        if c < a:
            a = c
        c = t[((h >> s3) & m) | o3]
        if c < a:
            a = c
        h = hash(second)
        b = t[h & m]
        c = t[((h >> s1) & m) | o1]
        if c < b:
            b = c
        c = t[((h >> s2) & m) | o2]
        if c < b:
            b = c
        c = t[((h >> s3) & m) | o3]
        if c < b:
            b = c
        return a, b

    def increment(self, key: str) -> None:
        """Count one access to ``key``."""
        h = hash(key)
        m = self._mask
        t = self._table
        # Each counter read once (``t[i] += 1`` would read it again).
        i = h & m
        c = t[i]
        if c < _MAX_COUNT:
            t[i] = c + 1
        i = ((h >> self._s1) & m) | self._o1
        c = t[i]
        if c < _MAX_COUNT:
            t[i] = c + 1
        i = ((h >> self._s2) & m) | self._o2
        c = t[i]
        if c < _MAX_COUNT:
            t[i] = c + 1
        i = ((h >> self._s3) & m) | self._o3
        c = t[i]
        if c < _MAX_COUNT:
            t[i] = c + 1
        self._additions += 1
        if self._additions >= self.sample_size:
            self._halve()

    def increment_many(self, keys: Sequence[str]) -> None:
        """Count one access to each of ``keys`` (duplicates count each time)."""
        if len(keys) < _VECTOR_MIN:
            self._increment_loop(keys)
            return
        # Counted per distinct key first (Counter runs in C), then one vectorised
        # read-modify-write of the four counters of each distinct key. Two distinct
        # keys of one batch sharing a counter both write it, and one increment is lost:
        # a rare, small undercount of a count-min estimate that only ever overcounts.
        counts = Counter(keys)
        distinct = len(counts)
        hashes = np.fromiter(map(hash, counts), dtype=np.int64, count=distinct)
        amounts = np.fromiter(counts.values(), dtype=np.int64, count=distinct)
        index = ((hashes[:, None] >> self._shifts) & self._mask) | self._offsets
        view = self._view
        raised = view[index] + amounts[:, None]
        view[index] = np.minimum(raised, _MAX_COUNT)
        self._additions += len(keys)
        if self._additions >= self.sample_size:
            self._halve()

    def _increment_loop(self, keys: Sequence[str]) -> None:
        # increment() inlined: a method call per key would double the cost.
        m = self._mask
        t = self._table
        s1, s2, s3 = self._s1, self._s2, self._s3
        o1, o2, o3 = self._o1, self._o2, self._o3
        for key in keys:
            h = hash(key)
            i = h & m
            if t[i] < _MAX_COUNT:
                t[i] += 1
            i = ((h >> s1) & m) | o1
            if t[i] < _MAX_COUNT:
                t[i] += 1
            i = ((h >> s2) & m) | o2
            if t[i] < _MAX_COUNT:
                t[i] += 1
            i = ((h >> s3) & m) | o3
            if t[i] < _MAX_COUNT:
                t[i] += 1
        self._additions += len(keys)
        if self._additions >= self.sample_size:
            self._halve()

    def _halve(self) -> None:
        # In place, so the numpy view stays valid.
        self._table[:] = self._table.translate(_HALVE)
        self._additions //= 2

    def clear(self) -> None:
        """Forget every count."""
        self._view[:] = 0
        self._additions = 0
