"""A Python load generator for patternstore: several processes, Zipf ids, an operation mix.

    python loadtest/pybench.py --target 127.0.0.1:50051 --load 100000 \\
        --processes 2 --concurrency 16 --duration 30 --warmup 5 \\
        --mix get=60,get_batch=10,query=5,outcome=20,store=5 --out pybench.json

Each process runs ``--concurrency`` closed-loop tasks on one grpc.aio channel through our
AsyncPatternStoreClient, so the figures include the client library's own cost (that is
what a learning worker pays). Ids are drawn from a Zipf distribution over the ``--patterns``
ids that ``--load`` stores (``pattern-0000000`` is the most popular). Calls finishing
during the warm-up are not counted. A progress line shows the rate every second; the end
prints throughput and p50/p95/p99/p999 per operation and writes them as JSON.

bench.py and locustfile.py import the corpus (``make_pattern``) and the Zipf sampler from
here so every tool reads and writes the same patterns.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import random
import sys
import time
from array import array
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
for _sub in ("server", "client"):
    if str(ROOT / _sub) not in sys.path:
        sys.path.insert(0, str(ROOT / _sub))

import grpc  # noqa: E402
from patternstore import (  # noqa: E402
    DURABILITY_QUEUED,
    AsyncPatternStoreClient,
    Pattern,
    PatternStoreClient,
)
from patternstore.v1 import patternstore_pb2 as pb  # noqa: E402

__all__ = [
    "OPS",
    "OUTCOMES",
    "BenchConfig",
    "Zipf",
    "load_patterns",
    "make_pattern",
    "parse_mix",
    "pattern_id",
    "run",
]

# The realistic learning-worker mix: mostly point reads, some batch reads and top-N
# queries before a task, an outcome report after most tasks, a few new patterns.
DEFAULT_MIX = "get=60,get_batch=10,query=5,outcome=15,outcome_stream=5,store=5"
OPS = ("get", "get_batch", "query", "outcome", "outcome_stream", "store")
TYPES = 8  # pattern types type0..type7, as make_pattern assigns them
OUTCOMES = (pb.OUTCOME_SUCCESS, pb.OUTCOME_FAILURE, pb.OUTCOME_PARTIAL)
BATCH = 100  # ids per get_batch, as the GetPatterns(100) figure
STREAM = 10  # outcomes per RecordOutcomes stream in the mix


def pattern_id(i: int) -> str:
    return f"pattern-{i:07d}"


def _payload(i: int) -> bytes:
    # Shaped like a learning worker's recipe: ~500 bytes of JSON.
    steps = [
        {"tool": f"tool_{(i + k) % 17}", "args": {"path": f"src/mod_{k}.py", "line": k * 7}}
        for k in range(5)
    ]
    doc = {
        "goal": f"fix failing test {i}",
        "conditions": ["tests fail", "lint clean"],
        "actions": steps,
        "success": {"tests": "pass"},
    }
    return json.dumps(doc, separators=(",", ":")).encode()


def make_pattern(i: int, id: str | None = None) -> Pattern:
    return Pattern(
        id=id or pattern_id(i),
        type=f"type{i % TYPES}",
        name=f"recipe {i}",
        description="learned by worker",
        data=_payload(i),
        metadata={"worker": f"w{i % 16}"},
    )


class Zipf:
    """Ranks 0..n-1 with P(k) proportional to 1/(k+1)**s, sampled by inverse CDF.

    numpy's own zipf is unbounded (and needs s > 1); learning workers read a finite set
    where s near 1 is the usual skew, so the CDF is built once over exactly n ranks.
    """

    def __init__(self, n: int, s: float = 1.0, seed: int | None = None) -> None:
        weights = 1.0 / np.power(np.arange(1, n + 1, dtype=np.float64), s)
        self._cdf = np.cumsum(weights)
        self._cdf /= self._cdf[-1]
        self._rng = np.random.default_rng(seed)
        self.n = n
        # Drawing one number from numpy costs ~1 us of call overhead; draw in blocks.
        self._block: list[int] = []

    def sample(self, k: int) -> list[int]:
        ranks = np.searchsorted(self._cdf, self._rng.random(k), side="right")
        return [int(r) for r in np.minimum(ranks, self.n - 1)]

    def one(self) -> int:
        if not self._block:
            self._block = self.sample(4096)
        return self._block.pop()

    def ids(self, k: int) -> list[str]:
        return [pattern_id(r) for r in self.sample(k)]


def parse_mix(text: str) -> list[tuple[str, float]]:
    """``get=60,outcome=10`` -> [(op, weight)]; unknown ops and bad weights are errors."""
    mix: list[tuple[str, float]] = []
    for part in text.split(","):
        name, sep, weight = part.strip().partition("=")
        if not sep or name not in OPS:
            raise ValueError(f"mix: {part!r} is not OP=WEIGHT with OP one of {', '.join(OPS)}")
        w = float(weight)
        if w < 0:
            raise ValueError(f"mix: weight of {name} is negative")
        if w > 0:
            mix.append((name, w))
    if not mix:
        raise ValueError("mix: no operation has a positive weight")
    return mix


def load_patterns(
    target: str, start: int, stop: int, *, progress: bool = True, batch: int = 1000
) -> float:
    """Store patterns start..stop-1 (QUEUED, then Flush); return patterns/s."""
    t0 = time.perf_counter()
    with PatternStoreClient(target, timeout=120) as c:
        for lo in range(start, stop, batch):
            items = [make_pattern(i) for i in range(lo, min(stop, lo + batch))]
            while True:
                try:
                    c.store_patterns(items, durability=DURABILITY_QUEUED)
                    break
                except grpc.RpcError as exc:
                    # QUEUED replies outrun the writer: a full queue says wait, not fail.
                    if exc.code() != grpc.StatusCode.RESOURCE_EXHAUSTED:
                        raise
                    c.flush()
            done = min(stop, lo + batch) - start
            if progress and done % 50_000 < batch:
                rate = done / (time.perf_counter() - t0)
                print(
                    f"\rloaded {done:,}/{stop - start:,} ({rate:,.0f}/s)", end="", file=sys.stderr
                )
        c.flush()
    seconds = time.perf_counter() - t0
    if progress:
        print(file=sys.stderr)
    return (stop - start) / seconds if seconds > 0 else 0.0


@dataclass
class BenchConfig:
    target: str
    patterns: int = 100_000
    processes: int = 2
    concurrency: int = 16
    duration: float = 30.0
    warmup: float = 5.0
    mix: str = DEFAULT_MIX
    zipf_s: float = 1.0
    seed: int = 1
    progress: bool = True


@dataclass
class _WorkerResult:
    latencies_us: dict[str, bytes] = field(default_factory=dict)  # array('d') bytes per op
    errors: dict[str, dict[str, int]] = field(default_factory=dict)


def _operations(
    client: AsyncPatternStoreClient, zipf: Zipf, rng: random.Random, worker: int, tag: str
) -> dict[str, Callable[[], Awaitable[Any]]]:
    stored = 0

    async def get() -> Any:
        return await client.get_pattern(pattern_id(zipf.one()))

    async def get_batch() -> Any:
        return await client.get_patterns(zipf.ids(BATCH))

    async def query() -> Any:
        return await client.query_patterns(
            f"type{rng.randrange(TYPES)}", order_by="lower_bound", limit=10
        )

    async def outcome() -> Any:
        return await client.update_confidence(pattern_id(zipf.one()), rng.choice(OUTCOMES))

    async def outcome_stream() -> Any:
        updates = [
            pb.UpdateConfidenceRequest(id=pattern_id(r), outcome=rng.choice(OUTCOMES))
            for r in zipf.sample(STREAM)
        ]
        return await client.record_outcomes(updates)

    async def store() -> Any:
        nonlocal stored
        stored += 1
        # New ids per run and worker: a learning worker mostly adds patterns.
        pid = f"new-{tag}-{worker}-{stored}"
        return await client.store_pattern(make_pattern(zipf.n + stored, id=pid))

    return {
        "get": get,
        "get_batch": get_batch,
        "query": query,
        "outcome": outcome,
        "outcome_stream": outcome_stream,
        "store": store,
    }


async def _worker_async(
    cfg: BenchConfig, worker: int, counter: Any, start_at: float, tag: str
) -> _WorkerResult:
    mix = parse_mix(cfg.mix)
    names = [n for n, _ in mix]
    weights = [w for _, w in mix]
    zipf = Zipf(cfg.patterns, cfg.zipf_s, seed=cfg.seed * 1000 + worker)
    rng = random.Random(cfg.seed * 7919 + worker)
    measure_from = start_at + cfg.warmup
    stop_at = measure_from + cfg.duration
    lat = {n: array("d") for n in names}
    errors: dict[str, dict[str, int]] = {}
    async with AsyncPatternStoreClient(cfg.target, timeout=30) as client:
        ops = _operations(client, zipf, rng, worker, tag)

        async def loop() -> None:
            while True:
                name = rng.choices(names, weights)[0]
                t0 = time.perf_counter()
                if t0 >= stop_at:
                    return
                try:
                    await ops[name]()
                except grpc.aio.AioRpcError as exc:
                    per = errors.setdefault(name, {})
                    per[exc.code().name] = per.get(exc.code().name, 0) + 1
                    continue
                t1 = time.perf_counter()
                if t0 >= measure_from and t1 <= stop_at:
                    lat[name].append((t1 - t0) * 1e6)
                # One slot per worker, written only by it: no lock needed for a progress figure.
                counter[worker] += 1

        delay = start_at - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        await asyncio.gather(*(loop() for _ in range(cfg.concurrency)))
    return _WorkerResult({n: a.tobytes() for n, a in lat.items()}, errors)


def _worker(
    cfg: BenchConfig, worker: int, counter: Any, start_at: float, tag: str, out: Any
) -> None:
    try:
        out.put((worker, asdict(asyncio.run(_worker_async(cfg, worker, counter, start_at, tag)))))
    except BaseException as exc:
        out.put((worker, {"failed": repr(exc)}))
        raise


def _percentiles(values: np.ndarray[Any, np.dtype[np.float64]]) -> dict[str, float]:
    if values.size == 0:
        return {"p50_ms": 0.0, "p95_ms": 0.0, "p99_ms": 0.0, "p999_ms": 0.0}
    q = np.percentile(values, [50, 95, 99, 99.9]) / 1000.0
    return {
        "p50_ms": round(float(q[0]), 3),
        "p95_ms": round(float(q[1]), 3),
        "p99_ms": round(float(q[2]), 3),
        "p999_ms": round(float(q[3]), 3),
    }


def run(cfg: BenchConfig) -> dict[str, Any]:
    """Run the mix; return {"config", "ops": {op: figures}, "total": figures}."""
    parse_mix(cfg.mix)  # fail here, not in every worker
    # spawn, not fork: a forked child inherits gRPC's threads in an unusable state.
    ctx = mp.get_context("spawn")
    counter = ctx.Array("q", cfg.processes, lock=False)
    out = ctx.Queue()
    tag = f"{os.getpid()}-{time.time_ns() % 10**9}"
    # Start every worker at the same instant, after the slowest one has imported.
    start_at = time.perf_counter() + 2.0 + 0.5 * cfg.processes
    procs = [
        ctx.Process(target=_worker, args=(cfg, w, counter, start_at, tag, out), daemon=True)
        for w in range(cfg.processes)
    ]
    for p in procs:
        p.start()
    results: dict[int, dict[str, Any]] = {}
    last_count, last_t = 0, time.perf_counter()
    while len(results) < cfg.processes:
        try:
            worker, res = out.get(timeout=1.0)
            results[worker] = res
        except Exception:
            if all(not p.is_alive() for p in procs) and out.empty():
                break
        now = time.perf_counter()
        if cfg.progress and now > start_at and now - last_t >= 1.0:
            count = sum(counter)
            phase = "warm-up" if now < start_at + cfg.warmup else "measuring"
            elapsed = now - start_at
            print(
                f"\r[{elapsed:5.1f}/{cfg.warmup + cfg.duration:.0f} s] {phase:<9} "
                f"{(count - last_count) / (now - last_t):>10,.0f} ops/s  total {count:,}",
                end="",
                file=sys.stderr,
                flush=True,
            )
            last_count, last_t = count, now
    for p in procs:
        p.join(10)
    if cfg.progress:
        print(file=sys.stderr)
    failed = [r["failed"] for r in results.values() if "failed" in r]
    if failed or len(results) < cfg.processes:
        raise RuntimeError(f"load worker failed: {failed or 'exited without a result'}")

    ops: dict[str, Any] = {}
    all_lat: list[np.ndarray[Any, np.dtype[np.float64]]] = []
    errors_total = 0
    for name, _ in parse_mix(cfg.mix):
        parts = [
            np.frombuffer(r["latencies_us"].get(name, b""), dtype=np.float64)
            for r in results.values()
        ]
        values = np.concatenate(parts) if parts else np.empty(0)
        errs: dict[str, int] = {}
        for r in results.values():
            for code, k in r["errors"].get(name, {}).items():
                errs[code] = errs.get(code, 0) + k
        errors_total += sum(errs.values())
        all_lat.append(values)
        ops[name] = {
            "count": int(values.size),
            "throughput": round(values.size / cfg.duration, 1),
            **_percentiles(values),
            "errors": errs,
        }
    everything = np.concatenate(all_lat) if all_lat else np.empty(0)
    total = {
        "count": int(everything.size),
        "throughput": round(everything.size / cfg.duration, 1),
        **_percentiles(everything),
        "errors": errors_total,
    }
    return {"config": asdict(cfg), "ops": ops, "total": total}


def report_lines(report: dict[str, Any]) -> list[str]:
    """The per-operation table, one string per line."""
    lines = [
        f"{'op':<15} {'ops/s':>10} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'p999 ms':>8}  errors"
    ]
    rows = [*report["ops"].items(), ("total", report["total"])]
    for name, f in rows:
        errs = f["errors"] if isinstance(f["errors"], int) else sum(f["errors"].values())
        lines.append(
            f"{name:<15} {f['throughput']:>10,.0f} {f['p50_ms']:>8.2f} {f['p95_ms']:>8.2f} "
            f"{f['p99_ms']:>8.2f} {f['p999_ms']:>8.2f}  {errs}"
        )
    return lines


def print_report(report: dict[str, Any]) -> None:
    print("\n".join(report_lines(report)))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--target", default=os.environ.get("PATTERNSTORE_TARGET", "127.0.0.1:50051"))
    p.add_argument("--patterns", type=int, default=100_000, help="ids the Zipf draws cover")
    p.add_argument(
        "--load", action="store_true", help="first store the --patterns patterns (QUEUED + Flush)"
    )
    p.add_argument("--processes", type=int, default=2)
    p.add_argument("--concurrency", type=int, default=16, help="calls in flight per process")
    p.add_argument("--duration", type=float, default=30.0, help="measured seconds")
    p.add_argument("--warmup", type=float, default=5.0, help="seconds before measuring")
    p.add_argument("--mix", default=DEFAULT_MIX, help=f"OP=WEIGHT,... over {', '.join(OPS)}")
    p.add_argument("--zipf-s", type=float, default=1.0, help="Zipf exponent of the id draws")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--out", help="write the figures as JSON here")
    args = p.parse_args(argv)
    if args.load:
        rate = load_patterns(args.target, 0, args.patterns)
        print(f"loaded {args.patterns:,} patterns ({rate:,.0f}/s)", file=sys.stderr)
    cfg = BenchConfig(
        target=args.target,
        patterns=args.patterns,
        processes=args.processes,
        concurrency=args.concurrency,
        duration=args.duration,
        warmup=args.warmup,
        mix=args.mix,
        zipf_s=args.zipf_s,
        seed=args.seed,
        progress=True,
    )
    report = run(cfg)
    print_report(report)
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    return 0 if report["total"]["errors"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
