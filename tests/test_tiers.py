"""L2 (compressed, TTL), L3 (query replies) and their coherence with writes, end to end."""

from __future__ import annotations

import json
import os
import time
import tracemalloc
from collections.abc import Callable
from typing import Any

import pytest
from patternstore import (
    CONSISTENCY_STRONG,
    DURABILITY_QUEUED,
    Pattern,
    PatternStoreClient,
    update_request,
)
from patternstore_server.cache.l2 import ENTRY_OVERHEAD, CompressedCache
from patternstore_server.cache.l3 import QueryCache

from .conftest import FakeClock, RunningServer


class Timer:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_l2_round_trip_compresses_and_expires() -> None:
    t = Timer()
    l2 = CompressedCache(max_bytes=10_000, ttl_s=5, timer=t)
    value = b'{"steps": ["grep", "edit", "test"]}' * 20
    l2.put("a", value)
    assert l2.get("a") == value
    assert l2.currsize - ENTRY_OVERHEAD - len("a") < len(value) / 4  # the value compressed
    l2.put("noise", bytes(range(256)))  # does not shrink: kept raw with a format byte
    assert l2.get("noise") == bytes(range(256))
    t.now += 5.01
    assert l2.get("a") is None and len(l2) == 1  # expired on read; noise purged later
    assert l2.purge_expired() == 1 and len(l2) == 0 and l2.currsize == 0


def test_l2_byte_bound_evicts_oldest_first() -> None:
    l2 = CompressedCache(max_bytes=1500, ttl_s=60, timer=Timer())
    for i in range(10):
        # ~200 B each after compression, ~520 B with the entry's bookkeeping
        l2.put(f"k{i}", bytes([i]) * 7 + bytes(range(200)))
        assert l2.currsize <= 1500
    assert "k9" in l2 and "k8" in l2 and "k0" not in l2
    assert l2.evictions > 0
    # A value too big for the bound is not kept, and does not leave an older one behind.
    l2.put("k9", os.urandom(1500))
    assert "k9" not in l2 and l2.get("k9") is None and "k8" in l2


@pytest.mark.parametrize("id_prefix", ["pattern-", "模式-识别-", "🧪🧪-"])
def test_l2_bound_is_the_memory_it_occupies(id_prefix: str) -> None:
    """l2_max_bytes bounds what the entries occupy, not only their compressed values.

    Small patterns compress to ~100 bytes, less than an entry's bookkeeping: counting the
    values alone let L2 occupy several times its bound. Ids outside ASCII take 2-4 bytes
    a character (counted as one, emoji ids took 1.36x the bound: helper-26).
    """
    budget = 2 * 1024 * 1024
    l2 = CompressedCache(max_bytes=budget, ttl_s=60, timer=Timer())
    values = [
        json.dumps({"steps": [f"step {i} {j}" for j in range(8)], "seed": i}).encode()
        for i in range(1000)
    ]
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(40_000):
            # Keys made here and handed over, as L1's evictions hand theirs.
            l2.put(f"{id_prefix * 20}{i:07d}", values[i % 1000])
        occupied = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert l2.evictions > 0 and l2.currsize <= budget
    assert occupied <= 1.1 * budget, f"{occupied:,} bytes for a {budget:,}-byte bound"


def test_l3_staleness_invalidation_and_epochs() -> None:
    t = Timer()
    l3 = QueryCache(max_entries=3, max_staleness_s=1.0, timer=t)
    e = l3.epoch("plan")
    assert l3.put(("plan", 1), "plan", b"r1", e)
    assert l3.put(("", 1), "", b"any", l3.epoch(""))
    assert l3.put(("tool", 1), "tool", b"t", l3.epoch("tool"))
    assert l3.get(("plan", 1)) == b"r1"
    l3.invalidate(["plan"])  # a store of a plan: plan and any-type replies go
    assert l3.get(("plan", 1)) is None and l3.get(("", 1)) is None
    assert l3.get(("tool", 1)) == b"t"
    # A reply computed across an invalidation of its type is not cached.
    assert not l3.put(("plan", 2), "plan", b"stale", e)
    t.now += 1.01
    assert l3.get(("tool", 1)) is None  # older than max_staleness


