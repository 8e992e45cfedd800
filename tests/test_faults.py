"""Faults: a lock held by another process, a full disk, a corrupt WAL tail, a rotten row,
a commit SQLite refuses for good.

Each gets a clear status, reads keep working (and stay true), writes resume once the
fault is gone (or after a restart, for a failed commit), and nothing acknowledged is lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import apsw
import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from patternstore import (
    DURABILITY_QUEUED,
    AsyncPatternStoreClient,
    Pattern,
    PatternStoreClient,
    RetryPolicy,
    update_request,
)
from patternstore.v1.patternstore_pb2 import StorePatternResponse
from patternstore_server.codecs import CodecError
from patternstore_server.codecs import payload as payload_codec
from prometheus_client.parser import text_string_to_metric_families

from .conftest import FakeClock, RunningServer
from .proc import ServerProcess

ONCE = RetryPolicy(attempts=1)


def _code(exc: pytest.ExceptionInfo[grpc.RpcError]) -> grpc.StatusCode:
    return exc.value.code()  # type: ignore[attr-defined, no-any-return]


def _eventually(check: Any, timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        try:
            return check()
        except (AssertionError, grpc.RpcError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def _readyz(srv: RunningServer) -> int:
    try:
        url = f"http://127.0.0.1:{srv.server.metrics_port}/readyz"
        return int(urllib.request.urlopen(url, timeout=5).status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def _store_unavailable(c: PatternStoreClient, pid: str, reason: str) -> None:
    with pytest.raises(grpc.RpcError) as exc:
        c.store_pattern(Pattern(id=pid, type="t"))
    assert _code(exc) == grpc.StatusCode.UNAVAILABLE
    assert reason in (exc.value.details() or "")


@contextlib.contextmanager
def _lock_held_elsewhere(
    srv: RunningServer, c: PatternStoreClient
) -> Iterator[tuple[apsw.Connection, StorePatternResponse]]:
    """Another process takes the write lock: yields once writes are paused (the writer
    retries a QUEUED store meanwhile), with that connection and the store's reply."""
    other = apsw.Connection(str(srv.server.db_path))
    other.execute("BEGIN IMMEDIATE")
    try:
        queued = c.store_pattern(Pattern(id="queued", type="t"), durability=DURABILITY_QUEUED)
        _eventually(lambda: _store_unavailable(c, "refused", "lock"))
        yield other, queued
    finally:
        if not other.getautocommit():
            other.execute("ROLLBACK")
        other.close()


def test_a_lock_held_elsewhere_pauses_writes_not_reads(start_server: Any, clock: FakeClock) -> None:
    srv = start_server(clock, busy_timeout_ms=100)
    with PatternStoreClient(srv.target, retry=ONCE, timeout=5) as c:
        c.store_pattern(Pattern(id="before", type="t"))
        with _lock_held_elsewhere(srv, c) as (_, queued):
            assert c.get_pattern("before").id == "before"  # reads keep working
            assert c.get_pattern("queued").id == "queued"
            assert _readyz(srv) == 503
            assert c.health() == "NOT_SERVING"  # gRPC health mirrors readiness
        _eventually(lambda: c.store_pattern(Pattern(id="after", type="t")))
        assert c.flush().durable_sequence >= queued.sequence
        assert _readyz(srv) == 200
        assert c.health() == "SERVING"
    srv.stop()
    again = start_server(clock)
    with PatternStoreClient(again.target) as c:
        assert sorted(p.id for p in c.get_patterns(["before", "queued", "after"]).patterns) == [
            "after",
            "before",
            "queued",
        ]


def _unavailable(srv: RunningServer, method: str) -> float:
    """grpc_server_handled_total of ``method`` with code Unavailable: attempts refused."""
    url = f"http://127.0.0.1:{srv.server.metrics_port}/metrics"
    text = urllib.request.urlopen(url, timeout=5).read().decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = sample.labels
            if (
                sample.name == "grpc_server_handled_total"
                and labels.get("grpc_method") == method
                and labels.get("grpc_code") == "Unavailable"
            ):
                return float(sample.value)
    return 0.0


