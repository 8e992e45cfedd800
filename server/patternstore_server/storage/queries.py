"""Every SQL statement the server runs, as a named constant."""

from __future__ import annotations

__all__ = [
    "COLUMNS",
    "DELETE_PATTERN",
    "INSERT_OUTCOME_REQUESTS",
    "LEARNED_FIELDS",
    "LOAD_OUTCOME_REQUESTS",
    "META_GET",
    "META_SET",
    "ORDER_COLUMNS",
    "PATTERN_FIELDS",
    "PRUNE_OUTCOME_REQUESTS",
    "RANKS",
    "RERANK",
    "RERANK_STALE",
    "SELECT_EMBEDDINGS_IN",
    "SELECT_MEMORY",
    "SELECT_PATTERN",
    "SELECT_PATTERNS_IN",
    "SELECT_WARM",
    "UPDATE_LEARNED",
    "UPDATE_LEARNED_FROM",
    "UPSERT_PATTERN",
    "UPSERT_PATTERNS",
    "query_sql",
]

# Row order of every SELECT of a pattern; model.row_to_pattern reads them by position.
# The caller's free text as bytes: apsw decodes TEXT strictly, so one rotten byte would
# fail the whole statement (a GetPatterns of 100, the warm-up that start-up runs); the
# model decodes each row's and makes a bad one DATA_LOSS for that pattern only. The blob's
# key (the BLAKE2b of the raw payload) comes last: the model checks the decoded payload
# against it, since a flipped bit in a zstd frame often decodes without an error.
COLUMNS = (
    "id, type, CAST(name AS BLOB), CAST(description AS BLOB), blobs.data, embedding, "
    "trajectory_dims, trajectory, CAST(metadata AS BLOB), "
    "confidence, alpha, beta, usage_count, success_count, failure_count, "
    "created_ns, updated_ns, last_outcome_ns, version, expires_ns, blobs.key"
)

# Every read of whole patterns: the payload lives in blobs (storage/blobs.py).
# CROSS JOIN fixes the loop order: walk patterns (by the chosen index), look blobs up.
FROM_PATTERNS = "FROM patterns CROSS JOIN blobs ON blobs.key = patterns.data_key"

SELECT_PATTERN = f"SELECT {COLUMNS} {FROM_PATTERNS} WHERE id = ?"

# Placeholders are filled with one "?" per id: SQLite has no array binding.
SELECT_PATTERNS_IN = f"SELECT {COLUMNS} {FROM_PATTERNS} WHERE id IN ({{}})"

# Positional parameter order of a learned row (model.learned_row builds it).
LEARNED_FIELDS = (
    "confidence",
    "lower_bound",
    "alpha",
    "beta",
    "usage_count",
    "success_count",
    "failure_count",
    "updated_ns",
    "last_outcome_ns",
    "version",
    "sequence",
)
# ... and of a whole row (model.pattern_row): the learned fields, then the rest.
PATTERN_FIELDS = (
    *LEARNED_FIELDS,
    "id",
    "type",
    "name",
    "description",
    "data_key",
    "embedding",
    "trajectory_dims",
    "trajectory",
    "metadata",
    "created_ns",
    "expires_ns",
)

# The rank columns QueryPatterns orders by, and the learned column each copies. An
# outcome changes only the learned columns (no index); the writer copies them to the
# ranks later in one statement per pattern (RERANK), a store at once (UPSERT_PATTERN).
RANKS = {
    "rank_confidence": "confidence",
    "rank_usage": "usage_count",
    "rank_updated": "updated_ns",
    "rank_lower_bound": "lower_bound",
}

# Numbered parameters: a store's ranks reuse its learned values' parameters.
_PARAMS = {c: f"?{i}" for i, c in enumerate(PATTERN_FIELDS, start=1)}
_STORED = {**{c: _PARAMS[c] for c in PATTERN_FIELDS}, **{r: _PARAMS[c] for r, c in RANKS.items()}}
UPSERT_PATTERN = (
    f"INSERT INTO patterns ({', '.join(_STORED)}) "
    f"VALUES ({', '.join(_STORED.values())}) "
    f"ON CONFLICT (id) DO UPDATE SET "
    + ", ".join(f"{c} = excluded.{c}" for c in _STORED if c != "id")
)

# Many stores in one statement (storage/rows.py): the rows as a VALUES list, in
# PATTERN_FIELDS order, the ranks taken from their learned columns like UPSERT_PATTERN.
# ``WHERE true``: without it SQLite would read ON CONFLICT as part of the SELECT's join.
# At most one row per id in a statement: the writer keeps the last store of each.
_COLUMN = {c: f"column{i}" for i, c in enumerate(PATTERN_FIELDS, start=1)}
_SELECTED = [*(_COLUMN[c] for c in PATTERN_FIELDS), *(_COLUMN[c] for c in RANKS.values())]
UPSERT_PATTERNS = (
    f"INSERT INTO patterns ({', '.join(_STORED)}) "
    f"SELECT {', '.join(_SELECTED)} "
    "FROM (VALUES {}) WHERE true "
    "ON CONFLICT (id) DO UPDATE SET "
    + ", ".join(f"{c} = excluded.{c}" for c in _STORED if c != "id")
)

