"""'Quality retained' on the lift over chance (design §3), with a paired bootstrap interval.

``retained = (slim - random) / (full - random)`` on NDCG@10: the share of the full
model's lift over chance that the slim model keeps. It is a measurement only when the
full model's lift is significant (its interval excludes 0); the raw ratio slim / full
is reported beside it, never alone.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class Retained:
    """Retained share of lift and raw ratio, each with a 95% interval."""

    retained: float
    retained_low: float
    retained_high: float
    raw: float
    raw_low: float
    raw_high: float
    full_lift: float
    full_lift_low: float
    full_lift_high: float

    @property
    def significant(self) -> bool:
        """Whether the full model's lift over random excludes 0 (else no measurement)."""
        return self.full_lift_low > 0

    def to_json(self) -> dict:
        return {**asdict(self), "full_lift_significant": self.significant}


def retained_on_lift(slim: np.ndarray, full: np.ndarray, *, random: float, resamples: int = 1000, seed: int = 0) -> Retained:
    """``slim [U]``, ``full [U]``: per-user NDCG@10 of two models on the same users."""
    slim, full = np.asarray(slim, dtype=np.float64), np.asarray(full, dtype=np.float64)
    if slim.shape != full.shape or slim.size == 0:
        raise ValueError("retained_on_lift needs per-user values of the same users")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, slim.size, size=(resamples, slim.size))  # [R, U]
    s, f = slim[idx].mean(1), full[idx].mean(1)  # [R]
    with np.errstate(divide="ignore", invalid="ignore"):
        ret, raw = (s - random) / (f - random), s / f
    q = lambda x: (float(np.nanpercentile(x, 2.5)), float(np.nanpercentile(x, 97.5)))  # noqa: E731
    lift = f - random
    return Retained(
        float((slim.mean() - random) / (full.mean() - random)), *q(ret),
        float(slim.mean() / full.mean()), *q(raw),
        float(full.mean() - random), *q(lift),
    )
