"""Mapping between the wire message (Pattern) and the database row."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from google.protobuf.timestamp_pb2 import Timestamp
from patternstore.v1 import patternstore_pb2 as pb

from .codecs import payload
from .confidence import Evidence, lower_bound
from .storage.blobs import decode_embedding, decode_trajectory

__all__ = [
    "evidence_of",
    "expires_ns",
    "learned_row",
    "ns_of",
    "pattern_row",
    "row_to_pattern",
    "set_evidence",
    "set_ns",
]

_NS = 1_000_000_000


def row_to_pattern(row: Sequence[Any], dictionaries: Mapping[int, bytes]) -> pb.Pattern:
    """Build a Pattern from a row in storage.queries.COLUMNS order (fields still encoded)."""
    (
        pid,
        ptype,
        name,
        description,
        data,
        embedding,
        dims,
        trajectory,
        metadata,
        confidence,
        alpha,
        beta,
        usage,
        success,
        failure,
        created_ns,
        updated_ns,
        last_outcome_ns,
        version,
        expire_ns,
    ) = row[:20]
    p = pb.Pattern(
        id=pid,
        type=ptype,
        name=name,
        description=description,
        data=payload.decode(data, dictionaries),
        confidence=confidence,
        alpha=alpha,
        beta=beta,
        usage_count=usage,
        success_count=success,
        failure_count=failure,
        version=version,
    )
    if embedding:
        p.embedding.extend(decode_embedding(embedding))
    if dims:
        p.trajectory.dims = dims
        p.trajectory.values.extend(decode_trajectory(trajectory))
    if metadata != "{}":
        p.metadata.update(json.loads(metadata))
    set_ns(p.created_at, created_ns)
    set_ns(p.updated_at, updated_ns)
    if last_outcome_ns:
        set_ns(p.last_outcome_at, last_outcome_ns)
    if expire_ns:
        set_ns(p.expires_at, expire_ns)
    return p


def ns_of(ts: Timestamp) -> int:
    # Timestamp.ToNanoseconds is pure Python and slow on the outcome path.
    return ts.seconds * _NS + ts.nanos


def set_ns(ts: Timestamp, ns: int) -> None:
    ts.seconds, ts.nanos = divmod(ns, _NS)


def expires_ns(p: pb.Pattern) -> int:
    """When the pattern expires, in ns; 0 for never."""
    return ns_of(p.expires_at) if p.HasField("expires_at") else 0


def evidence_of(p: pb.Pattern) -> Evidence:
    return Evidence(
        alpha=p.alpha,
        beta=p.beta,
        confidence=p.confidence,
        usage_count=p.usage_count,
        success_count=p.success_count,
        failure_count=p.failure_count,
        last_outcome_ns=ns_of(p.last_outcome_at) if p.HasField("last_outcome_at") else 0,
    )


def set_evidence(p: pb.Pattern, e: Evidence) -> None:
    p.alpha = e.alpha
    p.beta = e.beta
    p.confidence = e.confidence
    p.usage_count = e.usage_count
    p.success_count = e.success_count
    p.failure_count = e.failure_count
    if e.last_outcome_ns:
        set_ns(p.last_outcome_at, e.last_outcome_ns)
    else:
        p.ClearField("last_outcome_at")


def learned_row(p: pb.Pattern, sequence: int) -> tuple[Any, ...]:
    """The columns an outcome changes, in storage.queries.LEARNED_FIELDS order."""
    return (
        p.confidence,
        lower_bound(p.alpha, p.beta, p.confidence),
        p.alpha,
        p.beta,
        p.usage_count,
        p.success_count,
        p.failure_count,
        ns_of(p.updated_at),
        ns_of(p.last_outcome_at) if p.HasField("last_outcome_at") else 0,
        p.version,
        sequence,
    )


def pattern_row(p: pb.Pattern, sequence: int) -> tuple[Any, ...]:
    """Every column, in storage.queries.PATTERN_FIELDS order."""
    embedding = np.asarray(p.embedding, dtype="<f4").tobytes() if p.embedding else b""
    values = p.trajectory.values
    trajectory = np.asarray(values, dtype="<f8").tobytes() if values else b""
    return (
        *learned_row(p, sequence),
        p.id,
        p.type,
        p.name,
        p.description,
        p.data,
        embedding,
        p.trajectory.dims,
        trajectory,
        json.dumps(dict(p.metadata), separators=(",", ":"), sort_keys=True),
        ns_of(p.created_at),
        expires_ns(p),
    )
