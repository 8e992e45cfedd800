import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Outcome(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    OUTCOME_UNSPECIFIED: _ClassVar[Outcome]
    OUTCOME_SUCCESS: _ClassVar[Outcome]
    OUTCOME_FAILURE: _ClassVar[Outcome]
    OUTCOME_PARTIAL: _ClassVar[Outcome]

class Durability(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DURABILITY_UNSPECIFIED: _ClassVar[Durability]
    DURABILITY_COMMITTED: _ClassVar[Durability]
    DURABILITY_QUEUED: _ClassVar[Durability]

class OrderBy(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ORDER_BY_UNSPECIFIED: _ClassVar[OrderBy]
    ORDER_BY_CONFIDENCE: _ClassVar[OrderBy]
    ORDER_BY_USAGE: _ClassVar[OrderBy]
    ORDER_BY_RECENT: _ClassVar[OrderBy]
    ORDER_BY_LOWER_BOUND: _ClassVar[OrderBy]
    ORDER_BY_THOMPSON: _ClassVar[OrderBy]
    ORDER_BY_ID: _ClassVar[OrderBy]

class Consistency(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CONSISTENCY_UNSPECIFIED: _ClassVar[Consistency]
    CONSISTENCY_BOUNDED: _ClassVar[Consistency]
    CONSISTENCY_STRONG: _ClassVar[Consistency]
OUTCOME_UNSPECIFIED: Outcome
OUTCOME_SUCCESS: Outcome
OUTCOME_FAILURE: Outcome
OUTCOME_PARTIAL: Outcome
DURABILITY_UNSPECIFIED: Durability
DURABILITY_COMMITTED: Durability
DURABILITY_QUEUED: Durability
ORDER_BY_UNSPECIFIED: OrderBy
ORDER_BY_CONFIDENCE: OrderBy
ORDER_BY_USAGE: OrderBy
ORDER_BY_RECENT: OrderBy
ORDER_BY_LOWER_BOUND: OrderBy
ORDER_BY_THOMPSON: OrderBy
ORDER_BY_ID: OrderBy
CONSISTENCY_UNSPECIFIED: Consistency
CONSISTENCY_BOUNDED: Consistency
CONSISTENCY_STRONG: Consistency

class Pattern(_message.Message):
    __slots__ = ("id", "type", "name", "description", "data", "embedding", "trajectory", "metadata", "expires_at", "confidence", "alpha", "beta", "usage_count", "success_count", "failure_count", "created_at", "updated_at", "last_outcome_at", "version")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    EMBEDDING_FIELD_NUMBER: _ClassVar[int]
    TRAJECTORY_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    ALPHA_FIELD_NUMBER: _ClassVar[int]
    BETA_FIELD_NUMBER: _ClassVar[int]
    USAGE_COUNT_FIELD_NUMBER: _ClassVar[int]
    SUCCESS_COUNT_FIELD_NUMBER: _ClassVar[int]
    FAILURE_COUNT_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    LAST_OUTCOME_AT_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    id: str
    type: str
    name: str
    description: str
    data: bytes
    embedding: _containers.RepeatedScalarFieldContainer[float]
    trajectory: Trajectory
    metadata: _containers.ScalarMap[str, str]
    expires_at: _timestamp_pb2.Timestamp
    confidence: float
    alpha: float
    beta: float
    usage_count: int
    success_count: int
    failure_count: int
    created_at: _timestamp_pb2.Timestamp
    updated_at: _timestamp_pb2.Timestamp
    last_outcome_at: _timestamp_pb2.Timestamp
    version: int
    def __init__(self, id: _Optional[str] = ..., type: _Optional[str] = ..., name: _Optional[str] = ..., description: _Optional[str] = ..., data: _Optional[bytes] = ..., embedding: _Optional[_Iterable[float]] = ..., trajectory: _Optional[_Union[Trajectory, _Mapping]] = ..., metadata: _Optional[_Mapping[str, str]] = ..., expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., confidence: _Optional[float] = ..., alpha: _Optional[float] = ..., beta: _Optional[float] = ..., usage_count: _Optional[int] = ..., success_count: _Optional[int] = ..., failure_count: _Optional[int] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., updated_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., last_outcome_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., version: _Optional[int] = ...) -> None: ...

class Trajectory(_message.Message):
    __slots__ = ("dims", "values")
    DIMS_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    dims: int
    values: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, dims: _Optional[int] = ..., values: _Optional[_Iterable[float]] = ...) -> None: ...

class GetPatternRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class GetPatternsRequest(_message.Message):
    __slots__ = ("ids",)
    IDS_FIELD_NUMBER: _ClassVar[int]
    ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, ids: _Optional[_Iterable[str]] = ...) -> None: ...

class GetPatternsResponse(_message.Message):
    __slots__ = ("patterns", "missing_ids")
    PATTERNS_FIELD_NUMBER: _ClassVar[int]
    MISSING_IDS_FIELD_NUMBER: _ClassVar[int]
    patterns: _containers.RepeatedCompositeFieldContainer[Pattern]
    missing_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, patterns: _Optional[_Iterable[_Union[Pattern, _Mapping]]] = ..., missing_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class StorePatternRequest(_message.Message):
    __slots__ = ("pattern", "expected_version", "create_only", "durability")
    PATTERN_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_VERSION_FIELD_NUMBER: _ClassVar[int]
    CREATE_ONLY_FIELD_NUMBER: _ClassVar[int]
    DURABILITY_FIELD_NUMBER: _ClassVar[int]
    pattern: Pattern
    expected_version: int
    create_only: bool
    durability: Durability
    def __init__(self, pattern: _Optional[_Union[Pattern, _Mapping]] = ..., expected_version: _Optional[int] = ..., create_only: _Optional[bool] = ..., durability: _Optional[_Union[Durability, str]] = ...) -> None: ...

class StorePatternResponse(_message.Message):
    __slots__ = ("id", "version", "sequence", "created")
    ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    id: str
    version: int
    sequence: int
    created: bool
    def __init__(self, id: _Optional[str] = ..., version: _Optional[int] = ..., sequence: _Optional[int] = ..., created: _Optional[bool] = ...) -> None: ...

class StorePatternsRequest(_message.Message):
    __slots__ = ("requests", "durability")
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    DURABILITY_FIELD_NUMBER: _ClassVar[int]
    requests: _containers.RepeatedCompositeFieldContainer[StorePatternRequest]
    durability: Durability
    def __init__(self, requests: _Optional[_Iterable[_Union[StorePatternRequest, _Mapping]]] = ..., durability: _Optional[_Union[Durability, str]] = ...) -> None: ...

class StorePatternsResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[StorePatternResponse]
    def __init__(self, results: _Optional[_Iterable[_Union[StorePatternResponse, _Mapping]]] = ...) -> None: ...

class DeletePatternRequest(_message.Message):
    __slots__ = ("id", "expected_version", "durability")
    ID_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_VERSION_FIELD_NUMBER: _ClassVar[int]
    DURABILITY_FIELD_NUMBER: _ClassVar[int]
    id: str
    expected_version: int
    durability: Durability
    def __init__(self, id: _Optional[str] = ..., expected_version: _Optional[int] = ..., durability: _Optional[_Union[Durability, str]] = ...) -> None: ...

class DeletePatternResponse(_message.Message):
    __slots__ = ("sequence",)
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    sequence: int
    def __init__(self, sequence: _Optional[int] = ...) -> None: ...

class UpdateConfidenceRequest(_message.Message):
    __slots__ = ("id", "outcome", "weight", "observed_at", "request_id", "durability")
    ID_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    OBSERVED_AT_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    DURABILITY_FIELD_NUMBER: _ClassVar[int]
    id: str
    outcome: Outcome
    weight: float
    observed_at: _timestamp_pb2.Timestamp
    request_id: str
    durability: Durability
    def __init__(self, id: _Optional[str] = ..., outcome: _Optional[_Union[Outcome, str]] = ..., weight: _Optional[float] = ..., observed_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., request_id: _Optional[str] = ..., durability: _Optional[_Union[Durability, str]] = ...) -> None: ...

class UpdateConfidenceResponse(_message.Message):
    __slots__ = ("confidence", "sequence", "duplicate")
    CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_FIELD_NUMBER: _ClassVar[int]
    confidence: float
    sequence: int
    duplicate: bool
    def __init__(self, confidence: _Optional[float] = ..., sequence: _Optional[int] = ..., duplicate: _Optional[bool] = ...) -> None: ...

class UpdateConfidenceBatchRequest(_message.Message):
    __slots__ = ("updates", "durability")
    UPDATES_FIELD_NUMBER: _ClassVar[int]
    DURABILITY_FIELD_NUMBER: _ClassVar[int]
    updates: _containers.RepeatedCompositeFieldContainer[UpdateConfidenceRequest]
    durability: Durability
    def __init__(self, updates: _Optional[_Iterable[_Union[UpdateConfidenceRequest, _Mapping]]] = ..., durability: _Optional[_Union[Durability, str]] = ...) -> None: ...

class UpdateConfidenceResult(_message.Message):
    __slots__ = ("code", "message", "confidence", "sequence", "duplicate")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_FIELD_NUMBER: _ClassVar[int]
    code: int
    message: str
    confidence: float
    sequence: int
    duplicate: bool
    def __init__(self, code: _Optional[int] = ..., message: _Optional[str] = ..., confidence: _Optional[float] = ..., sequence: _Optional[int] = ..., duplicate: _Optional[bool] = ...) -> None: ...

class UpdateConfidenceBatchResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[UpdateConfidenceResult]
    def __init__(self, results: _Optional[_Iterable[_Union[UpdateConfidenceResult, _Mapping]]] = ...) -> None: ...

class RecordOutcomesResponse(_message.Message):
    __slots__ = ("accepted", "not_found", "duplicates", "durable_sequence")
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    NOT_FOUND_FIELD_NUMBER: _ClassVar[int]
    DUPLICATES_FIELD_NUMBER: _ClassVar[int]
    DURABLE_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    accepted: int
    not_found: int
    duplicates: int
    durable_sequence: int
    def __init__(self, accepted: _Optional[int] = ..., not_found: _Optional[int] = ..., duplicates: _Optional[int] = ..., durable_sequence: _Optional[int] = ...) -> None: ...

class QueryPatternsRequest(_message.Message):
    __slots__ = ("type", "min_confidence", "order_by", "limit", "page_token", "consistency", "seed")
    TYPE_FIELD_NUMBER: _ClassVar[int]
    MIN_CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    ORDER_BY_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    CONSISTENCY_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    type: str
    min_confidence: float
    order_by: OrderBy
    limit: int
    page_token: str
    consistency: Consistency
    seed: int
    def __init__(self, type: _Optional[str] = ..., min_confidence: _Optional[float] = ..., order_by: _Optional[_Union[OrderBy, str]] = ..., limit: _Optional[int] = ..., page_token: _Optional[str] = ..., consistency: _Optional[_Union[Consistency, str]] = ..., seed: _Optional[int] = ...) -> None: ...

class QueryPatternsResponse(_message.Message):
    __slots__ = ("patterns", "next_page_token")
    PATTERNS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    patterns: _containers.RepeatedCompositeFieldContainer[Pattern]
    next_page_token: str
    def __init__(self, patterns: _Optional[_Iterable[_Union[Pattern, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class SearchSimilarRequest(_message.Message):
    __slots__ = ("embedding", "k", "type", "min_confidence", "exact", "order_by", "seed")
    EMBEDDING_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    MIN_CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    EXACT_FIELD_NUMBER: _ClassVar[int]
    ORDER_BY_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    embedding: _containers.RepeatedScalarFieldContainer[float]
    k: int
    type: str
    min_confidence: float
    exact: bool
    order_by: OrderBy
    seed: int
    def __init__(self, embedding: _Optional[_Iterable[float]] = ..., k: _Optional[int] = ..., type: _Optional[str] = ..., min_confidence: _Optional[float] = ..., exact: _Optional[bool] = ..., order_by: _Optional[_Union[OrderBy, str]] = ..., seed: _Optional[int] = ...) -> None: ...

class ScoredPattern(_message.Message):
    __slots__ = ("pattern", "similarity")
    PATTERN_FIELD_NUMBER: _ClassVar[int]
    SIMILARITY_FIELD_NUMBER: _ClassVar[int]
    pattern: Pattern
    similarity: float
    def __init__(self, pattern: _Optional[_Union[Pattern, _Mapping]] = ..., similarity: _Optional[float] = ...) -> None: ...

class SearchSimilarResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[ScoredPattern]
    def __init__(self, results: _Optional[_Iterable[_Union[ScoredPattern, _Mapping]]] = ...) -> None: ...

class PrunePatternsRequest(_message.Message):
    __slots__ = ("dry_run",)
    DRY_RUN_FIELD_NUMBER: _ClassVar[int]
    dry_run: bool
    def __init__(self, dry_run: _Optional[bool] = ...) -> None: ...

class PrunePatternsResponse(_message.Message):
    __slots__ = ("expired", "low_confidence", "idle", "ids", "sequence")
    EXPIRED_FIELD_NUMBER: _ClassVar[int]
    LOW_CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    IDLE_FIELD_NUMBER: _ClassVar[int]
    IDS_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    expired: int
    low_confidence: int
    idle: int
    ids: _containers.RepeatedScalarFieldContainer[str]
    sequence: int
    def __init__(self, expired: _Optional[int] = ..., low_confidence: _Optional[int] = ..., idle: _Optional[int] = ..., ids: _Optional[_Iterable[str]] = ..., sequence: _Optional[int] = ...) -> None: ...

class FlushRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class FlushResponse(_message.Message):
    __slots__ = ("durable_sequence", "patterns_written", "updates_applied")
    DURABLE_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    PATTERNS_WRITTEN_FIELD_NUMBER: _ClassVar[int]
    UPDATES_APPLIED_FIELD_NUMBER: _ClassVar[int]
    durable_sequence: int
    patterns_written: int
    updates_applied: int
    def __init__(self, durable_sequence: _Optional[int] = ..., patterns_written: _Optional[int] = ..., updates_applied: _Optional[int] = ...) -> None: ...

class GetStatsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class CacheTierStats(_message.Message):
    __slots__ = ("tier", "hits", "misses", "evictions", "entries", "bytes")
    TIER_FIELD_NUMBER: _ClassVar[int]
    HITS_FIELD_NUMBER: _ClassVar[int]
    MISSES_FIELD_NUMBER: _ClassVar[int]
    EVICTIONS_FIELD_NUMBER: _ClassVar[int]
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    tier: str
    hits: int
    misses: int
    evictions: int
    entries: int
    bytes: int
    def __init__(self, tier: _Optional[str] = ..., hits: _Optional[int] = ..., misses: _Optional[int] = ..., evictions: _Optional[int] = ..., entries: _Optional[int] = ..., bytes: _Optional[int] = ...) -> None: ...

class QueueStats(_message.Message):
    __slots__ = ("name", "depth", "capacity")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DEPTH_FIELD_NUMBER: _ClassVar[int]
    CAPACITY_FIELD_NUMBER: _ClassVar[int]
    name: str
    depth: int
    capacity: int
    def __init__(self, name: _Optional[str] = ..., depth: _Optional[int] = ..., capacity: _Optional[int] = ...) -> None: ...

class Stats(_message.Message):
    __slots__ = ("caches", "queues", "batches_flushed", "items_committed", "durable_sequence", "last_sequence", "patterns", "database_bytes", "wal_bytes", "uptime_seconds")
    CACHES_FIELD_NUMBER: _ClassVar[int]
    QUEUES_FIELD_NUMBER: _ClassVar[int]
    BATCHES_FLUSHED_FIELD_NUMBER: _ClassVar[int]
    ITEMS_COMMITTED_FIELD_NUMBER: _ClassVar[int]
    DURABLE_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    LAST_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    PATTERNS_FIELD_NUMBER: _ClassVar[int]
    DATABASE_BYTES_FIELD_NUMBER: _ClassVar[int]
    WAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    UPTIME_SECONDS_FIELD_NUMBER: _ClassVar[int]
    caches: _containers.RepeatedCompositeFieldContainer[CacheTierStats]
    queues: _containers.RepeatedCompositeFieldContainer[QueueStats]
    batches_flushed: int
    items_committed: int
    durable_sequence: int
    last_sequence: int
    patterns: int
    database_bytes: int
    wal_bytes: int
    uptime_seconds: float
    def __init__(self, caches: _Optional[_Iterable[_Union[CacheTierStats, _Mapping]]] = ..., queues: _Optional[_Iterable[_Union[QueueStats, _Mapping]]] = ..., batches_flushed: _Optional[int] = ..., items_committed: _Optional[int] = ..., durable_sequence: _Optional[int] = ..., last_sequence: _Optional[int] = ..., patterns: _Optional[int] = ..., database_bytes: _Optional[int] = ..., wal_bytes: _Optional[int] = ..., uptime_seconds: _Optional[float] = ...) -> None: ...

class BackupRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class BackupChunk(_message.Message):
    __slots__ = ("data", "total_bytes", "durable_sequence")
    DATA_FIELD_NUMBER: _ClassVar[int]
    TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    DURABLE_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    total_bytes: int
    durable_sequence: int
    def __init__(self, data: _Optional[bytes] = ..., total_bytes: _Optional[int] = ..., durable_sequence: _Optional[int] = ...) -> None: ...
