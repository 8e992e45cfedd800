"""SearchSimilar through gRPC: queries/s, recall@10 against exact float32, index memory.

Starts a fresh server, stores N seeded unit vectors (384 dims by default), then drives
SearchSimilar from several asyncio clients for a set time. Recall compares the served
top 10 with ``exact=true`` (float32 scored directly) on a sample of queries (noisy
copies of stored vectors).
"""

from __future__ import annotations

import argparse
import asyncio
import re
import shutil
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
for sub in ("server", "client", "loadtest"):
    if str(ROOT / sub) not in sys.path:
        sys.path.insert(0, str(ROOT / sub))

import numpy as np  # noqa: E402
from patternstore import (  # noqa: E402
    DURABILITY_QUEUED,
    AsyncPatternStoreClient,
    Pattern,
    PatternStoreClient,
)
from procs import start_patternstore  # noqa: E402


def _metric(port: int, name: str) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    m = re.search(rf"^{name} ([\d.e+]+)$", text, re.M)
    return float(m[1]) if m else float("nan")


async def _drive(target: str, queries: np.ndarray, seconds: float, clients: int) -> int:
    done = 0
    stop_at = time.monotonic() + seconds

    async def one(n: int) -> None:
        nonlocal done
        async with AsyncPatternStoreClient(target, timeout=30) as c:
            i = n
            while time.monotonic() < stop_at:
                await c.search_similar(queries[i % len(queries)].tolist(), k=10)
                done += 1
                i += clients

    await asyncio.gather(*(one(n) for n in range(clients)))
    return done


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--patterns", type=int, default=100_000)
    parser.add_argument("--dims", type=int, default=384)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--recall-queries", type=int, default=100)
    args = parser.parse_args(argv)
    rng = np.random.default_rng(1)
    vecs = rng.normal(size=(args.patterns, args.dims)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    picks = rng.choice(args.patterns, size=max(args.recall_queries, 64), replace=False)
    noise = rng.normal(scale=0.5 / np.sqrt(args.dims), size=(len(picks), args.dims))
    queries = (vecs[picks] + noise).astype(np.float32)

    work = Path(tempfile.mkdtemp(prefix="patternstore-search-"))
    proc = None
    try:
        proc, target, mport = start_patternstore(work)
        started = time.perf_counter()
        with PatternStoreClient(target, timeout=300) as c:
            for lo in range(0, args.patterns, 500):
                c.store_patterns(
                    [
                        Pattern(id=f"v{i:07d}", type=f"t{i % 4}", embedding=vecs[i].tolist())
                        for i in range(lo, min(args.patterns, lo + 500))
                    ],
                    durability=DURABILITY_QUEUED,
                )
            c.flush()
            load_s = time.perf_counter() - started
            hits = total = 0
            for q in queries[: args.recall_queries]:
                served = {x.pattern.id for x in c.search_similar(q.tolist(), k=10).results}
                exact = {
                    x.pattern.id for x in c.search_similar(q.tolist(), k=10, exact=True).results
                }
                hits += len(served & exact)
                total += len(exact)
        n = asyncio.run(_drive(target, queries, args.seconds, args.clients))
        index_bytes = _metric(mport, "patternstore_vector_index_bytes")
        codes = args.patterns * args.dims
        print(f"{args.patterns:,} x {args.dims} embeddings stored in {load_s:.1f} s")
        print(f"recall@10 vs exact float32 ({args.recall_queries} queries): {hits / total:.4f}")
        print(
            f"SearchSimilar k=10 through gRPC, {args.clients} clients: "
            f"{n / args.seconds:,.1f} queries/s"
        )
        print(
            f"index memory {index_bytes / 2**20:.1f} MiB = {index_bytes / codes:.3f} x the "
            f"int8 codes ({codes / 2**20:.1f} MiB)"
        )
    finally:
        if proc is not None:
            proc.stop()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
