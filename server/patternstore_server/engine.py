"""The acceptor: decides every write, serves every point read.

It runs on the event loop's thread (``embeddings_for`` excepted, see there), so the
decisions a write needs (does the pattern exist, which version, what confidence
follows) are made one at a time, in sequence order, without locks.
Accepted-but-uncommitted state lives in ``_pending`` (id -> newest state, or None for
a delete) until the group committer reports it durable. A write invalidates the
caches before its reply, and a read that misses them looks in ``_pending`` before
SQLite, so a reply never shows a state older than one already acknowledged. See
DESIGN.md.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import apsw
import numpy as np
from patternstore.v1 import patternstore_pb2 as pb

from . import validate
from .cache.l3 import QueryCache
from .cache.tiers import PatternTiers
from .codecs import CodecError
from .codecs import embedding as embedding_codec
from .confidence import ModelParams, prior
from .config import Settings
from .errors import (
    AlreadyExists,
    DataLoss,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Overloaded,
    PatternStoreError,
    ShuttingDown,
    StorageError,
    StorageUnavailable,
    VersionConflict,
    storage_errors,
)
from .flusher import Delete, GroupCommitter, Learn, Op, Put, Rank
from .memory import PatternMemory
from .model import (
    evidence_of,
    expires_ns,
    learn,
    pattern_row,
    row_skeleton,
    row_to_pattern,
    set_evidence,
    set_ns,
)
from .storage import ConnectionPool
from .storage import queries as q
from .storage.blobs import PayloadStore

__all__ = ["Engine", "OutcomeResult", "StoreResult"]

log = logging.getLogger(__name__)

# The latest expiry a pattern may have: expiry is kept in ns in a signed 64-bit column.
_MAX_EXPIRY_S = (2**63 - 1) // 1_000_000_000 - 1

Clock = Callable[[], int]  # wall-clock nanoseconds since the epoch

_SCORES = {
    pb.OUTCOME_SUCCESS: 1.0,
    pb.OUTCOME_FAILURE: 0.0,
    pb.OUTCOME_PARTIAL: 0.5,
}
_NAMES = {
    pb.OUTCOME_SUCCESS: "success",
    pb.OUTCOME_FAILURE: "failure",
    pb.OUTCOME_PARTIAL: "partial",
}
_MAX_FUTURE_NS = 300 * 1_000_000_000
_TYPE_AT = q.PATTERN_FIELDS.index("type")
_RECENT_STATES = 4096
_PRUNE_CHUNK = 500


class StoreResult(NamedTuple):
    id: str
    version: int
    sequence: int
    created: bool


class OutcomeResult(NamedTuple):
    confidence: float
    sequence: int
    duplicate: bool


@dataclass(frozen=True, slots=True)
class _Remembered:
    """What an outcome with a request_id answered, for its retries."""

    pattern_id: str
    sequence: int
    confidence: float


class Engine:
    def __init__(
        self,
        settings: Settings,
        pool: ConnectionPool,
        tiers: PatternTiers,
        l3: QueryCache,
        clock: Clock = time.time_ns,
    ) -> None:
        self._settings = settings
        self._pool = pool
        self._tiers = tiers
        self.l3 = l3
        self._clock = clock
        self._params = ModelParams(
            prior_alpha=settings.prior_alpha,
            prior_beta=settings.prior_beta,
            decay_factor=settings.decay_factor,
            decay_period_s=settings.decay_period_s,
            model=settings.confidence_model,
            learning_rate=settings.learning_rate,
        )
        self._max_queue = settings.max_queue
        self._loop: asyncio.AbstractEventLoop | None = None
        # id -> (sequence of its newest accepted write, state or None when deleted).
        self._pending: dict[str, tuple[int, pb.Pattern | None]] = {}
        self._pending_ops = 0
        self._pending_patterns = 0
        self._pending_updates = 0
        # Recently committed states (decoded), newest last: an outcome on a hot pattern
        # finds its state here instead of re-reading and decoding the row (the profile
        # of UpdateConfidenceBatch showed 8-10% in that re-read). Taken out on use.
        self._recent: OrderedDict[str, pb.Pattern] = OrderedDict()
        # (sequence, future) in sequence order: resolved once that sequence is durable.
        self._waiters: deque[tuple[int, asyncio.Future[None]]] = deque()
        self._remembered: OrderedDict[str, _Remembered] = OrderedDict()
        # Posteriors, expiry and the vector index of every pattern (memory.py).
        self.memory = PatternMemory(settings)
        self.pruned = {"expired": 0, "low_confidence": 0, "idle": 0}
        # Outcomes applied, by outcome name: read by the metrics at scrape time.
        self.outcome_counts = dict.fromkeys(_NAMES.values(), 0)
        # Called on the loop thread when writes pause for a fault (False) and resume (True).
        self.on_readiness: Callable[[bool], None] | None = None
        # Called once, on the loop thread, when a commit fails (health turns NOT_SERVING).
        self.on_failure: Callable[[BaseException], None] | None = None
        # Set while the writer retries a batch that cannot commit (disk full, lock held
        # elsewhere): the error new writes get until it clears.
        self._degraded: PatternStoreError | None = None
        self._accepting = True
        self._failure: BaseException | None = None
        self.started_monotonic = time.monotonic()

        writer = pool.writer()
        with storage_errors("reading the sequence bookkeeping"):
            durable = _meta(writer, "durable_sequence")
            reserved = _meta(writer, "sequence_reserved")
            self.durable_sequence = durable
            # The last sequence accepted: everything up to it is durable at start.
            self.last_sequence = durable
            # New sequences start above every one an earlier run may have handed out.
            self._sequence_floor = max(durable, reserved)
            # Reserve this run's sequences before handing any out: a crash before the first
            # commit must not let the next run reuse them.
            with writer:
                writer.execute(
                    q.META_SET, ("sequence_reserved", self._sequence_floor + self._max_queue)
                )
            # Outcomes an earlier run committed but had not copied to the ranks yet (a
            # crash; a clean stop copies them): one scan, before any query runs.
            with writer:
                writer.execute(q.RERANK_STALE)
            for rid, pid, seq, conf in reversed(
                list(writer.execute(q.LOAD_OUTCOME_REQUESTS, (settings.dedup_window,)))
            ):
                self._remembered[rid] = _Remembered(pid, seq, conf)
        self.blobs = PayloadStore(
            writer,
            pool.dictionaries,
            level=settings.zstd_level,
            dict_min_samples=settings.zstd_dict_min_samples,
            embedding_storage=settings.embedding_storage,
        )
        self._rewrites_seen = 0  # blobs.rewrites as of the last commit seen
        self._committer = GroupCommitter(
            writer,
            self.blobs,
            max_batch=settings.max_batch,
            max_delay_s=settings.max_delay_ms / 1000.0,
            queued_delay_s=settings.queued_delay_ms / 1000.0,
            reserve_gap=self._max_queue,
            dedup_window=settings.dedup_window,
            checkpoint_pages=settings.wal_autocheckpoint_pages,
            rank_interval_s=settings.rank_interval_ms / 1000.0,
            on_commit=self._committed_from_writer,
        )
        self._committer.on_degraded = self._degraded_from_writer

    # -- lifecycle ---------------------------------------------------------------------

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._committer.start()

    @property
    def committer(self) -> GroupCommitter:
        return self._committer

    def stop_accepting(self) -> None:
        self._accepting = False

    def close(self, timeout: float | None = None) -> None:
        """Stop accepting, commit everything queued, checkpoint. Blocks; safe twice."""
        self._accepting = False
        self._committer.close(timeout)
        self.memory.close()

    # -- reads -------------------------------------------------------------------------

    def get_serialized(self, pid: str) -> bytes | None:
        """The serialised Pattern for ``pid``, or None when it does not exist.

        An id found in L1 needs no validation (only valid ids are ever stored), so a hit
        costs one lookup; anything else is checked before it reaches SQLite.
        """
        memory = self.memory
        if memory.expiring and memory.expired(pid, self._clock()):
            return None
        if memory.track_reads:
            memory.touch(pid, self._clock())
        data = self._tiers.get(pid)
        if data is not None:
            return data
        validate.check_id(pid)
        pending = self._pending.get(pid)
        if pending is not None:
            state = pending[1]
            if state is None:
                return None
            data = state.SerializeToString()
        elif self._surely_absent(pid):
            return None  # never stored, or deleted: no SQLite read to say so
        else:
            rows = self._pool.query("get_pattern", q.SELECT_PATTERN, (pid,))
            if not rows:
                return None
            data = row_to_pattern(rows[0], self._pool.dictionaries).SerializeToString()
        self._tiers.fill(pid, data)
        return data

    def get_many_serialized(self, ids: Sequence[str], touch: bool = True) -> list[bytes | None]:
        """Like get_serialized for each id, with one SQLite statement for all misses.

        ``touch=False``: candidates, not reads (the caller touches what it returns).
        """
        found = self._tiers.get_many(ids)
        memory = self.memory
        now = self._clock()
        if memory.expiring or (memory.track_reads and touch):
            memory.screen_reads(ids, found, now, touch)
        if None not in found:
            return found
        misses: dict[str, list[int]] = {}
        for i, pid in enumerate(ids):
            if found[i] is not None or (memory.expiring and memory.expired(pid, now)):
                continue
            validate.check_id(pid, f"ids[{i}]")
            pending = self._pending.get(pid)
            if pending is None:
                if not self._surely_absent(pid):
                    misses.setdefault(pid, []).append(i)
            elif pending[1] is not None:
                data = pending[1].SerializeToString()
                self._tiers.fill(pid, data)
                found[i] = data
        if misses:
            keys = list(misses)
            sql = q.SELECT_PATTERNS_IN.format(",".join("?" * len(keys)))
            rows = self._pool.query("get_patterns", sql, keys)
            for row in rows:
                try:
                    data = row_to_pattern(row, self._pool.dictionaries).SerializeToString()
                except CodecError as exc:
                    # Not found for this reply, the rest served: one rotten pattern must
                    # not fail every GetPatterns, search or Thompson page that holds it.
                    log.warning("reading patterns: %s", exc)
                    continue
                self._tiers.fill(row[0], data)
                for i in misses[row[0]]:
                    found[i] = data
        return found

    def _surely_absent(self, pid: str) -> bool:
        """Whether the memory says ``pid`` is not stored, so SQLite need not be asked.

        Not after a failed commit: the memory followed writes that never committed (a
        delete it forgot, say) and is only rebuilt at the next start.
        """
        return self._failure is None and pid not in self.memory

    def _current(self, pid: str) -> pb.Pattern | None:
        """The newest accepted state of ``pid``, as a message this write may modify.

        An expired pattern counts as gone: a store recreates it, an outcome finds nothing.
        Raises DataLoss when the stored row does not decode.
        """
        state, _ = self._newest(pid, replacing=False)
        return state

    def _newest(self, pid: str, replacing: bool) -> tuple[pb.Pattern | None, bool]:
        """``_current``, and whether the stored row is rotten (does not decode).

        ``replacing`` (a store or a delete): a rotten row is no error but its skeleton,
        since those writes replace or drop every part that can rot; without it, a
        pattern the DATA_LOSS reply tells the caller to store again could never be.
        """
        pending = self._pending.get(pid)
        if pending is not None:
            # Looked at before the memory's expiry: an item staged earlier in the same
            # StorePatterns call is newer than what the memory knows.
            state = pending[1]
            if state is not None and 0 < expires_ns(state) <= self._clock():
                return None, False
            # Only the acceptor holds pending messages (queued ops carry row snapshots),
            # so the newest state can be modified in place.
            return state, False
        if self.memory.expiring and self.memory.expired(pid, self._clock()):
            return None, False
        recent = self._recent.pop(pid, None)
        if recent is not None:
            return recent, False
        data = self._tiers.get(pid)
        if data is not None:
            return pb.Pattern.FromString(data), False
        if self._surely_absent(pid):
            return None, False
        rows = self._pool.query("get_pattern", q.SELECT_PATTERN, (pid,))
        if not rows:
            return None, False
        try:
            return row_to_pattern(rows[0], self._pool.dictionaries), False
        except CodecError as exc:
            if not replacing:
                raise DataLoss(exc) from exc
            log.warning("pattern %r does not decode (%s); this write replaces it", pid, exc)
            return row_skeleton(rows[0]), True

    # -- writes ------------------------------------------------------------------------

    def _admit(self, n_ops: int, field: str = "") -> None:
        if n_ops > self._max_queue:
            # Never admitted, however long the caller waits: not RESOURCE_EXHAUSTED
            # (which clients retry), but a request to split the call.
            raise InvalidArgument(
                field or "request",
                f"{n_ops} writes in one call, more than the server queues at once "
                f"(max_queue={self._max_queue}); split it into calls of at most "
                f"{self._max_queue}",
            )
        if self._failure is not None:
            raise ShuttingDown(
                f"writes are refused since a commit failed ({self._failure}); restart the server"
            )
        if self._degraded is not None:
            raise self._degraded
        if not self._accepting:
            raise ShuttingDown("the server is shutting down; retry on another instance or later")
        if self._pending_ops + n_ops > self._max_queue:
            # A full queue must drain now, not after queued_delay_ms: callers are being
            # refused meanwhile, and the hint below assumes commits at max_delay_ms.
            self._committer.hurry()
            # The queue drains about max_batch writes per commit: hint at that much time.
            commits = self._pending_ops / max(1, self._settings.max_batch) + 1
            per_commit = max(self._committer.last_commit_seconds, self._settings.max_delay_ms / 1e3)
            retry_ms = max(1, round(commits * per_commit * 1000))
            raise Overloaded(
                f"write queue full ({self._pending_ops} of {self._max_queue} queued writes "
                f"not yet committed); back off about {retry_ms} ms and retry, or call Flush",
                retry_ms,
            )

    def _next_sequence(self) -> int:
        self.last_sequence = max(self.last_sequence, self._sequence_floor) + 1
        return self.last_sequence

    def _prepare_store(
        self, req: pb.StorePatternRequest, field: str, now: int, call_dims: int | None = None
    ) -> tuple[pb.Pattern, str, bool]:
        """Check one store against the newest state; return the new state, the old type
        and whether the stored row was rotten (its payload blob is to be rewritten).

        Everything that can refuse a store is checked here, before the call takes a
        sequence: a failure after that would leave state no commit ever clears.
        ``call_dims``: the embedding length an earlier item of the same call set, while
        the index has none yet.
        """
        p = req.pattern
        if not p.id:
            p.id = uuid.uuid4().hex
        validate.check_id(p.id, f"{field}.id")
        validate.check_pattern(p, field)
        current, rotten = self._newest(p.id, replacing=True)
        if current is not None and req.create_only:
            raise AlreadyExists(
                f"pattern {p.id!r} exists (version {current.version}) and create_only is set"
            )
        have = 0 if current is None else current.version
        if req.expected_version and req.expected_version != have:
            raise VersionConflict(
                f"pattern {p.id!r} is at version {have}, not the expected {req.expected_version}; "
                "read it again and retry"
            )
        # The request's own message becomes the new state: the call owns it (parsed from
        # the wire), and every server-maintained field is overwritten below. Copying the
        # caller's fields into a new message cost 2.6 us a store (cProfile).
        new = p
        new.DiscardUnknownFields()  # a newer client's fields this server would store
        if p.HasField("expires_at"):
            ts = p.expires_at
            if not 0 <= ts.nanos < 1_000_000_000 or ts.seconds < 0:
                raise InvalidArgument(f"{field}.expires_at", "is not a valid timestamp")
            if ts.seconds > _MAX_EXPIRY_S:
                raise InvalidArgument(
                    f"{field}.expires_at",
                    "is past 2262-04-11, the latest expiry kept (nanoseconds in 64 bits); "
                    "leave it unset for a pattern that never expires",
                )
        dims = self.memory.vectors.dims if call_dims is None else call_dims
        if p.embedding and dims is not None and len(p.embedding) != dims:
            raise InvalidArgument(
                f"{field}.embedding",
                f"has {len(p.embedding)} values; this store's embeddings have {dims}",
            )
        if p.embedding and self._settings.embedding_storage != "float32":
            # What a read of the stored row will give: from the first read on, not only
            # once the cached copy (made from this message) is evicted (helper-26).
            stored = embedding_codec.encode(
                np.asarray(p.embedding, dtype="<f4"), self._settings.embedding_storage
            )
            p.embedding[:] = embedding_codec.decode(stored).tolist()
        if current is None:
            set_evidence(new, prior(self._params))
            set_ns(new.created_at, now)
        else:
            # An update replaces what the caller owns and keeps what was learned.
            set_evidence(new, evidence_of(current))
            new.created_at.CopyFrom(current.created_at)
        set_ns(new.updated_at, now)
        new.version = have + 1
        return new, "" if current is None else current.type, rotten

    async def store(
        self, requests: Sequence[pb.StorePatternRequest], durable: bool, batch: bool
    ) -> list[StoreResult]:
        """Store one or more patterns atomically: all are accepted or none is."""
        self._admit(len(requests), "requests")
        if not requests:
            await self._submit([], durable)
            return []
        now = self._clock()
        states: list[pb.Pattern] = []
        old_types: list[str] = []
        rotten: list[bool] = []
        # Items of one call may touch the same id: later ones must see earlier ones.
        saved_pending: dict[str, tuple[int, pb.Pattern | None] | None] = {}
        saved_types: set[str] = set()
        call_dims: int | None = None
        try:
            for i, req in enumerate(requests):
                field = f"requests[{i}].pattern" if batch else "pattern"
                try:
                    new, old_type, was_rotten = self._prepare_store(req, field, now, call_dims)
                except PatternStoreError as exc:
                    if batch:
                        exc.args = (f"item {i}: {exc.args[0]}; nothing in this call was stored",)
                    raise
                states.append(new)
                old_types.append(old_type)
                rotten.append(was_rotten)
                saved_types.add(old_type)
                if new.embedding and self.memory.vectors.dims is None:
                    call_dims = len(new.embedding)
                # Stage it where _current looks, so a later item of the call sees it.
                saved_pending.setdefault(new.id, self._pending.get(new.id))
                self._pending[new.id] = (0, new)
        except BaseException:
            for pid, before in saved_pending.items():
                if before is None:
                    self._pending.pop(pid, None)
                else:
                    self._pending[pid] = before
            raise
        ops: list[Op] = []
        results = []
        touched = {state.type for state in states}
        touched.update(t for t in saved_types if t)
        self.l3.invalidate(touched)
        for state, old_type, heal in zip(states, old_types, rotten, strict=True):
            seq = self._next_sequence()
            changed = old_type if old_type != state.type else ""
            ops.append(Put(seq, state.id, pattern_row(state, seq), changed, heal))
            self._pending[state.id] = (seq, state)
            self._invalidate(state.id)
            self.memory.remember(state, now)
            results.append(StoreResult(state.id, state.version, seq, state.version == 1))
        self._pending_patterns += len(ops)
        await self._submit(ops, durable)
        return results

    async def delete(self, pid: str, expected_version: int, durable: bool) -> int:
        validate.check_id(pid)
        self._admit(1)
        current, _ = self._newest(pid, replacing=True)
        if current is None:
            raise NotFound(f"pattern {pid!r} does not exist")
        if expected_version and expected_version != current.version:
            raise VersionConflict(
                f"pattern {pid!r} is at version {current.version}, not the expected "
                f"{expected_version}; read it again and retry"
            )
        seq = self._next_sequence()
        self._pending[pid] = (seq, None)
        self._invalidate(pid)
        self._forget(pid)
        self.l3.invalidate((current.type,))
        self._pending_patterns += 1
        await self._submit([Delete(seq, pid, current.type)], durable)
        return seq

    def _check_outcome(
        self, u: pb.UpdateConfidenceRequest, now: int, field: str
    ) -> tuple[float, float, int]:
        """(score, weight, time in ns) of a valid outcome, else InvalidArgument."""
        validate.check_id(u.id, f"{field}id")
        if u.request_id:
            validate.check_request_id(u.request_id, f"{field}request_id")
        score = _SCORES.get(u.outcome)
        if score is None:
            raise InvalidArgument(
                f"{field}outcome", "must be OUTCOME_SUCCESS, OUTCOME_FAILURE or OUTCOME_PARTIAL"
            )
        weight = validate.check_weight(u.weight, f"{field}weight")
        if u.HasField("observed_at"):
            ts = u.observed_at
            if not 0 <= ts.nanos < 1_000_000_000:
                raise InvalidArgument(f"{field}observed_at", "nanos must be in [0, 1e9)")
            t_ns = ts.seconds * 1_000_000_000 + ts.nanos
            if t_ns <= 0:
                raise InvalidArgument(f"{field}observed_at", "must be after 1970-01-01T00:00:00Z")
            if t_ns - now > _MAX_FUTURE_NS:
                raise InvalidArgument(
                    f"{field}observed_at",
                    "is more than 300 s in the future; check the worker's clock",
                )
        else:
            t_ns = now
        return score, weight, t_ns

    def _accept_outcome(
        self, u: pb.UpdateConfidenceRequest, now: int, field: str, ops: list[Op]
    ) -> OutcomeResult:
        """Decide one outcome; append its op. Raises without side effects on bad input."""
        score, weight, t_ns = self._check_outcome(u, now, field)
        # Read once: each read of a message's string field makes a new str object.
        pid, request_id = u.id, u.request_id
        if request_id:
            seen = self._remembered.get(request_id)
            if seen is not None:
                if seen.pattern_id != pid:
                    raise InvalidArgument(
                        f"{field}request_id",
                        f"{request_id!r} was already used for pattern {seen.pattern_id!r}",
                    )
                return OutcomeResult(seen.confidence, seen.sequence, True)
        state = self._current(pid)
        if state is None:
            raise NotFound(f"pattern {pid!r} does not exist")
        seq = self._next_sequence()
        row = learn(state, score, weight, t_ns, now, seq, self._params)
        self._pending[pid] = (seq, state)
        self._invalidate(pid)
        ops.append(Learn(seq, pid, row, request_id))
        confidence = row[0]
        self.memory.learned(pid, row, now, bool(state.embedding))
        self.outcome_counts[_NAMES[u.outcome]] += 1
        if request_id:
            self._remember(request_id, _Remembered(pid, seq, confidence))
        return OutcomeResult(confidence, seq, False)

    def _remember(self, request_id: str, answer: _Remembered) -> None:
        self._remembered[request_id] = answer
        if len(self._remembered) > self._settings.dedup_window:
            self._remembered.popitem(last=False)

    async def update(self, u: pb.UpdateConfidenceRequest, durable: bool) -> OutcomeResult:
        self._admit(1)
        ops: list[Op] = []
        result = self._accept_outcome(u, self._clock(), "", ops)
        if ops:
            self._pending_updates += 1
        # A duplicate adds no op; _submit still waits (see there).
        await self._submit(ops, durable)
        return result

    async def update_batch(
        self, updates: Sequence[pb.UpdateConfidenceRequest], durable: bool
    ) -> list[OutcomeResult | PatternStoreError]:
        """Apply outcomes in order; a bad item fails alone (its error is returned in place)."""
        self._admit(len(updates), "updates")
        now = self._clock()
        ops: list[Op] = []
        results: list[OutcomeResult | PatternStoreError] = []
        try:
            for i, u in enumerate(updates):
                try:
                    results.append(self._accept_outcome(u, now, f"updates[{i}].", ops))
                except PatternStoreError as exc:
                    results.append(exc)
        except BaseException:
            # A bug in one item must not strand the ones before it: they hold sequences
            # and pending states that only their commit clears.
            if ops:
                self._pending_updates += len(ops)
                self._enqueue(ops, urgent=False)
            raise
        self._pending_updates += len(ops)
        await self._submit(ops, durable)
        return results

    def accept_streamed(self, u: pb.UpdateConfidenceRequest, index: int) -> OutcomeResult:
        """One outcome of a RecordOutcomes stream: queued now, made durable by wait_durable."""
        self._admit(1)
        ops: list[Op] = []
        result = self._accept_outcome(u, self._clock(), f"message {index}: ", ops)
        if ops:
            self._pending_updates += 1
            # Not urgent: the stream's end (or a later COMMITTED call) waits for it.
            self._enqueue(ops, urgent=False)
        return result

    @property
    def writes_paused(self) -> bool:
        """The writer is waiting out a fault (disk full, locked, read-only): writes are
        refused, and what is queued commits only once it clears."""
        return self._degraded is not None

    @property
    def queue_full(self) -> bool:
        return self._pending_ops >= self._max_queue

    def _invalidate(self, pid: str) -> None:
        self._tiers.invalidate(pid)

    def _enqueue(self, ops: list[Op], urgent: bool) -> None:
        self._pending_ops += len(ops)
        self._committer.submit(ops, urgent)

    async def _submit(self, ops: list[Op], durable: bool) -> None:
        """Queue ``ops``; with ``durable``, return once they and every write accepted
        before them are committed.

        A COMMITTED call that queues nothing (every item NOT_FOUND or a duplicate, an
        empty StorePatterns) still waits for everything accepted before it: a client
        counts any COMMITTED reply as making its earlier QUEUED writes durable (README),
        and the chaos test caught a batch of unknown ids answered at once while the
        caller's QUEUED outcomes were still in the queue, then lost to a kill -9.
        """
        if ops:
            self._enqueue(ops, urgent=durable)
        if durable:
            await self.wait_durable()

    # -- durability --------------------------------------------------------------------

    async def wait_durable(self, sequence: int | None = None) -> int:
        """Wait until every write up to ``sequence`` (default: all accepted) is committed."""
        target = self.last_sequence if sequence is None else sequence
        if self._failure is not None:
            raise StorageError(f"a commit failed: {self._failure}")
        if target > self.durable_sequence:
            assert self._loop is not None
            # QUEUED writes may sit in a lazy batch (queued_delay_ms): close it sooner.
            self._committer.hurry()
            fut: asyncio.Future[None] = self._loop.create_future()
            self._waiters.append((target, fut))
            await fut
        return self.durable_sequence

    async def wait_ranked(self) -> int:
        """Like wait_durable() for everything accepted so far, and also until QueryPatterns
        orders by its effects: the writer copies pending learned values to the ranks in
        the transaction that commits this request (a STRONG query, a Flush)."""
        if self._failure is not None:
            raise StorageError(f"a commit failed: {self._failure}")
        assert self._loop is not None
        fut: asyncio.Future[None] = self._loop.create_future()
        self._enqueue([Rank(fut)], urgent=True)
        await fut
        return self.durable_sequence

    def pending_counts(self) -> tuple[int, int]:
        """(stores and deletes, outcomes) accepted but not yet committed."""
        return self._pending_patterns, self._pending_updates

    def _degraded_from_writer(self, error: StorageError | None) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._set_degraded, error)

    def _set_degraded(self, error: StorageError | None) -> None:
        if self._failure is not None:
            return  # stopped for good: not "paused", whatever the writer last said
        was = self._degraded is not None
        self._apply_degraded(error)
        if self.on_readiness is not None and was != (self._degraded is not None):
            self.on_readiness(self._degraded is None)

    def _apply_degraded(self, error: StorageError | None) -> None:
        if error is None:
            self._degraded = None
            return
        cause = error.__cause__
        detail = f"{type(cause).__name__}: {cause}"
        if isinstance(cause, apsw.FullError):
            self._degraded = Overloaded(
                f"the disk is full ({detail}); writes resume once space is freed", 1000
            )
        elif isinstance(cause, apsw.ReadOnlyError):
            self._degraded = FailedPrecondition(
                f"the database cannot be written ({detail}); fix its permissions or mount"
            )
        else:
            self._degraded = StorageUnavailable(
                f"writes are paused: {detail} (another process may hold the database lock); "
                "retry shortly"
            )

    @property
    def degraded(self) -> str | None:
        return None if self._degraded is None else str(self._degraded)

    def _committed_from_writer(
        self, groups: Sequence[Sequence[Op]], last: int, error: BaseException | None
    ) -> None:
        # Runs on the writer thread: hand over to the loop, which owns all this state.
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._committed, groups, last, error)

    def _committed(
        self, groups: Sequence[Sequence[Op]], last: int, error: BaseException | None
    ) -> None:
        n_patterns = n_updates = 0
        touched: set[str] = set()
        ranked: list[asyncio.Future[None]] = []
        for group in groups:
            for op in group:
                if isinstance(op, Rank):
                    ranked.append(op.waiter)
                    continue
                if isinstance(op, Learn):
                    n_updates += 1
                else:
                    n_patterns += 1
                    if isinstance(op, Delete):
                        touched.add(op.type)
                    else:
                        touched.add(op.row[_TYPE_AT])
                        if op.old_type:
                            touched.add(op.old_type)
                pid = op.id
                pending = self._pending.get(pid)
                if pending is not None and pending[0] == op.sequence:
                    del self._pending[pid]
                    if pending[1] is not None and error is None:
                        self._keep_recent(pid, pending[1])
        if touched:
            # Again at commit: a BOUNDED reply computed from SQLite between the accept and
            # the commit of a store must not outlive the commit.
            self.l3.invalidate(touched)
        rewrites = self.blobs.rewrites
        if rewrites != self._rewrites_seen:
            # A rewritten blob makes other patterns (of any type) readable again, which
            # replies of their types left out (helper-26). Rare: drop them all.
            self._rewrites_seen = rewrites
            self.l3.clear()
        self._pending_ops -= n_patterns + n_updates + len(ranked)
        self._pending_patterns -= n_patterns
        self._pending_updates -= n_updates
        if error is not None:
            self._fail(error)
            for fut in ranked:
                if not fut.done():
                    fut.set_exception(StorageError(f"a commit failed: {error}"))
            return
        self.durable_sequence = max(self.durable_sequence, last)
        waiters = self._waiters
        while waiters and waiters[0][0] <= self.durable_sequence:
            _, fut = waiters.popleft()
            if not fut.done():
                fut.set_result(None)
        for fut in ranked:
            if not fut.done():
                fut.set_result(None)

    def _rebuild_memory(self) -> None:
        """After a failed commit, build the memory again from SQLite and swap it in.

        The memory (expiry, posteriors, vector index) followed every accepted write, the
        lost ones too: GetPattern would show a pattern whose expiry a lost prune was to
        delete, a search filter a type the row never got (helper-26). Built on a helper
        thread (seconds at 1M patterns), swapped in on the loop; no write is accepted
        after a failure, so the new memory stays true. Until the swap, existence is
        asked of SQLite (``_surely_absent`` trusts no memory after a failure).
        """
        loop = self._loop
        if loop is None or loop.is_closed():
            return

        def build() -> PatternMemory:
            fresh = PatternMemory(self._settings)
            fresh.load(self._pool.query("load_memory", q.SELECT_MEMORY), self._clock())
            return fresh

        def swap(done: asyncio.Future[PatternMemory]) -> None:
            if done.cancelled() or done.exception() is not None:
                log.error(
                    "rebuilding the pattern memory after a failed commit failed: %s",
                    done.exception(),
                )
                return
            if not self._accepting:  # stopping: close() has closed (or will close) the old
                done.result().close()
                return
            old, self.memory = self.memory, done.result()
            old.close()
            log.info("pattern memory rebuilt from SQLite after the failed commit")

        loop.run_in_executor(None, build).add_done_callback(swap)

    def _keep_recent(self, pid: str, state: pb.Pattern) -> None:
        recent = self._recent
        recent[pid] = state
        recent.move_to_end(pid)
        if len(recent) > _RECENT_STATES:
            recent.popitem(last=False)

    def _fail(self, error: BaseException) -> None:
        if self._failure is None:
            self._failure = error
            # A transient fault may have come first: writes are now stopped, not paused.
            self._degraded = None
            # Pending states were never written: forget them and what was cached from them.
            self._pending.clear()
            self._recent.clear()
            self._tiers.clear()
            self.l3.clear()
            self._rebuild_memory()
            if self.on_failure is not None:
                self.on_failure(error)
        exc = StorageError(f"the write was not committed: {error}")
        while self._waiters:
            _, fut = self._waiters.popleft()
            if not fut.done():
                fut.set_exception(exc)

    # -- figures -----------------------------------------------------------------------

    @property
    def healthy(self) -> bool:
        """The writer is alive and no commit failed."""
        return self._failure is None and self._committer.alive

    @property
    def queue_depth(self) -> int:
        return self._pending_ops

    @property
    def queue_capacity(self) -> int:
        return self._max_queue

    def cache_figures(self) -> list[tuple[str, int, int, int, int, int]]:
        """(tier, hits, misses, evictions, entries, bytes) per cache tier."""
        q3 = self.l3
        return [
            *self._tiers.figures(),
            ("l3", q3.hits, q3.misses, q3.evictions, len(q3), q3.currsize),
        ]

    def l1_window_size(self) -> int | None:
        window = getattr(self._tiers.l1, "window_size", None)
        return window if isinstance(window, int) else None

    # -- memory: posteriors, vectors, expiry ----------------------------------------------

    def now(self) -> int:
        return self._clock()

    @property
    def prune_batch(self) -> int:
        return self._settings.prune_batch

    def _forget(self, pid: str) -> None:
        self._recent.pop(pid, None)
        self.memory.forget(pid)

    def load_memory(self) -> tuple[int, float]:
        """Build the posteriors and the vector index from SQLite (at start, before SERVING)."""
        started = time.perf_counter()
        loaded = self.memory.load(self._pool.query("load_memory", q.SELECT_MEMORY), self._clock())
        return loaded, time.perf_counter() - started

    def embeddings_for(self, ids: Sequence[str]) -> np.ndarray:
        """float32 embeddings of ``ids`` (rows of zeros for unknown ones), for exact rescoring.

        Runs on a query thread: the newest accepted state comes from the pending map, the
        rest from SQLite. The one read of loop-owned state off the loop: a dict lookup
        is atomic under the GIL, and the loop changes a pending message in place only in
        its learned fields (outcomes), never its embedding; a store stages a new message.
        """
        dims = self.memory.vectors.dims or 0
        out = np.zeros((len(ids), dims), dtype=np.float32)
        from_db: list[tuple[int, str]] = []
        for i, pid in enumerate(ids):
            pending = self._pending.get(pid)
            if pending is not None:
                if pending[1] is not None and len(pending[1].embedding) == dims:
                    out[i] = pending[1].embedding
            else:
                from_db.append((i, pid))
        if from_db:
            sql = q.SELECT_EMBEDDINGS_IN.format(",".join("?" * len(from_db)))
            blobs = dict(self._pool.query("embeddings", sql, [pid for _, pid in from_db]))
            for i, pid in from_db:
                blob = blobs.get(pid)
                if blob:
                    vec = embedding_codec.decode(blob)
                    if len(vec) == dims:
                        out[i] = vec
        return out

    def thompson_ids(self, ptype: str, min_confidence: float, count: int, seed: int) -> list[str]:
        return self.memory.thompson_ids(ptype, min_confidence, self._clock(), count, seed)

    async def prune(self, dry_run: bool, limit: int) -> tuple[dict[str, list[str]], int]:
        """Delete (or list) what the pruning settings and expiry say should go.

        Deletes go through the writer like any other (same durability, same sequences);
        at most ``limit`` are taken per pass so one pass never floods the queue.
        """
        s = self._settings
        now = self._clock()
        idle_before = now - round(s.prune_idle_s * 1e9) if s.prune_idle_s > 0 else 0
        posteriors = self.memory.posteriors
        found = posteriors.prunable(
            now, s.prune_below_confidence, s.prune_min_evidence, idle_before
        )
        taken: dict[str, list[str]] = {}
        budget = limit
        for why, ids in found.items():
            taken[why] = ids[:budget]
            budget -= len(taken[why])
        if dry_run:
            return taken, 0
        last = 0
        touched = False
        # What was really deleted: a chunk re-checks its ids, and a refusal after some
        # chunks were queued ends the pass with those (the reply must list them).
        deleted: dict[str, list[str]] = {why: [] for why in taken}
        refused = False
        for why, ids in taken.items():
            if refused:
                break
            step = min(_PRUNE_CHUNK, self._max_queue)
            for lo in range(0, len(ids), step):
                # Re-checked per chunk: between chunks the loop serves other calls, and a
                # write may have made a pattern worth keeping again.
                now = self._clock()
                chunk = [
                    pid
                    for pid in ids[lo : lo + step]
                    if posteriors.qualifies(
                        pid,
                        why,
                        now,
                        s.prune_below_confidence,
                        s.prune_min_evidence,
                        idle_before,
                    )
                ]
                if not chunk:
                    continue
                try:
                    self._admit(len(chunk))
                except PatternStoreError:
                    if not last:
                        raise  # nothing queued yet: refuse the whole call
                    log.warning("pruning pass cut short: writes are refused now")
                    refused = True
                    break
                if not touched:
                    # The pruned patterns' types are not all known: drop every cached reply.
                    self.l3.clear()
                    touched = True
                ops: list[Op] = []
                for pid in chunk:
                    # The type invalidates that type's cached replies again at commit.
                    ptype = posteriors.type_of(pid) or ""
                    seq = self._next_sequence()
                    ops.append(Delete(seq, pid, ptype))
                    self._pending[pid] = (seq, None)
                    self._invalidate(pid)
                    self._forget(pid)
                self.pruned[why] += len(ops)
                self._pending_patterns += len(ops)
                deleted[why] += chunk
                await self._submit(ops, durable=False)
                last = ops[-1].sequence
                # Let reads in between chunks: one pass must not stall the loop for long.
                await asyncio.sleep(0)
        if last:
            await self.wait_durable(last)
        return deleted, last

    def warm(self, count: int) -> tuple[int, float]:
        """Load the ``count`` patterns most likely to be read into the caches.

        Runs before the server reports SERVING, on a helper thread: nothing else touches
        the caches yet. Returns (patterns loaded, seconds).
        """
        started = time.perf_counter()
        if count <= 0:
            return 0, 0.0
        rows = self._pool.query("warm", q.SELECT_WARM, (count,))
        # Least likely first, so the most likely end up the most recently used.
        warmed = 0
        for row in reversed(rows):
            try:
                data = row_to_pattern(row, self._pool.dictionaries).SerializeToString()
            except CodecError as exc:
                # One rotten row must not keep the server from starting: its reads get
                # DATA_LOSS, the rest are served.
                log.warning("not warming pattern %r: %s", row[0], exc)
                continue
            self._tiers.fill(row[0], data)
            warmed += 1
        return warmed, time.perf_counter() - started

    def count_patterns(self) -> int:
        """Patterns stored (accepted writes included, expired ones until pruned).

        From memory: a count(*) over SQLite scans the table, tens of ms at 1M rows, and
        GetStats runs on the event loop thread.
        """
        return len(self.memory)


def _meta(conn: apsw.Connection, key: str) -> int:
    row = conn.execute(q.META_GET, (key,)).fetchone()
    return int(row[0]) if row else 0
