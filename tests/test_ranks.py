"""QueryPatterns orders by rank copies of the learned columns, refreshed lazily.

An outcome's UPDATE touches no index; the writer copies learned values to the ranks at
most ``rank_interval_ms`` later, at once for a STRONG query or a Flush, on a clean stop,
and at start for what a kill -9 left behind.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import apsw
from patternstore import CONSISTENCY_STRONG, Pattern, PatternStoreClient, update_request

from .conftest import FakeClock
from .proc import ServerProcess


def _ids(c: PatternStoreClient, **kw: Any) -> list[str]:
    return [p.id for p in c.query_patterns("t", **kw).patterns]


def _stale_ranks(db: Path) -> int:
    conn = apsw.Connection(str(db), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        (n,) = conn.execute(
            "SELECT count(*) FROM patterns WHERE rank_confidence != confidence "
            "OR rank_usage != usage_count OR rank_updated != updated_ns "
            "OR rank_lower_bound != lower_bound"
        ).fetchone()
    finally:
        conn.close()
    return int(n)


def test_bounded_order_lags_strong_and_flush_do_not(start_server: Any, clock: FakeClock) -> None:
    srv = start_server(clock, rank_interval_ms=600_000, l3_max_entries=0)
    with PatternStoreClient(srv.target) as c:
        c.store_patterns([Pattern(id="a", type="t"), Pattern(id="b", type="t")])
        c.update_confidence("b", "success")  # COMMITTED: b 2/3, a 1/2
        got = c.query_patterns("t").patterns
        # BOUNDED: still the order of the ranks (a tie at 0.5, by id) ...
        assert [p.id for p in got] == ["a", "b"]
        # ... but every pattern carries its current values,
        assert got[1].confidence == 2 / 3 and got[1].usage_count == 1
        # and min_confidence filters on the current confidence: a is now 1/3.
        c.update_confidence("a", "failure")
        assert _ids(c, min_confidence=0.45) == ["b"]
        c.update_confidence("b", "success")  # b: 3/4, usage 2
        assert _ids(c, consistency=CONSISTENCY_STRONG) == ["b", "a"]
        c.update_confidence_batch([update_request("a", "success")] * 6)  # a: 7/9, usage 7
        # The ranks of the STRONG query, not yet a's: both orders change at the flush.
        assert _ids(c) == ["b", "a"]
        assert _ids(c, order_by="usage") == ["b", "a"]  # 2 and 1 then
        c.flush()
        assert _ids(c) == ["a", "b"]
        assert _ids(c, order_by="usage") == ["a", "b"]
        assert _ids(c, order_by="lower_bound") == ["a", "b"]


def test_bounded_order_follows_the_ranks_once_they_fall_due(start_server: Any) -> None:
    srv = start_server(rank_interval_ms=100, l3_max_entries=0)
    with PatternStoreClient(srv.target) as c:
        c.store_patterns([Pattern(id="a", type="t"), Pattern(id="b", type="t")])
        c.update_confidence("b", "success")
        # No further writes: the idle writer copies the ranks when they fall due.
        deadline = time.monotonic() + 10
        while _ids(c) != ["b", "a"]:
            assert time.monotonic() < deadline, "the ranks were never refreshed"
            time.sleep(0.02)


def test_a_stop_or_a_kill_leaves_no_stale_rank(tmp_path: Path) -> None:
    data = tmp_path / "data"
    server = ServerProcess(data, "--rank-interval-ms", "600000")
    try:
        with PatternStoreClient(server.target) as c:
            c.store_patterns([Pattern(id=f"p{i}", type="t") for i in range(5)])
            c.update_confidence_batch([update_request(f"p{i}", "success") for i in range(3)])
        assert server.terminate() == 0
    finally:
        server.close()
    assert _stale_ranks(data / "patterns.db") == 0  # a clean stop copied them

    server = ServerProcess(data, "--rank-interval-ms", "600000")
    try:
        with PatternStoreClient(server.target) as c:
            c.update_confidence_batch([update_request("p4", "success")] * 2)
        server.kill9()
    finally:
        server.close()
    assert _stale_ranks(data / "patterns.db") == 1  # committed, never copied

    server = ServerProcess(data, "--rank-interval-ms", "600000")
    try:
        with PatternStoreClient(server.target) as c:
            assert _ids(c)[0] == "p4"  # copied at start, before any query
    finally:
        server.close()
