"""Nothing acknowledged is lost: kill -9 mid-stream, and SIGTERM drains the queue."""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import apsw
import grpc
import pytest
from patternstore import (
    DURABILITY_QUEUED,
    Pattern,
    PatternStoreClient,
    RetryPolicy,
    update_request,
)

from .conftest import RunningServer
from .proc import ServerProcess, server_command


@dataclass
class Ledger:
    """What the server acknowledged with DURABILITY_COMMITTED, per pattern."""

    versions: dict[str, int] = field(default_factory=dict)
    confidence: dict[str, float] = field(default_factory=dict)
    deleted: set[str] = field(default_factory=set)
    acks: int = 0
    in_flight: str = ""  # the id of the call the kill may have interrupted


def _worker(target: str, name: str, ledger: Ledger, stop: threading.Event) -> None:
    no_retry = RetryPolicy(attempts=1)
    with PatternStoreClient(target, timeout=5, retry=no_retry) as c:
        i = 0
        while not stop.is_set():
            pid = f"{name}-{i % 40}"
            ledger.in_flight = pid
            try:
                if i % 3 == 0:
                    r = c.store_pattern(Pattern(id=pid, type="crash", data=f"{name}:{i}".encode()))
                    ledger.versions[pid] = r.version
                    ledger.confidence.pop(pid, None)
                    ledger.deleted.discard(pid)
                elif i % 17 == 0 and pid in ledger.versions:
                    c.delete_pattern(pid)
                    ledger.deleted.add(pid)
                    ledger.versions.pop(pid)
                    ledger.confidence.pop(pid, None)
                elif pid in ledger.versions:
                    u = c.update_confidence(pid, "success" if i % 2 else "failure")
                    ledger.versions[pid] += 1
                    ledger.confidence[pid] = u.confidence
                ledger.acks += 1
            except grpc.RpcError:
                return  # the server is gone: whatever was in flight was never acknowledged
            i += 1


def test_kill9_loses_no_acknowledged_write(tmp_path: Path) -> None:
    data = tmp_path / "data"
    server = ServerProcess(data)
    ledgers = {f"w{n}": Ledger() for n in range(4)}
    stop = threading.Event()
    threads = [
        threading.Thread(target=_worker, args=(server.target, n, led, stop))
        for n, led in ledgers.items()
    ]
    try:
        for t in threads:
            t.start()
        # Kill once every worker has some acknowledged writes (however slow the machine),
        # plus a moment so the kill lands mid-call.
        deadline = time.monotonic() + 60
        while min(led.acks for led in ledgers.values()) < 30 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.2)
        server.kill9()  # mid-stream: the workers are still writing
        stop.set()
        for t in threads:
            t.join(10)
    finally:
        server.close()
    acks = sum(led.acks for led in ledgers.values())
    print(f"acknowledged writes before the kill: {acks}")
    assert min(led.acks for led in ledgers.values()) >= 30, "a worker never got going"

    with apsw.Connection(str(data / "patterns.db")) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    restarted = ServerProcess(data)
    try:
        with PatternStoreClient(restarted.target) as c:
            for led in ledgers.values():
                ids = sorted(led.versions)
                got = {p.id: p for p in c.get_patterns(ids).patterns}
                for pid in ids:
                    assert pid in got, f"acknowledged pattern {pid} was lost"
                    # The write in flight at the kill may have landed too: at most one more.
                    assert got[pid].version in (led.versions[pid], led.versions[pid] + 1), pid
                    if got[pid].version == led.versions[pid] and pid in led.confidence:
                        assert got[pid].confidence == led.confidence[pid]
                # An acknowledged delete stays deleted (unless the unacknowledged call in
                # flight at the kill stored the id again).
                gone = sorted(led.deleted - {led.in_flight})
                found = [p.id for p in c.get_patterns(gone).patterns] if gone else []
                assert not found, f"acknowledged deletes came back: {found}"
            # A restart hands out sequences above every earlier one.
            stats = c.get_stats()
            assert (
                c.store_pattern(Pattern(id="after", type="crash")).sequence > stats.durable_sequence
            )
    finally:
        restarted.close()


def test_sigterm_drains_queued_writes(tmp_path: Path) -> None:
    data = tmp_path / "data"
    # A long batch window: the queued writes are certainly not committed when SIGTERM lands.
    server = ServerProcess(data, "--max-delay-ms", "5000")
    try:
        with PatternStoreClient(server.target) as c:
            for i in range(200):
                c.store_pattern(Pattern(id=f"q{i}", type="drain"), durability=DURABILITY_QUEUED)
            assert c.get_stats().durable_sequence < 200
        assert server.terminate() == 0
        assert "draining" in server.log()
    finally:
        server.close()
    assert not (data / "patterns.db-wal").exists() or (data / "patterns.db-wal").stat().st_size == 0
    restarted = ServerProcess(data)
    try:
        with PatternStoreClient(restarted.target) as c:
            assert c.get_stats().patterns == 200
    finally:
        restarted.close()