def test_the_client_retries_only_what_is_safe_to_repeat(
    start_server: Any, clock: FakeClock
) -> None:
    """While writes are paused (UNAVAILABLE), a conditional store or delete is tried once:
    had the first attempt been applied, a retry would report ABORTED or NOT_FOUND for a
    write that happened. An outcome with a request_id is retried."""
    srv = start_server(clock, busy_timeout_ms=100)
    retry = RetryPolicy(attempts=3, initial_backoff=0.01, max_backoff=0.02)
    with PatternStoreClient(srv.target, retry=retry, timeout=5) as c:
        c.store_pattern(Pattern(id="a", type="t"))
        with _lock_held_elsewhere(srv, c):
            calls = {
                "StorePattern": (
                    lambda: c.store_pattern(Pattern(id="a", type="t"), expected_version=1),
                    1,
                ),
                "DeletePattern": (lambda: c.delete_pattern("a", expected_version=1), 1),
                "UpdateConfidence": (
                    lambda: c.update_confidence("a", "success", request_id="r"),
                    3,
                ),
            }
            for method, (call, attempts) in calls.items():
                before = _unavailable(srv, method)
                with pytest.raises(grpc.RpcError) as exc:
                    call()
                assert _code(exc) == grpc.StatusCode.UNAVAILABLE

                def counted(
                    method: str = method, before: float = before, n: int = attempts
                ) -> None:
                    # The server counts an attempt just after its status is sent: the
                    # last one may land a moment after the client has its answer.
                    assert (method, _unavailable(srv, method) - before) == (method, n)

                _eventually(counted, timeout=5.0)
            # The timeout bounds the call, retries included (it once applied per attempt:
            # 100 attempts here took ~5 s).
            many = RetryPolicy(attempts=100, initial_backoff=0.1, max_backoff=0.1)
            with PatternStoreClient(srv.target, retry=many, timeout=1.0) as quick:
                started = time.monotonic()
                with pytest.raises(grpc.RpcError):
                    quick.update_confidence("a", "success", request_id="r2")
                assert time.monotonic() - started < 3.0


def test_a_safe_call_rides_out_a_restart_within_its_timeout(
    start_server: Any, clock: FakeClock
) -> None:
    """Retries go on until the call's timeout, not for a fixed few attempts (five tries
    gave up within 0.75 s, so a read failed across any restart), and a retry waits for
    the connection instead of failing inside the channel's reconnect backoff."""
    srv = start_server(clock)
    port = srv.port
    with PatternStoreClient(srv.target, timeout=20) as c:
        c.store_pattern(Pattern(id="a", type="t"))
        srv.stop()
        restarted: list[RunningServer] = []
        timer = threading.Timer(
            1.5, lambda: restarted.append(start_server(clock, listen=f"127.0.0.1:{port}"))
        )
        timer.start()
        started = time.monotonic()
        try:
            assert c.get_pattern("a").id == "a"
        finally:
            timer.join()
        assert time.monotonic() - started >= 1.4  # it did wait out the restart

        async def aio_read() -> str:
            async with AsyncPatternStoreClient(srv.target, timeout=20) as ac:
                restarted[0].stop()
                again = threading.Timer(
                    1.5, lambda: restarted.append(start_server(clock, listen=f"127.0.0.1:{port}"))
                )
                again.start()
                try:
                    return (await ac.get_pattern("a")).id
                finally:
                    again.join()

        assert asyncio.run(aio_read()) == "a"


