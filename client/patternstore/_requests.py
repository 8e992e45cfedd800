"""Request building shared by the sync and async clients, and the retry policy."""

from __future__ import annotations

import datetime as dt
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from .v1 import patternstore_pb2 as pb

SERVICE = "patternstore.v1.PatternStore"

# method -> (request type, response type)
METHODS: dict[str, tuple[Any, Any]] = {
    "GetPattern": (pb.GetPatternRequest, pb.Pattern),
    "GetPatterns": (pb.GetPatternsRequest, pb.GetPatternsResponse),
    "StorePattern": (pb.StorePatternRequest, pb.StorePatternResponse),
    "StorePatterns": (pb.StorePatternsRequest, pb.StorePatternsResponse),
    "DeletePattern": (pb.DeletePatternRequest, pb.DeletePatternResponse),
    "UpdateConfidence": (pb.UpdateConfidenceRequest, pb.UpdateConfidenceResponse),
    "UpdateConfidenceBatch": (pb.UpdateConfidenceBatchRequest, pb.UpdateConfidenceBatchResponse),
    "QueryPatterns": (pb.QueryPatternsRequest, pb.QueryPatternsResponse),
    "SearchSimilar": (pb.SearchSimilarRequest, pb.SearchSimilarResponse),
    "PrunePatterns": (pb.PrunePatternsRequest, pb.PrunePatternsResponse),
    "Flush": (pb.FlushRequest, pb.FlushResponse),
    "GetStats": (pb.GetStatsRequest, pb.Stats),
}
STREAMS: dict[str, tuple[Any, Any]] = {
    "RecordOutcomes": (pb.UpdateConfidenceRequest, pb.RecordOutcomesResponse),
}

# Patterns can be large (a 1M-value trajectory is 8 MiB): lift the 4 MiB receive default.
CHANNEL_OPTIONS = [("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1)]

_OUTCOMES = {
    "success": pb.OUTCOME_SUCCESS,
    "failure": pb.OUTCOME_FAILURE,
    "partial": pb.OUTCOME_PARTIAL,
}
_ORDERS = {
    "confidence": pb.ORDER_BY_CONFIDENCE,
    "usage": pb.ORDER_BY_USAGE,
    "recent": pb.ORDER_BY_RECENT,
    "lower_bound": pb.ORDER_BY_LOWER_BOUND,
    "thompson": pb.ORDER_BY_THOMPSON,
    "id": pb.ORDER_BY_ID,
    "similarity": pb.ORDER_BY_UNSPECIFIED,
}


def credentials(
    tls_ca: str | None, tls_cert: str | None, tls_key: str | None
) -> grpc.ChannelCredentials | None:
    """TLS credentials from PEM files (CA to trust; client cert and key for mutual TLS)."""
    if not (tls_ca or tls_cert or tls_key):
        return None
    if bool(tls_cert) != bool(tls_key):
        raise ValueError("mutual TLS needs both tls_cert and tls_key")

    def read(path: str | None) -> bytes | None:
        if not path:
            return None
        with open(path, "rb") as f:
            return f.read()

    return grpc.ssl_channel_credentials(read(tls_ca), read(tls_key), read(tls_cert))


def auth_metadata(token: str | None) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),) if token else ()


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with full jitter, on UNAVAILABLE only, for calls safe to repeat."""

    attempts: int = 5
    initial_backoff: float = 0.05
    max_backoff: float = 2.0
    multiplier: float = 2.0

    def delays(self) -> Iterable[float]:
        backoff = self.initial_backoff
        for _ in range(self.attempts - 1):
            yield random.uniform(0, backoff)
            backoff = min(self.max_backoff, backoff * self.multiplier)

    @staticmethod
    def retryable(exc: grpc.RpcError) -> bool:
        return exc.code() == grpc.StatusCode.UNAVAILABLE


def outcome(value: pb.Outcome | str) -> pb.Outcome:
    if isinstance(value, str):
        try:
            return _OUTCOMES[value.lower()]
        except KeyError:
            raise ValueError(
                f"outcome must be one of {', '.join(_OUTCOMES)}, not {value!r}"
            ) from None
    return value


def order_by(value: pb.OrderBy | str) -> pb.OrderBy:
    if isinstance(value, str):
        try:
            return _ORDERS[value.lower()]
        except KeyError:
            raise ValueError(
                f"order_by must be one of {', '.join(_ORDERS)}, not {value!r}"
            ) from None
    return value


def timestamp(value: dt.datetime | float | Timestamp | None) -> Timestamp | None:
    if value is None or isinstance(value, Timestamp):
        return value
    ts = Timestamp()
    if isinstance(value, dt.datetime):
        ts.FromDatetime(value.astimezone(dt.UTC))
    else:
        ts.FromNanoseconds(round(value * 1e9))
    return ts


def search_request(
    embedding: Sequence[float],
    k: int = 10,
    *,
    type: str = "",
    min_confidence: float = 0.0,
    exact: bool = False,
    order: pb.OrderBy | str = pb.ORDER_BY_UNSPECIFIED,
    seed: int = 0,
) -> pb.SearchSimilarRequest:
    return pb.SearchSimilarRequest(
        embedding=list(embedding),
        k=k,
        type=type,
        min_confidence=min_confidence,
        exact=exact,
        order_by=order_by(order),
        seed=seed,
    )


def update_request(
    id: str,
    outcome_value: pb.Outcome | str,
    *,
    weight: float = 0.0,
    observed_at: dt.datetime | float | Timestamp | None = None,
    request_id: str = "",
    durability: pb.Durability = pb.DURABILITY_COMMITTED,
) -> pb.UpdateConfidenceRequest:
    req = pb.UpdateConfidenceRequest(
        id=id,
        outcome=outcome(outcome_value),
        weight=weight,
        request_id=request_id,
        durability=durability,
    )
    ts = timestamp(observed_at)
    if ts is not None:
        req.observed_at.CopyFrom(ts)
    return req


def store_request(
    pattern: pb.Pattern,
    *,
    expected_version: int = 0,
    create_only: bool = False,
    durability: pb.Durability = pb.DURABILITY_COMMITTED,
) -> pb.StorePatternRequest:
    return pb.StorePatternRequest(
        pattern=pattern,
        expected_version=expected_version,
        create_only=create_only,
        durability=durability,
    )


def query_request(
    type: str = "",
    *,
    min_confidence: float = 0.0,
    order: pb.OrderBy | str = pb.ORDER_BY_CONFIDENCE,
    limit: int = 0,
    page_token: str = "",
    consistency: pb.Consistency = pb.CONSISTENCY_BOUNDED,
    seed: int = 0,
) -> pb.QueryPatternsRequest:
    return pb.QueryPatternsRequest(
        seed=seed,
        type=type,
        min_confidence=min_confidence,
        order_by=order_by(order),
        limit=limit,
        page_token=page_token,
        consistency=consistency,
    )