def test_sigterm_waits_for_a_healthy_writer_past_the_grace_period(tmp_path: Path) -> None:
    data = tmp_path / "data"
    server = ServerProcess(data, "--grace-s", "0.3")
    try:
        with PatternStoreClient(server.target) as c:
            c.store_pattern(Pattern(id="first", type="drain"))
            # Every insert now costs a 3,375,000-row join (~30 ms here): 60 queued
            # stores take the writer well past the 0.3 s grace, yet it is healthy.
            with apsw.Connection(str(data / "patterns.db")) as conn:
                conn.setbusytimeout(5000)
                conn.execute(
                    "CREATE TABLE slow(x);"
                    "WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n WHERE x < 150)"
                    " INSERT INTO slow SELECT x FROM n;"
                    "CREATE TRIGGER slow_inserts BEFORE INSERT ON patterns"
                    " BEGIN SELECT count(*) FROM slow a, slow b, slow c; END"
                )
            for i in range(60):
                c.store_pattern(Pattern(id=f"q{i}", type="drain"), durability=DURABILITY_QUEUED)
            assert c.get_stats().durable_sequence < 61
        assert server.terminate() == 0
        assert "waiting for the writer to commit" in server.log()
    finally:
        server.close()
    with apsw.Connection(str(data / "patterns.db"), flags=apsw.SQLITE_OPEN_READONLY) as conn:
        assert conn.execute("SELECT count(*) FROM patterns").fetchall() == [(61,)]


def test_a_committed_call_that_writes_nothing_still_makes_earlier_writes_durable(
    start_server: Callable[..., RunningServer],
) -> None:
    """A COMMITTED reply makes the caller's earlier QUEUED writes durable, whatever the
    call itself wrote: the chaos test once lost QUEUED outcomes acknowledged by a batch
    whose ids were all unknown, which the server had answered without waiting."""
    # QUEUED writes stay in the queue (queued_delay_ms) until a call waits for them.
    server = start_server(max_delay_ms=1.0, queued_delay_ms=60_000.0, max_batch=10_000)
    engine = server.server.engine
    with PatternStoreClient(server.target, timeout=10) as c:
        c.store_pattern(Pattern(id="known", type="t"))
        calls: list[Callable[[], object]] = [
            lambda: c.update_confidence_batch([update_request("unknown", "success")]),
            lambda: c.store_patterns([]),
            lambda: c.update_confidence("known", "success", request_id="once"),
        ]
        for call in calls:
            queued = c.update_confidence("known", "failure", durability=DURABILITY_QUEUED)
            assert server.call(lambda: engine.durable_sequence) < queued.sequence
            call()
            assert server.call(lambda: engine.durable_sequence) >= queued.sequence
        # The duplicate of "once" (already durable) still waits for the newer QUEUED write.
        queued = c.update_confidence("known", "failure", durability=DURABILITY_QUEUED)
        again = c.update_confidence("known", "success", request_id="once")
        assert again.duplicate
        assert server.call(lambda: engine.durable_sequence) >= queued.sequence
        # A COMMITTED call refused for its content is a reply too (helper-23: each of
        # these answered at once, and a kill -9 then lost the QUEUED write before it).
        refusals: list[Callable[[], object]] = [
            lambda: c.update_confidence("unknown", "success"),
            lambda: c.delete_pattern("unknown"),
            lambda: c.store_pattern(Pattern(id="known", type="t"), create_only=True),
            lambda: c.store_pattern(Pattern(id="known", type="t"), expected_version=99),
            lambda: c.store_patterns([Pattern(id="x", type="t"), Pattern(id="", type="BAD")]),
            lambda: c.update_confidence("known", "success", weight=float("nan")),
        ]
        for refused in refusals:
            queued = c.update_confidence("known", "failure", durability=DURABILITY_QUEUED)
            with pytest.raises(grpc.RpcError):
                refused()
            assert server.call(lambda: engine.durable_sequence) >= queued.sequence, refused