def test_l3_ages_a_reply_from_when_its_query_began() -> None:
    """A query that read its snapshot, then ran for 0.6 s: its reply is 0.6 s old when
    cached, and stale 0.4 s later (it was served for a further full second before)."""
    t = Timer()
    l3 = QueryCache(max_entries=3, max_staleness_s=1.0, timer=t)
    e, started = l3.epoch("plan"), l3.now()
    t.now += 0.6  # the query runs
    assert l3.put(("plan", 1), "plan", b"r", e, computed_at=started)
    t.now += 0.3
    assert l3.get(("plan", 1)) == b"r"
    t.now += 0.2
    assert l3.get(("plan", 1)) is None


def test_l3_clear_refuses_replies_computed_across_it_for_any_type() -> None:
    l3 = QueryCache(max_entries=10, max_staleness_s=60.0, timer=Timer())
    # "fresh" was never invalidated, so it has no per-type epoch of its own yet.
    fresh, anytype = l3.epoch("fresh"), l3.epoch("")
    l3.clear()  # e.g. a prune of patterns whose types are unknown
    assert not l3.put(("fresh", 1), "fresh", b"stale", fresh)
    assert not l3.put(("", 1), "", b"stale", anytype)
    assert l3.put(("fresh", 1), "fresh", b"ok", l3.epoch("fresh"))
    assert l3.get(("fresh", 1)) == b"ok"


def _p(pid: str, ptype: str = "plan") -> Pattern:
    return Pattern(id=pid, type=ptype, data=b'{"a": 1}' * 10)


def test_a_store_makes_a_stale_query_reply_impossible(client: PatternStoreClient) -> None:
    client.store_pattern(_p("a"))
    ids = lambda **kw: [p.id for p in client.query_patterns(**kw).patterns]  # noqa: E731
    assert ids(type="plan") == ["a"] and ids() == ["a"]
    assert ids(type="plan") == ["a"]  # now from L3
    client.store_pattern(_p("b"), durability=DURABILITY_QUEUED)
    client.flush()
    assert ids(type="plan") == ["a", "b"] and ids() == ["a", "b"]
    client.store_pattern(_p("b", "tool"))  # a type change leaves the old type's replies
    assert ids(type="plan") == ["a"] and ids(type="tool") == ["b"]
    client.delete_pattern("a")
    assert ids(type="plan") == [] and ids() == ["b"]
    l3 = {c.tier: c for c in client.get_stats().caches}["l3"]
    assert l3.hits >= 1


def test_a_type_change_clears_the_old_types_replies_again_at_commit(
    start_server: Any, clock: FakeClock
) -> None:
    """A BOUNDED reply for the old type read from SQLite between the accept and the
    commit of a type change must not outlive the commit."""
    srv = start_server(clock, queued_delay_ms=60_000.0)  # QUEUED waits for a Flush
    with PatternStoreClient(srv.target) as c:
        ids = lambda t: [p.id for p in c.query_patterns(t).patterns]  # noqa: E731
        c.store_pattern(_p("x", "a"))
        assert ids("a") == ["x"]
        c.store_pattern(_p("x", "b"), durability=DURABILITY_QUEUED)  # accepted, queued
        assert ids("a") == ["x"]  # BOUNDED: SQLite still says "a"; this reply is cached
        c.flush()
        assert ids("a") == [] and ids("b") == ["x"]


def test_confidence_changes_may_lag_bounded_but_not_strong(
    client: PatternStoreClient, clock: FakeClock
) -> None:
    client.store_patterns([_p("a"), _p("b")])
    first = client.query_patterns("plan").patterns
    assert [p.id for p in first] == ["a", "b"]
    client.update_confidence("b", "success")
    # BOUNDED may answer from L3 (an outcome does not invalidate it) ...
    stale = {p.id: p for p in client.query_patterns("plan").patterns}
    assert stale["b"].confidence == 0.5 and stale["b"].usage_count == 0
    # ... for at most l3_max_staleness_ms; then it carries the current values.
    clock.advance(1.5)
    bounded = {p.id: p for p in client.query_patterns("plan").patterns}
    assert bounded["b"].confidence == 2 / 3 and bounded["b"].usage_count == 1
    strong = client.query_patterns("plan", consistency=CONSISTENCY_STRONG).patterns
    assert [p.id for p in strong] == ["b", "a"]


