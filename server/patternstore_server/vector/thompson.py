"""Thompson sampling: rank candidates by one draw from each Beta posterior.

A pattern with alpha successes-plus-prior and beta failures-plus-prior is drawn from
Beta(alpha, beta); sorting by the draws puts each candidate first with exactly the
probability that it is the best, so little-tried patterns still get tried sometimes
and proven ones most of the time. Pass ``np.random.default_rng(seed)`` for a
reproducible order.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

__all__ = ["thompson_rank"]


def thompson_rank(
    alpha: npt.ArrayLike, beta: npt.ArrayLike, rng: np.random.Generator
) -> npt.NDArray[np.intp]:
    """Indices of the candidates, highest Beta(alpha[i], beta[i]) draw first.

    Equal draws keep index order (stable sort), so the result depends only on the
    generator's state. Raises ValueError unless alpha and beta are 1-d, equally long,
    finite and positive.
    """
    a = np.asarray(alpha, dtype=np.float64)
    b = np.asarray(beta, dtype=np.float64)
    if a.ndim != 1 or a.shape != b.shape:
        raise ValueError(f"alpha and beta must be 1-d of one length, got {a.shape} and {b.shape}")
    if not (np.isfinite(a).all() and np.isfinite(b).all() and (a > 0).all() and (b > 0).all()):
        raise ValueError("alpha and beta must be finite and positive")
    if not len(a):
        return np.zeros(0, dtype=np.intp)
    draws = rng.beta(a, b)
    order: npt.NDArray[np.intp] = np.argsort(-draws, kind="stable")
    return order
