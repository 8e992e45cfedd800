"""Print recall, speed and memory of the similarity index on 100,000 x 384 vectors.

    python loadtest/bench_vector.py               # from the repo root, ~1-2 minutes
    python loadtest/bench_vector.py --n 20000     # quicker

Seeded unit vectors, uniform on the sphere and clustered (100 centres), with
uuid4-hex ids like the server's. Ground truth is exact float32 search (BLAS). The
``fetch_exact`` used for rescoring reads an in-memory float32 array, standing in for
the server's SQLite/cache read. A benchmark prints figures; it never fails on them.
Goals from the issue are printed beside the figures.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt

_ROOT = Path(__file__).resolve().parent.parent
for _path in (_ROOT, _ROOT / "server", _ROOT / "client"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from patternstore_server.vector import VectorIndex  # noqa: E402

_F32 = npt.NDArray[np.float32]
_TYPES = [f"type-{i}" for i in range(10)]  # a type filter keeps about 10 %


def _unit(matrix: npt.NDArray[np.floating]) -> _F32:
    unit: _F32 = (matrix / np.linalg.norm(matrix, axis=1, keepdims=True)).astype(np.float32)
    return unit


def _dataset(kind: str, n: int, queries: int, dims: int, seed: int) -> tuple[_F32, _F32]:
    rng = np.random.default_rng(seed)
    if kind == "random":
        return _unit(rng.standard_normal((n, dims))), _unit(rng.standard_normal((queries, dims)))
    centres = rng.standard_normal((100, dims))

    def near(count: int) -> _F32:
        labels = rng.integers(0, len(centres), count)
        return _unit(centres[labels] + 0.35 * rng.standard_normal((count, dims)))

    return near(n), near(queries)


def _exact_top(
    vectors: _F32, queries: _F32, k: int, allowed: npt.NDArray[np.bool_] | None
) -> list[set[int]]:
    scores = queries @ vectors.T  # float32 BLAS: the reference "exact float32 search"
    if allowed is not None:
        scores[:, ~allowed] = -np.inf
    top = np.argpartition(-scores, k, axis=1)[:, :k]
    return [set(row.tolist()) for row in top]


def _timed(calls: Sequence[Callable[[], object]], repeat: int = 1) -> list[float]:
    """Seconds per call, each call timed alone."""
    times = []
    for _ in range(repeat):
        for call in calls:
            start = time.perf_counter()
            call()
            times.append(time.perf_counter() - start)
    return times


def _row(label: str, value: str, goal: str = "") -> None:
    print(f"  {label:<46} {value:>16}   {goal}")


def _bench(kind: str, args: argparse.Namespace) -> None:
    vectors, queries = _dataset(kind, args.n, args.queries, args.dims, args.seed)
    rng = np.random.default_rng(args.seed + 1)
    ids = [
        uuid.UUID(
            int=int(rng.integers(0, 2**63)) << 64 | int(rng.integers(0, 2**63)), version=4
        ).hex
        for _ in range(args.n)
    ]
    types = [_TYPES[i] for i in rng.integers(0, len(_TYPES), args.n).tolist()]
    row_of = {pattern_id: i for i, pattern_id in enumerate(ids)}

    def fetch_exact(wanted: Sequence[str]) -> _F32:
        return vectors[[row_of[pattern_id] for pattern_id in wanted]]

    index = VectorIndex(args.dims)
    start = time.perf_counter()
    index.upsert_many(ids, vectors, types, np.full(args.n, 0.5))
    build = time.perf_counter() - start

    k = 10
    truth = _exact_top(vectors, queries, k, None)
    filtered_truth = _exact_top(vectors, queries, k, np.array([t == _TYPES[0] for t in types]))

    def recall(results: list[list[tuple[str, float]]], expected: list[set[int]]) -> float:
        hits = sum(
            len({row_of[p] for p, _ in got} & want)
            for got, want in zip(results, expected, strict=True)
        )
        return hits / (k * len(expected))

    rescored = [index.search(q, k, fetch_exact=fetch_exact) for q in queries]
    approximate = [index.search(q, k) for q in queries]
    filtered = [index.search(q, k, type=_TYPES[0], fetch_exact=fetch_exact) for q in queries]

    single = _timed([lambda q=q: index.search(q, k, fetch_exact=fetch_exact) for q in queries])
    typed = _timed(
        [lambda q=q: index.search(q, k, type=_TYPES[0], fetch_exact=fetch_exact) for q in queries]
    )
    batch_size = 8
    batches = [
        queries[i : i + batch_size] for i in range(0, len(queries) - batch_size + 1, batch_size)
    ]
    batched = _timed(
        [lambda b=b: index.search_batch(b, k, fetch_exact=fetch_exact) for b in batches]
    )

    churn = [f"churn-{i}" for i in range(2000)]
    extra = vectors[:2000]
    upserts = _timed(
        [lambda p=p, v=v: index.upsert(p, v, "t", 0.5) for p, v in zip(churn, extra, strict=True)]
    )
    updates = _timed([lambda p=p: index.update_meta(p, confidence=0.7) for p in churn])
    removes = _timed([lambda p=p: index.remove(p) for p in churn])

    breakdown = index.memory_breakdown()
    codes = index.codes_bytes()
    median = statistics.median(single)
    print(
        f"\n{kind}: {args.n:,} x {args.dims}, {len(queries)} queries, k={k},"
        f" oversample={index.oversample}"
    )
    _row("recall@10, rescored (fetch_exact)", f"{recall(rescored, truth):.4f}", "goal >= 0.99")
    _row(
        "recall@10, type filter (~10 % of rows)",
        f"{recall(filtered, filtered_truth):.4f}",
        "goal >= 0.99",
    )
    _row("recall@10, int8 scores only (no fetch_exact)", f"{recall(approximate, truth):.4f}")
    _row(
        "search ms, median / min (1 query, rescored)",
        f"{median * 1e3:.2f} / {min(single) * 1e3:.2f}",
    )
    _row(
        "search queries/s, 1 thread, 1 query a call",
        f"{len(single) / sum(single):.0f}",
        "needs >= 200 via gRPC",
    )
    _row(
        f"search queries/s, 1 thread, batches of {batch_size}",
        f"{batch_size * len(batched) / sum(batched):.0f}",
    )
    _row("search ms, median, type filter (~10 %)", f"{statistics.median(typed) * 1e3:.2f}")
    _row("index memory / int8 codes, total", f"{index.memory_bytes() / codes:.3f}", "goal <= 1.2")
    _row(
        "index memory / int8 codes, without ids",
        f"{(index.memory_bytes() - breakdown['ids']) / codes:.3f}",
    )
    _row(
        "  codes / scales / filters / ids (MB)",
        " / ".join(f"{v / 1e6:.1f}" for v in breakdown.values()),
    )
    _row("build (upsert_many) s", f"{build:.2f}")
    _row(
        "upsert / update_meta / remove us, median",
        " / ".join(f"{statistics.median(t) * 1e6:.0f}" for t in (upserts, updates, removes)),
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--dims", type=int, default=384)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--seed", type=int, default=2024)
    args = parser.parse_args()
    load = os.getloadavg()
    print(
        f"numpy {np.__version__}, {os.cpu_count()} CPUs,"
        f" load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
    )
    print("(timings on a shared machine: the load average above says how shared)")
    for kind in ("random", "clustered"):
        _bench(kind, args)


if __name__ == "__main__":
    main()
