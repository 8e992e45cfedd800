"""Every RPC end to end through the real client, a real server and a real SQLite file."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import apsw
import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from patternstore import (
    CONSISTENCY_STRONG,
    DURABILITY_QUEUED,
    AsyncPatternStoreClient,
    Pattern,
    PatternStoreClient,
    RetryPolicy,
    StorePatternRequest,
    Trajectory,
    update_request,
)

from .conftest import FakeClock, RunningServer
from .proc import ServerProcess


def _pattern(pid: str, ptype: str = "plan", **kw: object) -> Pattern:
    fields: dict[str, object] = {"name": f"name {pid}", "data": b'{"steps":[1,2]}'}
    fields.update(kw)
    return Pattern(id=pid, type=ptype, **fields)  # type: ignore[arg-type]


def _code(exc: pytest.ExceptionInfo[grpc.RpcError]) -> grpc.StatusCode:
    return exc.value.code()  # type: ignore[attr-defined, no-any-return]


def test_store_then_get_round_trips_every_caller_field(client: PatternStoreClient) -> None:
    sent = Pattern(
        id="p-1",
        type="tool.use",
        name="grep first",
        description="search before edit",
        data=bytes(range(256)),
        embedding=[0.25, -1.5, 3.0],
        trajectory=Trajectory(dims=2, values=[0.1, 0.2, 0.3, -0.0]),
        metadata={"task": "refactor", "lang": "py"},
        # Server-maintained fields are ignored on store.
        confidence=0.99,
        alpha=50,
        usage_count=7,
        version=42,
    )
    r = client.store_pattern(sent)
    assert (r.id, r.version, r.created) == ("p-1", 1, True)
    assert r.sequence > 0
    got = client.get_pattern("p-1")
    for field in ("id", "type", "name", "description", "data", "embedding", "metadata"):
        assert getattr(got, field) == getattr(sent, field), field
    assert got.trajectory == sent.trajectory
    assert (got.confidence, got.alpha, got.beta, got.usage_count, got.version) == (0.5, 1, 1, 0, 1)
    assert got.created_at == got.updated_at
    assert not got.HasField("last_outcome_at")


def test_get_missing_is_not_found(client: PatternStoreClient) -> None:
    with pytest.raises(grpc.RpcError) as exc:
        client.get_pattern("nope")
    assert _code(exc) == grpc.StatusCode.NOT_FOUND
    assert "nope" in exc.value.details()  # type: ignore[attr-defined]


def test_get_patterns_keeps_request_order_and_lists_missing(client: PatternStoreClient) -> None:
    client.store_patterns([_pattern("a"), _pattern("b"), _pattern("c")])
    client.get_pattern("b")  # one from the cache, the rest from SQLite
    r = client.get_patterns(["c", "x", "a", "b", "y", "c"])
    assert [p.id for p in r.patterns] == ["c", "a", "b", "c"]
    assert list(r.missing_ids) == ["x", "y"]


def test_update_keeps_learned_fields_and_bumps_version(
    client: PatternStoreClient, clock: FakeClock
) -> None:
    client.store_pattern(_pattern("p"))
    created = client.get_pattern("p").created_at
    client.update_confidence("p", "success")
    clock.advance(10)
    r = client.store_pattern(_pattern("p", name="renamed"))
    assert (r.version, r.created) == (3, False)
    got = client.get_pattern("p")
    assert got.name == "renamed"
    assert (got.alpha, got.beta, got.usage_count, got.success_count) == (2.0, 1.0, 1, 1)
    assert got.created_at == created
    assert got.updated_at.ToNanoseconds() == created.ToNanoseconds() + 10 * 10**9


def test_expected_version_and_create_only(client: PatternStoreClient) -> None:
    client.store_pattern(_pattern("p"))
    with pytest.raises(grpc.RpcError) as exc:
        client.store_pattern(_pattern("p"), expected_version=5)
    assert _code(exc) == grpc.StatusCode.ABORTED
    with pytest.raises(grpc.RpcError) as exc:
        client.store_pattern(_pattern("p"), create_only=True)
    assert _code(exc) == grpc.StatusCode.ALREADY_EXISTS
    with pytest.raises(grpc.RpcError) as exc:
        client.store_pattern(_pattern("new"), expected_version=1)
    assert _code(exc) == grpc.StatusCode.ABORTED
    assert client.store_pattern(_pattern("p"), expected_version=1).version == 2
    assert client.get_pattern("p").version == 2


def test_empty_id_gets_one_assigned(client: PatternStoreClient) -> None:
    r = client.store_pattern(Pattern(type="plan"))
    assert len(r.id) == 32
    assert client.get_pattern(r.id).type == "plan"


def test_store_patterns_is_atomic(client: PatternStoreClient) -> None:
    client.store_pattern(_pattern("keep"))
    items = [
        StorePatternRequest(pattern=_pattern("n1")),
        StorePatternRequest(pattern=_pattern("keep"), expected_version=9),
        StorePatternRequest(pattern=_pattern("n2")),
    ]
    with pytest.raises(grpc.RpcError) as exc:
        client.store_patterns(items)
    assert _code(exc) == grpc.StatusCode.ABORTED
    assert "item 1" in exc.value.details()  # type: ignore[attr-defined]
    assert list(client.get_patterns(["n1", "n2"]).missing_ids) == ["n1", "n2"]
    assert client.get_pattern("keep").version == 1
    # The same id twice in one call: the second sees the first.
    r = client.store_patterns(
        [_pattern("d"), StorePatternRequest(pattern=_pattern("d"), expected_version=1)]
    )
    assert [x.version for x in r.results] == [1, 2]
    assert [x.sequence for x in r.results] == sorted(x.sequence for x in r.results)


def test_delete(client: PatternStoreClient) -> None:
    client.store_pattern(_pattern("p"))
    with pytest.raises(grpc.RpcError) as exc:
        client.delete_pattern("p", expected_version=3)
    assert _code(exc) == grpc.StatusCode.ABORTED
    assert client.delete_pattern("p", expected_version=1).sequence > 0
    with pytest.raises(grpc.RpcError) as exc:
        client.get_pattern("p")
    assert _code(exc) == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as exc:
        client.delete_pattern("p")
    assert _code(exc) == grpc.StatusCode.NOT_FOUND


def test_update_confidence_and_duplicates(client: PatternStoreClient) -> None:
    client.store_pattern(_pattern("p"))
    r1 = client.update_confidence("p", "success", request_id="req-1")
    assert r1.confidence == 2 / 3 and not r1.duplicate
    again = client.update_confidence("p", "success", request_id="req-1")
    assert again.duplicate and again.sequence == r1.sequence and again.confidence == r1.confidence
    assert client.get_pattern("p").usage_count == 1
    with pytest.raises(grpc.RpcError) as exc:
        client.update_confidence("missing", "success")
    assert _code(exc) == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as exc:
        client.store_pattern(_pattern("q"))
        client.update_confidence("q", "failure", request_id="req-1")
    assert _code(exc) == grpc.StatusCode.INVALID_ARGUMENT


def test_update_confidence_batch_fails_items_alone(client: PatternStoreClient) -> None:
    client.store_pattern(_pattern("p"))
    r = client.update_confidence_batch(
        [
            update_request("p", "success"),
            update_request("ghost", "success"),
            update_request("p", "failure", weight=-1),
            update_request("p", "partial"),
        ]
    )
    codes = [x.code for x in r.results]
    assert codes == [
        0,
        grpc.StatusCode.NOT_FOUND.value[0],
        grpc.StatusCode.INVALID_ARGUMENT.value[0],
        0,
    ]
    assert "ghost" in r.results[1].message and "weight" in r.results[2].message
    got = client.get_pattern("p")
    assert (got.usage_count, got.alpha, got.beta) == (2, 2.5, 1.5)
    assert r.results[3].confidence == got.confidence


def test_record_outcomes_stream(client: PatternStoreClient) -> None:
    client.store_patterns([_pattern("a"), _pattern("b")])
    updates = [
        update_request("a", "success", request_id="r1"),
        update_request("b", "failure"),
        update_request("zz", "success"),
        update_request("a", "success", request_id="r1"),
    ]
    r = client.record_outcomes(updates)
    assert (r.accepted, r.not_found, r.duplicates) == (2, 1, 1)
    assert r.durable_sequence >= client.get_stats().last_sequence
    assert client.get_pattern("a").usage_count == 1


def _handled(server: RunningServer, method: str, code: str) -> float:
    url = f"http://127.0.0.1:{server.server.metrics_port}/metrics"
    text = urllib.request.urlopen(url, timeout=5).read().decode()
    prefix = f'grpc_server_handled_total{{grpc_code="{code}",grpc_method="{method}",'
    lines = [line for line in text.splitlines() if line.startswith(prefix)]
    return sum(float(line.rsplit(" ", 1)[1]) for line in lines)


def test_a_cancelled_outcome_stream_is_counted_cancelled(
    server: RunningServer, client: PatternStoreClient
) -> None:
    """grpc.aio ends the request iterator on a cancel as on a complete stream: the call
    must still end CANCELLED in grpc_server_handled_total, not OK. The outcomes read
    before the cancel stay applied (a cancel undoes nothing)."""
    client.store_pattern(_pattern("a"))

    async def cancel_midway() -> None:
        async with grpc.aio.insecure_channel(server.target) as channel:
            call = channel.stream_unary(
                "/patternstore.v1.PatternStore/RecordOutcomes",
                request_serializer=lambda m: m.SerializeToString(),
                response_deserializer=lambda b: b,
            )()
            for _ in range(3):
                await call.write(update_request("a", "success"))
            # Once all three are applied and durable, the server waits for a fourth,
            # and nothing is left for the end of the call to wait on.
            while client.get_pattern("a").usage_count < 3:
                await asyncio.sleep(0.01)
            client.flush()
            call.cancel()
            deadline = time.monotonic() + 5
            while _handled(server, "RecordOutcomes", "Cancelled") < 1:
                assert time.monotonic() < deadline, "the cancel was never counted"
                await asyncio.sleep(0.01)

    asyncio.run(cancel_midway())
    assert _handled(server, "RecordOutcomes", "OK") == 0
    assert client.get_pattern("a").usage_count == 3


def test_an_error_in_the_callers_outcome_iterator_is_raised_as_itself(
    server: RunningServer, client: PatternStoreClient
) -> None:
    """grpc turns it into UNKNOWN "Exception iterating requests!" and grpc.aio into a
    CancelledError (which a TaskGroup swallows as a cancel): the clients raise the
    caller's own exception. What the server applied before it stays applied."""
    client.store_patterns([_pattern("a"), _pattern("b")])

    def outcomes() -> Iterator[Any]:
        yield update_request("a", "success")
        # Raised once the server has applied the first: a message yielded is not yet
        # sent, and under load the cancel could overtake it.
        deadline = time.monotonic() + 10
        while client.get_pattern("a").usage_count < 1:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        raise LookupError("worker lost a")

    with pytest.raises(LookupError, match="worker lost a"):
        client.record_outcomes(outcomes())

    async def in_a_task_group() -> None:
        async with AsyncPatternStoreClient(server.target) as ac:

            async def streamed() -> AsyncIterator[Any]:
                yield update_request("b", "success")
                while (await ac.get_pattern("b")).usage_count < 1:
                    await asyncio.sleep(0.01)
                raise LookupError("worker lost b")

            async with asyncio.TaskGroup() as group:
                group.create_task(ac.record_outcomes(streamed()))

    with pytest.raises(ExceptionGroup) as caught:
        asyncio.run(asyncio.wait_for(in_a_task_group(), 30))
    assert caught.group_contains(LookupError, match="worker lost b")
    client.flush()
    assert [p.usage_count for p in client.get_patterns(["a", "b"]).patterns] == [1, 1]


