"""Multi-row statements: many rows in one SQL statement, a chunk at a time.

Each statement is one step, so the writer thread takes the GIL back once per chunk.
``executemany`` (or ``execute`` in a loop) takes it back after every row, and each
time waits for the event loop thread to let go of it: up to the 5 ms switch interval
when the loop is busy. That wait, not SQLite, was most of a commit under load.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import apsw

__all__ = ["CHUNK", "execute_in", "execute_rows"]

# Rows per statement: 22 parameters a row at most (a whole pattern), 5,632 in all, far
# below SQLite's 32,766.
CHUNK = 256


@functools.lru_cache(maxsize=128)
def _rows_sql(template: str, width: int, rows: int) -> str:
    """``template`` with its {} filled by ``rows`` placeholder tuples of ``width``."""
    row = "(" + ", ".join("?" * width) + ")"
    return template.format(", ".join([row] * rows))


def execute_rows(conn: apsw.Connection, template: str, rows: Sequence[tuple[Any, ...]]) -> None:
    """Execute ``template`` (a VALUES list as {}) over ``rows``, ``CHUNK`` to a statement."""
    for start in range(0, len(rows), CHUNK):
        chunk = rows[start : start + CHUNK]
        sql = _rows_sql(template, len(chunk[0]), len(chunk))
        conn.execute(sql, [v for row in chunk for v in row])


def execute_in(conn: apsw.Connection, template: str, values: Sequence[Any]) -> list[Any]:
    """Execute ``template`` (an ``IN ({})`` list) over ``values``, ``CHUNK`` to a
    statement; the rows it returns."""
    out: list[Any] = []
    for start in range(0, len(values), CHUNK):
        chunk = values[start : start + CHUNK]
        out += conn.execute(_rows_sql(template, 1, len(chunk)), chunk).fetchall()
    return out
