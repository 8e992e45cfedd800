"""Request building shared by the sync and async clients, and the retry policy."""

from __future__ import annotations

import datetime as dt
import itertools
import math
import random
import time
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator, Sequence
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
    """Exponential backoff with full jitter, for calls safe to repeat.

    Retried: UNAVAILABLE (a restart, the server still loading), and RESOURCE_EXHAUSTED
    that carries the server's ``retry-after-ms`` hint (its write queue is full; a call
    too large, or over the concurrency limit, carries none and is not retried). A hint
    longer than the backoff is waited out. ``attempts``: at most that many tries; None
    (the default) tries until the call's timeout, so a client rides out a restart as
    long as its caller is willing to wait.
    """

    attempts: int | None = None
    initial_backoff: float = 0.05
    max_backoff: float = 2.0
    multiplier: float = 2.0

    def delays(self) -> Iterator[float]:
        backoff = self.initial_backoff
        tries = itertools.count() if self.attempts is None else range(self.attempts - 1)
        for _ in tries:
            yield random.uniform(0, backoff)
            backoff = min(self.max_backoff, backoff * self.multiplier)

    def retryable(self, exc: grpc.RpcError) -> bool:
        code = exc.code()
        if code == grpc.StatusCode.UNAVAILABLE:
            return True
        return code == grpc.StatusCode.RESOURCE_EXHAUSTED and retry_after(exc) is not None


def retry_after(exc: grpc.RpcError) -> float | None:
    """The server's ``retry-after-ms`` hint of a refused call, in seconds."""
    trailers: Any = exc.trailing_metadata() or ()
    value = dict(trailers).get("retry-after-ms")
    try:
        return None if value is None else max(0.0, int(value) / 1000)
    except ValueError:
        return None


class Retrier:
    """One call's retries: how long to wait before each next try, within its deadline.
    Shared by the sync and async clients, which differ only in how they sleep."""

    def __init__(self, policy: RetryPolicy, safe: bool, timeout: float | None) -> None:
        self._policy = policy
        self._delays = policy.delays() if safe else iter(())
        # ``timeout`` bounds the call, retries included: each try gets what is left.
        # None: no deadline, as in gRPC.
        self.deadline = math.inf if timeout is None else time.monotonic() + timeout
        self.tries = 0

    def left(self) -> float | None:
        if self.deadline == math.inf:
            return None
        return max(0.0, self.deadline - time.monotonic())

    def next_delay(self, exc: grpc.RpcError) -> float | None:
        """The wait before trying again after ``exc``; None: give up, raise it."""
        self.tries += 1
        if not self._policy.retryable(exc):
            return None
        delay = next(self._delays, None)
        if delay is None:
            return None
        hint = retry_after(exc)
        if hint is not None:
            delay = max(delay, hint)
        if time.monotonic() + delay >= self.deadline:
            return None
        return delay


class RequestStream:
    """The caller's outcomes for RecordOutcomes, remembering the exception their iterator
    raised: grpc replaces it with UNKNOWN "Exception iterating requests!", grpc.aio with
    a CancelledError (which a TaskGroup takes for a cancel and swallows). The clients
    raise the caller's exception instead, from the RPC error."""

    def __init__(
        self,
        updates: AsyncIterable[pb.UpdateConfidenceRequest] | Iterable[pb.UpdateConfidenceRequest],
    ) -> None:
        self._updates = updates
        self.error: Exception | None = None

    def __iter__(self) -> Iterator[pb.UpdateConfidenceRequest]:
        assert isinstance(self._updates, Iterable)
        try:
            yield from self._updates
        except Exception as exc:
            self.error = exc
            raise

    async def __aiter__(self) -> AsyncIterator[pb.UpdateConfidenceRequest]:
        try:
            if isinstance(self._updates, AsyncIterable):
                async for update in self._updates:
                    yield update
            else:
                for update in self._updates:
                    yield update
        except Exception as exc:
            self.error = exc
            raise


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
        if value.tzinfo is None:
            # Python reads a naive datetime as local time, protobuf as UTC: either guess
            # shifts someone's outcomes by their UTC offset.
            raise ValueError(
                "observed_at: a naive datetime is ambiguous; pass an aware one, such as "
                "datetime.now(datetime.UTC)"
            )
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
