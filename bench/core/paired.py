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
    if alternative == "greater":
        return 1.0 - _binom_cdf_half(b - 1, n)
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
