"""One contract, every L1 policy: what any policy must do, whatever it evicts."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule
from patternstore_server.cache import POLICIES, Cache, LockedCache, SizeOf, make_cache

POLICY_NAMES = sorted(POLICIES)
MakeCache = Callable[..., Cache]


@pytest.fixture(params=POLICY_NAMES)
def policy(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def _length(value: bytes) -> int:
    # Sizes as len gives them, through the path any custom getsizeof takes (stored
    # per entry); plain len has its sizes read off the values instead.
    return len(value)


@pytest.fixture(params=["len", "stored"])
def sizing(request: pytest.FixtureRequest) -> SizeOf:
    return len if request.param == "len" else _length


@pytest.fixture
def make(policy: str, sizing: SizeOf) -> MakeCache:
    def build(
        max_entries: int = 100,
        max_bytes: int | None = None,
        on_evict: Callable[[str, bytes], None] | None = None,
    ) -> Cache:
        return make_cache(policy, max_entries, max_bytes, sizing, on_evict)

    return build


def _assert_bounded(cache: Cache) -> None:
    assert len(cache) <= cache.maxsize
    assert cache.currsize <= cache.max_bytes
    assert cache.currsize == sum(len(cache[k]) for k in list(cache))


def test_get_set_delete_len(make: MakeCache) -> None:
    cache = make()
    assert cache.get("a") is None
    assert cache.get("a", b"d") == b"d"
    cache["a"] = b"one"
    cache["b"] = b"two!"
    assert cache["a"] == b"one"
    assert cache.get("b") == b"two!"
    assert "a" in cache
    assert len(cache) == 2
    assert set(cache) == {"a", "b"}
    del cache["a"]
    assert "a" not in cache
    with pytest.raises(KeyError):
        cache["a"]
    with pytest.raises(KeyError):
        del cache["a"]
    assert len(cache) == 1
    assert cache.currsize == 4


def test_counters(make: MakeCache) -> None:
    cache = make()
    cache["a"] = b"x"
    cache.get("a")
    cache["a"]
    cache.get("zz")
    with pytest.raises(KeyError):
        cache["zz"]
    assert (cache.hits, cache.misses, cache.evictions) == (2, 2, 0)


def test_get_many_is_get_for_each_key(make: MakeCache) -> None:
    """helper-26: LRU's hits through get_many (GetPatterns) were neither counted nor
    made the keys recent: a key just read three times was the next one evicted."""
    c = make(3)
    for key in ("a", "b", "c"):
        c[key] = key.encode()
    for _ in range(3):
        assert c.get_many(["a", "zz"]) == [b"a", None]
    assert (c.hits, c.misses) == (3, 3)
    c["d"] = b"d"  # one must go; every policy keeps the key read most and last
    assert "a" in c


def test_size_accounting_in_bytes(make: MakeCache) -> None:
    cache = make(max_bytes=1000)
    cache["a"] = b"x" * 10
    cache["b"] = b"y" * 20
    assert cache.currsize == 30
    cache["a"] = b"z" * 50  # overwrite replaces the size
    assert cache.currsize == 70
    assert cache["a"] == b"z" * 50
    del cache["b"]
    assert cache.currsize == 50
    cache.clear()
    assert (len(cache), cache.currsize) == (0, 0)


def test_value_larger_than_max_bytes_is_refused(make: MakeCache) -> None:
    cache = make(max_bytes=10)
    with pytest.raises(ValueError):
        cache["big"] = b"x" * 11
    assert "big" not in cache
    assert cache.currsize == 0


@pytest.mark.parametrize("max_bytes", [None, 300])
def test_bounds_never_exceeded_and_hook_sees_every_eviction(
    make: MakeCache, max_bytes: int | None
) -> None:
    evicted: list[tuple[str, bytes]] = []
    cache = make(max_entries=20, max_bytes=max_bytes, on_evict=lambda k, v: evicted.append((k, v)))
    rng = random.Random(7)
    written: dict[str, bytes] = {}
    for i in range(2000):
        key = f"k{rng.randrange(60)}"
        if rng.random() < 0.6:
            cache.get(key)
        else:
            value = bytes([i % 251]) * rng.randrange(1, 40)
            cache[key] = value
            written[key] = value
        if i % 97 == 0:
            _assert_bounded(cache)
    _assert_bounded(cache)
    assert cache.evictions == len(evicted) > 0
    for key in list(cache):
        assert cache.get(key) == written[key]


def test_hook_not_called_for_delete_overwrite_or_clear(make: MakeCache) -> None:
    evicted: list[str] = []
    cache = make(max_entries=5, on_evict=lambda k, v: evicted.append(k))
    cache["a"] = b"1"
    cache["a"] = b"2"
    del cache["a"]
    cache["b"] = b"3"
    cache.clear()
    assert evicted == []


def test_popitem_evicts_per_policy_without_hook(make: MakeCache) -> None:
    evicted: list[str] = []
    cache = make(max_entries=5, on_evict=lambda k, v: evicted.append(k))
    for key in "abc":
        cache[key] = key.encode()
    # Every policy's victim here: the oldest, with no hits (LRU's least recent, LFU's
    # least used with ties by recency, W-TinyLFU's probation head).
    assert cache.popitem() == ("a", b"a") and "a" not in cache
    cache["a"] = b"a"
    cache["a"]
    cache["b"]
    assert cache.popitem() == ("c", b"c")  # the one entry not read since
    assert evicted == []
    cache.clear()
    with pytest.raises(KeyError):
        cache.popitem()


def test_factory_rejects_unknown_policy() -> None:
    with pytest.raises(ValueError, match="unknown cache policy"):
        make_cache("mru", 10, None)


class _ModelComparison(RuleBasedStateMachine):
    """Whatever the cache holds is the model's latest value; bounds always hold."""

    policy = "adaptive"
    sizing: SizeOf = len

    def __init__(self) -> None:
        super().__init__()
        self.cache = make_cache(self.policy, 8, 120, type(self).sizing)
        self.model: dict[str, bytes] = {}

    keys = st.sampled_from([f"k{i}" for i in range(16)])

    @rule(key=keys, value=st.binary(max_size=40))
    def put(self, key: str, value: bytes) -> None:
        self.cache[key] = value
        self.model[key] = value

    @rule(key=keys)
    def get(self, key: str) -> None:
        value = self.cache.get(key)
        assert value is None or value == self.model[key]

    @rule(key=keys)
    def delete(self, key: str) -> None:
        if key in self.cache:
            del self.cache[key]
        self.model.pop(key, None)

    @invariant()
    def matches_model_and_bounds(self) -> None:
        for key in list(self.cache):
            assert self.cache[key] == self.model[key]
        _assert_bounded(self.cache)


