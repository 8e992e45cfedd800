"""Every input rule: a bad request gets INVALID_ARGUMENT naming the field, and changes nothing."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from typing import Any

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from patternstore import Pattern, PatternStoreClient, Trajectory, update_request
from patternstore.v1 import patternstore_pb2 as pb

from .conftest import FakeClock, RunningServer

OK = Pattern(id="ok", type="plan", data=b"{}")


def _with(**kw: Any) -> Pattern:
    p = Pattern()
    p.CopyFrom(OK)
    for k, v in kw.items():
        if k == "trajectory":
            p.trajectory.CopyFrom(v)
        elif k == "metadata":
            p.metadata.update(v)
        elif k == "embedding":
            p.embedding.extend(v)
        else:
            setattr(p, k, v)
    return p


BAD_STORES: list[tuple[str, Pattern, str]] = [
    ("id too long", _with(id="x" * 257), "pattern.id"),
    ("id too long in bytes", _with(id="é" * 129), "pattern.id"),
    ("id with control char", _with(id="a\nb"), "pattern.id"),
    ("id with C1 control char", _with(id="a\x85b"), "pattern.id"),
    ("type empty", _with(type=""), "pattern.type"),
    ("type upper case", _with(type="Plan"), "pattern.type"),
    ("type too long", _with(type="a" * 65), "pattern.type"),
    ("type with space", _with(type="a b"), "pattern.type"),
    ("data over 1 MiB", _with(data=b"x" * (1024 * 1024 + 1)), "pattern.data"),
    ("embedding too long", _with(embedding=[0.0] * 4097), "pattern.embedding"),
    ("embedding NaN", _with(embedding=[0.0, float("nan")]), "pattern.embedding"),
    ("embedding inf", _with(embedding=[float("inf")]), "pattern.embedding"),
    (
        "trajectory no dims",
        _with(trajectory=Trajectory(dims=0, values=[1.0])),
        "pattern.trajectory.dims",
    ),
    (
        "trajectory ragged",
        _with(trajectory=Trajectory(dims=3, values=[1.0] * 4)),
        "pattern.trajectory.values",
    ),
    (
        "trajectory NaN",
        _with(trajectory=Trajectory(dims=1, values=[float("nan")])),
        "pattern.trajectory.values",
    ),
    (
        "trajectory too long",
        _with(trajectory=Trajectory(dims=1, values=[0.0] * 1_000_001)),
        "pattern.trajectory.values",
    ),
    ("metadata too many", _with(metadata={str(i): "v" for i in range(65)}), "pattern.metadata"),
    ("metadata key too long", _with(metadata={"k" * 129: "v"}), "pattern.metadata"),
    ("metadata value too long", _with(metadata={"k": "v" * 4097}), "pattern.metadata"),
    (
        "expiry past 2262 (ns overflow)",
        Pattern(id="ok", type="plan", expires_at=Timestamp(seconds=253_402_300_799)),
        "pattern.expires_at",
    ),
]


@pytest.mark.parametrize(("case", "pattern", "field"), BAD_STORES, ids=[c[0] for c in BAD_STORES])
def test_bad_store_is_refused_and_changes_nothing(
    client: PatternStoreClient, case: str, pattern: Pattern, field: str
) -> None:
    before = client.get_stats().last_sequence
    with pytest.raises(grpc.RpcError) as exc:
        client.store_pattern(pattern)
    assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
    assert exc.value.details().startswith(field)  # type: ignore[attr-defined]
    after = client.get_stats()
    assert after.last_sequence == before and after.patterns == 0
    assert client.store_pattern(OK).created  # and the server keeps serving


def test_limits_at_the_edge_are_accepted(client: PatternStoreClient) -> None:
    edge = _with(
        id="é" * 128,
        type="a" * 64,
        data=b"x" * (1024 * 1024),
        embedding=[1.0] * 4096,
        trajectory=Trajectory(dims=4, values=[0.5] * 1_000_000),
        metadata={f"{i:0128d}": "v" * 4096 for i in range(64)},
    )
    client.store_pattern(edge)
    got = client.get_pattern(edge.id)
    assert got.trajectory == edge.trajectory and got.metadata == edge.metadata


def _call(client: PatternStoreClient, name: str, request: Any) -> Any:
    return client._unary[name](request, timeout=10)


NOW_S = FakeClock().now_ns // 10**9
BAD_UPDATES: list[tuple[str, pb.UpdateConfidenceRequest, str]] = [
    ("no outcome", pb.UpdateConfidenceRequest(id="ok"), "outcome"),
    ("unknown outcome", pb.UpdateConfidenceRequest(id="ok", outcome=9), "outcome"),  # type: ignore[arg-type]
    ("negative weight", update_request("ok", "success", weight=-1), "weight"),
    ("NaN weight", update_request("ok", "success", weight=float("nan")), "weight"),
    ("inf weight", update_request("ok", "success", weight=float("inf")), "weight"),
    ("weight too big", update_request("ok", "success", weight=1e6 + 1), "weight"),
    (
        "from the future",
        update_request("ok", "success", observed_at=Timestamp(seconds=NOW_S + 301)),
        "observed_at",
    ),
    (
        "bad nanos",
        update_request("ok", "success", observed_at=Timestamp(seconds=NOW_S, nanos=-1)),
        "observed_at",
    ),
    ("empty id", update_request("", "success"), "id"),
    # Each request id is held in memory and SQLite for dedup_window outcomes.
    ("request id too long", update_request("ok", "success", request_id="r" * 129), "request_id"),
    (
        "request id too long in UTF-8",
        update_request("ok", "success", request_id="é" * 65),
        "request_id",
    ),
]


@pytest.mark.parametrize(
    ("case", "request_", "field"), BAD_UPDATES, ids=[c[0] for c in BAD_UPDATES]
)
def test_bad_update_is_refused_and_changes_nothing(
    client: PatternStoreClient, case: str, request_: pb.UpdateConfidenceRequest, field: str
) -> None:
    client.store_pattern(OK)
    with pytest.raises(grpc.RpcError) as exc:
        _call(client, "UpdateConfidence", request_)
    assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
    assert exc.value.details().startswith(field)  # type: ignore[attr-defined]
    assert client.get_pattern("ok").version == 1
    batch = client.update_confidence_batch([request_])
    assert batch.results[0].code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert batch.results[0].message.startswith(f"updates[0].{field}")
    assert client.get_pattern("ok").version == 1


def test_update_at_the_edges_is_accepted(client: PatternStoreClient) -> None:
    client.store_pattern(OK)
    client.update_confidence("ok", "success", weight=1e6)
    client.update_confidence("ok", "failure", observed_at=Timestamp(seconds=NOW_S + 300))
    client.update_confidence("ok", "success", request_id="r" * 128)
    assert client.get_pattern("ok").usage_count == 3


TOO_MANY: list[tuple[str, str, Callable[[], Any]]] = [
    ("GetPatterns", "ids", lambda: pb.GetPatternsRequest(ids=["a"] * 1001)),
    (
        "StorePatterns",
        "requests",
        lambda: pb.StorePatternsRequest(
            requests=[
                pb.StorePatternRequest(pattern=Pattern(id=f"p{i}", type="t")) for i in range(1001)
            ]
        ),
    ),
    (
        "UpdateConfidenceBatch",
        "updates",
        lambda: pb.UpdateConfidenceBatchRequest(updates=[update_request("ok", "success")] * 10_001),
    ),
]


@pytest.mark.parametrize(("method", "field", "build"), TOO_MANY, ids=[t[0] for t in TOO_MANY])
def test_too_many_items_is_refused(
    client: PatternStoreClient, method: str, field: str, build: Callable[[], Any]
) -> None:
    client.store_pattern(OK)
    with pytest.raises(grpc.RpcError) as exc:
        _call(client, method, build())
    assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
    assert exc.value.details().startswith(field)  # type: ignore[attr-defined]
    assert client.get_pattern("ok").version == 1
    assert client.get_stats().patterns == 1


def test_bad_query_arguments(client: PatternStoreClient) -> None:
    for req, field in [
        (pb.QueryPatternsRequest(type="Bad Type"), "type"),
        (pb.QueryPatternsRequest(min_confidence=float("nan")), "min_confidence"),
        (pb.QueryPatternsRequest(order_by=42), "order_by"),  # type: ignore[arg-type]
        (pb.QueryPatternsRequest(page_token="%%%"), "page_token"),
    ]:
        with pytest.raises(grpc.RpcError) as exc:
            _call(client, "QueryPatterns", req)
        assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
        assert exc.value.details().startswith(field)  # type: ignore[attr-defined]


def _token(order: str, after: object, ptype: str = "") -> str:
    """A page token with the right filters and a forged position (the server's format)."""
    body = {"v": 1, "t": ptype, "m": 0.0, "o": order, "a": after}
    raw = json.dumps(body, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


FORGED_TOKENS = [
    ("value past int64", pb.ORDER_BY_USAGE, _token("usage", [2**70, "a"])),
    ("bool value", pb.ORDER_BY_USAGE, _token("usage", [True, "a"])),
    ("id not a string", pb.ORDER_BY_CONFIDENCE, _token("confidence", [0.5, 7])),
    ("deep nesting", pb.ORDER_BY_CONFIDENCE, base64.urlsafe_b64encode(b"[" * 1500).decode()),
    ("longer than any issued", pb.ORDER_BY_CONFIDENCE, "A" * 5000),
    ("thompson offset negative", pb.ORDER_BY_THOMPSON, _token("thompson", [-5, "12"])),
    ("thompson offset huge", pb.ORDER_BY_THOMPSON, _token("thompson", [1e309, "12"])),
    ("thompson offset a float", pb.ORDER_BY_THOMPSON, _token("thompson", [2.5, "12"])),
    ("thompson seed not digits", pb.ORDER_BY_THOMPSON, _token("thompson", [0, "abc"])),
    ("thompson seed negative", pb.ORDER_BY_THOMPSON, _token("thompson", [0, "-3"])),
    ("thompson seed past uint64", pb.ORDER_BY_THOMPSON, _token("thompson", [0, "9" * 30])),
]


@pytest.mark.parametrize(
    ("order", "token"), [t[1:] for t in FORGED_TOKENS], ids=[t[0] for t in FORGED_TOKENS]
)
def test_forged_page_tokens_are_invalid_argument(
    client: PatternStoreClient, order: int, token: str
) -> None:
    """A page token is client input: a forged one gets INVALID_ARGUMENT, never INTERNAL."""
    client.store_pattern(Pattern(id="a", type="t"))
    client.store_pattern(Pattern(id="b", type="t"))
    req = pb.QueryPatternsRequest(order_by=order, page_token=token)  # type: ignore[arg-type]
    with pytest.raises(grpc.RpcError) as exc:
        _call(client, "QueryPatterns", req)
    assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
    assert exc.value.details().startswith("page_token")  # type: ignore[attr-defined]
    # A token this server issued still pages.
    first = _call(client, "QueryPatterns", pb.QueryPatternsRequest(order_by=order, limit=1))
    second = _call(
        client,
        "QueryPatterns",
        pb.QueryPatternsRequest(order_by=order, limit=1, page_token=first.next_page_token),
    )
    assert sorted(p.id for p in [*first.patterns, *second.patterns]) == ["a", "b"]


def test_undecodable_message_is_invalid_argument(
    server: RunningServer, client: PatternStoreClient
) -> None:
    with grpc.insecure_channel(server.target) as ch:
        raw = ch.unary_unary("/patternstore.v1.PatternStore/StorePattern")
        # A string field holding invalid UTF-8: protobuf refuses to parse it.
        with pytest.raises(grpc.RpcError) as exc:
            raw(b"\x0a\x04\x0a\x02\xff\xfe", timeout=5)
    assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
    assert client.store_pattern(OK).created


def test_queue_full_is_resource_exhausted(start_server: Any, clock: FakeClock) -> None:
    # QUEUED writes stay queued (queued_delay_ms) however slowly the calls arrive.
    srv = start_server(clock, max_queue=3, max_delay_ms=1.0, queued_delay_ms=60_000.0)
    with PatternStoreClient(srv.target) as c:
        for i in range(3):
            c.store_pattern(Pattern(id=f"p{i}", type="t"), durability=pb.DURABILITY_QUEUED)
        with pytest.raises(grpc.RpcError) as exc:
            c.store_pattern(Pattern(id="p4", type="t"), durability=pb.DURABILITY_QUEUED)
        assert exc.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED  # type: ignore[attr-defined]
        assert "Flush" in exc.value.details()  # type: ignore[attr-defined]
        c.flush()
        assert c.store_pattern(Pattern(id="p4", type="t")).created


def test_a_call_bigger_than_the_queue_is_invalid_not_exhausted(
    start_server: Any, clock: FakeClock
) -> None:
    """Retrying would never help (clients retry RESOURCE_EXHAUSTED): the caller is told
    to split the call, and a call that fits still goes through."""
    srv = start_server(clock, max_queue=5)
    with PatternStoreClient(srv.target) as c:
        with pytest.raises(grpc.RpcError) as exc:
            c.store_patterns([Pattern(id=f"p{i}", type="t") for i in range(6)])
        assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
        details = exc.value.details()  # type: ignore[attr-defined]
        assert details.startswith("requests: 6 writes") and "max_queue=5" in details
        assert "split it into calls of at most 5" in details
        assert len(c.store_patterns([Pattern(id=f"p{i}", type="t") for i in range(5)]).results) == 5
        with pytest.raises(grpc.RpcError) as exc:
            c.update_confidence_batch([update_request("p0", "success")] * 6)
        assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
        assert exc.value.details().startswith("updates: 6 writes")  # type: ignore[attr-defined]
        assert c.get_pattern("p0").version == 1  # nothing of the refused call applied


def test_a_batch_whose_embeddings_disagree_is_refused_whole(client: PatternStoreClient) -> None:
    """The first embedding ever stored sets the dimension: two in one call must agree,
    checked before anything takes a sequence (a failure after that left phantom state)."""
    before = client.get_stats().last_sequence
    with pytest.raises(grpc.RpcError) as exc:
        client.store_patterns(
            [_with(id="a", embedding=[0.1, 0.2, 0.3]), _with(id="b", embedding=[0.1] * 4)]
        )
    assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
    assert "requests[1].pattern.embedding" in exc.value.details()  # type: ignore[attr-defined]
    after = client.get_stats()
    assert after.last_sequence == before and after.patterns == 0
    assert list(client.get_patterns(["a", "b"]).missing_ids) == ["a", "b"]
    client.flush()  # nothing accepted is left waiting for a sequence no write will reach
    assert client.store_pattern(_with(id="b", embedding=[0.1] * 4)).created
