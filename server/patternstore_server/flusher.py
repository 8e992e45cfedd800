"""The group committer: the one thread that writes, owning the only write connection.

Writes arrive as *groups* (a list of ops that must commit together, e.g. one
StorePatterns call). A batch opens with the first queued group and closes at
``max_batch`` ops or ``max_delay`` seconds after it opened, whichever comes first; a
group is never split across transactions. When nobody waits for the batch (every group
in it was submitted as not urgent, i.e. QUEUED, and no ``hurry()`` came), it may stay
open for ``queued_delay`` instead: fewer, larger transactions for streamed outcomes.
Every op carries its sequence number; groups are committed in submission order, so
"committed up to sequence S" means every op with a sequence <= S is on disk.

An outcome (``Learn``) rewrites only a pattern's learned columns, which no index covers.
QueryPatterns orders by *rank* copies of them (storage.queries.RANKS); the writer copies
the learned values of every pattern with outcomes since the last copy in one transaction
at most ``rank_interval_s`` after the first such outcome (idle or not), or in the next
transaction when a ``Rank`` op asks (a STRONG query, a Flush). A store writes its ranks
itself. The set of patterns to rerank is cleared only once its transaction commits.

After each transaction ``on_commit(groups, last_sequence, error)`` is called from this
thread. Once a transaction fails, nothing after it is applied (later ops may have been
derived from the failed state); their groups are reported with the same error.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import apsw

from .errors import StorageError, storage_errors
from .storage import queries as q
from .storage.blobs import PayloadStore
from .storage.rows import execute_rows

__all__ = ["Delete", "GroupCommitter", "Learn", "Op", "Put", "Rank"]

log = logging.getLogger(__name__)

# Prune the remembered request ids once per this many transactions: the DELETE scans an
# index, cheap but not free, and the window is a bound, not an exact size.
_PRUNE_EVERY = 256


# The ops are named tuples: immutable once queued (the writer thread reads what the loop
# thread built), and built in 0.24 us against 0.53 for a frozen dataclass, once per write
# on the loop thread.


class Put(NamedTuple):
    """Insert or replace a whole pattern row (storage.queries.PATTERN_FIELDS order)."""

    sequence: int
    id: str
    row: tuple[Any, ...]
    # The type this pattern had before (newest accepted), when it changes: its cached
    # query replies go again at commit, like the new type's.
    old_type: str = ""
    # The stored row did not decode when this store was accepted: the payload blob is
    # written again even when its content key says it is already there.
    heal: bool = False


class Learn(NamedTuple):
    """Rewrite the learned columns after an outcome; remember its request id if any."""

    sequence: int
    id: str
    row: tuple[Any, ...]  # storage.queries.LEARNED_FIELDS order
    request_id: str = ""


class Delete(NamedTuple):
    sequence: int
    id: str
    type: str  # of the deleted pattern: the query cache invalidates by type


class Rank(NamedTuple):
    """Copy every pending learned value to the ranks in the transaction holding this op.

    Carries no sequence (it writes no pattern); ``waiter`` is the acceptor's, returned
    untouched through ``on_commit``.
    """

    waiter: Any = None
    sequence: int = 0
    id: str = ""


Op = Put | Learn | Delete | Rank
# Faults that go away without a restart: the writer retries the batch until they do.
_TRANSIENT = (
    apsw.BusyError,
    apsw.LockedError,
    apsw.FullError,
    apsw.IOError,
    apsw.ReadOnlyError,
    apsw.CantOpenError,
)

CommitCallback = Callable[[Sequence[Sequence[Op]], int, BaseException | None], None]


class GroupCommitter:
    def __init__(
        self,
        conn: apsw.Connection,
        blobs: PayloadStore,
        *,
        max_batch: int,
        max_delay_s: float,
        queued_delay_s: float = 0.0,
        reserve_gap: int,
        dedup_window: int,
        checkpoint_pages: int = 4000,
        rank_interval_s: float = 0.5,
        on_commit: CommitCallback,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._conn = conn
        self._blobs = blobs
        self._max_batch = max_batch
        self._max_delay_s = max_delay_s
        self._queued_delay_s = max(max_delay_s, queued_delay_s)
        self._reserve_gap = reserve_gap
        self._dedup_window = dedup_window
        self._on_commit = on_commit
        self._checkpoint_pages = checkpoint_pages
        self._rank_interval_s = rank_interval_s
        # Ids with outcomes committed or being committed whose ranks are not copied yet,
        # and when the first of them arrived. Writer thread only.
        self._unranked: dict[str, None] = {}
        self._unranked_since = 0.0
        self.reranked = 0  # ranks copied, read by the metrics
        self._wal_pages = 0
        # The hook replaces SQLite's autocheckpoint: we checkpoint ourselves, after the
        # commit is reported, so waiters never wait for a checkpoint, and we count them.
        conn.set_wal_hook(self._wal_hook)
        self._monotonic = monotonic
        # Guards _groups, _queued_ops, _urgent, _closing. The writer thread waits on it.
        self._cond = threading.Condition(threading.Lock())
        # Someone waits for what is queued: close the open batch at max_delay.
        self._urgent = False
        self._groups: deque[Sequence[Op]] = deque()
        self._queued_ops = 0
        self._closing = False
        self._failure: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="patternstore-writer", daemon=True)
        # Read by stats from other threads; plain ints, written only by the writer thread.
        self.batches = 0
        self.items = 0
        self.last_commit_seconds = 0.0
        self.checkpoints = 0
        self.batch_observer: Callable[[int, float], None] | None = None
        # Told (from this thread) when commits start failing for a transient reason and
        # when they work again (None).
        self.on_degraded: Callable[[StorageError | None], None] | None = None
        self._degraded = False

    # -- called from the acceptor ------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def submit(self, group: Sequence[Op], urgent: bool = True) -> None:
        """Queue ``group``; ``urgent``: its caller waits for the commit (COMMITTED)."""
        with self._cond:
            if self._closing:
                raise StorageError("the writer is closed")
            was_empty = not self._groups
            self._groups.append(group)
            self._queued_ops += len(group)
            # Wake the writer only when it has something new to decide: a batch to open,
            # a full batch to close, or a lazy batch to close sooner. A wake-up per write
            # would cost a GIL hand-off each.
            wake = was_empty or self._queued_ops >= self._max_batch
            if urgent and not self._urgent:
                self._urgent = wake = True
            if wake:
                self._cond.notify()

    def hurry(self) -> None:
        """Someone now waits for what is queued: close the open batch at max_delay."""
        with self._cond:
            # Nothing queued: what the caller waits for is in the commit under way.
            if self._groups and not self._urgent:
                self._urgent = True
                self._cond.notify()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive() and self._failure is None

    @property
    def running(self) -> bool:
        """The writer thread has not exited (after close(): it is still committing)."""
        return self._thread.is_alive()

    @property
    def queued(self) -> int:
        # Read without the lock: a gauge for metrics and stats, where a count one group
        # old is fine (an int read is atomic under the GIL).
        return self._queued_ops

    def close(self, timeout: float | None = None) -> None:
        """Commit everything queued, checkpoint, and stop. Safe to call twice."""
        with self._cond:
            self._closing = True
            self._cond.notify()
        if self._thread.is_alive():
            self._thread.join(timeout)

    # -- the writer thread -------------------------------------------------------------

    def _next_batch(self) -> list[Sequence[Op]] | None:
        with self._cond:
            while not self._groups:
                if self._closing:
                    return None
                if self._unranked and self._failure is None:
                    # Idle with ranks to copy: an empty batch copies them when due.
                    wait = self._unranked_since + self._rank_interval_s - self._monotonic()
                    if wait <= 0:
                        return []
                    self._cond.wait(wait)
                else:
                    self._cond.wait()
            opened = self._monotonic()
            while self._queued_ops < self._max_batch and not self._closing:
                delay = self._max_delay_s if self._urgent else self._queued_delay_s
                remaining = opened + delay - self._monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            batch: list[Sequence[Op]] = []
            taken = 0
            while self._groups and (taken == 0 or taken + len(self._groups[0]) <= self._max_batch):
                group = self._groups.popleft()
                batch.append(group)
                taken += len(group)
            self._queued_ops -= taken
            # Groups left behind (a full batch) may hold an urgent one: keep the flag.
            if not self._groups:
                self._urgent = False
            return batch

    def _run(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                break
            # Empty groups carry no sequence: such a batch must not move the bookkeeping.
            last = max((op.sequence for group in batch for op in group), default=0)
            error = self._failure
            if error is None:
                error = self._commit_retrying(batch, last)
            if batch or error is not None:
                self._on_commit(batch, last, error)
            if error is None:
                self._train_if_due()
            if error is None and self._wal_pages >= self._checkpoint_pages:
                self._checkpoint(apsw.SQLITE_CHECKPOINT_PASSIVE)
        if self._failure is None and self._unranked:
            # Closing: copy the last ranks now rather than at the next start.
            self._commit_retrying([[Rank()]], 0)
        if self._failure is None:
            self._checkpoint(apsw.SQLITE_CHECKPOINT_TRUNCATE)

    def _commit_retrying(self, batch: list[Sequence[Op]], last: int) -> BaseException | None:
        """Commit, retrying while the fault is one that goes away (disk full, a lock held
        by another process, an I/O error); None once committed, else the fatal error.

        The batch is kept meanwhile, so nothing accepted is lost; the engine refuses new
        writes while ``on_degraded`` says the writer is stuck.
        """
        delay = 0.05
        while True:
            try:
                self._commit(batch, last)
            except StorageError as exc:
                if not isinstance(exc.__cause__, _TRANSIENT):
                    log.exception("group commit failed; refusing further writes")
                    self._failure = exc
                    return exc
                if not self._degraded:
                    log.warning("group commit failed, retrying until the fault clears: %s", exc)
                self._set_degraded(exc)
                time.sleep(delay)
                delay = min(2.0, delay * 2)
            except BaseException as exc:  # a bug: report it to the waiters, refuse writes
                log.exception("group commit failed; refusing further writes")
                self._failure = exc
                return exc
            else:
                if self._degraded:
                    log.warning("group commit succeeded again; accepting writes")
                    self._set_degraded(None)
                return None

    def _set_degraded(self, error: StorageError | None) -> None:
        self._degraded = error is not None
        if self.on_degraded is not None:
            self.on_degraded(error)

    def _commit(self, batch: list[Sequence[Op]], last: int) -> None:
        started = time.perf_counter()
        conn = self._conn
        n = reranked = 0
        counted = self._blobs.mark()
        with storage_errors("committing a batch"):
            conn.execute("BEGIN IMMEDIATE")
            try:
                n, rank_now = self._apply(conn, batch)
                reranked = self._rerank(conn, rank_now)
                if last:
                    self._record_sequences(conn, last)
                if self.batches % _PRUNE_EVERY == 0:
                    conn.execute(q.PRUNE_OUTCOME_REQUESTS, (self._dedup_window,))
                conn.execute("COMMIT")
            except BaseException:
                if not conn.getautocommit():
                    conn.execute("ROLLBACK")
                self._blobs.restore(counted)
                raise
        self._blobs.publish()
        if reranked:
            self._unranked.clear()
            self.reranked += reranked
        if not batch:
            return  # a rerank alone: not a batch of writes
        elapsed = time.perf_counter() - started
        self.batches += 1
        self.items += n
        self.last_commit_seconds = elapsed
        if self.batch_observer is not None:
            # Committed already: a failing observer (metrics) must not be taken for a
            # failed commit, which would fail the waiters of writes that are durable.
            try:
                self.batch_observer(n, elapsed)
            except Exception:
                log.exception("batch observer failed (the batch is committed)")

    def _record_sequences(self, conn: apsw.Connection, last: int) -> None:
        conn.execute(q.META_SET, ("durable_sequence", last))
        # Every sequence handed out is at most `reserve_gap` past the durable one (the
        # acceptor admits no more), so a restart starting above this never reuses a
        # sequence a lost queued write was given.
        conn.execute(q.META_SET, ("sequence_reserved", last + self._reserve_gap))

    def _rerank(self, conn: apsw.Connection, forced: bool) -> int:
        """Copy learned values to the ranks if due (or ``forced``); how many patterns."""
        unranked = self._unranked
        if not unranked:
            return 0
        if not forced and self._monotonic() - self._unranked_since < self._rank_interval_s:
            return 0
        # In id order: the lookups walk the primary key's B-tree forward. One statement
        # for all, like the learned rows: executemany would take the GIL back per id.
        conn.execute(q.RERANK, (json.dumps(sorted(unranked)),))
        return len(unranked)

    def _apply(self, conn: apsw.Connection, batch: list[Sequence[Op]]) -> tuple[int, bool]:
        """Execute the ops in order, runs of stores and of outcomes each in a few
        multi-row statements (storage/rows.py). Returns how many ops, and whether a
        Rank op asks for the ranks now.

        Deletes run one by one and end a run: the stores after one must see it.
        """
        blobs = self._blobs
        run_kind: type | None = None
        run: list[Any] = []  # Learn rows, or (row, heal) of Puts
        remembered: list[tuple[str, str, int, float]] = []
        unranked = self._unranked
        rank_now = False
        n = 0

        def flush_run() -> None:
            if run:
                if run_kind is Learn:
                    # Learned rows are absolute images: within one run only the last per
                    # pattern matters (a hot pattern's 50 outcomes cost one UPDATE).
                    rows = list({row[-1]: row for row in run}.values())
                    execute_rows(conn, q.UPDATE_LEARNED_FROM, rows)
                else:
                    # Whole rows, the last per pattern, blob references netted.
                    execute_rows(conn, q.UPSERT_PATTERNS, blobs.put_rows(conn, run))
                run.clear()

        for group in batch:
            for op in group:
                n += 1
                kind = type(op)
                if kind is not run_kind:
                    flush_run()
                    run_kind = kind
                if isinstance(op, Learn):
                    run.append((*op.row, op.id))
                    if not unranked:
                        self._unranked_since = self._monotonic()
                    unranked[op.id] = None
                    if op.request_id:
                        remembered.append((op.request_id, op.id, op.sequence, op.row[0]))
                elif isinstance(op, Put):
                    run.append((op.row, op.heal))
                elif isinstance(op, Rank):
                    rank_now = True
                else:
                    blobs.delete_row(conn, op.id)
                    conn.execute(q.DELETE_PATTERN, (op.id,))
        flush_run()
        if remembered:
            execute_rows(conn, q.INSERT_OUTCOME_REQUESTS, remembered)
        return n, rank_now

    def _train_if_due(self) -> None:
        # After the commit was reported: waiters never wait for a training.
        try:
            self._blobs.maybe_train(self._conn)
        except Exception:
            log.exception("training a payload dictionary failed; keeping the current one")

    def _wal_hook(self, conn: apsw.Connection, dbname: str, pages: int) -> int:
        self._wal_pages = pages
        return apsw.SQLITE_OK

    def _checkpoint(self, mode: int) -> None:
        try:
            with storage_errors("checkpointing the WAL"):
                self._conn.wal_checkpoint(mode=mode)
        except StorageError:
            log.warning("WAL checkpoint failed; SQLite will replay the WAL on next open")
            return
        self._wal_pages = 0
        self.checkpoints += 1
