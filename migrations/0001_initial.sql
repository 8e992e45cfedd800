-- Patterns, their learned confidence, and the write sequence bookkeeping.
CREATE TABLE patterns (
    id              TEXT PRIMARY KEY NOT NULL,
    type            TEXT NOT NULL,
    name            TEXT NOT NULL,
    description     TEXT NOT NULL,
    data            BLOB NOT NULL,
    embedding       BLOB NOT NULL,        -- float32 little-endian, empty when none
    trajectory_dims INTEGER NOT NULL,
    trajectory      BLOB NOT NULL,        -- float64 little-endian, steps x dims row-major
    metadata        TEXT NOT NULL,        -- JSON object of strings
    confidence      REAL NOT NULL,
    lower_bound     REAL NOT NULL,
    alpha           REAL NOT NULL,
    beta            REAL NOT NULL,
    usage_count     INTEGER NOT NULL,
    success_count   INTEGER NOT NULL,
    failure_count   INTEGER NOT NULL,
    created_ns      INTEGER NOT NULL,
    updated_ns      INTEGER NOT NULL,
    last_outcome_ns INTEGER NOT NULL,     -- 0 = no outcome yet
    version         INTEGER NOT NULL,
    sequence        INTEGER NOT NULL      -- the write that produced this row
);

-- One index per QueryPatterns ordering, with and without a type filter; ties by id.
CREATE INDEX patterns_type_confidence ON patterns (type, confidence DESC, id);
CREATE INDEX patterns_confidence ON patterns (confidence DESC, id);
CREATE INDEX patterns_type_usage ON patterns (type, usage_count DESC, id);
CREATE INDEX patterns_usage ON patterns (usage_count DESC, id);
CREATE INDEX patterns_type_recent ON patterns (type, updated_ns DESC, id);
CREATE INDEX patterns_recent ON patterns (updated_ns DESC, id);
CREATE INDEX patterns_type_lower_bound ON patterns (type, lower_bound DESC, id);
CREATE INDEX patterns_lower_bound ON patterns (lower_bound DESC, id);

-- Outcome request_ids, so a retried update is answered instead of applied twice.
CREATE TABLE outcome_requests (
    request_id  TEXT PRIMARY KEY NOT NULL,
    pattern_id  TEXT NOT NULL,
    sequence    INTEGER NOT NULL,
    confidence  REAL NOT NULL
);
CREATE INDEX outcome_requests_sequence ON outcome_requests (sequence);

-- Small named integers: durable_sequence, sequence_reserved.
CREATE TABLE meta (
    key   TEXT PRIMARY KEY NOT NULL,
    value INTEGER NOT NULL
);
