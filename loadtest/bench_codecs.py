"""Print what the codecs save on the test corpus, beside zlib-6 per record and raw.

    python loadtest/bench_codecs.py            # from the repo root, ~1 minute

A benchmark prints figures; it never fails on them. Goals from the compression
issue are printed beside each figure so a reader sees where it stands.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

_ROOT = Path(__file__).resolve().parent.parent
for _path in (_ROOT, _ROOT / "server", _ROOT / "client"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from patternstore_server.codecs import (  # noqa: E402
    PayloadDictionary,
    PayloadEncoder,
    embedding,
    payload,
    train_dictionary,
    trajectory,
)

from tests import corpus  # noqa: E402

_ZLIB_LEVEL = 6


@dataclass
class Row:
    field: str
    records: int
    raw: int
    zlib: int
    ours: int
    encode_us: float
    decode_us: float
    goal: str = ""

    @property
    def ours_saved(self) -> float:
        return 1 - self.ours / self.raw

    @property
    def zlib_saved(self) -> float:
        return 1 - self.zlib / self.raw


def _timed(function: Callable[[], object]) -> float:
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def _measure(
    field: str,
    values: Sequence[object],
    raw_bytes: Callable[[object], bytes],
    encode: Callable[[object], bytes],
    decode: Callable[[bytes], object],
    goal: str = "",
) -> Row:
    blobs: list[bytes] = []
    encode_seconds = _timed(lambda: blobs.extend(encode(value) for value in values))
    decode_seconds = _timed(lambda: [decode(blob) for blob in blobs])
    raws = [raw_bytes(value) for value in values]
    return Row(
        field=field,
        records=len(values),
        raw=sum(map(len, raws)),
        zlib=sum(len(zlib.compress(raw, _ZLIB_LEVEL)) for raw in raws),
        ours=sum(map(len, blobs)),
        encode_us=encode_seconds / len(values) * 1e6,
        decode_us=decode_seconds / len(values) * 1e6,
        goal=goal,
    )


def _payload_rows(count: int, train_count: int) -> list[Row]:
    records = corpus.payloads(count=count)
    train, held_out = records[:train_count], records[train_count:]
    started = time.perf_counter()
    dictionary = train_dictionary(train)
    print(
        f"payload dictionary: {len(dictionary)} B trained on {len(train)} records in "
        f"{time.perf_counter() - started:.2f} s; measured on {len(held_out)} held-out records "
        f"({min(map(len, records))}-{max(map(len, records))} B, "
        f"median {statistics.median(map(len, records)):.0f} B)"
    )
    plain = PayloadEncoder()
    with_dict = PayloadEncoder(dictionary=PayloadDictionary(1, dictionary))
    dictionaries = {1: dictionary}
    values: list[object] = list(held_out)

    def as_bytes(value: object) -> bytes:
        assert isinstance(value, bytes)
        return value

    return [
        _measure(
            "payload zstd-3 (no dict)",
            values,
            as_bytes,
            lambda v: plain.encode(as_bytes(v)),
            lambda b: payload.decode(b, dictionaries),
        ),
        _measure(
            "payload zstd-3 + dict",
            values,
            as_bytes,
            lambda v: with_dict.encode(as_bytes(v)),
            lambda b: payload.decode(b, dictionaries),
            goal=">=60% and >=10 pts over zlib-6",
        ),
    ]


def _embedding_rows(vectors: npt.NDArray[np.float32]) -> list[Row]:
    values: list[object] = list(vectors)

    def as_bytes(value: object) -> bytes:
        assert isinstance(value, np.ndarray)
        return value.astype("<f4").tobytes()

    def encoder_for(storage: str) -> Callable[[object], bytes]:
        def encode(value: object) -> bytes:
            return embedding.encode(np.asarray(value), storage)

        return encode

    goals = {"int8": ">=75%"}
    return [
        _measure(
            f"embedding {storage}",
            values,
            as_bytes,
            encoder_for(storage),
            embedding.decode,
            goal=goals.get(storage, ""),
        )
        for storage in embedding.EMBEDDING_STORAGES
    ]


def _trajectory_rows(count: int, seed: int) -> list[Row]:
    rng = np.random.default_rng(seed)
    shapes = [(int(rng.integers(50, 501)), int(rng.integers(2, 17))) for _ in range(count)]
    makers: list[tuple[str, Callable[..., npt.NDArray[np.float64]], str]] = [
        ("trajectory smooth walk @1e-3", corpus.trajectory_smooth, ">=70%"),
        ("trajectory float32-origin walk", corpus.trajectory_float32_walk, ""),
        ("trajectory full-precision walk", corpus.trajectory_full_precision_walk, ""),
        ("trajectory white noise", corpus.trajectory_white_noise, "<=1% larger than raw"),
    ]
    rows = []
    for name, make, goal in makers:
        values: list[object] = [
            (make(steps=steps, dims=dims, seed=index), dims)
            for index, (steps, dims) in enumerate(shapes)
        ]

        def as_bytes(value: object) -> bytes:
            assert isinstance(value, tuple)
            array: npt.NDArray[np.float64] = value[0]
            return array.astype("<f8").tobytes()

        def encode(value: object) -> bytes:
            assert isinstance(value, tuple)
            return trajectory.encode(value[0], value[1])

        rows.append(_measure(name, values, as_bytes, encode, trajectory.decode, goal=goal))
    return rows


def _print_table(rows: list[Row]) -> None:
    header = (
        f"{'field':<32}{'records':>8}{'raw B/rec':>11}{'zlib-6 B/rec':>14}{'saved':>8}"
        f"{'ours B/rec':>12}{'saved':>8}{'vs zlib':>9}{'enc us':>9}{'dec us':>9}  goal"
    )
    print(header)
    print("-" * len(header))
    for row in rows:
        print(
            f"{row.field:<32}{row.records:>8}{row.raw / row.records:>11.1f}"
            f"{row.zlib / row.records:>14.1f}{row.zlib_saved:>8.1%}"
            f"{row.ours / row.records:>12.1f}{row.ours_saved:>8.1%}"
            f"{(row.ours_saved - row.zlib_saved) * 100:>+8.1f}p"
            f"{row.encode_us:>9.1f}{row.decode_us:>9.1f}  {row.goal}"
        )


def _normalise(matrix: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    norms: npt.NDArray[np.float64] = np.linalg.norm(matrix, axis=1, keepdims=True)
    return matrix / norms


def _top_k(
    stored: npt.NDArray[np.float64], queries: npt.NDArray[np.float64], k: int
) -> npt.NDArray[np.intp]:
    scores = _normalise(queries) @ _normalise(stored).T  # cosine similarity
    best: npt.NDArray[np.intp] = np.argsort(-scores, axis=1)[:, :k]
    return best


def _recall_and_error(
    vectors: npt.NDArray[np.float32], queries_count: int, noise: float, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    picks = rng.choice(len(vectors), size=queries_count, replace=False)
    noisy = vectors[picks].astype(np.float64) + rng.normal(
        0.0, noise / np.sqrt(vectors.shape[1]), size=(queries_count, vectors.shape[1])
    )
    exact = _top_k(vectors.astype(np.float64), noisy, 10)
    print(
        f"\ntop-10 cosine recall vs float32: {len(vectors)} unit vectors of {vectors.shape[1]} "
        f"dims, {queries_count} queries = stored vectors + gaussian noise of norm ~{noise}"
    )
    print(f"{'storage':<10}{'recall@10':>10}{'max abs err':>14}{'mean abs err':>14}  goal")
    for storage in embedding.EMBEDDING_STORAGES:
        decoded = np.stack([embedding.decode(embedding.encode(v, storage)) for v in vectors])
        found = _top_k(decoded.astype(np.float64), noisy, 10)
        hits = [len(set(e) & set(f)) for e, f in zip(exact.tolist(), found.tolist(), strict=True)]
        recall = sum(hits) / (10 * queries_count)
        errors = np.abs(decoded.astype(np.float64) - vectors)
        goal = ">=0.99" if storage == "int8" else ""
        print(
            f"{storage:<10}{recall:>10.4f}{errors.max():>14.3e}{errors.mean():>14.3e}  {goal}"
        )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--records", type=int, default=10_000)
    parser.add_argument("--train", type=int, default=1_000, help="payloads used for the dict")
    parser.add_argument("--trajectories", type=int, default=1_000, help="records per kind")
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--noise", type=float, default=0.5, help="query noise norm")
    args = parser.parse_args(argv)

    rows = _payload_rows(args.records, args.train)
    vectors = corpus.embeddings(count=args.records)
    rows += _embedding_rows(vectors)
    rows += _trajectory_rows(args.trajectories, seed=9)
    print()
    _print_table(rows)
    _recall_and_error(vectors, args.queries, args.noise, seed=10)


if __name__ == "__main__":
    main()
