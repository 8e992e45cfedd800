"""The synchronous client learning workers use."""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import time
from collections.abc import Iterable, Iterator, Sequence
from types import TracebackType
from typing import Any, TypeVar

import grpc
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp
from grpc_health.v1 import health_pb2, health_pb2_grpc

from . import _requests as r
from .v1 import patternstore_pb2 as pb

__all__ = ["PatternStoreClient"]

_R = TypeVar("_R", bound=Message)


class PatternStoreClient:
    """A connection to a patternstore server.

    Errors arrive as ``grpc.RpcError`` (``.code()``, ``.details()``). Calls that are safe
    to repeat (reads, and outcomes whose every update has a ``request_id``) are retried
    with exponential backoff when the server is UNAVAILABLE, within ``timeout`` seconds
    in all. Others are not, since the first attempt may have been applied: that includes
    stores and deletes with ``expected_version``, whose retry would report ABORTED or
    NOT_FOUND for a write that happened (and a caller re-applying after ABORTED would
    apply its change twice).
    """

    def __init__(
        self,
        target: str = "127.0.0.1:50051",
        *,
        timeout: float | None = 10.0,
        retry: r.RetryPolicy | None = None,
        channel: grpc.Channel | None = None,
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
                channel = grpc.insecure_channel(target, options=r.CHANNEL_OPTIONS)
            else:
                channel = grpc.secure_channel(target, creds, options=r.CHANNEL_OPTIONS)
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

    def close(self) -> None:
        if self._owns_channel:
            self._channel.close()

    def __enter__(self) -> PatternStoreClient:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _call(self, method: str, request: Message, response: type[_R], safe: bool) -> _R:
        call = self._unary[method]
        retrier = r.Retrier(self.retry, safe, self.timeout)
        while True:
            try:
                # Not wait_for_ready: a connection that cannot succeed (TLS to a plain
                # port) would end in DEADLINE_EXCEEDED, hiding the reason.
                reply: Any = call(request, timeout=retrier.left(), metadata=self._metadata)
                assert isinstance(reply, response)
                return reply
            except grpc.RpcError as exc:
                delay = retrier.next_delay(exc)
                if delay is None:
                    raise
                time.sleep(delay)

    # -- reads ---------------------------------------------------------------------------

    def get_pattern(self, id: str) -> pb.Pattern:
        return self._call("GetPattern", pb.GetPatternRequest(id=id), pb.Pattern, True)

    def get_patterns(self, ids: Iterable[str]) -> pb.GetPatternsResponse:
        req = pb.GetPatternsRequest(ids=list(ids))
        return self._call("GetPatterns", req, pb.GetPatternsResponse, True)

    def query_patterns(
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
        return self._call("QueryPatterns", req, pb.QueryPatternsResponse, True)

    def iter_patterns(
        self,
        type: str = "",
        *,
        min_confidence: float = 0.0,
        order_by: pb.OrderBy | str = pb.ORDER_BY_CONFIDENCE,
        page_size: int = 1000,
        consistency: pb.Consistency = pb.CONSISTENCY_BOUNDED,
    ) -> Iterator[pb.Pattern]:
        """Every matching pattern, page by page. Only ``order_by="id"`` is sure to visit
        every pattern once while others write: in any other ordering a pattern whose
        value changes between two pages can move past the cursor and be skipped."""
        token = ""
        while True:
            page = self.query_patterns(
                type,
                min_confidence=min_confidence,
                order_by=order_by,
                limit=page_size,
                page_token=token,
                consistency=consistency,
            )
            yield from page.patterns
            token = page.next_page_token
            if not token:
                return

    def health(self, service: str = "patternstore.v1.PatternStore") -> str:
        """The gRPC health status name of ``service`` (SERVING, NOT_SERVING, ...)."""
        stub: Any = health_pb2_grpc.HealthStub(self._channel)
        reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=self.timeout)
        return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)

    def backup(self, out: str, *, timeout: float | None = None) -> pb.BackupChunk:
        """Write a consistent copy of the server's database to ``out``; return its header.

        The copy is written beside ``out`` and renamed when complete, so ``out`` never
        holds a partial file.
        """
        call = self._channel.unary_stream(
            f"/{r.SERVICE}/Backup",
            request_serializer=pb.BackupRequest.SerializeToString,
            response_deserializer=pb.BackupChunk.FromString,
        )
        header = pb.BackupChunk()
        partial = f"{out}.partial"
        try:
            with open(partial, "wb") as f:
                for i, chunk in enumerate(
                    call(pb.BackupRequest(), timeout=timeout or 3600, metadata=self._metadata)
                ):
                    if i == 0:
                        header.total_bytes = chunk.total_bytes
                        header.durable_sequence = chunk.durable_sequence
                    f.write(chunk.data)
                written = f.tell()
                # On disk before it takes the name: a power loss just after must not
                # leave an empty or short "verified" backup (helper-27).
                f.flush()
                os.fsync(f.fileno())
            if written != header.total_bytes:
                raise OSError(
                    f"backup stream ended at {written} of {header.total_bytes} bytes; try again"
                )
            os.replace(partial, out)
            directory = os.open(os.path.dirname(os.path.abspath(out)), os.O_RDONLY)
            try:
                os.fsync(directory)  # the rename itself
            finally:
                os.close(directory)
        except BaseException:
            # A failed stream leaves nothing behind (``out`` was never touched).
            with contextlib.suppress(FileNotFoundError):
                os.unlink(partial)
            raise
        return header

    def search_similar(
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
        return self._call("SearchSimilar", req, pb.SearchSimilarResponse, True)

    def prune_patterns(self, *, dry_run: bool = False) -> pb.PrunePatternsResponse:
        """Run one pruning pass now (admin); ``dry_run`` only reports what would go."""
        req = pb.PrunePatternsRequest(dry_run=dry_run)
        return self._call("PrunePatterns", req, pb.PrunePatternsResponse, dry_run)

    def flush(self) -> pb.FlushResponse:
        return self._call("Flush", pb.FlushRequest(), pb.FlushResponse, True)

    def get_stats(self) -> pb.Stats:
        return self._call("GetStats", pb.GetStatsRequest(), pb.Stats, True)

    # -- writes --------------------------------------------------------------------------

    def store_pattern(
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
        return self._call("StorePattern", req, pb.StorePatternResponse, False)

    def store_patterns(
        self,
        requests: Iterable[pb.StorePatternRequest | pb.Pattern],
        *,
        durability: pb.Durability = pb.DURABILITY_COMMITTED,
    ) -> pb.StorePatternsResponse:
        items = [
            x if isinstance(x, pb.StorePatternRequest) else r.store_request(x) for x in requests
        ]
        req = pb.StorePatternsRequest(requests=items, durability=durability)
        return self._call("StorePatterns", req, pb.StorePatternsResponse, False)

    def delete_pattern(
        self,
        id: str,
        *,
        expected_version: int = 0,
        durability: pb.Durability = pb.DURABILITY_COMMITTED,
    ) -> pb.DeletePatternResponse:
        req = pb.DeletePatternRequest(
            id=id, expected_version=expected_version, durability=durability
        )
        return self._call("DeletePattern", req, pb.DeletePatternResponse, False)

    def update_confidence(
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
        return self._call("UpdateConfidence", req, pb.UpdateConfidenceResponse, bool(request_id))

    def update_confidence_batch(
        self,
        updates: Iterable[pb.UpdateConfidenceRequest],
        *,
        durability: pb.Durability = pb.DURABILITY_COMMITTED,
    ) -> pb.UpdateConfidenceBatchResponse:
        req = pb.UpdateConfidenceBatchRequest(updates=list(updates), durability=durability)
        safe = all(u.request_id for u in req.updates)
        return self._call("UpdateConfidenceBatch", req, pb.UpdateConfidenceBatchResponse, safe)

    def record_outcomes(
        self, updates: Iterable[pb.UpdateConfidenceRequest], *, timeout: float | None = None
    ) -> pb.RecordOutcomesResponse:
        """Stream outcomes; everything accepted is durable when this returns. Not retried.

        An exception from ``updates`` is raised as itself (from the call's RpcError); the
        outcomes sent before it stay applied, as after any interrupted stream.
        """
        stream = r.RequestStream(updates)
        try:
            reply: Any = self._record(
                iter(stream),
                timeout=self.timeout if timeout is None else timeout,
                metadata=self._metadata,
            )
        except grpc.RpcError as exc:
            if stream.error is not None:
                raise stream.error from exc
            raise
        assert isinstance(reply, pb.RecordOutcomesResponse)
        return reply
