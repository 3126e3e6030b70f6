"""The OOD maths: the scores of a batch (px = logsumexp f(x), py = the largest softmax probability,
pxgrad = -||d log p(x) / dx||), the PGD that raises a score, and the measures of in-distribution
against OOD scores (AUROC, average precision, FPR at 95 % TPR) as scikit-learn defines them.
``bench.metrics.ood`` (which documents them) and ``bench.functional`` call them."""

from __future__ import annotations

import numpy as np
import torch

from bench.core.roc import auroc, score_arrays
from bench.core.settings import OodScore
from bench.core.stats import proportion_se
from bench.engines.attacks import pgd

SCORES = tuple(c.value for c in OodScore)
TPR_LEVEL = 0.95


# --------------------------------------------------------------------------------------------
# the measures


def _curve(scores: np.ndarray, positive: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cumulative true and false positives at each distinct threshold, from the highest score down
    (scikit-learn's ``_binary_clf_curve``: tied scores enter together)."""
    order = np.argsort(-scores, kind="mergesort")
    s, pos = scores[order], positive[order].astype(np.float64)
    last = np.r_[np.flatnonzero(np.diff(s) != 0), len(s) - 1]  # last index of each tie group
    tps = np.cumsum(pos)[last]
    fps = (last + 1) - tps
    return tps, fps


def average_precision(scores, positive) -> float:
    """scikit-learn's average precision: sum_k (R_k - R_{k-1}) P_k over the distinct thresholds."""
    scores, positive = np.asarray(scores, dtype=np.float64), np.asarray(positive, dtype=bool)
    tps, fps = _curve(scores, positive)
    precision = tps / (tps + fps)
    recall = tps / tps[-1]
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def fpr_at_tpr(s_in, s_out, level: float = TPR_LEVEL) -> float:
    """The FPR at the first threshold (highest down) whose TPR reaches ``level``."""
    a, b = score_arrays(s_in, s_out)
    tps, fps = _curve(np.r_[a, b], np.r_[np.ones(len(a), bool), np.zeros(len(b), bool)])
    k = int(np.argmax(tps / len(a) >= level))  # the last point has TPR 1, so one exists
    return float(fps[k] / len(b))


def ood_measures(s_in, s_out) -> dict[str, tuple[float, float | None]]:
    """{measure: (value, std)} for in-distribution scores ``s_in`` (positive) and OOD ``s_out``."""
    a, b = score_arrays(s_in, s_out)
    scores = np.r_[a, b]
    is_in = np.r_[np.ones(len(a), bool), np.zeros(len(b), bool)]
    fpr = fpr_at_tpr(a, b)
    return {"auroc": auroc(a, b),
            "aupr_in": (average_precision(scores, is_in), None),
            "aupr_out": (average_precision(-scores, ~is_in), None),
            "fpr95": (fpr, proportion_se(fpr, len(b)))}


# --------------------------------------------------------------------------------------------
# the scores


def scores(model, x: torch.Tensor, which=SCORES) -> dict[str, torch.Tensor]:
    """{score: (N,) float64} of a batch; ``pxgrad`` takes one input gradient of logsumexp f."""
    out = {}
    if "pxgrad" in which:
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            f = model.logits(xg)
            lse = torch.logsumexp(f, dim=1)
            (g,) = torch.autograd.grad(lse.sum(), xg)
        out["pxgrad"] = -g.flatten(1).double().norm(dim=1)
        f = f.detach()
    else:
        with torch.no_grad():
            f = model.logits(x)
    f = f.double()
    if "px" in which:
        out["px"] = torch.logsumexp(f, dim=1)
    if "py" in which:
        out["py"] = torch.softmax(f, dim=1).amax(dim=1)
    return {k: out[k] for k in which}


def score_objective(model, x: torch.Tensor, score: str) -> torch.Tensor:
    """The summed score of a batch as a differentiable function of x (what the OOD attack raises)."""
    f = model.logits(x)
    if score == "px":
        return torch.logsumexp(f, dim=1).sum()
    if score == "py":
        return torch.softmax(f, dim=1).amax(dim=1).sum()
    if score == "pxgrad":
        (g,) = torch.autograd.grad(torch.logsumexp(f, dim=1).sum(), x, create_graph=True)
        return -g.flatten(1).norm(dim=1).sum()
    raise ValueError(f"unknown OOD score {score!r}; expected one of {SCORES}")


def raise_score(model, x: torch.Tensor, score: str, eps: float, steps: int, step_size: float,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """L-inf PGD (``bench.engines.attacks.pgd``) that ascends ``score`` from a uniform start in the eps ball."""
    return pgd(model, x, None, eps, steps, step_size, random_start=True, generator=generator,
               objective=lambda adv: score_objective(model, adv, score))