def test_read_your_writes_across_tiers_with_outcomes_streaming(
    start_server: Any, clock: FakeClock
) -> None:
    srv = start_server(clock, l1_max_entries=2, l2_max_bytes=1 << 20)
    with PatternStoreClient(srv.target) as c:
        c.store_patterns([_p(f"p{i}") for i in range(6)])
        for round_ in range(1, 4):
            c.record_outcomes([update_request(f"p{i}", "success") for i in range(6)])
            for i in range(6):  # more ids than L1 holds: reads go through L2 and SQLite
                assert c.get_pattern(f"p{i}").usage_count == round_
            got = c.get_patterns([f"p{i}" for i in range(6)])
            assert [p.usage_count for p in got.patterns] == [round_] * 6
        tiers = {t.tier: t for t in c.get_stats().caches}
        assert tiers["l1"].entries <= 2 and tiers["l1"].evictions > 0
        assert tiers["l2"].entries > 0


def test_l1_evictions_fall_to_l2(start_server: Any, clock: FakeClock) -> None:
    srv = start_server(clock, l1_max_entries=2)
    with PatternStoreClient(srv.target) as c:
        c.store_patterns([_p(f"p{i}") for i in range(5)])
        for i in range(5):
            c.get_pattern(f"p{i}")  # fills L1 and L2
        before = {t.tier: t for t in c.get_stats().caches}["l2"].hits
        for i in range(5):
            c.get_pattern(f"p{i}")
        after = {t.tier: t for t in c.get_stats().caches}["l2"].hits
        assert after - before >= 3  # what L1 could not hold came from L2, not SQLite


def test_warming_fills_the_caches_before_serving(start_server: Any, clock: FakeClock) -> None:
    first = start_server(clock)
    with PatternStoreClient(first.target) as c:
        c.store_patterns([_p(f"p{i}") for i in range(50)])
        c.update_confidence("p7", "success")
    first.stop()
    second = start_server(clock, warm_count=10)
    with PatternStoreClient(second.target) as c:
        l1 = {t.tier: t for t in c.get_stats().caches}["l1"]
        assert l1.entries == 10
        c.get_pattern("p7")  # the most used pattern was warmed: a hit, not a miss
        l1_after = {t.tier: t for t in c.get_stats().caches}["l1"]
        assert l1_after.hits == l1.hits + 1


def test_l2_is_a_victim_tier_exclusive_of_l1() -> None:
    from patternstore_server.cache import make_cache
    from patternstore_server.cache.tiers import PatternTiers

    l2 = CompressedCache(max_bytes=1 << 20, ttl_s=60, timer=Timer())
    l1 = make_cache("lru", max_entries=2, max_bytes=1 << 20, on_evict=l2.put)
    tiers = PatternTiers(l1, l2)
    value = {k: k.encode() * 50 for k in ("a", "b", "c")}
    for key in ("a", "b"):
        tiers.fill(key, value[key])
    assert len(l2) == 0  # a fill goes to L1 only
    tiers.fill("c", value["c"])  # evicts "a" (LRU) into L2
    assert "a" in l2 and "a" not in l1
    assert tiers.get("a") == value["a"]  # an L2 hit moves "a" back to L1 ...
    assert "a" in l1 and "a" not in l2
    assert "b" in l2  # ... and L1's new victim takes its place in L2
    assert all((k in l1) != (k in l2) for k in value)  # each held exactly once
    # Larger than all of L1: L2 holds it compressed, if it shrinks enough to fit.
    tiers.fill("big", b"x" * (2 << 20))
    assert "big" in l2 and "big" not in l1
    tiers.fill("noise", os.urandom(2 << 20))
    assert "noise" not in tiers


def test_staleness_and_ttl_are_timed_on_the_monotonic_clock(
    start_server: Callable[..., RunningServer],
) -> None:
    """On the real clock, L3's staleness bound (and L2's TTL) is a duration on the
    monotonic clock: timed on the wall clock, a step back (NTP, a resumed VM) kept a
    BOUNDED reply for as long as the step (helper-24: 30 minutes for a 1 s bound)."""
    srv = start_server()  # the real clock, as in production
    l3 = srv.server.engine.l3
    before = time.monotonic()
    assert before <= l3.now() <= time.monotonic()
