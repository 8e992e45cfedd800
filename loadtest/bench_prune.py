"""A pruning pass over N stored patterns: how long it takes, and whether reads slow down.

Builds the database offline through the server's own storage code (fast, no gRPC),
a third of the patterns below the pruning threshold, starts a server with pruning
settings, measures GetPattern calls/s alone, then again while PrunePatterns passes run.
"""

from __future__ import annotations

import argparse
import json
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

from patternstore import Pattern, PatternStoreClient  # noqa: E402
from patternstore_server.model import pattern_row  # noqa: E402
from patternstore_server.storage import ConnectionOptions, ConnectionPool  # noqa: E402
from patternstore_server.storage import queries as q  # noqa: E402
from patternstore_server.storage.blobs import PayloadStore  # noqa: E402
from procs import start_patternstore  # noqa: E402


def _build(path: Path, n: int) -> None:
    pool = ConnectionPool(path, ConnectionOptions())
    conn = pool.writer()
    store = PayloadStore(conn, pool.dictionaries, dict_min_samples=10**9)
    conn.execute("BEGIN")
    for i in range(n):
        bad = i % 3 == 0  # a third stayed below the threshold after enough evidence
        alpha, beta = (1.0, 9.0) if bad else (8.0, 2.0)
        p = Pattern(
            id=f"p{i:07d}",
            type=f"t{i % 8}",
            data=json.dumps({"i": i % 1000}).encode(),
            alpha=alpha,
            beta=beta,
            confidence=alpha / (alpha + beta),
            usage_count=8,
        )
        p.created_at.FromNanoseconds(1)
        p.updated_at.FromNanoseconds(1)
        conn.execute(q.UPSERT_PATTERN, store.put_row(conn, pattern_row(p, i + 1)))
        if i % 100_000 == 99_999:
            conn.execute("COMMIT")
            conn.execute("BEGIN")
    conn.execute("COMMIT")
    pool.close()


def _reads(target: str, n: int, seconds: float) -> float:
    done = 0
    stop_at = time.monotonic() + seconds
    with PatternStoreClient(target) as c:
        i = 1
        while time.monotonic() < stop_at:
            j = (i * 7919) % n
            c.get_pattern(f"p{j + 1 if j % 3 == 0 else j:07d}")  # survivors: j % 3 != 0
            done += 1
            i += 1
    return done / seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--patterns", type=int, default=1_000_000)
    parser.add_argument("--batch", type=int, default=50_000, help="prune_batch: deletes per pass")
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="patternstore-prune-"))
    proc = None
    try:
        started = time.perf_counter()
        _build(work / "data" / "patterns.db", args.patterns)
        print(f"built {args.patterns:,} patterns in {time.perf_counter() - started:.0f} s")
        proc, target, _ = start_patternstore(
            work,
            "--prune-below-confidence",
            "0.3",
            "--prune-min-evidence",
            "5",
            "--prune-interval-s",
            "86400",
            "--prune-batch",
            str(args.batch),
            name="data",
        )
        alone = _reads(target, args.patterns, args.seconds)
        result: dict[str, float] = {}
        with PatternStoreClient(target, timeout=600) as c:
            t = time.perf_counter()
            dry = c.prune_patterns(dry_run=True)
            result["dry_s"] = time.perf_counter() - t
            prunable = dry.low_confidence

            def prune() -> None:
                t0 = time.perf_counter()
                passes = deleted = 0
                while True:
                    r = c.prune_patterns()
                    passes += 1
                    deleted += r.low_confidence
                    if r.low_confidence < args.batch:
                        break
                result.update(prune_s=time.perf_counter() - t0, passes=passes, deleted=deleted)

            pruner = threading.Thread(target=prune)
            pruner.start()
            during = _reads(target, args.patterns, args.seconds)
            pruner.join()
            left = c.get_stats().patterns
        print(
            f"dry run over {args.patterns:,} patterns: {result['dry_s'] * 1000:.0f} ms, "
            f"{prunable:,} prunable (capped at prune_batch={args.batch:,} per pass)"
        )
        print(
            f"pruning {result['deleted']:,.0f} patterns took {result['prune_s']:.1f} s in "
            f"{result['passes']:.0f} passes; {left:,} patterns left"
        )
        print(
            f"GetPattern calls/s: alone {alone:,.0f}, while pruning {during:,.0f} "
            f"(ratio {during / alone:.2f})"
        )
    finally:
        if proc is not None:
            proc.stop()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
