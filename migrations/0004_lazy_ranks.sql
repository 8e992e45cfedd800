-- QueryPatterns orders by copies of the learned columns ("ranks"), which the writer
-- refreshes at most rank_interval_ms after an outcome (at once for a store, a STRONG
-- query or a Flush). An outcome's UPDATE then touches no index: with the eight ordering
-- indexes on the learned columns themselves, one outcome dirtied ~17 pages (71 KB of
-- WAL a commit) and cost 226 us against 34 us without them at 1,000,000 patterns.
ALTER TABLE patterns ADD COLUMN rank_confidence REAL NOT NULL DEFAULT 0;
ALTER TABLE patterns ADD COLUMN rank_usage INTEGER NOT NULL DEFAULT 0;
ALTER TABLE patterns ADD COLUMN rank_updated INTEGER NOT NULL DEFAULT 0;
ALTER TABLE patterns ADD COLUMN rank_lower_bound REAL NOT NULL DEFAULT 0;

DROP INDEX patterns_type_confidence;
DROP INDEX patterns_confidence;
DROP INDEX patterns_type_usage;
DROP INDEX patterns_usage;
DROP INDEX patterns_type_recent;
DROP INDEX patterns_recent;
DROP INDEX patterns_type_lower_bound;
DROP INDEX patterns_lower_bound;

UPDATE patterns SET
    rank_confidence = confidence,
    rank_usage = usage_count,
    rank_updated = updated_ns,
    rank_lower_bound = lower_bound;

-- One index per ordering, with and without a type filter; ties by id.
CREATE INDEX patterns_type_rank_confidence ON patterns (type, rank_confidence DESC, id);
CREATE INDEX patterns_rank_confidence ON patterns (rank_confidence DESC, id);
CREATE INDEX patterns_type_rank_usage ON patterns (type, rank_usage DESC, id);
CREATE INDEX patterns_rank_usage ON patterns (rank_usage DESC, id);
CREATE INDEX patterns_type_rank_updated ON patterns (type, rank_updated DESC, id);
CREATE INDEX patterns_rank_updated ON patterns (rank_updated DESC, id);
CREATE INDEX patterns_type_rank_lower_bound ON patterns (type, rank_lower_bound DESC, id);
CREATE INDEX patterns_rank_lower_bound ON patterns (rank_lower_bound DESC, id);