_COPY_RANKS = ", ".join(f"{r} = {c}" for r, c in RANKS.items())
# Parameter: the id.
# The ids as one JSON array: one statement, one step (see storage/rows.py).
RERANK = f"UPDATE patterns SET {_COPY_RANKS} WHERE id IN (SELECT value FROM json_each(?))"
# At start: ranks an earlier run committed outcomes for but had not copied yet.
RERANK_STALE = f"UPDATE patterns SET {_COPY_RANKS} WHERE " + " OR ".join(
    f"{r} != {c}" for r, c in RANKS.items()
)

# An outcome rewrites only the learned columns: the payload blobs stay where they are.
# Parameters: LEARNED_FIELDS, then the id.
UPDATE_LEARNED = f"UPDATE patterns SET {', '.join(f'{c} = ?' for c in LEARNED_FIELDS)} WHERE id = ?"
# Many learned rows in one statement: {} is one "(?, ..., ?)" per row (the learned
# fields, then the id), whose columns a VALUES list names column1, column2, ...
UPDATE_LEARNED_FROM = (
    "UPDATE patterns SET "
    + ", ".join(f"{c} = v.column{i}" for i, c in enumerate(LEARNED_FIELDS, 1))
    + f" FROM (VALUES {{}}) AS v WHERE patterns.id = v.column{len(LEARNED_FIELDS) + 1}"
)

# Start-up: what the in-memory posteriors and the vector index are built from.
SELECT_MEMORY = (
    "SELECT id, type, alpha, beta, confidence, usage_count, expires_ns, "
    "max(updated_ns, last_outcome_ns), embedding FROM patterns"
)
SELECT_EMBEDDINGS_IN = "SELECT id, embedding FROM patterns WHERE id IN ({})"

# Start-up warming: the most used patterns, then the most trusted (index
# patterns_rank_usage; the ranks are current at start, see RERANK_STALE).
SELECT_WARM = (
    f"SELECT {COLUMNS} {FROM_PATTERNS} ORDER BY rank_usage DESC, rank_confidence DESC LIMIT ?"
)

DELETE_PATTERN = "DELETE FROM patterns WHERE id = ?"

# {} is one "(?, ?, ?, ?)" per request; a later row with the same id replaces an earlier.
INSERT_OUTCOME_REQUESTS = """
INSERT OR REPLACE INTO outcome_requests (request_id, pattern_id, sequence, confidence)
VALUES {}
"""

LOAD_OUTCOME_REQUESTS = """
SELECT request_id, pattern_id, sequence, confidence FROM outcome_requests
ORDER BY sequence DESC LIMIT ?
"""

# Keep the newest `dedup_window` request ids (by sequence).
PRUNE_OUTCOME_REQUESTS = """
DELETE FROM outcome_requests WHERE sequence <= (
    SELECT sequence FROM outcome_requests ORDER BY sequence DESC LIMIT 1 OFFSET ?)
"""

META_GET = "SELECT value FROM meta WHERE key = ?"
META_SET = "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)"

# QueryPatterns orderings: the rank column, always descending, ties by id ascending;
# "id" alone walks the primary key ascending.
ORDER_COLUMNS = {
    "confidence": "rank_confidence",
    "usage": "rank_usage",
    "recent": "rank_updated",
    "lower_bound": "rank_lower_bound",
    "id": "id",
}


def _build_query(column: str, typed: bool, after: bool) -> str:
    # The unary + keeps SQLite from picking an index for a filter column: it must walk
    # the index of the ordering column (or sort every match of a type in a temp B-tree:
    # 3-7 s at 1M patterns, found by profiling the bench's query mix).
    # Expired patterns are invisible from their expiry on, deleted later by the pruner.
    where = ["+confidence >= :min_confidence", "(+expires_ns = 0 OR +expires_ns > :now)"]
    if column == "rank_confidence":
        # The rank bounds the index walk; the current confidence decides. A pattern whose
        # confidence just rose past the minimum appears once its rank follows.
        where.append("rank_confidence >= :min_confidence")
    if column == "id":
        # An export's walk of the primary key: the type filter must not pick its index.
        if typed:
            where.append("+type = :type")
        if after:
            where.append("id > :after_id")
        # 0 in the ordering value's place: the token's position is the id alone.
        return (
            f"SELECT {COLUMNS}, 0 {FROM_PATTERNS} WHERE {' AND '.join(where)} "
            "ORDER BY id ASC LIMIT :limit"
        )
    if typed:
        where.append("type = :type")
    if after:
        # Keyset pagination: strictly after the last row of the previous page.
        where.append(f"({column} < :after_value OR ({column} = :after_value AND id > :after_id))")
    return (
        f"SELECT {COLUMNS}, {column} {FROM_PATTERNS} WHERE {' AND '.join(where)} "
        f"ORDER BY {column} DESC, id ASC LIMIT :limit"
    )


# Built once at import: one statement per (ordering, type filter, page after a token).
_QUERIES = {
    (order, typed, after): _build_query(column, typed, after)
    for order, column in ORDER_COLUMNS.items()
    for typed in (False, True)
    for after in (False, True)
}


def query_sql(order: str, typed: bool, after: bool) -> str:
    return _QUERIES[(order, typed, after)]
