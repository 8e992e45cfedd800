"""Compression at rest through the real storage: migration, dictionaries, dedup, embeddings."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import apsw
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from patternstore import DURABILITY_QUEUED as QUEUED
from patternstore import Pattern, PatternStoreClient, Trajectory
from patternstore_server.errors import StorageError
from patternstore_server.model import pattern_row, row_to_pattern
from patternstore_server.storage import ConnectionOptions, ConnectionPool
from patternstore_server.storage import queries as q
from patternstore_server.storage.blobs import PayloadStore, sql_functions
from patternstore_server.storage.migrate import apply_migrations, available_migrations

from .conftest import FakeClock


def _payload(i: int, vocabulary: str = "tool") -> bytes:
    rng = random.Random(i)
    steps = [
        {
            "tool": f"{vocabulary}_{rng.randrange(12)}",
            "args": {"path": f"src/m{rng.randrange(40)}.py", "line": rng.randrange(500)},
        }
        for _ in range(rng.randrange(2, 8))
    ]
    doc = {
        "goal": f"fix failing test number {i}",
        "conditions": ["tests fail", "lint clean"],
        "actions": steps,
        "success_criteria": {"tests": "pass", "coverage": rng.random()},
    }
    return json.dumps(doc).encode()


def _blob_stats(db: Path) -> tuple[int, int]:
    conn = apsw.Connection(str(db), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        count, refs = conn.execute("SELECT count(*), coalesce(sum(refs), 0) FROM blobs").fetchone()
    finally:
        conn.close()
    return count, refs


def test_migration_converts_rows_written_before_the_codecs(
    tmp_path: Path, start_server: Any, clock: FakeClock
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    conn = apsw.Connection(str(data / "patterns.db"))
    apply_migrations(conn, available_migrations()[:1])  # the schema as 0001 left it
    emb = np.array([0.5, -0.25, 1e-3], dtype="<f4")
    traj = np.array([0.0, -0.0, 1.5, float("1e300")], dtype="<f8")
    for i, body in enumerate([b"same", b"same", b"other"]):
        conn.execute(
            "INSERT INTO patterns (id, type, name, description, data, embedding, "
            "trajectory_dims, trajectory, metadata, confidence, lower_bound, alpha, beta, "
            "usage_count, success_count, failure_count, created_ns, updated_ns, "
            "last_outcome_ns, version, sequence) VALUES "
            "(?, 't', '', '', ?, ?, 2, ?, '{}', 0.5, 0, 1, 1, 0, 0, 0, 1, 1, 0, 1, ?)",
            (f"old{i}", body, emb.tobytes(), traj.tobytes(), i + 1),
        )
    conn.close()
    srv = start_server(clock)
    with PatternStoreClient(srv.target) as c:
        got = {p.id: p for p in c.get_patterns(["old0", "old1", "old2"]).patterns}
        assert [got[f"old{i}"].data for i in range(3)] == [b"same", b"same", b"other"]
        assert list(got["old0"].embedding) == emb.tolist()
        assert got["old2"].trajectory == Trajectory(dims=2, values=traj.tolist())
    assert _blob_stats(data / "patterns.db") == (2, 3)  # "same" stored once, twice referenced


def test_dedup_reference_counts_survive_churn(
    start_server: Any, clock: FakeClock, tmp_path: Path
) -> None:
    srv = start_server(clock)
    rng = random.Random(7)
    live: dict[str, bytes] = {}
    with PatternStoreClient(srv.target) as c:
        for _ in range(400):
            pid = f"p{rng.randrange(60)}"
            if rng.random() < 0.25 and pid in live:
                c.delete_pattern(pid)
                del live[pid]
            else:
                body = _payload(rng.randrange(15))  # few distinct payloads: lots of sharing
                c.store_pattern(Pattern(id=pid, type="t", data=body))
                live[pid] = body
        got = {p.id: p.data for p in c.get_patterns(sorted(live)).patterns}
        assert got == live
    count, refs = _blob_stats(tmp_path / "data" / "patterns.db")
    assert count == len(set(live.values())) and refs == len(live)


def test_a_database_from_a_newer_version_is_refused_untouched(
    tmp_path: Path, start_server: Any, clock: FakeClock
) -> None:
    """helper-28: the refusal came after the writer had set WAL mode on the file."""
    data = tmp_path / "data"
    data.mkdir()
    db = data / "patterns.db"
    conn = apsw.Connection(str(db))
    for name, (fn, nargs) in sql_functions().items():  # migration 0002 calls them
        conn.create_scalar_function(name, fn, nargs)
    apply_migrations(conn)  # a rollback-journal file, as another tool might leave it
    conn.execute("INSERT INTO schema_migrations (version, name) VALUES (9999, 'future')")
    conn.close()
    before = db.read_bytes()
    with pytest.raises(StorageError, match="newer patternstore"):
        start_server(clock)
    assert db.read_bytes() == before
    with apsw.Connection(str(db), flags=apsw.SQLITE_OPEN_READONLY) as check:
        assert check.execute("PRAGMA journal_mode").fetchone() == ("delete",)


def test_an_upgraded_database_with_embeddings_of_several_lengths_starts(
    tmp_path: Path, start_server: Any, clock: FakeClock
) -> None:
    """helper-28: servers before the similarity index took embeddings of any length; the
    current one stopped at start (np.stack) after the migrations had committed, and the
    old one then refused the database as newer. The most common length is indexed."""
    data = tmp_path / "data"
    data.mkdir()
    conn = apsw.Connection(str(data / "patterns.db"))
    apply_migrations(conn, available_migrations()[:1])  # the schema as 0001 left it
    for i, dims in enumerate([4, 4, 8]):
        vec = np.arange(1, dims + 1, dtype="<f4") * (i + 1)
        conn.execute(
            "INSERT INTO patterns (id, type, name, description, data, embedding, "
            "trajectory_dims, trajectory, metadata, confidence, lower_bound, alpha, beta, "
            "usage_count, success_count, failure_count, created_ns, updated_ns, "
            "last_outcome_ns, version, sequence) VALUES "
            "(?, 't', '', '', x'', ?, 0, x'', '{}', 0.5, 0, 1, 1, 0, 0, 0, 1, 1, 0, 1, ?)",
            (f"e{i}", vec.tobytes(), i + 1),
        )
    conn.close()
    srv = start_server(clock)
    with PatternStoreClient(srv.target) as c:
        assert len(c.get_pattern("e2").embedding) == 8  # served as stored
        found = c.search_similar([1.0, 2.0, 3.0, 4.0], k=5).results
        assert sorted(r.pattern.id for r in found) == ["e0", "e1"]


def _db_image(conn: apsw.Connection) -> tuple[list[Any], list[Any]]:
    patterns = conn.execute("SELECT id, data_key, version FROM patterns ORDER BY id").fetchall()
    blobs = conn.execute("SELECT key, refs, data FROM blobs ORDER BY key").fetchall()
    return patterns, blobs


# Each op: (id, payload number) stores, (id, None) deletes; a run of stores between two
# deletes is what the writer hands put_rows at once.
_ops = st.lists(
    st.tuples(st.sampled_from("abcde"), st.one_of(st.none(), st.integers(0, 3))),
    max_size=30,
)


def _apply_ops(
    conn: apsw.Connection, store: PayloadStore, ops: list[Any], grouped: bool, version: int
) -> int:
    """Apply ``ops`` in one transaction, as the writer does: each run of stores through
    one put_rows call (``grouped``), or one put_rows call per store."""
    run: list[tuple[tuple[Any, ...], bool]] = []
    with conn:
        for pid, body in [*ops, (None, None)]:
            if body is not None:
                version += 1
                p = Pattern(id=pid, type="t", data=_payload(body), alpha=1, beta=1)
                p.version = version
                run.append((pattern_row(p, version), False))
                if grouped:
                    continue
            for row in store.put_rows(conn, run) if run else []:
                conn.execute(q.UPSERT_PATTERN, row)
            run.clear()
            if body is None and pid is not None:
                store.delete_row(conn, pid)
                conn.execute(q.DELETE_PATTERN, (pid,))
    return version


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(before=_ops, batch=_ops)
def test_a_run_of_stores_leaves_what_one_by_one_would(
    tmp_path_factory: pytest.TempPathFactory, before: list[Any], batch: list[Any]
) -> None:
    """put_rows nets a run's blob references in Python: the tables must end as storing
    and deleting one op at a time leaves them (keys, reference counts, blob bytes)."""
    images = []
    for grouped in (False, True):
        pool = ConnectionPool(tmp_path_factory.mktemp("db") / "p.db", ConnectionOptions())
        conn = pool.writer()
        store = PayloadStore(conn, pool.dictionaries)
        version = _apply_ops(conn, store, before, False, 0)
        _apply_ops(conn, store, batch, grouped, version)
        images.append(_db_image(conn))
        (count,) = conn.execute("SELECT count(*) FROM blobs").fetchone()
        assert store.mark() == count  # the count kept by hand (it decides training)
        pool.close()
    one_by_one, grouped_image = images
    assert grouped_image == one_by_one
    patterns, blobs = grouped_image
    assert sum(r for _, r, _ in blobs) == len(patterns)


def test_dictionary_training_and_old_rows_after_a_retrain(tmp_path: Path) -> None:
    pool = ConnectionPool(tmp_path / "p.db", ConnectionOptions())
    conn = pool.writer()
    store = PayloadStore(conn, pool.dictionaries, dict_min_samples=40)

    def put(pid: str, body: bytes) -> None:
        p = Pattern(id=pid, type="t", data=body, embedding=[0.1, 0.2], alpha=1, beta=1)
        with conn:
            conn.execute(q.UPSERT_PATTERN, store.put_row(conn, pattern_row(p, 1)))
        store.publish()  # as the writer does after each COMMIT

    for i in range(60):
        put(f"a{i}", _payload(i))
    assert store.maybe_train(conn) and len(pool.dictionaries) == 1
    for i in range(60):
        put(f"b{i}", _payload(1000 + i, "shell"))
    assert store.maybe_train(conn, force=True) and len(pool.dictionaries) == 2
    for i in range(10):
        put(f"c{i}", _payload(2000 + i, "shell"))
    formats = {r[0][0] for r in conn.execute("SELECT data FROM blobs")}
    assert formats >= {1, 2}  # rows from before the first dictionary and after it
    rows = pool.query("all", f"SELECT {q.COLUMNS} {q.FROM_PATTERNS}")
    decoded = {r[0]: row_to_pattern(r, pool.dictionaries).data for r in rows}
    assert decoded == {
        **{f"a{i}": _payload(i) for i in range(60)},
        **{f"b{i}": _payload(1000 + i, "shell") for i in range(60)},
        **{f"c{i}": _payload(2000 + i, "shell") for i in range(10)},
    }
    assert store.bytes_out["data"] < 0.6 * store.bytes_in["data"]
    pool.close()


def test_int8_embeddings_within_their_stated_error(start_server: Any, clock: FakeClock) -> None:
    srv = start_server(clock, embedding_storage="int8")
    vec = np.random.default_rng(3).uniform(-1, 1, 384).astype("float32")
    with PatternStoreClient(srv.target) as c:
        c.store_pattern(Pattern(id="e", type="t", embedding=vec.tolist()), durability=QUEUED)
        # From the cache, before the commit: already what the stored row will give
        # (helper-26: the exact floats until the cached copy was evicted).
        cached = list(c.get_pattern("e").embedding)
    # Read back from SQLite, not from the cache.
    srv.stop()
    srv2 = start_server(clock, embedding_storage="int8")
    with PatternStoreClient(srv2.target) as c:
        got = np.array(c.get_pattern("e").embedding, dtype="float32")
    assert np.max(np.abs(got - vec)) <= 3.93e-3
    assert not np.array_equal(got, vec)  # it really is the lossy format
    assert cached == got.tolist()


def test_a_training_with_too_few_samples_is_retried_only_after_more_blobs(
    tmp_path: Path,
) -> None:
    """Each attempt samples the whole blobs table; after a failed one the writer must
    not try again after every commit."""
    pool = ConnectionPool(tmp_path / "p.db", ConnectionOptions())
    conn = pool.writer()
    store = PayloadStore(conn, pool.dictionaries, dict_min_samples=5)

    def put(pid: str, body: bytes) -> None:
        p = Pattern(id=pid, type="t", data=body, alpha=1, beta=1)
        with conn:
            conn.execute(q.UPSERT_PATTERN, store.put_row(conn, pattern_row(p, 1)))

    for i in range(5):  # due (5 blobs), but fewer than the 8 samples a training needs
        put(f"a{i}", _payload(i))
    assert not store.maybe_train(conn)
    sampled = []
    conn.set_profile(lambda sql, ns: sampled.append(sql) if "random()" in sql else None)
    for i in range(4):  # fewer than dict_min_samples more: no new attempt
        put(f"b{i}", _payload(100 + i))
        assert not store.maybe_train(conn)
    assert sampled == []
    put("b4", _payload(104))  # now 10 blobs: tried again, and trained
    assert store.maybe_train(conn) and len(pool.dictionaries) == 1
    assert len(sampled) == 1


def test_a_rolled_back_transaction_leaves_the_counters_as_they_were(tmp_path: Path) -> None:
    """The writer retries a batch through a transient fault: each try's blobs must be
    counted once (the count decides when the first dictionary is trained)."""
    pool = ConnectionPool(tmp_path / "p.db", ConnectionOptions())
    conn = pool.writer()
    store = PayloadStore(conn, pool.dictionaries, dict_min_samples=3)
    rows = [
        pattern_row(Pattern(id=f"r{i}", type="t", data=_payload(i), alpha=1, beta=1), 1)
        for i in range(2)
    ]

    def counters() -> tuple[int, int]:
        return store.bytes_in["data"], store.bytes_out["data"]

    before = store.mark()
    conn.execute("BEGIN IMMEDIATE")
    for row in rows:
        conn.execute(q.UPSERT_PATTERN, store.put_row(conn, row))
    # Not published inside the transaction: a counter a scrape saw must never go down.
    assert counters() == (0, 0)
    assert len(store.tracker) == 0
    conn.execute("ROLLBACK")
    store.restore(before)
    assert store.mark() == before
    with conn:  # the retry that commits: counted once
        for row in rows:
            conn.execute(q.UPSERT_PATTERN, store.put_row(conn, row))
    store.publish()
    (stored,) = conn.execute("SELECT count(*) FROM blobs").fetchone()
    assert store.mark() == before + 2 == stored
    data_in, data_out = counters()
    assert data_in == sum(len(_payload(i)) for i in range(2))
    assert data_out > 0
    assert len(store.tracker) == 2  # the drift window saw each blob once
