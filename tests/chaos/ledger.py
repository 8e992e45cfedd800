"""What the server acknowledged, as the clients saw it, and the workload that fills it in.

The model. Each worker owns its pattern ids and has one call in flight at a time, so its
writes get increasing sequences, and the server commits in sequence order (DESIGN.md,
invariant 2). After a crash, the recovered state of a worker's patterns must therefore
equal the state after some *prefix* of that worker's steps, and the prefix must contain
every acknowledged step:

- a COMMITTED reply acknowledges its step and every step before it (a committed write
  makes the earlier queued ones durable too);
- a QUEUED reply acknowledges nothing; a Flush acknowledges every step replied to before
  the Flush was sent;
- a RecordOutcomes reply acknowledges every message of the stream;
- the call in flight at the kill (no reply) may or may not have landed, whole: a
  StorePatterns or UpdateConfidenceBatch call is one step, since a call is never split
  across transactions; each message of a stream is a step of its own.

Every outcome carries the same ``observed_at``, so no decay applies (dt = 0, k = 1) and
with weights 0.5, 1 and 2 the ledger predicts every confidence exactly, including the
confidence of a write whose reply never came. Replies are checked against the
prediction as they arrive.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import apsw
import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from patternstore import (
    DURABILITY_COMMITTED,
    DURABILITY_QUEUED,
    OUTCOME_FAILURE,
    OUTCOME_PARTIAL,
    OUTCOME_SUCCESS,
    Pattern,
    PatternStoreClient,
    RetryPolicy,
    StorePatternRequest,
    UpdateConfidenceRequest,
)
from patternstore.v1 import patternstore_pb2 as pb

__all__ = [
    "OBSERVED_AT",
    "PState",
    "Snapshot",
    "Worker",
    "WorkerLedger",
    "integrity_check",
    "read_snapshot",
    "settle_all",
]

PRIOR_ALPHA = 1.0
PRIOR_BETA = 1.0
DECAY_FACTOR = 0.95
DECAY_PERIOD_S = 2_592_000.0
# One fixed time for every outcome: dt = 0 between them, so nothing decays.
OBSERVED_AT = Timestamp(seconds=int(time.time()) - 3600)
SCORES = {OUTCOME_SUCCESS: 1.0, OUTCOME_FAILURE: 0.0, OUTCOME_PARTIAL: 0.5}
# Exact in binary, so alpha and beta stay multiples of 0.25 and every sum is exact.
WEIGHTS = (0.5, 1.0, 2.0)
NOT_FOUND = grpc.StatusCode.NOT_FOUND.value[0]


@dataclass(frozen=True, slots=True)
class PState:
    """The part of a pattern the ledger predicts exactly."""

    version: int
    data: bytes
    alpha: float
    beta: float
    confidence: float
    usage: int

    @classmethod
    def new(cls, data: bytes) -> PState:
        return cls(1, data, PRIOR_ALPHA, PRIOR_BETA, PRIOR_ALPHA / (PRIOR_ALPHA + PRIOR_BETA), 0)

    @classmethod
    def of(cls, p: pb.Pattern) -> PState:
        return cls(p.version, p.data, p.alpha, p.beta, p.confidence, p.usage_count)

    def stored(self, data: bytes) -> PState:
        """An update replaces what the caller owns and keeps what was learned."""
        return replace(self, version=self.version + 1, data=data)

    def learned(self, score: float, weight: float) -> PState:
        """The contract's formula, with dt = 0."""
        k = DECAY_FACTOR ** (0.0 / DECAY_PERIOD_S)
        alpha = PRIOR_ALPHA + (self.alpha - PRIOR_ALPHA) * k
        beta = PRIOR_BETA + (self.beta - PRIOR_BETA) * k
        alpha += weight * score
        beta += weight * (1 - score)
        return replace(
            self,
            version=self.version + 1,
            alpha=alpha,
            beta=beta,
            confidence=alpha / (alpha + beta),
            usage=self.usage + 1,
        )


Snapshot = dict[str, PState]  # an absent pattern has no key


@dataclass
class Step:
    """One unit that commits whole: a call, or one message of a stream."""

    label: str
    changes: dict[str, PState | None]
    replied: bool = False


