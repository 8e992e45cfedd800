"""Every QueryPatterns statement walks an index in order: no sort of all matches."""

from __future__ import annotations

from pathlib import Path

import pytest
from patternstore_server.storage import ConnectionOptions, ConnectionPool
from patternstore_server.storage import queries as q

VARIANTS = [
    (order, typed, after)
    for order in q.ORDER_COLUMNS
    for typed in (False, True)
    for after in (False, True)
]


@pytest.mark.parametrize(("order", "typed", "after"), VARIANTS)
def test_query_plan_uses_the_ordering_index(
    tmp_path: Path, order: str, typed: bool, after: bool
) -> None:
    pool = ConnectionPool(tmp_path / "p.db", ConnectionOptions())
    conn = pool.writer()
    params = {
        "min_confidence": 0.5,
        "now": 1,
        "limit": 10,
        "type": "t",
        "after_value": 1,
        "after_id": "x",
    }
    plan = " | ".join(
        row[3]
        for row in conn.execute("EXPLAIN QUERY PLAN " + q.query_sql(order, typed, after), params)
    )
    pool.close()
    assert "TEMP B-TREE" not in plan, plan
    assert "SCAN blobs" not in plan, plan
    if order == "id":
        # The primary key's own index, also with a type filter (an export's walk).
        index = "sqlite_autoindex_patterns_1"
    else:
        index = ("patterns_type_" if typed else "patterns_") + q.ORDER_COLUMNS[order]
    assert index in plan, plan


def test_no_index_covers_a_column_an_outcome_rewrites(tmp_path: Path) -> None:
    # An outcome's UPDATE must not touch an index (the ranks are copied lazily): with the
    # ordering indexes on the learned columns, one outcome rewrote ~17 pages.
    pool = ConnectionPool(tmp_path / "p.db", ConnectionOptions())
    conn = pool.writer()
    indexes = [row[0] for row in conn.execute("SELECT name FROM pragma_index_list('patterns')")]
    covered = {
        row[0]
        for name in indexes
        for row in conn.execute("SELECT name FROM pragma_index_info(?)", (name,))
    }
    pool.close()
    assert len(indexes) >= 8
    assert not covered & set(q.LEARNED_FIELDS), covered & set(q.LEARNED_FIELDS)
    assert set(q.RANKS) <= covered
