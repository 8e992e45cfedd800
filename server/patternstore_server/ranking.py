"""What every pattern's posterior looks like, in memory: for Thompson ranking and pruning.

One row per pattern in parallel numpy arrays (type code, alpha, beta, confidence, usage,
expiry, last activity), so a Thompson draw over every candidate of a type is one
vectorised filter and one vectorised Beta draw, and a pruning pass is a few array
comparisons, with no SQLite read per candidate. Ids map to rows through a ``KeyTable``
(no Python object per id: 1,000,000 patterns took 205 MB as a dict of str, see
keytable.py). Kept in step with accepted writes by the engine, and read, on the event
loop thread only.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from .keytable import KeyTable

__all__ = ["Posteriors"]

_F8 = npt.NDArray[np.float64]
_F4 = npt.NDArray[np.float32]
_I8 = npt.NDArray[np.int64]
_U4 = npt.NDArray[np.uint32]

_U4_MAX = 2**32 - 1

# The per-row arrays, in the order a moved row is copied. Usage and activity are kept
# only when pruning reads them (``keep_usage``, ``keep_activity``): 8 bytes a row less,
# ~10 MiB at a million patterns, under the default settings.
_COLUMNS = ("_type", "_alpha", "_beta", "_confidence", "_usage", "_expires", "_active")


class Posteriors:
    """One dense row per live pattern; ids map to rows through a ``KeyTable``.

    Rows stay dense (0..n-1): removing a pattern moves the last row into its place, as
    the key table moves the last id, so a scan never skips holes. Everything runs on
    the event loop thread.
    """

    def __init__(
        self, capacity: int = 1024, *, keep_usage: bool = True, keep_activity: bool = True
    ) -> None:
        self._keys = KeyTable()
        self.keep_usage = keep_usage
        self.keep_activity = keep_activity
        self._columns = tuple(
            name
            for name in _COLUMNS
            if (name != "_usage" or keep_usage) and (name != "_active" or keep_activity)
        )
        self._type_codes: dict[str, int] = {}
        self._type_names: list[str] = [""]  # by code; 0 is no type
        self._capacity = 0
        self._type: npt.NDArray[np.int32] = np.zeros(0, dtype=np.int32)
        # float32: alpha and beta only feed Beta draws (Thompson ranking), where 7
        # digits are plenty; 8 bytes a pattern less (the memory goal is at 1M patterns).
        # Confidence stays float64: filters compare it exactly with min_confidence.
        self._alpha: _F4 = np.zeros(0, dtype=np.float32)
        self._beta: _F4 = np.zeros(0, dtype=np.float32)
        self._confidence: _F8 = np.zeros(0)
        # uint32, 8 bytes a pattern less again: usage only meets min_evidence (it
        # saturates, never wraps), and last activity only meets an idle limit given in
        # seconds, so it is kept in whole seconds, rounded up (a pattern is pruned up to
        # a second late, never early; good until 2106). Expiry stays exact, in ns.
        self._usage: _U4 = np.zeros(0, dtype=np.uint32)
        self._expires: _I8 = np.zeros(0, dtype=np.int64)
        self._active: _U4 = np.zeros(0, dtype=np.uint32)
        # Every slot, in id order, for Thompson draws: built on the first ranking after
        # an id came or went (sorting the ids as strings costs ~0.6 s at 1M), reused by
        # every ranking until then (outcomes do not move it). None: to build.
        self._by_id: npt.NDArray[np.int32] | None = None
        self._resize(max(1, capacity))

    def __len__(self) -> int:
        return len(self._keys)

    def __contains__(self, pid: object) -> bool:
        return isinstance(pid, str) and self._keys.get(pid.encode()) >= 0

    def _type_code(self, ptype: str) -> int:
        code = self._type_codes.get(ptype)
        if code is None:
            code = self._type_codes[ptype] = len(self._type_codes) + 1
            self._type_names.append(ptype)
        return code

    def type_of(self, pid: str) -> str | None:
        """The type ``pid`` was stored with; None for an id not held."""
        slot = self._keys.get(pid.encode())
        return None if slot < 0 else self._type_names[int(self._type[slot])]

    def _resize(self, capacity: int) -> None:
        for name in self._columns:
            old = getattr(self, name)
            new = np.zeros(capacity, dtype=old.dtype)
            keep = min(len(old), capacity)
            new[:keep] = old[:keep]
            setattr(self, name, new)
        self._keys.resize_slots(capacity)
        self._capacity = capacity

    def _slot(self, pid: str) -> int:
        return self._keys.get(pid.encode())

    def set(
        self,
        pid: str,
        ptype: str,
        alpha: float,
        beta: float,
        confidence: float,
        usage: int,
        expires_ns: int,
        active_ns: int,
    ) -> None:
        if len(self._keys) >= self._capacity:
            # 1.5x rather than 2x: at a million patterns the slack is rows of 36 bytes.
            self._resize(self._capacity + max(1024, self._capacity // 2))
        slot, added = self._keys.get_or_add(pid.encode())
        if added:
            self._by_id = None
        self._type[slot] = self._type_code(ptype)
        self._alpha[slot] = alpha
        self._beta[slot] = beta
        self._confidence[slot] = confidence
        self._expires[slot] = expires_ns
        if self.keep_usage:
            self._usage[slot] = min(usage, _U4_MAX)
        if self.keep_activity:
            self._active[slot] = _seconds_up(active_ns)

    def learn(
        self, pid: str, alpha: float, beta: float, confidence: float, usage: int, active_ns: int
    ) -> None:
        slot = self._slot(pid)
        if slot >= 0:
            self._alpha[slot] = alpha
            self._beta[slot] = beta
            self._confidence[slot] = confidence
            if self.keep_usage:
                self._usage[slot] = min(usage, _U4_MAX)
            if self.keep_activity:
                self._active[slot] = _seconds_up(active_ns)

    def remove(self, pid: str) -> None:
        key = pid.encode()
        if self._keys.get(key) < 0:
            return
        slot, moved = self._keys.pop(key)
        self._by_id = None
        if moved >= 0:
            for name in self._columns:
                column = getattr(self, name)
                column[slot] = column[moved]
        if self._capacity > 4096 and len(self._keys) < self._capacity // 4:
            self._resize(self._capacity // 2)

    def params(self, ids: list[str]) -> tuple[_F8, _F8]:
        """(alpha, beta) of ``ids``; an unknown id gets the flat Beta(1, 1)."""
        slots = [self._slot(pid) for pid in ids]
        alpha = np.array([self._alpha[s] if s >= 0 else 1.0 for s in slots], dtype=np.float64)
        beta = np.array([self._beta[s] if s >= 0 else 1.0 for s in slots], dtype=np.float64)
        return alpha, beta

    def _candidates(self, ptype: str, min_confidence: float, now_ns: int) -> npt.NDArray[np.bool_]:
        """Per slot: whether it passes the filters."""
        n = len(self._keys)
        mask = np.ones(n, dtype=bool)
        if ptype:
            code = self._type_codes.get(ptype)
            if code is None:
                return np.zeros(n, dtype=bool)
            mask &= self._type[:n] == code
        if min_confidence > 0:
            mask &= self._confidence[:n] >= min_confidence
        expires = self._expires[:n]
        mask &= (expires == 0) | (expires > now_ns)
        return mask

    def thompson(
        self, ptype: str, min_confidence: float, now_ns: int, count: int, rng: np.random.Generator
    ) -> list[str]:
        """The first ``count`` candidates ranked by one Beta(alpha, beta) draw each.

        Draws are made for candidates in id order, so a seeded generator gives the same
        ranking for the same set of candidates whatever order they were stored in.
        """
        n = len(self._keys)
        candidates = self._candidates(ptype, min_confidence, now_ns)
        if self._by_id is None:
            ids = np.array(self._keys.keys_at(range(n)), dtype=object)
            self._by_id = np.argsort(ids, kind="stable").astype(np.int32)
        slots = self._by_id[candidates[self._by_id]]
        if not len(slots):
            return []
        alpha = self._alpha[slots].astype(np.float64)
        draws = rng.beta(alpha, self._beta[slots].astype(np.float64))
        if count < len(draws):
            # Only the first ``count`` are sorted; ids decoded for them alone.
            # Sorted first, so equal draws keep id order as in a full stable sort.
            part = np.sort(np.argpartition(-draws, count - 1)[:count])
            top = part[np.argsort(-draws[part], kind="stable")]
        else:
            top = np.argsort(-draws, kind="stable")
        return self._keys.keys_at(slots[top].tolist())

    def prunable(
        self, now_ns: int, below_confidence: float, min_evidence: int, idle_before_ns: int
    ) -> dict[str, list[str]]:
        """Ids to prune, by reason: expired, low_confidence, idle (0 disables a reason).

        Low confidence needs ``keep_usage``, idle ``keep_activity``.
        """
        if (below_confidence > 0 and not self.keep_usage) or (
            idle_before_ns > 0 and not self.keep_activity
        ):
            raise ValueError("these posteriors keep no usage or activity to prune by")
        n = len(self._keys)
        live = np.ones(n, dtype=bool)
        expires = self._expires[:n]
        reasons = {"expired": live & (expires > 0) & (expires <= now_ns)}
        taken = reasons["expired"].copy()
        if below_confidence > 0:
            low = live & ~taken & (self._confidence[:n] < below_confidence)
            low &= self._usage[:n] >= min_evidence
            reasons["low_confidence"] = low
            taken |= low
        if idle_before_ns > 0:
            idle_before = idle_before_ns // 10**9
            reasons["idle"] = live & ~taken & (self._active[:n] < idle_before)
        return {
            why: self._keys.keys_at(np.flatnonzero(mask).tolist()) for why, mask in reasons.items()
        }

    def qualifies(
        self,
        pid: str,
        why: str,
        now_ns: int,
        below_confidence: float,
        min_evidence: int,
        idle_before_ns: int,
    ) -> bool:
        """Whether ``pid`` still meets ``why`` (a write may have landed since the scan)."""
        slot = self._slot(pid)
        if slot < 0:
            return False
        if why == "expired":
            return bool(0 < self._expires[slot] <= now_ns)
        if why == "low_confidence":
            if not self.keep_usage:
                return False
            return bool(
                self._confidence[slot] < below_confidence and self._usage[slot] >= min_evidence
            )
        return self.keep_activity and bool(self._active[slot] < idle_before_ns // 10**9)

    def touch(self, pid: str, now_ns: int) -> None:
        """A read: the pattern is not idle."""
        slot = self._slot(pid)
        if slot >= 0 and self.keep_activity:
            self._active[slot] = _seconds_up(now_ns)


def _seconds_up(ns: int) -> int:
    """``ns`` in whole seconds, rounded up, within uint32."""
    return min(max(0, -(-ns // 10**9)), _U4_MAX)