def test_record_outcomes_refuses_bad_message_with_its_index(client: PatternStoreClient) -> None:
    client.store_pattern(_pattern("a"))
    with pytest.raises(grpc.RpcError) as exc:
        client.record_outcomes(
            [update_request("a", "success"), update_request("a", "success", weight=float("nan"))]
        )
    assert _code(exc) == grpc.StatusCode.INVALID_ARGUMENT
    assert "message 1" in exc.value.details()  # type: ignore[attr-defined]
    assert client.get_pattern("a").usage_count == 1


def test_query_orderings_ties_and_filters(client: PatternStoreClient, clock: FakeClock) -> None:
    for pid in ["c", "a", "b", "d"]:
        clock.advance(1)
        client.store_pattern(_pattern(pid, ptype="x" if pid != "d" else "y"))
    client.update_confidence("b", "success")
    client.update_confidence("b", "success")
    clock.advance(1)
    client.update_confidence("c", "failure")
    ids = lambda **kw: [p.id for p in client.query_patterns(**kw).patterns]  # noqa: E731
    # Outcomes reach the ordering within rank_interval_ms; a Flush brings it up to date.
    client.flush()
    assert ids(type="x") == ["b", "a", "c"]
    assert ids() == ["b", "a", "d", "c"]  # ties (0.5) by id
    assert ids(order_by="usage") == ["b", "c", "a", "d"]
    assert ids(order_by="recent") == ["c", "b", "d", "a"]
    assert ids(order_by="lower_bound", type="x")[0] == "b"
    assert ids(min_confidence=0.5) == ["b", "a", "d"]
    assert ids(type="nothing") == []


