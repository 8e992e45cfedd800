"""Numbered SQL migrations (``migrations/NNNN_name.sql``), each applied in the same
transaction that records it, so a crash mid-migration leaves the schema as it was."""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import apsw

from ..errors import StorageError, storage_errors

__all__ = ["Migration", "apply_migrations", "available_migrations", "refuse_newer"]

_NAME = re.compile(r"(\d{4})_([a-z0-9_]+)\.sql")

_CREATE_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    INTEGER PRIMARY KEY NOT NULL,
    name       TEXT NOT NULL,
    applied_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
)
"""
_APPLIED = "SELECT version FROM schema_migrations"
_HAS_TABLE = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_migrations'"
_RECORD = "INSERT INTO schema_migrations (version, name) VALUES (?, ?)"


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


def available_migrations() -> list[Migration]:
    """The migrations shipped with the package, in version order."""
    found = []
    for entry in resources.files("patternstore_server.migrations").iterdir():
        match = _NAME.fullmatch(entry.name)
        if match:
            found.append(Migration(int(match[1]), match[2], entry.read_text(encoding="utf-8")))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise StorageError(f"two migrations share a number: {versions}")
    return found


def refuse_newer(path: Path, migrations: list[Migration] | None = None) -> None:
    """Refuse a database written by a newer version before anything touches it: opening
    the writer sets WAL mode (and the migrations table), which changed such a file even
    though it was then refused (helper-28)."""
    if not path.exists():
        return
    migrations = available_migrations() if migrations is None else migrations
    with storage_errors(f"reading the schema version of {path}"):
        conn = apsw.Connection(str(path), flags=apsw.SQLITE_OPEN_READONLY)
        try:
            if conn.execute(_HAS_TABLE).fetchone() is None:
                return
            done = {row[0] for row in conn.execute(_APPLIED)}
        finally:
            conn.close()
    _refuse_unknown(done, {m.version for m in migrations})


def _refuse_unknown(done: set[int], known: set[int]) -> None:
    if done - known:
        raise StorageError(
            f"the database has migrations {sorted(done - known)} this server does not know: "
            "it was written by a newer patternstore"
        )


def apply_migrations(conn: apsw.Connection, migrations: list[Migration] | None = None) -> list[int]:
    """Apply what is not applied yet; return the versions applied now."""
    migrations = available_migrations() if migrations is None else migrations
    applied_now = []
    with storage_errors("migrating the schema"):
        conn.execute(_CREATE_TABLE)
        done = {row[0] for row in conn.execute(_APPLIED)}
        _refuse_unknown(done, {m.version for m in migrations})
        for m in migrations:
            if m.version in done:
                continue
            with conn:  # one transaction: the schema change and its record
                conn.execute(m.sql)
                conn.execute(_RECORD, (m.version, m.name))
            applied_now.append(m.version)
    return applied_now
