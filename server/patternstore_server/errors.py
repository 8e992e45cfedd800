"""The one exception tree of the server.

::

    PatternStoreError                 -> INTERNAL (anything unexpected)
    ├── InvalidArgument               -> INVALID_ARGUMENT   (names the field)
    ├── NotFound                      -> NOT_FOUND
    ├── AlreadyExists                 -> ALREADY_EXISTS     (create_only on an existing id)
    ├── VersionConflict               -> ABORTED            (expected_version differs)
    ├── Overloaded                    -> RESOURCE_EXHAUSTED (write queue full; retry-after-ms)
    ├── ReplyTooLarge                 -> RESOURCE_EXHAUSTED (ask for fewer; no retry hint)
    ├── TooManyCalls                  -> RESOURCE_EXHAUSTED (max_concurrent_rpcs in progress)
    ├── Starting                      -> UNAVAILABLE        (loading patterns into memory)
    ├── ShuttingDown                  -> UNAVAILABLE        (draining after SIGTERM)
    ├── StorageUnavailable            -> UNAVAILABLE        (writer stuck on a lock or I/O error)
    ├── FailedPrecondition            -> FAILED_PRECONDITION (e.g. the database is read-only)
    ├── DataLoss                      -> DATA_LOSS          (a stored row does not decode)
    └── StorageError                  -> INTERNAL           (SQLite said no; translated once)
        └── StoreClosed                                     (use after close)

Domain code raises these; only the servicer maps them to gRPC status codes.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import apsw
import grpc

__all__ = [
    "AlreadyExists",
    "DataLoss",
    "FailedPrecondition",
    "InvalidArgument",
    "NotFound",
    "Overloaded",
    "PatternStoreError",
    "ReplyTooLarge",
    "ShuttingDown",
    "Starting",
    "StorageError",
    "StorageUnavailable",
    "StoreClosed",
    "TooManyCalls",
    "VersionConflict",
    "storage_errors",
]


class PatternStoreError(Exception):
    """Base of every error the server raises on purpose."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL


class InvalidArgument(PatternStoreError):
    code = grpc.StatusCode.INVALID_ARGUMENT

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field


class NotFound(PatternStoreError):
    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(PatternStoreError):
    code = grpc.StatusCode.ALREADY_EXISTS


class VersionConflict(PatternStoreError):
    code = grpc.StatusCode.ABORTED


class Overloaded(PatternStoreError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED

    def __init__(self, message: str, retry_after_ms: int) -> None:
        super().__init__(message)
        # Sent as trailing metadata "retry-after-ms": when the queue should have room.
        self.retry_after_ms = retry_after_ms


class ReplyTooLarge(PatternStoreError):
    """The reply would pass max_send_bytes: the caller must ask for less (clients do not
    retry it: there is no retry-after-ms)."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class TooManyCalls(PatternStoreError):
    """max_concurrent_rpcs PatternStore calls are already in a handler."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Starting(PatternStoreError):
    code = grpc.StatusCode.UNAVAILABLE


class ShuttingDown(PatternStoreError):
    code = grpc.StatusCode.UNAVAILABLE


class StorageUnavailable(PatternStoreError):
    code = grpc.StatusCode.UNAVAILABLE


class FailedPrecondition(PatternStoreError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class DataLoss(PatternStoreError):
    """A stored row does not decode (``detail`` says which part): that pattern only."""

    code = grpc.StatusCode.DATA_LOSS

    def __init__(self, detail: object) -> None:
        super().__init__(
            f"a stored row does not decode ({detail}); restore it from a backup or store it again"
        )


class StorageError(PatternStoreError):
    code = grpc.StatusCode.INTERNAL


class StoreClosed(StorageError):
    pass


@contextlib.contextmanager
def storage_errors(what: str) -> Iterator[None]:
    """Translate SQLite's exceptions into StorageError, once, at the storage boundary."""
    try:
        yield
    except apsw.Error as exc:
        raise StorageError(f"{what}: {type(exc).__name__}: {exc}") from exc
