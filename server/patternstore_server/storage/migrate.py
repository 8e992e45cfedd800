"""Numbered SQL migrations (``migrations/NNNN_name.sql``), each applied in the same
transaction that records it, so a crash mid-migration leaves the schema as it was."""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources

import apsw

from ..errors import StorageError, storage_errors

__all__ = ["Migration", "apply_migrations", "available_migrations"]

_NAME = re.compile(r"(\d{4})_([a-z0-9_]+)\.sql")

_CREATE_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    INTEGER PRIMARY KEY NOT NULL,
    name       TEXT NOT NULL,
    applied_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
)
"""
_APPLIED = "SELECT version FROM schema_migrations"
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


def apply_migrations(conn: apsw.Connection, migrations: list[Migration] | None = None) -> list[int]:
    """Apply what is not applied yet; return the versions applied now."""
    migrations = available_migrations() if migrations is None else migrations
    applied_now = []
    with storage_errors("migrating the schema"):
        conn.execute(_CREATE_TABLE)
        done = {row[0] for row in conn.execute(_APPLIED)}
        known = {m.version for m in migrations}
        if done - known:
            raise StorageError(
                f"the database has migrations {sorted(done - known)} this server does not know: "
                "it was written by a newer patternstore"
            )
        for m in migrations:
            if m.version in done:
                continue
            with conn:  # one transaction: the schema change and its record
                conn.execute(m.sql)
                conn.execute(_RECORD, (m.version, m.name))
            applied_now.append(m.version)
    return applied_now
