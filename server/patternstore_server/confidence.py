"""The confidence model: how one reported outcome moves a pattern's trust.

The formulas are part of the contract (other tools check them to 1e-12), so they are
written out step by step exactly as the contract states them; do not "simplify" the
arithmetic, a reordering changes the last bits.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["Evidence", "ModelParams", "apply_outcome", "lower_bound", "prior", "step"]

# One-sided 95% normal quantile, as the contract fixes it.
_Z95 = 1.6448536269514722


@dataclass(frozen=True, slots=True)
class ModelParams:
    prior_alpha: float = 1.0
    prior_beta: float = 1.0
    decay_factor: float = 0.95
    decay_period_s: float = 2_592_000.0
    model: str = "beta"  # "beta" | "ema"
    learning_rate: float = 0.1


@dataclass(frozen=True, slots=True)
class Evidence:
    """The learned part of a pattern. last_outcome_ns = 0 means no outcome yet."""

    alpha: float
    beta: float
    confidence: float
    usage_count: int = 0
    success_count: int = 0
    failure_count: int = 0
    last_outcome_ns: int = 0


def prior(p: ModelParams) -> Evidence:
    return Evidence(p.prior_alpha, p.prior_beta, p.prior_alpha / (p.prior_alpha + p.prior_beta))


def step(
    alpha: float,
    beta: float,
    confidence: float,
    last_outcome_ns: int,
    score: float,
    weight: float,
    t_ns: int,
    p: ModelParams,
) -> tuple[float, float, float]:
    """The new (alpha, beta, confidence) after one outcome: the contract's arithmetic.

    Scalars in, scalars out, so the server's hot path (``model.learn``) and
    ``apply_outcome`` run the very same operations.
    """
    dt = 0.0 if last_outcome_ns == 0 else max(0.0, (t_ns - last_outcome_ns) / 1e9)
    k = p.decay_factor ** (dt / p.decay_period_s)
    alpha = p.prior_alpha + (alpha - p.prior_alpha) * k
    beta = p.prior_beta + (beta - p.prior_beta) * k
    alpha += weight * score
    beta += weight * (1 - score)
    if p.model == "ema":
        # The original system's moving average: decay toward 0.5, then step toward s.
        c = 0.5 + (confidence - 0.5) * k
        confidence = c + min(1.0, p.learning_rate * weight) * (score - c)
    else:
        confidence = alpha / (alpha + beta)
    return alpha, beta, confidence


def apply_outcome(e: Evidence, score: float, weight: float, t_ns: int, p: ModelParams) -> Evidence:
    """Apply one outcome (score 1.0 success, 0.0 failure, 0.5 partial) observed at t_ns."""
    alpha, beta, confidence = step(
        e.alpha, e.beta, e.confidence, e.last_outcome_ns, score, weight, t_ns, p
    )
    return Evidence(
        alpha=alpha,
        beta=beta,
        confidence=confidence,
        usage_count=e.usage_count + 1,
        success_count=e.success_count + (score == 1.0),
        failure_count=e.failure_count + (score == 0.0),
        last_outcome_ns=max(e.last_outcome_ns, t_ns),
    )


def lower_bound(alpha: float, beta: float, confidence: float) -> float:
    """The LOWER_BOUND ordering key: a one-sided 95% bound under the Beta posterior."""
    n = alpha + beta
    return max(0.0, confidence - _Z95 * math.sqrt(alpha * beta / (n**2 * (n + 1))))