def test_a_full_queue_is_retried_after_its_hint_when_safe(
    start_server: Any, clock: FakeClock
) -> None:
    """RESOURCE_EXHAUSTED with retry-after-ms (a full write queue) is retried for calls
    safe to repeat, after the hint; a policy's own ``retryable`` is the one asked."""
    srv = start_server(clock, max_queue=2, queued_delay_ms=60_000.0)
    with PatternStoreClient(srv.target, timeout=10) as c:
        c.store_patterns([Pattern(id="a", type="t")])
        for pid in ("b", "c"):
            c.store_pattern(Pattern(id=pid, type="t"), durability=DURABILITY_QUEUED)
        r = c.update_confidence("a", "success", request_id="run-1")
        assert not r.duplicate
        assert c.get_pattern("a").usage_count == 1

    class Counting(RetryPolicy):
        asked = 0

        def retryable(self, exc: grpc.RpcError) -> bool:
            Counting.asked += 1
            return False

    with PatternStoreClient(srv.target, timeout=10, retry=Counting()) as c:
        for pid in ("d", "e"):
            c.store_pattern(Pattern(id=pid, type="t"), durability=DURABILITY_QUEUED)
        with pytest.raises(grpc.RpcError) as exc:
            c.update_confidence("a", "success", request_id="run-2")
        assert _code(exc) == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert Counting.asked == 1


def test_a_fault_that_turns_permanent_stops_writes_rather_than_pausing_them(
    start_server: Any, clock: FakeClock
) -> None:
    """A lock held elsewhere pauses writes (transient); when the retry then fails for
    good, writes are refused with UNAVAILABLE "restart the server", not the stale
    "paused, retry shortly" that kept clients retrying a writer that had stopped."""
    srv = start_server(clock, busy_timeout_ms=100)
    with PatternStoreClient(srv.target, retry=ONCE, timeout=5) as c:
        c.store_pattern(Pattern(id="before", type="t"))
        with _lock_held_elsewhere(srv, c) as (other, _):
            # The writer's retry will now meet a trigger that refuses its insert.
            other.execute(
                "CREATE TRIGGER refuse_inserts BEFORE INSERT ON patterns "
                "BEGIN SELECT RAISE(ABORT, 'inserts refused by the test'); END"
            )
            other.execute("COMMIT")

        _eventually(lambda: _store_unavailable(c, "later", "restart the server"))
        assert c.get_pattern("before").id == "before"
        assert c.health() == "NOT_SERVING"
        assert _readyz(srv) == 503
        assert not srv.server.engine.writes_paused


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A 3 MiB tmpfs: a real full disk. Needs the right to mount (root, as on CI)."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mnt)], capture_output=True, text=True
    )
    if r.returncode != 0:
        if os.environ.get("CI"):
            pytest.fail(f"cannot mount a tmpfs on CI: {r.stderr.strip()}")
        pytest.skip(f"this machine does not let us mount a tmpfs: {r.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_a_full_disk_refuses_writes_clearly_and_recovers(
    start_server: Any, clock: FakeClock, tiny_disk: Path
) -> None:
    ballast = tiny_disk / "ballast"
    srv = start_server(clock, data_dir=str(tiny_disk / "data"), warm_count=0)
    acked: list[str] = []
    with PatternStoreClient(srv.target, retry=ONCE, timeout=3) as c:
        c.store_pattern(Pattern(id="p0", type="t"))
        acked.append("p0")
        free = shutil.disk_usage(tiny_disk).free
        ballast.write_bytes(b"\0" * max(0, free - 4096))  # fill the disk
        code = None
        for i in range(1, 400):  # write until the disk refuses
            try:
                c.store_pattern(Pattern(id=f"p{i}", type="t", data=os.urandom(2000)))
                acked.append(f"p{i}")
            except grpc.RpcError as exc:
                code = exc.code()  # type: ignore[attr-defined]
                if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
                    assert "disk is full" in exc.details()  # type: ignore[attr-defined]
                    break
                # The store whose commit hit the full disk waits for it (the writer
                # retries, nothing is lost) until its deadline; nothing else is expected.
                assert code == grpc.StatusCode.DEADLINE_EXCEEDED, exc
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert c.get_pattern("p0").id == "p0"  # reads keep working
        # A stream is refused at once too, not held until the disk has room again.
        with pytest.raises(grpc.RpcError) as refused:
            c.record_outcomes([update_request("p0", "success")], timeout=3)
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "commit when writes resume" in (refused.value.details() or "")
        ballast.unlink()  # the operator frees space
        _eventually(lambda: c.store_pattern(Pattern(id="after", type="t")))
        acked.append("after")
        got = c.get_patterns(acked)
        assert not got.missing_ids
    # And on disk, not only in this process's caches: a restart reads them from SQLite.
    srv.stop()
    srv = start_server(clock, data_dir=str(tiny_disk / "data"), warm_count=0)
    with PatternStoreClient(srv.target, retry=ONCE, timeout=3) as c:
        assert not c.get_patterns(acked).missing_ids


