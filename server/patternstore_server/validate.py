"""Input rules. Each check raises InvalidArgument naming the field a caller must fix."""

from __future__ import annotations

import math
import re

import numpy as np
from patternstore.v1 import patternstore_pb2 as pb

from .errors import InvalidArgument

__all__ = [
    "MAX_DATA_BYTES",
    "MAX_GET_IDS",
    "MAX_STORE_ITEMS",
    "MAX_UPDATE_ITEMS",
    "check_count",
    "check_id",
    "check_pattern",
    "check_request_id",
    "check_type",
    "check_weight",
]

MAX_ID_BYTES = 256
# Each is kept in memory and in SQLite for dedup_window outcomes: a UUID is 36.
MAX_REQUEST_ID_BYTES = 128
MAX_TYPE_CHARS = 64
MAX_DATA_BYTES = 1024 * 1024
MAX_EMBEDDING = 4096
MAX_TRAJECTORY_VALUES = 1_000_000
MAX_METADATA_ENTRIES = 64
MAX_METADATA_KEY_BYTES = 128
MAX_METADATA_VALUE_BYTES = 4096
MAX_WEIGHT = 1e6
MAX_GET_IDS = 1000
MAX_STORE_ITEMS = 1000
MAX_UPDATE_ITEMS = 10_000

# C0 and C1 control characters (Unicode category Cc).
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_TYPE = re.compile(r"[a-z0-9_.-]{1,64}")


def check_id(value: str, field: str = "id") -> None:
    if not value:
        raise InvalidArgument(field, "must not be empty")
    if len(value) > MAX_ID_BYTES or len(value.encode()) > MAX_ID_BYTES:
        raise InvalidArgument(field, f"must be at most {MAX_ID_BYTES} bytes of UTF-8")
    if _CONTROL.search(value):
        raise InvalidArgument(field, "must not contain control characters")


def check_request_id(value: str, field: str = "request_id") -> None:
    """An outcome's optional retry key (empty: none)."""
    if len(value) > MAX_REQUEST_ID_BYTES or len(value.encode()) > MAX_REQUEST_ID_BYTES:
        raise InvalidArgument(
            field, f"must be at most {MAX_REQUEST_ID_BYTES} bytes of UTF-8 (a UUID is 36)"
        )


def check_type(value: str, field: str = "type") -> None:
    if not _TYPE.fullmatch(value):
        raise InvalidArgument(
            field, f"must be 1-{MAX_TYPE_CHARS} characters of [a-z0-9_.-], got {value[:80]!r}"
        )


def check_count(n: int, limit: int, field: str) -> None:
    if n > limit:
        raise InvalidArgument(field, f"at most {limit} per call, got {n}; split the call")


def check_weight(weight: float, field: str = "weight") -> float:
    """Return the effective weight: 0 (unset) means 1.0."""
    if weight == 0.0:
        return 1.0
    if not math.isfinite(weight) or weight < 0.0 or weight > MAX_WEIGHT:
        raise InvalidArgument(
            field, f"must be finite with 0 < weight <= {MAX_WEIGHT:g}, got {weight}"
        )
    return weight


def _all_finite(values: object) -> bool:
    return bool(np.isfinite(np.asarray(values, dtype=np.float64)).all())


def check_pattern(p: pb.Pattern, field: str = "pattern") -> None:
    """Check the caller-supplied part of a pattern (the id is checked by the caller)."""
    check_type(p.type, f"{field}.type")
    if len(p.data) > MAX_DATA_BYTES:
        raise InvalidArgument(f"{field}.data", f"at most {MAX_DATA_BYTES} bytes, got {len(p.data)}")
    if len(p.embedding) > MAX_EMBEDDING:
        raise InvalidArgument(
            f"{field}.embedding", f"at most {MAX_EMBEDDING} values, got {len(p.embedding)}"
        )
    if p.embedding and not _all_finite(p.embedding):
        raise InvalidArgument(f"{field}.embedding", "values must be finite (no NaN or infinity)")
    traj = p.trajectory
    n = len(traj.values)
    if n > MAX_TRAJECTORY_VALUES:
        raise InvalidArgument(
            f"{field}.trajectory.values", f"at most {MAX_TRAJECTORY_VALUES} values, got {n}"
        )
    if n and traj.dims == 0:
        raise InvalidArgument(f"{field}.trajectory.dims", "must be set when values are given")
    if traj.dims and n % traj.dims:
        raise InvalidArgument(
            f"{field}.trajectory.values",
            f"length {n} is not a multiple of dims {traj.dims} (steps x dims, row-major)",
        )
    if n and not _all_finite(traj.values):
        raise InvalidArgument(f"{field}.trajectory.values", "values must be finite")
    if len(p.metadata) > MAX_METADATA_ENTRIES:
        raise InvalidArgument(
            f"{field}.metadata", f"at most {MAX_METADATA_ENTRIES} entries, got {len(p.metadata)}"
        )
    for key, value in p.metadata.items():
        if len(key.encode()) > MAX_METADATA_KEY_BYTES:
            raise InvalidArgument(
                f"{field}.metadata",
                f"key {key[:40]!r}... longer than {MAX_METADATA_KEY_BYTES} bytes",
            )
        if len(value.encode()) > MAX_METADATA_VALUE_BYTES:
            raise InvalidArgument(
                f"{field}.metadata[{key[:40]!r}]",
                f"value longer than {MAX_METADATA_VALUE_BYTES} bytes",
            )
