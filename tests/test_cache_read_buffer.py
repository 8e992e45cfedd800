"""The adaptive policy's read buffer and miss fast path: cheap, and deciding as the
general path does."""

from __future__ import annotations

import random

from patternstore_server.cache import Cache, FrequencySketch, TinyLFUCache, make_cache


def test_hits_are_counted_through_a_run_longer_than_the_buffer() -> None:
    cache = make_cache("adaptive", 50, None)
    for i in range(50):
        cache[f"k{i}"] = b"v"
    for i in range(1000):  # no write between: the buffer drops its older records
        assert cache[f"k{i % 50}"] == b"v"
    assert cache.hits == 1000
    cache["new"] = b"v"
    assert cache.hits == 1000 and len(cache) == 50


def test_a_long_run_of_hits_still_promotes_probation_keys() -> None:
    cache = TinyLFUCache(100, None)
    for i in range(100):
        cache[f"k{i}"] = b"v"
    hot = [f"k{i}" for i in range(20)]
    warm = [f"k{i}" for i in range(20, 40)]
    for _ in range(5):
        for key in hot:
            cache[key]
    for _ in range(10):  # pushes the hot keys' records out of the read buffer
        for key in warm:
            cache[key]
    # Keys seen twice (the second pass) outrank a probation key seen once: the hot
    # keys survive only if their dropped hits still promoted them.
    for _ in range(2):
        for i in range(60):
            if cache.get(f"scan{i}") is None:
                cache[f"scan{i}"] = b"v"
    assert all(key in cache for key in hot + warm)


def test_marks_only_name_cached_keys() -> None:
    cache = TinyLFUCache(30, 600)
    rng = random.Random(3)
    for step in range(20_000):
        key = f"k{rng.randrange(90)}"
        if rng.random() < 0.85:
            cache.get(key)
        elif rng.random() < 0.9:
            cache[key] = b"x" * rng.randrange(1, 40)
        elif key in cache:
            del cache[key]
        if step % 101 == 0:
            assert cache._marked <= set(cache)


def _contents_after(cache: TinyLFUCache, trace: list[str]) -> list[str]:
    for key in trace:
        if cache.get(key) is None:
            cache[key] = b"v"
    return sorted(cache)


def test_fast_miss_path_decides_as_the_general_path() -> None:
    class General(TinyLFUCache):
        # The base write path only: _on_insert, _shrink, _victim, _admit.
        __setitem__ = Cache.__setitem__

    rng = random.Random(5)
    weights = [1.0 / rank for rank in range(1, 401)]
    trace = [f"p{r}" for r in rng.choices(range(400), weights=weights, k=20_000)]
    trace += [f"scan{i}" for i in range(300)] + trace[:5000]
    fast = TinyLFUCache(100, None)
    general = General(100, None)
    assert _contents_after(fast, trace) == _contents_after(general, trace)
    assert (fast.hits, fast.misses, fast.evictions) == (
        general.hits,
        general.misses,
        general.evictions,
    )


def test_batched_sketch_increments_match_one_by_one() -> None:
    rng = random.Random(11)
    keys = [f"k{rng.randrange(300)}" for _ in range(5000)]
    batched = FrequencySketch(1000)
    single = FrequencySketch(1000)
    for start in range(0, len(keys), 100):
        batched.increment_many(keys[start : start + 100])
    for key in keys:
        single.increment(key)
    # Equal but for the rare counter two keys of one batch share (see increment_many).
    differ = [key for key in set(keys) if batched.frequency(key) != single.frequency(key)]
    assert len(differ) <= len(set(keys)) // 20