def test_paging_by_id_visits_every_pattern_while_writes_move_them(
    client: PatternStoreClient, clock: FakeClock
) -> None:
    """An export pages by id: a pattern updated between two pages is still visited
    (paging by recency skips it: the update moves it before the cursor)."""
    client.store_patterns([_pattern(f"p{i:03d}") for i in range(30)])
    untouched = ["p015", "p025"]  # each walk moves one; both lie past the first page

    def walk(order: str) -> list[str]:
        seen: list[str] = []
        for n, p in enumerate(client.iter_patterns("plan", order_by=order, page_size=10)):
            seen.append(p.id)
            if n == 9:  # the first page is read: touch a pattern not yet visited
                clock.advance(1)
                client.store_pattern(_pattern(untouched.pop(), name="moved"))
                client.flush()  # and bring the ordering up to date
        return seen

    assert sorted(walk("id")) == [f"p{i:03d}" for i in range(30)]
    assert len(set(walk("recent"))) < 30  # why export does not page by recency


def test_query_pagination_visits_each_pattern_once(client: PatternStoreClient) -> None:
    client.store_patterns([_pattern(f"p{i:03d}") for i in range(250)])
    for i in range(0, 250, 7):
        client.update_confidence(f"p{i:03d}", "success" if i % 2 else "failure")
    seen, token, pages = [], "", 0
    while True:
        page = client.query_patterns("plan", limit=40, page_token=token)
        seen += [p.id for p in page.patterns]
        pages += 1
        token = page.next_page_token
        if not token:
            break
    assert pages == 7 and len(seen) == 250 and len(set(seen)) == 250
    assert [p.id for p in client.iter_patterns("plan", page_size=1000)] == seen
    with pytest.raises(grpc.RpcError) as exc:
        client.query_patterns(
            "tool", page_token=client.query_patterns("plan", limit=1).next_page_token
        )
    assert _code(exc) == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as exc:
        client.query_patterns(page_token="garbage!")
    assert _code(exc) == grpc.StatusCode.INVALID_ARGUMENT
    assert len(client.query_patterns(limit=5000).patterns) == 250  # coerced to at most 1000
    assert len(client.query_patterns().patterns) == 100  # 0 means 100