class _StoredSizesModelComparison(_ModelComparison):
    sizing = _length


class _LRUModelComparison(_ModelComparison):
    policy = "lru"


class _LFUModelComparison(_ModelComparison):
    policy = "lfu"


_STATEFUL_SETTINGS = settings(
    max_examples=40,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestAdaptiveMatchesModel = _ModelComparison.TestCase
TestAdaptiveMatchesModel.settings = _STATEFUL_SETTINGS
TestAdaptiveStoredSizesMatchesModel = _StoredSizesModelComparison.TestCase
TestAdaptiveStoredSizesMatchesModel.settings = _STATEFUL_SETTINGS
TestLRUMatchesModel = _LRUModelComparison.TestCase
TestLRUMatchesModel.settings = _STATEFUL_SETTINGS
TestLFUMatchesModel = _LFUModelComparison.TestCase
TestLFUMatchesModel.settings = _STATEFUL_SETTINGS


def test_locked_cache_under_concurrent_access(policy: str) -> None:
    locked = LockedCache(make_cache(policy, 50, 2000))
    errors: list[BaseException] = []

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        try:
            for _ in range(3000):
                key = f"k{rng.randrange(120)}"
                op = rng.random()
                if op < 0.6:
                    value = locked.get(key)
                    assert value is None or value == key.encode() * 3
                elif op < 0.9:
                    locked.put(key, key.encode() * 3)
                else:
                    locked.delete(key)
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=worker, args=(seed,)) for seed in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    stats = locked.stats()
    assert stats["entries"] <= 50 and stats["bytes"] <= 2000
    _assert_bounded(locked.cache)


