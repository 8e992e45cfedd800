"""patternstore client: store learned patterns, read them back, report outcomes.

from patternstore import PatternStoreClient, Pattern
with PatternStoreClient("127.0.0.1:50051") as ps:
    ps.store_pattern(Pattern(id="p1", type="plan", data=b'{"steps": []}'))
    ps.update_confidence("p1", "success")
    print(ps.get_pattern("p1").confidence)
"""

from ._requests import RetryPolicy, search_request, update_request
from .aio import AsyncPatternStoreClient
from .client import PatternStoreClient
from .v1.patternstore_pb2 import (
    CONSISTENCY_BOUNDED,
    CONSISTENCY_STRONG,
    DURABILITY_COMMITTED,
    DURABILITY_QUEUED,
    ORDER_BY_CONFIDENCE,
    ORDER_BY_LOWER_BOUND,
    ORDER_BY_RECENT,
    ORDER_BY_THOMPSON,
    ORDER_BY_USAGE,
    OUTCOME_FAILURE,
    OUTCOME_PARTIAL,
    OUTCOME_SUCCESS,
    Pattern,
    StorePatternRequest,
    Trajectory,
    UpdateConfidenceRequest,
)

__all__ = [
    "CONSISTENCY_BOUNDED",
    "CONSISTENCY_STRONG",
    "DURABILITY_COMMITTED",
    "DURABILITY_QUEUED",
    "ORDER_BY_CONFIDENCE",
    "ORDER_BY_LOWER_BOUND",
    "ORDER_BY_RECENT",
    "ORDER_BY_THOMPSON",
    "ORDER_BY_USAGE",
    "OUTCOME_FAILURE",
    "OUTCOME_PARTIAL",
    "OUTCOME_SUCCESS",
    "AsyncPatternStoreClient",
    "Pattern",
    "PatternStoreClient",
    "RetryPolicy",
    "StorePatternRequest",
    "Trajectory",
    "UpdateConfidenceRequest",
    "search_request",
    "update_request",
]
