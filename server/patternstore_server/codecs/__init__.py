"""Codecs for what a pattern stores at rest: pure functions from values to bytes and back.

One module per field, each blob starting with a format byte so every row ever
written stays readable (formats in DESIGN.md):

- ``payload``: zstd for ``data``, optionally with a trained dictionary.
- ``embedding``: float32 / float16 / int16 / int8 vectors.
- ``trajectory``: lossless delta + zstd of float64 steps.
- ``dedup``: the content key that lets identical payloads share one blob.
"""

from . import dedup, embedding, payload, trajectory
from ._format import CodecError
from .dedup import content_key
from .embedding import EMBEDDING_STORAGES
from .payload import PayloadDictionary, PayloadEncoder, RatioTracker, train_dictionary

__all__ = [
    "EMBEDDING_STORAGES",
    "CodecError",
    "PayloadDictionary",
    "PayloadEncoder",
    "RatioTracker",
    "content_key",
    "dedup",
    "embedding",
    "payload",
    "train_dictionary",
    "trajectory",
]
