"""Replay a cache access trace through the L1 policies and print hit ratios beside OPT.

    python loadtest/cache_sim.py TRACE_FILE --sizes 250,1000,2000 \
        --policies opt,lru,lfu,adaptive [--json] [--limit N]

The format comes from the file name (see ../shared/traces/README.md): ``.lirs.gz`` is
one integer key a line (``*`` and blank lines skipped), ``.arc.gz`` is lines
``start count ignore reqno`` standing for keys ``start .. start+count-1``, ``.bin.gz``
is big-endian signed 64-bit keys back to back. An access is a hit when the key is
cached before it; on a miss the key is inserted. ``opt`` is Belady's offline optimum
(evict the key used farthest in the future, or bypass the new key when it is that
key). The other policies are the very classes the server uses.

Replays are reproducible: the sketch hashes keys with ``hash(str)``, so the script
re-executes itself with ``PYTHONHASHSEED=0`` unless that is already set.
"""

from __future__ import annotations

import argparse
import gzip
import heapq
import json
import os
import sys
import time
import types
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

try:
    from patternstore_server.cache import POLICIES, Cache, make_cache
except ImportError:
    # Run from a checkout, or the server package itself does not import (the cache
    # package needs nothing from it): load the cache package on its own.
    for _name in [m for m in sys.modules if m.startswith("patternstore_server")]:
        del sys.modules[_name]
    _PACKAGE = types.ModuleType("patternstore_server")
    _PACKAGE.__path__ = [
        str(Path(__file__).resolve().parent.parent / "server" / "patternstore_server")
    ]
    sys.modules["patternstore_server"] = _PACKAGE
    from patternstore_server.cache import POLICIES, Cache, make_cache

_VALUE = b""  # sizes are irrelevant here: only the entry bound is exercised


def _intern(ints: Sequence[int] | np.ndarray) -> list[str]:
    """Keys as ``str`` (what the cache stores), one shared object per distinct key."""
    arr = np.asarray(ints, dtype=np.int64)
    uniq, inverse = np.unique(arr, return_inverse=True)
    names = [str(k) for k in uniq.tolist()]
    return [names[i] for i in inverse.tolist()]


def _read_lirs(path: Path) -> list[str]:
    keys: list[int] = []
    with gzip.open(path, "rt") as f:
        for line in f:
            line = line.strip()
            if line and not line.startswith("*"):
                keys.append(int(line))
    return _intern(keys)


def _read_arc(path: Path) -> list[str]:
    keys: list[int] = []
    with gzip.open(path, "rt") as f:
        for line in f:
            parts = line.split()
            if len(parts) < 2:
                continue
            start, count = int(parts[0]), int(parts[1])
            keys.extend(range(start, start + count))
    return _intern(keys)


def _read_bin(path: Path) -> list[str]:
    with gzip.open(path, "rb") as f:
        raw = f.read()
    usable = len(raw) - len(raw) % 8
    return _intern(np.frombuffer(raw[:usable], dtype=">i8"))


_READERS: dict[str, Callable[[Path], list[str]]] = {
    ".lirs.gz": _read_lirs,
    ".arc.gz": _read_arc,
    ".bin.gz": _read_bin,
}


def read_trace(path: Path) -> list[str]:
    """The trace's keys in access order."""
    for suffix, reader in _READERS.items():
        if path.name.endswith(suffix):
            return reader(path)
    known = ", ".join(_READERS)
    raise SystemExit(f"{path}: unknown trace format (suffixes: {known})")


def _trace_name(path: Path) -> str:
    for suffix in _READERS:
        if path.name.endswith(suffix):
            return path.name[: -len(suffix)]
    return path.name


def replay(cache: Cache, keys: Sequence[str]) -> int:
    """Hits when ``keys`` are read through ``cache``, inserting each miss."""
    get = cache.get
    misses = 0
    for key in keys:
        if get(key) is None:
            misses += 1
            cache[key] = _VALUE
    return len(keys) - misses


def _next_uses(keys: Sequence[str]) -> tuple[list[int], list[int]]:
    """Dense ids and, per access, the index of the same key's next access.

    An access with no next one gets ``n + i``: beyond every real index, and unique so
    a heap entry can be checked against the cache by value.
    """
    index: dict[str, int] = {}
    ids = np.fromiter((index.setdefault(k, len(index)) for k in keys), np.int64, len(keys))
    n = len(ids)
    order = np.argsort(ids, kind="stable")
    sorted_ids = ids[order]
    nxt = np.arange(n, 2 * n, dtype=np.int64)
    same = sorted_ids[1:] == sorted_ids[:-1]
    nxt[order[:-1][same]] = order[1:][same]
    return ids.tolist(), nxt.tolist()


