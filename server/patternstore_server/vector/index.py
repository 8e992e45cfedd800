"""In-memory similarity index over pattern embeddings: int8 codes, exact rescoring.

Each vector is normalised and quantised symmetrically: ``codes = rint(v * 127 / max|v|)``
with one float32 ``scale = max|v| / (127 * |v|)`` per vector, so the approximate
cosine to a unit query ``q`` is ``scale * (codes . q)``. A search filters first (type,
min_confidence), scores the surviving codes block by block (cast to float32 into a
per-thread scratch block, then one BLAS sgemv/sgemm per block), keeps the best
``k * oversample`` and rescores those exactly from float32 vectors that the caller
supplies through ``fetch_exact`` (the index keeps no float32 copy: see DESIGN.md).

Concurrency: ``upsert``, ``upsert_many`` and ``remove`` must be called from one
thread at a time (the server's event loop thread, at accept); they take an internal write lock, so
they wait for in-flight searches and searches wait for them. ``search`` and
``search_batch`` may run concurrently with each other (shared read lock; numpy
releases the GIL in the cast and in BLAS). ``update_meta`` takes no lock: it stores
one aligned scalar per field, which a concurrent search sees either old or new.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Final, TypeVar

import numpy as np
import numpy.typing as npt
import threadpoolctl

from ..keytable import KeyTable

__all__ = ["FetchExact", "VectorIndex", "limit_blas_threads"]

FetchExact = Callable[[Sequence[str]], npt.ArrayLike]
"""``fetch_exact(ids) -> array (len(ids), dims)``: the stored float32 vectors, row i for ids[i]."""

_F32 = npt.NDArray[np.float32]
_F64 = npt.NDArray[np.float64]
_I64 = npt.NDArray[np.int64]
_Scalar = TypeVar("_Scalar", bound=np.generic)

# Elements in one float32 scratch block (1.5 MiB). At 384 dims that is 1024 rows,
# the fastest block measured on the 2-core target (DESIGN.md); from about twice this
# size OpenBLAS runs sgemv on two threads, which on a busy 2-core box is 4-25x slower.
_BLOCK_ELEMENTS: Final = 393_216
_MIN_BLOCK_ROWS: Final = 64
_CODE_MAX: Final = 127
_DEFAULT_OVERSAMPLE: Final = 4
_MAX_TYPES: Final = 2**31 - 1


class _ReadWriteLock:
    """Many readers or one writer; a waiting writer holds off new readers (no starvation)."""

    def __init__(self) -> None:
        # Guards the three counters below; readers and writers wait on it.
        self._cond = threading.Condition(threading.Lock())
        self._readers = 0
        self._writing = False
        self._writers_waiting = 0

    @contextmanager
    def reading(self) -> Iterator[None]:
        with self._cond:
            while self._writing or self._writers_waiting:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                if not self._readers:
                    self._cond.notify_all()

    @contextmanager
    def writing(self) -> Iterator[None]:
        with self._cond:
            self._writers_waiting += 1
            while self._writing or self._readers:
                self._cond.wait()
            self._writers_waiting -= 1
            self._writing = True
        try:
            yield
        finally:
            with self._cond:
                self._writing = False
                self._cond.notify_all()


class VectorIndex:
    """Embeddings keyed by pattern id, searchable by cosine with filters applied first.

    ``dims`` fixes the dimension up front; ``None`` takes it from the first vector.
    ``oversample``: a search rescores the best ``k * oversample`` approximate
    candidates exactly (4 gives recall@10 >= 0.99 on random and clustered 384-dim
    data, DESIGN.md).
    """

    def __init__(
        self,
        dims: int | None = None,
        oversample: int = _DEFAULT_OVERSAMPLE,
        scan_threads: int = 1,
    ) -> None:
        if dims is not None and dims <= 0:
            raise ValueError(f"dims must be positive, got {dims}")
        if oversample < 1:
            raise ValueError(f"oversample must be at least 1, got {oversample}")
        if scan_threads < 1:
            raise ValueError(f"scan_threads must be at least 1, got {scan_threads}")
        self.oversample = oversample
        # One batch's scan is split over this many threads (the caller's plus helpers):
        # numpy releases the GIL in the cast and the sgemm, so a batch uses every core
        # and the requests arriving meanwhile form the next, larger batch.
        self._scan_threads = scan_threads
        self._helpers = (
            ThreadPoolExecutor(scan_threads - 1, thread_name_prefix="patternstore-scan")
            if scan_threads > 1
            else None
        )
        self._dims: int | None = None
        self._block_rows = 0
        self._chunks: list[npt.NDArray[np.int8]] = []
        self._n = 0
        self._scale: _F32 = np.zeros(0, dtype=np.float32)
        self._type: npt.NDArray[np.int32] = np.zeros(0, dtype=np.int32)
        self._confidence: _F64 = np.zeros(0, dtype=np.float64)
        self._keys = KeyTable()
        # Types are few and never forgotten: a code per distinct string.
        self._type_codes: dict[str, int] = {}
        self._type_names: list[str] = []
        self._lock = _ReadWriteLock()
        self._scratch = threading.local()  # per-thread float32 block: searches run in parallel
        # Set by the caller: kept. Taken from the first embedding: given up with the last.
        self._fixed_dims = dims is not None
        if dims is not None:
            self._set_dims(dims)

    def close(self) -> None:
        """Stop the scan helper threads (searches after this run on the caller alone)."""
        helpers, self._helpers = self._helpers, None
        if helpers is not None:
            helpers.shutdown(wait=True)

    # --- introspection -----------------------------------------------------------

    @property
    def dims(self) -> int | None:
        return self._dims

    def __len__(self) -> int:
        return self._n

    def __contains__(self, pattern_id: object) -> bool:
        return isinstance(pattern_id, str) and self._keys.get(pattern_id.encode()) >= 0

    def codes_bytes(self) -> int:
        """Bytes of the live int8 codes alone (n x dims): the memory goal's yardstick."""
        return self._n * (self._dims or 0)

    def memory_bytes(self) -> int:
        """Everything the index holds: allocated codes, scales, filters and the id table."""
        return sum(self.memory_breakdown().values())

    def memory_breakdown(self) -> dict[str, int]:
        return {
            "codes": sum(chunk.nbytes for chunk in self._chunks),
            "scales": self._scale.nbytes,
            "filters": self._type.nbytes + self._confidence.nbytes,
            "ids": self._keys.nbytes(),
        }

    # --- writes ------------------------------------------------------------------

    def upsert(self, pattern_id: str, vector: npt.ArrayLike, type: str, confidence: float) -> None:
        """Insert or replace one pattern's vector and filter fields."""
        values = np.asarray(vector, dtype=np.float32)
        if values.ndim != 1:
            raise ValueError(f"embedding must be 1-d, got shape {values.shape}")
        self.upsert_many([pattern_id], values[np.newaxis, :], [type], [confidence])

    def upsert_many(
        self,
        pattern_ids: Sequence[str],
        vectors: npt.ArrayLike,
        types: Sequence[str],
        confidences: Sequence[float] | npt.ArrayLike,
    ) -> None:
        """``upsert`` for many rows at once (the start-up rebuild): one quantisation pass."""
        matrix = np.asarray(vectors, dtype=np.float32)
        conf = np.asarray(confidences, dtype=np.float64)
        count = len(pattern_ids)
        if matrix.ndim != 2 or matrix.shape[0] != count:
            raise ValueError(f"vectors must have shape ({count}, dims), got {matrix.shape}")
        if len(types) != count or conf.shape != (count,):
            raise ValueError("pattern_ids, types and confidences must have the same length")
        self._check_dims(matrix.shape[1], "embedding")
        if not np.isfinite(matrix).all():
            raise ValueError("embedding contains NaN or infinity")
        codes, scales = _quantise(matrix)
        keys = [pattern_id.encode() for pattern_id in pattern_ids]
        type_codes = [self._type_code(name) for name in types]
        with self._lock.writing():
            if self._dims is None:
                self._set_dims(matrix.shape[1])
            for row in range(count):
                self._reserve(self._n + 1)
                slot, added = self._keys.get_or_add(keys[row])
                if added:
                    self._n += 1
                self._store(slot, codes[row], scales[row], type_codes[row], conf[row])

    def remove(self, pattern_id: str) -> bool:
        """Forget a pattern; False if it was not indexed. O(1): the last row fills the hole."""
        key = pattern_id.encode()
        # Checked before the lock: most deleted patterns have no embedding, and waiting
        # for in-flight searches would stall the event loop for nothing. Safe unlocked:
        # only this (the one mutating) thread changes the key table.
        if self._keys.get(key) < 0:
            return False
        with self._lock.writing():
            slot, moved = self._keys.pop(key)
            if moved >= 0:
                chunk, row = divmod(moved, self._block_rows)
                self._store(
                    slot,
                    self._chunks[chunk][row],
                    self._scale[moved],
                    int(self._type[moved]),
                    float(self._confidence[moved]),
                )
            self._n -= 1
            self._release_spare_chunks()
            if self._n == 0 and not self._fixed_dims:
                # The last embedding gone: the next one may have any length, as after a
                # restart (the index is rebuilt from what is stored, and none is).
                self._chunks.clear()
                self._resize_rows(0)
                self._dims = None
            return True

    def update_meta(
        self, pattern_id: str, type: str | None = None, confidence: float | None = None
    ) -> bool:
        """Change the filter fields of an indexed pattern in O(1); False if not indexed."""
        slot = self._keys.get(pattern_id.encode())
        if slot < 0:
            return False
        if type is not None:
            self._type[slot] = self._type_code(type)
        if confidence is not None:
            self._confidence[slot] = confidence
        return True

    # --- search ------------------------------------------------------------------

    def search(
        self,
        query: npt.ArrayLike,
        k: int,
        type: str | None = None,
        min_confidence: float = 0.0,
        exact: bool = False,
        fetch_exact: FetchExact | None = None,
    ) -> list[tuple[str, float]]:
        """The ``k`` most cosine-similar patterns passing the filters, best first.

        Filters (``type``, ``confidence >= min_confidence``; 0 or less means no
        confidence filter) select rows before any ranking. With ``fetch_exact`` the best
        ``k * oversample`` approximate candidates are rescored exactly from float32; without
        it the cosines are the int8 approximations. ``exact=True`` scores every selected
        row from ``fetch_exact`` (slow; for checking). Ties among the candidates are broken
        by id; when more rows tie than the candidate pool holds, which of them enter it is
        arbitrary (helper-29: 20 equal vectors, a pool of 12).
        """
        values = np.asarray(query, dtype=np.float32)
        if values.ndim != 1:
            raise ValueError(f"query must be 1-d, got shape {values.shape}")
        return self.search_batch(
            values[np.newaxis, :], k, type, min_confidence, exact, fetch_exact
        )[0]

    def search_batch(
        self,
        queries: npt.ArrayLike,
        k: int,
        type: str | None = None,
        min_confidence: float = 0.0,
        exact: bool = False,
        fetch_exact: FetchExact | None = None,
    ) -> list[list[tuple[str, float]]]:
        """``search`` for several queries sharing the filters, in one pass over the codes.

        The scan is memory-bound: 8 queries cost little more than one, which is how a
        server can batch concurrent requests for throughput (DESIGN.md).
        """
        matrix = np.asarray(queries, dtype=np.float32)
        if matrix.ndim != 2:
            raise ValueError(f"queries must be 2-d, got shape {matrix.shape}")
        if k < 0:
            raise ValueError(f"k must not be negative, got {k}")
        if exact and fetch_exact is None:
            raise ValueError("exact search needs fetch_exact to read the float32 vectors")
        if self._dims is None or k == 0 or matrix.shape[0] == 0:
            self._check_dims(matrix.shape[1], "query")
            return [[] for _ in range(matrix.shape[0])]
        self._check_dims(matrix.shape[1], "query")
        units = _unit_queries(matrix)
        if exact:
            assert fetch_exact is not None
            return self._search_exact(units, k, type, min_confidence, fetch_exact)
        pool = k if fetch_exact is None else k * self.oversample
        candidates = self._approximate(units, pool, type, min_confidence)
        if fetch_exact is None:
            return [_best(keys, scores, k) for keys, scores in candidates]
        return self._rescore(units, candidates, k, fetch_exact)

    # --- internals: layout -------------------------------------------------------

    def _set_dims(self, dims: int) -> None:
        self._dims = dims
        self._block_rows = max(_MIN_BLOCK_ROWS, _BLOCK_ELEMENTS // dims)

    def _check_dims(self, got: int, what: str) -> None:
        if self._dims is not None and got != self._dims:
            raise ValueError(f"{what} has {got} dimensions; this index holds {self._dims}")
        if got == 0:
            raise ValueError(f"{what} is empty")

    def _type_code(self, name: str) -> int:
        code = self._type_codes.get(name)
        if code is None:
            if len(self._type_names) >= _MAX_TYPES:
                raise ValueError("too many distinct pattern types")
            code = len(self._type_names)
            self._type_names.append(name)
            self._type_codes[name] = code
        return code

    def _capacity(self) -> int:
        return len(self._chunks) * self._block_rows

    def _reserve(self, rows: int) -> None:
        """Grow by whole chunks: no copy of the codes, at most one chunk of slack."""
        assert self._dims is not None
        if rows <= self._capacity():
            return
        while self._capacity() < rows:
            self._chunks.append(np.zeros((self._block_rows, self._dims), dtype=np.int8))
        self._resize_rows(self._capacity())

    def _release_spare_chunks(self) -> None:
        # Keep one empty chunk in reserve so a remove/insert pair at a chunk boundary
        # does not allocate and free 1.5 MiB each time.
        if self._capacity() - self._n < 2 * self._block_rows:
            return
        self._chunks.pop()
        self._resize_rows(self._capacity())

    def _resize_rows(self, capacity: int) -> None:
        # The per-row arrays are copied on every chunk added (a chunk of rows at a
        # time, 16 bytes a row): about 30 ms in total for a 100,000-row build.
        self._scale = _resized(self._scale, capacity)
        self._type = _resized(self._type, capacity)
        self._confidence = _resized(self._confidence, capacity)
        self._keys.resize_slots(capacity)

    def _store(
        self,
        slot: int,
        codes: npt.NDArray[np.int8],
        scale: np.float32 | float,
        type_code: int,
        confidence: float,
    ) -> None:
        chunk, row = divmod(slot, self._block_rows)
        self._chunks[chunk][row] = codes
        self._scale[slot] = scale
        self._type[slot] = type_code
        self._confidence[slot] = confidence

    # --- internals: scoring ------------------------------------------------------

    def _selected(self, type: str | None, min_confidence: float) -> _I64 | None:
        """Slots passing the filters, ascending; None when there is no filter."""
        n = self._n
        mask: npt.NDArray[np.bool_] | None = None
        if type is not None:
            code = self._type_codes.get(type)
            if code is None:
                return np.zeros(0, dtype=np.int64)
            mask = self._type[:n] == code
        if min_confidence > 0.0:
            passing = self._confidence[:n] >= min_confidence
            mask = passing if mask is None else mask & passing
        return None if mask is None else np.flatnonzero(mask).astype(np.int64)

    def _block(self, rows: int) -> _F32:
        assert self._dims is not None
        shape = (self._block_rows, self._dims)
        block: _F32 | None = getattr(self._scratch, "block", None)
        if block is None or block.shape != shape:
            block = np.empty(shape, dtype=np.float32)
            self._scratch.block = block
        return block[:rows]

    def _approximate(
        self, units: _F32, pool: int, type: str | None, min_confidence: float
    ) -> list[tuple[list[str], _F32]]:
        """Per query: (ids, approximate cosines) of its best ``pool`` selected rows."""
        with self._lock.reading():
            selected = self._selected(type, min_confidence)
            slots = np.arange(self._n, dtype=np.int64) if selected is None else selected
            if not len(slots):
                return [([], np.zeros(0, dtype=np.float32)) for _ in units]
            scores = self._scan(units, slots, selected is None)
            results = []
            for column in scores:
                top = _top_indices(column, pool)
                results.append((self._keys.keys_at(slots[top].tolist()), column[top]))
            return results

    def _scan(self, units: _F32, slots: _I64, every_row: bool) -> _F32:
        """(queries, slots) float32 approximate dot products, one int8 cast per chunk.

        The chunks are split into contiguous runs, one per scan thread; each run writes
        its own rows of the result. Per chunk, all queries of a batch are one sgemm over
        the cast block (block x queries^T): measured single-threaded on 1024 x 384
        blocks, 8 queries cost 133 us as one sgemm and 200 us as 8 sgemvs, 16 queries
        162 us against 374 us; the cast is 41 us whatever the batch. The server keeps
        BLAS at one thread (``limit_blas_threads``): the scan threads already use the
        cores, and OpenBLAS's own threads measured 2-8x slower on a busy box.
        """
        scores = np.empty((len(slots), len(units)), dtype=np.float32)
        queries_t = np.ascontiguousarray(units.T)
        bounds = np.searchsorted(slots, np.arange(len(self._chunks) + 1) * self._block_rows)
        busy = [i for i in range(len(self._chunks)) if bounds[i] < bounds[i + 1]]
        helpers = self._helpers
        runs = min(self._scan_threads if helpers is not None else 1, len(busy))
        if runs <= 1:
            self._scan_chunks(busy, queries_t, slots, bounds, every_row, scores)
        else:
            assert helpers is not None
            cut = [len(busy) * part // runs for part in range(runs + 1)]
            parts = [busy[cut[part] : cut[part + 1]] for part in range(runs)]
            pending = [
                helpers.submit(self._scan_chunks, part, queries_t, slots, bounds, every_row, scores)
                for part in parts[1:]
            ]
            self._scan_chunks(parts[0], queries_t, slots, bounds, every_row, scores)
            for future in pending:
                future.result()
        return np.ascontiguousarray(scores.T)

    def _scan_chunks(
        self,
        chunks: list[int],
        queries_t: _F32,
        slots: _I64,
        bounds: _I64,
        every_row: bool,
        scores: _F32,
    ) -> None:
        rows_per_chunk = self._block_rows
        for chunk_index in chunks:
            lo, hi = int(bounds[chunk_index]), int(bounds[chunk_index + 1])
            chunk = self._chunks[chunk_index]
            if every_row:
                codes = chunk[: hi - lo]
            else:
                codes = chunk[slots[lo:hi] - chunk_index * rows_per_chunk]
            block = self._block(hi - lo)
            np.copyto(block, codes, casting="unsafe")
            out = scores[lo:hi]
            np.dot(block, queries_t, out=out)
            # Per-row scales turn code dot products into cosines; applied here while
            # the rows are in cache, on this run's thread.
            out *= self._scale[slots[lo:hi], np.newaxis]

    def _rescore(
        self,
        units: _F32,
        candidates: list[tuple[list[str], _F32]],
        k: int,
        fetch_exact: FetchExact,
    ) -> list[list[tuple[str, float]]]:
        # One fetch for the union of every query's candidates: fewer round trips.
        rows: dict[str, int] = {}
        for keys, _ in candidates:
            for key in keys:
                rows.setdefault(key, len(rows))
        if not rows:
            return [[] for _ in candidates]
        exact = _fetch(fetch_exact, list(rows), self._dims)
        results = []
        for query, (keys, _) in zip(units, candidates, strict=True):
            picked = exact[[rows[key] for key in keys]]
            results.append(_best(keys, _cosines(picked, query), k))
        return results

    def _search_exact(
        self,
        units: _F32,
        k: int,
        type: str | None,
        min_confidence: float,
        fetch_exact: FetchExact,
    ) -> list[list[tuple[str, float]]]:
        with self._lock.reading():
            selected = self._selected(type, min_confidence)
            slots = np.arange(self._n, dtype=np.int64) if selected is None else selected
            keys = self._keys.keys_at(slots.tolist())
        step = self._block_rows
        cosines = np.empty((len(keys), len(units)), dtype=np.float64)
        for lo in range(0, len(keys), step):
            vectors = _fetch(fetch_exact, keys[lo : lo + step], self._dims)
            for column, query in enumerate(units):
                cosines[lo : lo + len(vectors), column] = _cosines(vectors, query)
        return [_best(keys, cosines[:, column], k) for column in range(len(units))]


# --- pure helpers ----------------------------------------------------------------


def limit_blas_threads() -> None:
    """Keep BLAS (OpenBLAS under numpy) to one thread in this process.

    The server runs ``query_threads`` scans at once, each releasing the GIL in sgemm, so
    the cores are already busy; OpenBLAS adding its own threads on top oversubscribes
    them (measured 2-8x slower per scan on a busy 2-core box). threadpoolctl finds the
    BLAS numpy actually loaded (OpenBLAS, MKL, BLIS) and sets its pool size.
    """
    threadpoolctl.threadpool_limits(limits=1, user_api="blas")


def _quantise(matrix: _F32) -> tuple[npt.NDArray[np.int8], _F32]:
    """Symmetric per-row int8 codes and the scale turning codes . unit_query into cosine."""
    codes = np.empty(matrix.shape, dtype=np.int8)
    scales = np.empty(len(matrix), dtype=np.float32)
    # Row blocks keep the float temporaries small (a 100,000-row build would otherwise
    # allocate several 300 MB float64 arrays).
    step = max(1, _BLOCK_ELEMENTS // max(1, matrix.shape[1]))
    for lo in range(0, len(matrix), step):
        block = matrix[lo : lo + step]
        peak32 = np.abs(block).max(axis=1)
        peak = peak32.astype(np.float64)
        norm = np.sqrt(np.einsum("ij,ij->i", block, block, dtype=np.float64))
        nonzero = peak > 0
        # A zero vector gets codes 0 and scale 0: cosine 0 to every query rather than NaN.
        # Divide by the peak, then scale: 127 / max|v| overflowed float32 to inf for a
        # peak below ~3.7e-37, and inf * 0 made NaN codes (a tiny vector scored as
        # garbage). |v| / max|v| <= 1 exactly, so the codes need no clipping.
        unit = np.zeros_like(block)
        np.divide(block, peak32[:, np.newaxis], out=unit, where=nonzero[:, np.newaxis])
        codes[lo : lo + step] = np.rint(unit * _CODE_MAX)
        block_scales = np.zeros_like(peak)
        np.divide(peak, _CODE_MAX * norm, out=block_scales, where=nonzero)
        scales[lo : lo + step] = block_scales
    return codes, scales


def _unit_queries(matrix: _F32) -> _F32:
    if not np.isfinite(matrix).all():
        raise ValueError("query contains NaN or infinity")
    values = matrix.astype(np.float64)
    norm = np.sqrt(np.einsum("ij,ij->i", values, values))
    if (norm == 0).any():
        raise ValueError("query is the zero vector: cosine similarity is undefined")
    units: _F32 = (values / norm[:, np.newaxis]).astype(np.float32)
    return units


def _fetch(fetch_exact: FetchExact, keys: list[str], dims: int | None) -> _F64:
    vectors = np.asarray(fetch_exact(keys), dtype=np.float64)
    if vectors.shape != (len(keys), dims):
        raise ValueError(
            f"fetch_exact returned shape {vectors.shape} for {len(keys)} ids of {dims} dims"
        )
    return vectors


def _cosines(vectors: _F64, unit_query: _F32) -> _F64:
    norms = np.sqrt(np.einsum("ij,ij->i", vectors, vectors))
    dots = vectors @ unit_query.astype(np.float64)
    cosines = np.zeros(len(vectors), dtype=np.float64)
    np.divide(dots, norms, out=cosines, where=norms > 0)
    return cosines


def _top_indices(scores: npt.NDArray[np.floating], count: int) -> npt.NDArray[np.intp]:
    """Indices of the ``count`` largest scores, unordered (ties may add a few more).

    argpartition over 100,000 scores costs about 0.8 ms, a tenth of a search. Instead:
    the count-th largest of the maxima of at least ``count`` groups is a score that at
    least ``count`` entries reach, so every top entry is at or above it; partition only
    the few entries that are (0.03 ms).
    """
    if count <= 0:
        return np.zeros(0, dtype=np.intp)
    if count >= len(scores):
        return np.arange(len(scores))
    group = len(scores) // (8 * count)
    if group >= 2:
        full = len(scores) // group * group
        maxima = scores[:full].reshape(-1, group).max(axis=1)
        floor = np.partition(maxima, len(maxima) - count)[len(maxima) - count]
        reaching = np.flatnonzero(scores >= floor)
        if len(reaching) <= count:
            return reaching
        best = np.argpartition(scores[reaching], len(reaching) - count)[len(reaching) - count :]
        top: npt.NDArray[np.intp] = reaching[best]
        return top
    return np.argpartition(scores, len(scores) - count)[len(scores) - count :]


def _best(keys: list[str], scores: npt.NDArray[np.floating], k: int) -> list[tuple[str, float]]:
    """Top ``k`` (id, score), best first; equal scores ordered by id, so results are stable."""
    if len(scores) > k:
        threshold = np.partition(scores, len(scores) - k)[len(scores) - k]
        keep = np.flatnonzero(scores >= threshold)
    else:
        keep = np.arange(len(scores))
    ranked = sorted((-float(scores[i]), keys[i]) for i in keep)
    # Clamped: a float32 unit query against float64 vectors gave 1.000000009 for a
    # vector searched with itself (helper-29); a cosine is at most 1.
    return [(key, min(1.0, max(-1.0, -negated))) for negated, key in ranked[:k]]


def _resized(array: npt.NDArray[_Scalar], capacity: int) -> npt.NDArray[_Scalar]:
    grown = np.zeros(capacity, dtype=array.dtype)
    keep = min(capacity, len(array))
    grown[:keep] = array[:keep]
    return grown
