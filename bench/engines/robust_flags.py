"""The robustness numbers as flags per point, on tensors: PGD on one batch's clean-correct points,
the flags' proportion and its standard error, and the run-time checks of an attack (robust <= clean,
every example inside the threat model).  ``bench.metrics.group_points`` runs them over a group's
points; ``bench.functional`` and the AutoAttack engine (``aa_eval``) call them directly."""

from __future__ import annotations

import torch

from bench.core.energy import EnergyModel, evaluates
from bench.core.errors import CheckFailed
from bench.core.stats import proportion_se
from bench.engines.attacks import check_in_ball, pgd_restarts

STD_NOTE = "standard error of the proportion, sqrt(p(1-p)/n)"
LOSS_NAMES = {"ce": "cross-entropy E(x,y) - E(x) (Eq. 3, 14)", "energy": "joint energy E(x,y) (Eq. 18)"}


class RobustnessCheckError(CheckFailed):
    """A run-time check of an attack failed: robust accuracy above clean accuracy, or an
    adversarial example outside the threat model.  The evaluation gives no number: its metrics are
    nulls with this message as their reason (``bench.pipeline.compute``)."""


# --------------------------------------------------------------------------------------------
# shared helpers


def proportion(flags: torch.Tensor) -> tuple[float, float, int]:
    """(p, standard error sqrt(p(1-p)/n), n) of a boolean vector."""
    n = int(flags.numel())
    if n == 0:
        raise ValueError("proportion of an empty set")
    p = flags.double().mean().item()
    return p, proportion_se(p, n), n


@torch.no_grad()
@evaluates
def predict(model: EnergyModel, x: torch.Tensor, batch_size: int = 250,
            device: torch.device | str | None = None) -> torch.Tensor:
    """Top-1 predictions of ``x`` (any device), batched, returned on x's device."""
    device = torch.device(device) if device is not None else x.device
    out = [model.logits(x[i:i + batch_size].to(device)).argmax(1).to(x.device)
           for i in range(0, len(x), batch_size)]
    return torch.cat(out) if out else torch.empty(0, dtype=torch.long, device=x.device)


def check_robust_le_clean(clean_correct: torch.Tensor, robust_correct: torch.Tensor, what: str = "attack") -> None:
    """Raise ``RobustnessCheckError`` unless every robust point is also correct clean (which
    implies robust accuracy <= clean accuracy on the same points)."""
    clean = torch.as_tensor(clean_correct).bool().cpu().flatten()
    robust = torch.as_tensor(robust_correct).bool().cpu().flatten()
    if clean.shape != robust.shape:
        raise ValueError(f"{what}: clean and robust flags differ in length ({len(clean)} vs {len(robust)})")
    bad = int((robust & ~clean).sum())
    n_clean, n_robust = int(clean.sum()), int(robust.sum())
    if bad or n_robust > n_clean:
        raise RobustnessCheckError(
            f"{what}: robust accuracy {n_robust}/{len(robust)} exceeds clean accuracy {n_clean}/{len(clean)} "
            f"on the same points ({bad} points correct under attack but wrong clean); the model is not "
            "deterministic (dropout or batch norm in training mode, a randomised defence?) or the attack is broken")


def check_in_norm_ball(x: torch.Tensor, adv: torch.Tensor, eps: float, norm: str = "Linf") -> float:
    """``bench.runtime.sanity.check_in_ball`` raising ``RobustnessCheckError``: the largest perturbation norm."""
    try:
        return check_in_ball(x, adv, eps, norm)
    except RuntimeError as e:
        raise RobustnessCheckError(str(e)) from None


def attack_points(model: EnergyModel, x: torch.Tensor, y: torch.Tensor, eps: float, steps: int, step: float | None,
                  loss: str, restarts: int, generator: torch.Generator | None, norm: str = "Linf"):
    """PGD on the clean-correct points of one batch -> (clean flags, robust flags, adversarial
    images; a misclassified point is left as it is and counts as not robust)."""
    with torch.no_grad():
        clean = model.logits(x).argmax(1) == y
    adv = x.clone()
    idx = clean.nonzero().squeeze(1)
    if idx.numel():
        adv[idx] = pgd_restarts(model, x[idx], y[idx], eps, steps, step, loss, restarts, generator, norm=norm)
    with torch.no_grad():
        robust = model.logits(adv).argmax(1) == y
    return clean, robust, adv


def survives(model, x: torch.Tensor, y: torch.Tensor, repeats: int) -> torch.Tensor:
    """Per point: classified correctly in every one of ``repeats`` fresh forward passes."""
    ok = torch.ones(len(y), dtype=torch.bool, device=y.device)
    with torch.no_grad():
        for _ in range(max(1, repeats)):
            ok &= model.logits(x).argmax(1) == y
    return ok