def test_a_corrupt_wal_tail_loses_nothing_acknowledged(tmp_path: Path) -> None:
    data = tmp_path / "data"
    server = ServerProcess(data, "--wal-autocheckpoint-pages", "100000")
    try:
        with PatternStoreClient(server.target) as c:
            for lo in range(0, 600, 100):
                c.store_patterns(
                    [Pattern(id=f"p{i}", type="t", data=b"x" * 200) for i in range(lo, lo + 100)]
                )
            c.update_confidence("p5", "success")
            acked = c.get_pattern("p5")
        server.kill9()
    finally:
        server.close()
    wal = data / "patterns.db-wal"
    assert wal.stat().st_size > 0
    with wal.open("ab") as f:  # a torn write: half a frame of garbage after the last one
        f.write(os.urandom(3000))
    restarted = ServerProcess(data)
    try:
        with PatternStoreClient(restarted.target) as c:
            for lo in range(0, 600, 100):
                assert not c.get_patterns([f"p{i}" for i in range(lo, lo + 100)]).missing_ids
            p = c.get_pattern("p5")
            assert (p.version, p.confidence) == (acked.version, acked.confidence)
    finally:
        restarted.close()
    conn = apsw.Connection(str(data / "patterns.db"), flags=apsw.SQLITE_OPEN_READONLY)
    assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    conn.close()


def test_a_row_that_does_not_decode_is_data_loss_for_that_pattern_only(
    start_server: Callable[..., RunningServer], tmp_path: Path
) -> None:
    srv = start_server()
    with PatternStoreClient(srv.target) as c:
        c.store_pattern(Pattern(id="bad", type="t", data=b'{"will": "rot"}' * 10))
        c.store_pattern(Pattern(id="good", type="t", data=b'{"stays": "fine"}'))
        c.store_pattern(Pattern(id="vec", type="t", embedding=[0.5, -0.25, 1.0]))
    srv.stop()
    # Bit rot in the stored payload of "bad" (an unknown format byte).
    with apsw.Connection(str(tmp_path / "data" / "patterns.db")) as conn:
        conn.execute(
            "UPDATE blobs SET data = x'7f00' WHERE key = "
            "(SELECT data_key FROM patterns WHERE id = 'bad')"
        )
        conn.execute("UPDATE patterns SET embedding = x'7f' WHERE id = 'vec'")
    srv = start_server()  # starts: warming and indexing skip what does not decode
    with PatternStoreClient(srv.target, retry=RetryPolicy(attempts=1)) as c:
        for pid in ("bad", "vec"):
            with pytest.raises(grpc.RpcError) as err:
                c.get_pattern(pid)
            assert err.value.code() == grpc.StatusCode.DATA_LOSS
            assert "does not decode" in (err.value.details() or "")
        assert c.get_pattern("good").data == b'{"stays": "fine"}'  # still serving


