"""Tokens and roles, TLS and mutual TLS, backups, and the overload hint."""

from __future__ import annotations

import contextlib
import resource
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from patternstore import DURABILITY_QUEUED, Pattern, PatternStoreClient

from .conftest import FakeClock, RunningServer, self_signed_cert
from .proc import ServerProcess


def _code(exc: pytest.ExceptionInfo[grpc.RpcError]) -> grpc.StatusCode:
    return exc.value.code()  # type: ignore[attr-defined, no-any-return]


@pytest.fixture
def tokens(tmp_path: Path) -> Path:
    path = tmp_path / "tokens"
    path.write_text("# token role\nr-token read\nw-token write\na-token admin\n")
    return path


def test_roles(start_server: Any, clock: FakeClock, tokens: Path, tmp_path: Path) -> None:
    srv = start_server(clock, auth_tokens_file=str(tokens))
    with PatternStoreClient(srv.target, token="a-token") as admin:
        admin.store_pattern(Pattern(id="p", type="t"))
        assert admin.get_stats().patterns == 1
    with PatternStoreClient(srv.target) as anonymous:
        with pytest.raises(grpc.RpcError) as exc:
            anonymous.get_pattern("p")
        assert _code(exc) == grpc.StatusCode.UNAUTHENTICATED
        assert anonymous.health() == "SERVING"  # health stays open
    with PatternStoreClient(srv.target, token="wrong") as stranger:
        with pytest.raises(grpc.RpcError) as exc:
            stranger.get_pattern("p")
        assert _code(exc) == grpc.StatusCode.UNAUTHENTICATED
    with PatternStoreClient(srv.target, token="r-token") as reader:
        assert reader.get_pattern("p").id == "p"
        with pytest.raises(grpc.RpcError) as exc:
            reader.store_pattern(Pattern(id="q", type="t"))
        assert _code(exc) == grpc.StatusCode.PERMISSION_DENIED
        assert "write" in exc.value.details()  # type: ignore[attr-defined]
        with pytest.raises(grpc.RpcError) as exc:
            reader.record_outcomes([])
        assert _code(exc) == grpc.StatusCode.PERMISSION_DENIED
    with PatternStoreClient(srv.target, token="w-token") as writer:
        writer.store_pattern(Pattern(id="q", type="t"))
        writer.delete_pattern("q")
        writer.flush()
        with pytest.raises(grpc.RpcError) as exc:
            writer.get_stats()
        assert _code(exc) == grpc.StatusCode.PERMISSION_DENIED
        out = tmp_path / "copy.db"
        with pytest.raises(grpc.RpcError) as exc:
            writer.backup(str(out))
        assert _code(exc) == grpc.StatusCode.PERMISSION_DENIED
        assert not out.exists() and not (tmp_path / "copy.db.partial").exists()


