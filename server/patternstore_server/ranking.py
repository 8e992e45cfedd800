"""What every pattern's posterior looks like, in memory: for Thompson ranking and pruning.

One row per pattern in parallel numpy arrays (type code, alpha, beta, confidence, usage,
expiry, last activity), so a Thompson draw over every candidate of a type is one
vectorised filter and one vectorised Beta draw, and a pruning pass is a few array
comparisons, with no SQLite read per candidate. Kept in step with accepted writes by
the engine on the event loop thread; readers on other threads only take snapshots of
whole arrays (numpy operations hold the GIL), so they never see a torn row that matters.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

__all__ = ["Posteriors"]

_F8 = npt.NDArray[np.float64]
_I8 = npt.NDArray[np.int64]


class Posteriors:
    def __init__(self, capacity: int = 1024) -> None:
        self._slot: dict[str, int] = {}
        self._ids: list[str | None] = []
        self._free: list[int] = []
        self._type_codes: dict[str, int] = {}
        n = max(1, capacity)
        self._live = np.zeros(n, dtype=bool)
        self._type = np.zeros(n, dtype=np.int32)
        self._alpha: _F8 = np.zeros(n)
        self._beta: _F8 = np.zeros(n)
        self._confidence: _F8 = np.zeros(n)
        self._usage: _I8 = np.zeros(n, dtype=np.int64)
        self._expires: _I8 = np.zeros(n, dtype=np.int64)
        self._active: _I8 = np.zeros(n, dtype=np.int64)

    def __len__(self) -> int:
        return len(self._slot)

    def __contains__(self, pid: object) -> bool:
        return pid in self._slot

    def _type_code(self, ptype: str) -> int:
        code = self._type_codes.get(ptype)
        if code is None:
            code = self._type_codes[ptype] = len(self._type_codes) + 1
        return code

    def _grow(self) -> None:
        n = len(self._live) * 2
        for name in (
            "_live",
            "_type",
            "_alpha",
            "_beta",
            "_confidence",
            "_usage",
            "_expires",
            "_active",
        ):
            old = getattr(self, name)
            new = np.zeros(n, dtype=old.dtype)
            new[: len(old)] = old
            setattr(self, name, new)

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
        slot = self._slot.get(pid)
        if slot is None:
            if self._free:
                slot = self._free.pop()
                self._ids[slot] = pid
            else:
                slot = len(self._ids)
                if slot >= len(self._live):
                    self._grow()
                self._ids.append(pid)
            self._slot[pid] = slot
        self._live[slot] = True
        self._type[slot] = self._type_code(ptype)
        self._alpha[slot] = alpha
        self._beta[slot] = beta
        self._confidence[slot] = confidence
        self._usage[slot] = usage
        self._expires[slot] = expires_ns
        self._active[slot] = active_ns

    def learn(
        self, pid: str, alpha: float, beta: float, confidence: float, usage: int, active_ns: int
    ) -> None:
        slot = self._slot.get(pid)
        if slot is not None:
            self._alpha[slot] = alpha
            self._beta[slot] = beta
            self._confidence[slot] = confidence
            self._usage[slot] = usage
            self._active[slot] = active_ns

    def remove(self, pid: str) -> None:
        slot = self._slot.pop(pid, None)
        if slot is not None:
            self._live[slot] = False
            self._ids[slot] = None
            self._free.append(slot)

    def params(self, ids: list[str]) -> tuple[_F8, _F8]:
        """(alpha, beta) of ``ids``; an unknown id gets the flat Beta(1, 1)."""
        slots = [self._slot.get(pid, -1) for pid in ids]
        alpha = np.array([self._alpha[s] if s >= 0 else 1.0 for s in slots])
        beta = np.array([self._beta[s] if s >= 0 else 1.0 for s in slots])
        return alpha, beta

    def _candidates(self, ptype: str, min_confidence: float, now_ns: int) -> npt.NDArray[np.intp]:
        n = len(self._ids)
        mask = self._live[:n].copy()
        if ptype:
            code = self._type_codes.get(ptype)
            if code is None:
                return np.zeros(0, dtype=np.intp)
            mask &= self._type[:n] == code
        if min_confidence > 0:
            mask &= self._confidence[:n] >= min_confidence
        expires = self._expires[:n]
        mask &= (expires == 0) | (expires > now_ns)
        return np.flatnonzero(mask)

    def thompson(
        self, ptype: str, min_confidence: float, now_ns: int, count: int, rng: np.random.Generator
    ) -> list[str]:
        """The first ``count`` candidates ranked by one Beta(alpha, beta) draw each.

        Draws are made for candidates in id order, so a seeded generator gives the same
        ranking for the same set of candidates whatever order they were stored in.
        """
        slots = self._candidates(ptype, min_confidence, now_ns)
        if not len(slots):
            return []
        ids = [self._ids[s] for s in slots]
        order = np.argsort(np.array(ids, dtype=object), kind="stable")
        slots = slots[order]
        draws = rng.beta(self._alpha[slots], self._beta[slots])
        top = np.argsort(-draws, kind="stable")[:count]
        return [self._ids[slots[i]] or "" for i in top]

    def prunable(
        self, now_ns: int, below_confidence: float, min_evidence: int, idle_before_ns: int
    ) -> dict[str, list[str]]:
        """Ids to prune, by reason: expired, low_confidence, idle (0 disables a reason)."""
        n = len(self._ids)
        live = self._live[:n]
        expires = self._expires[:n]
        reasons = {"expired": live & (expires > 0) & (expires <= now_ns)}
        taken = reasons["expired"].copy()
        if below_confidence > 0:
            low = live & ~taken & (self._confidence[:n] < below_confidence)
            low &= self._usage[:n] >= min_evidence
            reasons["low_confidence"] = low
            taken |= low
        if idle_before_ns > 0:
            reasons["idle"] = live & ~taken & (self._active[:n] < idle_before_ns)
        return {
            why: [self._ids[s] or "" for s in np.flatnonzero(mask)] for why, mask in reasons.items()
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
        slot = self._slot.get(pid)
        if slot is None:
            return False
        if why == "expired":
            return bool(0 < self._expires[slot] <= now_ns)
        if why == "low_confidence":
            return bool(
                self._confidence[slot] < below_confidence and self._usage[slot] >= min_evidence
            )
        return bool(self._active[slot] < idle_before_ns)

    def touch(self, pid: str, now_ns: int) -> None:
        """A read: the pattern is not idle."""
        slot = self._slot.get(pid)
        if slot is not None:
            self._active[slot] = now_ns
