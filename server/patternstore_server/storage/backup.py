"""Online backups through SQLite's backup API, and their checks."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import apsw

from ..errors import StorageError, storage_errors
from . import queries as q

__all__ = ["check_copy", "copy_database"]


def copy_database(source: Path, dest: Path) -> int:
    """Copy ``source`` to ``dest`` while the server keeps writing; return its durable sequence.

    One backup step copies every page inside one read transaction, so the copy is a
    consistent snapshot holding every write committed before the call (a stepwise copy
    would restart each time the writer commits, and might never finish under load).
    """
    dest.unlink(missing_ok=True)
    with (
        storage_errors(f"backing up {source}"),
        contextlib.closing(apsw.Connection(str(source), flags=apsw.SQLITE_OPEN_READONLY)) as src,
        contextlib.closing(apsw.Connection(str(dest))) as out,
    ):
        with out.backup("main", src, "main") as b:
            b.step(-1)
        row = out.execute(q.META_GET, ("durable_sequence",)).fetchone()
        # The copy is a standalone file: no WAL next to it.
        out.pragma("journal_mode", "delete")
    return int(row[0]) if row else 0


def check_copy(path: Path) -> None:
    """Raise StorageError unless ``path`` is a patternstore database passing integrity_check."""
    if not path.exists() or os.path.getsize(path) == 0:
        raise StorageError(f"{path} is missing or empty")
    with storage_errors(f"checking {path}"):
        conn = apsw.Connection(str(path), flags=apsw.SQLITE_OPEN_READONLY)
        try:
            result = conn.execute("PRAGMA integrity_check").fetchall()
            tables = {
                r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")
            }
        finally:
            conn.close()
    if result != [("ok",)]:
        raise StorageError(f"{path} fails integrity_check: {result[:5]}")
    if "patterns" not in tables:
        raise StorageError(f"{path} is not a patternstore database (no patterns table)")