def test_queued_writes_are_readable_and_flush_makes_them_durable(
    server: RunningServer, client: PatternStoreClient
) -> None:
    r = client.store_pattern(_pattern("q"), durability=DURABILITY_QUEUED)
    client.update_confidence("q", "success", durability=DURABILITY_QUEUED)
    assert client.get_pattern("q").usage_count == 1  # read-your-writes before the commit
    strong = client.query_patterns("plan", consistency=CONSISTENCY_STRONG)
    assert [p.usage_count for p in strong.patterns] == [1]
    f = client.flush()
    assert f.durable_sequence >= r.sequence + 1
    assert client.flush().patterns_written == 0  # nothing left to wait for


def test_flush_reports_what_it_waited_for(start_server: object, clock: FakeClock) -> None:
    # The QUEUED writes stay queued until the Flush, however slowly the calls arrive.
    srv = start_server(clock, max_delay_ms=1.0, queued_delay_ms=60_000.0)  # type: ignore[operator]
    with PatternStoreClient(srv.target) as c:
        c.store_pattern(_pattern("a"), durability=DURABILITY_QUEUED)
        c.store_pattern(_pattern("b"), durability=DURABILITY_QUEUED)
        c.update_confidence("a", "success", durability=DURABILITY_QUEUED)
        f = c.flush()
        assert (f.patterns_written, f.updates_applied) == (2, 1)
        assert f.durable_sequence == c.get_stats().durable_sequence


def test_sequences_are_monotonic_across_restarts(start_server: object, clock: FakeClock) -> None:
    first = start_server(clock)  # type: ignore[operator]
    with PatternStoreClient(first.target) as c:
        before = c.store_pattern(_pattern("a")).sequence
    first.stop()
    second = start_server(clock)  # type: ignore[operator]
    with PatternStoreClient(second.target) as c:
        after = c.store_pattern(_pattern("b")).sequence
        assert after > before
        assert c.get_pattern("a").version == 1


