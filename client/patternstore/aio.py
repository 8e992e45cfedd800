"""The asyncio client: the same methods as PatternStoreClient, awaited."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterable, Iterable, Sequence
from types import TracebackType
from typing import Any, TypeVar

import grpc
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from . import _requests as r
from .v1 import patternstore_pb2 as pb

__all__ = ["AsyncPatternStoreClient"]

_R = TypeVar("_R", bound=Message)


class AsyncPatternStoreClient:
    """See PatternStoreClient: same retry rules, same errors (``grpc.aio.AioRpcError``)."""

    def __init__(
        self,
        target: str = "127.0.0.1:50051",
        *,
        timeout: float | None = 10.0,
        retry: r.RetryPolicy | None = None,
        channel: grpc.aio.Channel | None = None,
        metadata: Sequence[tuple[str, str]] = (),
        token: str | None = None,
        tls_ca: str | None = None,
        tls_cert: str | None = None,
        tls_key: str | None = None,
    ) -> None:
        # Closed by close() only when made here: a channel passed in is the caller's.
        self._owns_channel = channel is None
        if channel is None:
            creds = r.credentials(tls_ca, tls_cert, tls_key)
            if creds is None:
                channel = grpc.aio.insecure_channel(target, options=r.CHANNEL_OPTIONS)
            else:
                channel = grpc.aio.secure_channel(target, creds, options=r.CHANNEL_OPTIONS)
        self._channel = channel
        self.timeout = timeout
        self.retry = retry or r.RetryPolicy()
        self._metadata = tuple(metadata) + r.auth_metadata(token)
        self._unary = {
            name: self._channel.unary_unary(
                f"/{r.SERVICE}/{name}",
                request_serializer=req.SerializeToString,
                response_deserializer=resp.FromString,
            )
            for name, (req, resp) in r.METHODS.items()
        }
        req, resp = r.STREAMS["RecordOutcomes"]
        self._record = self._channel.stream_unary(
            f"/{r.SERVICE}/RecordOutcomes",
            request_serializer=req.SerializeToString,
            response_deserializer=resp.FromString,
        )

    async def close(self) -> None:
        if self._owns_channel:
            await self._channel.close()

    async def __aenter__(self) -> AsyncPatternStoreClient:
        return self

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def _call(self, method: str, request: Message, response: type[_R], safe: bool) -> _R:
        call = self._unary[method]
        retrier = r.Retrier(self.retry, safe, self.timeout)
        while True:
            try:
                # Not wait_for_ready: a connection that cannot succeed (TLS to a plain
                # port) would end in DEADLINE_EXCEEDED, hiding the reason.
                reply: Any = await call(request, timeout=retrier.left(), metadata=self._metadata)
                assert isinstance(reply, response)
                return reply
            except grpc.RpcError as exc:
                delay = retrier.next_delay(exc)
                if delay is None:
                    raise
                await asyncio.sleep(delay)

    async def get_pattern(self, id: str) -> pb.Pattern:
        return await self._call("GetPattern", pb.GetPatternRequest(id=id), pb.Pattern, True)

    async def get_patterns(self, ids: Iterable[str]) -> pb.GetPatternsResponse:
        req = pb.GetPatternsRequest(ids=list(ids))
        return await self._call("GetPatterns", req, pb.GetPatternsResponse, True)

    async def query_patterns(
        self,
        type: str = "",
        *,
        min_confidence: float = 0.0,
        order_by: pb.OrderBy | str = pb.ORDER_BY_CONFIDENCE,
        limit: int = 0,
        page_token: str = "",
        consistency: pb.Consistency = pb.CONSISTENCY_BOUNDED,
        seed: int = 0,
    ) -> pb.QueryPatternsResponse:
        req = r.query_request(
            type,
            min_confidence=min_confidence,
            order=order_by,
            limit=limit,
            page_token=page_token,
            consistency=consistency,
            seed=seed,
        )
        return await self._call("QueryPatterns", req, pb.QueryPatternsResponse, True)

    async def search_similar(
        self,
        embedding: Sequence[float],
        k: int = 10,
        *,
        type: str = "",
        min_confidence: float = 0.0,
        exact: bool = False,
        order_by: pb.OrderBy | str = pb.ORDER_BY_UNSPECIFIED,
        seed: int = 0,
    ) -> pb.SearchSimilarResponse:
        """The k stored patterns most similar (cosine) to ``embedding``, best first;
        filters apply before ranking. ``order_by="thompson"`` re-ranks them by one draw
        from each posterior."""
        req = r.search_request(
            embedding,
            k,
            type=type,
            min_confidence=min_confidence,
            exact=exact,
            order=order_by,
            seed=seed,
        )
        return await self._call("SearchSimilar", req, pb.SearchSimilarResponse, True)

    async def prune_patterns(self, *, dry_run: bool = False) -> pb.PrunePatternsResponse:
        """Run one pruning pass now (admin); ``dry_run`` only reports what would go."""
        req = pb.PrunePatternsRequest(dry_run=dry_run)
        return await self._call("PrunePatterns", req, pb.PrunePatternsResponse, dry_run)

    async def flush(self) -> pb.FlushResponse:
        return await self._call("Flush", pb.FlushRequest(), pb.FlushResponse, True)

    async def get_stats(self) -> pb.Stats:
        return await self._call("GetStats", pb.GetStatsRequest(), pb.Stats, True)

    async def store_pattern(
        self,
        pattern: pb.Pattern,
        *,
        expected_version: int = 0,
        create_only: bool = False,
        durability: pb.Durability = pb.DURABILITY_COMMITTED,
    ) -> pb.StorePatternResponse:
        req = r.store_request(
            pattern,
            expected_version=expected_version,
            create_only=create_only,
            durability=durability,
        )
        # Not retried, conditional or not: see the class docstring.
        return await self._call("StorePattern", req, pb.StorePatternResponse, False)

    async def store_patterns(
        self,
        requests: Iterable[pb.StorePatternRequest | pb.Pattern],
        *,
        durability: pb.Durability = pb.DURABILITY_COMMITTED,
    ) -> pb.StorePatternsResponse:
        items = [
            x if isinstance(x, pb.StorePatternRequest) else r.store_request(x) for x in requests
        ]
        req = pb.StorePatternsRequest(requests=items, durability=durability)
        return await self._call("StorePatterns", req, pb.StorePatternsResponse, False)

    async def delete_pattern(
        self,
        id: str,
        *,
        expected_version: int = 0,
        durability: pb.Durability = pb.DURABILITY_COMMITTED,
    ) -> pb.DeletePatternResponse:
        req = pb.DeletePatternRequest(
            id=id, expected_version=expected_version, durability=durability
        )
        return await self._call("DeletePattern", req, pb.DeletePatternResponse, False)

    async def update_confidence(
        self,
        id: str,
        outcome: pb.Outcome | str,
        *,
        weight: float = 0.0,
        observed_at: dt.datetime | float | Timestamp | None = None,
        request_id: str = "",
        durability: pb.Durability = pb.DURABILITY_COMMITTED,
    ) -> pb.UpdateConfidenceResponse:
        req = r.update_request(
            id,
            outcome,
            weight=weight,
            observed_at=observed_at,
            request_id=request_id,
            durability=durability,
        )
        return await self._call(
            "UpdateConfidence", req, pb.UpdateConfidenceResponse, bool(request_id)
        )

    async def update_confidence_batch(
        self,
        updates: Iterable[pb.UpdateConfidenceRequest],
        *,
        durability: pb.Durability = pb.DURABILITY_COMMITTED,
    ) -> pb.UpdateConfidenceBatchResponse:
        req = pb.UpdateConfidenceBatchRequest(updates=list(updates), durability=durability)
        safe = all(u.request_id for u in req.updates)
        return await self._call(
            "UpdateConfidenceBatch", req, pb.UpdateConfidenceBatchResponse, safe
        )

    async def record_outcomes(
        self,
        updates: AsyncIterable[pb.UpdateConfidenceRequest] | Iterable[pb.UpdateConfidenceRequest],
        *,
        timeout: float | None = None,
    ) -> pb.RecordOutcomesResponse:
        """Stream outcomes; everything accepted is durable when this returns. Not retried.

        An exception from ``updates`` is raised as itself, not as the CancelledError
        grpc.aio turns it into; the outcomes sent before it stay applied.
        """
        stream = r.RequestStream(updates)
        try:
            reply: Any = await self._record(
                aiter(stream),
                timeout=self.timeout if timeout is None else timeout,
                metadata=self._metadata,
            )
        except (grpc.RpcError, asyncio.CancelledError) as exc:
            task = asyncio.current_task()
            cancelled = task is not None and task.cancelling() > 0
            if stream.error is None or cancelled:
                raise  # a real cancel of the caller's task stays a cancel
            raise stream.error from exc
        assert isinstance(reply, pb.RecordOutcomesResponse)
        return reply
