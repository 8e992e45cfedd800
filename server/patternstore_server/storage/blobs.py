"""Compression at rest, the storage side: payload blobs, dictionaries, field encodings.

The codecs package holds the pure formats; this module decides when and where they
apply. Everything here that writes runs on the writer thread inside its transaction:

- a payload is stored once per content key in ``blobs`` with a reference count; a store
  takes a reference to its new payload and drops the one to its old payload, a delete
  drops its reference, and a blob goes with its last reference;
- a zstd dictionary is trained from a sample of stored payloads once
  ``dict_min_samples`` exist, and again when the saved fraction drifts; each blob names
  the dictionary it used, so old rows stay readable after a retrain;
- embeddings are stored in ``embedding_storage`` (float32 exact, or lossy float16,
  int16, int8), trajectories losslessly; each blob carries its own format byte.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import apsw
import numpy as np

from ..codecs import CodecError, content_key, embedding, payload, trajectory
from ..codecs.payload import PayloadDictionary, PayloadEncoder, RatioTracker
from . import queries as q
from .rows import execute_in, execute_rows

__all__ = ["FIELDS", "PayloadStore", "decode_embedding", "decode_trajectory", "sql_functions"]

log = logging.getLogger(__name__)

FIELDS = ("data", "embedding", "trajectory")

_REWRITE_BLOB = "UPDATE blobs SET data = ? WHERE key = ?"
_DECREF = "UPDATE blobs SET refs = refs - 1 WHERE key = ?"
_DROP_LAST_REFERENCE = "DELETE FROM blobs WHERE key = ? AND refs = 1"
_OLD_KEY = "SELECT data_key FROM patterns WHERE id = ?"
# The batched forms (storage/rows.py fills each {}).
_OLD_KEYS_IN = "SELECT id, data_key FROM patterns WHERE id IN ({})"
_REFS_IN = "SELECT key, refs FROM blobs WHERE key IN ({})"
_DATA_IN = "SELECT key, data FROM blobs WHERE key IN ({})"
_ADD_REFS_FROM = (
    "UPDATE blobs SET refs = refs + v.column1 FROM (VALUES {}) AS v WHERE blobs.key = v.column2"
)
_DELETE_BLOBS_IN = "DELETE FROM blobs WHERE key IN ({})"
_INSERT_BLOBS = "INSERT INTO blobs (key, data, refs) VALUES {}"
_LOAD_DICTIONARIES = "SELECT id, data, saved FROM dictionaries ORDER BY id"
_SAVE_DICTIONARY = "INSERT INTO dictionaries (data, samples, saved, created_ns) VALUES (?, ?, ?, ?)"
_COUNT_BLOBS = "SELECT count(*) FROM blobs"
_SAMPLE_BLOBS = "SELECT data FROM blobs ORDER BY random() LIMIT ?"

# Where put_row finds what it encodes, in storage.queries.PATTERN_FIELDS order.
_ID_AT = q.PATTERN_FIELDS.index("id")
_DATA_AT = q.PATTERN_FIELDS.index("data_key")
_EMBEDDING_AT = q.PATTERN_FIELDS.index("embedding")
_TRAJECTORY_AT = q.PATTERN_FIELDS.index("trajectory")
_DIMS_AT = q.PATTERN_FIELDS.index("trajectory_dims")

# Samples a dictionary is trained on: more barely helps (the codecs' DESIGN.md) and the
# training runs on the writer thread, between two commits.
_TRAIN_SAMPLES = 2000


def sql_functions() -> dict[str, tuple[Callable[..., Any], int]]:
    """Functions migrations may call (0002 converts existing rows with them)."""

    def raw_payload(data: bytes) -> bytes:
        return bytes([payload.FORMAT_RAW]) + bytes(data)

    def embedding_float32(raw: bytes) -> bytes:
        if not raw:
            return b""
        return embedding.encode(np.frombuffer(raw, dtype="<f4"), "float32")

    def trajectory_blob(raw: bytes, dims: int) -> bytes:
        if not raw or not dims:
            return b""
        return trajectory.encode(np.frombuffer(raw, dtype="<f8"), dims)

    return {
        "ps_content_key": (lambda data: content_key(bytes(data)), 1),
        "ps_payload_raw": (raw_payload, 1),
        "ps_embedding_float32": (embedding_float32, 1),
        "ps_trajectory": (trajectory_blob, 2),
    }


def decode_embedding(blob: bytes) -> list[float]:
    return embedding.decode(blob).tolist() if blob else []


def decode_trajectory(blob: bytes) -> list[float]:
    return trajectory.decode(blob)[0].tolist() if blob else []


class PayloadStore:
    """The writer thread's encoder state. Dictionaries are shared with readers through
    ``dictionaries`` (id -> bytes): entries are only ever added, so readers need no lock."""

    def __init__(
        self,
        conn: apsw.Connection,
        dictionaries: dict[int, bytes],
        *,
        level: int = 3,
        dict_min_samples: int = 1000,
        embedding_storage: str = "float32",
    ) -> None:
        if embedding_storage not in embedding.EMBEDDING_STORAGES:
            raise ValueError(f"embedding_storage must be one of {embedding.EMBEDDING_STORAGES}")
        self._level = level
        self._dict_min_samples = dict_min_samples
        self._embedding_storage = embedding_storage
        self.dictionaries = dictionaries
        # Read-only outside: the payloads' saved fraction, fed at COMMIT (``publish``).
        self.tracker = RatioTracker()
        self._encoder = PayloadEncoder(level)
        # Counters read by the metrics: raw bytes in, stored bytes out, per field. Only
        # committed work is added (``publish``): a counter must never go down, and a
        # rolled-back try would otherwise count, then uncount, its bytes.
        self.bytes_in = dict.fromkeys(FIELDS, 0)
        self.bytes_out = dict.fromkeys(FIELDS, 0)
        self._txn_in = dict.fromkeys(FIELDS, 0)
        self._txn_out = dict.fromkeys(FIELDS, 0)
        # (raw, stored) of each new blob in the open transaction, for the tracker.
        self._txn_sizes: list[tuple[int, int]] = []
        self.trainings = 0
        # Blobs rewritten in place (healed or repaired): every pattern sharing one reads
        # again, so the engine drops its cached query replies when this moves.
        self.rewrites = 0
        newest = None
        for dict_id, data, saved in conn.execute(_LOAD_DICTIONARIES):
            dictionaries[dict_id] = data
            newest = (dict_id, data, saved)
        if newest is not None:
            self._encoder = PayloadEncoder(level, PayloadDictionary(newest[0], newest[1]))
            self.tracker.reset(newest[2])
        # Distinct payloads stored, kept by hand: counting the table after every commit
        # would scan it.
        row = conn.execute(_COUNT_BLOBS).fetchone()
        self._blob_count: int = row[0] if row else 0
        self._retry_at_count = 0  # see maybe_train

    # -- inside the writer's transaction -----------------------------------------------

    def put_row(
        self, conn: apsw.Connection, row: tuple[Any, ...], heal: bool = False
    ) -> tuple[Any, ...]:
        """``put_rows`` of one row."""
        return self.put_rows(conn, [(row, heal)])[0]

    def put_rows(
        self, conn: apsw.Connection, puts: Sequence[tuple[tuple[Any, ...], bool]]
    ) -> list[tuple[Any, ...]]:
        """The rows to upsert for a run of stores, in order, the last one per id: each
        raw payload (in the data_key slot, as model.pattern_row leaves it) swapped for
        its blob key, embedding and trajectory encoded; the blobs' references moved.

        Each ``(row, heal)``: ``heal`` says the pattern's stored payload did not decode.
        Stored again with the same content, its blob keeps its key (and its references)
        but gets these bytes, so every pattern sharing it reads again.

        A handful of statements for the whole run, not several per store (see
        storage/rows.py): the references are netted in Python first. They come out as
        one store after another would leave them: each id ends on its last payload,
        each blob counts the patterns on it, and a blob no pattern is left on goes.
        """
        ids = list(dict.fromkeys(row[_ID_AT] for row, _ in puts))
        current: dict[str, bytes | None] = dict.fromkeys(ids)
        current.update(execute_in(conn, _OLD_KEYS_IN, ids))
        deltas: dict[bytes, int] = {}
        payloads: dict[bytes, bytes] = {}
        healed: dict[bytes, bytes] = {}
        last: dict[str, tuple[Any, ...]] = {}
        for row, heal in puts:
            pid = row[_ID_AT]
            data = row[_DATA_AT]
            key = content_key(data)
            old_key = current[pid]
            if old_key != key:
                deltas[key] = deltas.get(key, 0) + 1
                payloads[key] = data
                if old_key is not None:
                    deltas[old_key] = deltas.get(old_key, 0) - 1
                current[pid] = key
            elif heal:
                healed[key] = data
            last[pid] = self._encoded(row, key)
        self._move_references(conn, {k: d for k, d in deltas.items() if d}, payloads)
        for key, data in healed.items():
            conn.execute(_REWRITE_BLOB, (self._encoder.encode(data), key))
            self.rewrites += 1
        return list(last.values())

    def _encoded(self, row: tuple[Any, ...], key: bytes) -> tuple[Any, ...]:
        out = list(row)
        out[_DATA_AT] = key
        raw_embedding = row[_EMBEDDING_AT]
        if raw_embedding:
            out[_EMBEDDING_AT] = embedding.encode(
                np.frombuffer(raw_embedding, dtype="<f4"), self._embedding_storage
            )
            self._count("embedding", len(raw_embedding), len(out[_EMBEDDING_AT]))
        raw_trajectory = row[_TRAJECTORY_AT]
        if raw_trajectory:
            out[_TRAJECTORY_AT] = trajectory.encode(
                np.frombuffer(raw_trajectory, dtype="<f8"), row[_DIMS_AT]
            )
            self._count("trajectory", len(raw_trajectory), len(out[_TRAJECTORY_AT]))
        return tuple(out)

    def _move_references(
        self, conn: apsw.Connection, deltas: dict[bytes, int], payloads: dict[bytes, bytes]
    ) -> None:
        """Add ``deltas`` to the blobs' reference counts: a blob not there yet is stored
        (only a gain can name one), a blob whose count reaches 0 goes."""
        if not deltas:
            return
        refs = dict(execute_in(conn, _REFS_IN, list(deltas)))
        gained = [key for key, d in deltas.items() if d > 0 and key in refs]
        if gained:
            self._repair(conn, gained, payloads)
        # Dropped before the count could reach 0: the table's CHECK (refs > 0) holds
        # after every statement.
        gone = [key for key, d in deltas.items() if key in refs and refs[key] + d <= 0]
        if gone:
            execute_in(conn, _DELETE_BLOBS_IN, gone)
            self._blob_count -= len(gone)
        moved = [(d, key) for key, d in deltas.items() if key in refs and refs[key] + d > 0]
        if moved:
            execute_rows(conn, _ADD_REFS_FROM, moved)
        new = []
        for key, d in deltas.items():
            if key in refs:
                continue
            data = payloads[key]
            blob = self._encoder.encode(data)
            new.append((key, blob, d))
            self._txn_sizes.append((len(data), len(blob)))
            self._count("data", len(data), len(blob))
        if new:
            execute_rows(conn, _INSERT_BLOBS, new)
            self._blob_count += len(new)

    def delete_row(self, conn: apsw.Connection, pattern_id: str) -> None:
        """Drop the payload reference of a pattern about to be deleted."""
        old = conn.execute(_OLD_KEY, (pattern_id,)).fetchone()
        if old is not None:
            self.release(conn, old[0])

    def release(self, conn: apsw.Connection, key: bytes) -> None:
        # The last reference deletes the blob; any other just counts down.
        conn.execute(_DROP_LAST_REFERENCE, (key,))
        if conn.changes():
            self._blob_count -= 1
        else:
            conn.execute(_DECREF, (key,))

    def _repair(
        self, conn: apsw.Connection, keys: list[bytes], payloads: dict[bytes, bytes]
    ) -> None:
        """Rewrite any of these stored blobs that no longer decode, from the payloads
        being stored with them: a store that takes a reference to a rotten blob would be
        acknowledged and then read DATA_LOSS. A decode per deduplicated store, on the
        writer thread; a store that keeps its own payload reads nothing."""
        dictionaries = dict(self.dictionaries)
        for key, data in execute_in(conn, _DATA_IN, keys):
            try:
                payload.decode(data, dictionaries)
            except CodecError:
                log.warning("rewriting a stored payload that no longer decodes")
                conn.execute(_REWRITE_BLOB, (self._encoder.encode(payloads[key]), key))
                self.rewrites += 1

    def _count(self, field: str, raw: int, stored: int) -> None:
        self._txn_in[field] += raw
        self._txn_out[field] += stored

    # -- around a transaction ----------------------------------------------------------

    def mark(self) -> int:
        """Start counting a transaction; the blob count before it, for ``restore``."""
        self._forget_txn()
        return self._blob_count

    def restore(self, mark: int) -> None:
        """Undo what a rolled-back transaction counted: the writer retries a batch
        through a transient fault, and each try would count its blobs again (the blob
        count decides when the first dictionary is trained)."""
        self._blob_count = mark
        self._forget_txn()

    def publish(self) -> None:
        """After COMMIT: add the transaction's bytes to the counters the metrics read,
        and its new blobs to the ratio tracker (a rolled-back try must not count: its
        retry would fill the window twice with the same blobs)."""
        for raw, stored in self._txn_sizes:
            self.tracker.record(raw, stored)
        for field in FIELDS:
            self.bytes_in[field] += self._txn_in[field]
            self.bytes_out[field] += self._txn_out[field]
        self._forget_txn()

    def _forget_txn(self) -> None:
        self._txn_sizes.clear()
        for field in FIELDS:
            self._txn_in[field] = self._txn_out[field] = 0

    # -- between transactions ----------------------------------------------------------

    def maybe_train(self, conn: apsw.Connection, force: bool = False) -> bool:
        """Train (or retrain) the payload dictionary when it is due; True when it did."""
        due_first = self._encoder.dictionary is None and self._blob_count >= self._dict_min_samples
        if not (force or due_first or self.tracker.drifted()):
            return False
        if not force and self._blob_count < self._retry_at_count:
            return False  # the last attempt failed or had too few samples: wait for more
        # Until this attempt succeeds: a failed one is retried only after dict_min_samples
        # more blobs, not after every commit (each samples the whole blobs table).
        self._retry_at_count = self._blob_count + self._dict_min_samples
        started = time.perf_counter()
        dictionaries = dict(self.dictionaries)
        samples = [
            payload.decode(row[0], dictionaries)
            for row in conn.execute(_SAMPLE_BLOBS, (_TRAIN_SAMPLES,))
        ]
        samples = [s for s in samples if s]
        if len(samples) < 8:
            return False
        # The baseline the drift check compares with is measured on payloads the
        # dictionary was not trained on: measured on its own samples it flatters the
        # dictionary, and ordinary payloads later look like drift (and each retraining
        # samples the whole blobs table).
        held_out = samples[::8]
        training = [s for i, s in enumerate(samples) if i % 8]
        trained = payload.train_dictionary(training)
        with conn:
            conn.execute(_SAVE_DICTIONARY, (trained, len(training), 0.0, time.time_ns()))
            dict_id = conn.last_insert_rowid()
            encoder = PayloadEncoder(self._level, PayloadDictionary(dict_id, trained))
            saved = payload.saved_fraction(encoder, held_out)
            conn.execute("UPDATE dictionaries SET saved = ? WHERE id = ?", (saved, dict_id))
        self.dictionaries[dict_id] = trained
        self._retry_at_count = 0
        self._encoder = encoder
        self.tracker.reset(saved)
        self.trainings += 1
        log.info(
            "trained payload dictionary %d on %d samples in %.2f s: %.1f%% saved",
            dict_id,
            len(samples),
            time.perf_counter() - started,
            100 * saved,
        )
        return True
