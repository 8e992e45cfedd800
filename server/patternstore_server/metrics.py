"""Prometheus metrics: the gRPC server set (go-grpc-prometheus names) and patternstore_*.

Counters and histograms are updated where things happen, with labelled children
looked up once per method and cached. Gauges that describe state (queue depth, cache
entries and bytes, the durable sequence) are read by a collector at scrape time, so the
hot path never updates them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

import grpc
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

__all__ = ["MethodMetrics", "Metrics", "StateReading"]

# 15 buckets from 50 us to 5 s: an L1 hit lands in the first few, a group commit later.
LATENCY_BUCKETS = (
    0.00005,
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    5.0,
)
BATCH_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000)

SERVICE = "patternstore.v1.PatternStore"


@dataclass(frozen=True)
class StateReading:
    """What the scrape-time collector reads from the live server."""

    queue_depth: int
    queue_capacity: int
    durable_sequence: int
    last_sequence: int
    batches: int
    items: int
    caches: list[
        tuple[str, int, int, int, int, int]
    ]  # tier, hits, misses, evictions, entries, bytes
    database_bytes: int
    wal_bytes: int
    outcomes: dict[str, int]
    checkpoints: int
    busy_retries: int
    l1_window: int | None
    codec_bytes_in: dict[str, int]
    codec_bytes_out: dict[str, int]
    dictionaries: int
    pruned: dict[str, int]
    vectors: int
    vector_bytes: int


def _go_code_name(code: grpc.StatusCode) -> str:
    """NOT_FOUND -> NotFound: the spelling go-grpc-prometheus dashboards and alerts match."""
    if code is grpc.StatusCode.OK:
        return "OK"
    return "".join(part.capitalize() for part in code.name.split("_"))


class _Inc(Protocol):
    def inc(self, amount: float = 1) -> None: ...


class MethodMetrics:
    """The children one method updates, looked up once."""

    __slots__ = ("_handled", "_handled_by_code", "_seconds", "msg_received", "msg_sent", "started")

    started: _Inc
    msg_received: _Inc
    msg_sent: _Inc

    def __init__(self, metrics: Metrics, method: str, grpc_type: str) -> None:
        labels = (grpc_type, SERVICE, method)
        self.started = metrics.started.labels(*labels)
        self.msg_received = metrics.msg_received.labels(*labels)
        self.msg_sent = metrics.msg_sent.labels(*labels)
        self._seconds = metrics.seconds.labels(*labels)
        self._handled = metrics.handled
        self._handled_by_code = {
            code: metrics.handled.labels(*labels, _go_code_name(code)) for code in grpc.StatusCode
        }

    def done(self, code: grpc.StatusCode, seconds: float) -> None:
        self._handled_by_code[code].inc()
        self._seconds.observe(seconds)


class _NoCount:
    def inc(self, amount: float = 1) -> None:
        pass


class SilentMethodMetrics(MethodMetrics):
    """grpc_metrics=off: the same calls, doing nothing (to measure what metrics cost)."""

    def __init__(self) -> None:
        self.started = self.msg_received = self.msg_sent = _NoCount()

    def done(self, code: grpc.StatusCode, seconds: float) -> None:
        pass


class Metrics:
    def __init__(
        self, registry: CollectorRegistry | None = None, slow_query_seconds: float = 0.1
    ) -> None:
        self.registry = CollectorRegistry() if registry is None else registry
        self.slow_query_seconds = slow_query_seconds
        # Off only to measure the cost of the per-call gRPC metrics.
        self.per_call = True
        labels = ("grpc_type", "grpc_service", "grpc_method")
        r = self.registry
        self.started = Counter(
            "grpc_server_started_total", "RPCs started on the server.", labels, registry=r
        )
        self.handled = Counter(
            "grpc_server_handled_total",
            "RPCs completed on the server, by status code.",
            (*labels, "grpc_code"),
            registry=r,
        )
        self.seconds = Histogram(
            "grpc_server_handling_seconds",
            "Time from receiving an RPC to its status.",
            labels,
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.msg_received = Counter(
            "grpc_server_msg_received_total",
            "Messages received on streams and unary calls.",
            labels,
            registry=r,
        )
        self.msg_sent = Counter(
            "grpc_server_msg_sent_total",
            "Messages sent on streams and unary calls.",
            labels,
            registry=r,
        )
        self.batch_size = Histogram(
            "patternstore_batch_size", "Writes per group commit.", buckets=BATCH_BUCKETS, registry=r
        )
        self.commit_seconds = Histogram(
            "patternstore_commit_seconds",
            "Duration of one group commit transaction.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.rejected = Counter(
            "patternstore_writes_rejected",
            "Writes refused with RESOURCE_EXHAUSTED (queue full).",
            registry=r,
        )
        self.query_seconds = Histogram(
            "patternstore_query_seconds",
            "SQLite reads, by named query.",
            ("query",),
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.slow_queries = Counter(
            "patternstore_slow_queries",
            "SQLite reads slower than slow_query_ms.",
            ("query",),
            registry=r,
        )
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        self._query_children: dict[str, Any] = {}

    def observe_query(self, name: str, seconds: float) -> None:
        # Runs on the loop and the query threads; children are cached per query name.
        child = self._query_children.get(name)
        if child is None:
            child = self._query_children[name] = self.query_seconds.labels(name)
        child.observe(seconds)
        if seconds >= self.slow_query_seconds:
            self.slow_queries.labels(name).inc()

    def method(self, name: str, grpc_type: str) -> MethodMetrics:
        if not self.per_call:
            return SilentMethodMetrics()
        return MethodMetrics(self, name, grpc_type)

    def observe_batch(self, n: int, seconds: float) -> None:
        # Called from the writer thread; prometheus_client's metrics are thread-safe.
        self.batch_size.observe(n)
        self.commit_seconds.observe(seconds)

    def add_state_collector(self, read: Callable[[], StateReading]) -> None:
        self.registry.register(_StateCollector(read))


class _StateCollector(Collector):
    def __init__(self, read: Callable[[], StateReading]) -> None:
        self._read = read

    def collect(self) -> Iterable[Metric]:
        s = self._read()
        yield _gauge(
            "patternstore_queue_depth",
            "Writes accepted and not yet committed.",
            s.queue_depth,
            ("queue",),
            ("writes",),
        )
        yield _gauge(
            "patternstore_queue_capacity",
            "Writes that may wait before refusal.",
            s.queue_capacity,
            ("queue",),
            ("writes",),
        )
        yield _gauge(
            "patternstore_durable_sequence", "Highest committed write sequence.", s.durable_sequence
        )
        yield _gauge(
            "patternstore_last_sequence", "Highest accepted write sequence.", s.last_sequence
        )
        batches = CounterMetricFamily("patternstore_batches_flushed", "Group commits made.")
        batches.add_metric([], s.batches)
        yield batches
        items = CounterMetricFamily("patternstore_items_committed", "Writes committed.")
        items.add_metric([], s.items)
        yield items
        hits = CounterMetricFamily("patternstore_cache_hits", "Cache hits.", labels=["tier"])
        misses = CounterMetricFamily("patternstore_cache_misses", "Cache misses.", labels=["tier"])
        evictions = CounterMetricFamily(
            "patternstore_cache_evictions", "Entries evicted by capacity.", labels=["tier"]
        )
        entries = GaugeMetricFamily("patternstore_cache_entries", "Entries held.", labels=["tier"])
        size = GaugeMetricFamily("patternstore_cache_bytes", "Bytes held.", labels=["tier"])
        for tier, h, m, e, n, b in s.caches:
            hits.add_metric([tier], h)
            misses.add_metric([tier], m)
            evictions.add_metric([tier], e)
            entries.add_metric([tier], n)
            size.add_metric([tier], b)
        yield from (hits, misses, evictions, entries, size)
        outcomes = CounterMetricFamily(
            "patternstore_outcomes", "Outcomes applied, by outcome.", labels=["outcome"]
        )
        for name, n in s.outcomes.items():
            outcomes.add_metric([name], n)
        yield outcomes
        checkpoints = CounterMetricFamily("patternstore_checkpoints", "WAL checkpoints made.")
        checkpoints.add_metric([], s.checkpoints)
        yield checkpoints
        busy = CounterMetricFamily(
            "patternstore_busy_retries", "Waits for a database lock held by another connection."
        )
        busy.add_metric([], s.busy_retries)
        yield busy
        codec_in = CounterMetricFamily(
            "patternstore_codec_bytes_in",
            "Raw bytes given to the codecs, by field.",
            labels=["field"],
        )
        codec_out = CounterMetricFamily(
            "patternstore_codec_bytes_out", "Bytes the codecs stored, by field.", labels=["field"]
        )
        for field, n in s.codec_bytes_in.items():
            codec_in.add_metric([field], n)
            codec_out.add_metric([field], s.codec_bytes_out[field])
        yield codec_in
        yield codec_out
        yield _gauge("patternstore_dictionaries", "Trained payload dictionaries.", s.dictionaries)
        pruned = CounterMetricFamily(
            "patternstore_pruned", "Patterns the pruner deleted, by reason.", labels=["reason"]
        )
        for why, n in s.pruned.items():
            pruned.add_metric([why], n)
        yield pruned
        yield _gauge("patternstore_vectors", "Embeddings in the similarity index.", s.vectors)
        yield _gauge(
            "patternstore_vector_index_bytes", "Memory of the similarity index.", s.vector_bytes
        )
        if s.l1_window is not None:
            yield _gauge(
                "patternstore_cache_l1_window_entries",
                "The adaptive L1's admission window size.",
                s.l1_window,
            )
        yield _gauge("patternstore_database_bytes", "Size of the database file.", s.database_bytes)
        yield _gauge("patternstore_wal_bytes", "Size of the write-ahead log.", s.wal_bytes)


def _gauge(
    name: str, doc: str, value: float, labels: tuple[str, ...] = (), values: tuple[str, ...] = ()
) -> GaugeMetricFamily:
    g = GaugeMetricFamily(name, doc, labels=list(labels))
    g.add_metric(list(values), value)
    return g