def _apply(state: Snapshot, changes: dict[str, PState | None]) -> None:
    for pid, new in changes.items():
        if new is None:
            state.pop(pid, None)
        else:
            state[pid] = new


class WorkerLedger:
    """One worker's acknowledged state, and its steps since the last verified restart."""

    def __init__(self, name: str, ids: Sequence[str]) -> None:
        self.name = name
        self.ids = tuple(ids)
        self.base: Snapshot = {}  # as verified after the last restart
        self.head: Snapshot = {}  # base + every step, acknowledged or not
        self.steps: list[Step] = []
        self.acked = 0  # steps[:acked] are acknowledged
        self.sequences: list[int] = []  # reply sequences since the last restart
        # Totals over every round.
        self.total_acked = 0
        self.total_unacked_landed = 0
        self.total_unacked_not_landed = 0

    def begin(self, label: str, changes: dict[str, PState | None]) -> int:
        self.steps.append(Step(label, changes))
        _apply(self.head, changes)
        return len(self.steps) - 1

    def replied(self, index: int, durable: bool) -> None:
        self.steps[index].replied = True
        if durable:
            self.ack_through(index + 1)

    def ack_through(self, n: int) -> None:
        self.acked = max(self.acked, n)

    def ack_replied(self) -> None:
        """Every replied step is durable (a clean SIGTERM commits the queue)."""
        for i, step in enumerate(self.steps):
            if step.replied:
                self.ack_through(i + 1)

    def unflushed(self) -> int:
        """Replied steps after the acknowledged prefix: what a Flush would acknowledge."""
        return sum(1 for s in self.steps[self.acked :] if s.replied)

    def settle(self, recovered: Snapshot) -> int:
        """Check ``recovered`` against every allowed prefix; adopt it. Returns the prefix."""
        state = dict(self.base)
        for k in range(len(self.steps) + 1):
            if k:
                _apply(state, self.steps[k - 1].changes)
            if k >= self.acked and state == recovered:
                self.total_acked += self.acked
                self.total_unacked_landed += k - self.acked
                self.total_unacked_not_landed += len(self.steps) - k
                self.base = dict(recovered)
                self.head = dict(recovered)
                self.steps = []
                self.acked = 0
                self.sequences = []
                return k
        raise AssertionError(self._diagnose(recovered))

    def _diagnose(self, recovered: Snapshot) -> str:
        acked = dict(self.base)
        for step in self.steps[: self.acked]:
            _apply(acked, step.changes)
        lines = [
            f"worker {self.name}: the recovered state is no allowed prefix "
            f"({self.acked} of {len(self.steps)} steps acknowledged)"
        ]
        for pid in self.ids:
            want, got = acked.get(pid), recovered.get(pid)
            if want != got:
                pad = " " * len(pid)
                lines.append(f"  {pid}: acknowledged {want}\n  {pad}  recovered    {got}")
        lines.append("  steps after the acknowledged prefix:")
        lines += [f"    {s.label} replied={s.replied}" for s in self.steps[self.acked :]][:20]
        return "\n".join(lines)


def read_snapshot(client: PatternStoreClient, ids: Iterable[str]) -> Snapshot:
    return {p.id: PState.of(p) for p in client.get_patterns(list(ids)).patterns}


def settle_all(target: str, ledgers: Sequence[WorkerLedger]) -> dict[str, int]:
    """Read every worker's patterns from a restarted server and settle its ledger."""
    with PatternStoreClient(target, timeout=10) as c:
        return {led.name: led.settle(read_snapshot(c, led.ids)) for led in ledgers}


