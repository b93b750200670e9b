"""Means with their uncertainty: percentile bootstrap intervals, paired differences.

Every comparison of policies here is paired (the same prompts and seeds for every policy), so
the difference of two policies is measured video by video and the interval is that of the mean
difference; "no measurable difference" when it holds 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Estimate:
    """A mean and its bootstrap interval (``level``, e.g. 0.95)."""

    mean: float
    low: float
    high: float
    count: int
    level: float = 0.95

    def holds_zero(self) -> bool:
        return self.low <= 0 <= self.high

    def __str__(self) -> str:
        return f"{self.mean:.3f} [{self.low:.3f}, {self.high:.3f}]"


def bootstrap_mean(
    values: Sequence[float], level: float = 0.95, resamples: int = 2000, seed: int = 0
) -> Estimate:
    """The mean of ``values`` and its percentile bootstrap interval (seeded: reproducible)."""
    data = np.asarray(values, dtype=np.float64)
    if data.size == 0:
        raise ValueError("no values to estimate a mean from")
    rng = np.random.default_rng(seed)
    means = data[rng.integers(0, data.size, size=(resamples, data.size))].mean(axis=1)
    tail = (1 - level) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    return Estimate(float(data.mean()), float(low), float(high), int(data.size), level)


def paired_difference(
    a: Sequence[float], b: Sequence[float], level: float = 0.95, seed: int = 0
) -> Estimate:
    """Mean of ``a - b`` over pairs (the same prompt and seed), with its interval."""
    if len(a) != len(b):
        raise ValueError(f"paired values need equal lengths, got {len(a)} and {len(b)}")
    return bootstrap_mean(np.asarray(a) - np.asarray(b), level=level, seed=seed)