def test_rot_in_the_text_columns_is_data_loss_for_that_pattern_only(
    start_server: Callable[..., RunningServer], tmp_path: Path
) -> None:
    """Metadata that is no longer JSON, a name that is no longer UTF-8 (helper-23: the
    server did not start, since warming read them; with warming off, reads, stores and
    deletes of the pattern got INTERNAL)."""
    srv = start_server()
    with PatternStoreClient(srv.target) as c:
        c.store_pattern(Pattern(id="meta", type="t", metadata={"k": "v"}))
        c.store_pattern(Pattern(id="name", type="t", name="AB"))
        c.store_pattern(Pattern(id="good", type="t", name="fine"))
        c.update_confidence("meta", "success")
    srv.stop()
    with apsw.Connection(str(tmp_path / "data" / "patterns.db")) as conn:
        conn.execute("""UPDATE patterns SET metadata = '{"k": "v' WHERE id = 'meta'""")
        conn.execute("UPDATE patterns SET name = CAST(x'41ff42' AS TEXT) WHERE id = 'name'")
    srv = start_server()  # warms the caches: skips the two, starts
    with PatternStoreClient(srv.target, retry=ONCE) as c:
        for pid, field in (("meta", "metadata"), ("name", "name")):
            with pytest.raises(grpc.RpcError) as err:
                c.get_pattern(pid)
            assert _code(err) == grpc.StatusCode.DATA_LOSS
            assert field in (err.value.details() or "")
        assert c.get_pattern("good").name == "fine"
        stored = c.store_pattern(Pattern(id="meta", type="t", metadata={"k": "w"}))
        assert stored.version == 3  # the store and the outcome before it
        assert c.get_pattern("meta").metadata == {"k": "w"}
        assert c.get_pattern("meta").success_count == 1  # what was learned stays
        c.delete_pattern("name")
        assert c.get_patterns(["name"]).missing_ids == ["name"]


def _rot_payload(db: Path, pid: str) -> None:
    """Bit rot in the stored payload blob of ``pid`` (an unknown format byte)."""
    with apsw.Connection(str(db)) as conn:
        conn.execute(
            "UPDATE blobs SET data = x'7f00' "
            "WHERE key = (SELECT data_key FROM patterns WHERE id = ?)",
            (pid,),
        )


def test_a_healed_blob_drops_every_cached_query_reply(
    start_server: Callable[..., RunningServer], tmp_path: Path, clock: FakeClock
) -> None:
    """helper-26: storing the rotten pattern again rewrote the blob its twin of another
    type shares, but only its own type's cached replies went: a BOUNDED query of the
    twin's type kept leaving the twin out (until the staleness bound)."""
    content = b'{"will": "rot"}' * 10
    srv = start_server(clock, warm_count=0)
    with PatternStoreClient(srv.target) as c:
        c.store_pattern(Pattern(id="bad", type="t", data=content))
        c.store_pattern(Pattern(id="twin", type="u", data=content))
        c.store_pattern(Pattern(id="plain", type="u", data=b"plain"))
    srv.stop()
    _rot_payload(tmp_path / "data" / "patterns.db", "bad")
    srv = start_server(clock, warm_count=0)
    with PatternStoreClient(srv.target, retry=ONCE) as c:
        assert [p.id for p in c.query_patterns("u", order_by="id").patterns] == ["plain"]
        c.store_pattern(Pattern(id="bad", type="t", data=content))  # heals the blob
        ids = [p.id for p in c.query_patterns("u", order_by="id").patterns]  # BOUNDED
        assert ids == ["plain", "twin"]


def test_a_store_sharing_a_rotten_payload_repairs_it(
    start_server: Callable[..., RunningServer], tmp_path: Path
) -> None:
    """helper-23: a new pattern whose content matched a rotten blob took a reference to
    it, was acknowledged, and then read DATA_LOSS."""
    content = b'{"will": "rot"}' * 10
    srv = start_server(warm_count=0)
    with PatternStoreClient(srv.target) as c:
        c.store_pattern(Pattern(id="bad", type="t", data=content))
    srv.stop()
    _rot_payload(tmp_path / "data" / "patterns.db", "bad")
    srv = start_server(warm_count=0)
    with PatternStoreClient(srv.target, retry=ONCE) as c:
        assert c.store_pattern(Pattern(id="fresh", type="t", data=content)).created
        assert c.get_pattern("fresh").data == content
        assert c.get_pattern("bad").data == content  # the same blob: both read again