def test_get_or_load_calls_loader_once_for_concurrent_misses(policy: str) -> None:
    locked = LockedCache(make_cache(policy, 10, None))
    calls: list[str] = []
    release = threading.Event()

    def loader(key: str) -> bytes:
        calls.append(key)
        release.wait(5)
        return b"loaded:" + key.encode()

    results: list[bytes | None] = []
    threads = [
        threading.Thread(target=lambda: results.append(locked.get_or_load("p1", loader)))
        for _ in range(10)
    ]
    for thread in threads:
        thread.start()
    # Every thread has missed (so it leads the load or waits on it) before the load ends.
    deadline = time.monotonic() + 10
    while locked.stats()["misses"] < 10:
        assert time.monotonic() < deadline, locked.stats()
        time.sleep(0.001)
    release.set()
    for thread in threads:
        thread.join()
    assert calls == ["p1"]
    assert results == [b"loaded:p1"] * 10
    assert locked.get("p1") == b"loaded:p1"


def test_get_or_load_shares_the_loader_error_and_caches_nothing(policy: str) -> None:
    locked = LockedCache(make_cache(policy, 10, None))

    def failing(key: str) -> bytes:
        raise OSError("disk")

    with pytest.raises(OSError):
        locked.get_or_load("p1", failing)
    assert "p1" not in locked
    assert locked.get_or_load("p1", lambda key: b"ok") == b"ok"


def test_write_during_load_is_not_overwritten_by_the_loaded_value(policy: str) -> None:
    locked = LockedCache(make_cache(policy, 10, None))

    def loader(key: str) -> bytes:
        locked.put(key, b"new")  # a write lands while the old value is in flight
        return b"old"

    assert locked.get_or_load("p1", loader) == b"old"
    assert locked.get("p1") == b"new"


def _zipf_trace(rng: random.Random, universe: int, length: int) -> list[str]:
    weights = [1.0 / rank for rank in range(1, universe + 1)]
    ranks = rng.choices(range(universe), weights=weights, k=length)
    # Each phase draws from a fresh permutation, so the hot set moves (as it does when
    # a new task type arrives), and a scan over cold keys runs between phases.
    trace: list[str] = []
    for phase in range(3):
        perm = list(range(universe))
        rng.shuffle(perm)
        chunk = ranks[phase * length // 3 : (phase + 1) * length // 3]
        trace.extend(f"p{perm[r]}" for r in chunk)
        trace.extend(f"scan{phase}-{i}" for i in range(universe // 10))
    return trace


def _hit_ratio(policy: str, trace: list[str], size: int) -> float:
    cache = make_cache(policy, size, None)
    for key in trace:
        if cache.get(key) is None:
            cache[key] = b""
    return cache.hits / len(trace)


def test_zipf_replay_adaptive_beats_lru() -> None:
    trace = _zipf_trace(random.Random(1), universe=5000, length=60_000)
    adaptive = _hit_ratio("adaptive", trace, 500)
    lru = _hit_ratio("lru", trace, 500)
    # LRU gets 0.627 on this trace; the adaptive policy 0.657-0.662, by the per-process
    # hash seed its sketch hashes with (12 seeds; one CI run saw 0.657, 0.0297 ahead).
    assert adaptive > lru + 0.02, (adaptive, lru)
