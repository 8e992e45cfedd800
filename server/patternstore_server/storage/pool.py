"""Connections: one writer (owned by the flush thread), one reader per thread."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import apsw

from ..errors import StoreClosed, storage_errors
from .blobs import sql_functions
from .migrate import apply_migrations, refuse_newer
from .pragmas import ConnectionOptions, configure_reader, configure_writer

__all__ = ["ConnectionPool"]


class ConnectionPool:
    """Hands out the writer once and a reader per calling thread.

    ``close()`` closes every connection it handed out; it is safe to call twice, and any
    later ``reader()`` or ``writer()`` raises StoreClosed.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        options: ConnectionOptions,
        observer: Callable[[str, float], None] | None = None,
    ) -> None:
        self.path = Path(path)
        self.options = options
        # Told (query name, seconds) after every named query: the metrics' histogram.
        self.observer = observer
        # Times SQLite found the database locked and we waited; read by the metrics.
        self.busy_retries = 0
        # Payload dictionaries by id, filled by the writer's PayloadStore, read by every
        # reader to decode blobs. Entries are only added, never changed.
        self.dictionaries: dict[int, bytes] = {}
        self._local = threading.local()
        # Guards _readers, _writer and _closed: readers are created from many threads.
        self._lock = threading.Lock()
        self._readers: list[apsw.Connection] = []
        self._writer: apsw.Connection | None = None
        self._closed = False
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def writer(self) -> apsw.Connection:
        """The one write connection, with the schema migrated. Call once."""
        with self._lock:
            if self._closed:
                raise StoreClosed("the connection pool is closed")
            if self._writer is not None:
                raise RuntimeError("the writer connection was already handed out")
            refuse_newer(self.path)
            with storage_errors(f"opening {self.path}"):
                conn = apsw.Connection(str(self.path))
                configure_writer(conn, self.options)
                conn.set_busy_handler(self._busy_handler())
                for name, (fn, nargs) in sql_functions().items():
                    conn.create_scalar_function(name, fn, nargs, deterministic=True)
                apply_migrations(conn)
            self._writer = conn
            return conn

    def reader(self) -> apsw.Connection:
        """This thread's read-only connection (created on first use)."""
        conn: apsw.Connection | None = getattr(self._local, "conn", None)
        if conn is not None and not self._closed:
            return conn
        with self._lock:
            if self._closed:
                raise StoreClosed("the connection pool is closed")
            with storage_errors(f"opening {self.path} for reading"):
                conn = apsw.Connection(str(self.path), flags=apsw.SQLITE_OPEN_READONLY)
                configure_reader(conn, self.options)
                conn.set_busy_handler(self._busy_handler())
            self._readers.append(conn)
        self._local.conn = conn
        return conn

    def query(self, name: str, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> list[Any]:
        """Run a read on this thread's connection; report its duration under ``name``."""
        started = time.perf_counter()
        with storage_errors(f"running {name}"):
            rows = list(self.reader().execute(sql, params))
        if self.observer is not None:
            self.observer(name, time.perf_counter() - started)
        return rows

    def _busy_handler(self) -> Callable[[int], bool]:
        """Wait for a lock with a growing sleep, counting each wait, up to busy_timeout.

        SQLite's own busy_timeout does the same but cannot tell us how often it waited.
        """
        limit_s = self.options.busy_timeout_ms / 1000.0
        state = {"started": 0.0}

        def handler(prior_calls: int) -> bool:
            now = time.monotonic()
            if prior_calls == 0:
                state["started"] = now
            if now - state["started"] >= limit_s:
                return False
            self.busy_retries += 1
            time.sleep(min(0.001 * (prior_calls + 1), 0.025))
            return True

        return handler

    def file_sizes(self) -> tuple[int, int]:
        """(database bytes, WAL bytes) as on disk now."""
        sizes = []
        for p in (self.path, self.path.with_name(self.path.name + "-wal")):
            try:
                sizes.append(p.stat().st_size)
            except FileNotFoundError:
                sizes.append(0)
        return sizes[0], sizes[1]

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            conns = list(self._readers)
            if self._writer is not None:
                conns.append(self._writer)
            self._readers.clear()
            self._writer = None
        # The writer is last: closing the last connection checkpoints and removes the WAL.
        for conn in conns:
            conn.close()
