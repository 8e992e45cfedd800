"""The fixed zstd dictionary that entropy-codes int8 embedding codes (kind 0x04).

Min-max quantised codes of an embedding are bell-shaped around the middle code
(about 7.5 bits of entropy per code for random unit vectors, not 8), but a zstd
frame of 384 bytes cannot afford to carry its own Huffman table. A dictionary can:
its entropy tables are reused by every frame made with it. The dictionary is
trained once on seeded synthetic codes and shipped as ``data/int8_codes.zdict``;
rows name it only by their kind byte, so its bytes must never change (a test pins
their digest). A new table would need a new kind byte.

Regenerate (only to inspect; never overwrite the shipped file)::

    python -m patternstore_server.codecs._int8_tables OUTPUT
"""

from __future__ import annotations

import sys
from functools import cache
from importlib import resources

import numpy as np
import zstandard

__all__ = ["TABLE_SIZE", "int8_dictionary", "train"]

TABLE_SIZE = 2048


@cache
def int8_dictionary() -> zstandard.ZstdCompressionDict:
    """The shipped dictionary, loaded once per process."""
    data = resources.files(__package__).joinpath("data/int8_codes.zdict").read_bytes()
    return zstandard.ZstdCompressionDict(data)


def train(seed: int = 1) -> bytes:
    """Train a table on codes of random unit vectors of the common embedding widths."""
    from .embedding import int8_codes  # a cycle at import time otherwise

    rng = np.random.default_rng(seed)
    samples: list[bytes | bytearray | memoryview] = []
    for dims in (128, 256, 384, 512, 768, 1024, 1536):
        vectors = rng.standard_normal((1500, dims)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        samples += [int8_codes(vector) for vector in vectors]
    return zstandard.train_dictionary(TABLE_SIZE, samples).as_bytes()


if __name__ == "__main__":
    with open(sys.argv[1], "wb") as out:
        out.write(train())