def test_queued_writes_wait_for_queued_delay_unless_someone_waits(
    start_server: Callable[..., RunningServer],
) -> None:
    # A batch only QUEUED writes wait in stays open for queued_delay_ms; a COMMITTED
    # call, a Flush or a stream's end closes it at max_delay_ms.
    srv = start_server(max_delay_ms=1.0, queued_delay_ms=60_000.0)
    # A call left waiting for the 60 s batch fails DEADLINE_EXCEEDED instead.
    with PatternStoreClient(srv.target, timeout=20) as c:
        r = c.store_pattern(Pattern(id="q", type="t"), durability=DURABILITY_QUEUED)
        time.sleep(0.3)
        assert c.get_stats().durable_sequence < r.sequence  # still in the open batch
        c.store_pattern(Pattern(id="c", type="t"))  # COMMITTED: closes the batch now
        assert c.get_stats().durable_sequence >= r.sequence
        r = c.store_pattern(Pattern(id="q2", type="t"), durability=DURABILITY_QUEUED)
        time.sleep(0.1)
        assert c.get_stats().durable_sequence < r.sequence
        assert c.flush().durable_sequence >= r.sequence  # a Flush closes it too
        # A stream's own outcomes are QUEUED; its end waits for them, promptly.
        reply = c.record_outcomes([update_request("q", "success")] * 3)
        assert reply.accepted == 3 and reply.durable_sequence >= r.sequence + 3
    srv.stop()
    srv = start_server(max_delay_ms=1.0, queued_delay_ms=50.0)
    with PatternStoreClient(srv.target) as c:
        r = c.store_pattern(Pattern(id="q", type="t"), durability=DURABILITY_QUEUED)
        deadline = time.monotonic() + 10
        while c.get_stats().durable_sequence < r.sequence:  # committed with nobody asking
            assert time.monotonic() < deadline
            time.sleep(0.01)


def test_a_stop_with_the_writer_stuck_exits_1_and_counts_what_is_lost(tmp_path: Path) -> None:
    """helper-25: with another process holding the write lock, SIGTERM exited 0 and
    logged "0 queued writes are not committed" while 20 acknowledged QUEUED writes were
    lost (the batch being retried was not counted)."""
    data = tmp_path / "data"
    server = ServerProcess(data, "--busy-timeout-ms", "50", "--grace-s", "1")
    other = apsw.Connection(str(data / "patterns.db"))
    try:
        other.execute("BEGIN IMMEDIATE")
        with PatternStoreClient(server.target, timeout=10) as c:
            for i in range(5):
                c.store_pattern(Pattern(id=f"q{i}", type="t"), durability=DURABILITY_QUEUED)
        assert server.terminate() == 1
        assert "5 acknowledged writes are not committed and are lost" in server.log()
    finally:
        other.execute("ROLLBACK")
        other.close()
        server.close()


def test_signals_are_handled_from_the_start_and_a_third_exits_at_once(tmp_path: Path) -> None:
    """helper-25: the handlers came after start-up, so a SIGTERM while the memory loaded
    killed the process unlogged (and PID 1 in a container ignores it); repeated signals
    during a drain were silently ignored."""
    data = tmp_path / "data"
    server = ServerProcess(data, loading=True)  # the port is bound, start-up goes on
    try:
        assert server.terminate() == 0
        assert "patternstore draining" in server.log()
    finally:
        server.close()
    server = ServerProcess(data, "--grace-s", "30")
    try:
        release = threading.Event()

        def outcomes() -> Iterator[Any]:
            release.wait(30)  # an outcome stream left open keeps the drain waiting
            yield update_request("x", "success")

        with PatternStoreClient(server.target) as c:
            caller = threading.Thread(target=_ignore_errors, args=(c.record_outcomes, outcomes()))
            caller.start()
            time.sleep(0.2)
            for _ in range(3):
                server.proc.send_signal(signal.SIGTERM)
                time.sleep(0.3)
            assert server.proc.wait(10) == 1
            release.set()
            caller.join(10)
        log = server.log()
        assert "signal again to exit now" in log and "exiting now, without draining" in log
    finally:
        server.close()


def test_start_failures_are_one_line_in_the_log(tmp_path: Path) -> None:
    """helper-25: a port in use, a newer schema or a file that is not a database printed
    a traceback; under TLS a port in use was blamed on the certificate."""
    data = tmp_path / "data"
    ServerProcess(data).terminate()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        stderr = _failed_start(data, f"127.0.0.1:{port}")
    assert f"cannot start: cannot bind listen=127.0.0.1:{port}" in stderr
    with apsw.Connection(str(data / "patterns.db")) as conn:
        conn.execute("INSERT INTO schema_migrations (version, name) VALUES (9999, 'future')")
    stderr = _failed_start(data, "127.0.0.1:0")
    assert "cannot start:" in stderr and "newer patternstore" in stderr


def _failed_start(data: Path, listen: str) -> str:
    """Run a server that must fail to start: exit 1 and no traceback; its stderr."""
    command = [*server_command(), "--data-dir", str(data), "--listen", listen]
    r = subprocess.run(
        [*command, "--metrics-listen", ""], capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 1, r.stderr
    assert "Traceback" not in r.stderr
    return r.stderr


def _ignore_errors(fn: Callable[..., Any], *args: Any) -> None:
    with contextlib.suppress(grpc.RpcError):
        fn(*args)
