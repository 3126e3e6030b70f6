"""The calibration maths on tensors: per-point NLL and Brier, the temperature fit (bounded Brent
on log T), and the logits of a group's evaluation points, clean or after FGSM, made once per run for
the calibration groups (``bench.metrics.calibration``; ``ctx`` is a group's ``bench.metrics.Context``).
The binned errors (ECE, MCE, adaptive ECE) are ``bench.core.binned_calibration``, in numpy."""

from __future__ import annotations

import numpy as np
import torch

from bench.core.binned_calibration import TEMPERATURE_BOUNDS
from bench.core.settings import DefenseKind
from bench.engines.attacks import check_in_ball, fgsm


def nll_per_point(logits, y) -> torch.Tensor:
    """-log softmax(logits)_y per point, float64."""
    z = torch.as_tensor(logits).double()
    return -torch.log_softmax(z, dim=1).gather(1, torch.as_tensor(y).long().view(-1, 1)).squeeze(1)


def brier_per_point(probs, y) -> torch.Tensor:
    """sum_k (p_k - [k = y])^2 per point, float64."""
    p = torch.as_tensor(probs).double()
    onehot = torch.nn.functional.one_hot(torch.as_tensor(y).long(), p.shape[1]).double()
    return ((p - onehot) ** 2).sum(1)


def fit_temperature(logits, y, bounds=TEMPERATURE_BOUNDS) -> float:
    """argmin_T mean NLL(softmax(logits / T), y) over T in ``bounds`` (bounded Brent on log T; the
    NLL is convex in 1/T, so it has one minimum)."""
    from scipy.optimize import minimize_scalar

    z = torch.as_tensor(logits).double()
    y = torch.as_tensor(y).long()

    def loss(log_t: float) -> float:
        return float(nll_per_point(z / np.exp(log_t), y).mean())

    res = minimize_scalar(loss, bounds=(np.log(bounds[0]), np.log(bounds[1])), method="bounded",
                          options={"xatol": 1e-9})
    return float(np.exp(res.x))


def logits_of(ctx, x_all: torch.Tensor, y_all: torch.Tensor, adversarial: bool, tag: str):
    """(logits float64, labels, largest perturbation in the run's norm) of the points, clean or after
    FGSM (the fast gradient method x + eps g / ||g||_2 under ``--norm L2``)."""
    # the threat model only under attack: the clean groups do not declare it (bench.metrics.registry.SettingsView)
    eps, norm = (float(ctx.settings["eps"]), ctx.settings.get("norm", "Linf")) if adversarial else (0.0, None)
    k = ctx.data.num_classes
    out, labels, max_dist = [], [], 0.0
    for x, y in ctx.batches(x_all, y_all, desc=tag):
        if adversarial:
            adv = fgsm(ctx.model, x, y, eps, loss="ce", norm=norm)
            max_dist = max(max_dist, check_in_ball(x, adv, eps, norm=norm))  # checked, not assumed
            x = adv
        with torch.no_grad():
            out.append(ctx.model.logits(x).double().cpu())
        labels.append(y.cpu())
    return (ctx.collect(out, torch.zeros(0, k, dtype=torch.float64)), ctx.collect(labels, torch.long),
            ctx.gather_max(max_dist))


def eval_logits(ctx, adversarial: bool, tag: str):
    """``logits_of`` the first n_eval test points, clean or after FGSM, made once per run for the groups
    that use them (ece, calibration_extra and its cross-fit; ece_fgsm, calibration_extra_fgsm), keyed by
    what they depend on: n_eval, the batch size, and eps and norm under attack.  FGSM is deterministic,
    so the values are each group's own, whichever makes them.  Not shared under a defence (its noise
    is per group), nor when non-finite (made again, so the runner's watch on the model sees them)."""
    s = ctx.settings
    split = ctx.data.test.subset(s["n_eval"])
    made = []

    def make():
        made.append(True)
        return logits_of(ctx, split.x, split.y, adversarial, tag)

    if s.get("defense", DefenseKind.NONE) not in (None, DefenseKind.NONE):
        return make()
    threat = (float(s["eps"]), s.get("norm", "Linf")) if adversarial else None  # clean groups do not declare it
    key = ("calibration_eval_logits", s["n_eval"], int(s["batch_size"]), threat)
    z, y, max_dist = ctx.once(key, make)
    if not made and not bool(torch.isfinite(z).all()):
        return make()
    return z, y, max_dist
