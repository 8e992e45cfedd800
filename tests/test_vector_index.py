"""VectorIndex and thompson_rank: recall, filters before ranking, bookkeeping, Thompson odds.

The index is checked against a brute-force float64 model: a Hypothesis state machine
drives upserts, removes and metadata updates and compares every search with it.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Sequence
from unittest import mock

import numpy as np
import numpy.typing as npt
import patternstore_server.vector.index as index_module
import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule
from patternstore_server.vector import VectorIndex, thompson_rank

_F32 = npt.NDArray[np.float32]

# --- helpers ---------------------------------------------------------------------


def _unit_rows(matrix: npt.NDArray[np.floating]) -> _F32:
    unit: _F32 = (matrix / np.linalg.norm(matrix, axis=1, keepdims=True)).astype(np.float32)
    return unit


def _clustered(rng: np.random.Generator, count: int, dims: int, centres: _F32) -> _F32:
    """Points near a few centres: close neighbours with nearly equal similarities."""
    labels = rng.integers(0, len(centres), count)
    return _unit_rows(centres[labels] + 0.35 * rng.standard_normal((count, dims)))


def _fetcher(ids: Sequence[str], vectors: _F32) -> Callable[[Sequence[str]], _F32]:
    row = {pattern_id: i for i, pattern_id in enumerate(ids)}

    def fetch_exact(wanted: Sequence[str]) -> _F32:
        return vectors[[row[pattern_id] for pattern_id in wanted]]

    return fetch_exact


def _recall_at_10(vectors: _F32, queries: _F32) -> float:
    ids = [f"p{i:05d}" for i in range(len(vectors))]
    index = VectorIndex(vectors.shape[1])
    index.upsert_many(ids, vectors, ["t"] * len(ids), np.full(len(ids), 0.5))
    truth = np.argsort(-(queries.astype(np.float64) @ vectors.T.astype(np.float64)), axis=1)
    fetch = _fetcher(ids, vectors)
    hits = 0
    for query, best in zip(queries, truth[:, :10], strict=True):
        found = {pattern_id for pattern_id, _ in index.search(query, 10, fetch_exact=fetch)}
        hits += len(found & {ids[i] for i in best})
    return hits / (10 * len(queries))


# --- recall ----------------------------------------------------------------------


def test_recall_at_10_on_random_data() -> None:
    rng = np.random.default_rng(20240601)
    vectors = _unit_rows(rng.standard_normal((5000, 384)))
    queries = _unit_rows(rng.standard_normal((40, 384)))
    assert _recall_at_10(vectors, queries) >= 0.99


def test_recall_at_10_on_clustered_data() -> None:
    rng = np.random.default_rng(20240602)
    centres = rng.standard_normal((20, 384)).astype(np.float32)
    vectors = _clustered(rng, 5000, 384, centres)
    queries = _clustered(rng, 40, 384, centres)
    assert _recall_at_10(vectors, queries) >= 0.99


def test_exact_search_matches_brute_force() -> None:
    rng = np.random.default_rng(3)
    vectors = _unit_rows(rng.standard_normal((700, 32)))
    ids = [f"p{i}" for i in range(700)]
    index = VectorIndex(32)
    index.upsert_many(ids, vectors, ["t"] * 700, np.full(700, 0.5))
    query = rng.standard_normal(32).astype(np.float32)
    got = index.search(query, 5, exact=True, fetch_exact=_fetcher(ids, vectors))
    cosines = vectors.astype(np.float64) @ query / np.linalg.norm(query)
    assert [pattern_id for pattern_id, _ in got] == [ids[i] for i in np.argsort(-cosines)[:5]]


# --- filters apply before ranking --------------------------------------------------


def _two_type_index() -> tuple[VectorIndex, Callable[[Sequence[str]], _F32], _F32]:
    """200 'near' patterns of type B around the query, 50 'far' ones of type A."""
    rng = np.random.default_rng(7)
    query = _unit_rows(rng.standard_normal((1, 64)))[0]
    near = _unit_rows(query + 0.1 * rng.standard_normal((200, 64)))
    far = _unit_rows(-query + 0.5 * rng.standard_normal((50, 64)))
    ids = [f"b{i}" for i in range(200)] + [f"a{i}" for i in range(50)]
    vectors = np.concatenate([near, far])
    confidences = [0.9] * 200 + [0.2 + 0.01 * i for i in range(50)]
    index = VectorIndex(64)
    index.upsert_many(ids, vectors, ["B"] * 200 + ["A"] * 50, confidences)
    return index, _fetcher(ids, vectors), query


def test_a_vector_of_tiny_norm_is_found_like_any_other() -> None:
    """127 / max|v| overflowed float32 below max|v| ~ 3.7e-37: inf * 0 gave NaN codes
    and the approximate search missed a vector that exact search ranked first."""
    rng = np.random.default_rng(0)
    index = VectorIndex()
    vectors = {f"p{i}": rng.standard_normal(8).astype(np.float32) for i in range(50)}
    query = rng.standard_normal(8).astype(np.float32)
    vectors["tiny"] = (query / np.abs(query).max() * 1e-38).astype(np.float32)
    for pid, v in vectors.items():
        index.upsert(pid, v, "t", 0.5)
    with np.errstate(all="raise"):  # no overflow or invalid value in the quantiser
        index.upsert("tiny", vectors["tiny"], "t", 0.5)
    assert index.search(query, 1)[0][0] == "tiny"


@pytest.mark.parametrize("rescore", [True, False])
def test_type_filter_selects_before_ranking(rescore: bool) -> None:
    index, fetch, query = _two_type_index()
    found = index.search(query, 10, type="A", fetch_exact=fetch if rescore else None)
    assert len(found) == 10
    assert all(pattern_id.startswith("a") for pattern_id, _ in found)
    cosines = [cosine for _, cosine in found]
    assert cosines == sorted(cosines, reverse=True)


def test_confidence_filter_selects_before_ranking() -> None:
    index, fetch, query = _two_type_index()
    # Only a40..a49 have confidence >= 0.6; every B is closer to the query but is excluded
    # by type, and the other A's by confidence.
    found = index.search(query, 20, type="A", min_confidence=0.6 - 1e-9, fetch_exact=fetch)
    assert sorted(pattern_id for pattern_id, _ in found) == sorted(f"a{i}" for i in range(40, 50))


def test_confidence_updates_move_patterns_in_and_out_of_the_filter() -> None:
    index, fetch, query = _two_type_index()
    assert index.update_meta("a0", confidence=0.99)
    assert index.update_meta("b0", type="A")
    found = {pattern_id for pattern_id, _ in index.search(query, 5, "A", 0.95, fetch_exact=fetch)}
    assert found == {"a0"}
    found = {pattern_id for pattern_id, _ in index.search(query, 1, "A", fetch_exact=fetch)}
    assert found == {"b0"}  # b0 is near the query and now of type A
    assert not index.update_meta("missing", confidence=1.0)


def test_unknown_type_and_empty_index_return_nothing() -> None:
    index, fetch, query = _two_type_index()
    assert index.search(query, 10, type="C", fetch_exact=fetch) == []
    assert VectorIndex().search([1.0, 2.0], 3) == []
    assert VectorIndex(2).search([1.0, 2.0], 3) == []


def test_search_batch_equals_single_searches() -> None:
    index, fetch, _ = _two_type_index()
    queries = np.random.default_rng(9).standard_normal((5, 64)).astype(np.float32)
    batch = index.search_batch(queries, 7, type="B", fetch_exact=fetch)
    assert batch == [index.search(q, 7, type="B", fetch_exact=fetch) for q in queries]


@pytest.mark.parametrize("scan_threads", [2, 3])
def test_a_scan_split_over_threads_gives_the_single_thread_result(scan_threads: int) -> None:
    rng = np.random.default_rng(21)
    # Several chunks (the split is by chunk: 1024 rows at 384 dims), two types so the
    # filtered path splits too.
    vectors = _unit_rows(rng.standard_normal((4500, 384)))
    ids = [f"p{i}" for i in range(len(vectors))]
    types = ["A" if i % 3 else "B" for i in range(len(vectors))]
    single, split = VectorIndex(), VectorIndex(scan_threads=scan_threads)
    for index in (single, split):
        index.upsert_many(ids, vectors, types, [0.5] * len(ids))
    fetch = _fetcher(ids, vectors)
    queries = rng.standard_normal((4, 384)).astype(np.float32)
    assert len(split._chunks) >= 4
    try:
        for type in (None, "B"):
            expected = single.search_batch(queries, 10, type=type, fetch_exact=fetch)
            assert split.search_batch(queries, 10, type=type, fetch_exact=fetch) == expected
            assert split.search_batch(queries, 10, type=type) == single.search_batch(
                queries, 10, type=type
            )
    finally:
        split.close()
        split.close()  # twice is safe


# --- errors ----------------------------------------------------------------------


def test_dimension_mismatch_is_a_clear_value_error() -> None:
    index = VectorIndex()
    index.upsert("a", [1.0, 0.0, 0.0], "t", 0.5)
    assert index.dims == 3
    with pytest.raises(ValueError, match="embedding has 2 dimensions; this index holds 3"):
        index.upsert("b", [1.0, 0.0], "t", 0.5)
    with pytest.raises(ValueError, match="query has 4 dimensions; this index holds 3"):
        index.search([1.0, 0.0, 0.0, 0.0], 1)
    with pytest.raises(ValueError, match="embedding has 2 dimensions"):
        VectorIndex(3).upsert("a", [1.0, 0.0], "t", 0.5)
    assert len(index) == 1


def test_the_length_learned_from_the_first_embedding_goes_with_the_last() -> None:
    """helper-24: an 8-value embedding was refused after every 4-value one was deleted,
    until a restart (which rebuilds the index from what is stored)."""
    index = VectorIndex()
    index.upsert("a", [1.0, 0.0, 0.0, 0.0], "t", 0.5)
    index.upsert("b", [0.0, 1.0, 0.0, 0.0], "t", 0.5)
    index.remove("a")
    assert index.dims == 4  # one is left
    index.remove("b")
    assert index.dims is None
    index.upsert("c", [1.0] * 8, "t", 0.5)
    assert index.dims == 8 and index.search([1.0] * 8, 1)[0][0] == "c"
    fixed = VectorIndex(4)
    fixed.upsert("a", [1.0, 0.0, 0.0, 0.0], "t", 0.5)
    fixed.remove("a")
    assert fixed.dims == 4  # a length the caller set stays


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda ix: ix.upsert("x", [np.nan, 1.0, 0.0], "t", 0.5), "NaN or infinity"),
        (lambda ix: ix.upsert("x", [[1.0, 0.0, 0.0]], "t", 0.5), "must be 1-d"),
        (lambda ix: ix.search([0.0, 0.0, 0.0], 1), "zero vector"),
        (lambda ix: ix.search([np.inf, 0.0, 0.0], 1), "NaN or infinity"),
        (lambda ix: ix.search([1.0, 0.0, 0.0], -1), "must not be negative"),
        (lambda ix: ix.search([1.0, 0.0, 0.0], 1, exact=True), "needs fetch_exact"),
        (
            lambda ix: ix.search([1.0, 0.0, 0.0], 1, fetch_exact=lambda ids: np.zeros((1, 2))),
            r"fetch_exact returned shape \(1, 2\)",
        ),
        (lambda ix: ix.upsert("x" * 70_000, [1.0, 0.0, 0.0], "t", 0.5), "exceeds"),
    ],
)
def test_bad_input_raises_value_error(call: Callable[[VectorIndex], object], message: str) -> None:
    index = VectorIndex(3)
    index.upsert("a", [1.0, 2.0, 3.0], "t", 0.5)
    with pytest.raises(ValueError, match=message):
        call(index)
    assert len(index) == 1


def test_constructor_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match="dims must be positive"):
        VectorIndex(0)
    with pytest.raises(ValueError, match="oversample"):
        VectorIndex(3, oversample=0)
    with pytest.raises(ValueError, match="scan_threads"):
        VectorIndex(3, scan_threads=0)


def test_zero_vector_has_cosine_zero() -> None:
    index = VectorIndex(2)
    index.upsert("zero", [0.0, 0.0], "t", 0.5)
    index.upsert("one", [1.0, 0.0], "t", 0.5)
    vectors = {"zero": [0.0, 0.0], "one": [1.0, 0.0]}

    def fetch(ids: Sequence[str]) -> _F32:
        return np.array([vectors[i] for i in ids], dtype=np.float32)

    assert index.search([1.0, 0.0], 5, fetch_exact=fetch) == [("one", 1.0), ("zero", 0.0)]
    assert index.search([1.0, 0.0], 5)[1] == ("zero", 0.0)


# --- bookkeeping against a brute-force model ---------------------------------------

_DIMS = 6
_IDS = st.sampled_from([f"id-{i}" for i in range(40)] + ["ü", "", "a" * 300])
_TYPES = st.sampled_from(["x", "y", "z"])
_VECTORS = st.lists(st.integers(-4, 4), min_size=_DIMS, max_size=_DIMS)
_CONFIDENCES = st.sampled_from([0.0, 0.25, 0.5, 0.75, 1.0])


class IndexMatchesModel(RuleBasedStateMachine):
    """Every operation on the index and on a plain dict; searches must agree."""

    def __init__(self) -> None:
        super().__init__()
        # 16-row chunks (a real 6-dim index would hold 65,536 rows in one) so the
        # machine crosses chunk boundaries; oversample so large that rescoring sees
        # every candidate and must agree with the model exactly.
        with (
            mock.patch.object(index_module, "_BLOCK_ELEMENTS", 16 * _DIMS),
            mock.patch.object(index_module, "_MIN_BLOCK_ROWS", 16),
        ):
            self.index = VectorIndex(_DIMS, oversample=1000)
        self.model: dict[str, tuple[_F32, str, float]] = {}

    def _fetch(self, ids: Sequence[str]) -> _F32:
        return np.array([self.model[i][0] for i in ids], dtype=np.float32).reshape(-1, _DIMS)

    @rule(pattern_id=_IDS, vector=_VECTORS, type=_TYPES, confidence=_CONFIDENCES)
    def upsert(self, pattern_id: str, vector: list[int], type: str, confidence: float) -> None:
        values = np.array(vector, dtype=np.float32)
        self.index.upsert(pattern_id, values, type, confidence)
        self.model[pattern_id] = (values, type, confidence)

    @rule(pattern_id=_IDS)
    def remove(self, pattern_id: str) -> None:
        assert self.index.remove(pattern_id) == (pattern_id in self.model)
        self.model.pop(pattern_id, None)

    @rule(
        pattern_id=_IDS,
        type=st.none() | _TYPES,
        confidence=st.none() | _CONFIDENCES,
    )
    def update_meta(self, pattern_id: str, type: str | None, confidence: float | None) -> None:
        assert self.index.update_meta(pattern_id, type, confidence) == (pattern_id in self.model)
        if pattern_id in self.model:
            vector, old_type, old_confidence = self.model[pattern_id]
            self.model[pattern_id] = (
                vector,
                old_type if type is None else type,
                old_confidence if confidence is None else confidence,
            )

    @rule(count=st.integers(1, 150))
    def bulk_churn(self, count: int) -> None:
        """Enough rows to span chunks, then most removed: exercises growth and shrinking."""
        rng = np.random.default_rng(count)
        ids = [f"bulk-{count}-{i}" for i in range(count)]
        vectors = rng.integers(-4, 5, size=(count, _DIMS)).astype(np.float32)
        self.index.upsert_many(ids, vectors, ["x"] * count, np.full(count, 0.5))
        for pattern_id, vector in zip(ids, vectors, strict=True):
            self.model[pattern_id] = (vector, "x", 0.5)
        for pattern_id in ids[: count - count // 8]:
            assert self.index.remove(pattern_id)
            del self.model[pattern_id]

    @rule(
        query=_VECTORS.filter(any),
        k=st.integers(0, 8),
        type=st.none() | _TYPES,
        min_confidence=_CONFIDENCES,
        mode=st.sampled_from(["exact", "rescored", "approximate"]),
    )
    def search(
        self, query: list[int], k: int, type: str | None, min_confidence: float, mode: str
    ) -> None:
        q = np.array(query, dtype=np.float64)
        expected = {
            pattern_id: _model_cosine(vector, q)
            for pattern_id, (vector, ptype, confidence) in self.model.items()
            if (type is None or ptype == type)
            and (min_confidence <= 0 or confidence >= min_confidence)
        }
        got = self.index.search(
            q,
            k,
            type,
            min_confidence,
            exact=mode == "exact",
            fetch_exact=None if mode == "approximate" else self._fetch,
        )
        assert len(got) == min(k, len(expected))
        assert len({pattern_id for pattern_id, _ in got}) == len(got)
        cosines = [cosine for _, cosine in got]
        assert cosines == sorted(cosines, reverse=True)
        # int8 error bound on a cosine: sqrt(dims) * half a step of the unit vector.
        tolerance = 1e-6 if mode != "approximate" else math.sqrt(_DIMS) / 254 + 1e-5
        for pattern_id, cosine in got:
            assert abs(expected[pattern_id] - cosine) <= tolerance
        if mode != "approximate":
            best = sorted(expected.values(), reverse=True)[:k]
            assert np.allclose(cosines, best, atol=1e-6)

    @invariant()
    def same_contents(self) -> None:
        assert len(self.index) == len(self.model)
        assert self.index.codes_bytes() == len(self.model) * _DIMS
        for pattern_id in list(self.model)[:5]:
            assert pattern_id in self.index


def _model_cosine(vector: _F32, query: npt.NDArray[np.float64]) -> float:
    norm = float(np.linalg.norm(vector))
    return (
        0.0
        if norm == 0
        else float(vector.astype(np.float64) @ query) / (norm * float(np.linalg.norm(query)))
    )


TestIndexMatchesModel = IndexMatchesModel.TestCase
TestIndexMatchesModel.settings = settings(max_examples=60, stateful_step_count=40, deadline=None)


def test_many_ids_survive_rehash_compaction_and_chunk_release() -> None:
    rng = np.random.default_rng(5)
    index = VectorIndex(384)  # 1024-row chunks: six at the peak
    vectors = rng.standard_normal((6000, 384)).astype(np.float32)
    ids = [f"pattern-{i:06d}-{'x' * (i % 40)}" for i in range(6000)]
    for pattern_id, vector in zip(ids, vectors, strict=True):
        index.upsert(pattern_id, vector, "t", 0.5)
    peak = index.memory_breakdown()["codes"]
    kept = set(rng.choice(6000, size=300, replace=False).tolist())
    for i in rng.permutation(6000).tolist():
        if i not in kept:
            assert index.remove(ids[i])
    assert len(index) == 300
    # One chunk in use and one spare kept against churn at a chunk boundary.
    assert index.memory_breakdown()["codes"] == 2 * peak // 6
    assert all(ids[i] in index for i in kept)
    assert not any(ids[i] in index for i in range(6000) if i not in kept)
    live = sorted(kept)
    fetch = _fetcher([ids[i] for i in live], vectors[live])
    for i in live[:20]:
        best_id, cosine = index.search(vectors[i], 1, fetch_exact=fetch)[0]
        assert best_id == ids[i] and cosine == pytest.approx(1.0)


def test_searches_run_alongside_writes() -> None:
    rng = np.random.default_rng(11)
    dims = 16
    index = VectorIndex(dims)
    index.upsert_many(
        [f"p{i}" for i in range(2000)],
        rng.standard_normal((2000, dims)),
        ["t"] * 2000,
        np.full(2000, 0.5),
    )
    errors: list[BaseException] = []
    stop = threading.Event()
    searches = [0, 0]
    searching = threading.Barrier(3)

    def searcher(n: int) -> None:
        local = np.random.default_rng(threading.get_ident() % 1000)
        try:
            searching.wait(10)
            while not stop.is_set():
                found = index.search(local.standard_normal(dims), 10, type="t")
                assert len(found) == 10
                searches[n] += 1
        except BaseException as error:  # reported to the main thread below
            errors.append(error)

    threads = [threading.Thread(target=searcher, args=(n,)) for n in range(2)]
    for thread in threads:
        thread.start()
    searching.wait(10)  # both searchers are running before the writes start
    for i in range(3000):  # the single writer: inserts, removes and confidence updates
        index.upsert(f"n{i}", rng.standard_normal(dims), "t", 0.5)
        index.remove(f"p{i % 2000}")
        index.update_meta(f"n{i}", confidence=0.7)
        if i == 1500:
            # Halfway, let both searchers finish a search between writes (the lock
            # prefers the writer, so a fast writer could otherwise starve them).
            deadline = time.monotonic() + 10
            while not all(searches) and not errors and time.monotonic() < deadline:
                time.sleep(0.001)
    stop.set()
    for thread in threads:
        thread.join()
    assert not errors
    assert all(searches), f"searches per thread: {searches}"
    assert len(index) == 3000


# --- Thompson sampling -----------------------------------------------------------

_POSTERIORS = [(3.0, 2.0), (10.0, 8.0), (2.0, 1.0), (20.0, 19.0), (1.0, 1.0)]


def _probability_best(
    posteriors: Sequence[tuple[float, float]], points: int = 200_000
) -> list[float]:
    """P(candidate i draws highest) = integral of pdf_i(x) * prod_{j != i} cdf_j(x) dx.

    Midpoint rule on [0, 1]; alpha, beta >= 1 keep the densities bounded, so the error
    is O(1/points^2) -- far below the sampling error tested against.
    """
    width = 1.0 / points
    x = (np.arange(points) + 0.5) * width
    pdfs = []
    for a, b in posteriors:
        log_norm = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
        pdfs.append(np.exp(log_norm + (a - 1) * np.log(x) + (b - 1) * np.log1p(-x)))
    cdfs = [np.cumsum(pdf) * width - pdf * width / 2 for pdf in pdfs]
    result = []
    for i, pdf in enumerate(pdfs):
        others = np.prod([cdf for j, cdf in enumerate(cdfs) if j != i], axis=0)
        result.append(float(np.sum(pdf * others) * width))
    return result


def test_thompson_first_place_frequency_matches_probability_of_being_best() -> None:
    expected = _probability_best(_POSTERIORS)
    assert sum(expected) == pytest.approx(1.0, abs=1e-6)
    alpha = np.array([a for a, _ in _POSTERIORS])
    beta = np.array([b for _, b in _POSTERIORS])
    rng = np.random.default_rng(12345)
    draws = 20_000
    firsts = np.bincount(
        [int(thompson_rank(alpha, beta, rng)[0]) for _ in range(draws)], minlength=len(alpha)
    )
    for count, probability in zip(firsts, expected, strict=True):
        # Each count is Binomial(draws, p): standard error sqrt(p(1-p)/draws) <= 0.0036.
        # 4.5 standard errors leaves a false-failure chance of ~7e-6 per candidate,
        # so the bound holds for any seed, not just this one.
        standard_error = math.sqrt(probability * (1 - probability) / draws)
        assert abs(count / draws - probability) <= 4.5 * standard_error


def test_thompson_rank_is_a_reproducible_permutation() -> None:
    alpha = np.array([1.0, 5.0, 2.5, 9.0])
    beta = np.array([1.0, 2.0, 7.5, 1.0])
    first = thompson_rank(alpha, beta, np.random.default_rng(99))
    again = thompson_rank(alpha, beta, np.random.default_rng(99))
    assert first.tolist() == again.tolist()
    assert sorted(first.tolist()) == [0, 1, 2, 3]
    assert thompson_rank(np.zeros(0), np.zeros(0), np.random.default_rng(1)).tolist() == []


@pytest.mark.parametrize(
    ("alpha", "beta"),
    [([1.0, 2.0], [1.0]), ([0.0], [1.0]), ([1.0], [-1.0]), ([np.nan], [1.0]), ([[1.0]], [[1.0]])],
)
def test_thompson_rank_rejects_bad_parameters(alpha: list[float], beta: list[float]) -> None:
    with pytest.raises(ValueError):
        thompson_rank(np.array(alpha), np.array(beta), np.random.default_rng(0))


def test_a_cosine_is_at_most_one() -> None:
    """helper-29: a vector searched with itself scored 1.000000009 (a float32 unit query
    against float64 vectors)."""
    rng = np.random.default_rng(7)
    vectors = rng.normal(size=(200, 33)).astype(np.float32)
    index = VectorIndex()
    for i, v in enumerate(vectors):
        index.upsert(f"v{i}", v, "t", 0.5)
    fetch = _fetcher([f"v{i}" for i in range(200)], vectors)
    for exact in (False, True):
        for v in vectors[:50]:
            (best,) = index.search(v, 1, exact=exact, fetch_exact=fetch)
            assert -1.0 <= best[1] <= 1.0
