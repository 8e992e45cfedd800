"""The gRPC face: parses requests, calls the engine, maps domain errors to status codes.

Handlers are registered with identity (de)serialisers: requests arrive as bytes, so a
malformed message becomes INVALID_ARGUMENT instead of gRPC's generic INTERNAL, and
replies leave as bytes, so a read is served from the cached serialised pattern without
building a message (GetPatterns frames the cached bytes into its reply by hand).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import grpc
from google.protobuf.message import DecodeError, Message
from patternstore.v1 import patternstore_pb2 as pb

from . import validate
from .engine import Engine, OutcomeResult
from .errors import InvalidArgument, NotFound, Overloaded, PatternStoreError
from .metrics import SERVICE, MethodMetrics, Metrics
from .query import parse_query, run_query
from .storage import ConnectionPool
from .storage.backup import copy_database

__all__ = ["PatternStoreServicer"]

log = logging.getLogger(__name__)

_M = TypeVar("_M", bound=Message)
_Unary = Callable[[bytes], Awaitable[bytes]]

_BACKUP_CHUNK = 1024 * 1024
_PATTERNS_TAG = b"\x0a"  # GetPatternsResponse.patterns: field 1, length-delimited
_MISSING_TAG = b"\x12"  # GetPatternsResponse.missing_ids: field 2, length-delimited


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


# Tag and length of a framed pattern, precomputed for the usual sizes: building them per
# item was a visible share of a GetPatterns(100) call.
_PREFIXED = 16384
_PATTERN_PREFIX = [_PATTERNS_TAG + _varint(n) for n in range(_PREFIXED)]


def _parse(cls: type[_M], raw: bytes) -> _M:
    try:
        return cls.FromString(raw)
    except DecodeError as exc:
        raise InvalidArgument("request", f"is not a valid {cls.DESCRIPTOR.name}: {exc}") from None


def _durable(d: pb.Durability) -> bool:
    if d not in (pb.DURABILITY_UNSPECIFIED, pb.DURABILITY_COMMITTED, pb.DURABILITY_QUEUED):
        raise InvalidArgument("durability", f"unknown value {d}")
    return d != pb.DURABILITY_QUEUED


class PatternStoreServicer:
    def __init__(
        self, engine: Engine, pool: ConnectionPool, metrics: Metrics, query_threads: int
    ) -> None:
        self._engine = engine
        self._pool = pool
        self._metrics = metrics
        self._queries = ThreadPoolExecutor(query_threads, thread_name_prefix="patternstore-query")
        # Calls inside a handler now, and when the last one started (loop thread only):
        # shutdown drains until both say the clients have gone quiet.
        self.in_flight = 0
        self.last_started = 0.0

    def close(self) -> None:
        self._queries.shutdown(wait=True)

    def handler(self) -> grpc.GenericRpcHandler:
        unary: dict[str, _Unary] = {
            "GetPattern": self.get_pattern,
            "GetPatterns": self.get_patterns,
            "StorePattern": self.store_pattern,
            "StorePatterns": self.store_patterns,
            "DeletePattern": self.delete_pattern,
            "UpdateConfidence": self.update_confidence,
            "UpdateConfidenceBatch": self.update_confidence_batch,
            "QueryPatterns": self.query_patterns,
            "Flush": self.flush,
            "GetStats": self.get_stats,
        }
        handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {
            name: grpc.unary_unary_rpc_method_handler(
                self._wrap_unary(fn, self._metrics.method(name, "unary"))
            )
            for name, fn in unary.items()
        }
        handlers["RecordOutcomes"] = grpc.stream_unary_rpc_method_handler(
            self._wrap_stream(self._metrics.method("RecordOutcomes", "client_stream"))
        )
        handlers["Backup"] = grpc.unary_stream_rpc_method_handler(
            self._backup_handler(self._metrics.method("Backup", "server_stream"))
        )
        return grpc.method_handlers_generic_handler(SERVICE, handlers)

    # -- error mapping and metrics, once for every method -----------------------------

    def _wrap_unary(
        self, fn: _Unary, m: MethodMetrics
    ) -> Callable[[bytes, grpc.aio.ServicerContext[Any, Any]], Awaitable[bytes]]:
        async def handle(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
            self.in_flight += 1
            m.started.inc()
            m.msg_received.inc()
            self.last_started = started = time.perf_counter()
            code = grpc.StatusCode.OK
            try:
                remaining = context.time_remaining()
                if remaining is not None and remaining <= 0:
                    # The caller gave up while the call queued: do no work for it.
                    code = grpc.StatusCode.DEADLINE_EXCEEDED
                    await context.abort(code, "deadline passed before the call was served")
                reply = await fn(request)
                m.msg_sent.inc()
                return reply
            except PatternStoreError as exc:
                code = exc.code
                await context.abort(code, str(exc), self._trailers(exc))
            except asyncio.CancelledError:
                code = grpc.StatusCode.CANCELLED
                raise
            except Exception:
                log.exception("unexpected error")
                code = grpc.StatusCode.INTERNAL
                await context.abort(code, "internal error; the server log has the details")
            finally:
                m.done(code, time.perf_counter() - started)
                self.in_flight -= 1

        return handle

    def _wrap_stream(
        self, m: MethodMetrics
    ) -> Callable[[AsyncIterator[bytes], grpc.aio.ServicerContext[Any, Any]], Awaitable[bytes]]:
        async def handle(
            requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext[Any, Any]
        ) -> bytes:
            self.in_flight += 1
            m.started.inc()
            self.last_started = started = time.perf_counter()
            code = grpc.StatusCode.OK
            try:
                reply = await self.record_outcomes(requests, m)
                m.msg_sent.inc()
                return reply
            except PatternStoreError as exc:
                code = exc.code
                await context.abort(code, str(exc), self._trailers(exc))
            except asyncio.CancelledError:
                code = grpc.StatusCode.CANCELLED
                raise
            except Exception:
                log.exception("unexpected error")
                code = grpc.StatusCode.INTERNAL
                await context.abort(code, "internal error; the server log has the details")
            finally:
                m.done(code, time.perf_counter() - started)
                self.in_flight -= 1

        return handle

    def _trailers(self, exc: PatternStoreError) -> tuple[tuple[str, str], ...]:
        if isinstance(exc, Overloaded):
            self._metrics.rejected.inc()
            return (("retry-after-ms", str(exc.retry_after_ms)),)
        return ()

    # -- reads ---------------------------------------------------------------------------

    async def get_pattern(self, raw: bytes) -> bytes:
        req = _parse(pb.GetPatternRequest, raw)
        data = self._engine.get_serialized(req.id)
        if data is None:
            raise NotFound(f"pattern {req.id!r} does not exist")
        return data

    async def get_patterns(self, raw: bytes) -> bytes:
        req = _parse(pb.GetPatternsRequest, raw)
        ids = req.ids
        validate.check_count(len(ids), validate.MAX_GET_IDS, "ids")
        parts: list[bytes] = []
        missing: list[bytes] = []
        prefixes = _PATTERN_PREFIX
        for pid, data in zip(ids, self._engine.get_many_serialized(ids), strict=True):
            if data is None:
                encoded = pid.encode()
                missing += (_MISSING_TAG, _varint(len(encoded)), encoded)
            else:
                size = len(data)
                parts.append(prefixes[size] if size < _PREFIXED else _PATTERNS_TAG + _varint(size))
                parts.append(data)
        return b"".join(parts + missing)

    async def query_patterns(self, raw: bytes) -> bytes:
        req = _parse(pb.QueryPatternsRequest, raw)
        spec = parse_query(req)
        l3 = self._engine.l3
        key = spec.cache_key()
        if req.consistency == pb.CONSISTENCY_STRONG:
            await self._engine.wait_durable()
        else:
            cached = l3.get(key)
            if cached is not None:
                return cached
        epoch = l3.epoch(spec.type)
        loop = asyncio.get_running_loop()
        reply = await loop.run_in_executor(self._queries, run_query, self._pool, spec)
        l3.put(key, spec.type, reply, epoch)
        return reply

    def _backup_handler(
        self, m: MethodMetrics
    ) -> Callable[[bytes, grpc.aio.ServicerContext[Any, Any]], AsyncIterator[bytes]]:
        async def handle(
            raw: bytes, context: grpc.aio.ServicerContext[Any, Any]
        ) -> AsyncIterator[bytes]:
            self.in_flight += 1
            m.started.inc()
            m.msg_received.inc()
            self.last_started = started = time.perf_counter()
            code = grpc.StatusCode.OK
            try:
                _parse(pb.BackupRequest, raw)
                async for chunk in self.backup():
                    m.msg_sent.inc()
                    yield chunk
            except PatternStoreError as exc:
                code = exc.code
                await context.abort(code, str(exc))
            finally:
                m.done(code, time.perf_counter() - started)
                self.in_flight -= 1

        return handle

    async def backup(self) -> AsyncIterator[bytes]:
        """Copy the database beside it, stream the copy, delete it."""
        loop = asyncio.get_running_loop()
        path = self._pool.path.with_name(f"backup-{time.time_ns()}.db")
        try:
            durable = await loop.run_in_executor(None, copy_database, self._pool.path, path)
            total = path.stat().st_size
            with path.open("rb") as f:
                first = True
                while True:
                    data = await loop.run_in_executor(None, f.read, _BACKUP_CHUNK)
                    if not data and not first:
                        return
                    chunk = pb.BackupChunk(data=data)
                    if first:
                        chunk.total_bytes, chunk.durable_sequence = total, durable
                        first = False
                    yield chunk.SerializeToString()
        finally:
            path.unlink(missing_ok=True)

    # -- writes --------------------------------------------------------------------------

    async def store_pattern(self, raw: bytes) -> bytes:
        req = _parse(pb.StorePatternRequest, raw)
        durable = _durable(req.durability)
        (r,) = await self._engine.store([req], durable, batch=False)
        return pb.StorePatternResponse(
            id=r.id, version=r.version, sequence=r.sequence, created=r.created
        ).SerializeToString()

    async def store_patterns(self, raw: bytes) -> bytes:
        req = _parse(pb.StorePatternsRequest, raw)
        validate.check_count(len(req.requests), validate.MAX_STORE_ITEMS, "requests")
        durable = _durable(req.durability)
        results = await self._engine.store(list(req.requests), durable, batch=True)
        resp = pb.StorePatternsResponse()
        for r in results:
            resp.results.add(id=r.id, version=r.version, sequence=r.sequence, created=r.created)
        return resp.SerializeToString()

    async def delete_pattern(self, raw: bytes) -> bytes:
        req = _parse(pb.DeletePatternRequest, raw)
        seq = await self._engine.delete(req.id, req.expected_version, _durable(req.durability))
        return pb.DeletePatternResponse(sequence=seq).SerializeToString()

    async def update_confidence(self, raw: bytes) -> bytes:
        req = _parse(pb.UpdateConfidenceRequest, raw)
        r = await self._engine.update(req, _durable(req.durability))
        return pb.UpdateConfidenceResponse(
            confidence=r.confidence, sequence=r.sequence, duplicate=r.duplicate
        ).SerializeToString()

    async def update_confidence_batch(self, raw: bytes) -> bytes:
        req = _parse(pb.UpdateConfidenceBatchRequest, raw)
        validate.check_count(len(req.updates), validate.MAX_UPDATE_ITEMS, "updates")
        results = await self._engine.update_batch(list(req.updates), _durable(req.durability))
        resp = pb.UpdateConfidenceBatchResponse()
        for r in results:
            if isinstance(r, OutcomeResult):
                resp.results.add(
                    confidence=r.confidence, sequence=r.sequence, duplicate=r.duplicate
                )
            else:
                resp.results.add(code=r.code.value[0], message=str(r))
        return resp.SerializeToString()

    async def record_outcomes(self, requests: AsyncIterator[bytes], m: MethodMetrics) -> bytes:
        engine = self._engine
        accepted = not_found = duplicates = 0
        index = 0
        async for raw in requests:
            m.msg_received.inc()
            if engine.queue_full:
                # Back-pressure instead of refusal: while we wait, HTTP/2 flow control
                # stops the sender.
                await engine.wait_durable()
            try:
                r = engine.accept_streamed(_parse(pb.UpdateConfidenceRequest, raw), index)
            except NotFound:
                not_found += 1
            except PatternStoreError as exc:
                await engine.wait_durable()
                exc.args = (
                    f"{exc.args[0]}; the {accepted} outcomes before it are applied and durable",
                )
                raise
            else:
                if r.duplicate:
                    duplicates += 1
                else:
                    accepted += 1
            index += 1
        durable = await engine.wait_durable()
        return pb.RecordOutcomesResponse(
            accepted=accepted,
            not_found=not_found,
            duplicates=duplicates,
            durable_sequence=durable,
        ).SerializeToString()

    async def flush(self, raw: bytes) -> bytes:
        _parse(pb.FlushRequest, raw)
        patterns, updates = self._engine.pending_counts()
        durable = await self._engine.wait_durable()
        return pb.FlushResponse(
            durable_sequence=durable, patterns_written=patterns, updates_applied=updates
        ).SerializeToString()

    async def get_stats(self, raw: bytes) -> bytes:
        _parse(pb.GetStatsRequest, raw)
        return self._engine_stats().SerializeToString()

    def _engine_stats(self) -> pb.Stats:
        e = self._engine
        s = pb.Stats(
            batches_flushed=e.committer.batches,
            items_committed=e.committer.items,
            durable_sequence=e.durable_sequence,
            last_sequence=e.last_sequence,
            patterns=e.count_patterns(),
            uptime_seconds=time.monotonic() - e.started_monotonic,
        )
        s.database_bytes, s.wal_bytes = self._pool.file_sizes()
        for tier, hits, misses, evictions, entries, size in e.cache_figures():
            s.caches.add(
                tier=tier,
                hits=hits,
                misses=misses,
                evictions=evictions,
                entries=entries,
                bytes=size,
            )
        s.queues.add(name="writes", depth=e.queue_depth, capacity=e.queue_capacity)
        return s
