"""Adversarial attacks on an EnergyModel, all on images in [0, 1].

``pgd`` ascends either the cross-entropy E(x,y) - E(x) (Eq. 3, 14: the normal attack) or the joint
energy E(x,y) alone (Eq. 18: the energy attack) inside an L-inf ball, with the same update and
projection as Madry et al. and torchattacks' PGD.  ``fgsm`` is one full step from x.  AutoAttack
runs through the reference implementation, pyautoattack (see ``metrics.robustness``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from bench.energy import EnergyModel

LOSSES = ("ce", "energy")


def attack_loss(model: EnergyModel, x: torch.Tensor, y: torch.Tensor, loss: str) -> torch.Tensor:
    """Summed loss to ascend: ``ce`` = E(x,y) - E(x) (cross-entropy), ``energy`` = E(x,y)."""
    if loss == "ce":
        return F.cross_entropy(model.logits(x), y, reduction="sum")
    if loss == "energy":
        return model.energy_joint(x, y).sum()
    raise ValueError(f"unknown attack loss {loss!r}; expected one of {LOSSES}")


def uniform_start(x: torch.Tensor, eps: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """x + U(-eps, eps), clipped to [0, 1]."""
    u = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    return (x + (2 * u - 1) * eps).clamp(0, 1)


def pgd(model: EnergyModel, x: torch.Tensor, y: torch.Tensor, eps: float, steps: int = 20,
        step_size: float | None = None, loss: str = "ce", random_start: bool = True,
        generator: torch.Generator | None = None, x_start: torch.Tensor | None = None) -> torch.Tensor:
    """L-inf PGD: x_{n+1} = clip_{x0,eps}(x_n + step * sign(grad loss)), kept in [0, 1].

    ``x_start`` overrides the starting point (for comparisons against other implementations);
    otherwise the start is x, or a uniform point in the ball when ``random_start``."""
    step_size = eps / 4 if step_size is None else step_size
    x = x.detach()
    if x_start is not None:
        adv = x_start.detach().clone()
    elif random_start:
        adv = uniform_start(x, eps, generator)
    else:
        adv = x.clone()
    for _ in range(steps):
        adv.requires_grad_(True)
        with torch.enable_grad():
            (g,) = torch.autograd.grad(attack_loss(model, adv, y, loss), adv)
        adv = adv.detach() + step_size * g.sign()
        adv = (x + (adv - x).clamp(-eps, eps)).clamp(0, 1)
    return adv.detach()


def fgsm(model: EnergyModel, x: torch.Tensor, y: torch.Tensor, eps: float, loss: str = "ce") -> torch.Tensor:
    """x + eps * sign(grad loss) (Eq. 2), clipped to [0, 1]."""
    return pgd(model, x, y, eps, steps=1, step_size=eps, loss=loss, random_start=False)


def pgd_restarts(model: EnergyModel, x, y, eps, steps=20, step_size=None, loss="ce", restarts=1,
                 generator=None) -> torch.Tensor:
    """PGD with random restarts: per point, the first restart that fools the model wins."""
    best = None
    for _ in range(max(1, restarts)):
        adv = pgd(model, x, y, eps, steps, step_size, loss, True, generator)
        if best is None:
            best = adv
        else:
            with torch.no_grad():
                still_right = model.logits(best).argmax(1) == y
            best[still_right] = adv[still_right]
    return best


def check_in_ball(x: torch.Tensor, adv: torch.Tensor, eps: float, tol: float = 1e-6) -> None:
    """Raise if any adversarial example leaves the eps ball or [0, 1] (checked, not assumed)."""
    dist = (adv - x).abs().amax().item()
    if dist > eps + tol or adv.min().item() < -tol or adv.max().item() > 1 + tol:
        raise RuntimeError(f"adversarial example outside the threat model: Linf {dist:.6g} > eps {eps:.6g}"
                           f" or range [{adv.min().item():.4g}, {adv.max().item():.4g}]")
