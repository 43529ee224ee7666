"""Ranking metrics of design §3, their bootstrap intervals, and the random baseline.

Each user has one target among ``C = 1 + N`` candidates. Ties are broken by a fixed
rule: a metric is its expected value over a uniformly random order of the tied
candidates (the tie-aware metrics of McSherry & Najork, 2008). A target tied with ``t``
negatives and beaten by ``g`` takes each rank ``g+1 .. g+t+1`` with probability
``1/(t+1)``. This never rewards a constant scorer: scoring all candidates alike gives
exactly the random baseline, and item popularity (many equal counts) is measured fairly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

CUTOFFS = (1, 5, 10)
METRICS = ("ndcg@10", "mrr", "hr@1", "hr@5", "hr@10")


def _gain(name: str) -> Callable[[np.ndarray], np.ndarray]:
    """The per-rank value of metric ``name``: ranks (1-based, any shape) -> same shape."""
    if name == "mrr":
        return lambda r: 1.0 / r
    kind, k = name.split("@")
    k = int(k)
    if kind == "ndcg":
        return lambda r: np.where(r <= k, 1.0 / np.log2(r + 1.0), 0.0)
    return lambda r: (r <= k).astype(np.float64)


def target_ranks(scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``scores [U, C]`` with the target in column 0 -> ``(greater [U], tied [U])``.

    ``greater``: negatives scored strictly above the target; ``tied``: negatives scored
    exactly the same.
    """
    scores = np.asarray(scores, dtype=np.float64)
    target = scores[:, :1]
    return (scores[:, 1:] > target).sum(1), (scores[:, 1:] == target).sum(1)


def tie_aware(name: str, greater: np.ndarray, tied: np.ndarray) -> np.ndarray:
    """Metric ``name`` per user [U], averaged over the random orders of tied candidates."""
    gain = _gain(name)
    width = int(tied.max(initial=0)) + 1
    offsets = np.arange(width)[None, :]  # [1, W]
    ranks = greater[:, None] + 1.0 + offsets  # [U, W]
    valid = offsets <= tied[:, None]
    return (gain(ranks) * valid).sum(1) / (tied + 1.0)


def per_user_metrics(scores: np.ndarray) -> dict[str, np.ndarray]:
    """``scores [U, C]`` (target first) -> ``{metric: values [U]}`` plus ``rank`` (mean rank)."""
    greater, tied = target_ranks(scores)
    out = {name: tie_aware(name, greater, tied) for name in METRICS}
    out["rank"] = greater + 1.0 + tied / 2.0
    return out


def random_baseline(candidates: int) -> dict[str, float]:
    """Exact expectation of each metric when the target's rank is uniform on ``1..candidates``.

    For 1 + 19 candidates NDCG@10 is ``(1/20) * sum_{r<=10} 1/log2(r+1) = 0.2272``.
    """
    ranks = np.arange(1, candidates + 1, dtype=np.float64)
    return {name: float(_gain(name)(ranks).mean()) for name in METRICS}


@dataclass(frozen=True)
class Interval:
    """A mean with a bootstrap confidence interval ``[low, high]``."""

    mean: float
    low: float
    high: float

    def to_json(self) -> dict[str, float]:
        return {"mean": self.mean, "low": self.low, "high": self.high}


def _bootstrap(values: np.ndarray, *, resamples: int, seed: int, level: float) -> Interval:
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        return Interval(float("nan"), float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, values.size, size=(resamples, values.size))
    means = values[idx].mean(1)
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(means, [alpha, 1.0 - alpha])
    return Interval(float(values.mean()), float(low), float(high))


def bootstrap_interval(values: np.ndarray, *, resamples: int = 1000, seed: int = 0, level: float = 0.95) -> Interval:
    """Mean of ``values [U]`` with a percentile bootstrap interval (users resampled, fixed seed)."""
    return _bootstrap(values, resamples=resamples, seed=seed, level=level)


def paired_bootstrap_diff(a: np.ndarray, b: np.ndarray, *, resamples: int = 1000, seed: int = 0, level: float = 0.95) -> Interval:
    """Mean of ``a - b`` (per-user values of two models on the same users, [U] each) with
    a paired bootstrap interval: the difference is significant when it excludes 0."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired values need the same users: shapes {a.shape} and {b.shape}")
    return _bootstrap(a - b, resamples=resamples, seed=seed, level=level)


def summarise(values: dict[str, np.ndarray], *, resamples: int = 1000, seed: int = 0) -> dict[str, Interval]:
    """``{metric: Interval}`` for each metric of :data:`METRICS` in ``values``."""
    return {name: bootstrap_interval(values[name], resamples=resamples, seed=seed) for name in METRICS}
