"""The gRPC face: parses requests, calls the engine, maps domain errors to status codes.

Handlers are registered with identity (de)serialisers: requests arrive as bytes, so a
malformed message becomes INVALID_ARGUMENT instead of gRPC's generic INTERNAL, and
replies leave as bytes, so a read is served from the cached serialised pattern without
building a message (GetPatterns frames the cached bytes into its reply by hand).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import secrets
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import grpc
import numpy as np
from google.protobuf.message import DecodeError, Message
from patternstore.v1 import patternstore_pb2 as pb

from . import validate
from .codecs import CodecError
from .engine import Engine, OutcomeResult
from .errors import (
    AlreadyExists,
    DataLoss,
    InvalidArgument,
    NotFound,
    Overloaded,
    PatternStoreError,
    ReplyTooLarge,
    Starting,
    TooManyCalls,
    VersionConflict,
)
from .metrics import SERVICE, MethodMetrics, Metrics
from .query import QuerySpec, parse_query, run_query, thompson_page_token
from .storage import ConnectionPool
from .storage.backup import copy_database

__all__ = ["BACKUP_PREFIX", "PatternStoreServicer"]

# Backup copies are made beside the database under this name and deleted once streamed;
# the server deletes any a crash left behind when it starts (it holds the directory).
BACKUP_PREFIX = "backup-"

# Refusals of the request itself, not of the server's state (see _settle).
_REFUSALS = (InvalidArgument, NotFound, AlreadyExists, VersionConflict, DataLoss)

log = logging.getLogger(__name__)

_M = TypeVar("_M", bound=Message)
_Unary = Callable[[bytes], Awaitable[bytes]]

_BACKUP_CHUNK = 1024 * 1024
# Longest the search batcher waits for the last batch's callers to send their next
# queries (a local round trip is a fraction of this; a scan of 100,000 rows is ~10 ms).
_SEARCH_GATHER_S = 0.002
# (k to fetch, type, min_confidence, exact): searches sharing it can share a scan.
_SearchKey = tuple[int, str | None, float, bool]
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


_STARTING = "the server is starting (loading patterns into memory); retry shortly"


def _discard_copy(copying: asyncio.Future[int], path: Path) -> None:
    """Delete a backup copy once its (abandoned) copy thread is done."""
    if not copying.cancelled() and copying.exception() is not None:
        log.warning("an abandoned backup copy failed: %s", copying.exception())
    path.unlink(missing_ok=True)


def _data_loss(exc: CodecError) -> str:
    return str(DataLoss(exc))


def _parse(cls: type[_M], raw: bytes) -> _M:
    try:
        return cls.FromString(raw)
    except DecodeError as exc:
        raise InvalidArgument("request", f"is not a valid {cls.DESCRIPTOR.name}: {exc}") from None


def _durable(d: pb.Durability) -> bool:
    if d not in (pb.DURABILITY_UNSPECIFIED, pb.DURABILITY_COMMITTED, pb.DURABILITY_QUEUED):
        raise InvalidArgument("durability", f"unknown value {d}")
    return d != pb.DURABILITY_QUEUED


class _Call:
    """What a finished streaming call reports to its metrics."""

    __slots__ = ("code",)

    def __init__(self) -> None:
        self.code = grpc.StatusCode.OK


class PatternStoreServicer:
    def __init__(
        self,
        engine: Engine,
        pool: ConnectionPool,
        metrics: Metrics,
        query_threads: int,
        max_send_bytes: int = 64 * 1024 * 1024,
        max_concurrent_rpcs: int = 0,
    ) -> None:
        self._engine = engine
        # PatternStore calls in a handler at once (0: no limit). Counted here, not by
        # grpc's maximum_concurrent_rpcs, which counts health and reflection streams
        # too: with auth on, anonymous Health.Watch streams could fill it and lock every
        # caller with a token out (helper-27).
        self._max_in_flight = max_concurrent_rpcs or sys.maxsize
        self._too_many = (
            f"{max_concurrent_rpcs} calls in progress, the most this server serves at once "
            "(max_concurrent_rpcs); retry after a moment"
        )
        # Replies of many patterns stop short of this (helper-27: 1000 ids of 1 MiB
        # payloads, stored once thanks to dedup, built a 1 GB reply for one call).
        self._max_send_bytes = max_send_bytes
        self._pool = pool
        self._metrics = metrics
        self._queries = ThreadPoolExecutor(query_threads, thread_name_prefix="patternstore-query")
        # SearchSimilar requests waiting for the batcher (loop thread only).
        self._search_queue: list[tuple[_SearchKey, np.ndarray, asyncio.Future[Any]]] = []
        self._search_tasks: set[asyncio.Future[None]] = set()
        self._search_running = False
        # Set when ``_search_wanted`` queries wait: ends the batcher's gather pause early.
        self._search_ready = asyncio.Event()
        self._search_wanted = 0
        # Calls inside a handler now, and when the last one started (loop thread only):
        # shutdown drains until both say the clients have gone quiet.
        self.in_flight = 0
        self.last_started = 0.0
        # Set once the pattern memory is loaded. Until then every call is refused (like
        # Redis's LOADING): the memory answers whether an id exists, so a read would
        # say NOT_FOUND and a store would take an existing pattern for a new one.
        self.ready = False

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
            "SearchSimilar": self.search_similar,
            "PrunePatterns": self.prune_patterns,
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
                if self.in_flight > self._max_in_flight:
                    raise TooManyCalls(self._too_many)
                if not self.ready:
                    raise Starting(_STARTING)
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
            except grpc.aio.AbortError:
                raise  # context.abort() above (deadline): already the reply
            except CodecError as exc:
                code = grpc.StatusCode.DATA_LOSS
                await context.abort(code, _data_loss(exc))
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
            async with self._call(context, m):
                if not self.ready:
                    raise Starting(_STARTING)
                reply = await self.record_outcomes(requests, m)
                m.msg_sent.inc()
                return reply
            raise AssertionError("unreachable: _call aborts the call on any error")

        return handle

    @contextlib.asynccontextmanager
    async def _call(
        self, context: grpc.aio.ServicerContext[Any, Any], m: MethodMetrics
    ) -> AsyncIterator[_Call]:
        """The error mapping and metrics of a streaming call (the unary wrapper inlines
        the same steps: a context manager costs a few us a call on the hottest path)."""
        self.in_flight += 1
        m.started.inc()
        started = self.last_started = time.perf_counter()
        call = _Call()
        try:
            if self.in_flight > self._max_in_flight:
                raise TooManyCalls(self._too_many)
            yield call
        except PatternStoreError as exc:
            call.code = exc.code
            await context.abort(call.code, str(exc), self._trailers(exc))
        except asyncio.CancelledError:
            call.code = grpc.StatusCode.CANCELLED
            raise
        except CodecError as exc:
            call.code = grpc.StatusCode.DATA_LOSS
            await context.abort(call.code, _data_loss(exc))
        except Exception:
            log.exception("unexpected error")
            call.code = grpc.StatusCode.INTERNAL
            await context.abort(call.code, "internal error; the server log has the details")
        finally:
            m.done(call.code, time.perf_counter() - started)
            self.in_flight -= 1

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
        validate.check_count(len(req.ids), validate.MAX_GET_IDS, "ids")
        # Once into a list: each pass over the repeated field makes new str objects
        # (about 8 us per 100 ids), and the ids are walked twice below.
        ids = list(req.ids)
        found = self._engine.get_many_serialized(ids)
        prefixes = _PATTERN_PREFIX
        if None not in found:
            # All found (the common case): prefixes and payloads interleaved by slices,
            # 7.3 us against 9.4 for the loop below at 100 patterns.
            sizes = [len(data) for data in found]  # type: ignore[arg-type]
            self._check_reply(sum(sizes), len(ids))
            if max(sizes, default=0) < _PREFIXED:
                framed: list[bytes | None] = [None] * (2 * len(found))
                framed[0::2] = [prefixes[size] for size in sizes]
                framed[1::2] = found
                return b"".join(framed)  # type: ignore[arg-type]
        self._check_reply(sum(len(data) for data in found if data is not None), len(ids))
        parts: list[bytes] = []
        missing: list[bytes] = []
        for pid, data in zip(ids, found, strict=True):
            if data is None:
                encoded = pid.encode()
                missing += (_MISSING_TAG, _varint(len(encoded)), encoded)
            else:
                size = len(data)
                parts.append(prefixes[size] if size < _PREFIXED else _PATTERNS_TAG + _varint(size))
                parts.append(data)
        return b"".join(parts + missing)

    def _check_reply(self, size: int, items: int) -> None:
        if size > self._max_send_bytes:
            raise ReplyTooLarge(
                f"the reply would be {size / 2**20:.1f} MiB for {items} patterns, past "
                f"max_send_bytes ({self._max_send_bytes / 2**20:.0f} MiB); ask for fewer"
            )

    async def query_patterns(self, raw: bytes) -> bytes:
        req = _parse(pb.QueryPatternsRequest, raw)
        spec = parse_query(req)
        if spec.order == "thompson":
            return self._thompson_query(req, spec)  # its patterns are read (and touched)
        reply = await self._ordered_query(req, spec)
        memory = self._engine.memory
        if memory.track_reads:
            # What a query returns is read, like a Get, whether the reply came from L3 or
            # SQLite: else a pattern only ever read by queries is pruned as idle. Parsed
            # back for its ids only when idle pruning is on.
            now = self._engine.now()
            for pattern in pb.QueryPatternsResponse.FromString(reply).patterns:
                memory.touch(pattern.id, now)
        return reply

    async def _ordered_query(self, req: pb.QueryPatternsRequest, spec: QuerySpec) -> bytes:
        l3 = self._engine.l3
        key = spec.cache_key()
        if req.consistency == pb.CONSISTENCY_STRONG:
            # Every acknowledged write, committed and reflected in the ordering ranks.
            await self._engine.wait_ranked()
        else:
            cached = l3.get(key)
            if cached is not None:
                return cached
        epoch, started = l3.epoch(spec.type), l3.now()
        loop = asyncio.get_running_loop()
        now = self._engine.now()
        reply, cacheable = await loop.run_in_executor(
            self._queries, run_query, self._pool, spec, now, self._max_send_bytes
        )
        if cacheable:
            # Aged from the query's start: its snapshot may predate a commit made while
            # it ran, and the staleness bound is counted from the data, not the reply.
            l3.put(key, spec.type, reply, epoch, computed_at=started)
        return reply

    def _frame_patterns(self, ids: list[str]) -> tuple[list[bytes], int]:
        """Found patterns of ``ids`` framed as repeated field 1 (skipping missing ones),
        and how many ids that took: fewer than all once max_send_bytes is reached."""
        parts: list[bytes] = []
        total = 0
        for n, data in enumerate(self._engine.get_many_serialized(ids)):
            if data is not None:
                size = len(data)
                total += size + 16
                if parts and total > self._max_send_bytes:
                    return parts, n
                parts.append(
                    _PATTERN_PREFIX[size] if size < _PREFIXED else _PATTERNS_TAG + _varint(size)
                )
                parts.append(data)
        return parts, len(ids)

    def _thompson_query(self, req: pb.QueryPatternsRequest, spec: QuerySpec) -> bytes:
        # Page n of a Thompson ranking is the same seeded draw, n pages further in.
        offset = 0
        seed = req.seed
        if spec.after is not None:
            offset, seed = int(spec.after[0]), int(spec.after[1])
        if not seed:
            seed = secrets.randbits(63) or 1
        ids = self._engine.thompson_ids(
            spec.type, spec.min_confidence, offset + spec.limit + 1, seed
        )
        page = ids[offset : offset + spec.limit]
        parts, taken = self._frame_patterns(page)
        if len(ids) > offset + taken:
            token = thompson_page_token(spec, offset + taken, seed).encode()
            parts += (b"\x12", _varint(len(token)), token)
        return b"".join(parts)

    async def search_similar(self, raw: bytes) -> bytes:
        req = _parse(pb.SearchSimilarRequest, raw)
        index = self._engine.memory.vectors
        if not req.embedding:
            raise InvalidArgument("embedding", "must not be empty")
        if index.dims is not None and len(req.embedding) != index.dims:
            raise InvalidArgument(
                "embedding", f"has {len(req.embedding)} values; stored embeddings have {index.dims}"
            )
        query = np.asarray(req.embedding, dtype=np.float32)
        if not np.isfinite(query).all() or not query.any():
            raise InvalidArgument("embedding", "must be finite and not all zeros")
        if req.type:
            validate.check_type(req.type)
        if math.isnan(req.min_confidence):
            raise InvalidArgument("min_confidence", "must be a number, not NaN")
        if req.order_by not in (pb.ORDER_BY_UNSPECIFIED, pb.ORDER_BY_THOMPSON):
            raise InvalidArgument("order_by", "SearchSimilar ranks by similarity or THOMPSON only")
        k = 10 if req.k == 0 else min(req.k, 1000)
        if index.dims is None:
            return b""
        # Expired patterns stay in the index until pruned: ask for a few more, and more
        # again while they crowd out the k nearest (up to the whole index).
        fetch = k * 2 if self._engine.memory.expiring else k
        while True:
            try:
                hits = await self._batched_search(
                    query, (fetch, req.type or None, req.min_confidence, req.exact)
                )
            except CodecError:
                raise  # a stored embedding that will not decode: DATA_LOSS, not the caller's
            except ValueError as exc:
                raise InvalidArgument("embedding", str(exc)) from None
            ids = [pid for pid, _ in hits]
            # Candidates are not reads: only the k returned count against idle pruning.
            datas = self._engine.get_many_serialized(ids, touch=False)
            found = [
                (pid, sim, data)
                for (pid, sim), data in zip(hits, datas, strict=True)
                if data is not None
            ]
            if len(found) >= k or len(hits) < fetch:
                break
            fetch *= 4
        found = found[:k]
        self._check_reply(sum(len(data) for _, _, data in found), len(found))
        now = self._engine.now()
        for pid, _, _ in found:
            self._engine.memory.touch(pid, now)
        if req.order_by == pb.ORDER_BY_THOMPSON and found:
            alpha, beta = self._engine.memory.posteriors.params([pid for pid, _, _ in found])
            rng = np.random.default_rng(req.seed or None)
            order = np.argsort(-rng.beta(alpha, beta), kind="stable")
            found = [found[i] for i in order]
        resp = pb.SearchSimilarResponse()
        for _, sim, data in found:
            item = resp.results.add(similarity=sim)
            item.pattern.MergeFromString(data)
        return resp.SerializeToString()

    async def _batched_search(self, query: np.ndarray, key: _SearchKey) -> list[tuple[str, float]]:
        """Search through the batcher: concurrent requests with the same filters share one
        pass over the index's codes (the scan is memory-bound; 8 queries cost little more
        than one), which is how SearchSimilar serves more than one core's worth."""
        fut: asyncio.Future[list[tuple[str, float]]] = asyncio.get_running_loop().create_future()
        self._search_queue.append((key, query, fut))
        if len(self._search_queue) >= self._search_wanted:
            self._search_ready.set()
        # One batch at a time: the index splits its scan over ``query_threads`` threads,
        # so a batch uses every core while the next requests queue up behind it, and
        # batches grow (the scan's cost is mostly per batch). Measured with 8 clients
        # (bench_search.py, same hour): 200-208 queries/s with one batch per thread,
        # 214-247 with one split batch and the gather pause below.
        if not self._search_running:
            # A flag the batcher clears itself, not the task set: a task that has
            # returned stays in the set until its done-callback runs, and a query queued
            # in between would wait for a batcher that is gone.
            self._search_running = True
            task = asyncio.ensure_future(self._run_searches())
            self._search_tasks.add(task)
            task.add_done_callback(self._search_tasks.discard)
        return await fut

    async def _run_searches(self) -> None:
        try:
            await self._run_search_batches()
        finally:
            self._search_running = False

    async def _run_search_batches(self) -> None:
        loop = asyncio.get_running_loop()
        index = self._engine.memory.vectors
        last = 0
        while True:
            if len(self._search_queue) < last:
                # The callers of the batch just answered are sending their next queries:
                # wait (briefly) until as many wait as last time. A scan costs mostly per
                # batch (the int8 cast) rather than per query, so without the pause the
                # clients split into two alternating half-size batches.
                self._search_wanted = last
                self._search_ready.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._search_ready.wait(), _SEARCH_GATHER_S)
            if not self._search_queue:
                return
            batch, self._search_queue = self._search_queue, []
            last = len(batch)
            groups: dict[_SearchKey, list[tuple[np.ndarray, asyncio.Future[Any]]]] = {}
            for key, query, fut in batch:
                groups.setdefault(key, []).append((query, fut))
            for (k, qtype, min_confidence, exact), items in groups.items():
                queries = np.stack([query for query, _ in items])

                def run(
                    queries: np.ndarray = queries,
                    k: int = k,
                    qtype: str | None = qtype,
                    min_confidence: float = min_confidence,
                    exact: bool = exact,
                ) -> list[list[tuple[str, float]]]:
                    return index.search_batch(
                        queries,
                        k,
                        type=qtype,
                        min_confidence=min_confidence,
                        exact=exact,
                        fetch_exact=self._engine.embeddings_for,
                    )

                try:
                    results = await loop.run_in_executor(self._queries, run)
                except Exception as exc:  # handed to each caller, who maps it
                    for _, fut in items:
                        if not fut.done():
                            fut.set_exception(exc)
                    continue
                for (_, fut), result in zip(items, results, strict=True):
                    if not fut.done():
                        fut.set_result(result)

    async def prune_patterns(self, raw: bytes) -> bytes:
        req = _parse(pb.PrunePatternsRequest, raw)
        taken, seq = await self._engine.prune(req.dry_run, self._engine.prune_batch)
        resp = pb.PrunePatternsResponse(
            expired=len(taken.get("expired", ())),
            low_confidence=len(taken.get("low_confidence", ())),
            idle=len(taken.get("idle", ())),
            sequence=seq,
        )
        resp.ids.extend([pid for ids in taken.values() for pid in ids][:1000])
        return resp.SerializeToString()

    def _backup_handler(
        self, m: MethodMetrics
    ) -> Callable[[bytes, grpc.aio.ServicerContext[Any, Any]], AsyncIterator[bytes]]:
        async def handle(
            raw: bytes, context: grpc.aio.ServicerContext[Any, Any]
        ) -> AsyncIterator[bytes]:
            m.msg_received.inc()
            async with self._call(context, m):
                _parse(pb.BackupRequest, raw)
                async for chunk in self.backup():
                    m.msg_sent.inc()
                    yield chunk

        return handle

    async def backup(self) -> AsyncIterator[bytes]:
        """Copy the database beside it, stream the copy, delete it."""
        # Every write acknowledged before the backup began is in it, QUEUED ones too.
        await self._engine.wait_durable()
        loop = asyncio.get_running_loop()
        path = self._pool.path.with_name(f"{BACKUP_PREFIX}{time.time_ns()}.db")
        copying = loop.run_in_executor(None, copy_database, self._pool.path, path)
        try:
            # Shielded: a cancelled call must not delete the file while the copy thread
            # still writes it (it would leave a full-size orphan); see finally.
            durable = await asyncio.shield(copying)
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
            if copying.done():
                path.unlink(missing_ok=True)
            else:
                copying.add_done_callback(lambda f: _discard_copy(f, path))

    # -- writes --------------------------------------------------------------------------

    async def _settle(self, durable: bool) -> None:
        """Before a COMMITTED write call answers with a refusal (NOT_FOUND, ABORTED, ...):
        wait for the writes accepted before it, as its success would have. A client
        counts any COMMITTED reply as making its earlier QUEUED writes durable (README),
        and answered at once they could still be lost to a kill -9. Not while writes are
        paused or failed: that wait would last as long as the fault."""
        engine = self._engine
        if durable and engine.healthy and not engine.writes_paused:
            await engine.wait_durable()

    async def store_pattern(self, raw: bytes) -> bytes:
        req = _parse(pb.StorePatternRequest, raw)
        durable = _durable(req.durability)
        try:
            (r,) = await self._engine.store([req], durable, batch=False)
        except _REFUSALS:
            await self._settle(durable)
            raise
        return pb.StorePatternResponse(
            id=r.id, version=r.version, sequence=r.sequence, created=r.created
        ).SerializeToString()

    async def store_patterns(self, raw: bytes) -> bytes:
        req = _parse(pb.StorePatternsRequest, raw)
        validate.check_count(len(req.requests), validate.MAX_STORE_ITEMS, "requests")
        durable = _durable(req.durability)
        try:
            results = await self._engine.store(list(req.requests), durable, batch=True)
        except _REFUSALS:
            await self._settle(durable)
            raise
        resp = pb.StorePatternsResponse()
        for r in results:
            resp.results.add(id=r.id, version=r.version, sequence=r.sequence, created=r.created)
        return resp.SerializeToString()

    async def delete_pattern(self, raw: bytes) -> bytes:
        req = _parse(pb.DeletePatternRequest, raw)
        durable = _durable(req.durability)
        try:
            seq = await self._engine.delete(req.id, req.expected_version, durable)
        except _REFUSALS:
            await self._settle(durable)
            raise
        return pb.DeletePatternResponse(sequence=seq).SerializeToString()

    async def update_confidence(self, raw: bytes) -> bytes:
        req = _parse(pb.UpdateConfidenceRequest, raw)
        durable = _durable(req.durability)
        try:
            r = await self._engine.update(req, durable)
        except _REFUSALS:
            await self._settle(durable)
            raise
        return pb.UpdateConfidenceResponse(
            confidence=r.confidence, sequence=r.sequence, duplicate=r.duplicate
        ).SerializeToString()

    async def update_confidence_batch(self, raw: bytes) -> bytes:
        req = _parse(pb.UpdateConfidenceBatchRequest, raw)
        durable = _durable(req.durability)
        try:
            validate.check_count(len(req.updates), validate.MAX_UPDATE_ITEMS, "updates")
            results = await self._engine.update_batch(list(req.updates), durable)
        except _REFUSALS:
            await self._settle(durable)
            raise
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
            while engine.queue_full and not engine.writes_paused:
                # Back-pressure instead of refusal: while we wait, HTTP/2 flow control
                # stops the sender. A loop: other callers may refill the queue first.
                await engine.wait_durable()
            try:
                r = engine.accept_streamed(_parse(pb.UpdateConfidenceRequest, raw), index)
            except NotFound:
                not_found += 1
            except PatternStoreError as exc:
                if engine.writes_paused:
                    # Waiting for them could take as long as the fault lasts: say so now.
                    exc.args = (
                        f"{exc.args[0]}; the {accepted} outcomes before it are accepted and "
                        "commit when writes resume",
                    )
                    raise
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
        # A client's cancel also ends the request iterator, as if the stream were
        # complete; grpc.aio cancels this task only when the loop next runs. Yield once,
        # so a cancelled call ends (and is counted) CANCELLED, not OK to nobody. The
        # outcomes read before it stay applied: a cancel does not undo them.
        await asyncio.sleep(0)
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
        # A Flush also brings the QueryPatterns ordering up to date.
        durable = await self._engine.wait_ranked()
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
