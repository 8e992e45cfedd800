"""`make soak`: a mixed load for a set time, printing RSS, p99 and WAL size every minute.

A flat line is the goal: memory, latency and the WAL must not grow with time. The load
is a learning worker's mix (Zipf-distributed reads by id, top-k queries, Thompson-ranked
queries, similarity searches, outcome batches, new patterns with embeddings, a few
deletes) from several client threads against a fresh server subprocess on a temp
database.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
for sub in ("server", "client", "loadtest"):
    if str(ROOT / sub) not in sys.path:
        sys.path.insert(0, str(ROOT / sub))

import grpc  # noqa: E402
import numpy as np  # noqa: E402
from patternstore import Pattern, PatternStoreClient, update_request  # noqa: E402
from procs import start_patternstore  # noqa: E402


class _Stats:
    """Latencies and counts of the current minute; one lock guards both."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.latencies: list[float] = []
        self.errors = 0

    def take(self) -> tuple[list[float], int]:
        with self.lock:
            out, errors = self.latencies, self.errors
            self.latencies, self.errors = [], 0
        return out, errors


_DIMS = 64


def _embedding(rng: np.random.Generator) -> list[float]:
    vector = rng.normal(size=_DIMS)
    return (vector / np.linalg.norm(vector)).tolist()


def _worker(target: str, n_patterns: int, stop: threading.Event, stats: _Stats, seed: int) -> None:
    rng = random.Random(seed)
    zipf = np.random.default_rng(seed)
    next_id = n_patterns + seed * 10_000_000
    with PatternStoreClient(target, timeout=30) as c:
        while not stop.is_set():
            op = rng.random()
            started = time.perf_counter()
            try:
                if op < 0.65:
                    c.get_pattern(f"s{min(int(zipf.zipf(1.2)) - 1, n_patterns - 1):07d}")
                elif op < 0.75:
                    ids = [f"s{min(int(z) - 1, n_patterns - 1):07d}" for z in zipf.zipf(1.2, 50)]
                    c.get_patterns(ids)
                elif op < 0.79:
                    c.query_patterns(f"type{rng.randrange(8)}", limit=20)
                elif op < 0.81:
                    c.query_patterns(f"type{rng.randrange(8)}", order_by="thompson", limit=10)
                elif op < 0.85:
                    c.search_similar(
                        _embedding(zipf), k=10, type=f"type{rng.randrange(8)}" if op < 0.83 else ""
                    )
                elif op < 0.95:
                    c.update_confidence_batch(
                        [
                            update_request(
                                f"s{rng.randrange(n_patterns):07d}",
                                rng.choice(["success", "failure", "partial"]),
                            )
                            for _ in range(20)
                        ]
                    )
                elif op < 0.99:
                    c.store_pattern(
                        Pattern(
                            id=f"n{next_id}",
                            type=f"type{rng.randrange(8)}",
                            data=json.dumps({"i": next_id}).encode(),
                            embedding=_embedding(zipf),
                        )
                    )
                    next_id += 1
                else:
                    c.delete_pattern(f"n{next_id - 1}")
            except grpc.RpcError as exc:
                if exc.code() != grpc.StatusCode.NOT_FOUND:  # type: ignore[attr-defined]
                    with stats.lock:
                        stats.errors += 1
                continue
            with stats.lock:
                stats.latencies.append(time.perf_counter() - started)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--patterns", type=int, default=20_000)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--interval-s", type=float, default=60.0)
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="patternstore-soak-"))
    server, target, _ = start_patternstore(work, name="data")
    try:
        seeded = np.random.default_rng(12345)
        with PatternStoreClient(target, timeout=120) as c:
            for lo in range(0, args.patterns, 1000):
                c.store_patterns(
                    [
                        Pattern(
                            id=f"s{i:07d}",
                            type=f"type{i % 8}",
                            data=b'{"steps": [1, 2, 3]}' * 10,
                            embedding=_embedding(seeded),
                        )
                        for i in range(lo, min(args.patterns, lo + 1000))
                    ]
                )
        stats = _Stats()
        stop = threading.Event()
        threads = [
            threading.Thread(target=_worker, args=(target, args.patterns, stop, stats, n))
            for n in range(args.threads)
        ]
        for t in threads:
            t.start()
        wal = work / "data" / "patterns.db-wal"
        print(
            f"{'tick':>6} {'ops/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'errors':>6} "
            f"{'RssAnon MB':>10} {'WAL MB':>7}",
            flush=True,
        )
        end = time.monotonic() + args.minutes * 60
        n = 0
        while time.monotonic() < end:
            time.sleep(args.interval_s)
            n += 1
            lat, errors = stats.take()
            arr = np.array(lat) * 1000 if lat else np.array([float("nan")])
            wal_mb = wal.stat().st_size / 2**20 if wal.exists() else 0.0
            print(
                f"{n:>6} {len(lat) / args.interval_s:>8.0f} {np.percentile(arr, 50):>8.2f} "
                f"{np.percentile(arr, 99):>8.2f} {errors:>6} "
                f"{server.rss_anon_mb():>10.1f} {wal_mb:>7.1f}",
                flush=True,
            )
        stop.set()
        for t in threads:
            t.join(60)
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
