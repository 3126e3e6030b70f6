"""Calibration (paper App. G.2, Fig. 16): expected calibration error on clean and FGSM inputs.

The top-class confidence c = max_k softmax(f(x))_k of each evaluation point falls into one of B
equal-width bins of [0, 1]; with n_b points, accuracy acc_b and mean confidence conf_b in bin b,

    ECE = sum_b (n_b / N) |acc_b - conf_b|          (Guo et al. 2017, the paper's ref. [12])

Bins are (lo, hi], as in Guo et al.'s reference code, with a confidence of exactly 0 in the first
bin; a confidence of exactly 1 (a saturated float32 softmax) belongs to the last bin.
torchmetrics' ``MulticlassCalibrationError`` uses [lo, hi) bins and gives confidences of exactly 1
a bin of their own, so the two agree except for confidences lying exactly on an edge.

``ece`` uses the first ``n_eval`` test points as they are; ``ece_fgsm`` the same points after
one FGSM step of size eps on the cross-entropy (Eq. 2), the adversarial data of Fig. 16.  Values
are fractions (0.05 = 5 %); ``std`` is null: ECE has no closed-form standard error and is not
bootstrapped.  Each group writes its reliability diagram (``figures/reliability_clean.png``,
``figures/reliability_fgsm.png``) and records the per-bin counts, accuracies and confidences.
"""

from __future__ import annotations

import numpy as np
import torch

from bench.attacks import check_in_ball, fgsm
from bench.metrics import Context, Result, register

STD_NOTE = "null: ECE has no closed-form standard error (not bootstrapped)"


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
    if p.ndim == 2:
        conf = p.max(axis=1)
    elif p.ndim == 1:
        conf = p
    else:
        raise ValueError(f"expected probabilities (N, K) or confidences (N,), got shape {p.shape}")
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
    stats = {
        "edges": [float(e) for e in edges],
        "count": [int(c) for c in count],
        "accuracy": [None if np.isnan(a) else float(a) for a in acc_b],
        "confidence": [None if np.isnan(c) else float(c) for c in conf_b],
        "n": int(n),
        "avg_accuracy": float(ok.mean()),
        "avg_confidence": float(conf.mean()),
        "ece": ece,
    }
    return ece, stats


def _numpy(a) -> np.ndarray:
    if isinstance(a, torch.Tensor):
        return a.detach().cpu().numpy()
    return np.asarray(a)


@torch.no_grad()
def _probs(model, x: torch.Tensor) -> torch.Tensor:
    return torch.softmax(model.logits(x).double(), dim=1)


def _collect(ctx: Context, adversarial: bool, tag: str) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Top-class confidence and correctness of the first n_eval test points, clean or after FGSM."""
    s = ctx.settings
    split = ctx.data.test.subset(s["n_eval"])
    eps = float(s["eps"]) if adversarial else 0.0
    confs, oks = [torch.zeros(0, dtype=torch.float64)], [torch.zeros(0, dtype=torch.bool)]
    max_dist = 0.0
    for x, y in ctx.batches(split.x, split.y, desc=tag):
        if adversarial:
            adv = fgsm(ctx.model, x, y, eps, loss="ce")
            check_in_ball(x, adv, eps)  # checked, not assumed
            max_dist = max(max_dist, (adv - x).abs().amax().item())
            x = adv
        p = _probs(ctx.model, x)
        conf, pred = p.max(dim=1)
        confs.append(conf.cpu())
        oks.append((pred == y).cpu())
    max_dist = float(ctx.gather(torch.tensor([max_dist], dtype=torch.float64)).max())
    info = {"max_linf": max_dist} if adversarial else {}
    return ctx.gather(torch.cat(confs)), ctx.gather(torch.cat(oks)), info


def _ece_result(ctx: Context, adversarial: bool) -> Result:
    s = ctx.settings
    tag = "ece_fgsm" if adversarial else "ece"
    if adversarial and s.get("norm", "Linf") != "Linf":
        return Result.missing(f"FGSM is an L-inf attack; norm {s['norm']!r} was asked for")
    from bench import plots  # matplotlib only when a diagram is drawn

    conf, ok, info = _collect(ctx, adversarial, tag)
    bins = int(s.get("ece_bins") or 20)
    ece, stats = expected_calibration_error(conf, ok, bins)
    name = "reliability_fgsm.png" if adversarial else "reliability_clean.png"
    fig = ctx.figure_path(name)
    title = (f"FGSM data (L-inf eps = {float(s['eps']):.4g})" if adversarial else "Clean data") + \
        f", {ctx.data.name}, n = {len(ok)}"
    plots.reliability_diagram(stats, fig, title)
    details = {"bins": stats, "figure": _relative(fig, ctx.out), "n_bins": bins,
               "binning": "equal-width (lo, hi] bins on the top-class softmax confidence", "std": STD_NOTE}
    if adversarial:
        details["threat_model"] = {"attack": "FGSM", "norm": "Linf", "eps": float(s["eps"]), "loss": "ce",
                                   "max_linf": info["max_linf"]}
    return Result(ece, None, len(ok), details=details)


def _relative(path, out) -> str:
    try:
        return path.relative_to(out).as_posix()
    except ValueError:
        return str(path)


@register("ece", "calibration", metrics=("ece",), settings=("n_eval", "ece_bins"), sharded=True)
def ece_group(ctx: Context) -> dict[str, Result]:
    """ECE of the clean evaluation points (20 bins by default) and their reliability diagram."""
    return {"ece": _ece_result(ctx, adversarial=False)}


@register("ece_fgsm", "calibration", metrics=("ece_fgsm",), settings=("n_eval", "ece_bins", "norm", "eps"),
          sharded=True)
def ece_fgsm_group(ctx: Context) -> dict[str, Result]:
    """ECE of the evaluation points after FGSM (eps, cross-entropy) and their reliability diagram."""
    return {"ece_fgsm": _ece_result(ctx, adversarial=True)}
