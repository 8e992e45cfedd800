"""Mapping between the wire message (Pattern) and the database row."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from google.protobuf.timestamp_pb2 import Timestamp
from patternstore.v1 import patternstore_pb2 as pb

from .codecs import CodecError, content_key, payload
from .confidence import Evidence, ModelParams, lower_bound, step
from .storage.blobs import decode_embedding, decode_trajectory

__all__ = [
    "evidence_of",
    "expires_ns",
    "learn",
    "learned_row",
    "ns_of",
    "pattern_row",
    "row_skeleton",
    "row_to_pattern",
    "set_evidence",
    "set_ns",
]

_NS = 1_000_000_000


def row_to_pattern(row: Sequence[Any], dictionaries: Mapping[int, bytes]) -> pb.Pattern:
    """Build a Pattern from a row in storage.queries.COLUMNS order (fields still encoded).

    Raises CodecError naming the pattern when its payload, embedding, trajectory or text
    does not decode.
    """
    try:
        return _decoded(row, dictionaries)
    except CodecError as exc:
        # The id, so a caller told DATA_LOSS by a multi-pattern reader knows which.
        raise CodecError(f"pattern {row[0]!r}: {exc}") from None


def _decoded(row: Sequence[Any], dictionaries: Mapping[int, bytes]) -> pb.Pattern:
    p = row_skeleton(row)
    p.name = _text(row[2], "name")
    p.description = _text(row[3], "description")
    data, embedding, dims, trajectory, metadata = row[4:9]
    p.data = payload.decode(data, dictionaries)
    if content_key(p.data) != row[20]:
        # The frames carry no checksum; the key does (helper-29: 29% of single-bit flips
        # in a stored payload decoded to other bytes without an error).
        raise CodecError("payload does not match its content key (a corrupt stored copy)")
    if embedding:
        p.embedding.extend(decode_embedding(embedding))
    if dims:
        p.trajectory.dims = dims
        p.trajectory.values.extend(decode_trajectory(trajectory))
    if metadata != b"{}":
        try:
            p.metadata.update(json.loads(_text(metadata, "metadata")))
        except (ValueError, TypeError, AttributeError) as exc:  # JSON, or not str -> str
            raise CodecError(f"metadata does not decode: {exc}") from None
    return p


def _text(raw: bytes, field: str) -> str:
    try:
        return raw.decode()
    except UnicodeDecodeError as exc:
        raise CodecError(f"{field} is not UTF-8 ({exc.reason} at byte {exc.start})") from None


def row_skeleton(row: Sequence[Any]) -> pb.Pattern:
    """The row without its encoded fields (payload, embedding, trajectory, metadata):
    identity, version, timestamps and learned values, which always decode. All a store
    (which replaces the rest) or a delete needs of a row whose payload has rotted."""
    (
        pid,
        ptype,
        name,
        description,
        _data,
        _embedding,
        _dims,
        _trajectory,
        _metadata,
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
        # Lenient: a store replaces both, and row_to_pattern checks them strictly.
        name=name.decode(errors="replace"),
        description=description.decode(errors="replace"),
        confidence=confidence,
        alpha=alpha,
        beta=beta,
        usage_count=usage,
        success_count=success,
        failure_count=failure,
        version=version,
    )
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


def learn(
    p: pb.Pattern,
    score: float,
    weight: float,
    t_ns: int,
    now_ns: int,
    sequence: int,
    params: ModelParams,
) -> tuple[Any, ...]:
    """Apply one outcome to ``p`` in place (version + 1, updated at ``now_ns``) and return
    its learned row, as ``set_evidence(apply_outcome(evidence_of(p)))``, ``set_ns`` and
    ``learned_row`` would, without the two Evidence objects and the reads back from the
    message: those were a third of an outcome's time on the event loop (py-spy,
    UpdateConfidenceBatch)."""
    last = p.last_outcome_at.seconds * _NS + p.last_outcome_at.nanos
    alpha, beta, confidence = step(p.alpha, p.beta, p.confidence, last, score, weight, t_ns, params)
    usage = p.usage_count + 1
    success = p.success_count + (score == 1.0)
    failure = p.failure_count + (score == 0.0)
    last = max(last, t_ns)
    version = p.version + 1
    p.alpha = alpha
    p.beta = beta
    p.confidence = confidence
    p.usage_count = usage
    p.success_count = success
    p.failure_count = failure
    p.last_outcome_at.seconds, p.last_outcome_at.nanos = divmod(last, _NS)
    p.updated_at.seconds, p.updated_at.nanos = divmod(now_ns, _NS)
    p.version = version
    return (
        confidence,
        lower_bound(alpha, beta, confidence),
        alpha,
        beta,
        usage,
        success,
        failure,
        now_ns,
        last,
        version,
        sequence,
    )


# json.dumps with any non-default argument builds a new JSONEncoder per call: a third of
# the cost of encoding a small metadata map (profile of StorePatterns, cProfile).
_encode_metadata = json.JSONEncoder(separators=(",", ":"), sort_keys=True).encode


def _metadata_json(metadata: Mapping[str, str]) -> str:
    # A comprehension, not dict(metadata): dict() of a protobuf map goes through
    # MutableMapping.update and ItemsView, 3.6 us against 1.7 us for one entry (py-spy
    # --gil of StorePatterns(100): 9% of the loop thread's GIL time was this function).
    return _encode_metadata({key: metadata[key] for key in metadata}) if metadata else "{}"


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
        _metadata_json(p.metadata),
        ns_of(p.created_at),
        expires_ns(p),
    )
