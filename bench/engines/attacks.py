"""Adversarial attacks on an EnergyModel, all on images in [0, 1].

``pgd`` ascends either the cross-entropy E(x,y) - E(x) (Eq. 3, 14: the normal attack) or the joint
energy E(x,y) alone (Eq. 18: the energy attack) inside an L-inf ball, with the same update and
projection as Madry et al. and torchattacks' PGD, or (``norm="L2"``) inside an L2 ball with the
update and projection of torchattacks' PGDL2: step along g / ||g||_2, rescale the perturbation
into the ball, then clamp to [0, 1].  ``fgsm`` is one full step from x (FGM, x + eps g / ||g||_2,
under L2).  AutoAttack runs through the reference implementation, pyautoattack (see
``metrics.robustness``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from bench.core.compat import StrEnum
from bench.core.energy import EnergyModel, evaluates
from bench.core.settings import Norm
from bench.runtime.sanity import check_in_ball  # noqa: F401  (re-exported: the one threat-model check)


class Loss(StrEnum):
    """What an attack ascends."""

    CE = "ce"  # E(x,y) - E(x), the cross-entropy
    ENERGY = "energy"  # E(x,y), the joint energy (Eq. 18)


LOSSES = tuple(Loss)
NORMS = tuple(Norm)


def attack_loss(model: EnergyModel, x: torch.Tensor, y: torch.Tensor, loss: str) -> torch.Tensor:
    """Summed loss to ascend: ``ce`` = E(x,y) - E(x) (cross-entropy), ``energy`` = E(x,y).

    The cross-entropy is taken in float64 from the float32 logits: at a saturated softmax its
    gradient p_y - 1 is a difference of two numbers within float32's rounding of 1, so in float32
    it is a rounding artefact whose sign (and the FGSM/PGD sign step with it) changes with the CPU
    kernels (5 of 200 Fashion-MNIST points on the normal model moved ~50 pixels each between two
    of torch's CPU capabilities).  In float64 it is the model's own gradient."""
    if loss == Loss.CE:
        return F.cross_entropy(model.logits(x).double(), y, reduction="sum")
    if loss == Loss.ENERGY:
        return model.energy_joint(x, y).sum()
    raise ValueError(f"unknown attack loss {loss!r}; expected one of {', '.join(LOSSES)}")


def uniform_start(x: torch.Tensor, eps: float, generator: torch.Generator | None = None,
                  norm: str = "Linf") -> torch.Tensor:
    """A uniform point of the ``norm`` ball of radius eps around x, clipped to [0, 1]: L-inf
    x + U(-eps, eps); L2 x + eps * u^(1/d) * z / ||z||_2 (z Gaussian, u uniform, d = pixels per
    image).  Clipping only shrinks the perturbation, so the start stays in the ball."""
    if norm == "Linf":
        u = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        return (x + (2 * u - 1) * eps).clamp(0, 1)
    if norm == "L2":
        z = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        u = torch.rand((len(x),) + (1,) * (x.dim() - 1), generator=generator, device=x.device, dtype=x.dtype)
        d = x[0].numel() if len(x) else 1
        return (x + eps * u ** (1 / d) * z / _l2(z).clamp_min(1e-12)).clamp(0, 1)
    raise ValueError(f"unknown norm {norm!r}; expected one of {', '.join(NORMS)}")


def _l2(t: torch.Tensor) -> torch.Tensor:
    """Per-image L2 norm, shaped to broadcast against t."""
    return t.flatten(1).norm(p=2, dim=1).view(-1, *[1] * (t.dim() - 1))


def _step(g: torch.Tensor, norm: str) -> torch.Tensor:
    """The steepest-ascent direction of unit ``norm``: sign(g) (L-inf), g / ||g||_2 (L2)."""
    if norm == "Linf":
        return g.sign()
    if norm == "L2":
        return g / _l2(g).clamp_min(1e-12)
    raise ValueError(f"unknown norm {norm!r}; expected one of {', '.join(NORMS)}")


def project(x: torch.Tensor, adv: torch.Tensor, eps: float, norm: str = "Linf") -> torch.Tensor:
    """adv projected onto the ``norm`` ball of radius eps around x (L-inf: clip each pixel; L2:
    rescale the perturbation by min(1, eps / ||adv - x||_2)), then clamped to [0, 1]."""
    d = adv - x
    if norm == "Linf":
        d = d.clamp(-eps, eps)
    elif norm == "L2":
        d = d * torch.clamp(eps / _l2(d).clamp_min(1e-30), max=1.0)  # d = 0 stays 0, also at eps = 0
    else:
        raise ValueError(f"unknown norm {norm!r}; expected one of {', '.join(NORMS)}")
    return (x + d).clamp(0, 1)


@evaluates
def pgd(model: EnergyModel, x: torch.Tensor, y: torch.Tensor, eps: float, steps: int = 20,
        step_size: float | None = None, loss: str = "ce", random_start: bool = True,
        generator: torch.Generator | None = None, x_start: torch.Tensor | None = None,
        norm: str = "Linf", eot: int = 1, objective=None) -> torch.Tensor:
    """PGD: x_{n+1} = clip_{x0,eps}(x_n + step * sign(grad loss)) under L-inf, kept in [0, 1];
    under L2 the step is along grad / ||grad||_2 and the projection rescales into the L2 ball.

    ``x_start`` overrides the starting point (for comparisons against other implementations);
    otherwise the start is x, or a uniform point in the ball when ``random_start``.  ``eot``: the
    gradient of each step summed over that many calls of the model (expectation over
    transformation, for a random model or defence: each call draws its randomness afresh).
    ``objective(adv)``: the summed loss to ascend instead of ``loss`` (y is then unused; the OOD
    attack raises a score this way)."""
    step_size = eps / 4 if step_size is None else step_size
    x = x.detach()
    if x_start is not None:
        adv = x_start.detach().clone()
    elif random_start:
        adv = uniform_start(x, eps, generator, norm)
    else:
        adv = x.clone()
    for _ in range(steps):
        adv.requires_grad_(True)
        g = 0
        for _ in range(max(1, eot)):
            with torch.enable_grad():
                obj = attack_loss(model, adv, y, loss) if objective is None else objective(adv)
                g = g + torch.autograd.grad(obj, adv)[0]
        adv = project(x, adv.detach() + step_size * _step(g, norm), eps, norm)
    return adv.detach()


@evaluates
def fgsm(model: EnergyModel, x: torch.Tensor, y: torch.Tensor, eps: float, loss: str = "ce",
         norm: str = "Linf") -> torch.Tensor:
    """x + eps * sign(grad loss) (Eq. 2), clipped to [0, 1]; under L2 the fast gradient method
    x + eps * grad / ||grad||_2."""
    return pgd(model, x, y, eps, steps=1, step_size=eps, loss=loss, random_start=False, norm=norm)


@evaluates
def pgd_restarts(model: EnergyModel, x, y, eps, steps=20, step_size=None, loss="ce", restarts=1,
                 generator=None, norm: str = "Linf", eot: int = 1) -> torch.Tensor:
    """PGD with random restarts: per point, the first restart that fools the model wins."""
    best = None
    for _ in range(max(1, restarts)):
        adv = pgd(model, x, y, eps, steps, step_size, loss, True, generator, norm=norm, eot=eot)
        if best is None:
            best = adv
        else:
            with torch.no_grad():
                still_right = model.logits(best).argmax(1) == y
            best[still_right] = adv[still_right]
    return best


def eot_pgd(model, x, y, eps, norm: str = "Linf", steps: int = 20, step_size=None, eot: int = 8,
            restarts: int = 1, generator=None) -> torch.Tensor:
    """EOT-PGD on cross-entropy: each step's gradient summed over ``eot`` calls of the model (its
    own gradient: through all refinement steps for ``bench.engines.defense.RefinedModel``)."""
    return pgd_restarts(model, x, y, eps, steps, step_size, "ce", restarts, generator, norm=norm, eot=eot)


def bpda_eot_pgd(model, x, y, eps, norm: str = "Linf", steps: int = 20, step_size=None, eot: int = 8,
                 restarts: int = 1, generator=None) -> torch.Tensor:
    """BPDA+EOT: ``eot_pgd`` with the defence's refinement as the identity in the backward pass
    (a model without ``backward_mode``, i.e. no refinement, is attacked as it is)."""
    mode = getattr(model, "backward_mode", None)
    if mode is None:
        return eot_pgd(model, x, y, eps, norm, steps, step_size, eot, restarts, generator)
    with mode("bpda"):
        return eot_pgd(model, x, y, eps, norm, steps, step_size, eot, restarts, generator)