def replay_opt(ids: Sequence[int], next_use: Sequence[int], size: int) -> int:
    """Belady's OPT hits: on a miss with the cache full, drop whichever of the cached
    keys and the new one is next used farthest in the future."""
    cached: dict[int, int] = {}  # id -> index of its next access
    heap: list[tuple[int, int]] = []  # (-next access, id); stale entries skipped
    hits = 0
    push = heapq.heappush
    pop = heapq.heappop
    for key, nxt in zip(ids, next_use, strict=True):
        if key in cached:
            hits += 1
        elif len(cached) >= size:
            while True:
                far, victim = heap[0]
                if cached.get(victim) == -far:
                    break
                pop(heap)
            if -far < nxt:
                continue  # the new key is needed last: bypass it
            pop(heap)
            del cached[victim]
        cached[key] = nxt
        push(heap, (-nxt, key))
        if len(heap) > 4 * size + 64:
            # Drop stale entries so the heap stays proportional to the cache.
            heap = [(-n, k) for k, n in cached.items()]
            heapq.heapify(heap)
    return hits


def simulate(
    keys: Sequence[str], sizes: Sequence[int], policies: Sequence[str]
) -> list[dict[str, object]]:
    results: list[dict[str, object]] = []
    opt_input: tuple[list[int], list[int]] | None = None
    n = len(keys)
    for size in sizes:
        for policy in policies:
            started = time.perf_counter()
            if policy == "opt":
                if opt_input is None:
                    opt_input = _next_uses(keys)
                hits = replay_opt(*opt_input, size)
            else:
                hits = replay(make_cache(policy, size, None), keys)
            results.append(
                {
                    "policy": policy,
                    "size": size,
                    "hit_ratio": round(100.0 * hits / n, 2) if n else 0.0,
                    "seconds": round(time.perf_counter() - started, 2),
                }
            )
    return results


def _print_table(
    name: str,
    n: int,
    sizes: Sequence[int],
    policies: Sequence[str],
    results: list[dict[str, object]],
) -> None:
    by_cell = {(r["policy"], r["size"]): r for r in results}
    print(f"{name}: {n:,} accesses, hit ratio (%)")
    print(f"{'size':>8} " + " ".join(f"{p:>9}" for p in policies) + "   seconds")
    for size in sizes:
        cells = [by_cell[(p, size)] for p in policies]
        seconds = sum(float(str(c["seconds"])) for c in cells)
        print(
            f"{size:>8} "
            + " ".join(f"{float(str(c['hit_ratio'])):>9.2f}" for c in cells)
            + f"   {seconds:7.1f}"
        )


def main(argv: Sequence[str] | None = None) -> int:
    if os.environ.get("PYTHONHASHSEED") != "0":
        os.environ["PYTHONHASHSEED"] = "0"
        os.execv(sys.executable, [sys.executable, *sys.argv])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("trace", type=Path, help="a .lirs.gz, .arc.gz or .bin.gz trace")
    parser.add_argument("--sizes", default="250,1000,2000", help="cache sizes in entries")
    parser.add_argument(
        "--policies",
        default="opt,lru,lfu,adaptive",
        help=f"comma-separated, from opt,{','.join(POLICIES)}",
    )
    parser.add_argument("--limit", type=int, default=None, help="replay the first N accesses")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)

    sizes = [int(s) for s in args.sizes.split(",") if s]
    policies = [p for p in args.policies.split(",") if p]
    for policy in policies:
        if policy != "opt" and policy not in POLICIES:
            parser.error(f"unknown policy {policy!r}")
    keys = read_trace(args.trace)
    if args.limit is not None:
        keys = keys[: args.limit]
    results = simulate(keys, sizes, policies)
    name = _trace_name(args.trace)
    if args.json:
        out = {
            "trace": name,
            "accesses": len(keys),
            "results": [
                {"policy": r["policy"], "size": r["size"], "hit_ratio": r["hit_ratio"]}
                for r in results
            ],
        }
        print(json.dumps(out))
    else:
        _print_table(name, len(keys), sizes, policies, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