def test_stats(client: PatternStoreClient) -> None:
    client.store_pattern(_pattern("a"))
    client.get_pattern("a")  # a miss fills L1
    client.get_pattern("a")  # a hit
    s = client.get_stats()
    assert s.patterns == 1 and s.durable_sequence == s.last_sequence >= 1
    assert s.batches_flushed >= 1 and s.items_committed >= 1
    assert s.database_bytes > 0 and s.uptime_seconds >= 0
    l1 = {c.tier: c for c in s.caches}["l1"]
    assert l1.hits >= 1 and l1.entries == 1 and l1.bytes > 0
    assert [q.name for q in s.queues] == ["writes"]


def test_health_reflection_and_metrics(server: RunningServer, client: PatternStoreClient) -> None:
    client.store_pattern(_pattern("a"))
    with pytest.raises(grpc.RpcError):
        client.get_pattern("missing")
    with grpc.insecure_channel(server.target) as ch:
        reply = health_pb2_grpc.HealthStub(ch).Check(
            health_pb2.HealthCheckRequest(service="patternstore.v1.PatternStore")
        )
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        stub = reflection_pb2_grpc.ServerReflectionStub(ch)
        (resp,) = stub.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")])
        )
        names = {s.name for s in resp.list_services_response.service}
        assert "patternstore.v1.PatternStore" in names
    url = f"http://127.0.0.1:{server.server.metrics_port}/metrics"
    text = urllib.request.urlopen(url, timeout=5).read().decode()
    assert (
        'grpc_server_handled_total{grpc_code="NotFound",grpc_method="GetPattern",'
        'grpc_service="patternstore.v1.PatternStore",grpc_type="unary"} 1.0'
    ) in text
    assert "grpc_server_handling_seconds_bucket" in text
    assert 'patternstore_queue_depth{queue="writes"}' in text
    assert 'patternstore_cache_hits_total{tier="l1"}' in text
    assert "patternstore_batch_size_count" in text
    assert 'patternstore_query_seconds_count{query="load_memory"}' in text
    assert "process_resident_memory_bytes" in text
    for path, status in (("/healthz", 200), ("/readyz", 200)):
        url = f"http://127.0.0.1:{server.server.metrics_port}{path}"
        assert urllib.request.urlopen(url, timeout=5).status == status


def _sqlite_reads(server: RunningServer, query: str) -> float:
    url = f"http://127.0.0.1:{server.server.metrics_port}/metrics"
    text = urllib.request.urlopen(url, timeout=5).read().decode()
    prefix = f'patternstore_query_seconds_count{{query="{query}"}} '
    counts = [float(line[len(prefix) :]) for line in text.splitlines() if line.startswith(prefix)]
    return counts[0] if counts else 0.0


def test_unknown_ids_are_not_found_without_a_sqlite_read(
    server: RunningServer, client: PatternStoreClient
) -> None:
    client.store_pattern(_pattern("a"))
    client.store_pattern(_pattern("gone"))
    client.delete_pattern("gone")
    client.flush()
    client.get_pattern("a")  # cached now: the reads below of known ids need no SQLite
    before = {q: _sqlite_reads(server, q) for q in ("get_pattern", "get_patterns")}
    for pid in ("never-stored", "gone"):
        with pytest.raises(grpc.RpcError) as err:
            client.get_pattern(pid)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        with pytest.raises(grpc.RpcError) as err:
            client.update_confidence(pid, "success")
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
    reply = client.get_patterns(["a", "never-stored", "gone"])
    assert [p.id for p in reply.patterns] == ["a"]
    assert list(reply.missing_ids) == ["never-stored", "gone"]
    assert {q: _sqlite_reads(server, q) for q in before} == before