def test_a_tokens_file_others_may_write_is_refused(
    start_server: Any, clock: FakeClock, tokens: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Like ssh with a private key: anyone who may write the file may add an admin
    token, so the server does not start. Readable by others only warns (a Kubernetes
    secret volume mounts 0644 by default)."""
    tokens.chmod(0o666)
    with pytest.raises(ValueError, match="chmod go-w"):
        start_server(clock, auth_tokens_file=str(tokens))
    tokens.chmod(0o620)
    with pytest.raises(ValueError, match="writable by group or others"):
        start_server(clock, auth_tokens_file=str(tokens))
    tokens.chmod(0o644)
    with caplog.at_level("WARNING", logger="patternstore_server.auth"):
        srv = start_server(clock, auth_tokens_file=str(tokens))
    assert "readable by every user" in caplog.text
    with PatternStoreClient(srv.target, token="a-token") as admin:
        admin.store_pattern(Pattern(id="p", type="t"))
    srv.stop()
    caplog.clear()
    tokens.chmod(0o600)
    with caplog.at_level("WARNING", logger="patternstore_server.auth"):
        start_server(clock, auth_tokens_file=str(tokens))
    assert "readable" not in caplog.text


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture
def certs(tmp_path: Path) -> Path:
    d = tmp_path / "certs"
    d.mkdir()
    self_signed_cert(d, "test-ca", "ca")
    for name, ext in (
        ("server", "subjectAltName=IP:127.0.0.1,DNS:localhost"),
        ("client", "extendedKeyUsage=clientAuth"),
    ):
        _openssl(
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            f"/CN={name}",
            "-keyout",
            f"{name}.key",
            "-out",
            f"{name}.csr",
            cwd=d,
        )
        (d / f"{name}.ext").write_text(ext + "\n")
        _openssl(
            "x509",
            "-req",
            "-in",
            f"{name}.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            f"{name}.ext",
            "-out",
            f"{name}.pem",
            cwd=d,
        )
    return d


def test_tls_and_mutual_tls(start_server: Any, clock: FakeClock, certs: Path) -> None:
    srv = start_server(clock, tls_cert=str(certs / "server.pem"), tls_key=str(certs / "server.key"))
    with PatternStoreClient(srv.target, tls_ca=str(certs / "ca.pem")) as c:
        c.store_pattern(Pattern(id="p", type="t"))
        assert c.get_pattern("p").id == "p"
    with PatternStoreClient(srv.target, timeout=3) as plain:  # plaintext to a TLS port
        with pytest.raises(grpc.RpcError) as exc:
            plain.get_pattern("p")
        assert _code(exc) == grpc.StatusCode.UNAVAILABLE
    srv.stop()  # one server per data directory (a second is refused while it runs)
    mtls = start_server(
        clock,
        tls_cert=str(certs / "server.pem"),
        tls_key=str(certs / "server.key"),
        tls_client_ca=str(certs / "ca.pem"),
    )
    with PatternStoreClient(mtls.target, tls_ca=str(certs / "ca.pem"), timeout=3) as no_cert:
        with pytest.raises(grpc.RpcError) as exc:
            no_cert.get_stats()
        assert _code(exc) == grpc.StatusCode.UNAVAILABLE
    with PatternStoreClient(
        mtls.target,
        tls_ca=str(certs / "ca.pem"),
        tls_cert=str(certs / "client.pem"),
        tls_key=str(certs / "client.key"),
    ) as c:
        assert c.get_pattern("p").id == "p"


def test_online_backup_holds_every_acknowledged_write(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "data")
    try:
        with PatternStoreClient(server.target) as c:
            for lo in (0, 1000):
                c.store_patterns(
                    [
                        Pattern(id=f"before-{i}", type="b", data=b"x" * 300)
                        for i in range(lo, lo + 1000)
                    ]
                )
            c.update_confidence("before-7", "success")
            acked = c.get_pattern("before-7")
            stop = threading.Event()

            written: list[int] = []
            failures: list[BaseException] = []

            def keep_writing() -> None:
                try:
                    with PatternStoreClient(server.target) as w:
                        i = 0
                        while not stop.is_set():
                            w.store_pattern(Pattern(id=f"during-{i}", type="d"))
                            i += 1
                        written.append(i)
                except BaseException as exc:  # reported by the test, not lost in the thread
                    failures.append(exc)

            writer = threading.Thread(target=keep_writing)
            writer.start()
            try:
                out = tmp_path / "copy.db"
                r = subprocess.run(
                    [
                        sys.executable,
                        "-m",
                        "patternstore.cli",
                        "--target",
                        server.target,
                        "backup",
                        "--out",
                        str(out),
                    ],
                    capture_output=True,
                    text=True,
                    timeout=120,
                )
            finally:
                stop.set()
                writer.join(30)
            assert r.returncode == 0, r.stderr
            assert '"integrity": "ok"' in r.stdout
            # Writes kept being served while the backup ran.
            assert not failures, failures
            assert written and written[0] > 0
    finally:
        server.close()
    restored = tmp_path / "restored"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "patternstore.cli",
            "restore",
            str(out),
            "--data-dir",
            str(restored),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    again = ServerProcess(restored)
    try:
        with PatternStoreClient(again.target) as c:
            for lo in (0, 1000):
                got = c.get_patterns([f"before-{i}" for i in range(lo, lo + 1000)])
                assert not got.missing_ids
            p = c.get_pattern("before-7")
            assert (p.version, p.confidence) == (acked.version, acked.confidence)
    finally:
        again.close()
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "patternstore.cli",
            "restore",
            str(out),
            "--data-dir",
            str(restored),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2 and "--force" in r.stderr  # never overwrites by accident


def test_a_key_that_does_not_match_the_certificate_is_named_at_start(
    tmp_path: Path, certs: Path
) -> None:
    """gRPC reports it as 'Failed to bind to address': the server names the files."""
    _, other_key = self_signed_cert(certs, "other", "other")
    with pytest.raises(RuntimeError, match="check they are PEM and the key matches") as exc:
        ServerProcess(
            tmp_path / "data",
            "--tls-cert",
            str(certs / "server.pem"),
            "--tls-key",
            str(other_key),
        )
    assert "Traceback" not in str(exc.value)


def _restore(source: Path, data_dir: Path, *extra: str, fsize: int = 0) -> Any:
    def limit() -> None:
        if fsize:  # a disk that fills up during the copy (Python ignores SIGXFSZ)
            resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))

    cli = [sys.executable, "-m", "patternstore.cli"]
    return subprocess.run(
        [*cli, "restore", str(source), "--data-dir", str(data_dir), *extra],
        capture_output=True,
        text=True,
        timeout=60,
        preexec_fn=limit,
    )


def test_restore_refuses_a_live_directory_and_a_failed_one_keeps_the_database(
    tmp_path: Path,
) -> None:
    """restore --force once replaced a running server's database under it (writes it
    acknowledged afterwards were lost), and deleted the WAL before copying, so a copy
    that failed lost what a crash had left there."""
    backup_dir = tmp_path / "backup"
    source = ServerProcess(backup_dir)
    try:
        with PatternStoreClient(source.target) as c:
            c.store_patterns([Pattern(id=f"b{i}", type="t", data=b"x" * 1000) for i in range(300)])
        assert source.terminate() == 0
    finally:
        source.close()
    backup = backup_dir / "patterns.db"

    data = tmp_path / "data"
    live = ServerProcess(data)
    try:
        with PatternStoreClient(live.target) as c:
            c.store_patterns([Pattern(id=f"q{i}", type="t") for i in range(100)])
        r = _restore(backup, data, "--force")
        assert r.returncode == 2, r.stdout
        assert "in use by patternstore-server" in r.stderr
        with pytest.raises(RuntimeError, match="in use by patternstore-server"):
            ServerProcess(data)  # nor does a second server share the file
        with PatternStoreClient(live.target) as c:
            c.store_pattern(Pattern(id="after", type="t"))
        live.kill9()  # the WAL now holds committed writes
    finally:
        live.close()

    r = _restore(backup, data, "--force", fsize=64 * 1024)
    assert r.returncode == 2 and "File too large" in r.stderr, r.stderr
    assert sorted(p.name for p in data.iterdir() if "restoring" in p.name) == []
    again = ServerProcess(data)
    try:
        with PatternStoreClient(again.target) as c:
            kept = c.get_patterns([*(f"q{i}" for i in range(100)), "after"])
            assert not kept.missing_ids
    finally:
        again.close()
    r = _restore(backup, data, "--force")  # stopped now: replaced
    assert r.returncode == 0, r.stderr
    restored = ServerProcess(data)
    try:
        with PatternStoreClient(restored.target) as c:
            assert c.get_patterns(["q0", "b299"]).missing_ids == ["q0"]
    finally:
        restored.close()


def test_overload_carries_a_retry_hint(start_server: Any, clock: FakeClock) -> None:
    # QUEUED writes stay queued (queued_delay_ms) however slowly the calls arrive.
    srv = start_server(clock, max_queue=2, max_delay_ms=1.0, queued_delay_ms=60_000.0)
    with PatternStoreClient(srv.target) as c:
        c.store_pattern(Pattern(id="a", type="t"), durability=DURABILITY_QUEUED)
        c.store_pattern(Pattern(id="b", type="t"), durability=DURABILITY_QUEUED)
        with pytest.raises(grpc.RpcError) as exc:
            c.store_pattern(Pattern(id="c", type="t"), durability=DURABILITY_QUEUED)
        assert _code(exc) == grpc.StatusCode.RESOURCE_EXHAUSTED
        trailers = dict(exc.value.trailing_metadata())  # type: ignore[attr-defined]
        hint_ms = int(trailers["retry-after-ms"])
        assert hint_ms >= 1
        # The refusal also closes the lazy batch: the queue drains in about the hinted
        # time, not after the 60 s queued delay.
        deadline = time.monotonic() + 10
        while True:
            time.sleep(hint_ms / 1000)
            try:
                c.store_pattern(Pattern(id="c", type="t"), durability=DURABILITY_QUEUED)
                break
            except grpc.RpcError as again:
                assert _code(again) == grpc.StatusCode.RESOURCE_EXHAUSTED  # type: ignore[arg-type]
                assert time.monotonic() < deadline, "the full queue never drained"


def test_oversized_message_is_refused(start_server: Any, clock: FakeClock) -> None:
    srv = start_server(clock, max_receive_bytes=1024 * 1024)
    with PatternStoreClient(srv.target) as c:
        with pytest.raises(grpc.RpcError) as exc:
            c.store_patterns([Pattern(id=f"p{i}", type="t", data=b"x" * 600_000) for i in range(2)])
        assert _code(exc) == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert c.store_pattern(Pattern(id="ok", type="t")).created
    with grpc.insecure_channel(srv.target) as ch:
        reply = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=""))
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_the_side_port_drops_stalled_connections_and_bounds_them(server: RunningServer) -> None:
    """helper-27: 300 half-sent requests held 312 threads (and up to 6.5 MB of headers
    each) for as long as the client liked, on a port with no authentication."""
    port = server.server.metrics_port
    threads_before = threading.active_count()
    stalled = []
    for _ in range(40):
        conn = socket.create_connection(("127.0.0.1", port), timeout=10)
        conn.sendall(b"GET /metrics HTTP/1.1\r\nX-Slow: ")
        stalled.append(conn)
    time.sleep(0.5)
    assert threading.active_count() - threads_before <= 16  # the cap, not one per client
    deadline = time.monotonic() + 15
    for conn in stalled:  # each is closed by the server: refused, or timed out
        conn.settimeout(max(0.1, deadline - time.monotonic()))
        with contextlib.suppress(ConnectionResetError):
            assert conn.recv(1024) == b""
        conn.close()
    url = f"http://127.0.0.1:{port}/healthz"
    assert urllib.request.urlopen(url, timeout=5).status == 200


def test_backup_copies_a_crash_left_behind_are_removed_at_start(
    start_server: Any, clock: FakeClock, tmp_path: Path
) -> None:
    """helper-27: each Backup stream makes a full-size copy beside the database; a
    kill -9 mid-stream left it there for good, and enough of them fill the disk."""
    data = tmp_path / "data"
    data.mkdir()
    orphan = data / "backup-1796000000000000000.db"
    orphan.write_bytes(b"x" * 4096)
    keep = data / "backup-notes.txt"  # not a copy the server made
    keep.write_text("mine")
    srv = start_server(clock)
    with PatternStoreClient(srv.target) as c:
        c.backup(str(tmp_path / "copy.db"))
    assert not orphan.exists() and keep.exists()
    assert sorted(p.name for p in data.glob("backup-*")) == ["backup-notes.txt"]


def test_a_reply_stops_short_of_max_send_bytes(start_server: Any, clock: FakeClock) -> None:
    """helper-27: 1000 ids of 1 MiB payloads (stored once, thanks to dedup) made one
    GetPatterns build a 1 GB reply. Past max_send_bytes: GetPatterns is refused with
    RESOURCE_EXHAUSTED (no retry hint: ask for fewer), a QueryPatterns page ends early
    and its token goes on from there."""
    srv = start_server(clock, max_send_bytes=16 * 2**20)
    body = b"x" * (2**20 - 64)
    ids = [f"big{i:02}" for i in range(24)]
    with PatternStoreClient(srv.target) as c:
        for half in (ids[:12], ids[12:]):  # each call under max_receive_bytes
            c.store_patterns([Pattern(id=pid, type="big", data=body) for pid in half])
        with pytest.raises(grpc.RpcError) as exc:
            c.get_patterns(ids)
        assert _code(exc) == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "max_send_bytes" in exc.value.details()  # type: ignore[attr-defined]
        assert "retry-after-ms" not in dict(exc.value.trailing_metadata())  # type: ignore[attr-defined]
        assert len(c.get_patterns(ids[:10]).patterns) == 10
        first = c.query_patterns("big", order_by="id", limit=100)
        assert 0 < len(first.patterns) < 24 and first.next_page_token
        paged = [p.id for p in c.iter_patterns("big", order_by="id", page_size=100)]
        assert paged == ids
        thompson = c.query_patterns("big", order_by="thompson", limit=100, seed=3)
        assert 0 < len(thompson.patterns) < 24 and thompson.next_page_token


def test_the_call_limit_counts_patternstore_calls_only(
    start_server: Any, clock: FakeClock, tokens: Path
) -> None:
    """helper-27: grpc's limit counted the open health and reflection streams too, so
    with auth on, anonymous Health.Watch streams locked every caller with a token out."""
    srv = start_server(clock, auth_tokens_file=str(tokens), max_concurrent_rpcs=2)
    release = threading.Event()

    def held() -> Iterator[Any]:
        release.wait(30)
        yield from ()

    with grpc.insecure_channel(srv.target) as anonymous:
        watches = [
            health_pb2_grpc.HealthStub(anonymous).Watch(health_pb2.HealthCheckRequest())
            for _ in range(3)
        ]
        for watch in watches:
            next(watch)  # each stream is open: its first status arrived
        with PatternStoreClient(srv.target, token="a-token") as c:
            c.store_pattern(Pattern(id="p", type="t"))
            assert c.get_pattern("p").id == "p"
            streams = [
                threading.Thread(target=_quietly, args=(c.record_outcomes, held()))
                for _ in range(2)
            ]
            for t in streams:
                t.start()
            deadline = time.monotonic() + 10
            while srv.server.servicer.in_flight < 2:
                assert time.monotonic() < deadline
                time.sleep(0.01)
            with pytest.raises(grpc.RpcError) as exc:
                c.get_pattern("p")
            assert _code(exc) == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "max_concurrent_rpcs" in exc.value.details()  # type: ignore[attr-defined]
            release.set()
            for t in streams:
                t.join(10)
            assert c.get_pattern("p").id == "p"
        for watch in watches:
            watch.cancel()


def _quietly(fn: Any, *args: Any) -> None:
    with contextlib.suppress(grpc.RpcError):
        fn(*args)
