"""Small statistics shared by the metric groups and the checks, without torch (``mean_se`` takes a
tensor and calls only its methods)."""

from __future__ import annotations

import math


def proportion_se(p: float, n: int) -> float:
    """The standard error of a proportion ``p`` of ``n`` points, sqrt(p (1 - p) / n): the sampling
    error of the evaluation set (``bench.engines.robust_flags.proportion`` gives it from the flags)."""
    return math.sqrt(p * (1 - p) / n)


def mean_se(v) -> tuple[float, float | None, float | None]:
    """(mean, standard error sd / sqrt(n), sample sd) of per-point values (a tensor); the last two
    are None for a single point."""
    v = v.double()
    n = len(v)
    sd = v.std().item() if n > 1 else None
    return v.mean().item(), (sd / math.sqrt(n) if sd is not None else None), sd
