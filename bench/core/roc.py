"""The AUROC of in-distribution against OOD scores with DeLong's standard error, in numpy (no
torch): the ``ood_auroc_*`` metrics report it (``bench.metrics.ood``); ``bench compare`` tests the
difference of two models' AUROCs on the same points by DeLong's paired test (DeLong, DeLong and
Clarke-Pearson 1988) from the scores the metrics record.
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