def test_a_bit_flip_that_still_decodes_is_data_loss(
    start_server: Callable[..., RunningServer], tmp_path: Path
) -> None:
    """helper-29: zstd frames carry no checksum, and 29% of single-bit flips in a stored
    payload decoded to other bytes without an error, which reads then served. The
    decoded payload is checked against its content key."""
    body = b'{"steps": ["open", "edit", "test"], "note": "' + b"abcdefgh" * 40 + b'"}'
    srv = start_server(warm_count=0)
    with PatternStoreClient(srv.target) as c:
        c.store_pattern(Pattern(id="p", type="t", data=body))
    srv.stop()
    db = tmp_path / "data" / "patterns.db"
    with apsw.Connection(str(db)) as conn:
        (blob,) = conn.execute("SELECT data FROM blobs").fetchone()
        flipped = None
        for bit in range(8 * 8, 8 * len(blob)):  # past the headers: the compressed body
            candidate = bytearray(blob)
            candidate[bit // 8] ^= 1 << (bit % 8)
            try:
                if payload_codec.decode(bytes(candidate), {}) != body:
                    flipped = bytes(candidate)
                    break
            except CodecError:
                continue
        assert flipped is not None, "no flip decodes silently in this blob"
        conn.execute("UPDATE blobs SET data = ?", (flipped,))
    srv = start_server(warm_count=0)
    with PatternStoreClient(srv.target, retry=ONCE) as c:
        with pytest.raises(grpc.RpcError) as err:
            c.get_pattern("p")
        assert _code(err) == grpc.StatusCode.DATA_LOSS
        assert "content key" in (err.value.details() or "")


def test_readers_of_many_patterns_leave_a_rotten_one_out(
    start_server: Callable[..., RunningServer], tmp_path: Path
) -> None:
    """helper-24: one rotten row failed every page, GetPatterns and search holding it
    (an export by id could not get past it), and DATA_LOSS did not say which pattern."""
    srv = start_server(warm_count=0)
    ids = [f"p{i:02}" for i in range(20)]
    with PatternStoreClient(srv.target) as c:
        c.store_patterns(
            [
                Pattern(id=pid, type="t", data=pid.encode() * 20, embedding=[1.0, i / 20])
                for i, pid in enumerate(ids)
            ]
        )
    srv.stop()
    _rot_payload(tmp_path / "data" / "patterns.db", "p05")
    srv = start_server(warm_count=0)
    kept = [pid for pid in ids if pid != "p05"]
    with PatternStoreClient(srv.target, retry=ONCE) as c:
        with pytest.raises(grpc.RpcError) as err:
            c.get_pattern("p05")
        assert _code(err) == grpc.StatusCode.DATA_LOSS
        assert "'p05'" in (err.value.details() or "")
        got = c.get_patterns(["p04", "p05", "p06"])
        assert [p.id for p in got.patterns] == ["p04", "p06"]
        assert list(got.missing_ids) == ["p05"]
        assert sorted(p.id for p in c.query_patterns("t", limit=100).patterns) == kept
        assert [p.id for p in c.iter_patterns("t", order_by="id", page_size=3)] == kept
        near = c.search_similar([1.0, 0.25], k=3).results
        assert len(near) == 3 and "p05" not in {r.pattern.id for r in near}


def test_a_batch_with_a_rotten_pattern_fails_that_item_only(
    start_server: Callable[..., RunningServer], tmp_path: Path
) -> None:
    """The rotten item is DATA_LOSS in its place; the items before it stay accepted and
    commit. (It once failed the whole call while the first item's outcome stayed accepted
    but never queued: read back, answered as a duplicate, and gone after a restart.)"""
    srv = start_server(warm_count=0)
    with PatternStoreClient(srv.target) as c:
        c.store_pattern(Pattern(id="p1", type="t", data=b"fine"))
        c.store_pattern(Pattern(id="bad", type="t", data=b'{"will": "rot"}' * 10))
    srv.stop()
    _rot_payload(tmp_path / "data" / "patterns.db", "bad")
    srv = start_server(warm_count=0)
    with PatternStoreClient(srv.target, retry=ONCE, timeout=10) as c:
        first, rotten, last = c.update_confidence_batch(
            [
                update_request("p1", "success", request_id="r1"),
                update_request("bad", "success"),
                update_request("p1", "failure"),
            ]
        ).results
        assert (first.code, last.code) == (0, 0)
        assert rotten.code == grpc.StatusCode.DATA_LOSS.value[0]
        assert "does not decode" in rotten.message
        with pytest.raises(grpc.RpcError) as single:
            c.update_confidence("bad", "success")
        assert _code(single) == grpc.StatusCode.DATA_LOSS
        assert c.update_confidence("p1", "success", request_id="r1").duplicate
    srv.stop()
    srv = start_server(warm_count=0)
    with PatternStoreClient(srv.target) as c:
        p1 = c.get_pattern("p1")
        assert (p1.version, p1.success_count, p1.failure_count) == (3, 1, 1)
        assert c.update_confidence("p1", "success", request_id="r1").duplicate


def test_a_rotten_pattern_can_be_stored_again_and_deleted(
    start_server: Callable[..., RunningServer], tmp_path: Path
) -> None:
    """What the DATA_LOSS reply says to do works: storing the pattern again replaces the
    rotten payload (for every pattern sharing that content), and a delete drops it."""
    content = b'{"will": "rot"}' * 10
    srv = start_server(warm_count=0)
    with PatternStoreClient(srv.target) as c:
        c.store_pattern(Pattern(id="bad", type="t", data=content))
        c.store_pattern(Pattern(id="twin", type="t", data=content))  # shares the blob
        c.store_pattern(Pattern(id="doomed", type="t", data=b"other" * 10))
        c.update_confidence("bad", "success")
    srv.stop()
    db = tmp_path / "data" / "patterns.db"
    _rot_payload(db, "bad")
    _rot_payload(db, "doomed")
    srv = start_server(warm_count=0)
    with PatternStoreClient(srv.target, retry=ONCE, timeout=10) as c:
        for pid in ("bad", "twin", "doomed"):
            with pytest.raises(grpc.RpcError) as err:
                c.get_pattern(pid)
            assert _code(err) == grpc.StatusCode.DATA_LOSS
        stored = c.store_pattern(Pattern(id="bad", type="t", data=content))
        assert stored.version == 3  # after the store and the outcome: what was learned stays
        assert c.get_pattern("bad").data == content
        assert c.get_pattern("bad").success_count == 1
        assert c.get_pattern("twin").data == content  # the shared blob was rewritten
        c.delete_pattern("doomed")
        with pytest.raises(grpc.RpcError) as gone:
            c.get_pattern("doomed")
        assert _code(gone) == grpc.StatusCode.NOT_FOUND
    srv.stop()
    srv = start_server(warm_count=0)
    with PatternStoreClient(srv.target) as c:
        assert [p.data for p in c.get_patterns(["bad", "twin"]).patterns] == [content, content]
        assert c.get_patterns(["doomed"]).missing_ids == ["doomed"]
    with apsw.Connection(str(db), flags=apsw.SQLITE_OPEN_READONLY) as conn:
        refs = conn.execute("SELECT refs FROM blobs WHERE data = x'7f00'").fetchall()
    assert refs == []  # no rotten blob is left referenced


def test_after_a_failed_commit_the_memory_is_rebuilt_from_sqlite(
    start_server: Callable[..., RunningServer], clock: FakeClock
) -> None:
    """helper-26: the memory (expiry, posteriors, vector index) had followed writes that
    then failed to commit: an expired pattern whose prune failed read again, and a lost
    type change steered SearchSimilar's and Thompson's type filters."""
    srv = start_server(clock, prune_interval_s=3600)
    expires = Timestamp(seconds=clock.now_ns // 10**9 + 10)
    with PatternStoreClient(srv.target, retry=ONCE, timeout=5) as c:
        c.store_pattern(Pattern(id="gone", type="t", data=b"x", expires_at=expires))
        c.store_pattern(Pattern(id="vec", type="a", embedding=[1.0, 0.0]))
        clock.advance(20)
        with apsw.Connection(str(srv.server.db_path)) as conn:
            conn.execute(
                "CREATE TRIGGER refuse_deletes BEFORE DELETE ON patterns "
                "BEGIN SELECT RAISE(ABORT, 'deletes refused by the test'); END"
            )
        # Accepted, then lost with the failed batch: a type change a -> b.
        c.store_pattern(
            Pattern(id="vec", type="b", embedding=[1.0, 0.0]), durability=DURABILITY_QUEUED
        )
        with pytest.raises(grpc.RpcError):
            c.prune_patterns()  # deleting the expired one fails for good

        def rebuilt() -> None:
            # Assertions only (no pytest.raises): _eventually retries on them.
            assert c.get_patterns(["gone"]).missing_ids == ["gone"]
            assert [r.pattern.id for r in c.search_similar([1.0, 0.0], k=5, type="b").results] == []
            assert [p.id for p in c.query_patterns("b", order_by="thompson").patterns] == []
            assert c.get_pattern("vec").type == "a"

        _eventually(rebuilt, timeout=10.0)


def test_a_failed_commit_refuses_writes_and_reads_still_tell_the_truth(
    start_server: Callable[..., RunningServer], tmp_path: Path
) -> None:
    # A fault SQLite reports as permanent (a constraint, here a trigger another process
    # added) fails the commit for good: the server must not retry it forever, must
    # refuse further writes, and must not answer reads from a memory that followed the
    # write that never committed.
    srv = start_server()
    with PatternStoreClient(srv.target, retry=ONCE, timeout=5) as c:
        c.store_pattern(Pattern(id="kept", type="t", data=b"still here"))
        c.store_pattern(Pattern(id="other", type="t"))
        with apsw.Connection(str(tmp_path / "data" / "patterns.db")) as conn:
            conn.execute(
                "CREATE TRIGGER refuse_deletes BEFORE DELETE ON patterns "
                "BEGIN SELECT RAISE(ABORT, 'deletes refused by the test'); END"
            )
        with pytest.raises(grpc.RpcError) as failed:
            c.delete_pattern("kept")
        assert _code(failed) == grpc.StatusCode.INTERNAL
        assert "deletes refused by the test" in (failed.value.details() or "")
        # The delete never committed, so the pattern is still there: not NOT_FOUND.
        assert c.get_pattern("kept").data == b"still here"
        assert not c.get_patterns(["kept", "other"]).missing_ids
        with pytest.raises(grpc.RpcError) as refused:
            c.store_pattern(Pattern(id="later", type="t"))
        assert _code(refused) == grpc.StatusCode.UNAVAILABLE
        assert "restart the server" in (refused.value.details() or "")
        assert c.health() == "NOT_SERVING"
    srv.stop()
    with apsw.Connection(str(tmp_path / "data" / "patterns.db")) as conn:
        conn.execute("DROP TRIGGER refuse_deletes")
    srv = start_server()
    with PatternStoreClient(srv.target, retry=ONCE, timeout=5) as c:
        assert c.get_pattern("kept").data == b"still here"
        c.delete_pattern("kept")  # and writes work again after the restart
        with pytest.raises(grpc.RpcError) as gone:
            c.get_pattern("kept")
        assert _code(gone) == grpc.StatusCode.NOT_FOUND