def integrity_check(db: Path) -> list[tuple[str, ...]]:
    """PRAGMA integrity_check on the file, opened read-only (the server must be down)."""
    conn = apsw.Connection(str(db), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        return [tuple(row) for row in conn.execute("PRAGMA integrity_check")]
    finally:
        conn.close()


@dataclass
class Worker:
    """Drives one ledger: random writes on its own ids until a call fails."""

    ledger: WorkerLedger
    rng: random.Random
    target: str
    queued_share: float = 0.35
    timeout: float = 5.0
    error: grpc.RpcError | None = None
    error_at: float = 0.0  # time.monotonic() of the error
    error_step: str = ""
    calls: int = 0
    problems: list[str] = field(default_factory=list)  # replies that contradict the model
    _counter: int = 0

    def thread(self) -> threading.Thread:
        return threading.Thread(target=self.run, name=f"worker-{self.ledger.name}", daemon=True)

    def run(self, stop: threading.Event | None = None) -> None:
        no_retry = RetryPolicy(attempts=1)  # a retry would hide which attempt landed
        with PatternStoreClient(self.target, timeout=self.timeout, retry=no_retry) as c:
            while stop is None or not stop.is_set():
                try:
                    self._one(c)
                    self.calls += 1
                except grpc.RpcError as exc:
                    self.error, self.error_at = exc, time.monotonic()
                    steps = self.ledger.steps
                    in_flight = steps and not steps[-1].replied
                    self.error_step = steps[-1].label if in_flight else "flush"
                    return
                except Exception as exc:  # a broken model must fail the test, not the thread
                    self.problems.append(f"{type(exc).__name__}: {exc}")
                    return

    # -- the operations ----------------------------------------------------------------

    def _data(self) -> bytes:
        self._counter += 1
        return f"{self.ledger.name}:{self._counter}".encode()

    def _check(self, ok: bool, what: str) -> None:
        if not ok:
            self.problems.append(f"{self.ledger.name}: {what}")

    def _seq(self, *seqs: int) -> None:
        for s in seqs:
            prev = self.ledger.sequences[-1] if self.ledger.sequences else 0
            self._check(s > prev, f"sequence {s} after {prev}: not increasing")
            self.ledger.sequences.append(s)

    def _one(self, c: PatternStoreClient) -> str:
        r = self.rng
        led = self.ledger
        existing = [pid for pid in led.ids if pid in led.head]
        durability = DURABILITY_QUEUED if r.random() < self.queued_share else DURABILITY_COMMITTED
        roll = r.random()
        if not existing or roll < 0.22:
            return self._store(c, r.choice(led.ids), durability)
        if roll < 0.30:
            return self._store_many(c, r.sample(led.ids, r.randint(2, 4)), durability)
        if roll < 0.37:
            return self._delete(c, r.choice(existing), durability)
        if roll < 0.57:
            return self._update(c, r.choice(existing), durability)
        if roll < 0.77:
            return self._batch(c, [r.choice(led.ids) for _ in range(r.randint(1, 8))], durability)
        if roll < 0.85:
            return self._stream(c, [r.choice(led.ids) for _ in range(r.randint(2, 6))])
        if led.unflushed():
            return self._flush(c)
        return self._update(c, r.choice(existing), durability)

    def _store(self, c: PatternStoreClient, pid: str, durability: pb.Durability) -> str:
        led = self.ledger
        cur = led.head.get(pid)
        data = self._data()
        new = PState.new(data) if cur is None else cur.stored(data)
        label = f"store {pid} v{new.version} {pb.Durability.Name(durability)}"
        i = led.begin(label, {pid: new})
        reply = c.store_pattern(Pattern(id=pid, type="chaos", data=data), durability=durability)
        led.replied(i, durability == DURABILITY_COMMITTED)
        self._check(reply.version == new.version, f"{label}: replied version {reply.version}")
        self._check(reply.created == (cur is None), f"{label}: replied created={reply.created}")
        self._seq(reply.sequence)
        return label

    def _store_many(self, c: PatternStoreClient, pids: list[str], durability: pb.Durability) -> str:
        led = self.ledger
        changes: dict[str, PState | None] = {}
        requests = []
        for pid in pids:
            cur = led.head.get(pid)
            data = self._data()
            changes[pid] = PState.new(data) if cur is None else cur.stored(data)
            requests.append(StorePatternRequest(pattern=Pattern(id=pid, type="chaos", data=data)))
        label = f"store_patterns {pids} {pb.Durability.Name(durability)}"
        i = led.begin(label, changes)
        reply = c.store_patterns(requests, durability=durability)
        led.replied(i, durability == DURABILITY_COMMITTED)
        got = [r.version for r in reply.results]
        want = [s.version for s in changes.values() if s is not None]
        self._check(got == want, f"{label}: replied versions {got}, expected {want}")
        self._seq(*(r.sequence for r in reply.results))
        return label

    def _delete(self, c: PatternStoreClient, pid: str, durability: pb.Durability) -> str:
        led = self.ledger
        label = f"delete {pid} {pb.Durability.Name(durability)}"
        i = led.begin(label, {pid: None})
        reply = c.delete_pattern(pid, durability=durability)
        led.replied(i, durability == DURABILITY_COMMITTED)
        self._seq(reply.sequence)
        return label

    def _outcome(self) -> tuple[pb.Outcome, float]:
        outcome = self.rng.choice((OUTCOME_SUCCESS, OUTCOME_FAILURE, OUTCOME_PARTIAL))
        return outcome, self.rng.choice(WEIGHTS)

    def _update(self, c: PatternStoreClient, pid: str, durability: pb.Durability) -> str:
        led = self.ledger
        outcome, weight = self._outcome()
        cur = led.head[pid]
        new = cur.learned(SCORES[outcome], weight)
        label = f"update {pid} v{new.version} {pb.Durability.Name(durability)}"
        i = led.begin(label, {pid: new})
        reply = c.update_confidence(
            pid, outcome, weight=weight, observed_at=OBSERVED_AT, durability=durability
        )
        led.replied(i, durability == DURABILITY_COMMITTED)
        self._check(
            reply.confidence == new.confidence,
            f"{label}: replied confidence {reply.confidence!r}, expected {new.confidence!r}",
        )
        self._seq(reply.sequence)
        return label

    def _batch(self, c: PatternStoreClient, pids: list[str], durability: pb.Durability) -> str:
        led = self.ledger
        state = dict(led.head)
        updates = []
        expected: list[float | None] = []  # None: NOT_FOUND
        changes: dict[str, PState | None] = {}
        for pid in pids:
            outcome, weight = self._outcome()
            updates.append(
                UpdateConfidenceRequest(
                    id=pid, outcome=outcome, weight=weight, observed_at=OBSERVED_AT
                )
            )
            cur = state.get(pid)
            if cur is None:
                expected.append(None)
                continue
            state[pid] = changes[pid] = cur.learned(SCORES[outcome], weight)
            expected.append(state[pid].confidence)
        label = f"batch {pids} {pb.Durability.Name(durability)}"
        i = led.begin(label, changes)
        reply = c.update_confidence_batch(updates, durability=durability)
        led.replied(i, durability == DURABILITY_COMMITTED)
        self._check(len(reply.results) == len(pids), f"{label}: {len(reply.results)} results")
        for n, (res, want) in enumerate(zip(reply.results, expected, strict=False)):
            if want is None:
                self._check(res.code == NOT_FOUND, f"{label}: item {n} code {res.code}")
            else:
                self._check(
                    res.code == 0 and res.confidence == want,
                    f"{label}: item {n} code {res.code} confidence {res.confidence!r} != {want!r}",
                )
                self._seq(res.sequence)
        return label

    def _stream(self, c: PatternStoreClient, pids: list[str]) -> str:
        led = self.ledger
        messages = []
        first = len(led.steps)
        not_found = 0
        for pid in pids:
            outcome, weight = self._outcome()
            messages.append(
                UpdateConfidenceRequest(
                    id=pid, outcome=outcome, weight=weight, observed_at=OBSERVED_AT
                )
            )
            cur = led.head.get(pid)
            if cur is None:
                not_found += 1
                led.begin(f"stream {pid} (not found)", {})
            else:
                new = cur.learned(SCORES[outcome], weight)
                led.begin(f"stream {pid} v{new.version}", {pid: new})
        label = f"record_outcomes {pids}"
        reply = c.record_outcomes(messages)
        for i in range(first, len(led.steps)):
            led.replied(i, True)
        self._check(
            (reply.accepted, reply.not_found) == (len(pids) - not_found, not_found),
            f"{label}: accepted {reply.accepted} not_found {reply.not_found}",
        )
        return label

    def _flush(self, c: PatternStoreClient) -> str:
        n = len(self.ledger.steps)
        c.flush()
        self.ledger.ack_through(n)
        return f"flush ({n} steps)"
