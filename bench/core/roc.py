"""The AUROC of in-distribution against OOD scores with DeLong's standard error, in numpy (no
torch): the ``ood_auroc_*`` metrics report it (``bench.metrics.ood``); ``bench compare`` tests the
difference of two models' AUROCs on the same points by DeLong's paired test (DeLong, DeLong and
Clarke-Pearson 1988) from the scores the metrics record; an AUROC pooled over several corrupted
images of each test point (the shift suite's) by the paired bootstrap of the points
(``point_bootstrap_difference``).
"""

from __future__ import annotations

import math

import numpy as np


def score_arrays(s_in, s_out) -> tuple[np.ndarray, np.ndarray]:
    a, b = (np.asarray(s.detach().cpu() if hasattr(s, "detach") else s, dtype=np.float64).ravel() for s in (s_in, s_out))
    if len(a) == 0 or len(b) == 0:
        raise ValueError("OOD measures need at least one in-distribution and one OOD score")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ValueError("OOD scores must be finite")
    return a, b


def auroc(s_in, s_out) -> tuple[float, float | None]:
    """(AUROC, DeLong standard error) with the in-distribution scores positive; ties count 1/2."""
    a, b = score_arrays(s_in, s_out)
    v10, v01 = placements(a, b)
    auc = float(v10.mean())
    if len(a) < 2 or len(b) < 2:
        return auc, None
    var = v10.var(ddof=1) / len(a) + v01.var(ddof=1) / len(b)
    return auc, math.sqrt(max(var, 0.0))


def placements(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """DeLong's placement values: each positive's share of negatives below it (ties 1/2), and each
    negative's share of positives above it; the AUROC is the mean of either."""
    b_sorted, a_sorted = np.sort(b), np.sort(a)
    v10 = (np.searchsorted(b_sorted, a, "left") + np.searchsorted(b_sorted, a, "right")) / (2.0 * len(b))
    v01 = (len(a) - (np.searchsorted(a_sorted, b, "left") + np.searchsorted(a_sorted, b, "right")) / 2.0) / len(a)
    return v10, v01


def paired_difference(in_a, out_a, in_b, out_b) -> tuple[float, float]:
    """(AUROC_B - AUROC_A, DeLong's paired standard error) of two models scored on the same
    positive and negative points: the variance of the per-point differences of the placement
    values, sum over the two classes of var(d) / count."""
    (a1, b1), (a2, b2) = score_arrays(in_a, out_a), score_arrays(in_b, out_b)
    if a1.shape != a2.shape or b1.shape != b2.shape:
        raise ValueError("the two models' scores are not of the same points")
    (v10a, v01a), (v10b, v01b) = placements(a1, b1), placements(a2, b2)
    d10, d01 = v10b - v10a, v01b - v01a
    diff = float(d10.mean())
    if len(a1) < 2 or len(b1) < 2:
        return diff, 0.0
    return diff, math.sqrt(max(d10.var(ddof=1) / len(a1) + d01.var(ddof=1) / len(b1), 0.0))


def _weighted(s_in: np.ndarray, rows: np.ndarray):
    """The AUROC of clean scores ``s_in`` (one per test point) against ``rows`` (the point's corrupted
    scores, one row per point) as a function of the points' weights w (how often a resample drew each
    point): sum over pairs of w_in w_out [in above out, ties 1/2] / (sum of in weights x of out weights).
    The scores are sorted once; each weighting costs a cumulative sum."""
    owner = np.repeat(np.arange(len(s_in)), rows.shape[1])
    order = np.argsort(rows.ravel(), kind="stable")
    b_sorted, owner_sorted = rows.ravel()[order], owner[order]
    lo, hi = np.searchsorted(b_sorted, s_in, "left"), np.searchsorted(b_sorted, s_in, "right")

    def auc(w: np.ndarray) -> float:
        c = np.concatenate(([0.0], np.cumsum(w[owner_sorted])))
        return float(np.dot(w, c[lo] + (c[hi] - c[lo]) / 2.0) / (w.sum() * w.sum() * rows.shape[1]))

    return auc


def point_bootstrap_difference(in_a, rows_a, in_b, rows_b, n_boot: int = 2000, seed: int = 0) -> tuple[float, float]:
    """(AUROC_B - AUROC_A, the standard deviation of that difference over ``n_boot`` resamples of the
    test points): ``in_*`` the points' clean scores (n,), ``rows_*`` their corrupted scores (n, images
    per point); a resampled point brings its clean score and all its corrupted ones, the same points
    for both models.  The resamples are ``bench.core.paired.bootstrap_difference``'s (the same seed
    draws the same points), the AUROC of each computed from the points' counts."""
    (a1, b1), (a2, b2) = score_arrays(in_a, rows_a), score_arrays(in_b, rows_b)
    rows_a, rows_b = b1.reshape(len(a1), -1), b2.reshape(len(a2), -1)
    if a1.shape != a2.shape or rows_a.shape != rows_b.shape:
        raise ValueError("the two models' scores are not of the same points")
    auc_a, auc_b = _weighted(a1, rows_a), _weighted(a2, rows_b)
    n = len(a1)
    ones = np.ones(n)
    observed = auc_b(ones) - auc_a(ones)
    rng = np.random.default_rng(seed)
    diffs = np.empty(n_boot)
    for i in range(n_boot):
        w = np.bincount(rng.integers(0, n, n), minlength=n).astype(np.float64)
        diffs[i] = auc_b(w) - auc_a(w)
    return observed, float(diffs.std(ddof=1))
