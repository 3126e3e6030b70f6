"""Binned calibration errors of top-class confidences, in numpy (no torch): ECE over equal-width
bins, MCE, ECE over equal-mass bins.  The calibration groups (``bench.metrics.calibration``, which
documents the definitions) report them; ``bench compare`` recomputes them on bootstrap resamples of
the per-point confidences the groups record.
"""

from __future__ import annotations

import numpy as np

# the range of a fitted temperature (bench.engines.calibration_fit.fit_temperature), a metric's bounds too
TEMPERATURE_BOUNDS = (1e-2, 1e2)


def expected_calibration_error(probs_or_conf, correct, bins: int = 20) -> tuple[float, dict]:
    """ECE with ``bins`` equal-width (lo, hi] bins on the top-class confidence.

    ``probs_or_conf``: class probabilities (N, K), whose row maximum is the confidence, or the
    confidences themselves (N,).  ``correct``: (N,) booleans (or 0/1), whether the top-class
    prediction is right.  Returns ``(ece, stats)``; ``stats`` is a JSON-ready dict: ``edges``
    (bins + 1), per bin ``count``, ``accuracy`` and ``confidence`` (None for an empty bin), and
    ``n``, ``avg_accuracy``, ``avg_confidence``, ``ece``.
    """
    p = _numpy(probs_or_conf).astype(np.float64)
    ok = _numpy(correct)
    if p.ndim not in (1, 2):
        raise ValueError(f"expected probabilities (N, K) or confidences (N,), got shape {p.shape}")
    conf = p.max(axis=1) if p.ndim == 2 else p
    if ok.ndim != 1 or len(ok) != len(conf):
        raise ValueError(f"correct must have shape ({len(conf)},), got {ok.shape}")
    if ok.dtype != np.bool_:
        if not np.isin(ok, (0, 1)).all():
            raise ValueError("correct must hold booleans or 0/1 (whether each prediction is right)")
        ok = ok.astype(bool)
    if not isinstance(bins, int | np.integer) or bins < 1:
        raise ValueError(f"bins must be a positive integer, got {bins!r}")
    n = len(conf)
    if n == 0:
        raise ValueError("expected calibration error of an empty set")
    if not np.isfinite(p).all() or p.min() < 0 or p.max() > 1 + 1e-6:
        raise ValueError(f"probabilities must lie in [0, 1], found [{p.min():.4g}, {p.max():.4g}]"
                         " (softmax the logits first)")

    edges = np.linspace(0.0, 1.0, bins + 1)
    # searchsorted 'left': edges[i] < c <= edges[i + 1] -> bin i; c == 0 -> bin 0; c >= 1 -> last bin
    idx = np.clip(np.searchsorted(edges, conf, side="left") - 1, 0, bins - 1)
    count = np.bincount(idx, minlength=bins)
    acc_sum = np.bincount(idx, weights=ok.astype(np.float64), minlength=bins)
    conf_sum = np.bincount(idx, weights=conf, minlength=bins)
    # sum_b (n_b / N) |acc_b - conf_b| = sum_b |sum_{i in b} (correct_i - conf_i)| / N
    ece = float(np.abs(acc_sum - conf_sum).sum() / n)
    nonempty = count > 0
    acc_b = np.where(nonempty, acc_sum / np.maximum(count, 1), np.nan)
    conf_b = np.where(nonempty, conf_sum / np.maximum(count, 1), np.nan)
    stats = {"edges": [float(e) for e in edges], "count": [int(c) for c in count],
             "accuracy": [None if np.isnan(a) else float(a) for a in acc_b],
             "confidence": [None if np.isnan(c) else float(c) for c in conf_b],
             "n": int(n), "avg_accuracy": float(ok.mean()), "avg_confidence": float(conf.mean()), "ece": ece}
    return ece, stats


def max_calibration_error(probs_or_conf, correct, bins: int = 20) -> float:
    """max over the non-empty equal-width (lo, hi] bins of |acc_b - conf_b|."""
    _, stats = expected_calibration_error(probs_or_conf, correct, bins)
    gaps = [abs(a - c) for a, c in zip(stats["accuracy"], stats["confidence"], strict=True) if a is not None]
    return float(max(gaps))


def adaptive_calibration_error(probs_or_conf, correct, bins: int = 20) -> tuple[float, dict]:
    """ECE over equal-mass bins (see above); returns (value, per-bin counts and edges)."""
    p = _numpy(probs_or_conf).astype(np.float64)
    conf = p.max(axis=1) if p.ndim == 2 else p
    ok = _numpy(correct).astype(np.float64)
    if len(conf) == 0 or len(ok) != len(conf):
        raise ValueError("adaptive calibration error needs as many (non-zero) correctness flags as confidences")
    order = np.argsort(conf, kind="stable")
    groups = [g for g in np.array_split(order, min(int(bins), len(conf))) if len(g)]
    ace = sum(abs(ok[g].sum() - conf[g].sum()) for g in groups) / len(conf)
    return float(ace), {"count": [len(g) for g in groups],
                        "upper_confidence": [float(conf[g].max()) for g in groups]}


def _numpy(a) -> np.ndarray:
    if hasattr(a, "detach"):  # a torch tensor
        return a.detach().cpu().numpy()
    return np.asarray(a)
