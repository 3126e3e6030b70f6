"""Small statistics shared by the metric groups and the checks, without torch."""

from __future__ import annotations

import math


def proportion_se(p: float, n: int) -> float:
    """The standard error of a proportion ``p`` of ``n`` points, sqrt(p (1 - p) / n): the sampling
    error of the evaluation set (``bench.metrics.robustness.proportion`` gives it from the flags)."""
    return math.sqrt(p * (1 - p) / n)
