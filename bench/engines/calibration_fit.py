"""The calibration maths on tensors: per-point NLL and Brier and the temperature fit (bounded Brent
on log T).  The logits they read are made by ``bench.metrics.group_points.eval_logits``; the binned
errors (ECE, MCE, adaptive ECE) are ``bench.core.binned_calibration``, in numpy."""

from __future__ import annotations

import numpy as np
import torch

from bench.core.binned_calibration import TEMPERATURE_BOUNDS


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
