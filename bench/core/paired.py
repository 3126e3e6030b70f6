"""Paired tests of two models on the same points, without torch (``bench compare``, the gates of
``bench check --another-model`` and the bold marks of ``bench table`` read them).

Two models evaluated on the same test points with the same seeds are compared point by point:
for a share of points (accuracy, PGD-20, AutoAttack) only the discordant points carry information,
``b`` (counted for A, not for B) and ``c`` (the reverse), and McNemar's exact test asks whether
``b`` and ``c`` are two draws of one Binomial(b + c, 1/2) (Edwards 1948; McNemar 1947).  Holm's
step-down procedure (Holm 1979) corrects the p-values of several metrics compared at once.
"""

from __future__ import annotations

import math

import numpy as np


def _binom_cdf_half(k: int, n: int) -> float:
    """P(X <= k) for X ~ Binomial(n, 1/2), exactly (integer sums, one division)."""
    if k < 0:
        return 0.0
    if k >= n:
        return 1.0
    return sum(math.comb(n, i) for i in range(k + 1)) / 2**n


def mcnemar_exact(b: int, c: int, alternative: str = "two-sided") -> float:
    """McNemar's exact p-value for ``b`` points where only A counts and ``c`` where only B does.

    ``alternative``: ``two-sided`` (A and B differ), ``greater`` (A counts more often than B,
    b > c) or ``less`` (b < c).  The two-sided p is twice the smaller tail, at most 1, as
    scipy's ``binomtest(b, b + c, 0.5)`` computes it for this symmetric case.  No discordant point:
    p = 1 (nothing tells the models apart)."""
    for v in (b, c):
        if not isinstance(v, int) or isinstance(v, bool) or v < 0:
            raise ValueError(f"discordant counts must be non-negative integers, got {v!r}")
    n = b + c
    if n == 0:
        return 1.0
    if alternative == "greater":  # P(X >= b) = P(X <= n - b) by symmetry, not 1 - P(X < b) (which cancels to 0)
        return _binom_cdf_half(n - b, n)
    if alternative == "less":
        return _binom_cdf_half(b, n)
    if alternative != "two-sided":
        raise ValueError(f"alternative must be two-sided, greater or less, got {alternative!r}")
    return min(1.0, 2.0 * _binom_cdf_half(min(b, c), n))


def discordant(a, b) -> tuple[int, int]:
    """(points True in ``a`` and False in ``b``, points False in ``a`` and True in ``b``) of two
    boolean sequences of the same points (numpy arrays from ``bench.core.outcomes``)."""
    a, b = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    if a.shape != b.shape:
        raise ValueError(f"per-point records of different lengths ({a.size} and {b.size} points)")
    return int(np.count_nonzero(a & ~b)), int(np.count_nonzero(b & ~a))


def holm(pvalues: dict) -> dict:
    """Holm's step-down adjusted p-values of ``{name: p}`` (None values are kept as None and not
    counted): the k-th smallest of m p-values becomes max over j <= k of min(1, (m - j + 1) p_j)."""
    known = sorted(((p, name) for name, p in pvalues.items() if p is not None), key=lambda t: t[0])
    m = len(known)
    out = {name: None for name, p in pvalues.items() if p is None}
    running = 0.0
    for i, (p, name) in enumerate(known):
        running = max(running, min(1.0, (m - i) * p))
        out[name] = running
    return out


# --------------------------------------------------------------------------------------------
# means over points, statistics recomputed on resampled points, and the gates' one-sided tests


def normal_p(z: float, alternative: str = "two-sided") -> float:
    """The p-value of a standard normal statistic ``z``: two-sided, ``less`` (P(Z <= z)) or
    ``greater`` (P(Z >= z))."""
    if alternative == "less":
        return 0.5 * math.erfc(-z / math.sqrt(2.0))
    if alternative == "greater":
        return 0.5 * math.erfc(z / math.sqrt(2.0))
    return math.erfc(abs(z) / math.sqrt(2.0))


def mean_difference(a, b) -> tuple[float, float]:
    """(mean of b - a, its paired standard error sd(b - a) / sqrt(n), sd with n - 1) of two
    per-point records of the same points; n = 1 gives an error of 0 (nothing to estimate it from)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1 or a.size == 0:
        raise ValueError(f"per-point records of different lengths ({a.size} and {b.size} points)")
    d = b - a
    se = float(d.std(ddof=1) / math.sqrt(d.size)) if d.size > 1 else 0.0
    return float(d.mean()), se


def proportion_difference(b: int, c: int, n: int) -> tuple[float, float]:
    """(difference of two shares of the same n points, B minus A, and its paired standard error)
    from the discordant counts: b points counted for A only, c for B only.  The per-point
    differences are -1 (b times), +1 (c times) and 0, so this is ``mean_difference`` of them."""
    if n <= 0 or b + c > n:
        raise ValueError(f"discordant counts {b} + {c} exceed the {n} points")
    mean = (c - b) / n
    se = math.sqrt(max((b + c) - n * mean * mean, 0.0) / (n - 1) / n) if n > 1 else 0.0
    return mean, se


def bootstrap_difference(stat, a: tuple, b: tuple, n_boot: int = 2000, seed: int = 0) -> tuple[float, float]:
    """A paired bootstrap over points: (stat(*b) - stat(*a), the standard deviation of that
    difference over ``n_boot`` resamples of the points, the same resample for both models).
    ``a`` and ``b`` are tuples of per-point arrays of one length (e.g. confidence and correctness
    for ECE); ``stat`` maps such a tuple to a number.  Seeded: the same call gives the same error."""
    a, b = tuple(np.asarray(x) for x in a), tuple(np.asarray(x) for x in b)
    n = len(a[0])
    if n == 0 or any(len(x) != n for x in a + b):
        raise ValueError("per-point records of different lengths")
    observed = float(stat(*b)) - float(stat(*a))
    rng = np.random.default_rng(seed)
    diffs = np.empty(n_boot)
    for i in range(n_boot):
        idx = rng.integers(0, n, n)
        diffs[i] = float(stat(*(x[idx] for x in b))) - float(stat(*(x[idx] for x in a)))
    return observed, float(diffs.std(ddof=1))


def z_test(diff: float, se: float, alternative: str = "two-sided", margin: float = 0.0) -> float:
    """The normal-approximation p-value of a difference ``diff`` with standard error ``se`` against
    ``-margin``: two-sided, or ``less`` (H1: diff < -margin, the gate's 'worse by more than the
    margin').  A zero error decides by the sign alone (p 0 or 1)."""
    shift = diff + margin
    if se <= 0 or not math.isfinite(se):
        if alternative == "two-sided":
            return 1.0 if shift == 0 else 0.0
        return 0.0 if (shift < 0 if alternative == "less" else shift > 0) else 1.0
    return normal_p(shift / se, alternative)


def worse_share_p(b: int, c: int, n: int, margin: float = 0.0) -> float:
    """The gate for a share of points where higher is better: p of 'B is worse than A by more than
    ``margin``' from the discordant counts (b: A only, c: B only).  At margin 0 McNemar's exact
    one-sided test (b > c); above it the paired z-test of the per-point differences against -margin."""
    if margin == 0:
        return mcnemar_exact(b, c, "greater")
    diff, se = proportion_difference(b, c, n)
    return z_test(diff, se, "less", margin)
