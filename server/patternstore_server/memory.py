"""What the server keeps in memory about every stored pattern, besides the caches.

Three views, all following accepted writes (not commits, so a reply never disagrees
with the next read) and all rebuilt from SQLite at start:

- ``posteriors``: each pattern's Beta posterior, type, usage, expiry and last activity
  (Thompson ranking and pruning read them without a SQLite read per candidate);
- ``vectors``: the similarity index of the embeddings;
- ``expiring``: id -> expiry (ns) of the patterns that have one, which every read checks.

Owned by the engine and touched on the event loop thread only, except the vector
index, whose searches run on query threads under its own lock (vector/DESIGN.md).
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from patternstore.v1 import patternstore_pb2 as pb

from .codecs import CodecError
from .codecs import embedding as embedding_codec
from .config import Settings
from .model import expires_ns
from .ranking import Posteriors
from .vector import VectorIndex

__all__ = ["PatternMemory"]

log = logging.getLogger(__name__)


class PatternMemory:
    def __init__(self, settings: Settings) -> None:
        # Usage and activity only feed pruning: kept when a prune setting reads them.
        self.posteriors = Posteriors(
            keep_usage=settings.prune_below_confidence > 0,
            keep_activity=settings.prune_idle_s > 0,
        )
        self.vectors = VectorIndex(scan_threads=settings.query_threads)
        # Empty in the common case, so a read pays one truth test for expiry.
        self.expiring: dict[str, int] = {}
        # Reads mark patterns active only when idle pruning needs to know.
        self.track_reads = settings.prune_idle_s > 0

    def __len__(self) -> int:
        return len(self.posteriors)

    def __contains__(self, pid: object) -> bool:
        """Whether ``pid`` is stored (accepted and not deleted; expired ones until
        pruned): the posteriors hold a row for exactly those, so a read of an unknown id
        is answered without asking SQLite."""
        return pid in self.posteriors

    def close(self) -> None:
        self.vectors.close()

    def expired(self, pid: str, now_ns: int) -> bool:
        exp = self.expiring.get(pid)
        return exp is not None and exp <= now_ns

    def touch(self, pid: str, now_ns: int) -> None:
        """A read of ``pid``: not idle (only tracked when idle pruning is on)."""
        if self.track_reads:
            self.posteriors.touch(pid, now_ns)

    def screen_reads(
        self, ids: Sequence[str], found: list[bytes | None], now_ns: int, touch: bool = True
    ) -> None:
        """Touch every id read (unless ``touch`` is off), and blank what ``found`` holds
        for expired ones."""
        posteriors = self.posteriors if self.track_reads and touch else None
        expiring = self.expiring
        for i, pid in enumerate(ids):
            if posteriors is not None:
                posteriors.touch(pid, now_ns)
            exp = expiring.get(pid)
            if exp is not None and exp <= now_ns:
                found[i] = None

    def remember(self, state: pb.Pattern, now_ns: int) -> None:
        """A stored (new or replaced) pattern."""
        exp = expires_ns(state)
        if exp:
            self.expiring[state.id] = exp
        else:
            self.expiring.pop(state.id, None)
        self.posteriors.set(
            state.id,
            state.type,
            state.alpha,
            state.beta,
            state.confidence,
            state.usage_count,
            exp,
            now_ns,
        )
        if state.embedding:
            vector = np.asarray(state.embedding, dtype=np.float32)
            self.vectors.upsert(state.id, vector, state.type, state.confidence)
        elif len(self.vectors) and state.id in self.vectors:
            # len() first: the id lookup costs ~1 us a store, and most stores have no
            # embedding in a store that has none.
            self.vectors.remove(state.id)

    def learned(self, pid: str, row: Sequence[Any], now_ns: int, has_embedding: bool) -> None:
        """An outcome changed ``pid``'s posterior; ``row`` is its learned row
        (storage.queries.LEARNED_FIELDS order: confidence, lower bound, alpha, beta,
        usage, ...)."""
        confidence, _, alpha, beta, usage = row[:5]
        self.posteriors.learn(pid, alpha, beta, confidence, usage, now_ns)
        if has_embedding:
            self.vectors.update_meta(pid, confidence=confidence)

    def forget(self, pid: str) -> None:
        """A deleted (or pruned) pattern."""
        self.expiring.pop(pid, None)
        self.posteriors.remove(pid)
        self.vectors.remove(pid)

    def load(self, rows: Iterable[Sequence[Any]], now_ns: int) -> int:
        """Fill every view from ``SELECT_MEMORY`` rows (at start, before SERVING).

        Reads are not stored, so with idle pruning on every pattern counts as active at
        ``now_ns``: one read just before a restart must not leave it to be pruned as idle
        (the idle clock restarts instead; pruning is late, never early).
        """
        floor = now_ns if self.track_reads else 0
        count = 0
        ids: list[str] = []
        vectors: list[np.ndarray] = []
        types: list[str] = []
        confidences: list[float] = []
        for pid, ptype, alpha, beta, conf, usage, exp, active, emb in rows:
            count += 1
            self.posteriors.set(pid, ptype, alpha, beta, conf, usage, exp, max(active, floor))
            if exp:
                self.expiring[pid] = exp
            if emb:
                try:
                    vector = embedding_codec.decode(emb)
                except CodecError as exc:
                    # One rotten row must not keep the server from starting: reads
                    # of this pattern get DATA_LOSS, every other one is served.
                    log.warning("not indexing the embedding of %r: %s", pid, exc)
                    continue
                ids.append(pid)
                vectors.append(vector)
                types.append(ptype)
                confidences.append(conf)
        if ids:
            lengths = collections.Counter(len(v) for v in vectors)
            if len(lengths) > 1:
                # Servers before the index was served took embeddings of any length (an
                # upgraded database can hold several); the index has one. The most
                # common length is indexed, the rest left out of search, named in the
                # log, and served as stored by every read (helper-28: the start failed,
                # after the migrations had committed).
                dims = lengths.most_common(1)[0][0]
                left_out = [pid for pid, v in zip(ids, vectors, strict=True) if len(v) != dims]
                log.warning(
                    "%d stored embeddings are not %d values long, the length of the most; "
                    "they are left out of SearchSimilar (store them again with %d values): %s",
                    len(left_out),
                    dims,
                    dims,
                    ", ".join(repr(pid) for pid in left_out[:20]),
                )
                keep = [i for i, v in enumerate(vectors) if len(v) == dims]
                ids = [ids[i] for i in keep]
                vectors = [vectors[i] for i in keep]
                types = [types[i] for i in keep]
                confidences = [confidences[i] for i in keep]
            # One quantisation pass for the whole index instead of one per row.
            self.vectors.upsert_many(ids, np.stack(vectors), types, confidences)
        return count

    def thompson_ids(
        self, ptype: str, min_confidence: float, now_ns: int, count: int, seed: int
    ) -> list[str]:
        """The first ``count`` candidates by one posterior draw each (``seed`` 0: random)."""
        rng = np.random.default_rng(seed if seed else None)
        return self.posteriors.thompson(ptype, min_confidence, now_ns, count, rng)
