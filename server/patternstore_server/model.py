"""Mapping between the wire message (Pattern) and the database row."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import numpy as np
from patternstore.v1 import patternstore_pb2 as pb

from .confidence import Evidence, lower_bound

__all__ = ["evidence_of", "learned_row", "pattern_row", "row_to_pattern", "set_evidence"]


def row_to_pattern(row: Sequence[Any]) -> pb.Pattern:
    """Build a Pattern from a row in storage.queries.COLUMNS order."""
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
    ) = row[:19]
    p = pb.Pattern(
        id=pid,
        type=ptype,
        name=name,
        description=description,
        data=data,
        confidence=confidence,
        alpha=alpha,
        beta=beta,
        usage_count=usage,
        success_count=success,
        failure_count=failure,
        version=version,
    )
    if embedding:
        p.embedding.extend(np.frombuffer(embedding, dtype="<f4").tolist())
    if dims:
        p.trajectory.dims = dims
        p.trajectory.values.extend(np.frombuffer(trajectory, dtype="<f8").tolist())
    if metadata != "{}":
        p.metadata.update(json.loads(metadata))
    p.created_at.FromNanoseconds(created_ns)
    p.updated_at.FromNanoseconds(updated_ns)
    if last_outcome_ns:
        p.last_outcome_at.FromNanoseconds(last_outcome_ns)
    return p


def evidence_of(p: pb.Pattern) -> Evidence:
    return Evidence(
        alpha=p.alpha,
        beta=p.beta,
        confidence=p.confidence,
        usage_count=p.usage_count,
        success_count=p.success_count,
        failure_count=p.failure_count,
        last_outcome_ns=p.last_outcome_at.ToNanoseconds() if p.HasField("last_outcome_at") else 0,
    )


def set_evidence(p: pb.Pattern, e: Evidence) -> None:
    p.alpha = e.alpha
    p.beta = e.beta
    p.confidence = e.confidence
    p.usage_count = e.usage_count
    p.success_count = e.success_count
    p.failure_count = e.failure_count
    if e.last_outcome_ns:
        p.last_outcome_at.FromNanoseconds(e.last_outcome_ns)
    else:
        p.ClearField("last_outcome_at")


def learned_row(p: pb.Pattern, sequence: int) -> dict[str, Any]:
    """The columns an outcome changes (storage.queries.UPDATE_LEARNED)."""
    return {
        "id": p.id,
        "confidence": p.confidence,
        "lower_bound": lower_bound(p.alpha, p.beta, p.confidence),
        "alpha": p.alpha,
        "beta": p.beta,
        "usage_count": p.usage_count,
        "success_count": p.success_count,
        "failure_count": p.failure_count,
        "updated_ns": p.updated_at.ToNanoseconds(),
        "last_outcome_ns": p.last_outcome_at.ToNanoseconds()
        if p.HasField("last_outcome_at")
        else 0,
        "version": p.version,
        "sequence": sequence,
    }


def pattern_row(p: pb.Pattern, sequence: int) -> dict[str, Any]:
    """Every column (storage.queries.UPSERT_PATTERN)."""
    row = learned_row(p, sequence)
    row.update(
        type=p.type,
        name=p.name,
        description=p.description,
        data=p.data,
        embedding=np.asarray(p.embedding, dtype="<f4").tobytes() if p.embedding else b"",
        trajectory_dims=p.trajectory.dims,
        trajectory=(
            np.asarray(p.trajectory.values, dtype="<f8").tobytes() if p.trajectory.values else b""
        ),
        metadata=json.dumps(dict(p.metadata), separators=(",", ":"), sort_keys=True),
        created_ns=p.created_at.ToNanoseconds(),
    )
    return row
