"""Print what a hit and a miss cost in each L1 policy, beside cachetools.LRUCache.

    python loadtest/cache_hitcost.py [--entries 10000] [--ops 200000] [--repeat 5]

* hit: ``cache[key]`` on a full cache where every key is present, amortised over the
  run, so the batched bookkeeping of buffered hits is included; keys drawn uniformly
  and from a Zipf(0.9) distribution.
* miss+admission: ``cache.get(key)`` returning None then ``cache[key] = value`` for a
  key never seen, on a full cache (so every insert evicts or rejects one entry).
* mixed: the same ``get``-then-fill loop, per operation, with 90% of the keys cached
  (drawn uniformly) and 10% never seen: hits are then applied at the next write, so
  this is where buffered bookkeeping shows (a run of hits alone drops most of it).

Figures are the best of ``--repeat`` runs, in one process, so they compare like for
like; they are a benchmark, not a test: nothing fails on a time.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
import types
from collections.abc import Callable, MutableMapping, Sequence
from functools import partial
from pathlib import Path

import cachetools

try:
    from patternstore_server.cache import POLICIES, make_cache
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
    from patternstore_server.cache import POLICIES, make_cache

_VALUE = b"x" * 100


def _zipf_keys(universe: int, count: int, skew: float, rng: random.Random) -> list[str]:
    weights = [1.0 / (rank**skew) for rank in range(1, universe + 1)]
    ranks = rng.choices(range(universe), weights=weights, k=count)
    return [f"k{r}" for r in ranks]


def _best(run: Callable[[], float], repeat: int) -> float:
    return min(run() for _ in range(repeat))


def _time_hits(cache: MutableMapping[str, bytes], keys: Sequence[str]) -> float:
    started = time.perf_counter()
    for key in keys:
        cache[key]
    return (time.perf_counter() - started) / len(keys)


def _time_misses(
    make: Callable[[], MutableMapping[str, bytes]], warm: Sequence[str], fresh: Sequence[str]
) -> float:
    cache = make()
    for key in warm:
        cache[key] = _VALUE
    get = cache.get
    started = time.perf_counter()
    for key in fresh:
        if get(key) is None:
            cache[key] = _VALUE
    return (time.perf_counter() - started) / len(fresh)


def _mixed_keys(universe: Sequence[str], count: int, rng: random.Random) -> list[str]:
    keys: list[str] = []
    for i in range(count):
        keys.append(rng.choice(universe) if rng.random() < 0.9 else f"mixed{i}")
    return keys


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="L1 hit and miss cost")
    parser.add_argument("--entries", type=int, default=10_000)
    parser.add_argument("--ops", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)

    rng = random.Random(42)
    entries: int = args.entries
    universe = [f"k{i}" for i in range(entries)]
    uniform = [rng.choice(universe) for _ in range(args.ops)]
    zipf = _zipf_keys(entries, args.ops, 0.9, rng)
    fresh = [f"new{i}" for i in range(args.ops)]
    mixed = _mixed_keys(universe, args.ops, rng)

    makers: dict[str, Callable[[], MutableMapping[str, bytes]]] = {
        "cachetools.LRUCache": partial(cachetools.LRUCache, entries),
    }
    for policy in POLICIES:
        makers[policy] = partial(make_cache, policy, entries, None)

    print(f"{entries:,} entries, {args.ops:,} operations, best of {args.repeat}")
    print(
        f"{'policy':<22}{'hit ns (uniform)':>18}{'hit ns (zipf)':>15}{'miss+admit us':>16}"
        f"{'mixed ns/op':>13}"
    )
    for name, make in makers.items():
        cache = make()
        for key in universe:
            cache[key] = _VALUE
        hit_uniform = _best(partial(_time_hits, cache, uniform), args.repeat)
        hit_zipf = _best(partial(_time_hits, cache, zipf), args.repeat)
        miss = _best(partial(_time_misses, make, universe, fresh), args.repeat)
        # The same get-then-fill loop as the misses, over mostly cached keys.
        mix = _best(partial(_time_misses, make, universe, mixed), args.repeat)
        print(
            f"{name:<22}{hit_uniform * 1e9:>18.0f}{hit_zipf * 1e9:>15.0f}{miss * 1e6:>16.2f}"
            f"{mix * 1e9:>13.0f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