def test_observed_at_drives_decay(client: PatternStoreClient, clock: FakeClock) -> None:
    client.store_pattern(_pattern("p"))
    t0 = Timestamp(seconds=clock.now_ns // 10**9 - 2_592_100)
    client.update_confidence("p", "success", observed_at=t0)
    t1 = Timestamp(seconds=t0.seconds + 2_592_000)  # one decay period later
    client.update_confidence("p", "success", observed_at=t1)
    got = client.get_pattern("p")
    assert got.alpha == 1.0 + (2.0 - 1.0) * 0.95 + 1.0
    assert got.last_outcome_at == t1


# Enough rows that loading them takes seconds (1,000,000 took 7.6 s on the 2-vCPU box):
# the test calls while the server loads, so the window must outlast a few calls.
_BULK_ROWS = 300_000


def _bulk_copies(db: Path, template: str, rows: int) -> None:
    """Insert ``rows`` copies of pattern ``template`` with new ids, straight into SQLite
    (storing 300,000 patterns over gRPC would take a minute). The copies share the
    template's payload blob, so its reference count is raised by as many."""
    conn = apsw.Connection(str(db))
    try:
        columns = [row[1] for row in conn.execute("PRAGMA table_info(patterns)")]
        picked = ", ".join("printf('bulk%07d', x)" if c == "id" else c for c in columns)
        with conn:  # one transaction
            conn.execute(
                f"INSERT INTO patterns ({', '.join(columns)}) "
                "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < ?) "
                f"SELECT {picked} FROM c, patterns WHERE patterns.id = ?",
                (rows, template),
            )
            conn.execute(
                "UPDATE blobs SET refs = refs + ? "
                "WHERE key = (SELECT data_key FROM patterns WHERE id = ?)",
                (rows, template),
            )
    finally:
        conn.close()


def test_calls_wait_for_the_pattern_memory_like_redis_loading(tmp_path: Path) -> None:
    """Before the memory is loaded it cannot say which ids exist: every call is refused
    with a retryable UNAVAILABLE, so none is answered NOT_FOUND or stored as new. A real
    start-up: the server is bound while it loads 300,000 rows."""
    data = tmp_path / "data"
    first = ServerProcess(data)
    try:
        with PatternStoreClient(first.target, timeout=10) as c:
            c.store_pattern(_pattern("a"))
            c.store_pattern(_pattern("template", data=b"shared payload"))
        assert first.terminate() == 0
    finally:
        first.close()
    _bulk_copies(data / "patterns.db", "template", _BULK_ROWS)

    server = ServerProcess(data, "--metrics-listen", "127.0.0.1:0", loading=True)
    try:
        once = PatternStoreClient(server.target, timeout=10, retry=RetryPolicy(attempts=1))
        try:
            calls = (
                lambda: once.get_pattern("a"),
                lambda: once.get_pattern("never-stored"),  # not NOT_FOUND: it cannot know
                lambda: once.store_pattern(_pattern("a")),
                lambda: once.update_confidence("a", "success"),
                lambda: once.record_outcomes(iter([])),
            )
            for call in calls:
                with pytest.raises(grpc.RpcError) as err:
                    call()
                assert _code(err) == grpc.StatusCode.UNAVAILABLE
                assert "starting" in (err.value.details() or "")
            assert once.health() == "NOT_SERVING"
            with pytest.raises(urllib.error.HTTPError) as not_ready:
                urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/readyz")
            assert not_ready.value.code == 503
            # Refusals seen while loading prove the window; this says it did not end early.
            assert not server.serving, (
                f"loading {_BULK_ROWS:,} rows ended before the calls; raise _BULK_ROWS"
            )
            server.wait_serving()
            assert once.health() == "SERVING"
            # Nothing was changed meanwhile: still version 1, and the copies are there.
            assert once.get_pattern("a").version == 1
            assert once.get_pattern(f"bulk{_BULK_ROWS:07d}").data == b"shared payload"
            assert once.get_stats().patterns == _BULK_ROWS + 2
        finally:
            once.close()
        assert server.terminate() == 0
    finally:
        server.close()


def test_client_odds_and_ends(server: RunningServer) -> None:
    """helper-22: timeout=None (gRPC's "no deadline") failed every call with a TypeError;
    close() closed a channel the caller passed in and still owns; a naive datetime was
    read as local time, shifting outcomes by the host's UTC offset."""
    with PatternStoreClient(server.target, timeout=None) as c:
        c.store_pattern(_pattern("a"))
        assert c.get_pattern("a").id == "a"
        with pytest.raises(ValueError, match="naive datetime"):
            c.update_confidence("a", "success", observed_at=dt.datetime(2026, 1, 1))
        c.update_confidence("a", "success", observed_at=dt.datetime.now(dt.UTC))
    with grpc.insecure_channel(server.target) as channel:
        with PatternStoreClient(channel=channel) as c:
            assert c.get_pattern("a").usage_count == 1
        with PatternStoreClient(channel=channel) as c:  # still open
            assert c.get_pattern("a").id == "a"
