-- Optional per-pattern expiry (0 = never): reads hide a pattern from this moment on and
-- the pruner deletes it later.
ALTER TABLE patterns ADD COLUMN expires_ns INTEGER NOT NULL DEFAULT 0;
CREATE INDEX patterns_expires ON patterns (expires_ns) WHERE expires_ns > 0;
