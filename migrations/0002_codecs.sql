-- Compression at rest (server/patternstore_server/codecs/DESIGN.md).
-- Payloads move to a content-addressed, reference-counted blob table (identical payloads
-- are stored once); embeddings and trajectories are rewritten in their codec formats.
-- The ps_* functions are registered on the connection by storage/migrate.py.
CREATE TABLE blobs (
    blob_id INTEGER PRIMARY KEY,
    key     BLOB NOT NULL UNIQUE,          -- codecs.content_key of the raw payload
    data    BLOB NOT NULL,                 -- codecs.payload format: raw, zstd or zstd+dict
    refs    INTEGER NOT NULL CHECK (refs > 0)
);

-- Trained zstd dictionaries; ids are never reused, so every blob stays decodable.
CREATE TABLE dictionaries (
    id         INTEGER PRIMARY KEY,
    data       BLOB NOT NULL,
    samples    INTEGER NOT NULL,
    saved      REAL NOT NULL,              -- fraction of bytes saved on its training sample
    created_ns INTEGER NOT NULL
);

ALTER TABLE patterns ADD COLUMN data_key BLOB NOT NULL DEFAULT X'';

INSERT INTO blobs (key, data, refs)
    SELECT ps_content_key(data) AS k, ps_payload_raw(data), count(*) FROM patterns GROUP BY k;

UPDATE patterns SET
    data_key = ps_content_key(data),
    embedding = ps_embedding_float32(embedding),
    trajectory = ps_trajectory(trajectory, trajectory_dims);

ALTER TABLE patterns DROP COLUMN data;
