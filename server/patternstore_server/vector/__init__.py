"""Similarity search and explore/exploit ranking over stored patterns, in memory.

- ``VectorIndex``: int8 codes of every embedding, filtered brute-force scoring, exact
  float32 rescoring of the best candidates through a caller-supplied ``fetch_exact``.
- ``thompson_rank``: order candidates by one draw from each Beta(alpha, beta) posterior.

Pure numpy, no I/O: the server owns the database, the writer thread and the wire.
Layout, invariants and measured figures in DESIGN.md.
"""

from .index import FetchExact, VectorIndex, limit_blas_threads
from .thompson import thompson_rank

__all__ = ["FetchExact", "VectorIndex", "limit_blas_threads", "thompson_rank"]
